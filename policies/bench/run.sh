#!/usr/bin/env bash
# Build the example policies for wasm32, then run the benchmark on them.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
target="${CARGO_TARGET_DIR:-$here/../../target}"
(cd "$here/../examples" && CARGO_TARGET_DIR="$target/policy-examples" \
    cargo build --locked --release --target wasm32-unknown-unknown -q)
cd "$here"
CARGO_TARGET_DIR="$target/policy-bench" cargo run --locked --release -q -- \
    "$target/policy-examples/wasm32-unknown-unknown/release" "$here/../examples/wat/no-ptrace.wat" "$@"
