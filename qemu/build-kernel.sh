#!/usr/bin/env bash
# Build the arm64 test kernel Image for the qemu scenarios.
#
# Usage: qemu/build-kernel.sh [EXTRA.cfg...]
#
# Source: Debian's linux-source-$KERNEL_SERIES package (no network needed).
# Config: allnoconfig + the fragments meta-guardian ships (found through the
# SRC_URI of guardian-kernel-config.inc, so the test kernel cannot drift from
# the layer) + qemu/kernel/qemu-virt.cfg + any EXTRA.cfg given, then
# olddefconfig. Every symbol the fragments ask for must survive into the final
# .config; otherwise the build stops and names the dropped symbols, because a
# silently missing BPF_LSM or DEBUG_INFO_BTF would only show up later as a
# confusing load or attach failure inside the guest.
#
# The Image is cached in ${GUARDIAN_CACHE:-~/.cache/guardian}/kernel/<key>/
# where <key> hashes the fragments, the source package version, the cross
# compiler and pahole versions and this script. A cached Image is returned at
# once. Prints the Image path as the last line on stdout; progress on stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
# shellcheck source=cross/versions.sh
. "$repo/cross/versions.sh"

log() { printf 'build-kernel: %s\n' "$*" >&2; }
die() { printf 'build-kernel: error: %s\n' "$*" >&2; exit 1; }

cache="${GUARDIAN_CACHE:-$HOME/.cache/guardian}"
pkg="linux-source-${KERNEL_SERIES}"
tarball="/usr/src/${pkg}.tar.xz"
cross="aarch64-linux-gnu-"
make_args=(ARCH=arm64 "CROSS_COMPILE=$cross")

# --- Fragments ------------------------------------------------------------
layer_dir="$repo/meta-guardian/recipes-kernel/linux"
layer_inc="$layer_dir/guardian-kernel-config.inc"
[ -f "$layer_inc" ] || die "missing $layer_inc"
mapfile -t layer_names < <(grep -o 'file://[^ ;"\\]*\.cfg' "$layer_inc" | sed 's|^file://||')
[ "${#layer_names[@]}" -gt 0 ] || die "no file://*.cfg in the SRC_URI of $layer_inc"
fragments=()
for name in "${layer_names[@]}"; do
    f="$layer_dir/files/$name"
    [ -f "$f" ] || die "$layer_inc lists $name but $f does not exist"
    fragments+=("$f")
done
# A fragment lying in files/ but missing from SRC_URI would be tested by
# nobody and shipped to nobody: refuse it rather than guess.
for f in "$layer_dir"/files/*.cfg; do
    name="$(basename "$f")"
    printf '%s\n' "${layer_names[@]}" | grep -qxF "$name" \
        || die "$f is not in the SRC_URI of $layer_inc"
done
fragments+=("$here/kernel/qemu-virt.cfg")
for f in "$@"; do
    [ -f "$f" ] || die "no such fragment: $f"
    fragments+=("$(cd "$(dirname "$f")" && pwd)/$(basename "$f")")
done

# --- What the fragments ask for ---------------------------------------------
# Fragment syntax: CONFIG_X=value, or "# CONFIG_X is not set". Two fragments
# giving one symbol different values is refused: the qemu fragment must never
# change what the layer ships.
declare -A want=() want_from=()
conflicts=()
for f in "${fragments[@]}"; do
    while IFS= read -r line || [ -n "$line" ]; do
        if [[ "$line" =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
            sym="${BASH_REMATCH[1]}" val="${BASH_REMATCH[2]}"
        elif [[ "$line" =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
            sym="${BASH_REMATCH[1]}" val="n"
        else
            continue
        fi
        if [ -n "${want[$sym]+x}" ] && [ "${want[$sym]}" != "$val" ]; then
            conflicts+=("$sym: ${want[$sym]} in ${want_from[$sym]##*/}, $val in ${f##*/}")
        fi
        want[$sym]="$val"
        want_from[$sym]="$f"
    done <"$f"
done
if [ "${#conflicts[@]}" -gt 0 ]; then
    printf '  %s\n' "${conflicts[@]}" >&2
    die "fragments disagree on ${#conflicts[@]} symbol(s)"
fi

# --- Cache key ------------------------------------------------------------
command -v "${cross}gcc" >/dev/null || die "${cross}gcc not found (run cross/setup.sh)"
command -v pahole >/dev/null || die "pahole not found (dwarves; run cross/setup.sh)"
[ -f "$tarball" ] || die "$tarball not found ($pkg; run cross/setup.sh)"
pkg_version="$(dpkg-query -W -f='${Version}' "$pkg")"
key="$(
    {
        for f in "${fragments[@]}"; do
            printf '== fragment %s\n' "$(basename "$f")"
            cat "$f"
        done
        printf '== %s %s\n' "$pkg" "$pkg_version"
        # The compiler decides DWARF version and ftrace features, pahole
        # decides what BTF looks like: both change the Image.
        printf '== gcc %s\n' "$("${cross}gcc" -dumpfullversion)"
        printf '== pahole %s\n' "$(pahole --version)"
        printf '== script\n'
        cat "${BASH_SOURCE[0]}"
    } | sha256sum | cut -c1-16
)"
out="$cache/kernel/$key"
if [ -s "$out/Image" ]; then
    log "cached ($key)"
    echo "$out/Image"
    exit 0
fi

mkdir -p "$cache/kernel"
# One build at a time: the object directory is shared between keys so that a
# fragment change rebuilds incrementally instead of from scratch.
exec 9>"$cache/kernel/.lock"
flock 9
if [ -s "$out/Image" ]; then
    log "cached ($key, built while waiting)"
    echo "$out/Image"
    exit 0
fi

start=$SECONDS

# --- Source: unpacked once per package version, never modified ------------
src="$cache/kernel/src/$pkg-$pkg_version"
if [ ! -f "$src/Makefile" ]; then
    log "unpacking $tarball ($pkg_version)"
    rm -rf "$src" "$src.tmp"
    mkdir -p "$src.tmp"
    tar -xJf "$tarball" -C "$src.tmp" --strip-components=1
    mv "$src.tmp" "$src"
fi

# Out-of-tree objects (O=) keep the source pristine for every key.
obj="$cache/kernel/obj/$pkg-$pkg_version"
mkdir -p "$obj" "$out"
build_log="$out/build.log"
: >"$build_log"
# Fixed build metadata so that rebuilds of the same key give the same Image.
export KBUILD_BUILD_USER=guardian KBUILD_BUILD_HOST=guardian
export KBUILD_BUILD_TIMESTAMP="Thu Jan  1 00:00:00 UTC 1970"

kmake() {
    if ! make -C "$src" O="$obj" "${make_args[@]}" "$@" >>"$build_log" 2>&1; then
        tail -n 40 "$build_log" >&2
        die "make $* failed; full log: $build_log"
    fi
}

log "configuring: allnoconfig + ${fragments[*]##*/}"
kmake allnoconfig
if ! (cd "$obj" && "$src/scripts/kconfig/merge_config.sh" -m -O "$obj" "$obj/.config" "${fragments[@]}") >>"$build_log" 2>&1; then
    tail -n 40 "$build_log" >&2
    die "merge_config.sh failed; full log: $build_log"
fi
kmake olddefconfig

# --- Every requested symbol must have survived -----------------------------
declare -A have=()
while IFS= read -r line; do
    if [[ "$line" =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
        have[${BASH_REMATCH[1]}]="${BASH_REMATCH[2]}"
    fi
done <"$obj/.config"
dropped=()
for sym in $(printf '%s\n' "${!want[@]}" | sort); do
    w="${want[$sym]}" h="${have[$sym]:-n}"
    if [ "$w" != "$h" ]; then
        dropped+=("$sym: wanted $w, got $h (from ${want_from[$sym]##*/})")
    fi
done
if [ "${#dropped[@]}" -gt 0 ]; then
    printf '  %s\n' "${dropped[@]}" >&2
    die "${#dropped[@]} requested symbol(s) did not survive olddefconfig (unmet dependencies or unknown to $KERNEL_SERIES); config: $obj/.config"
fi
log "config verified: all ${#want[@]} requested symbols present"
cp "$obj/.config" "$out/config"

# --- Build ------------------------------------------------------------------
jobs="$(nproc)"
log "building Image with -j$jobs (several minutes under a cold cache; log: $build_log)"
kmake -j"$jobs" Image
cp "$obj/arch/arm64/boot/Image" "$out/Image.tmp"
mv "$out/Image.tmp" "$out/Image"
log "built in $((SECONDS - start)) s ($key)"
echo "$out/Image"
