#!/usr/bin/env bash
# Attestation at fleet scale, and failover: a nats-server with JetStream,
# two guardian-fleet instances (the release binary) attesting every 10 s,
# DEVICES boards each with its own swtpm (manufactured with EK
# certificates, enrolled by credential activation) answering on
# guardian's real link with guardian's real quote code. A third of the way
# in one instance is killed with SIGKILL and a few boards switch to a
# tampered model; the survivor must take every board over and none may
# show trusted on a tampered answer. Prints a table and a JSON line; exits
# non-zero if a check failed. The bench is guardian/benches/fleet_attest.rs.
#
#   guardian-fleet/bench/attest.sh [DEVICES] [SECONDS]
#
# Defaults: 100 devices, 120 s (after every board is first trusted).
# Figures: docs/fleet.md, "Attestation at fleet scale".
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
devices="${1:-100}" secs="${2:-120}"
export GUARDIAN_NATS_SERVER="${GUARDIAN_NATS_SERVER:-${GUARDIAN_CACHE:-$HOME/.cache/guardian}/nats-venv/bin/nats-server}"
[ -x "$GUARDIAN_NATS_SERVER" ] || { echo "nats-server not found at $GUARDIAN_NATS_SERVER: run cross/setup.sh" >&2; exit 1; }
for t in swtpm swtpm_setup openssl; do
    command -v "$t" >/dev/null || { echo "$t not found (cross/setup.sh installs it)" >&2; exit 1; }
done
# Each board holds a swtpm (two sockets), a link and a spool open.
ulimit -n "$(ulimit -Hn)"
target="${CARGO_TARGET_DIR:-target}"
cargo build --release --locked -p guardian-fleet >&2
cargo bench --locked -p guardian --bench fleet_attest --no-run >&2
export GUARDIAN_FLEET_BIN="$PWD/$target/release/guardian-fleet"
[ "${target#/}" = "$target" ] || export GUARDIAN_FLEET_BIN="$target/release/guardian-fleet"
export GUARDIAN_FLEET_DEVICES="$devices" GUARDIAN_FLEET_SECS="$secs"
# Its own process group: the bench aborts on a panic (the release profile),
# and whatever it started (swtpm, nats-server, the instances) goes with
# the group.
setsid cargo bench --locked -p guardian --bench fleet_attest &
pid=$!
trap 'kill -9 -- -"$pid" 2>/dev/null || true' EXIT INT TERM
wait "$pid"
