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
  install     recipes-security/guardian/files/guardian-install.list is the
              one install list: the recipe's do_install installs through it
              and nothing else, passes a value for every ${NAME} it uses;
              its sources exist; the units and the init script name the
              agent and config where it puts them; the qemu test places
              them there too (or by entry, "@ID:HOSTPATH")
  toolcalls   the classes and recipes call scripts/guardian-manifest.py with a
              subcommand and options the script accepts

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
        if "${LAYERSERIES_CORENAMES}" in rel:
            problems.append(f"{conf}: BBFILES_DYNAMIC entry {entry}: ${{LAYERSERIES_CORENAMES}} "
                            "holds two names on oe-core master and splits the entry; use "
                            "${GUARDIAN_TEGRA_SERIES} (one name, with a directory)")
            continue
        rel = rel.replace("${GUARDIAN_TEGRA_SERIES}", "${LAYERSERIES_CORENAMES}")
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
                              "${GUARDIAN_TEGRA_SERIES}" in e
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
    callers = sorted((layer / "classes").glob("*.bbclass")) if (layer / "classes").is_dir() else []
    callers += sorted(p for p in layer.rglob("*.bb") if p.is_file())
    for p in callers:
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
            known = set(re.findall(r"(--[a-z][a-z0-9-]*)", helps[sub]))
            for w in words[1:]:
                if w.startswith("--") and w not in known:
                    problems.append(f"{p}:{line}: guardian-manifest.py {sub} has no option {w}")
    if not helps:
        problems.append(f"{layer / 'classes'}: no class calls ${{GUARDIAN_MANIFEST_TOOL}}")
    return problems


def read_install_list(path):
    defaults, entries, problems = {}, [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "default":
            if len(words) != 3:
                problems.append(f"{path}:{n}: expected 'default NAME VALUE'")
            else:
                defaults[words[1]] = words[2]
            continue
        if len(words) not in (4, 5) or not re.fullmatch(r"0[0-7]{3}", words[1]) \
                or words[2].split(":")[0] not in ("build", "src", "files") or ":" not in words[2] \
                or not words[3].startswith("${"):
            problems.append(f"{path}:{n}: expected 'ID MODE(0NNN) build:|src:|files:SOURCE "
                            f"${{DIR}}/DEST [FEATURE]': {line.strip()}")
            continue
        entries.append({"line": n, "id": words[0], "mode": words[1], "source": words[2],
                        "dest": words[3], "feature": words[4] if len(words) == 5 else None})
    return defaults, entries, problems


def expand_default(dest, defaults):
    return re.sub(r"\$\{(\w+)\}", lambda m: defaults.get(m.group(1), m.group(0)), dest)


def check_install(layer):
    problems = []
    repo = layer.parent
    files = layer / "recipes-security/guardian/files"
    lst = files / "guardian-install.list"
    recipe = next(iter(sorted((layer / "recipes-security/guardian").glob("guardian_*.bb"))), None)
    if not lst.is_file() or recipe is None:
        return [f"{lst}: missing (or no guardian_*.bb beside it)"]
    defaults, entries, problems = read_install_list(lst)
    by_id = {e["id"]: e for e in entries}
    for need in ("agent", "config"):
        if need not in by_id:
            problems.append(f"{lst}: no '{need}' entry")
    names = set()
    for e in entries:
        names |= set(re.findall(r"\$\{(\w+)\}", e["dest"]))
        kind, _, src = e["source"].partition(":")
        where = {"src": repo / src, "files": files / src}.get(kind)
        if where is not None and not where.exists():
            problems.append(f"{lst}:{e['line']}: {e['id']}: source {where} does not exist")
    for name in sorted(names):
        if name not in defaults:
            problems.append(f"{lst}: ${{{name}}} has no 'default {name} VALUE' line")

    # The recipe installs through the list, and only through it.
    body = next((b for name, _, b in functions(recipe) if name == "do_install"), None)
    if body is None:
        problems.append(f"{recipe}: no do_install")
    else:
        joined = body.replace("\\\n", " ")
        if not re.search(r"guardian-install\.sh\s+install\s+\$\{UNPACKDIR\}/guardian-install\.list\s+\$\{D\}", joined):
            problems.append(f"{recipe}: do_install does not run guardian-install.sh install "
                            "${UNPACKDIR}/guardian-install.list ${D}")
        for k, line in enumerate(body.splitlines(), 1):
            if re.search(r"^\s*(install|cp|sed|ln|mv)\b", line) or re.search(r"\$\{D\}", line) \
                    and "guardian-install.sh" not in line:
                problems.append(f"{recipe}: do_install line {k} installs outside the install list: "
                                f"{line.strip()}")
        for name in sorted(names):
            if f"--var {name}=" not in joined:
                problems.append(f"{recipe}: do_install passes no --var {name}= (the list uses ${{{name}}})")
    for name in ("guardian-install.list", "guardian-install.sh"):
        if f"file://{name}" not in recipe.read_text():
            problems.append(f"{recipe}: SRC_URI does not fetch file://{name}")

    agent = expand_default(by_id["agent"]["dest"], defaults) if "agent" in by_id else None
    config = expand_default(by_id["config"]["dest"], defaults) if "config" in by_id else None
    # The units and the init script name the agent and config where the list
    # puts them (the recipe rewrites /usr/bin/ and /etc/guardian/ only).
    for e in entries:
        kind, _, src = e["source"].partition(":")
        path = {"src": repo / src, "files": files / src}.get(kind)
        if path is None or not path.is_file() or not (path.suffix == ".service" or path.name.endswith(".init")):
            continue
        text = path.read_text()
        for m in re.finditer(r"^ExecStart=(\S+)(.*)$", text, re.M):
            if agent and m.group(1) != agent:
                problems.append(f"{path}: ExecStart runs {m.group(1)}, the install list puts the agent at {agent}")
            c = re.search(r"--config\s+(\S+)", m.group(2))
            if config and c and c.group(1) != config:
                problems.append(f"{path}: --config {c.group(1)}, the install list puts the config at {config}")
        for var, want in (("DAEMON", agent), ("CONFIG", config)):
            m = re.search(rf"^{var}=(\S+)$", text, re.M)
            if path.name.endswith(".init") and want and (not m or m.group(1) != want):
                problems.append(f"{path}: {var}={m.group(1) if m else '(unset)'}, the install list says {want}")

    # The qemu test image: agent and config by entry, or at the list's paths.
    for script in sorted((repo / "qemu").glob("*.sh")) if (repo / "qemu").is_dir() else []:
        text = script.read_text()
        if "build-initramfs.sh" not in text or script.name == "build-initramfs.sh":
            continue
        for m in re.finditer(r'"@([\w-]+):', text):
            if m.group(1) not in by_id:
                problems.append(f"{script}: @{m.group(1)}: no such entry in {lst}")
        for m in re.finditer(r'"[^"\s]+:(/[^"\s]+)"', text):
            guest = m.group(1)
            for e in (by_id.get("agent"), by_id.get("config")):
                if not e:
                    continue
                dest = expand_default(e["dest"], defaults)
                if pathlib.PurePosixPath(guest).name == pathlib.PurePosixPath(dest).name and guest != dest:
                    problems.append(f"{script}: puts {pathlib.PurePosixPath(guest).name} at {guest}, "
                                    f"the install list ({e['id']}) at {dest}; use \"@{e['id']}:HOSTPATH\"")
    return problems


CHECKS = {
    "structure": check_structure,
    "fetch": check_fetch,
    "gate": check_gate,
    "fileuris": check_fileuris,
    "whitespace": check_whitespace,
    "dynamic": check_dynamic,
    "toolcalls": check_toolcalls,
    "install": check_install,
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
