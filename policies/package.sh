#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# Builds the example policies (policies/examples) for wasm32 and packs the
# modules into the artifact meta-guardian's guardian-policies recipe
# fetches, like the prebuilt eBPF object:
#
#     policies/package.sh OUTDIR [VERSION]
#
# writes OUTDIR/guardian-policies-VERSION.tar.gz (VERSION defaults to the
# examples' workspace version) and OUTDIR/guardian-policies-VERSION.tar.gz.sha256
# (sha256sum format). The tarball holds guardian-policies-VERSION/NAME.wasm
# for every example, unsigned: the recipe signs them with the builder's key.
#
# Reproducible: the same sources and toolchain give the same bytes (sorted
# names, fixed mtime/owner/mode, gzip without a name or time stamp).
# CARGO_TARGET_DIR is honoured (default: target/policy-examples of the
# repository, the directory the policy tests use).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
out="${1:?usage: $0 OUTDIR [VERSION]}"
version="${2:-$(sed -n 's/^version = "\(.*\)"$/\1/p' "$here/examples/Cargo.toml" | head -n 1)}"
[ -n "$version" ] || { echo "package.sh: no VERSION given and none in examples/Cargo.toml" >&2; exit 1; }
target="${CARGO_TARGET_DIR:-$repo/target/policy-examples}"

# From the examples' directory, so its .cargo/config.toml applies; its own
# target directory, so an outer build's lock is not in the way.
(cd "$here/examples" && CARGO_TARGET_DIR="$target" \
    cargo build --locked --release --quiet --target wasm32-unknown-unknown)

name="guardian-policies-$version"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/$name"
n=0
for member in $(sed -n 's/^members = \[\(.*\)\]$/\1/p' "$here/examples/Cargo.toml" | tr -d '",'); do
    wasm="$target/wasm32-unknown-unknown/release/${member//-/_}.wasm"
    [ -f "$wasm" ] || { echo "package.sh: $member built no $wasm" >&2; exit 1; }
    install -m 0644 "$wasm" "$stage/$name/"
    n=$((n + 1))
done
[ "$n" -gt 0 ] || { echo "package.sh: no members in examples/Cargo.toml" >&2; exit 1; }

mkdir -p "$out"
tarball="$(cd "$out" && pwd)/$name.tar.gz"
(cd "$stage" && find "$name" -print0 | LC_ALL=C sort -z \
    | tar --null --no-recursion --files-from=- --format=gnu \
          --mtime=@0 --owner=0 --group=0 --numeric-owner --mode=u+rw,go+r,go-w -cf - \
    | gzip -9 -n) >"$tarball.tmp"
mv "$tarball.tmp" "$tarball"
(cd "$(dirname "$tarball")" && sha256sum "$(basename "$tarball")") >"$tarball.sha256"
echo "$tarball: $n policies"
cat "$tarball.sha256"
