#!/usr/bin/env python3
"""Lines per top-level module of src/ and which modules each one uses (`crate::NAME` in code,
not in comments).

Usage: scripts/layers.py [GIT-REV]   (default: the working tree)
"""
import re
import subprocess
import sys
from collections import defaultdict


def files(rev):
    if rev is None:
        out = subprocess.run(["git", "ls-files", "src"], capture_output=True, text=True, check=True)
        for path in out.stdout.split():
            if path.endswith(".rs"):
                with open(path, encoding="utf-8") as f:
                    yield path, f.read()
    else:
        out = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, "src"],
                             capture_output=True, text=True, check=True)
        for path in out.stdout.split():
            if path.endswith(".rs"):
                text = subprocess.run(["git", "show", f"{rev}:{path}"],
                                      capture_output=True, text=True, check=True).stdout
                yield path, text


def module(path):
    rest = path[len("src/"):]
    name = rest.split("/")[0]
    return name[:-3] if name.endswith(".rs") else name


def main():
    rev = sys.argv[1] if len(sys.argv) > 1 else None
    lines = defaultdict(int)
    imports = defaultdict(set)
    for path, text in files(rev):
        m = module(path)
        lines[m] += text.count("\n")
        code = "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("//"))
        for dep in re.findall(r"crate::([a-z_]+)", code):
            if dep != m:
                imports[m].add(dep)
    mods = sorted(lines)
    print(f"{'module':<12} {'lines':>6}  imports")
    for m in mods:
        deps = " ".join(sorted(d for d in imports[m] if d in lines))
        print(f"{m:<12} {lines[m]:>6}  {deps}")
    print(f"{'total':<12} {sum(lines.values()):>6}")
    cycles = sorted({tuple(sorted((a, b))) for a in mods for b in imports[a]
                     if b in lines and a in imports[b]})
    print("two-way imports:", ", ".join(f"{a}<->{b}" for a, b in cycles) or "none")


if __name__ == "__main__":
    main()
