#!/usr/bin/env bash
# A long outage: devices (guardian's real reporter, via the simulator) keep
# producing while every NATS node is down, then the cluster comes back and
# the store must hold every record exactly once.
#
#   guardian-fleet/bench/outage.sh [DEVICES] [RATE] [OUTAGE_SECONDS]
#
# Defaults: 10 devices, 200 events/s, 600 s (10 minutes: 120,000 events
# produced while cut off). Prints the simulator's audit. Figures:
# docs/fleet.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
devices="${1:-10}" rate="${2:-200}" outage="${3:-600}"
nats="${GUARDIAN_NATS_SERVER:-${GUARDIAN_CACHE:-$HOME/.cache/guardian}/nats-venv/bin/nats-server}"
[ -x "$nats" ] || { echo "nats-server not found at $nats: run cross/setup.sh" >&2; exit 1; }
cargo build --release --locked -p guardian-fleet >&2
bin="${CARGO_TARGET_DIR:-target}/release/guardian-fleet"
work="$(mktemp -d /var/tmp/guardian-outage.XXXXXX)"
pids=()
cleanup() { kill -9 "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
# Six ports (three clients, three routes) free right now: other programs on
# the machine (a TPM simulator, another server) may hold any of a random
# pick, and a node that cannot listen dies at once.
ports_free() {
    python3 - "$@" <<'PY'
import socket, sys
for p in sys.argv[1:]:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", int(p)))
    except OSError:
        sys.exit(1)
    finally:
        s.close()
PY
}
for _ in $(seq 50); do
    base=$((20000 + RANDOM % 20000))
    ports_free $((base + 1)) $((base + 2)) $((base + 3)) $((base + 11)) $((base + 12)) $((base + 13)) && break
done
urls=()
node=()
start_node() {
    "$nats" -c "$work/n$1.conf" -l "$work/n$1.log" </dev/null >/dev/null 2>&1 &
    node[$1]=$!
    pids+=($!)
}
for i in 1 2 3; do
    routes=""
    for j in 1 2 3; do [ "$j" = "$i" ] || routes="$routes nats-route://127.0.0.1:$((base + 10 + j))"; done
    cat >"$work/n$i.conf" <<CONF
server_name: n$i
listen: 127.0.0.1:$((base + i))
jetstream { store_dir: "$work/n$i" }
cluster { name: guardian-outage, listen: 127.0.0.1:$((base + 10 + i)), routes: [$(echo $routes | sed 's/ /, /g')] }
CONF
    start_node "$i"
    urls+=("nats://127.0.0.1:$((base + i))")
done
all="$(IFS=,; echo "${urls[*]}")"
RUST_LOG=warn "$bin" --nats "$all" serve --replicas 3 --instance outage-1 </dev/null >/dev/null 2>"$work/fleet.log" &
pids+=($!)
for _ in $(seq 120); do "$bin" --nats "$all" status >/dev/null 2>&1 && break; sleep 1; done
# Every node is up before the run starts (a node that died at start would
# make the outage below meaningless): say which, and stop.
for i in 1 2 3; do
    kill -0 "${node[$i]}" 2>/dev/null || { echo "nats node n$i did not stay up:" >&2; tail -n 5 "$work/n$i.log" >&2; exit 1; }
done
total=$((outage + 60))
echo "== $devices devices, $rate events/s for $total s; every node down from 30 s for $outage s ==" >&2
RUST_LOG=error "$bin" --nats "$all" simulate --devices "$devices" --rate "$rate" --duration "${total}s" \
    --dir "$work/spools" --prefix out --drain-wait 600s >"$work/sim.json" &
sim=$!
sleep 30
for i in 1 2 3; do kill -9 "${node[$i]}"; done
echo "all nodes killed at $(date +%T); records wait in the devices' spools" >&2
sleep "$outage"
for i in 1 2 3; do start_node "$i"; done
echo "nodes back at $(date +%T)" >&2
wait "$sim"
cat "$work/sim.json"
