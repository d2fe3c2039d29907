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

log "guardian-attack (its open-loop times opens), static aarch64"
if ! (cd "$qemu/attack" && cargo build --locked --release --target aarch64-unknown-linux-gnu \
    --config 'target.aarch64-unknown-linux-gnu.rustflags=["-C","target-feature=+crt-static"]') \
    >"$out/attack-build.log" 2>&1; then
    cat "$out/attack-build.log" >&2
    exit 1
fi
# The same guard without measure at use, to tell its cost from the rest.
sed 's/^\[service\]$/[service]\nmeasured_open = false/' "$here/guardian.toml" >"$out/nomeasure.toml"

log "initramfs"
"$qemu/build-initramfs.sh" "$out/initrd.cpio.gz" "$here/init.sh" \
    "@agent:$bin" \
    "@config:$here/guardian.toml" \
    "$arm/inference-service:/usr/bin/inference-service" \
    "$arm/inference-bench:/usr/bin/inference-bench" \
    "$qemu/attack/target/aarch64-unknown-linux-gnu/release/guardian-attack:/usr/bin/guardian-attack" \
    "$out/nomeasure.toml:/etc/guardian/nomeasure.toml" \
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
# Opens: median ns per read-only open+close of an unprotected file, by a
# program that is not the service and by the service, per guard state.
sed -n 's/^OVERHEAD-OPENS //p' "$out/results.log" >"$out/opens.txt"
if [ -s "$out/opens.txt" ]; then
    log "open+close of an unprotected file (median ns; TCG: the ratios only)"
    for who in other service; do
        col=3
        [ "$who" = service ] && col=4
        off=""
        for side in off on nomeasure; do
            med="$(awk -v s="$side" -v c="$col" '$1 == s { print $c }' "$out/opens.txt" \
                | sort -n | awk '{ a[NR] = $1 } END { if (NR) print a[int((NR + 1) / 2)] }')"
            [ -z "$med" ] && continue
            [ "$side" = off ] && off="$med"
            printf '  %-8s %-10s %8s ns  x%s\n' "$who" "$side" "$med" \
                "$(awk -v a="$med" -v b="${off:-$med}" 'BEGIN { printf "%.3f", a / b }')" >&2
        done
    done
fi
