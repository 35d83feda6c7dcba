#!/usr/bin/env bash
# Frontend cost, basic vs JAX, side by side in one run: build + emit (trace + lower) and compile
# time of a 12-layer width-256 transformer's forward and backward, and scan vs unrolled for 4, 12
# and 48 layers. Prints every measurement and the ratios basic / JAX.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
install_cpu_plugins
[ -x .venv/bin/python ] || { python3 -m venv .venv && .venv/bin/pip install --quiet jax numpy; }
ours=$(cargo bench --quiet --bench frontend 2>/dev/null)
jax=$(JAX_PLATFORMS=cpu .venv/bin/python benches/frontend_jax.py)
echo "$ours"
echo "$jax"
python3 - <<PY
import json
ours = [json.loads(l) for l in """$ours""".splitlines() if '"scan"' in l]
jax = {(j["depth"], j["scan"]): j for j in map(json.loads, """$jax""".splitlines())}
for o in ours:
    j = jax.get((o["depth"], o["scan"]))
    if j:
        print(f"{o['plugin']:>20} depth {o['depth']:>2} {'scan    ' if o['scan'] else 'unrolled'}: "
              f"total {o['total_s']:.3f}s vs jax {j['total_s']:.3f}s = {o['total_s'] / j['total_s']:.2f}x "
              f"(compile {o['compile_s'] / j['compile_s']:.2f}x, build+emit {o['build_emit_s'] / j['build_emit_s']:.2f}x)")
PY
