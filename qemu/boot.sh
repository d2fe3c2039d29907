#!/usr/bin/env bash
# Boot the arm64 test kernel + initramfs under qemu (TCG) with a software TPM
# and watch the serial console.
#
# Usage: qemu/boot.sh IMAGE INITRD CONSOLE_LOG [TIMEOUT_SECONDS=300]
#
# The console goes to stdout and to CONSOLE_LOG. qemu is stopped as soon as
# the console shows a kernel panic or the guest prints the line
# GUARDIAN-SCENARIOS-DONE (the guest also powers off by itself).
# GUARDIAN_KERNEL_APPEND, if set, is appended to the kernel command line.
#
# Exit codes:
#   0  the guest printed GUARDIAN-SCENARIOS-DONE (and did not panic)
#   1  usage or setup error (missing file, swtpm did not start)
#   3  timeout: no DONE line within TIMEOUT_SECONDS (hang, or far too slow)
#   4  kernel panic (or an oops, which the test kernel turns into a panic)
#   5  qemu failed: exited non-zero before the guest finished
#   6  the guest stopped (powered off or rebooted) without the DONE line
set -euo pipefail

log() { printf 'boot: %s\n' "$*" >&2; }
die() { printf 'boot: error: %s\n' "$*" >&2; exit 1; }

if [ $# -lt 3 ] || [ $# -gt 4 ]; then
    die "usage: $0 IMAGE INITRD CONSOLE_LOG [TIMEOUT_SECONDS=300]"
fi
image="$1" initrd="$2" console_log="$3" timeout_s="${4:-300}"
[ -f "$image" ] || die "no such kernel image: $image"
[ -f "$initrd" ] || die "no such initramfs: $initrd"
if ! [[ "$timeout_s" =~ ^[1-9][0-9]*$ ]]; then
    die "timeout must be a positive number of seconds"
fi
for tool in qemu-system-aarch64 swtpm timeout; do
    command -v "$tool" >/dev/null || die "$tool not found (run cross/setup.sh)"
done

# Kernel messages that mean the guest is dead; with panic=-1 and -no-reboot
# qemu would exit by itself, but stopping on the first line is quicker and
# does not depend on the panic path working.
panic_re='Kernel panic - not syncing|end Kernel panic'
# The DONE line may be preceded by interleaved kernel output and ends in \r.
done_re='GUARDIAN-SCENARIOS-DONE'$'\r''?$'

# One swtpm per boot: it serves a single connection and exits when qemu
# disconnects, and a fresh state directory gives every boot a fresh TPM.
# Kept short (/tmp) because unix socket paths are limited to 108 bytes.
# GUARDIAN_TPM_STATE=DIR keeps the TPM's state there instead, across boots
# (manufactured on first use): the same TPM, powered off and on again.
keep_tpm=0
if [ -n "${GUARDIAN_TPM_STATE:-}" ]; then
    mkdir -p "$GUARDIAN_TPM_STATE"
    tpm_dir="$(cd "$GUARDIAN_TPM_STATE" && pwd)"
    keep_tpm=1
else
    tpm_dir="$(mktemp -d /tmp/guardian-swtpm.XXXXXX)"
fi
qemu_pid=""
# shellcheck disable=SC2317  # invoked through the EXIT trap
cleanup() {
    local pid
    if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; then
        kill -TERM "$qemu_pid" 2>/dev/null || true
        wait "$qemu_pid" 2>/dev/null || true
    fi
    pid="$(cat "$tpm_dir/swtpm.pid" 2>/dev/null || true)"
    # Only signal the pid if it still is our swtpm (pids get reused).
    if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "swtpm" ]; then
        kill -TERM "$pid" 2>/dev/null || true
    fi
    if [ "$keep_tpm" -eq 0 ]; then rm -rf "$tpm_dir"; else rm -f "$tpm_dir/sock" "$tpm_dir/swtpm.pid"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Manufactured like a real TPM: EK certificates (RSA-2048, ECC P-384) in
# its NV, signed by swtpm's local CA, which the guest's enrolment checks.
if [ ! -e "$tpm_dir/tpm2-00.permall" ] && ! swtpm_setup --tpm2 --tpmstate "$tpm_dir" --create-ek-cert \
    --create-platform-cert --lock-nvram --overwrite >"$tpm_dir/setup.log" 2>&1; then
    cat "$tpm_dir/setup.log" >&2
    die "swtpm_setup could not manufacture the guest's TPM"
fi
swtpm socket --tpmstate dir="$tpm_dir" --tpm2 \
    --ctrl type=unixio,path="$tpm_dir/sock" \
    --flags startup-clear \
    --pid file="$tpm_dir/swtpm.pid" --log file="$tpm_dir/swtpm.log" \
    --daemon
for _ in $(seq 50); do
    [ -S "$tpm_dir/sock" ] && break
    sleep 0.1
done
[ -S "$tpm_dir/sock" ] || { cat "$tpm_dir/swtpm.log" >&2 2>/dev/null || true; die "swtpm did not create its socket"; }

mkdir -p "$(dirname "$console_log")"
: >"$console_log"
append="console=ttyAMA0 panic=-1 lsm=capability,bpf${GUARDIAN_KERNEL_APPEND:+ $GUARDIAN_KERNEL_APPEND}"

# The console is a stdio chardev with a logfile rather than -nographic: the
# same serial output, but no monitor multiplexed into it, and qemu writes the
# log itself, unbuffered, so the watcher below sees every line at once.
# stdin is /dev/null: the guest needs no input and a CI job has none.
# The network is qemu's user mode (no root, no host interface): the guest
# is 10.0.2.15 and reaches the host's 127.0.0.1:P at 10.0.2.2:P (the boot
# test's fleet lab). A virtio-mmio NIC, not the default PCI one: that wants
# an option ROM (efi-virtio.rom, package ipxe-qemu) a minimal install lacks.
start=$SECONDS
timeout --kill-after=10 "$timeout_s" \
    qemu-system-aarch64 \
    -M virt -cpu cortex-a72 -m 1024 -smp 2 \
    -no-reboot -display none -monitor none \
    -chardev stdio,id=console,signal=off,logfile="$console_log" \
    -serial chardev:console \
    -kernel "$image" -initrd "$initrd" -append "$append" \
    -chardev socket,id=chrtpm,path="$tpm_dir/sock" \
    -tpmdev emulator,id=tpm0,chardev=chrtpm \
    -device tpm-tis-device,tpmdev=tpm0 \
    -device virtio-rng-device \
    -nic none \
    -netdev user,id=n0 -device virtio-net-device,netdev=n0 \
    </dev/null &
qemu_pid=$!

while kill -0 "$qemu_pid" 2>/dev/null; do
    if grep -qE "$panic_re" "$console_log" || grep -qE "$done_re" "$console_log"; then
        kill -TERM "$qemu_pid" 2>/dev/null || true
        break
    fi
    sleep 0.2
done
status=0
wait "$qemu_pid" || status=$?
qemu_pid=""
elapsed=$((SECONDS - start))

# Decide from the log first: a guest that finished may have been stopped by
# us (a signal status) or have powered off (status 0).
if grep -qE "$panic_re" "$console_log"; then
    log "kernel panic after ${elapsed} s (console: $console_log)"
    exit 4
elif grep -qE "$done_re" "$console_log"; then
    log "guest finished in ${elapsed} s"
    exit 0
elif [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    log "timeout: no GUARDIAN-SCENARIOS-DONE within ${timeout_s} s (console: $console_log)"
    exit 3
elif [ "$status" -ne 0 ]; then
    log "qemu failed with status $status after ${elapsed} s (console: $console_log)"
    exit 5
else
    log "guest stopped after ${elapsed} s without GUARDIAN-SCENARIOS-DONE (console: $console_log)"
    exit 6
fi
