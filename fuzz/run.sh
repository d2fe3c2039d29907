#!/usr/bin/env bash
# Build every fuzz target and run each for TIME_PER_TARGET seconds (default
# 25), starting from the seeds in fuzz/corpus/<target>/ (fuzz/seeds.sh
# makes them from a real board; without them libFuzzer starts from
# nothing) and, for the verify target, the committed fixture bundle. Fails
# on the first crash, leak, timeout or failed assertion; libFuzzer leaves
# the input in fuzz/artifacts/<target>/ and prints how to reproduce it:
#   cargo +NIGHTLY fuzz run TARGET fuzz/artifacts/TARGET/crash-…
#
#   fuzz/run.sh [TIME_PER_TARGET] [TARGET…]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=cross/versions.sh
. "$here/../cross/versions.sh"
export PATH="$HOME/.cargo/bin:$PATH"
# cargo-fuzz needs a nightly (-Z sanitizer); the eBPF crate's pinned one.
toolchain="${FUZZ_TOOLCHAIN:-$EBPF_TOOLCHAIN}"
secs="${1:-25}"
shift || true
cd "$here"
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    mapfile -t targets < <(cargo +"$toolchain" fuzz list)
fi
command -v cargo-fuzz >/dev/null || { echo "fuzz: cargo-fuzz is missing (cross/setup.sh installs it)" >&2; exit 1; }

# The fuzz targets never load eBPF: build guardian without its object.
export GUARDIAN_EBPF=skip
# No sanitizer: the code under test is safe Rust (bounds and overflow
# checks stay on, as cargo-fuzz builds with debug assertions), and without
# ASan the cold build is faster and each target runs about twice as many
# inputs in its time. FUZZ_FLAGS="-s address" brings ASan back.
FUZZ_FLAGS="${FUZZ_FLAGS:--s none}"
t0=$SECONDS
# cargo-fuzz has no --locked: check the committed Cargo.lock first.
cargo +"$toolchain" metadata --locked --format-version 1 >/dev/null 2>&1 || cargo +"$toolchain" metadata --locked --format-version 1 >/dev/null
if ! cargo +"$toolchain" fuzz build $FUZZ_FLAGS >"$here/build.log" 2>&1; then
    tail -n 40 "$here/build.log" >&2
    exit 1
fi
echo "fuzz: built the targets in $((SECONDS - t0)) s" >&2

failed=()
for t in "${targets[@]}"; do
    corpus="$here/corpus/$t"
    mkdir -p "$corpus" "$here/artifacts/$t"
    seeds=()
    opts=()
    [ "$t" = verify ] && seeds+=("$here/fixtures")
    case "$t" in log | verify) opts+=(-dict="$here/dicts/evidence.dict") ;; esac
    # The corpus carries over from run to run (each run goes on from the
    # last); keep it to what adds coverage once it grows large.
    if [ "$(find "$corpus" -type f | wc -l)" -gt 10000 ]; then
        cargo +"$toolchain" fuzz cmin $FUZZ_FLAGS "$t" "$corpus" >"$here/artifacts/$t/cmin.log" 2>&1 \
            || { echo "fuzz: $t: minimising the corpus failed, see fuzz/artifacts/$t/cmin.log" >&2; exit 1; }
    fi
    t1=$SECONDS
    # -rss_limit_mb: the parsers read bounded inputs; a blow-up is a bug.
    if cargo +"$toolchain" fuzz run $FUZZ_FLAGS "$t" "$corpus" "${seeds[@]}" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 "${opts[@]}" \
        >"$here/artifacts/$t/run.log" 2>&1; then
        execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$here/artifacts/$t/run.log")"
        echo "fuzz: $t: no crash in $((SECONDS - t1)) s (${execs:-?} inputs)" >&2
    else
        echo "fuzz: $t: FAILED, see fuzz/artifacts/$t/run.log:" >&2
        grep -E 'panicked|ERROR|SUMMARY|Test unit written|assertion' "$here/artifacts/$t/run.log" | head -n 20 >&2 || tail -n 30 "$here/artifacts/$t/run.log" >&2
        failed+=("$t")
    fi
done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz: crashes in: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz: ${#targets[@]} targets, $secs s each, no crash ($((SECONDS - t0)) s in all)" >&2
