#!/usr/bin/env bash
# Footprint: the stripped aarch64 binary's size and the idle RSS of
# `guardian run`, against the targets (binary <= 8 MiB, idle RSS <= 12 MiB)
# and, in the same run, the size of the eBPF object embedded in it.
#
#   sudo guardian/benches/footprint.sh [IDLE_SECONDS]   (default 30)
#
# Root: the agent loads eBPF. The RSS is measured on this host's kernel
# (x86_64, no BPF LSM: fanotify rungs, default config) after IDLE_SECONDS
# with nothing happening, three times, each a fresh agent; VmRSS and
# RssAnon/RssFile are from /proc/PID/status. Figures go in
# docs/footprint.md.
set -euo pipefail
idle="${1:-30}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
[ "$(id -u)" -eq 0 ] || { echo "footprint: run as root (the agent loads eBPF)" >&2; exit 1; }
mib() { awk -v b="$1" 'BEGIN { printf "%.2f MiB", b / 1048576 }'; }

echo "## binary"
cargo build --release --locked --target aarch64-unknown-linux-gnu -p guardian >/dev/null 2>&1 \
    || { echo "footprint: the aarch64 build failed (run cross/setup.sh)" >&2; exit 1; }
bin=target/aarch64-unknown-linux-gnu/release/guardian
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
llvm-strip -o "$tmp/guardian" "$bin" 2>/dev/null || aarch64-linux-gnu-strip -o "$tmp/guardian" "$bin"
obj="$(ls -t target/aarch64-unknown-linux-gnu/release/build/guardian-*/out/guardian-ebpf | head -n 1)"
size=$(stat -c %s "$tmp/guardian")
echo "stripped aarch64 guardian: $size bytes ($(mib "$size")); target 8 MiB: $([ "$size" -le 8388608 ] && echo met || echo NOT met)"
echo "embedded eBPF object: $(stat -c %s "$obj") bytes"

echo "## idle RSS (x86_64 host, default config, ${idle} s idle)"
cargo build --release --locked -p guardian >/dev/null 2>&1
host_bin=target/release/guardian
for round in 1 2 3; do
    d="$tmp/r$round"
    mkdir -p "$d/models"
    head -c 100000 /dev/urandom >"$d/models/m.onnx"
    cat >"$d/guardian.toml" <<CFG
[guard]
protected = ["$d/models"]
pin_dir = "/sys/fs/bpf/guardianfoot$$r$round"
unload_without_token = true
[events]
output = "$d/events.jsonl"
[status]
path = "$d/status.json"
[measure]
log = "$d/measurements.log"
manifest = "$d/manifest.toml"
CFG
    "$host_bin" run --config "$d/guardian.toml" 2>"$d/agent.log" &
    pid=$!
    for _ in $(seq 100); do [ -s "$d/status.json" ] && break; sleep 0.1; done
    sleep "$idle"
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
    anon=$(awk '/^RssAnon/ {print $2}' "/proc/$pid/status")
    file=$(awk '/^RssFile/ {print $2}' "/proc/$pid/status")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    "$host_bin" stop --unload --config "$d/guardian.toml" >/dev/null 2>&1 || true
    echo "round $round: VmRSS $((rss / 1024)) MiB (anon $((anon / 1024)) MiB, file $((file / 1024)) MiB); target 12 MiB: $([ "$rss" -le 12288 ] && echo met || echo NOT met)"
done
