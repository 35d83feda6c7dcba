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
# ROUNDS rounds (default 3) interleave the three, so that a noisy stretch of the machine hits all
# of them; each figure is the median over rounds of the per-run median step.
newer=$PWD/.pjrt/lammps-jax-pjrt-cpu/lammps_jax_pjrt_cpu/pjrt_c_api_cpu_plugin.so
runs=""
for _ in $(seq "${ROUNDS:-3}"); do
  runs+=$(BASIC_BENCH=jax cargo bench --quiet --bench step 2>/dev/null | sed 's/"impl": "basic"/"impl": "basic", "plugin": "xla-cpu-pjrt"/')$'\n'
  runs+=$(BASIC_BENCH=jax BASIC_PJRT_PLUGIN=$newer cargo bench --quiet --bench step 2>/dev/null | sed 's/"impl": "basic"/"impl": "basic", "plugin": "lammps-jax-pjrt-cpu"/')$'\n'
  runs+=$(JAX_PLATFORMS=cpu .venv/bin/python benches/basic_jax.py --model tiny --steps 20; JAX_PLATFORMS=cpu .venv/bin/python benches/basic_jax.py --model small --steps 15)$'\n'
done
echo "$runs"
python3 - <<PY
import json, statistics
runs = [json.loads(l) for l in """$runs""".splitlines() if l.strip()]
def med(impl, model, key, plugin=None):
    v = [r[key] for r in runs if r["impl"] == impl and r["model"] == model and r.get("plugin") == plugin]
    return statistics.median(v), len(v)
for plugin in ["xla-cpu-pjrt", "lammps-jax-pjrt-cpu"]:
    for m in ["tiny", "small"]:
        (o, n), (j, _) = med("basic", m, "step_s_median", plugin), med("jax", m, "step_s_median")
        (oc, _), (jc, _) = med("basic", m, "compile_s", plugin), med("jax", m, "compile_s")
        (ot, _), (jt, _) = med("basic", m, "temp_bytes", plugin), med("jax", m, "temp_bytes")
        print(f"{m} on {plugin} ({n} rounds): step {o*1e3:.1f} ms vs jax {j*1e3:.1f} ms = {o/j:.2f}x; "
              f"compile {oc:.2f} s vs {jc:.2f} s = {oc/jc:.2f}x; temp {ot/2**20:.1f} MiB vs {jt/2**20:.1f} MiB = {ot/jt:.2f}x")
PY
BASIC_BENCH=memory cargo bench --quiet --bench step 2>/dev/null
BASIC_BENCH=mesh cargo bench --quiet --bench step 2>/dev/null
# BASIC-L planned on a 256-device data × model mesh at its batch of 65,536 (compile only).
cargo build --release --quiet
./target/release/basic compile --model basic-l --mesh data=32,model=8 --partitioning data_model \
  --cpu-devices 256 --json 2>/dev/null | python3 -c 'import json,sys; d=json.load(sys.stdin); m=max(d["devices"], key=lambda x: x["peak_bytes"]); print(json.dumps({"section": "plan", "model": d["model"], "mesh": d["mesh"], "batch": d["batch"], "params": d["params"], "compile_s": round(d["compile_seconds"], 1), "devices": len(d["devices"]), **{k: m[k] for k in ("argument_bytes", "output_bytes", "temp_bytes", "peak_bytes")}}))'
