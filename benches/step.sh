#!/usr/bin/env bash
# The BASIC step, basic vs JAX side by side in one run (tiny and small presets, batch 64, f32,
# one CPU device each), then basic's memory sections (batch growth at a fixed micro-batch, remat
# on 12-layer towers) and meshes (1×1, 8×1, 1×8, 2×4), and BASIC-L's per-device plan on 256
# devices. Prints every measurement and the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
install_cpu_plugins
[ -x .venv/bin/python ] || { python3 -m venv .venv && .venv/bin/pip install --quiet jax numpy; }
export TF_CPP_MIN_LOG_LEVEL=2
# basic on both CPU plugins: xla-cpu-pjrt (the default) and lammps-jax-pjrt-cpu, whose XLA is the
# one jaxlib 0.10.2 runs, so that the second pair compares the graphs on the same compiler.
newer=$PWD/.pjrt/lammps-jax-pjrt-cpu/lammps_jax_pjrt_cpu/pjrt_c_api_cpu_plugin.so
ours=$(BASIC_BENCH=jax cargo bench --quiet --bench step 2>/dev/null)
ours_newer=$(BASIC_BENCH=jax BASIC_PJRT_PLUGIN=$newer cargo bench --quiet --bench step 2>/dev/null)
jax=$(JAX_PLATFORMS=cpu .venv/bin/python benches/basic_jax.py --model tiny --steps 20; JAX_PLATFORMS=cpu .venv/bin/python benches/basic_jax.py --model small --steps 5)
echo "$ours"
echo "$ours_newer"
echo "$jax"
python3 - <<PY
import json
jax = {j["model"]: j for j in map(json.loads, """$jax""".splitlines())}
for plugin, text in [("xla-cpu-pjrt", """$ours"""), ("lammps-jax-pjrt-cpu", """$ours_newer""")]:
    for o in map(json.loads, text.splitlines()):
        m = o["model"]
        j = jax[m]
        print(f"{m} on {plugin}: step {o['step_s_median']*1e3:.1f} ms vs jax {j['step_s_median']*1e3:.1f} ms = {o['step_s_median']/j['step_s_median']:.2f}x; "
              f"compile {o['compile_s']:.2f} s vs {j['compile_s']:.2f} s = {o['compile_s']/j['compile_s']:.2f}x; "
              f"temp {o['temp_bytes']/2**20:.1f} MiB vs {j['temp_bytes']/2**20:.1f} MiB = {o['temp_bytes']/j['temp_bytes']:.2f}x")
PY
BASIC_BENCH=memory cargo bench --quiet --bench step 2>/dev/null
BASIC_BENCH=mesh cargo bench --quiet --bench step 2>/dev/null
# BASIC-L planned on a 256-device data × model mesh at its batch of 65,536 (compile only).
cargo build --release --quiet
./target/release/basic compile --model basic-l --mesh data=32,model=8 --partitioning data_model \
  --cpu-devices 256 --json 2>/dev/null | python3 -c 'import json,sys; d=json.load(sys.stdin); m=max(d["devices"], key=lambda x: x["peak_bytes"]); print(json.dumps({"section": "plan", "model": d["model"], "mesh": d["mesh"], "batch": d["batch"], "params": d["params"], "compile_s": round(d["compile_seconds"], 1), "devices": len(d["devices"]), **{k: m[k] for k in ("argument_bytes", "output_bytes", "temp_bytes", "peak_bytes")}}))'
