#!/usr/bin/env bash
# The planted lines are bitbake metadata: ${...} must reach the files as is.
# shellcheck disable=SC2016
# SPDX-License-Identifier: MIT
#
# Shows that each check in check-layer.sh catches its defect: copies the
# layer (with the repository files it checks: Cargo.lock, guardian/systemd)
# to a temporary directory, checks that the clean copy passes, then plants
# one defect per copy and asserts that check-layer.sh fails, on the check
# that owns the defect.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
layer="$(dirname "$here")"
repo="$(dirname "$layer")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

fresh() { # -> path of a clean copy of the repository subset
    local d="$work/$1"
    mkdir -p "$d/guardian"
    cp -a "$layer" "$d/meta-guardian"
    cp -a "$repo/Cargo.lock" "$d/"
    cp -a "$repo/guardian/systemd" "$repo/guardian/guardian.toml.sample" "$d/guardian/"
    printf '%s\n' "$d"
}

# The copies hold no cargo workspace: build guardian once, here, for the
# manifest check of every copy.
if [ -z "${GUARDIAN_BIN:-}" ]; then
    (cd "$repo" && cargo build --locked --quiet -p guardian)
    GUARDIAN_BIN="${CARGO_TARGET_DIR:-$repo/target}/debug/guardian"
fi
export GUARDIAN_BIN
# Nor policies/: pack the example policies once (cached, policies-tarball.sh)
# for the policy check of every copy.
if [ -z "${GUARDIAN_POLICIES_TARBALL:-}" ]; then
    GUARDIAN_POLICIES_TARBALL="$("$here/policies-tarball.sh" "$repo")"
fi
export GUARDIAN_POLICIES_TARBALL

failures=0
expect_fail() { # name check-title-substring copy
    local name="$1" title="$2" d="$3" out status=0
    # Only the check that owns the defect runs: the clean copy above has
    # shown that all the others pass.
    out="$("$d/meta-guardian/scripts/check-layer.sh" "$title" 2>&1)" || status=$?
    if [ "$status" -ne 0 ] && grep -F "FAIL  " <<<"$out" | grep -qF "$title"; then
        printf 'ok    %-36s caught by: %s\n' "$name" "$title"
    else
        printf 'NOT CAUGHT  %s (expected FAIL on "%s", exit %s)\n' "$name" "$title" "$status"
        printf '%s\n' "$out" | sed 's/^/      /'
        failures=$((failures + 1))
    fi
}

# The clean copy must pass, or the planted failures prove nothing.
d="$(fresh clean)"
if out="$("$d/meta-guardian/scripts/check-layer.sh" 2>&1)"; then
    echo "ok    clean copy passes"
else
    echo "the clean copy of the layer fails check-layer.sh:"
    printf '%s\n' "$out" | sed 's/^/      /'
    exit 1
fi

recipe=meta-guardian/recipes-security/guardian/guardian_0.1.0.bb

d="$(fresh oelint)"
printf '\ndo_install:append() {\n\tinstall -d ${D}${datadir}/guardian\n}\n' >>"$d/$recipe"
expect_fail "oelint finding (tab indent)" "oelint-adv" "$d"

d="$(fresh oelint-class)"
printf '\ndo_install:append() {\n\tinstall -d ${D}${datadir}/guardian\n}\n' \
    >>"$d/meta-guardian/classes/guardian_model.bbclass"
expect_fail "oelint finding in a class" "oelint-adv" "$d"

d="$(fresh layerconf)"
sed -i '/^LAYERSERIES_COMPAT_guardian/d' "$d/meta-guardian/conf/layer.conf"
expect_fail "layer.conf field missing" "layer structure" "$d"

d="$(fresh security)"
rm "$d/meta-guardian/SECURITY.md"
expect_fail "SECURITY.md missing" "layer structure" "$d"

d="$(fresh autorev)"
sed -i 's/^SRCREV = .*/SRCREV = "${AUTOREV}"/' "$d/$recipe"
expect_fail "AUTOREV" "no AUTOREV" "$d"

d="$(fresh network)"
printf '\ndo_configure:prepend() {\n    curl -sSfo ${S}/extra.tar.gz https://example.com/extra.tar.gz\n}\n' >>"$d/$recipe"
expect_fail "network access in a task" "no network access" "$d"

d="$(fresh ungated)"
mkdir -p "$d/meta-guardian/recipes-core/busybox"
printf 'FILESEXTRAPATHS:prepend := "${THISDIR}/files:"\n' \
    >"$d/meta-guardian/recipes-core/busybox/busybox_%.bbappend"
expect_fail "ungated bbappend" "every bbappend gated" "$d"

d="$(fresh fileuri)"
rm "$d/meta-guardian/recipes-security/guardian/files/guardian.init"
expect_fail "missing file:// target" "every file://" "$d"

d="$(fresh whitespace)"
sed -i 's/^SECTION = "security"$/SECTION = "security" /' "$d/$recipe"
expect_fail "trailing whitespace" "no trailing whitespace" "$d"

d="$(fresh crates)"
sed -i '0,/\.sha256sum\] = "[0-9a-f]/s/\(\.sha256sum\] = "\)[0-9a-f]/\10/' \
    "$d/meta-guardian/recipes-security/guardian/guardian-crates.inc"
if cmp -s "$d/meta-guardian/recipes-security/guardian/guardian-crates.inc" \
        "$layer/recipes-security/guardian/guardian-crates.inc"; then
    # The first checksum already started with 0: drift the lock instead.
    sed -i '0,/^checksum = "[0-9a-f]/s/^\(checksum = "\)[0-9a-f]/\1f/' "$d/Cargo.lock"
fi
expect_fail "crates include drifted" "guardian-crates.inc matches" "$d"

d="$(fresh kconfig)"
sed -i '/^CONFIG_SPI=y$/d' "$d/meta-guardian/recipes-kernel/linux/files/guardian-tpm.cfg"
expect_fail "fragment loses a dependency" "kernel fragments merge" "$d"

d="$(fresh kconfig-unlisted)"
printf 'CONFIG_IMA=y\n' >"$d/meta-guardian/recipes-kernel/linux/files/guardian-ima.cfg"
expect_fail "fragment not in SRC_URI" "kernel fragments merge" "$d"

d="$(fresh kas)"
sed -i '/^    branch: whinlatter$/d' "$d/meta-guardian/kas/raspberrypi5.yml"
expect_fail "kas repo without a branch" "kas files" "$d"

d="$(fresh kas-schema)"
sed -i 's/^machine:/machnie:/' "$d/meta-guardian/kas/qemuarm64.yml"
expect_fail "kas key kas does not know" "kas files" "$d"

d="$(fresh install-bypass)"
sed -i 's|^\(    sh ${UNPACKDIR}/guardian-install.sh install\)|    install -d ${D}${datadir}/guardian\n\1|' "$d/$recipe"
grep -q 'install -d ${D}${datadir}/guardian' "$d/$recipe"
expect_fail "do_install bypasses the list" "one install list" "$d"

d="$(fresh install-drift)"
sed -i 's|${bindir}/guardian$|${bindir}/guardiand|' \
    "$d/meta-guardian/recipes-security/guardian/files/guardian-install.list"
grep -q 'guardiand$' "$d/meta-guardian/recipes-security/guardian/files/guardian-install.list"
expect_fail "agent moved, units not" "one install list" "$d"

d="$(fresh dynamic)"
mkdir -p "$d/meta-guardian/dynamic-layers/raspberrypi/linux"
cp "$d/meta-guardian/dynamic-layers/raspberrypi/recipes-kernel/linux/linux-raspberrypi_%.bbappend" \
    "$d/meta-guardian/dynamic-layers/raspberrypi/linux/"
expect_fail "dynamic-layer append not read" "dynamic layers" "$d"

d="$(fresh dynamic-corenames)"
sed -i 's|dynamic-layers/tegra/${GUARDIAN_TEGRA_SERIES}/|dynamic-layers/tegra/${LAYERSERIES_CORENAMES}/|' \
    "$d/meta-guardian/conf/layer.conf"
expect_fail "BBFILES_DYNAMIC on LAYERSERIES_CORENAMES" "dynamic layers" "$d"

d="$(fresh toolcall)"
sed -i 's/--digests-dir/--digest-dir/' "$d/meta-guardian/classes/guardian_manifest.bbclass"
expect_fail "class passes an unknown option" "call guardian-manifest.py" "$d"

d="$(fresh manifest)"
sed -i "s/f\"sha256 = {toml_string(m\['sha256'\])}\"/f\"sha256 = {toml_string(m['sha256'].upper())}\"/" \
    "$d/meta-guardian/scripts/guardian-manifest.py"
grep -q "m\['sha256'\].upper()" "$d/meta-guardian/scripts/guardian-manifest.py"
expect_fail "manifest digests in upper case" "golden manifest" "$d"

d="$(fresh policy-wrong-bytes)"
sed -i 's/sign_checked(key, alg, pub_pem, wasm, sig)/sign_checked(key, alg, pub_pem, tarball, sig)/' \
    "$d/meta-guardian/scripts/guardian-manifest.py"
grep -q 'sign_checked(key, alg, pub_pem, tarball, sig)' "$d/meta-guardian/scripts/guardian-manifest.py"
expect_fail "policy signature over other bytes" "signed policies" "$d"

d="$(fresh policy-sig-name)"
sed -i 's/sig = wasm.with_name(wasm.name + ".sig")/sig = wasm.with_suffix(".sig")/' \
    "$d/meta-guardian/scripts/guardian-manifest.py"
grep -q 'sig = wasm.with_suffix(".sig")' "$d/meta-guardian/scripts/guardian-manifest.py"
expect_fail "policy signature named NAME.sig" "signed policies" "$d"

d="$(fresh policy-recipe-dir)"
sed -i 's|^GUARDIAN_POLICY_DIR ?= "${sysconfdir}/guardian/policies"|GUARDIAN_POLICY_DIR ?= "${sysconfdir}/guardian/policy"|' \
    "$d/meta-guardian/recipes-security/guardian-policies/guardian-policies_0.1.0.bb"
grep -q 'guardian/policy"$' "$d/meta-guardian/recipes-security/guardian-policies/guardian-policies_0.1.0.bb"
expect_fail "recipe installs outside [policy] dir" "signed policies" "$d"

if command -v systemd-analyze >/dev/null; then
    d="$(fresh unit)"
    sed -i 's/^RestartSec=/RestartSecs=/' "$d/guardian/systemd/guardian.service"
    expect_fail "bad key in a systemd unit" "systemd-analyze verify" "$d"
fi

if [ "$failures" -ne 0 ]; then
    echo "$failures planted defect(s) NOT caught"
    exit 1
fi
echo "every planted defect was caught"
