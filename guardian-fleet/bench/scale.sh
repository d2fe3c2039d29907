#!/usr/bin/env bash
# The fleet at scale on one machine: three nats-server nodes on loopback
# (JetStream, R3 streams), one guardian-fleet instance, and the device
# simulator (each device runs guardian's real reporter: its own spool on
# disk, its own NATS connection). Prints the simulator's JSON: events
# ingested per second, records missing or stored twice, p50/p99 latency
# from a device's append to the fleet's store.
#
#   guardian-fleet/bench/scale.sh [DEVICES] [RATE] [SECONDS]
#
# Defaults: 1000 devices, 10000 events/s, 30 s. Figures: docs/fleet.md.
#
# GUARDIAN_SCALE_SPOOLS=DIR puts the simulated devices' spools under DIR
# instead of beside the nodes' stores (e.g. a tmpfs, so that ten thousand
# boards' fsyncs do not all land on this machine's one disk; a real board
# has its own). Each node serves its monitoring page (/jsz, /varz) on a
# port the script prints.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
devices="${1:-1000}" rate="${2:-10000}" secs="${3:-30}"
nats="${GUARDIAN_NATS_SERVER:-${GUARDIAN_CACHE:-$HOME/.cache/guardian}/nats-venv/bin/nats-server}"
[ -x "$nats" ] || { echo "nats-server not found at $nats: run cross/setup.sh" >&2; exit 1; }
# Every device holds a socket and a spool segment open; the simulator
# splits the devices over processes of at most 4,000 each so that each stays
# under the open-file limit (20,000 on these machines, not raisable).
ulimit -n "$(ulimit -Hn)"
cargo build --release --locked -p guardian-fleet >&2
bin="${CARGO_TARGET_DIR:-target}/release/guardian-fleet"
work="$(mktemp -d /var/tmp/guardian-scale.XXXXXX)"
pids=()
cleanup() { kill -9 "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
[ -n "${GUARDIAN_KEEP_TEST_DIR:-}" ] || trap cleanup EXIT
base=$((20000 + RANDOM % 20000))
urls=()
for i in 1 2 3; do
    port=$((base + i)) cport=$((base + 10 + i)) hport=$((base + 20 + i))
    routes=""
    for j in 1 2 3; do [ "$j" = "$i" ] || routes="$routes nats-route://127.0.0.1:$((base + 10 + j))"; done
    cat >"$work/n$i.conf" <<CONF
server_name: n$i
listen: 127.0.0.1:$port
max_connections: 100000
http: 127.0.0.1:$hport
jetstream { store_dir: "$work/n$i" }
cluster { name: guardian-scale, listen: 127.0.0.1:$cport, routes: [$(echo $routes | sed 's/ /, /g')] }
CONF
    "$nats" -c "$work/n$i.conf" -l "$work/n$i.log" </dev/null >/dev/null 2>&1 &
    pids+=($!)
    urls+=("nats://127.0.0.1:$port")
    echo "n$i: nats://127.0.0.1:$port, monitoring http://127.0.0.1:$hport/" >&2
done
all="$(IFS=,; echo "${urls[*]}")"
for u in "${urls[@]}"; do
    p="${u##*:}"
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && break; sleep 0.1; done
done
RUST_LOG=warn "$bin" --nats "$all" serve --replicas 3 --instance scale-1 </dev/null >/dev/null 2>"$work/fleet.log" &
pids+=($!)
# Ready when the fleet has made its streams (status reads its bucket).
for _ in $(seq 120); do "$bin" --nats "$all" status >/dev/null 2>&1 && break; sleep 1; done
spools="${GUARDIAN_SCALE_SPOOLS:-$work}/spools.$$"
[ -n "${GUARDIAN_KEEP_TEST_DIR:-}" ] || trap 'cleanup; rm -rf "$spools"' EXIT
load_start="$(cut -d' ' -f1-3 /proc/loadavg)"
procs=$(( (devices + 3999) / 4000 ))
echo "== $devices devices ($procs simulator process(es)), $rate events/s for $secs s, 3 nodes R3 ==" >&2
sims=()
for p in $(seq "$procs"); do
    # The reporters' warnings (why a link was lost) are kept, to count
    # the reasons for reconnecting.
    RUST_LOG=error,guardian_report::reporter=warn "$bin" --nats "$all" simulate --devices $((devices / procs)) --rate $((rate / procs)) \
        --duration "${secs}s" --dir "$spools" --prefix "sim$p" --drain-wait 300s >"$work/sim$p.json" 2>"$work/sim$p.log" &
    sims+=($!)
done
fail=0
for s in "${sims[@]}"; do wait "$s" || fail=1; done
load_end="$(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$load_start" "$load_end" "$work" <<'PY'
import glob, json, re, sys
rs = [json.load(open(f)) for f in sorted(glob.glob(sys.argv[3] + "/sim*.json"))]
# Why links were lost, from the reporters' warnings (numbers and addresses
# folded, so that the same reason counts once).
lost = {}
for f in glob.glob(sys.argv[3] + "/sim*.log"):
    for line in open(f, errors="replace"):
        m = re.search(r"report link to \S+ lost: (.*); records stay", line)
        if m:
            k = re.sub(r"[0-9]+(\.[0-9]+)?", "N", m.group(1))
            lost[k] = lost.get(k, 0) + 1
why = {}
for r in rs:
    for k, n in r.get("not_connected_at_end", {}).items():
        why[k] = why.get(k, 0) + n
tot = lambda k: sum(r[k] for r in rs)
lat = lambda k: max(r["latency_ms"][k] for r in rs)
print(json.dumps({
    "load_average_start": sys.argv[1], "load_average_end": sys.argv[2],
    "processes": len(rs), "devices": tot("devices"), "connected_at_end": tot("connected_at_end"),
    "not_connected_at_end": why, "reconnects": tot("reconnects"),
    "links_lost_because": dict(sorted(lost.items(), key=lambda kv: -kv[1])[:8]),
    "resent": sum(r.get("resent", 0) for r in rs),
    "busy": sum(r.get("busy", 0) for r in rs),
    "window_cuts": sum(r.get("window_cuts", 0) for r in rs),
    "submitted": tot("submitted"), "queue_drops": tot("queue_drops"), "given": tot("given"),
    "stored": tot("stored"), "missing": tot("missing"), "stored_twice": tot("stored_twice"),
    "produce_secs": max(r["produce_secs"] for r in rs),
    "drained_secs": max((r["drained_secs"] or float("inf")) for r in rs),
    "ingest_rate_per_s": sum(r["ingest_rate_per_s"] or 0 for r in rs),
    "latency_ms_worst_process": {"p50": lat("p50"), "p99": lat("p99"), "max": lat("max")},
}, indent=2))
PY
exit "$fail"
