#!/usr/bin/env python3
"""Lists Rust functions longer than N lines (default 80) under src/, longest first.

Usage: scripts/fn-lengths.py [N]. A function runs from its `fn` line to the line of the brace
that closes its body (strings, chars and comments are skipped when matching braces)."""
import pathlib
import re
import sys

LIMIT = int(sys.argv[1]) if len(sys.argv) > 1 else 80
FN = re.compile(r"^\s*(pub(\([a-z:]+\))?\s+)?(const\s+)?(unsafe\s+)?(extern\s+\"C\"\s+)?fn\s+(\w+)")


def strip(line, state):
    """The line without strings, chars and comments; `state` carries an open block comment."""
    out, i = [], 0
    while i < len(line):
        if state["block"]:
            j = line.find("*/", i)
            if j < 0:
                return "".join(out)
            state["block"], i = False, j + 2
            continue
        c = line[i]
        if line.startswith("//", i):
            break
        if line.startswith("/*", i):
            state["block"], i = True, i + 2
            continue
        if c == '"':
            i += 1
            while i < len(line) and line[i] != '"':
                i += 2 if line[i] == "\\" else 1
            i += 1
            continue
        if c == "'" and re.match(r"'(\\.|[^\\'])'", line[i:]):
            i += len(re.match(r"'(\\.|[^\\'])'", line[i:]).group(0))
            continue
        out.append(c)
        i += 1
    return "".join(out)


found = []
for path in sorted(pathlib.Path("src").rglob("*.rs")):
    lines = path.read_text().splitlines()
    state = {"block": False}
    clean = [strip(l, state) for l in lines]
    for i, line in enumerate(lines):
        m = FN.match(line)
        if not m:
            continue
        depth, opened = 0, False
        for j in range(i, len(lines)):
            for c in clean[j]:
                if c == "{":
                    depth, opened = depth + 1, True
                elif c == "}":
                    depth -= 1
            if opened and depth == 0:
                break
            if not opened and clean[j].rstrip().endswith(";"):
                break
        n = j - i + 1
        if opened and n > LIMIT:
            found.append((n, f"{path}:{i + 1}", m.group(6)))
for n, where, name in sorted(found, reverse=True):
    print(f"{n:5}  {name:32} {where}")
print(f"{len(found)} functions over {LIMIT} lines")
