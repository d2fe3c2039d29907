#!/usr/bin/env bash
# The planted lines are bitbake metadata: ${...} must reach the files as is.
# shellcheck disable=SC2016
# SPDX-License-Identifier: MIT
#
# Shows that check-bitbake.sh catches what it is for, like
# test-check-layer.sh does for the offline checks:
#
#     meta-guardian/scripts/test-check-bitbake.sh [--release R] [--work DIR] SOURCES_DIR
#
# Copies the layer to a temporary directory, runs the copy's
# check-bitbake.sh (--quick: the README's blocks up to bitbake -p and the
# guardian fetch/unpack; docs/boards.md's boards, the Raspberry Pi blocks
# and the oe-core-alone scenario, and the kas files, on RELEASE; the Jetson
# block on wrynose, the release it is for) and requires it to pass, then
# plants one defect per copy and requires the check to fail on the step
# that owns it:
#   - a missing layer dependency: the README's layer block, and
#     docs/boards.md's BBLAYERS, without meta-python, which meta-tpm needs;
#   - a recipe that fails to parse: the guardian recipe inherits a class that
#     does not exist;
#   - the kernel include without its meta-oe guard: the "guardian" feature
#     with oe-core alone is no longer refused by name;
#   - an unknown key in a kas file, and a kas file on a bitbake branch that
#     does not exist (the old "2.14");
#   - a kas file whose local.conf header drops tpm2 (meta-tpm's warning,
#     which only a parse in kas's build directory shows);
#   - a wrong crate checksum in guardian-crates.inc (the offline fetch of
#     the guardian recipe);
#   - the Raspberry Pi block with a comment after MACHINE's value (bitbake
#     takes it into the value: the block's own former bug);
#   - a misspelt variable in docs/boards.md's qemuarm64 block (parses, and
#     does nothing);
#   - the Jetson block installing a package meta-tegra does not have (as
#     optee-ftpm on whinlatter).
# The source fetched is the guardian work tree this script sits in
# (--guardian-repo), since the copies are not git work trees.
# The copies share check-bitbake.sh's work area (same paths for the layer),
# so bitbake reparses only the files a defect touched. Run it after
# check-bitbake.sh, never at the same time (one work area).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
layer="$(dirname "$here")"
release=whinlatter
args=()
sources=""
while [ $# -gt 0 ]; do
    case "$1" in
        --release) release="$2"; shift 2 ;;
        --work|--user|--threads) args+=("$1" "$2"); shift 2 ;;
        -*) echo "unknown option $1" >&2; exit 2 ;;
        *) sources="$1"; shift ;;
    esac
done
[ -n "$sources" ] || { echo "usage: $0 [--release R] [--work DIR] SOURCES_DIR" >&2; exit 2; }
tmp="$(mktemp -d)"
chmod 755 "$tmp"
trap 'rm -rf "$tmp"' EXIT

fresh() { # name -> a clean copy of the layer
    cp -a "$layer" "$tmp/$1"
    printf '%s\n' "$tmp/$1"
}

repo="$(git -C "$layer" rev-parse --show-toplevel 2>/dev/null || true)"
[ -z "$repo" ] || args+=(--guardian-repo "$repo")

run_check() { # copy scenario... (REL=release in the environment: another release)
    local d="$1" s sc=()
    shift
    for s in "$@"; do sc+=(--scenario "$s"); done
    "$d/scripts/check-bitbake.sh" --quick --release "${REL:-$release}" "${args[@]}" "${sc[@]}" "$sources" 2>&1
}

failures=0
expect_fail() { # name "FAIL line substring" copy scenario...
    local name="$1" want="$2" d="$3" out status=0
    shift 3
    if diff -rq "$layer" "$d" >/dev/null; then
        printf 'NOT PLANTED  %s (the copy is the same as the layer: fix the sed)\n' "$name"
        failures=$((failures + 1))
        return
    fi
    out="$(run_check "$d" "$@")" || status=$?
    if [ "$status" -ne 0 ] && grep -E '^FAIL  ' <<<"$out" | grep -qF "$want"; then
        printf 'ok    %-40s caught by: %s\n' "$name" "$(grep -E '^FAIL  ' <<<"$out" | grep -m1 -F "$want")"
    else
        printf 'NOT CAUGHT  %s (expected a FAIL line with "%s", exit %s)\n' "$name" "$want" "$status"
        printf '%s\n' "$out" | sed 's/^/      /'
        failures=$((failures + 1))
    fi
}

d="$(fresh clean)"
if out="$(run_check "$d" readme boards rpi corefeature kas)" && out="$out
$(REL=wrynose run_check "$d" jetson)"; then
    echo "ok    clean copy passes (readme up to bitbake -p and the guardian fetch/unpack, boards, rpi, corefeature, kas; jetson on wrynose)"
else
    echo "the clean copy of the layer fails check-bitbake.sh:"
    printf '%s\n' "$out" | sed 's/^/      /'
    exit 1
fi

d="$(fresh no-meta-python)"
sed -i '/^bitbake-layers add-layer ..\/meta-openembedded\/meta-python$/d' "$d/README.md"
expect_fail "missing layer dependency (meta-python)" "readme-add-layers" "$d" readme

d="$(fresh boards-no-meta-python)"
sed -i '/^  ${TOPDIR}\/..\/meta-openembedded\/meta-python \\$/d' "$d/docs/boards.md"
expect_fail "docs/boards.md's BBLAYERS without meta-python" "boards] show-layers" "$d" boards

d="$(fresh unparsable)"
printf '\ninherit guardian_no_such_class\n' >>"$d/recipes-security/guardian/guardian_0.1.0.bb"
expect_fail "recipe that fails to parse" "] parse" "$d" readme

d="$(fresh no-meta-oe-guard)"
python3 - "$d/recipes-kernel/linux/guardian-kernel-config.inc" <<'PY'
import re, sys
p = sys.argv[1]
t = open(p).read()
t = re.sub(r"python __anonymous\(\) \{.*?\n\}\n", "", t, flags=re.S)
open(p, "w").write(t)
PY
expect_fail "feature without meta-oe not refused" "parse refused naming meta-oe" "$d" corefeature

d="$(fresh kas-unknown-key)"
printf 'local_conf_headers:\n  typo: |\n    FOO = "1"\n' >>"$d/kas/qemuarm64.yml"
expect_fail "unknown key in a kas file" "qemuarm64.yml: kas dump" "$d" kas

d="$(fresh kas-bitbake-2.14)"
sed -i 's/^    branch: "2.16"$/    branch: "2.14"/' "$d/kas/include/base.yml"
expect_fail "kas file on bitbake branch 2.14" "qemuarm64.yml: kas dump" "$d" kas

d="$(fresh kas-no-tpm2)"
# A board file overriding the base's "guardian" header without tpm2.
printf 'local_conf_header:\n  guardian: |\n    DISTRO_FEATURES:append = " guardian"\n    INIT_MANAGER = "systemd"\n    IMAGE_INSTALL:append = " packagegroup-guardian"\n' >>"$d/kas/qemuarm64.yml"
expect_fail "kas file without tpm2 (meta-tpm warns at parse)" "qemuarm64.yml: kas shell -c 'bitbake -p'" "$d" kas

d="$(fresh wrong-crate-checksum)"
sed -i '0,/\.sha256sum\] = "[0-9a-f]*"/s//.sha256sum] = "0000000000000000000000000000000000000000000000000000000000000000"/' \
    "$d/recipes-security/guardian/guardian-crates.inc"
expect_fail "wrong crate checksum in guardian-crates.inc" "] fetch-guardian" "$d" readme

d="$(fresh rpi-machine-comment)"
sed -i 's/^MACHINE = "raspberrypi4-64"$/MACHINE = "raspberrypi4-64"        # or "raspberrypi5"/' "$d/docs/boards.md"
expect_fail "Raspberry Pi block: comment after MACHINE's value" "rpi-raspberrypi4-64] show-layers" "$d" rpi

d="$(fresh boards-misspelt-variable)"
sed -i 's/^GUARDIAN_MANIFEST_SIGNING_KEY = /GUARDIAN_MANIFEST_SIGNKEY = /' "$d/docs/boards.md"
expect_fail "docs/boards.md qemuarm64 block: misspelt variable" "boards] every variable the block sets is read" "$d" boards

d="$(fresh jetson-missing-package)"
sed -i 's/^\(IMAGE_INSTALL:append = " packagegroup-guardian optee-ftpm\) /\1-ta /' "$d/docs/boards.md"
REL=wrynose expect_fail "Jetson block: a package meta-tegra does not have" "jetson-orin-nano-devkit] graph-image" "$d" jetson

if [ "$failures" -ne 0 ]; then
    echo "$failures planted defect(s) not caught"
    exit 1
fi
echo "every planted defect caught"
