#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine (run as root: the
# tests load eBPF programs). Installs what it needs first (cross/setup.sh).
#
#   ./test.sh            everything
#   ./test.sh --no-qemu  skip the arm64 boot test (quicker local loop)
#
# GUARDIAN_FUZZ_SECS sets how long each fuzz target runs (default 20 s).
# GUARDIAN_OUTAGE_SECS sets how long every NATS node stays down in the
# fleet's outage test (default 600 s: the ten minutes the fleet link
# promises; it runs in the background beside the other steps).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
. cross/versions.sh

qemu=1
for a in "$@"; do
    case "$a" in
        --no-qemu) qemu=0 ;;
        *) echo "usage: $0 [--no-qemu]" >&2; exit 2 ;;
    esac
done
step() { printf '\n\033[1;34m==> %s\033[0m\n' "$*"; }
t0=$SECONDS

step "setup (idempotent)"
bash cross/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
# The fleet link's tests run against this broker (cross/setup.sh installs it).
export GUARDIAN_NATS_SERVER="${GUARDIAN_CACHE:-$HOME/.cache/guardian}/nats-venv/bin/nats-server"
# The fleet's web page test runs headless Chromium (cross/setup.sh installs
# it); here its absence is a failure, not a skip.
export GUARDIAN_REQUIRE_CHROMIUM=1

step "format and lints"
cargo fmt --all --check
cargo fmt --check --manifest-path fuzz/Cargo.toml
cargo clippy --locked --all-targets -- -D warnings
# The agent without the fleet link (its `report` feature off, for boards
# that report to no fleet) builds clean too.
cargo clippy --locked -p guardian --no-default-features -- -D warnings
cargo +"$EBPF_TOOLCHAIN" clippy --locked -p guardian-ebpf --target bpfel-unknown-none \
    -Z build-std=core -- -D warnings

step "fleet: every NATS node down for ${GUARDIAN_OUTAGE_SECS:-600} s while devices report (in the background; its audit comes last)"
mkdir -p target
# In a session of its own, so that a failing step before its audit stops
# it with its nodes and devices (the whole group).
setsid guardian-fleet/bench/outage.sh 10 200 "${GUARDIAN_OUTAGE_SECS:-600}" >target/outage.log 2>&1 &
outage_pid=$!
trap 'kill -TERM -- "-$outage_pid" 2>/dev/null || true' EXIT
echo "started (pid $outage_pid, log target/outage.log)"

step "the agent's module graph: no import circle, and docs/architecture.md shows it as it is"
python3 guardian/scripts/module-graph.py --check | tail -n 1

step "meta-guardian: offline layer checks, and each check catches its planted defect"
meta-guardian/scripts/check-layer.sh
meta-guardian/scripts/test-check-layer.sh

step "meta-guardian: the layer under a real bitbake (README's and boards.md's blocks, kas files, parses, the guardian recipe fetched offline, task graphs)"
if [ -n "${GUARDIAN_OE_SOURCES:-}" ]; then
    meta-guardian/scripts/check-bitbake.sh "$GUARDIAN_OE_SOURCES"
    meta-guardian/scripts/test-check-bitbake.sh "$GUARDIAN_OE_SOURCES"
else
    printf '\033[1;33m%s\033[0m\n' \
        "SKIPPED: meta-guardian/scripts/check-bitbake.sh (real bitbake + oe-core) did NOT run." \
        "  Why: it needs local git checkouts of bitbake, openembedded-core, meta-openembedded," \
        "  meta-security, meta-raspberrypi and meta-tegra; CI has no network and no such checkouts." \
        "  To run it: GUARDIAN_OE_SOURCES=/path/to/sources ./test.sh, or directly:" \
        "    meta-guardian/scripts/check-bitbake.sh /path/to/sources" \
        "    meta-guardian/scripts/test-check-bitbake.sh /path/to/sources" \
        "  (/path/to/sources holds NAME, NAME.git or OWNER+NAME/repo for each; see its --help)"
fi

step "builds with the minimum supported Rust ($MSRV, Yocto whinlatter)"
cargo +"$MSRV" check --locked --all-targets

step "unit and host integration tests (real eBPF on this kernel)"
cargo test --locked

fuzz_secs="${GUARDIAN_FUZZ_SECS:-20}"
step "fuzz: every target for $fuzz_secs s from seeds made on a real board (cargo-fuzz, $EBPF_TOOLCHAIN)"
fuzz/seeds.sh
fuzz/run.sh "$fuzz_secs"

step "policies: the ABI crate, and the example policies built and linted for wasm32, their unit tests on the host"
cargo test --locked -p guardian-policy-abi --features alloc
(cd policies/examples && cargo clippy --locked --release --target wasm32-unknown-unknown -- -D warnings)
# --lib: the host runs the unit tests (what a full state table does);
# the cdylib itself only links for wasm32.
(cd policies/examples && cargo test --locked --lib)
# (guardian's tests above build the examples and run them in wasmi; the
# wasmi/native/wasmtime benchmark is policies/bench/run.sh, not run here.)

step "the example inference service (the workload guardian protects)"
cargo test --locked --manifest-path examples/inference/Cargo.toml

if [ "$qemu" -eq 1 ]; then
    step "arm64 boot test: BPF LSM enforcement in qemu-system-aarch64"
    qemu/run-scenarios.sh

    step "the boot test catches a broken scenario"
    if qemu/run-scenarios.sh --break >target/qemu/break.log 2>&1; then
        echo "a planted failing scenario was NOT detected" >&2
        tail -n 30 target/qemu/break.log >&2
        exit 1
    fi
    grep -q 'broken-expects-tamper-to-succeed' target/qemu/break.log
    echo "planted failure detected, as it must be"
fi

step "fleet: the outage's audit (every record given is stored exactly once)"
if ! wait "$outage_pid"; then
    tail -n 40 target/outage.log >&2
    exit 1
fi
trap - EXIT
grep -E '"(given|stored|missing|stored_twice|connected)"|nodes back|killed' target/outage.log

step "all tests passed in $((SECONDS - t0)) s"
