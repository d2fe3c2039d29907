#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Offline check of the layer's kas files (kas/*.yml), with kas itself.

    check-kas.py LAYER

Run with the Python of a virtualenv that has the pinned kas installed
(check-layer.sh does this). For every top-level kas file, kas's own include
handler loads it and its includes, validating each against kas's schema;
nothing is fetched. The merged configuration must then:

  - name a machine, a target and a distro;
  - list this layer (repo "guardian", no URL) with meta-guardian as a layer
    that exists, and openembedded-core, bitbake and meta-tpm;
  - give every remote repository a branch, tag or commit (never the
    deprecated refspec, never a floating default), all Yocto release
    branches of one release that LAYERSERIES_COMPAT_guardian lists;
  - switch on the "guardian" distro feature in local_conf_header;
  - pass the builder's GUARDIAN_* variables through `env` without a value
    (a revision or a key path written into a kas file would be committed);
  - contain no AUTOREV anywhere.

Prints one problem per line and exits 1 if there are any.
"""

import pathlib
import re
import sys

RELEASE_REPOS = ("openembedded-core", "meta-openembedded", "meta-security",
                 "meta-raspberrypi", "meta-tegra")
REQUIRED_ENV = ("GUARDIAN_SRCREV", "GUARDIAN_EBPF_URI", "GUARDIAN_EBPF_SHA256",
                "GUARDIAN_MANIFEST_SIGNING_KEY")


def layer_series(layer):
    text = (layer / "conf/layer.conf").read_text()
    m = re.search(r'^LAYERSERIES_COMPAT_guardian\s*=\s*"([^"]*)"', text, re.M)
    return set(m.group(1).split()) if m else set()


def check_file(path, layer, repo_root, series):
    from kas.includehandler import IncludeHandler
    from kas.kasusererror import KasUserError

    problems = []
    say = problems.append
    handler = IncludeHandler([str(path)], use_lock=False)
    # Includes are relative to the repository root; outside a git checkout
    # (CI copies) kas would fall back to the file's directory.
    handler.__dict__["top_repo_path"] = str(repo_root)
    try:
        config, missing = handler.get_config()
    except (KasUserError, Exception) as e:  # kas raises plain errors too
        return [f"{path}: kas cannot load it: {e}"]
    if missing:
        say(f"{path}: includes from repositories that are not checked out: {', '.join(missing)}")
    for key in ("machine", "target", "distro"):
        if not config.get(key):
            say(f"{path}: no {key}")
    repos = config.get("repos") or {}
    own = repos.get("guardian")
    if own is None or (own or {}).get("url"):
        say(f"{path}: repo 'guardian' (this repository, no url) is missing")
    else:
        layers = (own or {}).get("layers") or {}
        if "meta-guardian" not in layers:
            say(f"{path}: repo 'guardian' does not list the meta-guardian layer")
        for name in layers:
            if not (repo_root / name / "conf/layer.conf").is_file():
                say(f"{path}: layer {name} of repo 'guardian' has no {repo_root / name}/conf/layer.conf")
    for needed in ("bitbake", "openembedded-core", "meta-security"):
        if needed not in repos:
            say(f"{path}: repo {needed} is missing")
    if "meta-tpm" not in ((repos.get("meta-security") or {}).get("layers") or {}):
        say(f"{path}: meta-security does not enable its meta-tpm layer (tpm2-tss)")
    releases = {}
    for name, r in repos.items():
        r = r or {}
        if not r.get("url"):
            continue
        if "refspec" in r:
            say(f"{path}: repo {name} uses the deprecated refspec; use branch or commit")
        if not (r.get("branch") or r.get("commit") or r.get("tag")):
            say(f"{path}: repo {name} names no branch, tag or commit (the checkout would float)")
        if name in RELEASE_REPOS and r.get("branch"):
            releases[name] = r["branch"]
    if len(set(releases.values())) > 1:
        say(f"{path}: repositories on different Yocto releases: "
            + ", ".join(f"{k}={v}" for k, v in sorted(releases.items())))
    for name, branch in sorted(releases.items()):
        if branch not in series:
            say(f"{path}: repo {name} is on {branch}, which LAYERSERIES_COMPAT_guardian "
                f"({' '.join(sorted(series))}) does not list")
    machine = str(config.get("machine", ""))
    if "meta-raspberrypi" in repos and not machine.startswith("raspberrypi"):
        say(f"{path}: meta-raspberrypi in the build but machine is {machine}")
    if "meta-tegra" in repos and not machine.startswith(("jetson", "p3")):
        say(f"{path}: meta-tegra in the build but machine is {machine}")
    conf = "\n".join((config.get("local_conf_header") or {}).values())
    if not re.search(r'DISTRO_FEATURES:append\s*=\s*"[^"]*\bguardian\b', conf):
        say(f"{path}: local_conf_header does not add 'guardian' to DISTRO_FEATURES")
    env = config.get("env") or {}
    for var in REQUIRED_ENV:
        if var not in env:
            say(f"{path}: env does not pass {var} through from the builder's environment")
        elif env[var] is not None:
            say(f"{path}: env gives {var} a value in the kas file; leave it null (the builder sets it)")
    for p in [path] + [pathlib.Path(c.filename) for c in handler.config_files]:
        if "AUTOREV" in pathlib.Path(p).read_text():
            say(f"{p}: AUTOREV")
    return problems


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    layer = pathlib.Path(sys.argv[1]).resolve()
    try:
        import kas  # noqa: F401
    except ImportError:
        print("kas is not installed in this Python (check-layer.sh installs it)")
        return 1
    import argparse
    import logging
    from kas.context import create_global_context
    logging.disable(logging.WARNING)
    create_global_context(argparse.Namespace(no_color=True, update=False, force_checkout=False))
    files = sorted((layer / "kas").glob("*.yml"))
    files = [f for f in files if not f.name.endswith(".lock.yml")]
    if not files:
        print(f"{layer / 'kas'}: no kas files")
        return 1
    series = layer_series(layer)
    problems = []
    for f in files:
        problems += check_file(f, layer, layer.parent, series)
    for line in sorted(set(problems)):
        print(line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
