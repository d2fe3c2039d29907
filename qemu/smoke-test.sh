#!/usr/bin/env bash
# End-to-end check of the qemu pipeline without any guardian code: build (or
# reuse) the test kernel, pack qemu/smoke-init.sh into an initramfs, boot it
# with a software TPM and check the scenarios it reports.
#
# Usage: qemu/smoke-test.sh [OUTPUT_DIR=qemu/out/smoke]
# Leaves the initramfs and console.log in OUTPUT_DIR for inspection.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-$here/out/smoke}"
mkdir -p "$out"

t0=$SECONDS
image="$("$here/build-kernel.sh" | tail -n 1)"
t1=$SECONDS
"$here/build-initramfs.sh" "$out/smoke.cpio.gz" "$here/smoke-init.sh"
t2=$SECONDS
boot_status=0
"$here/boot.sh" "$image" "$out/smoke.cpio.gz" "$out/console.log" 300 || boot_status=$?
t3=$SECONDS

echo "smoke: kernel $((t1 - t0)) s, initramfs $((t2 - t1)) s, boot $((t3 - t2)) s (boot.sh status $boot_status)" >&2
# The table is printed even when the boot failed: it says what was missing.
check_status=0
"$here/check-scenarios.sh" "$out/console.log" tpm-device bpf-lsm btf || check_status=$?
[ "$boot_status" -eq 0 ] && [ "$check_status" -eq 0 ]
