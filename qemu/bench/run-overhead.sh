#!/usr/bin/env bash
# What guardian's BPF LSM (enforce) mode costs the inference service, in
# the arm64 qemu guest: one boot, measurements with guardian detached and
# attached alternated inside it (qemu/bench/init.sh), ratio printed here.
# TCG timing is functional: only the with/without ratio of the same boot
# means anything, never the absolute figures.
#
# Usage: qemu/bench/run-overhead.sh [ROUNDS=5] [REQUESTS=5000]
#
# Reuses qemu/build-kernel.sh, qemu/build-initramfs.sh and qemu/boot.sh as
# they are, and the same aarch64 builds as qemu/run-scenarios.sh.
set -euo pipefail

rounds="${1:-5}" requests="${2:-5000}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
qemu="$(dirname "$here")"
root="$(dirname "$qemu")"
log() { printf 'overhead: %s\n' "$*" >&2; }

out="$root/target/qemu-overhead"
mkdir -p "$out"

log "test kernel (cached by the fragments' hash)"
image="$("$qemu/build-kernel.sh" | tail -n 1)"

log "guardian for aarch64 (the agent)"
(cd "$root" && cargo build --locked --release --target aarch64-unknown-linux-gnu -p guardian 2>&1 \
    | grep -v '^warning: guardian@' >&2)
bin="$root/target/aarch64-unknown-linux-gnu/release/guardian"

log "the inference service and its bench, static aarch64"
if ! (cd "$root/examples/inference" && CARGO_TARGET_DIR="$root/target/inference" \
    cargo build --locked --release --target aarch64-unknown-linux-gnu \
    --bin inference-service --bin inference-bench \
    --config 'target.aarch64-unknown-linux-gnu.rustflags=["-C","target-feature=+crt-static"]') \
    >"$out/inference-build.log" 2>&1; then
    cat "$out/inference-build.log" >&2
    exit 1
fi
arm="$root/target/inference/aarch64-unknown-linux-gnu/release"
# The host's bench only summarises; any build of it will do.
host_bench="$root/examples/inference/target/release/inference-bench"
if [ ! -x "$host_bench" ]; then
    (cd "$root/examples/inference" && cargo build --locked --release --bin inference-bench) >&2
fi

log "initramfs"
"$qemu/build-initramfs.sh" "$out/initrd.cpio.gz" "$here/init.sh" \
    "@agent:$bin" \
    "@config:$here/guardian.toml" \
    "$arm/inference-service:/usr/bin/inference-service" \
    "$arm/inference-bench:/usr/bin/inference-bench" \
    "$root/examples/inference/model/classifier.onnx:/opt/models/classifier.onnx"

log "booting the arm64 guest (TCG): $rounds rounds of $requests requests, off/on alternated"
console="$out/console.log"
boot_status=0
GUARDIAN_KERNEL_APPEND="guardian.rounds=$rounds guardian.requests=$requests" \
    "$qemu/boot.sh" "$image" "$out/initrd.cpio.gz" "$console" 1800 >/dev/null || boot_status=$?
tr -d '\r' <"$console" >"$out/results.log"
grep '^OVERHEAD-' "$out/results.log" | grep -v '^OVERHEAD-RESULT' >&2 || true
sed -n 's/^OVERHEAD-RESULT //p' "$out/results.log" >"$out/results.jsonl"
if [ "$boot_status" -ne 0 ] || grep -q '^OVERHEAD-ERROR' "$out/results.log"; then
    log "the guest run failed (boot status $boot_status; console: $console)"
    exit 1
fi
log "results in $out/results.jsonl; summary (TCG: the ratios only):"
"$host_bench" --summarize "$out/results.jsonl" --baseline off
