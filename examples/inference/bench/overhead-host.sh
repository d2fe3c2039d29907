#!/usr/bin/env bash
# What guardian costs the inference service on this host: predictions/s and
# p99 latency through the service's pipes, with and without `guardian run`
# attached, alternated in the same run to cancel drift.
#
# Usage (root: guardian loads eBPF):
#   examples/inference/bench/overhead-host.sh [ROUNDS=9] [REQUESTS=50000]
#
# Each round measures once without guardian and once with it, ABBA order
# (odd rounds start without, even rounds with), each measurement being
# `inference-bench --mode served`: REQUESTS round trips with one request in
# flight (latency), then REQUESTS pipelined (throughput), each through a
# fresh `inference-service`. "With" means the real agent started by
# `guardian run` with a production-like config (below) and stopped with
# `guardian stop --unload` before the next "without", so nothing of it
# stays attached. Summary: medians over rounds and on/off ratios
# (docs/inference-overhead.md explains them).
#
# Environment: OVH_KERNEL_ONLY=1 also measures the programs attached with
# the agent stopped; CARGO_TARGET_DIR for guardian (default target/ovh in the
# repository; the inference service always builds in examples/inference/target),
# OVH_OUT for the results directory (default a new temp dir), OVH_NO_BUILD=1
# to use the binaries already built there and in examples/inference/target.
set -euo pipefail

rounds="${1:-9}" requests="${2:-50000}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
demo="$(dirname "$here")"
root="$(cd "$demo/../.." && pwd)"
log() { printf 'overhead: %s\n' "$*" >&2; }
die() { printf 'overhead: error: %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run as root: guardian loads eBPF programs"

guardian_target="${CARGO_TARGET_DIR:-$root/target/ovh}"
if [ "${OVH_NO_BUILD:-0}" != 1 ]; then
    log "building guardian (release, $guardian_target) and the inference service"
    (cd "$root" && CARGO_TARGET_DIR="$guardian_target" cargo build --release -p guardian >&2)
    # Its own target directory, where $bindir below looks for it.
    (cd "$demo" && CARGO_TARGET_DIR="$demo/target" cargo build --locked --release >&2)
fi
[ -x "$guardian_target/release/guardian" ] || die "no guardian binary in $guardian_target/release (OVH_NO_BUILD=1 needs one)"
[ -x "$demo/target/release/inference-service" ] || die "no inference-service in $demo/target/release (OVH_NO_BUILD=1 needs one)"
guardian="$guardian_target/release/guardian"
bindir="$demo/target/release"

out="${OVH_OUT:-$(mktemp -d /tmp/inference-overhead.XXXXXX)}"
mkdir -p "$out/models"
# The model in a directory of its own: that directory is what guardian
# protects, as /opt/models would be on a board.
cp "$demo/model/classifier.onnx" "$out/models/"
# A pin directory of our own (no dots: bpffs pin names may not have them).
pin_dir="/sys/fs/bpf/guardianovh$$"
config="$out/guardian.toml"
cat >"$config" <<EOF
# Written by examples/inference/bench/overhead-host.sh: guardian as it
# would guard this service in production.
[guard]
mode = "auto"
protected = ["$out/models"]
pin_dir = "$pin_dir"
# A benchmark unloads its guard between rounds: no operator token.
unload_without_token = true

[service]
exe = ["$bindir/inference-service"]
# Exec allow-list (default on) and egress: the service may connect nowhere.
egress = []

[events]
output = "$out/events.jsonl"

[status]
path = "$out/status.json"

[policy]
dir = "$out/policies"
EOF
mkdir -p "$out/policies"
results="$out/results.jsonl"
: >"$results"

agent=""
stop_guard() {
    "$guardian" stop --unload --config "$config" >>"$out/agent.log" 2>&1 || true
    if [ -n "$agent" ]; then wait "$agent" 2>/dev/null || true; fi
    agent=""
}
trap stop_guard EXIT
trap 'exit 130' INT TERM

start_guard() {
    rm -f "$out/status.json"
    "$guardian" run --config "$config" 2>>"$out/agent.log" &
    agent=$!
    local n=0
    while [ ! -s "$out/status.json" ] && [ "$n" -lt 300 ]; do
        kill -0 "$agent" 2>/dev/null || die "guardian run exited (see $out/agent.log)"
        sleep 0.1
        n=$((n + 1))
    done
    [ -s "$out/status.json" ] || die "guardian did not publish its status (see $out/agent.log)"
}

# Other guards (another session's guardian) would make "without" carry
# tracepoints too; say so rather than measure silently.
other_guards() {
    if command -v bpftool >/dev/null; then
        echo "$(bpftool prog show 2>/dev/null | grep -c 'name guardian_' || true) guardian_* programs"
    else
        # No bpftool: pinned guards at least show in the BPF filesystem.
        echo "pin dirs: $(find /sys/fs/bpf -maxdepth 1 -name 'guardian*' ! -name "guardianovh$$" -printf '%f ' 2>/dev/null)"
    fi
}

measure() { # measure LABEL ROUND
    log "round $2: guardian $1 (other guards: $(other_guards))"
    "$bindir/inference-bench" --model "$out/models/classifier.onnx" --mode served \
        --requests "$requests" --json --label "$1" --round "$2" | tee -a "$results" >&2
}

{
    echo "# $(date -u +%FT%TZ) $(uname -srm), $(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)"
    echo "# load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "# rounds $rounds, requests $requests per measurement"
} | tee -a "$results" >&2
# OVH_KERNEL_ONLY=1 adds a third side, "kernel": guardian started, then
# stopped without --unload, so its programs stay attached with no agent
# running: what the kernel side costs alone.
sides="off on"
[ "${OVH_KERNEL_ONLY:-0}" = 1 ] && sides="off on kernel"
for r in $(seq 1 "$rounds"); do
    # Alternate the order: odd rounds as listed, even rounds reversed.
    if [ $((r % 2)) -eq 1 ]; then order="$sides"; else order="$(echo "$sides" | tr ' ' '\n' | tac | tr '\n' ' ')"; fi
    for side in $order; do
        case "$side" in
        on)
            start_guard
            measure on "$r"
            # What the guard was doing, for the record (mode, hooks, events).
            cp "$out/status.json" "$out/status-round$r.json"
            stop_guard
            ;;
        kernel)
            start_guard
            "$guardian" stop --config "$config" >>"$out/agent.log" 2>&1
            wait "$agent" 2>/dev/null || true
            agent=""
            [ -d "$pin_dir" ] || die "the pins went away with the agent"
            measure kernel "$r"
            stop_guard
            ;;
        *) measure off "$r" ;;
        esac
    done
    echo "# after round $r: load average $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$results" >&2
done
echo "# load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$results" >&2
[ -d "$pin_dir" ] && die "$pin_dir still exists after guardian stop --unload"
log "guard mode and hooks (last round): $(grep -E '"mode"' "$out/status-round$rounds.json" | head -n 1 | tr -d ' ')"
log "events written by guardian: $(wc -l <"$out/events.jsonl" 2>/dev/null || echo 0)"
log "results in $results; summary:"
"$bindir/inference-bench" --summarize "$results" --baseline off
