#!/usr/bin/env bash
# Seed corpora for the fuzz targets, made from real data: a board measured
# into swtpm (manifest, log, quote, evidence bundle) and guardian's own
# policy event encoding. Written into fuzz/corpus/<target>/ (not
# committed); run.sh starts from them. Each seed is checked to parse
# (guardian/tests/it/fuzz_seeds.rs does the work).
#
#   fuzz/seeds.sh             write the seeds
#   fuzz/seeds.sh --fixture   also rewrite fuzz/fixtures/ (the verify
#                             target's trusted bundle, AK, key and nonce;
#                             commit the result)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PATH="$HOME/.cargo/bin:$PATH"
case "${1:-}" in
    --fixture) export GUARDIAN_FUZZ_FIXTURE=1 ;;
    "") ;;
    *) echo "usage: $0 [--fixture]" >&2; exit 2 ;;
esac
mkdir -p "$here/corpus"
cd "$here/.."
GUARDIAN_FUZZ_SEEDS="$here/corpus" cargo test --locked -q -p guardian --test it \
    -- --test-threads=1 fuzz_seeds::seeds_from_a_real_board_parse
echo "seeds: $(find "$here/corpus" -type f | wc -l) files in $here/corpus" >&2
