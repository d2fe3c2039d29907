# shellcheck shell=bash
# SPDX-License-Identifier: MIT
#
# Kernel-config helpers shared by qemu/build-kernel.sh (the qemu test
# kernel) and scripts/check-kconfig.sh (the layer's fragment-merge check), so
# that both read fragments, unpack the kernel source and judge the merged
# .config the same way. Source it; it defines functions only.
#
#   kconfig_read_fragments FRAGMENT...
#       fills the global associative arrays kconfig_want[SYM]=VALUE and
#       kconfig_want_from[SYM]=FRAGMENT ("# CONFIG_X is not set" is "n");
#       returns 1 and prints the symbols when two fragments disagree.
#   kconfig_layer_fragments INC
#       prints the .cfg fragments that INC (guardian-kernel-config.inc) adds
#       to SRC_URI, as paths in the files/ directory beside it; fails when
#       one is missing, or when files/ holds a .cfg that SRC_URI does not
#       list (it would be shipped to nobody and tested by nobody).
#   kconfig_unpack_source CACHE PACKAGE
#       unpacks /usr/src/PACKAGE.tar.xz (Debian's linux-source-X.Y) once per
#       package version into CACHE/kernel/src/PACKAGE-VERSION, never modified
#       afterwards, and prints that directory. Concurrent callers are
#       serialised by a lock in CACHE/kernel/src.
#   kconfig_dropped CONFIG
#       prints one line per requested symbol whose value in CONFIG differs
#       ("SYM: wanted V, got W (from FRAGMENT)"); nothing when all survived.

# shellcheck disable=SC2034 # read by the scripts that source this file
declare -gA kconfig_want=() kconfig_want_from=()

kconfig_read_fragments() {
    local f line sym val conflicts=()
    kconfig_want=() kconfig_want_from=()
    for f in "$@"; do
        while IFS= read -r line || [ -n "$line" ]; do
            if [[ "$line" =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
                sym="${BASH_REMATCH[1]}" val="${BASH_REMATCH[2]}"
            elif [[ "$line" =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
                sym="${BASH_REMATCH[1]}" val="n"
            else
                continue
            fi
            if [ -n "${kconfig_want[$sym]+x}" ] && [ "${kconfig_want[$sym]}" != "$val" ]; then
                conflicts+=("$sym: ${kconfig_want[$sym]} in ${kconfig_want_from[$sym]##*/}, $val in ${f##*/}")
            fi
            kconfig_want[$sym]="$val"
            kconfig_want_from[$sym]="$f"
        done <"$f"
    done
    if [ "${#conflicts[@]}" -gt 0 ]; then
        printf '  %s\n' "${conflicts[@]}"
        return 1
    fi
}

kconfig_layer_fragments() {
    local inc="$1" dir name f names=()
    dir="$(dirname "$inc")/files"
    [ -f "$inc" ] || { echo "missing $inc" >&2; return 1; }
    mapfile -t names < <(grep -o 'file://[^ ;"\\]*\.cfg' "$inc" | sed 's|^file://||')
    [ "${#names[@]}" -gt 0 ] || { echo "no file://*.cfg in the SRC_URI of $inc" >&2; return 1; }
    for name in "${names[@]}"; do
        [ -f "$dir/$name" ] || { echo "$inc lists $name but $dir/$name does not exist" >&2; return 1; }
    done
    for f in "$dir"/*.cfg; do
        printf '%s\n' "${names[@]}" | grep -qxF "$(basename "$f")" \
            || { echo "$f is not in the SRC_URI of $inc" >&2; return 1; }
    done
    for name in "${names[@]}"; do
        printf '%s\n' "$dir/$name"
    done
}

kconfig_unpack_source() {
    local cache="$1" pkg="$2" version src tarball="/usr/src/$2.tar.xz"
    [ -f "$tarball" ] || { echo "$tarball not found ($pkg; run cross/setup.sh)" >&2; return 1; }
    version="$(dpkg-query -W -f='${Version}' "$pkg")" || return 1
    src="$cache/kernel/src/$pkg-$version"
    mkdir -p "$cache/kernel/src"
    (
        flock 8
        if [ ! -f "$src/Makefile" ]; then
            printf 'unpacking %s (%s)\n' "$tarball" "$version" >&2
            rm -rf "$src" "$src.tmp"
            mkdir -p "$src.tmp"
            tar -xJf "$tarball" -C "$src.tmp" --strip-components=1 || exit 1
            mv "$src.tmp" "$src"
        fi
    ) 8>"$cache/kernel/src/.unpack.lock" || return 1
    printf '%s\n' "$src"
}

kconfig_dropped() {
    local config="$1" line sym w h
    local -A have=()
    while IFS= read -r line; do
        if [[ "$line" =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
            have[${BASH_REMATCH[1]}]="${BASH_REMATCH[2]}"
        fi
    done <"$config"
    for sym in $(printf '%s\n' "${!kconfig_want[@]}" | sort); do
        w="${kconfig_want[$sym]}" h="${have[$sym]:-n}"
        if [ "$w" != "$h" ]; then
            printf '%s: wanted %s, got %s (from %s)\n' "$sym" "$w" "$h" "${kconfig_want_from[$sym]##*/}"
        fi
    done
}
