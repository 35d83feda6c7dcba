#!/usr/bin/env bash
# The BASIC step, basic vs JAX side by side in one run (tiny and small presets, batch 64, f32,
# one CPU device each), then basic's memory sections (batch growth at a fixed micro-batch, remat
# on 12-layer towers) and meshes (1×1, 8×1, 1×8, 2×4). Prints every measurement and the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
install_cpu_plugins
[ -x .venv/bin/python ] || { python3 -m venv .venv && .venv/bin/pip install --quiet jax numpy; }
export TF_CPP_MIN_LOG_LEVEL=2
ours=$(BASIC_BENCH=jax cargo bench --quiet --bench step 2>/dev/null)
jax=$(JAX_PLATFORMS=cpu .venv/bin/python benches/basic_jax.py --model tiny --steps 20; JAX_PLATFORMS=cpu .venv/bin/python benches/basic_jax.py --model small --steps 5)
echo "$ours"
echo "$jax"
python3 - <<PY
import json
ours = {j["model"]: j for j in map(json.loads, """$ours""".splitlines())}
jax = {j["model"]: j for j in map(json.loads, """$jax""".splitlines())}
for m in ours:
    o, j = ours[m], jax[m]
    print(f"{m}: step {o['step_s_median']*1e3:.1f} ms vs jax {j['step_s_median']*1e3:.1f} ms = {o['step_s_median']/j['step_s_median']:.2f}x; "
          f"compile {o['compile_s']:.2f} s vs {j['compile_s']:.2f} s = {o['compile_s']/j['compile_s']:.2f}x; "
          f"temp {o['temp_bytes']/2**20:.1f} MiB vs {j['temp_bytes']/2**20:.1f} MiB = {o['temp_bytes']/j['temp_bytes']:.2f}x")
PY
BASIC_BENCH=memory cargo bench --quiet --bench step 2>/dev/null
BASIC_BENCH=mesh cargo bench --quiet --bench step 2>/dev/null
