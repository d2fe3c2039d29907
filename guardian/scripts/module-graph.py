#!/usr/bin/env python3
"""The agent's module graph, from its sources: which top-level module of
guardian/src uses which (`crate::X` paths and `use crate::{X, ...}`), as a
Mermaid block for docs/architecture.md, and every import circle.

    guardian/scripts/module-graph.py            print the graph and the circles
    guardian/scripts/module-graph.py --check    also exit 1 on an import circle, or if
                                                 docs/architecture.md's graph block
                                                 differs from this one
    guardian/scripts/module-graph.py --write    put this graph into docs/architecture.md's
                                                 block

A module is a file or folder directly under guardian/src (main.rs and
lib.rs excluded: they are the roots). Tests (`#[cfg(test)] mod tests`) are
left out: a test may use anything. `cli/` belongs to the binary, not to
the library: its edges are its `guardian::X` paths (what each subcommand
calls), and no library module can use it.

The verifier's library is a crate of its own, `guardian-attest`; the
agent re-exports some of its modules under its own paths. It is one node
here, `guardian_attest`: a module of the agent that names it
(`guardian_attest::`, e.g. to re-export its half of a subsystem) points
at it, and so does each module lib.rs re-exports whole from it (`pub use
guardian_attest::{manifest, ...}`), which is a node of its own since the
agent's modules name it by the agent's path (`crate::manifest`). Nothing
points out of `guardian_attest`: that crate cannot use the agent.
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
SRC = ROOT / "guardian" / "src"
LIB = SRC / "lib.rs"
DOC = ROOT / "docs" / "architecture.md"
BEGIN, END = "<!-- module-graph:begin -->", "<!-- module-graph:end -->"
# Modules of the binary crate (main.rs's), which reach the library as
# `guardian::`.
BINARY = {"cli"}
# The verifier's library (its own crate), as one node.
ATTEST = "guardian_attest"


def reexported():
    # Top-level modules lib.rs takes whole from guardian-attest:
    # `pub use guardian_attest::{manifest, signing};` or
    # `pub use guardian_attest::manifest;`.
    text = strip_tests(LIB.read_text())
    names = set()
    for m in re.finditer(r"pub use " + ATTEST + r"::(\{[^;]*\}|\w+)\s*;", text, re.S):
        for part in re.split(r"[,\s]+", m.group(1).strip("{}")):
            if part:
                names.add(part)
    return names


def modules():
    mods = {}
    for p in sorted(SRC.iterdir()):
        if p.name in ("main.rs", "lib.rs"):
            continue
        if p.is_dir():
            mods[p.name] = sorted(p.rglob("*.rs"))
        elif p.suffix == ".rs":
            mods[p.stem] = [p]
    return mods


def strip_tests(text):
    # Drop `#[cfg(test)] mod tests { ... }` (to the end of the file: the
    # house puts it last), and comments (doc links are not dependencies).
    m = re.search(r"#\[cfg\(test\)\]\s*mod tests", text)
    text = text[: m.start()] if m else text
    return "\n".join(re.sub(r"//.*$", "", line) for line in text.splitlines())


def uses(text, names, root="crate"):
    found = set()
    for m in re.finditer(root + r"::(\w+)", text):
        found.add(m.group(1))
    for m in re.finditer(r"use " + root + r"::\{([^;]*)\}", text, re.S):
        for part in re.split(r"[,\s]+", m.group(1)):
            head = part.split("::")[0].strip("{} ")
            if head:
                found.add(head)
    return {n for n in found if n in names}


def graph():
    mods = modules()
    again = reexported()
    names = set(mods) | again
    edges = {}
    for name, files in mods.items():
        deps = set()
        for f in files:
            root = "guardian" if name in BINARY else "crate"
            text = strip_tests(f.read_text())
            deps |= uses(text, names, root)
            if re.search(r"\b" + ATTEST + r"::", text):
                deps.add(ATTEST)
        deps.discard(name)
        edges[name] = sorted(deps)
    for name in again:
        edges[name] = [ATTEST]
    edges[ATTEST] = []
    return dict(sorted(edges.items()))


def circles(edges):
    # Strongly connected components of more than one module (Tarjan).
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in edges:
        if v not in index:
            visit(v)
    return out


def mermaid(edges):
    lines = ["```mermaid", "graph LR"]
    for a, deps in edges.items():
        if not deps:
            lines.append(f"    {a}")
        for b in deps:
            lines.append(f"    {a} --> {b}")
    lines.append("```")
    return "\n".join(lines)


def main():
    edges = graph()
    block = mermaid(edges)
    cyc = circles(edges)
    print(block)
    if cyc:
        print("\nimport circles:")
        for c in cyc:
            print("  " + " <-> ".join(c))
    else:
        print("\nno import circle")
    if "--write" in sys.argv:
        text = DOC.read_text()
        if BEGIN not in text or END not in text:
            print(f"{DOC}: no {BEGIN} ... {END} block", file=sys.stderr)
            return 1
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        DOC.write_text(f"{head}{BEGIN}\n{block}\n{END}{tail}")
    if "--check" in sys.argv:
        if cyc:
            print("import circles among the agent's modules: cut them", file=sys.stderr)
            return 1
        text = DOC.read_text() if DOC.exists() else ""
        if BEGIN not in text or END not in text:
            print(f"{DOC}: no {BEGIN} ... {END} block", file=sys.stderr)
            return 1
        current = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
        if current != block:
            print(
                f"{DOC}: the module graph is out of date; run "
                "guardian/scripts/module-graph.py --write",
                file=sys.stderr,
            )
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
