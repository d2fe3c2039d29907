#!/usr/bin/env bash
# Ring-buffer drops of the real daemon in a burst, per ring size: how
# `[events] ring_buffer_kib` trades memory against drops (docs/footprint.md).
#
#   sudo guardian/benches/daemon-burst.sh [--also BIN] [ROUNDS] [SECS]
#
# Starts `guardian run` (this tree's release build, built if missing) with
# `syscall_detect = true`, so that every write-open of the protected model
# is a ring-buffer record, and a Python loop opens the model O_WRONLY as
# fast as it can for SECS seconds (default 4); then reads the agent's
# counters from its status: opens, records submitted, `ringbuf_drops`, and
# what reached the attestor: each event is a tamper attempt (detect mode),
# made a record (`tamper_records`), folded into one by the rate limit
# (`tamper_rate_limited`) or dropped on the way (`attest_queue_drops`,
# its share of the events the daemon read beside it), and the agent's CPU
# time (all threads, user and system) from just before the burst to the
# reading, per event read.
# RINGS (KiB, default "4096 2048 1024") says which ring sizes; each round
# (ROUNDS, default 3) runs every size in turn, the load average beside it.
# --also BIN runs another build's binary beside this one at every size (a
# baseline revision's, to compare readers).
#
# This measures the daemon's whole event path (decode, policies, the
# outputs, the hand-over to the attestor), which the guard benchmark's
# consumer does not. Root: the agent loads eBPF. Builds use
# CARGO_TARGET_DIR when set.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
also=""
rounds=3
secs=4
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --also) also="${2:?--also needs a binary}"; shift 2 ;;
        -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
        *) args+=("$1"); shift ;;
    esac
done
[ "${#args[@]}" -ge 1 ] && rounds="${args[0]}"
[ "${#args[@]}" -ge 2 ] && secs="${args[1]}"
[ "$(id -u)" -eq 0 ] || { echo "daemon-burst: run as root (the agent loads eBPF)" >&2; exit 1; }
target="${CARGO_TARGET_DIR:-$root/target}"
this="$target/release/guardian"
cargo build --release --locked -p guardian >/dev/null 2>&1 || {
    echo "daemon-burst: the release build failed" >&2
    exit 1
}
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cp "$this" "$tmp/this"
builds=(this)
if [ -n "$also" ]; then
    cp "$also" "$tmp/also"
    builds+=(also)
fi

# cpu_ticks PID: the process's user and system time so far, in clock ticks
# (all its threads).
cpu_ticks() {
    awk '{ print $14 + $15 }' "/proc/$1/stat"
}

# burst BUILD RING_KIB: one agent, one burst; prints "opens submitted drops
# records rate_limited attest_drops cpu_us_per_event".
burst() {
    local bin="$tmp/$1" d
    d="$(mktemp -d "$tmp/run.XXXXXX")"
    mkdir -p "$d/models"
    head -c 100000 /dev/urandom >"$d/models/m.onnx"
    cat >"$d/guardian.toml" <<CFG
[guard]
mode = "detect"
syscall_detect = true
protected = ["$d/models"]
pin_dir = "/sys/fs/bpf/guardianburst-${d##*.}"
unload_without_token = true
[events]
output = "$d/events.jsonl"
ring_buffer_kib = $2
[status]
path = "$d/status.json"
[measure]
log = "$d/measurements.log"
manifest = "$d/manifest.toml"
CFG
    "$bin" run --config "$d/guardian.toml" 2>"$d/agent.log" &
    local pid=$!
    for _ in $(seq 300); do [ -s "$d/status.json" ] && break; sleep 0.1; done
    if [ ! -s "$d/status.json" ]; then
        echo "daemon-burst: the $1 agent did not start (ring $2 KiB):" >&2
        cat "$d/agent.log" >&2
        kill "$pid" 2>/dev/null || true
        exit 1
    fi
    sleep 2
    local opens cpu0 cpu1
    cpu0="$(cpu_ticks "$pid")"
    opens="$(python3 - "$d/models/m.onnx" "$secs" <<'PY'
import os, sys, time
path, secs = sys.argv[1], float(sys.argv[2])
end, n = time.time() + secs, 0
while time.time() < end:
    for _ in range(200):
        try:
            os.close(os.open(path, os.O_WRONLY))
        except OSError:
            pass
    n += 200
print(n)
PY
)"
    # The status is published at most every 200 ms after events.
    sleep 3
    cpu1="$(cpu_ticks "$pid")"
    python3 - "$d/status.json" "$opens" "$((cpu1 - cpu0))" "$(getconf CLK_TCK)" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
c = s.get("counters", s)
ticks, hz = int(sys.argv[3]), int(sys.argv[4])
per = 1e6 * ticks / hz / c["events_submitted"] if c["events_submitted"] else 0
print(sys.argv[2], c["events_submitted"], c["ringbuf_drops"], c["tamper_records"],
      c["tamper_rate_limited"], c["attest_queue_drops"], f"{per:.2f}")
PY
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    "$bin" stop --unload --config "$d/guardian.toml" >/dev/null 2>&1 || true
}

echo "| round | load average | build | ring | opens | submitted | ringbuf_drops | drop % | tamper_records | tamper_rate_limited | attest_queue_drops | of the events read | agent CPU µs per event |"
echo "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for round in $(seq "$rounds"); do
    for k in ${RINGS-4096 2048 1024}; do
        for b in "${builds[@]}"; do
            load="$(cut -d' ' -f1-3 /proc/loadavg)"
            read -r opens sub drops recs limited adrops cpu < <(burst "$b" "$k")
            printf '| %s | %s | %s | %s KiB | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$round" "$load" "$b" "$k" \
                "$opens" "$sub" "$drops" \
                "$(awk -v d="$drops" -v o="$opens" 'BEGIN { printf "%.2f", o ? 100 * d / o : 0 }')" \
                "$recs" "$limited" "$adrops" \
                "$(awk -v d="$adrops" -v n="$sub" 'BEGIN { printf "%.2f %%", n ? 100 * d / n : 0 }')" "$cpu"
        done
    done
done
