#!/usr/bin/env python3
"""Prints the import graph between the top-level modules of src/ (from `crate::MODULE` paths,
`use super::` excluded), one line per module with the modules it uses, then its cycles.

Usage: scripts/import-graph.py"""
import itertools
import pathlib
import re

SRC = pathlib.Path("src")
mods = sorted({p.stem if p.parent == SRC else p.relative_to(SRC).parts[0] for p in SRC.rglob("*.rs")} - {"lib", "main"})
edges = {m: set() for m in mods}
for p in SRC.rglob("*.rs"):
    rel = p.relative_to(SRC)
    if rel.parts[0] in ("lib.rs", "main.rs") or rel.parts[0] == "cli":
        continue
    me = rel.stem if len(rel.parts) == 1 else rel.parts[0]
    text = re.sub(r"//.*", "", p.read_text())
    for m in re.findall(r"crate::(\w+)", text):
        if m in edges and m != me:
            edges[me].add(m)
    for group in re.findall(r"use crate::\{([^;]*)\}", text, re.S):
        for m in re.findall(r"(?:^|[\s,{])(\w+)(?=::|\s*[,}]|$)", group):
            if m in edges and m != me:
                edges[me].add(m)
for m in mods:
    print(f"{m:10} -> {', '.join(sorted(edges[m])) or '-'}")


def reach(a):
    seen, todo = set(), [a]
    while todo:
        for n in edges[todo.pop()]:
            if n not in seen:
                seen.add(n)
                todo.append(n)
    return seen


sccs = []
for m in mods:
    comp = {m} | {n for n in reach(m) if m in reach(n)}
    if len(comp) > 1 and comp not in sccs:
        sccs.append(comp)
for c in sccs:
    print("cycle:", " <-> ".join(sorted(c)))
