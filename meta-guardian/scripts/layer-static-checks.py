#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Static checks of the meta-guardian layer that need no bitbake.

    layer-static-checks.py LAYER CHECK

CHECK is one of:
  structure   conf/layer.conf has the fields a layer needs; README.md,
              SECURITY.md and COPYING.MIT exist
  fetch       no AUTOREV; no network access inside do_* tasks (only
              do_fetch, through SRC_URI, may reach the network)
  gate        every statement of every .bbappend is gated on the "guardian"
              distro feature, so adding the layer alone changes nothing
  fileuris    every file:// in the metadata names a file in one of the
              directories bitbake searches for that recipe
  whitespace  no line of metadata ends in whitespace
  dynamic     every file under dynamic-layers/ is matched by a BBFILES_DYNAMIC
              pattern of conf/layer.conf (for some release the layer supports),
              every pattern names a real directory, and each release
              directory is one the layer supports
  toolcalls   the classes call scripts/guardian-manifest.py with a subcommand
              and options the script accepts

Prints the problems found, one per line, and exits 1 if there are any.
"""

import pathlib
import re
import sys

META_SUFFIXES = (".bb", ".bbappend", ".inc", ".bbclass", ".conf")
GATE = re.compile(r"""bb\.utils\.contains\(\s*['"]DISTRO_FEATURES['"]\s*,\s*['"]guardian['"]""")


def metadata(layer):
    return sorted(p for p in layer.rglob("*")
                  if p.is_file() and p.name.endswith(META_SUFFIXES))


def statements(path):
    """(first line number, text) of each logical line, comments dropped,
    backslash continuations joined."""
    out, buf, start = [], "", 0
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if not buf:
            start = n
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        out.append((start, buf + line))
        buf = ""
    if buf:
        out.append((start, buf))
    return out


def functions(path):
    """(name, first line, body) of each shell or python function."""
    text = path.read_text().splitlines()
    out, i = [], 0
    head = re.compile(r"^\s*(?:python\s+)?(?:fakeroot\s+)?([\w:${}.-]+)\s*\(\s*\)\s*\{\s*$")
    while i < len(text):
        m = head.match(text[i])
        if m:
            start, body = i + 1, []
            i += 1
            while i < len(text) and text[i].rstrip() != "}":
                body.append(text[i])
                i += 1
            out.append((m.group(1), start, "\n".join(body)))
        i += 1
    return out


def check_structure(layer):
    problems = []
    conf = layer / "conf/layer.conf"
    if not conf.is_file():
        return [f"{conf}: missing"]
    text = conf.read_text()

    def value(var):
        m = re.search(rf'^\s*{re.escape(var)}\s*(?:\+|\?|\.)?=\s*"([^"]*)"', text, re.M)
        return m.group(1) if m else None

    required = {
        "BBPATH": lambda v: "${LAYERDIR}" in v,
        "BBFILES": lambda v: "${LAYERDIR}/recipes-*/*/*.bb" in v,
        "BBFILE_COLLECTIONS": lambda v: "guardian" in v.split(),
        "BBFILE_PATTERN_guardian": lambda v: v == "^${LAYERDIR}/",
        "BBFILE_PRIORITY_guardian": lambda v: v.isdigit(),
        "LAYERDEPENDS_guardian": lambda v: "core" in v.split(),
        "LAYERSERIES_COMPAT_guardian": lambda v: {"whinlatter", "wrynose"} <= set(v.split()),
    }
    for var, ok in required.items():
        v = value(var)
        if v is None:
            problems.append(f"{conf}: {var} is not set")
        elif not ok(v):
            problems.append(f'{conf}: {var} = "{v}" is not what the layer needs')
    for name in ("README.md", "SECURITY.md", "COPYING.MIT"):
        if not (layer / name).is_file():
            problems.append(f"{layer / name}: missing")
    return problems


NETWORK = re.compile(r"\b(wget|curl|git\s+(clone|fetch|pull|ls-remote)|pip3?\s+install|"
                     r"cargo\s+(fetch|update|install)|npm\s+install|urllib\.request|"
                     r"requests\.get|http\.client|socket\.)")


def check_fetch(layer):
    problems = []
    for p in metadata(layer):
        for n, stmt in statements(p):
            if "AUTOREV" in stmt:
                problems.append(f"{p}:{n}: AUTOREV (builds must name their revision)")
        for name, n, body in functions(p):
            if not name.startswith("do_"):
                continue
            for k, line in enumerate(body.splitlines(), n + 1):
                if line.lstrip().startswith("#"):
                    continue
                m = NETWORK.search(line)
                if m:
                    problems.append(f"{p}:{k}: {name} uses the network ({m.group(0)}); "
                                    "only do_fetch may, through SRC_URI")
    return problems


def check_gate(layer):
    problems = []
    for p in sorted(layer.rglob("*.bbappend")):
        stmts = statements(p)
        if not stmts:
            problems.append(f"{p}: empty bbappend")
        for n, stmt in stmts:
            if not GATE.search(stmt):
                problems.append(f"{p}:{n}: not gated on DISTRO_FEATURES 'guardian': {stmt.strip()[:80]}")
    return problems


def recipe_dirs(p):
    """Where bitbake's FILESPATH looks for a file:// of this metadata file
    (FILESPATH: ${BP}, ${BPN}, files under the recipe's directory; a
    FILESEXTRAPATHS ${THISDIR}/files of an .inc or .bbappend is the same)."""
    d = p.parent
    stem = p.name.rsplit(".", 1)[0]
    bpn = stem.split("_")[0]
    dirs = [d / "files", d / bpn, d / stem.replace("_", "-")]
    return dirs


def check_fileuris(layer):
    problems = []
    for p in metadata(layer):
        if p.name.endswith(".conf"):
            continue
        for n, stmt in statements(p):
            if not re.match(r"\s*SRC_URI\b", stmt):
                continue  # e.g. LIC_FILES_CHKSUM, whose file:// is in ${S}
            for m in re.finditer(r"file://([^\s;\"'\\]+)", stmt):
                name = m.group(1)
                if name.startswith("/") or "$" in name:
                    continue  # absolute or computed: the builder's business
                if not any((d / name).is_file() for d in recipe_dirs(p)):
                    where = ", ".join(str(d.relative_to(layer)) for d in recipe_dirs(p))
                    problems.append(f"{p}:{n}: file://{name} is in none of {where}")
    return problems


def check_whitespace(layer):
    problems = []
    for p in metadata(layer):
        for n, line in enumerate(p.read_text().splitlines(), 1):
            if line != line.rstrip():
                problems.append(f"{p}:{n}: trailing whitespace")
    return problems


def layerconf_values(layer, var):
    """Every value assigned to var in conf/layer.conf, continuations joined."""
    conf = layer / "conf/layer.conf"
    out = []
    for _, stmt in statements(conf):
        m = re.match(rf'\s*{re.escape(var)}\s*(?:\+|\?|\.)?=\s*"(.*)"\s*$', stmt)
        if m:
            out.append(m.group(1))
    return out


def check_dynamic(layer):
    import fnmatch
    problems = []
    conf = layer / "conf/layer.conf"
    series = " ".join(layerconf_values(layer, "LAYERSERIES_COMPAT_guardian")).split()
    entries = " ".join(layerconf_values(layer, "BBFILES_DYNAMIC")).split()
    patterns = []
    for entry in entries:
        collection, _, pattern = entry.partition(":")
        if not pattern.startswith("${LAYERDIR}/"):
            problems.append(f"{conf}: BBFILES_DYNAMIC entry {entry} is not collection:${{LAYERDIR}}/...")
            continue
        rel = pattern[len("${LAYERDIR}/"):]
        expansions = ([rel.replace("${LAYERSERIES_CORENAMES}", s) for s in series]
                      if "${LAYERSERIES_CORENAMES}" in rel else [rel])
        if "$" in " ".join(expansions):
            problems.append(f"{conf}: BBFILES_DYNAMIC entry {entry}: only ${{LAYERDIR}} and "
                            "${LAYERSERIES_CORENAMES} can be checked")
            continue
        for e in expansions:
            top = e.split("/")[0]
            if not (layer / top).is_dir():
                problems.append(f"{conf}: BBFILES_DYNAMIC entry {entry}: no directory {top}/")
            patterns.append((collection, e))
    dyn = layer / "dynamic-layers"
    if dyn.is_dir():
        for p in sorted(dyn.rglob("*")):
            if not p.is_file():
                continue
            rel = p.relative_to(layer).as_posix()
            if not any(fnmatch.fnmatchcase(rel, pat) and rel.count("/") == pat.count("/")
                       for _, pat in patterns):
                problems.append(f"{p}: matched by no BBFILES_DYNAMIC pattern in {conf}, "
                                "so bitbake never reads it")
        for coll in sorted(d for d in dyn.iterdir() if d.is_dir()):
            uses_series = any(pat.startswith(f"dynamic-layers/{coll.name}/") and
                              "${LAYERSERIES_CORENAMES}" in e
                              for e in entries for _, pat in patterns
                              if e.startswith(coll.name + ":"))
            if uses_series:
                for sd in sorted(d for d in coll.iterdir() if d.is_dir()):
                    if sd.name not in series:
                        problems.append(f"{sd}: {sd.name} is not in LAYERSERIES_COMPAT_guardian "
                                        f"({' '.join(series)})")
    return problems


def check_toolcalls(layer):
    import subprocess
    problems = []
    tool = layer / "scripts/guardian-manifest.py"
    helps = {}
    for p in sorted((layer / "classes").glob("*.bbclass")) if (layer / "classes").is_dir() else []:
        text = p.read_text()
        for m in re.finditer(r"python3\s+\$\{GUARDIAN_MANIFEST_TOOL\}((?:[^\n]*\\\n)*[^\n]*)", text):
            call = m.group(1).replace("\\\n", " ")
            words = call.split()
            line = text[:m.start()].count("\n") + 1
            if not words:
                problems.append(f"{p}:{line}: guardian-manifest.py called without a subcommand")
                continue
            sub = words[0]
            if sub not in helps:
                r = subprocess.run([sys.executable, str(tool), sub, "--help"],
                                   capture_output=True, text=True)
                helps[sub] = r.stdout if r.returncode == 0 else None
            if helps[sub] is None:
                problems.append(f"{p}:{line}: guardian-manifest.py has no subcommand {sub!r}")
                continue
            known = set(re.findall(r"(--[a-z][a-z-]*)", helps[sub]))
            for w in words[1:]:
                if w.startswith("--") and w not in known:
                    problems.append(f"{p}:{line}: guardian-manifest.py {sub} has no option {w}")
    if not helps:
        problems.append(f"{layer / 'classes'}: no class calls ${{GUARDIAN_MANIFEST_TOOL}}")
    return problems


CHECKS = {
    "structure": check_structure,
    "fetch": check_fetch,
    "gate": check_gate,
    "fileuris": check_fileuris,
    "whitespace": check_whitespace,
    "dynamic": check_dynamic,
    "toolcalls": check_toolcalls,
}


def main():
    if len(sys.argv) != 3 or sys.argv[2] not in CHECKS:
        print(__doc__, file=sys.stderr)
        return 2
    problems = CHECKS[sys.argv[2]](pathlib.Path(sys.argv[1]).resolve())
    for line in problems:
        print(line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
