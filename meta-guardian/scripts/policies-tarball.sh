#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Prints the path of the example policies packed by the repository's
# policies/package.sh, building them only when needed: the tarball is
# cached under ~/.cache/guardian/policies (or $GUARDIAN_CACHE/policies),
# keyed by the policy sources, package.sh and the toolchain (a cold wasm32
# build takes about a minute, a cached one nothing). The cargo target
# directory is kept there too, so a changed source rebuilds incrementally.
#
#     meta-guardian/scripts/policies-tarball.sh [REPO]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="${1:-$(dirname "$(dirname "$here")")}"
src="$repo/policies"
[ -x "$src/package.sh" ] || { echo "no $src/package.sh to pack the example policies with" >&2; exit 1; }
key="$( (cd "$src" && find package.sh abi sdk examples -name target -prune -o -type f -print0 \
            | LC_ALL=C sort -z | xargs -0 sha256sum; rustc -V; cargo -V) | sha256sum | cut -c1-16)"
base="${GUARDIAN_CACHE:-$HOME/.cache/guardian}/policies"
dir="$base/$key"
t="$(find "$dir" -maxdepth 1 -name '*.tar.gz' 2>/dev/null | head -n 1 || true)"
if [ -z "$t" ]; then
    mkdir -p "$base"
    # Only the newest tarball is kept.
    find "$base" -mindepth 1 -maxdepth 1 -type d ! -name target -exec rm -rf {} +
    CARGO_TARGET_DIR="$base/target" "$src/package.sh" "$dir.tmp" >&2 || { rm -rf "$dir.tmp"; exit 1; }
    mv "$dir.tmp" "$dir"
    t="$(find "$dir" -maxdepth 1 -name '*.tar.gz' | head -n 1)"
fi
printf '%s\n' "$t"
