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
# shellcheck source=meta-guardian/scripts/kconfig-lib.sh
. "$repo/meta-guardian/scripts/kconfig-lib.sh"
layer_inc="$repo/meta-guardian/recipes-kernel/linux/guardian-kernel-config.inc"
mapfile -t fragments < <(kconfig_layer_fragments "$layer_inc")
[ "${#fragments[@]}" -gt 0 ] || die "no usable fragments in $layer_inc (see above)"
fragments+=("$here/kernel/qemu-virt.cfg")
for f in "$@"; do
    [ -f "$f" ] || die "no such fragment: $f"
    fragments+=("$(cd "$(dirname "$f")" && pwd)/$(basename "$f")")
done

# --- What the fragments ask for ---------------------------------------------
# Fragment syntax: CONFIG_X=value, or "# CONFIG_X is not set". Two fragments
# giving one symbol different values is refused: the qemu fragment must never
# change what the layer ships. The reading, the unpacking and the survival
# check below are shared with the layer's own fragment-merge check.
kconfig_read_fragments "${fragments[@]}" >&2 || die "the fragments disagree on the symbols listed above"

# --- Cache key ------------------------------------------------------------
command -v "${cross}gcc" >/dev/null || die "${cross}gcc not found (run cross/setup.sh)"
command -v pahole >/dev/null || die "pahole not found (dwarves; run cross/setup.sh)"
[ -f "$tarball" ] || die "$tarball not found ($pkg; run cross/setup.sh)"
pkg_version="$(dpkg-query -W -f='${Version}' "$pkg")"
key="$(
    {
        for f in "${fragments[@]}"; do
            printf '== fragment %s\n' "$(basename "$f")"
            # Only the settings: a comment changes no Image.
            grep -v -e '^[[:space:]]*#' -e '^[[:space:]]*$' "$f"
        done
        printf '== %s %s\n' "$pkg" "$pkg_version"
        # The compiler decides DWARF version and ftrace features, pahole
        # decides what BTF looks like: both change the Image.
        printf '== gcc %s\n' "$("${cross}gcc" -dumpfullversion)"
        printf '== pahole %s\n' "$(pahole --version)"
        printf '== script\n'
        cat "${BASH_SOURCE[0]}" "$repo/meta-guardian/scripts/kconfig-lib.sh"
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
src="$(kconfig_unpack_source "$cache" "$pkg")" || die "cannot unpack $tarball"

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
mapfile -t dropped < <(kconfig_dropped "$obj/.config")
if [ "${#dropped[@]}" -gt 0 ]; then
    printf '  %s\n' "${dropped[@]}" >&2
    die "${#dropped[@]} requested symbol(s) did not survive olddefconfig (unmet dependencies or unknown to $KERNEL_SERIES); config: $obj/.config"
fi
log "config verified: all ${#kconfig_want[@]} requested symbols present"
cp "$obj/.config" "$out/config"

# --- Build ------------------------------------------------------------------
jobs="$(nproc)"
log "building Image with -j$jobs (several minutes under a cold cache; log: $build_log)"
kmake -j"$jobs" Image
cp "$obj/arch/arm64/boot/Image" "$out/Image.tmp"
mv "$out/Image.tmp" "$out/Image"
log "built in $((SECONDS - start)) s ($key)"
echo "$out/Image"
