#!/bin/sh
# Guest init for qemu/smoke-test.sh: proves that the test kernel, initramfs,
# software TPM and console protocol work together, before any guardian code
# is involved. Runs as PID 1 under busybox sh.

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t securityfs securityfs /sys/kernel/security

report() {
    # One line per scenario, parsed by qemu/check-scenarios.sh.
    echo "GUARDIAN-SCENARIO $1 $2 $3"
}

# The TPM driver probes during boot, but give a slow TCG boot a few seconds
# rather than fail on a race.
i=0
while [ ! -c /dev/tpmrm0 ] && [ "$i" -lt 50 ]; do
    sleep 0.1
    i=$((i + 1))
done
if [ -c /dev/tpmrm0 ]; then
    report tpm-device PASS "/dev/tpmrm0 present ($(cat /sys/class/tpm/tpm0/tpm_version_major 2>/dev/null || echo '?') = TPM major version)"
else
    report tpm-device FAIL "no /dev/tpmrm0; TPM nodes: $(echo /dev/tpm*)"
fi

lsm="$(cat /sys/kernel/security/lsm 2>/dev/null || echo unreadable)"
case ",$lsm," in
    *,bpf,*) report bpf-lsm PASS "active LSMs: $lsm" ;;
    *) report bpf-lsm FAIL "bpf not among active LSMs: $lsm" ;;
esac

# BPF LSM and CO-RE programs need the kernel's own BTF.
if [ -s /sys/kernel/btf/vmlinux ]; then
    report btf PASS "/sys/kernel/btf/vmlinux: $(wc -c </sys/kernel/btf/vmlinux) bytes"
else
    report btf FAIL "no /sys/kernel/btf/vmlinux"
fi

echo GUARDIAN-SCENARIOS-DONE
poweroff -f
