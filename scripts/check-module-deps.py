#!/usr/bin/env python3
"""Checks the dependency graph between the top-level modules of the broker library
(server/src): fails on any import cycle (a module that imports a module that imports it back,
directly or through others) and on the layering rules below. Prints the graph.

Usage:
  scripts/check-module-deps.py             # check server/src
  scripts/check-module-deps.py --self-test # show that a cycle and a forbidden import fail

A module's dependencies are every `crate::X` path in its files (in `use` lines and inline),
plus `super::X` from a top-level module file and `super::super::X` one level down (both name
a sibling top-level module). Comments are ignored. External crates count only for FORBIDDEN.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

# Module -> modules (or external crates) it must never import. Mirrors server/src/lib.rs.
FORBIDDEN: dict[str, set[str]] = {
    "api": {"cluster", "raft", "node"},
    "broker": {"cluster", "raft", "api", "node", "txn"},
    "group": {"cluster", "raft", "api", "node"},
    "txn": {"cluster", "raft", "api", "node"},
    "partition": {"broker", "raft", "cluster", "api", "group", "node", "txn"},
    "raft": {"broker", "cluster", "api", "group", "node"},
    "log": {"*crate", "tonic", "openraft", "sled"},
    "grpc": {"*crate", "openraft", "sled"},
    "auth": {"broker", "cluster", "raft", "api", "group", "node", "config", "partition", "log", "meta"},
}

CRATE_PATH = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")
USE_GROUP = re.compile(r"\buse\s+crate::\{([^;]*)\}", re.S)
SUPER1 = re.compile(r"(?<!::)\bsuper::([a-z_][a-z0-9_]*)")
SUPER2 = re.compile(r"\bsuper::super::([a-z_][a-z0-9_]*)")
EXTERNAL = re.compile(r"\b(tonic|openraft|sled)::")


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def module_files(src: Path) -> dict[str, list[tuple[Path, int]]]:
    """Top-level module -> its files with their depth below the module root (0 = root file)."""
    mods: dict[str, list[tuple[Path, int]]] = {}
    for f in sorted(src.glob("*.rs")):
        if f.name not in ("lib.rs", "main.rs"):
            mods.setdefault(f.stem, []).append((f, 0))
    for d in sorted(p for p in src.iterdir() if p.is_dir()):
        for f in sorted(d.rglob("*.rs")):
            rel = f.relative_to(d)
            depth = len(rel.parts) - (1 if rel.name == "mod.rs" else 0)
            mods.setdefault(d.name, []).append((f, depth))
    return mods


def dependencies(mods: dict[str, list[tuple[Path, int]]]) -> dict[str, set[str]]:
    deps: dict[str, set[str]] = {}
    for name, files in mods.items():
        out: set[str] = set()
        for f, depth in files:
            text = strip_comments(f.read_text())
            out.update(CRATE_PATH.findall(text))
            for group in USE_GROUP.findall(text):
                out.update(re.findall(r"(?:^|[,{\s])([a-z_][a-z0-9_]*)(?=::|\s*[,}]|\s*$)", group))
            if depth == 0:
                out.update(SUPER1.findall(text))
            if depth == 1:
                out.update(SUPER2.findall(text))
            out.update("ext:" + c for c in EXTERNAL.findall(text))
        deps[name] = {d for d in out if d != name and (d in mods or d.startswith("ext:"))}
    return deps


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in graph:
                continue
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def problems(deps: dict[str, set[str]]) -> list[str]:
    internal = {m: {d for d in ds if not d.startswith("ext:")} for m, ds in deps.items()}
    found = [f"import cycle between modules: {' <-> '.join(c)}" for c in cycles(internal)]
    for module, banned in FORBIDDEN.items():
        for d in sorted(deps.get(module, ())):
            name = d.removeprefix("ext:")
            if name in banned or ("*crate" in banned and not d.startswith("ext:")):
                found.append(f"{module} must not import {name}")
    return found


def self_test() -> int:
    cyclic = {"broker": {"cluster"}, "cluster": {"raft"}, "raft": {"broker"}, "log": set()}
    assert cycles(cyclic) == [["broker", "cluster", "raft"]], cycles(cyclic)
    assert any("cycle" in p for p in problems(cyclic))
    assert problems({"api": {"cluster"}, "cluster": set()}) == ["api must not import cluster"]
    assert problems({"log": {"ext:sled"}}) == ["log must not import sled"]
    assert problems({"log": {"meta"}, "meta": set()}) == ["log must not import meta"]
    assert problems({"api": {"broker"}, "broker": {"log"}, "log": set()}) == []
    print("check-module-deps self-test: ok (a cycle and forbidden imports are caught)")
    return 0


def main() -> int:
    if sys.argv[1:] == ["--self-test"]:
        return self_test()
    src = Path(__file__).resolve().parent.parent / "server" / "src"
    deps = dependencies(module_files(src))
    for m in sorted(deps):
        inner = sorted(d for d in deps[m] if not d.startswith("ext:"))
        print(f"{m:13} -> {' '.join(inner) or '-'}")
    found = problems(deps)
    for p in found:
        print(f"error: {p}", file=sys.stderr)
    if found:
        return 1
    print(f"module dependencies: {len(deps)} modules, no cycles, layering rules hold")
    return 0


if __name__ == "__main__":
    sys.exit(main())
