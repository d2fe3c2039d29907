#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Runs the guardian-policies recipe's do_install (its call of
# scripts/guardian-manifest.py policies, read from the recipe and expanded
# with test values) outside bitbake on the real example policies that
# policies/package.sh packed, and has the real guardian judge the result:
#
#   - signed with an Ed25519 key and with an ECDSA P-256 key: every chosen
#     NAME.wasm is installed with NAME.wasm.sig next to it, nothing else, and
#     `guardian policy inspect NAME.wasm --key <installed public key>` says
#     the signature is valid, with that algorithm;
#   - the installed modules are byte for byte the tarball's;
#   - refusals: no signing key (naming GUARDIAN_POLICY_SIGNING_KEY), a
#     tarball that does not match GUARDIAN_POLICIES_SHA256, a policy name the
#     tarball does not have.
#
#     meta-guardian/scripts/check-policies.sh GUARDIAN_BINARY POLICY_TARBALL
#
# Prints what failed and exits 1 on the first problem.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
layer="$(dirname "$here")"
repo="$(dirname "$layer")"
recipe="$layer/recipes-security/guardian-policies/guardian-policies_0.1.0.bb"
guardian="${1:?usage: $0 GUARDIAN_BINARY POLICY_TARBALL}"
tarball="${2:?usage: $0 GUARDIAN_BINARY POLICY_TARBALL}"
[ -x "$guardian" ] || { echo "$guardian: not an executable guardian binary"; exit 1; }
[ -f "$tarball" ] || { echo "$tarball: no policy tarball"; exit 1; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
fail() { echo "$*"; exit 1; }

# The fetcher's work: the tarball, not unpacked, alone in ${S}.
mkdir -p "$tmp/S"
cp "$tarball" "$tmp/S/"
sha="$(sha256sum "$tarball" | cut -d' ' -f1)"

# do_install as the recipe writes it. Prints the command, NUL-separated.
recipe_install() { # D key sha256 policies
    python3 - "$recipe" "$tmp/S" "$1" "$2" "$3" "$4" "$here/guardian-manifest.py" <<'PY'
import re, shlex, sys
recipe, S, D, key, sha, names, tool = sys.argv[1:]
text = open(recipe).read()
body = re.search(r"^do_install\(\) \{\n(.*?)^\}", text, re.M | re.S)
if not body:
    sys.exit(f"{recipe}: no do_install")
call = body.group(1).replace("\\\n", " ")
if "${GUARDIAN_MANIFEST_TOOL} policies" not in call:
    sys.exit(f"{recipe}: do_install does not run guardian-manifest.py policies")
call = call.split("||")[0]
vals = {m.group(1): m.group(3) for m in
        re.finditer(r'^([A-Z_]+)\s*(\?\?=|\?=|=)\s*"([^"]*)"\s*$', text, re.M)}
vals.update({"S": S, "D": D, "GUARDIAN_POLICY_SIGNING_KEY": key, "GUARDIAN_POLICIES_SHA256": sha,
             "GUARDIAN_MANIFEST_TOOL": tool, "sysconfdir": "/etc"})
if names:
    vals["GUARDIAN_POLICIES"] = names
for _ in range(10):
    call = re.sub(r"\$\{(\w+)\}", lambda m: vals.get(m.group(1), m.group(0)), call)
if "${" in call:
    sys.exit(f"{recipe}: do_install uses a variable this check does not set: {call.strip()}")
sys.stdout.write("\0".join(shlex.split(call)))
PY
}

install_policies() { # D key sha256 [policies] -> output of do_install
    local cmd=()
    mapfile -d '' cmd < <(recipe_install "$1" "$2" "$3" "${4:-}") || return 1
    [ "${#cmd[@]}" -gt 0 ] || return 1
    "${cmd[@]}" 2>&1
}

all="$(tar tzf "$tarball" | sed -n 's,^[^/]*/\(.*\)\.wasm$,\1,p' | sort | tr '\n' ' ')"
[ -n "$all" ] || fail "$tarball: no .wasm in it"
mkdir -p "$tmp/tar"
tar xzf "$tarball" -C "$tmp/tar"

# Where guardian looks: [policy] dir of the shipped sample configuration.
policy_dir=/etc/guardian/policies
sample="$repo/guardian/guardian.toml.sample"
if [ -f "$sample" ]; then
    policy_dir="$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["policy"]["dir"])' \
        "$sample")" || fail "$sample: no [policy] dir"
fi

openssl genpkey -algorithm ed25519 -out "$tmp/ed25519.pem" 2>/dev/null
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/p256.pem" 2>/dev/null
for alg in ed25519 p256; do
    D="$tmp/D-$alg"
    mkdir -p "$D"
    # Every example, so each one is judged by guardian.
    out="$(install_policies "$D" "$tmp/$alg.pem" "$sha" "$all")" \
        || fail "guardian-policies do_install ($alg) failed: $out"
    dir="$D$policy_dir"
    pub="$D/etc/guardian/keys/policy-signing.pub"
    [ -f "$pub" ] || fail "no public key installed at /etc/guardian/keys/policy-signing.pub ($alg)"
    want="$(for n in $all; do printf '%s.wasm\n%s.wasm.sig\n' "$n" "$n"; done | sort)"
    [ -d "$dir" ] || fail "$alg: nothing installed in $policy_dir ([policy] dir)"
    have="$(cd "$dir" && find . -type f | sed 's,^\./,,' | sort)"
    [ "$want" = "$have" ] || fail "$alg: $policy_dir ([policy] dir) holds
$have
expected
$want"
    case "$alg" in ed25519) name=ed25519 ;; p256) name=ecdsa-p256-sha256 ;; esac
    for n in $all; do
        cmp -s "$dir/$n.wasm" "$tmp/tar/"*/"$n.wasm" || fail "$n.wasm installed differs from the tarball's"
        verdict="$("$guardian" policy inspect "$dir/$n.wasm" --key "$pub" 2>&1)" \
            || fail "guardian policy inspect $n.wasm ($alg) failed: $verdict"
        grep -q "^signature   valid, $name key" <<<"$verdict" \
            || fail "guardian policy inspect does not accept $n.wasm.sig ($alg): $verdict"
    done
done

# The default selection of the recipe installs, too.
D="$tmp/D-default"
mkdir -p "$D"
out="$(install_policies "$D" "$tmp/ed25519.pem" "$sha")" || fail "do_install with the recipe's GUARDIAN_POLICIES failed: $out"

# --- refusals -------------------------------------------------------------------
D="$tmp/D-refused"
mkdir -p "$D"
out="$(install_policies "$D" "" "$sha")" && fail "installed policies without a key: $out"
grep -q "set GUARDIAN_POLICY_SIGNING_KEY" <<<"$out" || fail "no-key error does not name the variable: $out"
out="$(install_policies "$D" "$tmp/ed25519.pem" "$(printf '%064d' 0)")" && fail "accepted a tarball of another digest: $out"
grep -q "does not match GUARDIAN_POLICIES_SHA256" <<<"$out" || fail "digest mismatch refused without saying so: $out"
out="$(install_policies "$D" "$tmp/ed25519.pem" "$sha" "no_such_policy")" && fail "installed an unknown policy: $out"
grep -q "GUARDIAN_POLICIES names no_such_policy" <<<"$out" || fail "unknown policy refused without naming it: $out"
[ -z "$(find "$D" -type f)" ] || fail "a refused do_install left files in \${D}: $(find "$D" -type f)"

echo "policies (${all% }) signed by the recipe with Ed25519 and P-256, accepted by guardian policy inspect; refusals named"
