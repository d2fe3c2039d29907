#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# The layer's kernel fragments, alone, against a real kernel tree: merges the
# fragments that guardian-kernel-config.inc adds to SRC_URI into the arm64
# allnoconfig of Debian's linux-source-$KERNEL_SERIES (6.12) with the
# kernel's own scripts/kconfig/merge_config.sh, runs olddefconfig, and fails
# naming every requested symbol that did not survive (unknown to the
# kernel, or a dependency the fragments do not provide). Nothing is built.
#
# This is what kernel-yocto.bbclass does with the fragments on top of a
# board's defconfig; allnoconfig is the strictest base: whatever a fragment
# needs, it must ask for itself. The qemu test kernel (qemu/build-kernel.sh)
# adds its virt-board fragment on top; this check does not, so the layer's
# fragments cannot lean on it.
#
# Kconfig evaluates the compiler (ftrace and BTF options depend on it) and
# pahole (DEBUG_INFO_BTF needs >= 1.21), so the aarch64 cross gcc and pahole
# must be installed (cross/setup.sh). A pass is cached in
# ${GUARDIAN_CACHE:-~/.cache/guardian}/kconfig-check/ keyed by the fragments,
# the kernel package version, gcc, pahole and these scripts.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
layer="$(dirname "$here")"
repo="$(dirname "$layer")"
# shellcheck source=SCRIPTDIR/kconfig-lib.sh
. "$here/kconfig-lib.sh"

series="${GUARDIAN_KERNEL_SERIES:-}"
if [ -z "$series" ] && [ -f "$repo/cross/versions.sh" ]; then
    # shellcheck disable=SC1091
    series="$(. "$repo/cross/versions.sh" && printf '%s' "$KERNEL_SERIES")"
fi
series="${series:-6.12}"
pkg="linux-source-$series"
cache="${GUARDIAN_CACHE:-$HOME/.cache/guardian}"
cross="aarch64-linux-gnu-"
inc="$layer/recipes-kernel/linux/guardian-kernel-config.inc"

mapfile -t fragments < <(kconfig_layer_fragments "$inc")
[ "${#fragments[@]}" -gt 0 ] || { kconfig_layer_fragments "$inc" >/dev/null; exit 1; }
kconfig_read_fragments "${fragments[@]}" || { echo "the layer's fragments disagree (above)"; exit 1; }

command -v "${cross}gcc" >/dev/null || { echo "${cross}gcc not found (run cross/setup.sh)"; exit 1; }
command -v pahole >/dev/null || { echo "pahole not found (dwarves; run cross/setup.sh)"; exit 1; }
[ -f "/usr/src/$pkg.tar.xz" ] || { echo "/usr/src/$pkg.tar.xz not found ($pkg; run cross/setup.sh)"; exit 1; }
version="$(dpkg-query -W -f='${Version}' "$pkg")"
key="$(
    {
        for f in "${fragments[@]}"; do
            printf '== fragment %s\n' "$(basename "$f")"
            cat "$f"
        done
        printf '== %s %s\n== gcc %s\n== pahole %s\n' "$pkg" "$version" \
            "$("${cross}gcc" -dumpfullversion)" "$(pahole --version)"
        cat "${BASH_SOURCE[0]}" "$here/kconfig-lib.sh"
    } | sha256sum | cut -c1-16
)"
fragment_names="$(printf '%s\n' "${fragments[@]##*/}" | paste -sd' ')"
stamp="$cache/kconfig-check/$key.ok"
if [ -f "$stamp" ]; then
    echo "all ${#kconfig_want[@]} symbols of $fragment_names kept in $pkg $version arm64 (cached $key)"
    exit 0
fi

src="$(kconfig_unpack_source "$cache" "$pkg")"
# Its own object directory: the qemu kernel's (qemu/build-kernel.sh) keeps
# its .config, so neither forces the other to rebuild.
obj="$cache/kconfig-check/obj/$pkg-$version"
mkdir -p "$obj"
exec 9>"$cache/kconfig-check/.lock"
flock 9
log="$obj/check.log"
: >"$log"
kmake() {
    make -C "$src" O="$obj" ARCH=arm64 "CROSS_COMPILE=$cross" "$@" >>"$log" 2>&1 \
        || { tail -n 20 "$log"; echo "make $* failed; log: $log"; exit 1; }
}
kmake allnoconfig
(cd "$obj" && "$src/scripts/kconfig/merge_config.sh" -m -O "$obj" "$obj/.config" "${fragments[@]}") >>"$log" 2>&1 \
    || { tail -n 20 "$log"; echo "merge_config.sh failed; log: $log"; exit 1; }
kmake olddefconfig

mapfile -t dropped < <(kconfig_dropped "$obj/.config")
if [ "${#dropped[@]}" -gt 0 ]; then
    printf '%s\n' "${dropped[@]}"
    echo "${#dropped[@]} symbol(s) requested by $fragment_names did not survive olddefconfig on $pkg $version arm64 allnoconfig; config: $obj/.config"
    exit 1
fi
touch "$stamp"
echo "all ${#kconfig_want[@]} symbols of $fragment_names kept in $pkg $version arm64"
