#!/usr/bin/env bash
# The check functions are called through run(), which shellcheck cannot follow.
# shellcheck disable=SC2317
# SPDX-License-Identifier: MIT
#
# Offline checks of the meta-guardian layer (no bitbake, no network except
# PyPI the first time, to install oelint-adv). Run from anywhere, e.g. from
# the repository root:
#
#     meta-guardian/scripts/check-layer.sh
#
# Prints one PASS/FAIL line per check, the problems under a failing one, and
# exits 1 if any check failed. Arguments, if any, select the checks whose
# title contains one of them (test-check-layer.sh runs one check per
# planted defect that way). The layer checked is the one this script sits
# in; the repository around it provides Cargo.lock and guardian/systemd/.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
layer="$(dirname "$here")"
repo="$(dirname "$layer")"

# oelint-adv and the parser and rule data it uses, pinned together so every
# machine reports the same findings. Bump all three at once.
OELINT_PINS=(oelint-adv==9.11.2 oelint-parser==8.13.2 oelint-data==1.5.26)
OELINT_VENV="${GUARDIAN_OELINT_VENV:-$HOME/.cache/guardian/oelint-venv}"
# kas, for checking the kas files with kas's own loader and schema (no
# fetching). A venv of its own: its dependencies must not move oelint's.
KAS_PINS=(kas==5.5)
KAS_VENV="${GUARDIAN_KAS_VENV:-$HOME/.cache/guardian/kas-venv}"
# Rules switched off for the whole layer, each for a reason that holds for
# every file:
#   oelint.vars.homepageping  fetches HOMEPAGE over the network: the result
#                             depends on the machine, and CI is offline.
#   oelint.var.bbclassextend  suggests native/nativesdk variants; guardian
#                             is a target daemon (eBPF + TPM on the device).
#   oelint.spaces.lineend     oelint also lints the "feature off" branch of
#                             the gated require in each bbappend, where the
#                             inline python expands to "" and leaves
#                             "require " ending in a space; the layer's own
#                             whitespace check below replaces it for every
#                             line of metadata.
OELINT_SUPPRESS=(oelint.vars.homepageping oelint.var.bbclassextend oelint.spaces.lineend)
# Images only: an image is not a product that CVEs are filed against.
OELINT_SUPPRESS_IMAGES=(oelint.var.suggestedvar.CVE_PRODUCT)

failed=0
report() { # name status output
    local name="$1" status="$2" out="$3"
    if [ "$status" -eq 0 ]; then
        printf 'PASS  %s\n' "$name"
    else
        printf 'FAIL  %s\n' "$name"
        [ -n "$out" ] && printf '%s\n' "$out" | sed 's/^/      /'
        failed=1
    fi
}

venv_ready() { # venv pin...
    local venv="$1" have pin
    shift
    [ -x "$venv/bin/python" ] || return 1
    have="$("$venv/bin/pip" freeze 2>/dev/null | tr 'A-Z_' 'a-z-')"
    for pin in "$@"; do
        grep -qxF "$(printf '%s' "$pin" | tr 'A-Z_' 'a-z-')" <<<"$have" || return 1
    done
}

install_venv() { # venv pin...
    local venv="$1"
    shift
    if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
        echo "python3 venv support is missing (Debian: apt-get install python3-venv)"
        return 1
    fi
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv" \
        && "$venv/bin/pip" install --quiet --disable-pip-version-check "$@"
}

oelint_ready() { venv_ready "$OELINT_VENV" "${OELINT_PINS[@]}"; }
install_oelint() { install_venv "$OELINT_VENV" "${OELINT_PINS[@]}"; }

# --- (h) kas files ----------------------------------------------------------------
check_kas() {
    venv_ready "$KAS_VENV" "${KAS_PINS[@]}" || install_venv "$KAS_VENV" "${KAS_PINS[@]}" || return 1
    "$KAS_VENV/bin/python" "$here/check-kas.py" "$layer" 2>&1
}

# --- (a) oelint-adv -----------------------------------------------------------
check_oelint() {
    oelint_ready || install_oelint || return 1
    local common=(--release whinlatter --mode all --quiet --relpaths
                  "--constantmods=+$here/oelint-constants.json")
    local s
    for s in "${OELINT_SUPPRESS[@]}"; do common+=(--suppress "$s"); done
    local recipes=() images=() f status=0
    while IFS= read -r -d '' f; do
        case "$f" in
            */recipes-core/images/*) images+=("$f") ;;
            *) recipes+=("$f") ;;
        esac
    done < <(find "$layer" -type f \( -name '*.bb' -o -name '*.bbappend' -o -name '*.bbclass' \
                -o -name '*.inc' \) -print0 | sort -z)
    cd "$layer" || return 1
    if [ "${#recipes[@]}" -gt 0 ]; then
        "$OELINT_VENV/bin/oelint-adv" "${common[@]}" "${recipes[@]}" 2>&1 || status=1
    fi
    if [ "${#images[@]}" -gt 0 ]; then
        local extra=()
        for s in "${OELINT_SUPPRESS_IMAGES[@]}"; do extra+=(--suppress "$s"); done
        "$OELINT_VENV/bin/oelint-adv" "${common[@]}" "${extra[@]}" "${images[@]}" 2>&1 || status=1
    fi
    return "$status"
}

# --- (f) systemd units ----------------------------------------------------------
# The units name /usr/bin/guardian, which does not exist on the machine that
# runs the check, and systemd-analyze verify refuses an ExecStart that is not
# executable. So verify copies in which that one path points at an
# executable stub; everything else in the units is checked as written.
# --man=no: the units' Documentation= names guardian(8), which is only
# looked up with man(1) on the machine running the check.
# systemd-analyze exits 0 on some problems (unknown keys are "ignoring"
# warnings), so any output at all is a failure.
check_units() {
    local tmp out status=0
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' RETURN
    mkdir -p "$tmp/bin" "$tmp/units"
    printf '#!/bin/sh\nexit 0\n' >"$tmp/bin/guardian"
    chmod +x "$tmp/bin/guardian"
    local u
    for u in "$repo"/guardian/systemd/*.service; do
        [ -f "$u" ] || { echo "no units in $repo/guardian/systemd"; return 1; }
        sed "s,/usr/bin/guardian,$tmp/bin/guardian,g" "$u" >"$tmp/units/$(basename "$u")"
    done
    out="$(cd "$tmp/units" && SYSTEMD_LOG_COLOR=0 systemd-analyze verify --man=no ./*.service 2>&1)" || status=1
    [ -z "$out" ] || { printf '%s\n' "$out" | sed "s,$tmp/bin/guardian,/usr/bin/guardian,g"; status=1; }
    return "$status"
}

# --- (g) golden manifests -------------------------------------------------------
# The real guardian judges what guardian-manifest.py writes. GUARDIAN_BIN
# names a built guardian (test-check-layer.sh passes one); otherwise it is
# built here from the repository around the layer (a cargo no-op when the
# rest of CI has built it already).
guardian_binary() {
    if [ -n "${GUARDIAN_BIN:-}" ]; then
        printf '%s\n' "$GUARDIAN_BIN"
        return 0
    fi
    [ -f "$repo/Cargo.toml" ] || { echo "no GUARDIAN_BIN and no cargo workspace in $repo" >&2; return 1; }
    (cd "$repo" && cargo build --locked --quiet -p guardian) >&2 || return 1
    printf '%s\n' "${CARGO_TARGET_DIR:-$repo/target}/debug/guardian"
}

check_manifest() {
    local bin
    bin="$(guardian_binary)" || { echo "cannot build guardian (cargo build -p guardian)"; return 1; }
    "$here/check-manifest.sh" "$bin"
}

# --- (i) signed policies --------------------------------------------------------
# The example policies as policies/package.sh packs them. GUARDIAN_POLICIES_TARBALL
# names a packed tarball (test-check-layer.sh passes one); otherwise
# policies-tarball.sh packs them from the repository around the layer,
# cached under ~/.cache/guardian/policies keyed by the inputs.
policies_tarball() {
    if [ -n "${GUARDIAN_POLICIES_TARBALL:-}" ]; then
        printf '%s\n' "$GUARDIAN_POLICIES_TARBALL"
        return 0
    fi
    "$here/policies-tarball.sh" "$repo"
}

check_policies() {
    local bin tarball
    bin="$(guardian_binary)" || { echo "cannot build guardian (cargo build -p guardian)"; return 1; }
    tarball="$(policies_tarball)" || { echo "cannot pack the example policies (policies/package.sh)"; return 1; }
    "$here/check-policies.sh" "$bin" "$tarball"
}

only=("$@")
selected() { # title
    [ "${#only[@]}" -eq 0 ] && return 0
    local o
    for o in "${only[@]}"; do
        [[ "$1" == *"$o"* ]] && return 0
    done
    return 1
}

run() { # name command...
    local name="$1" out status
    shift
    selected "$name" || return 0
    out="$("$@" 2>&1)"
    status=$?
    report "$name" "$status" "$out"
}

run "oelint-adv ${OELINT_PINS[0]#*==} clean on every .bb/.bbappend/.bbclass/.inc" check_oelint
run "layer structure: layer.conf fields, README.md, SECURITY.md, COPYING.MIT" \
    python3 "$here/layer-static-checks.py" "$layer" structure
run "no AUTOREV, no network access in do_* tasks" \
    python3 "$here/layer-static-checks.py" "$layer" fetch
run "every bbappend gated on DISTRO_FEATURES 'guardian'" \
    python3 "$here/layer-static-checks.py" "$layer" gate
run "every file:// in SRC_URI resolves in the layer" \
    python3 "$here/layer-static-checks.py" "$layer" fileuris
run "no trailing whitespace in metadata" \
    python3 "$here/layer-static-checks.py" "$layer" whitespace
run "dynamic layers: every file read through BBFILES_DYNAMIC, per supported release" \
    python3 "$here/layer-static-checks.py" "$layer" dynamic
run "one install list: recipe, units, init script and qemu test agree with it" \
    python3 "$here/layer-static-checks.py" "$layer" install
run "classes and recipes call guardian-manifest.py with options it accepts" \
    python3 "$here/layer-static-checks.py" "$layer" toolcalls
run "kas files load with kas ${KAS_PINS[0]#*==}, pinned, one supported release each" \
    check_kas
run "kernel fragments merge into linux-source arm64 allnoconfig, every symbol kept" \
    "$here/check-kconfig.sh"
run "golden manifest: guardian-manifest.py output accepted by guardian manifest verify" \
    check_manifest
run "signed policies: the guardian-policies recipe's signing accepted by guardian policy inspect" \
    check_policies
run "guardian-crates.inc matches Cargo.lock" \
    python3 "$here/gen-crates-inc.py" --check --lock "$repo/Cargo.lock" \
    --output "$layer/recipes-security/guardian/guardian-crates.inc"
if command -v systemd-analyze >/dev/null; then
    run "systemd-analyze verify guardian/systemd/*.service" check_units
elif selected "systemd-analyze verify"; then
    printf 'SKIP  systemd-analyze verify (systemd-analyze not installed)\n'
fi

exit $failed
