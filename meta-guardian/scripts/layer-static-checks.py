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


CHECKS = {
    "structure": check_structure,
    "fetch": check_fetch,
    "gate": check_gate,
    "fileuris": check_fileuris,
    "whitespace": check_whitespace,
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
