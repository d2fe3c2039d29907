#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Golden model manifests at image build time.

The build-time half of guardian's measured boot. It writes the manifest that
`guardian measure` checks on the device (docs/measured-boot.md): TOML, one
[[model]] per file with its SHA-256 and size, signed with a detached
`<manifest>.sig` (Ed25519: 64 raw bytes; ECDSA P-256: DER over SHA-256),
made with the openssl command line so that bitbake needs only openssl-native.

Two steps, because one image may carry models from several recipes and the
device reads one manifest:

  digests   run by guardian_model.bbclass at the end of a model recipe's
            do_install: hashes the model files under ${D} and writes a
            digest list (JSON) that the recipe packages next to them.

      guardian-manifest.py digests --root D --out D/usr/share/guardian/models.d/PN.json
                                   --recipe PN --version PV [--dir /opt/models] [PATH...]

  sign      run by guardian_manifest.bbclass on the image's rootfs: collects
            every digest list installed in the rootfs, hashes each listed
            file again as it is in the rootfs (a file changed after
            do_install stops the build), writes one manifest with every
            model, signs it, checks the signature, installs the public key
            and, unless told not to, adds it to [measure] trusted_keys of
            the image's guardian.toml.

      guardian-manifest.py sign --root ROOTFS --key KEY.pem [--pcr 14]
                                [--digests-dir /usr/share/guardian/models.d]
                                [--manifest /etc/guardian/manifest.toml]
                                [--pubkey /etc/guardian/keys/manifest-signing.pub]
                                [--trust-config /etc/guardian/guardian.toml]

  policies  run by the guardian-policies recipe's do_install: checks the
            policy tarball (policies/package.sh) against its SHA-256,
            installs the chosen NAME.wasm modules and signs each with the
            same code as the manifest (detached NAME.wasm.sig, checked with
            the public half), and installs the public key.

      guardian-manifest.py policies --tarball FILE|DIR --sha256 HEX --key KEY.pem
                                    --root D [--dir /etc/guardian/policies]
                                    [--pubkey /etc/guardian/keys/policy-signing.pub]
                                    [--key-variable GUARDIAN_POLICY_SIGNING_KEY] NAME...

Paths given with --dir, --digests-dir, --manifest, --pubkey, --trust-config
and the model PATHs are paths on the device; they are looked up under
--root. Errors name the file and the problem and exit with status 1.
Needs Python >= 3.8 (stdlib only) and the openssl command line (3.x).
"""

import argparse
import hashlib
import json
import os
import pathlib
import re
import stat
import tarfile
import subprocess
import sys
import tempfile

FORMAT = "guardian-model-digests-1"
MANIFEST_VERSION = 1


class Failure(Exception):
    """A problem to report as 'guardian-manifest: error: ...' (exit 1)."""


def under(root, device_path):
    """The build-host path of a device path inside root."""
    if not device_path.startswith("/"):
        raise Failure(f"{device_path}: not an absolute path on the device")
    parts = pathlib.PurePosixPath(device_path).parts[1:]
    if ".." in parts:
        raise Failure(f"{device_path}: '..' is not allowed in a device path")
    return pathlib.Path(root, *parts)


def check_device_path(path):
    # The manifest is TOML written here; control characters would need
    # escapes guardian's parser accepts but people misread.
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        raise Failure(f"{path!r}: control characters in a model path")


def hash_file(host_path, device_path):
    try:
        st = os.lstat(host_path)
    except FileNotFoundError:
        raise Failure(f"{device_path}: no such file (looked for {host_path})") from None
    if stat.S_ISLNK(st.st_mode):
        raise Failure(f"{device_path}: is a symbolic link ({host_path}); list the file it points to")
    if not stat.S_ISREG(st.st_mode):
        raise Failure(f"{device_path}: not a regular file ({host_path})")
    h = hashlib.sha256()
    size = 0
    with open(host_path, "rb") as f:
        while True:
            block = f.read(1 << 20)
            if not block:
                break
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


# --- digests ------------------------------------------------------------------

def cmd_digests(args):
    root = pathlib.Path(args.root)
    if not root.is_dir():
        raise Failure(f"{root}: the install root does not exist")
    paths = list(args.paths)
    if not paths:
        model_dir = under(root, args.dir)
        if not model_dir.is_dir():
            raise Failure(f"recipe {args.recipe} installs no {args.dir} (looked for {model_dir}); "
                          "install the models there or list them in GUARDIAN_MODELS")
        for dirpath, dirnames, filenames in os.walk(model_dir):
            dirnames.sort()
            for name in sorted(filenames):
                host = pathlib.Path(dirpath, name)
                paths.append("/" + host.relative_to(root).as_posix())
        if not paths:
            raise Failure(f"recipe {args.recipe}: {args.dir} is empty under {root}; "
                          "nothing to put in the manifest")
    seen = set()
    models = []
    for p in paths:
        check_device_path(p)
        if p in seen:
            raise Failure(f"recipe {args.recipe}: {p} is listed twice")
        seen.add(p)
        sha256, size = hash_file(under(root, p), p)
        models.append({"path": p, "sha256": sha256, "size": size,
                       "name": pathlib.PurePosixPath(p).stem, "version": args.version})
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"format": FORMAT, "recipe": args.recipe, "models": models}
    out.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    print(f"guardian-manifest: {out}: {len(models)} model(s) of {args.recipe}")


# --- sign ---------------------------------------------------------------------

def load_digests(path):
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise Failure(f"{path}: unreadable digest list ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise Failure(f"{path}: not a {FORMAT} digest list")
    models = doc.get("models")
    if not isinstance(models, list) or not models:
        raise Failure(f"{path}: no models")
    for i, m in enumerate(models):
        ok = (isinstance(m, dict)
              and isinstance(m.get("path"), str)
              and isinstance(m.get("sha256"), str) and re.fullmatch(r"[0-9a-f]{64}", m["sha256"])
              and isinstance(m.get("size"), int) and m["size"] >= 0)
        if not ok:
            raise Failure(f"{path}: model {i} is malformed: {m!r}")
    return doc.get("recipe") or path.stem, models


def toml_string(s):
    # JSON string escapes are a subset of TOML basic-string escapes once
    # control characters are excluded (check_device_path).
    return json.dumps(s, ensure_ascii=False)


def manifest_text(pcr, models):
    lines = [
        "# guardian model manifest: golden digests of the models this board may run.",
        "# Written at image build time by meta-guardian (guardian_manifest.bbclass).",
        "# Signed; the signature is the file next to this one with .sig appended.",
        f"version = {MANIFEST_VERSION}",
        f"pcr = {pcr}",
    ]
    for m in models:
        lines += ["", "[[model]]",
                  f"path = {toml_string(m['path'])}",
                  f"sha256 = {toml_string(m['sha256'])}",
                  f"size = {m['size']}"]
        for key in ("name", "version"):
            if m.get(key):
                lines.append(f"{key} = {toml_string(str(m[key]))}")
    return "\n".join(lines) + "\n"


def openssl(*argv, what):
    try:
        r = subprocess.run(["openssl", *argv], stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise Failure("openssl not found on PATH (the image class depends on openssl-native)") from None
    if r.returncode != 0:
        raise Failure(f"{what}: openssl {argv[0]} failed: {(r.stderr or r.stdout).strip()}")
    return r.stdout


def key_algorithm(key):
    text = openssl("pkey", "-in", str(key), "-noout", "-text", what=str(key))
    if text.startswith("ED25519 Private-Key"):
        return "ed25519"
    if "prime256v1" in text or "P-256" in text:
        return "p256"
    first = text.splitlines()[0].rstrip(":") if text else "nothing"
    raise Failure(f"{key}: not an Ed25519 or ECDSA P-256 private key, the two guardian verifies "
                  f"(openssl reads: {first})")


def sign(key, alg, manifest, sig):
    if alg == "ed25519":
        openssl("pkeyutl", "-sign", "-inkey", str(key), "-rawin", "-in", str(manifest),
                "-out", str(sig), what=str(key))
    else:
        openssl("dgst", "-sha256", "-sign", str(key), "-out", str(sig), str(manifest), what=str(key))


def verify(pub, alg, manifest, sig):
    if alg == "ed25519":
        openssl("pkeyutl", "-verify", "-pubin", "-inkey", str(pub), "-rawin", "-in", str(manifest),
                "-sigfile", str(sig), what=f"self-check of {sig}")
    else:
        openssl("dgst", "-sha256", "-verify", str(pub), "-signature", str(sig), str(manifest),
                what=f"self-check of {sig}")


def trust_key_in_config(config, config_device, pubkey_device):
    """Add pubkey_device to [measure] trusted_keys of config (a TOML file).
    Only the one-line array form is edited; anything else is refused rather
    than guessed at."""
    if not config.is_file():
        raise Failure(f"{config_device}: no such file in the rootfs ({config}); install guardian "
                      "in the image or set GUARDIAN_MANIFEST_TRUST_CONFIG = \"\"")
    lines = config.read_text().splitlines(keepends=True)
    table, measure_at, keys_at = None, None, None
    for i, line in enumerate(lines):
        s = line.strip()
        m = re.fullmatch(r"\[\s*([A-Za-z0-9_.-]+)\s*\]\s*(#.*)?", s)
        if m:
            table = m.group(1)
            if table == "measure":
                measure_at = i
            continue
        if table == "measure" and re.match(r"trusted_keys\s*=", s):
            keys_at = i
    quoted = toml_string(pubkey_device)
    if keys_at is not None:
        m = re.fullmatch(r"(\s*trusted_keys\s*=\s*\[)(.*)\](\s*(#.*)?)\n?", lines[keys_at])
        if not m:
            raise Failure(f"{config_device}:{keys_at + 1}: trusted_keys is not a one-line array; list "
                          f"{pubkey_device} there yourself and set GUARDIAN_MANIFEST_TRUST_CONFIG = \"\"")
        items = [x.strip() for x in m.group(2).split(",") if x.strip()]
        if quoted in items:
            return False
        items.append(quoted)
        lines[keys_at] = f"{m.group(1)}{', '.join(items)}]{m.group(3)}\n"
    elif measure_at is not None:
        lines.insert(measure_at + 1, f"trusted_keys = [{quoted}]\n")
    else:
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        lines += ["\n", "[measure]\n", f"trusted_keys = [{quoted}]\n"]
    config.write_text("".join(lines))
    return True


def signing_key(path, variable, what):
    """The builder's key file, or a Failure naming the variable that sets it."""
    if not path:
        raise Failure(f"no signing key: set {variable} to the path of the PEM "
                      f"private key (Ed25519 or ECDSA P-256) that signs this product's {what}; "
                      "it is never part of a layer (see meta-guardian/SECURITY.md)")
    key = pathlib.Path(path)
    if not key.is_file() or not os.access(key, os.R_OK):
        raise Failure(f"{key}: the signing key ({variable}) is not a readable file")
    return key


def sign_checked(key, alg, pub_pem, path, sig):
    """Write the detached signature of path's bytes to sig (mode 0644) and
    check it with the public half, which is also what the device trusts.
    The one signing path of the layer: manifests and policies."""
    sign(key, alg, path, sig)
    os.chmod(sig, 0o644)
    with tempfile.TemporaryDirectory() as tmp:
        pub_tmp = pathlib.Path(tmp, "pub.pem")
        pub_tmp.write_text(pub_pem)
        verify(pub_tmp, alg, path, sig)


def install_pubkey(root, device_path, pub_pem):
    pub = under(root, device_path)
    pub.parent.mkdir(parents=True, exist_ok=True)
    pub.write_text(pub_pem)
    os.chmod(pub, 0o644)


def cmd_sign(args):
    root = pathlib.Path(args.root)
    if not root.is_dir():
        raise Failure(f"{root}: the rootfs does not exist")
    key = signing_key(args.key, "GUARDIAN_MANIFEST_SIGNING_KEY", "model manifests")
    if not 8 <= args.pcr <= 15:
        raise Failure(f"pcr {args.pcr}: guardian measures only into PCRs 8-15 (default 14)")

    digests_dir = under(root, args.digests_dir)
    lists = sorted(digests_dir.glob("*.json")) if digests_dir.is_dir() else []
    if not lists:
        raise Failure(f"no digest lists in {args.digests_dir} of the rootfs ({digests_dir}): the image "
                      "installs no recipe that inherits guardian_model, so there is nothing to sign")
    owner = {}
    models = []
    problems = []
    for path in lists:
        recipe, entries = load_digests(path)
        for m in entries:
            p = m["path"]
            check_device_path(p)
            if p in owner:
                problems.append(f"{p}: listed by both {owner[p]} and {recipe}")
                continue
            owner[p] = recipe
            try:
                sha256, size = hash_file(under(root, p), p)
            except Failure as e:
                problems.append(f"{e} (listed by {recipe}, {path.name}; is the package that "
                                "installs it in the image?)")
                continue
            if (sha256, size) != (m["sha256"], m["size"]):
                problems.append(f"{p}: changed after {recipe}'s do_install: the rootfs has sha256 "
                                f"{sha256} ({size} bytes), the recipe recorded {m['sha256']} "
                                f"({m['size']} bytes)")
                continue
            models.append(m)
    if problems:
        raise Failure("cannot write the manifest:\n  " + "\n  ".join(problems))
    models.sort(key=lambda m: m["path"])

    alg = key_algorithm(key)
    manifest = under(root, args.manifest)
    sig = manifest.with_name(manifest.name + ".sig")
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(manifest_text(args.pcr, models))
    os.chmod(manifest, 0o644)
    pub_pem = openssl("pkey", "-in", str(key), "-pubout", what=str(key))
    sign_checked(key, alg, pub_pem, manifest, sig)
    if args.pubkey:
        install_pubkey(root, args.pubkey, pub_pem)
        if args.trust_config:
            added = trust_key_in_config(under(root, args.trust_config), args.trust_config, args.pubkey)
            if added:
                print(f"guardian-manifest: {args.trust_config}: [measure] trusted_keys now lists {args.pubkey}")
    elif args.trust_config:
        raise Failure("--trust-config needs --pubkey (the device path of the key to trust)")
    print(f"guardian-manifest: {args.manifest}: {len(models)} model(s) from {len(lists)} recipe(s), "
          f"PCR {args.pcr}, {alg} signature {args.manifest}.sig")


# --- policies -----------------------------------------------------------------

POLICY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def policy_tarball(path):
    """The tarball itself, or the one file anywhere under a directory (the
    recipe's fetch subdir: bitbake unpacks a remote URI's file at its top,
    but a file:// URI with the directories of its path kept, e.g.
    S/srv/artifacts/guardian-policies-0.1.0.tar.gz)."""
    p = pathlib.Path(path)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file())
        if len(files) != 1:
            raise Failure(f"expected exactly one policy tarball in {p}, found: "
                          f"{', '.join(str(f.relative_to(p)) for f in files) or 'none'}")
        p = files[0]
    if not p.is_file():
        raise Failure(f"{p}: no such policy tarball (GUARDIAN_POLICIES_URI)")
    return p


def read_policies(tarball):
    """{NAME: module bytes} of every DIR/NAME.wasm in the tarball. Anything
    else than directories and .wasm files one level down is refused."""
    mods = {}
    try:
        with tarfile.open(tarball, "r:*") as tar:
            for m in tar.getmembers():
                parts = pathlib.PurePosixPath(m.name).parts
                if m.isdir() and len(parts) == 1:
                    continue
                if not (m.isfile() and len(parts) == 2 and parts[1].endswith(".wasm")
                        and POLICY_NAME.fullmatch(parts[1][:-5])):
                    raise Failure(f"{tarball}: unexpected member {m.name!r} (a policy tarball "
                                  "holds DIR/NAME.wasm files only, see policies/package.sh)")
                name = parts[1][:-5]
                if name in mods:
                    raise Failure(f"{tarball}: {name}.wasm is in it twice")
                mods[name] = tar.extractfile(m).read()
    except (OSError, tarfile.TarError) as e:
        raise Failure(f"{tarball}: unreadable policy tarball ({e})") from None
    if not mods:
        raise Failure(f"{tarball}: no .wasm modules in it")
    return mods


def cmd_policies(args):
    root = pathlib.Path(args.root)
    if not root.is_dir():
        raise Failure(f"{root}: the install root does not exist")
    tarball = policy_tarball(args.tarball)
    want = args.sha256.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", want):
        raise Failure(f"GUARDIAN_POLICIES_SHA256 {args.sha256!r} is not a SHA-256 (64 hex digits)")
    have, _ = hash_file(tarball, str(tarball))
    if have != want:
        raise Failure(f"{tarball} does not match GUARDIAN_POLICIES_SHA256: its sha256 is {have}, "
                      f"expected {want}")
    key = signing_key(args.key, args.key_variable, "policies")
    names = list(args.names)
    if not names:
        raise Failure("GUARDIAN_POLICIES lists no policy to install")
    mods = read_policies(tarball)
    for n in names:
        if names.count(n) > 1:
            raise Failure(f"GUARDIAN_POLICIES lists {n} twice")
        if n not in mods:
            raise Failure(f"GUARDIAN_POLICIES names {n}, which {tarball.name} does not have "
                          f"(it has: {' '.join(sorted(mods))})")
    alg = key_algorithm(key)
    pub_pem = openssl("pkey", "-in", str(key), "-pubout", what=str(key))
    dest = under(root, args.dir)
    dest.mkdir(parents=True, exist_ok=True)
    for n in names:
        wasm = dest / f"{n}.wasm"
        sig = wasm.with_name(wasm.name + ".sig")
        wasm.write_bytes(mods[n])
        os.chmod(wasm, 0o644)
        sign_checked(key, alg, pub_pem, wasm, sig)
    if args.pubkey:
        install_pubkey(root, args.pubkey, pub_pem)
    print(f"guardian-manifest: {args.dir}: {len(names)} polic{'y' if len(names) == 1 else 'ies'} "
          f"({' '.join(names)}) from {tarball.name}, {alg} signatures NAME.wasm.sig")


def main():
    ap = argparse.ArgumentParser(prog="guardian-manifest.py",
                                 description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("digests", help="hash a recipe's installed model files")
    d.add_argument("--root", required=True, help="the recipe's install root (${D})")
    d.add_argument("--out", required=True, help="the digest list to write (a host path)")
    d.add_argument("--recipe", required=True)
    d.add_argument("--version", default="")
    d.add_argument("--dir", default="/opt/models",
                   help="device directory whose files are the models when no PATH is given")
    d.add_argument("paths", nargs="*", metavar="PATH", help="model files, device paths")
    s = sub.add_parser("sign", help="write and sign the image's manifest")
    s.add_argument("--root", required=True, help="the image's rootfs (${IMAGE_ROOTFS})")
    s.add_argument("--key", default="", help="PEM private key, Ed25519 or ECDSA P-256")
    s.add_argument("--pcr", type=int, default=14)
    s.add_argument("--digests-dir", default="/usr/share/guardian/models.d")
    s.add_argument("--manifest", default="/etc/guardian/manifest.toml")
    s.add_argument("--pubkey", default="/etc/guardian/keys/manifest-signing.pub")
    s.add_argument("--trust-config", default="")
    p = sub.add_parser("policies", help="install and sign policy modules from a policy tarball")
    p.add_argument("--tarball", required=True, help="the tarball, or the directory holding only it")
    p.add_argument("--sha256", required=True, help="its expected SHA-256")
    p.add_argument("--key", default="", help="PEM private key, Ed25519 or ECDSA P-256")
    p.add_argument("--key-variable", default="GUARDIAN_POLICY_SIGNING_KEY",
                   help="the variable that sets --key, named in errors")
    p.add_argument("--root", required=True, help="the recipe's install root (${D})")
    p.add_argument("--dir", default="/etc/guardian/policies", help="device directory of the bundles")
    p.add_argument("--pubkey", default="", help="device path to install the public key at")
    p.add_argument("names", nargs="*", metavar="NAME", help="policies to install (NAME.wasm)")
    args = ap.parse_args()
    cmds = {"digests": cmd_digests, "sign": cmd_sign, "policies": cmd_policies}
    try:
        cmds[args.cmd](args)
    except Failure as e:
        print(f"guardian-manifest: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
