#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Runs scripts/guardian-manifest.py the way the two classes do (digests in
# each model recipe's ${D}, then sign on the image rootfs), outside bitbake,
# and has the real guardian judge the result:
#
#   - two model "recipes" (one listing its files, one taking every file under
#     /opt/models/<dir>), combined into one manifest in a fake rootfs;
#   - signed with an Ed25519 key and with an ECDSA P-256 key, each accepted
#     by `guardian manifest verify` with the public key the script installs;
#   - every entry's digest and size equal sha256sum/stat of the rootfs file;
#   - the image's guardian.toml (the shipped sample) lists that public key in
#     [measure] trusted_keys and still parses;
#   - refusals: no signing key, a model changed after do_install, an RSA key.
#
#     meta-guardian/scripts/check-manifest.sh GUARDIAN_BINARY
#
# Prints what failed and exits 1 on the first problem.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
layer="$(dirname "$here")"
repo="$(dirname "$layer")"
tool="$here/guardian-manifest.py"
guardian="${1:?usage: $0 GUARDIAN_BINARY}"
[ -x "$guardian" ] || { echo "$guardian: not an executable guardian binary"; exit 1; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
fail() { echo "$*"; exit 1; }

# --- two model recipes' do_install ------------------------------------------
a="$tmp/a/image" b="$tmp/b/image" rootfs="$tmp/rootfs"
mkdir -p "$a/opt/models" "$b/opt/models/detector"
model_a="$repo/examples/inference/model/classifier.onnx"
if [ -f "$model_a" ]; then
    cp "$model_a" "$a/opt/models/classifier.onnx"
else
    head -c 5901 /dev/urandom >"$a/opt/models/classifier.onnx"
fi
head -c 70000 /dev/urandom >"$b/opt/models/detector/weights.bin"
printf 'labels: cat dog\n' >"$b/opt/models/detector/labels.txt"
python3 "$tool" digests --root "$a" --out "$a/usr/share/guardian/models.d/model-a.json" \
    --recipe model-a --version 1.0 /opt/models/classifier.onnx >/dev/null
python3 "$tool" digests --root "$b" --out "$b/usr/share/guardian/models.d/model-b.json" \
    --recipe model-b --version 2.3 --dir /opt/models/detector >/dev/null

# --- the image's rootfs ---------------------------------------------------------
assemble() {
    rm -rf "$rootfs"
    mkdir -p "$rootfs/etc/guardian"
    cp -a "$a/." "$b/." "$rootfs/"
    cp "$repo/guardian/guardian.toml.sample" "$rootfs/etc/guardian/guardian.toml"
}

sign() { # key -> output of the sign step
    python3 "$tool" sign --root "$rootfs" --key "$1" --pcr 14 \
        --digests-dir /usr/share/guardian/models.d --manifest /etc/guardian/manifest.toml \
        --pubkey /etc/guardian/keys/manifest-signing.pub --trust-config /etc/guardian/guardian.toml 2>&1
}

openssl genpkey -algorithm ed25519 -out "$tmp/ed25519.pem" 2>/dev/null
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/p256.pem" 2>/dev/null
for alg in ed25519 p256; do
    assemble
    out="$(sign "$tmp/$alg.pem")" || fail "guardian-manifest.py sign ($alg) failed: $out"
    manifest="$rootfs/etc/guardian/manifest.toml"
    pub="$rootfs/etc/guardian/keys/manifest-signing.pub"
    verdict="$("$guardian" manifest verify "$manifest" --key "$pub" 2>&1)" \
        || fail "guardian manifest verify rejects the $alg-signed manifest: $verdict"
    case "$alg" in ed25519) name=ed25519 ;; p256) name=ecdsa-p256-sha256 ;; esac
    grep -q "valid $name signature" <<<"$verdict" || fail "guardian manifest verify ($alg): $verdict"
    grep -q '; 3 models, PCR 14$' <<<"$verdict" || fail "expected 3 models at PCR 14: $verdict"
    # Each entry against sha256sum and stat of the rootfs file, and the
    # config edit, read with a TOML parser (Python >= 3.11's tomllib).
    python3 - "$rootfs" <<'EOF' || exit 1
import pathlib, subprocess, sys, tomllib
root = pathlib.Path(sys.argv[1])
m = tomllib.loads((root / "etc/guardian/manifest.toml").read_text())
want = {"/opt/models/classifier.onnx", "/opt/models/detector/labels.txt",
        "/opt/models/detector/weights.bin"}
got = {e["path"] for e in m["model"]}
if got != want:
    sys.exit(f"manifest lists {sorted(got)}, expected {sorted(want)}")
for e in m["model"]:
    f = root / e["path"].lstrip("/")
    digest = subprocess.run(["sha256sum", str(f)], capture_output=True, text=True,
                            check=True).stdout.split()[0]
    if (digest, f.stat().st_size) != (e["sha256"], e["size"]):
        sys.exit(f"{e['path']}: manifest says {e['sha256']} ({e['size']} bytes), "
                 f"sha256sum says {digest} ({f.stat().st_size} bytes)")
cfg = tomllib.loads((root / "etc/guardian/guardian.toml").read_text())
keys = cfg.get("measure", {}).get("trusted_keys", [])
if keys != ["/etc/guardian/keys/manifest-signing.pub"]:
    sys.exit(f"guardian.toml [measure] trusted_keys = {keys}, expected the installed key")
EOF
    # Signing twice (a rebuilt rootfs) must not list the key twice.
    out="$(sign "$tmp/$alg.pem")" || fail "second sign ($alg) failed: $out"
    n="$(grep -c 'manifest-signing.pub' "$rootfs/etc/guardian/guardian.toml")"
    [ "$n" -eq 1 ] || fail "guardian.toml names the key $n times after signing twice"
done

# --- refusals -------------------------------------------------------------------
assemble
out="$(python3 "$tool" sign --root "$rootfs" --key "" 2>&1)" && fail "signed without a key: $out"
grep -q GUARDIAN_MANIFEST_SIGNING_KEY <<<"$out" || fail "no-key error does not name the variable: $out"

openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$tmp/rsa.pem" 2>/dev/null
out="$(sign "$tmp/rsa.pem")" && fail "signed with an RSA key: $out"
grep -q "not an Ed25519 or ECDSA P-256" <<<"$out" || fail "RSA key refused without saying why: $out"

printf 'x' >>"$rootfs/opt/models/detector/weights.bin"
out="$(sign "$tmp/ed25519.pem")" && fail "signed a model changed after do_install: $out"
grep -q "/opt/models/detector/weights.bin: changed after model-b's do_install" <<<"$out" \
    || fail "changed model refused without naming it: $out"
[ ! -e "$rootfs/etc/guardian/manifest.toml" ] || fail "a manifest was written although a model changed"

echo "manifests from 2 recipes, Ed25519 and P-256, accepted by guardian; refusals named"
