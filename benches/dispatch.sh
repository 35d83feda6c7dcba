#!/usr/bin/env bash
# Dispatch overhead, basic vs JAX jit, side by side in one run. Sets up a project-local venv with
# JAX (.venv) when missing. Prints each measurement and the ratio basic / JAX (below 1: faster).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
install_cpu_plugins
[ -x .venv/bin/python ] || { python3 -m venv .venv && .venv/bin/pip install --quiet jax numpy; }
ours=$(cargo bench --quiet --bench dispatch 2>/dev/null)
jax=$(JAX_PLATFORMS=cpu .venv/bin/python benches/dispatch_jax.py)
echo "$ours"
echo "$jax"
python3 - "$jax" <<PY
import json, sys
jax = json.loads(sys.argv[1])
for line in """$ours""".splitlines():
    o = json.loads(line)
    print(f"ratio basic[{o['plugin']}] / jax jit: {o['median_us'] / jax['median_us']:.2f}  "
          f"({o['median_us']:.1f} us vs {jax['median_us']:.1f} us per call, median)")
PY
