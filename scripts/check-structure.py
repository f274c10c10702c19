#!/usr/bin/env python3
# SPDX-License-Identifier: MPL-2.0
"""Checks the layout rules of src/ that docs/development.md (Layout) states:

1. No import cycle between files: the graph of "file A names an item of file B" (through
   `crate::`, `super::`, `self::` or a child module's name) has no cycle. The one edge left
   out is the one glib's subclassing requires: an `imp.rs` naming its wrapper type in the
   `mod.rs` beside it (`type Type = super::Wrapper`).
2. `unsafe` is allowed only on the modules listed in UNSAFE_MODULES.
3. No file is longer than MAX_LINES unless its opening comment says why ("Longer than").

Exit status 1 with one line per violation, 0 when the tree follows the rules.
"""

import re
import sys
from pathlib import Path

MAX_LINES = 600
# The unsafe halves: the only `#[allow(unsafe_code)]` module declarations.
UNSAFE_MODULES = {
    "src/allocator/aligned/memory",
    "src/allocator/memfd/memory",
    "src/allocator/raw",
    "src/elements/memory",
    "src/tracer/hooks",
}

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"


def module_of(path: Path) -> list[str]:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("mod", "lib"):
        parts.pop()
    return parts


def file_of(parts: list[str]) -> Path | None:
    if not parts:
        return SRC / "lib.rs"
    base = SRC.joinpath(*parts)
    for cand in (base.with_suffix(".rs"), base / "mod.rs"):
        if cand.exists():
            return cand
    return None


def resolve(parts: list[str]) -> Path | None:
    """The file of the longest prefix of `parts` that is a module."""
    for n in range(len(parts), -1, -1):
        f = file_of(parts[:n])
        if f is not None:
            return f
    return None


def strip_comments(text: str) -> str:
    # Unit tests sit at the end of a file, in their own inline module.
    text = re.split(r"#\[cfg\(test\)\]\s*mod tests", text)[0]
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r'"(\\.|[^"\\])*"', '""', text)


def edges_of(path: Path) -> set[Path]:
    text = strip_comments(path.read_text())
    here = module_of(path)
    children = set(re.findall(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", text, re.M))
    out = set()
    # Paths, with the first level of a brace group expanded: `super::{a, b::c}`.
    for m in re.finditer(r"\b((?:crate|super|self|\w+)(?:::\w+)*)::\{([^{}]*)\}", text):
        for item in m.group(2).split(","):
            item = item.strip().split(" as ")[0]
            if item:
                out |= target(here, children, f"{m.group(1)}::{item}")
    for m in re.finditer(r"\b((?:crate|super|self|\w+)(?:::\w+)+)", text):
        out |= target(here, children, m.group(1))
    out.discard(path)
    return out


def target(here: list[str], children: set[str], path: str) -> set[Path]:
    parts = [p for p in path.split("::") if p != "self" or False]
    head = parts[0]
    if head == "crate":
        mod = parts[1:]
    elif head == "super":
        base = list(here)
        while parts and parts[0] == "super":
            base = base[:-1]
            parts = parts[1:]
        mod = base + parts
    elif head == "self":
        mod = here + parts[1:]
    elif head in children:
        mod = here + parts
    else:
        return set()
    f = resolve(mod)
    return {f} if f is not None else set()


def cycles(graph: dict[Path, set[Path]]) -> list[list[Path]]:
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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
    for v in graph:
        if v not in index:
            visit(v)
    return out


def main() -> int:
    files = sorted(SRC.rglob("*.rs"))
    problems = []
    graph = {}
    for f in files:
        e = edges_of(f)
        if f.name == "imp.rs":
            e.discard(f.parent / "mod.rs")
        graph[f] = e
        text = f.read_text()
        for m in re.finditer(r"#\[allow\(unsafe_code\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)", text):
            name = "/".join(["src"] + module_of(f) + [m.group(1)])
            if name not in UNSAFE_MODULES:
                problems.append(f"{f.relative_to(ROOT)}: unsafe allowed on module {name}")
        lines = text.count("\n")
        head = "\n".join(text.splitlines()[:12])
        if lines > MAX_LINES and "Longer than" not in head:
            problems.append(
                f"{f.relative_to(ROOT)}: {lines} lines, over {MAX_LINES} with no reason given"
            )
    for comp in cycles(graph):
        names = ", ".join(str(p.relative_to(ROOT)) for p in comp)
        problems.append(f"import cycle between: {names}")
    for p in problems:
        print(p)
    if not problems:
        print(f"structure: {len(files)} files, no import cycle, unsafe fenced, sizes fine")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
