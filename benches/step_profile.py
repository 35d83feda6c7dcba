"""Where a compiled step's time goes, from XLA's own per-op timings: compiles a StableHLO program
with jaxlib's XLA CPU compiler, runs it on random inputs under the profiler (each thunk XLA's CPU
runtime executes is a timed event named by its HLO instruction), and adds the time of every
instruction up by kind of work, read from the optimized HLO:

- matrix products: dots and convolutions (and the fusions and YNNPACK fusions around them);
- the loss: work on batch × batch arrays (the logits and their softmaxes) other than products;
- the optimizer update: elementwise work whose results are the step's outputs;
- transposes and copies: copies, transposes and fusions that only move data;
- reductions: fusions with a reduce (layer norms, softmax sums, bias gradients, norms);
- elementwise fusions: the rest.

Usage: .venv/bin/python benches/step_profile.py --batch B LABEL=FILE.mlir ... [--steps N]
Prints one JSON line per program: seconds per step by kind (summed over the threads that ran
them) and the wall-clock step.
"""
import argparse
import collections
import glob
import gzip
import json
import os
import re
import shutil
import statistics
import tempfile
import time

import jax
import jax.extend.backend
import numpy as np
from jax._src.lib import xla_client as xc

DTYPES = {"f32": np.float32, "f64": np.float64, "bf16": np.float32, "i32": np.int32,
          "i64": np.int64, "ui32": np.uint32, "ui64": np.uint64, "i1": np.bool_}


def main_args(text):
    """(shape, dtype) of each argument of `@main`."""
    sig = re.search(r"func\.func public @main\((.*?)\)\s*->", text, re.S).group(1)
    out = []
    for t in re.findall(r"tensor<([^>]*)>", sig):
        *dims, dt = t.split("x")
        out.append((tuple(int(d) for d in dims), DTYPES[dt]))
    return out


def instructions(hlo):
    """Name -> (opcode, text of the line, called computation) for every instruction, and the
    computations' bodies by name."""
    comps, cur = {}, None
    insts = {}
    for line in hlo.splitlines():
        line = re.sub(r"/\*.*?\*/", "", line)
        m = re.match(r"\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
        if m and "=" not in line.split("{")[0]:
            cur = m.group(1)
            comps[cur] = []
            continue
        m = re.match(r"\s*(ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s([\w\-]+)\((.*)", line)
        if m and cur is not None:
            name, opcode = m.group(2), m.group(4)
            called = re.search(r"calls=%?([\w.\-]+)", line)
            insts[name] = (opcode, line, called.group(1) if called else None, bool(m.group(1)), cur)
            comps[cur].append(name)
    return insts, comps


def kind_of(name, insts, comps, batch, root_operands):
    opcode, line, called, _, _ = insts[name]
    inner = [insts[i][0] for i in comps.get(called, [])] if called else []
    ops = set(inner) | {opcode}
    if ops & {"dot", "convolution"}:
        return "matrix products"
    bb = re.search(rf"\[{batch},{batch}\]", line) or any(
        re.search(rf"\[{batch},{batch}\]", insts[i][1]) for i in comps.get(called, []))
    if bb:
        return "the loss"
    if name in root_operands and "reduce" not in ops:
        return "optimizer update"
    moves = {"copy", "transpose", "bitcast", "reshape", "broadcast", "slice", "concatenate",
             "parameter", "tuple", "get-tuple-element", "pad", "dynamic-slice",
             "dynamic-update-slice", "constant", "copy-start", "copy-done"}
    if ops <= moves or opcode in {"copy", "transpose"}:
        return "transposes and copies"
    if ops & {"reduce", "reduce-window"}:
        return "reductions"
    return "elementwise fusions"


def profile(label, path, batch, steps):
    text = open(path).read()
    backend = jax.extend.backend.get_backend("cpu")
    dev = backend.local_devices()[0]
    exe = backend.compile_and_load(text, [dev], xc.CompileOptions())
    hlo = exe.hlo_modules()[0].to_string()
    insts, comps = instructions(hlo)
    entry = [c for c in comps if c.startswith("main")] or list(comps)
    root = next((n for n, v in insts.items() if v[3] and v[4] == entry[-1]), None)
    root_operands = set(re.findall(r"%([\w.\-]+)", insts[root][1].split("(", 1)[1])) if root else set()
    # Outputs of multi-output fusions reach the result tuple through get-tuple-element.
    for n in list(root_operands):
        if n in insts and insts[n][0] == "get-tuple-element":
            root_operands |= set(re.findall(r"get-tuple-element\(%([\w.\-]+)\)", insts[n][1]))
    rng = np.random.default_rng(0)
    args = []
    for shape, dt in main_args(text):
        if np.issubdtype(dt, np.floating):
            a = (rng.standard_normal(shape) * 0.02).astype(dt)
        else:
            a = rng.integers(0, 2, shape).astype(dt)
        args.append(jax.device_put(a, dev))
    for _ in range(2):
        jax.block_until_ready(exe.execute(args))
    walls = []
    tmp = tempfile.mkdtemp()
    with jax.profiler.trace(tmp, create_perfetto_trace=True):
        for _ in range(steps):
            t = time.perf_counter()
            jax.block_until_ready(exe.execute(args))
            walls.append(time.perf_counter() - t)
    trace = glob.glob(os.path.join(tmp, "**", "perfetto_trace.json.gz"), recursive=True)[0]
    events = json.load(gzip.open(trace))
    events = events["traceEvents"] if isinstance(events, dict) else events
    by_kind = collections.Counter()
    top = collections.Counter()
    for e in events:
        op = e.get("args", {}).get("hlo_op") if e.get("ph") == "X" else None
        if op in insts:
            k = kind_of(op, insts, comps, batch, root_operands)
            by_kind[k] += e["dur"] * 1e-6 / steps
            top[(op, k)] += e["dur"] * 1e-6 / steps
    shutil.rmtree(tmp, ignore_errors=True)
    total = sum(by_kind.values())
    print(json.dumps({
        "program": label, "step_s": round(statistics.median(walls), 5), "op_s": round(total, 5),
        "kinds": {k: round(v, 5) for k, v in by_kind.most_common()},
        "top": [[op, k, round(v, 5)] for (op, k), v in top.most_common(int(os.environ.get("TOP", "8")))],
        "xla": jax.__version__,
    }), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("programs", nargs="+", help="LABEL=FILE.mlir")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    a = ap.parse_args()
    for p in a.programs:
        label, path = p.split("=", 1)
        profile(label, path, a.batch, a.steps)


if __name__ == "__main__":
    main()
