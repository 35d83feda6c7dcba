#!/usr/bin/env bash
# Compiling for TPUs and GPUs with none attached, by their own compilers (libtpu, the CUDA plugin):
#   peer    basic's step vs the JAX peer (benches/basic_jax.py) compiled for the same TPU topology,
#           side by side: per-device peak and generated-code ratios (tiny and small, batch 64, f32,
#           data parallel over tpu-v5e:2x2);
#   gpu     the ViT-B/16 BASIC step on h100:8 and h200:8, and the largest batch that fits each;
#   basicl  BASIC-L at batch 65,536 on a 256-chip TPU v4 slice (tpu-v4:4x8x8, 512 TensorCores);
#   plan    `basic plan` of small at batch 16,384 on tpu-v5e:2x2: wall time, compiles, space.
# SECTIONS="peer gpu" picks some (default: all). Prints one JSON line per measurement.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
install_target_plugins
[ -x .venv/bin/python ] || { python3 -m venv .venv && .venv/bin/pip install --quiet jax==0.10.2 numpy; }
cargo build --release --quiet
B=$PWD/target/release/basic
export TF_CPP_MIN_LOG_LEVEL=2
SECTIONS=${SECTIONS:-peer gpu basicl plan}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
has() { [[ " $SECTIONS " == *" $1 "* ]]; }

if has peer; then
  for model in tiny small; do
    XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu .venv/bin/python \
      benches/basic_jax.py --model "$model" --batch 64 --emit "$tmp/jax-$model.mlir" --devices 4
    $B run "$tmp/jax-$model.mlir" --target tpu-v5e:2x2 --json >"$tmp/jax-$model.json"
    $B compile --model "$model" --batch 64 --microbatches 1 --dtype f32 --mesh data=4 \
      --partitioning data_parallel --target tpu-v5e:2x2 --json >"$tmp/basic-$model.json"
    python3 - "$model" "$tmp/basic-$model.json" "$tmp/jax-$model.json" <<'PY'
import json, sys
model, b, j = sys.argv[1], json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
d = b["devices"][0]
print(json.dumps({"section": "peer", "model": model, "target": b["target"],
    "basic_peak_bytes": d["peak_bytes"], "jax_peak_bytes": j["peak_bytes"],
    "peak_ratio": round(d["peak_bytes"] / j["peak_bytes"], 3),
    "basic_code_bytes": d["generated_code_bytes"], "jax_code_bytes": j["generated_code_bytes"],
    "code_ratio": round(d["generated_code_bytes"] / j["generated_code_bytes"], 3),
    "basic_temp_bytes": d["temp_bytes"], "jax_temp_bytes": j["temp_bytes"],
    "basic_compile_s": round(b["compile_seconds"], 1), "jax_compile_s": round(j["compile_seconds"], 1)}))
PY
  done
fi

if has gpu; then
  for t in h100:8 h200:8; do
    $B compile --model vit-b16 --scan-layers --mesh data=8 --target "$t" --json >"$tmp/vit.json"
    # The largest global batch that fits, data parallel (the plan's doubling and bisection).
    $B plan --model vit-b16 --target "$t" --mesh data=8 --partitioning data_parallel \
      --cache "$tmp/cache-$t" --json 2>/dev/null >"$tmp/plan.json"
    python3 - "$t" "$tmp/vit.json" "$tmp/plan.json" <<'PY'
import json, sys
t, v, p = sys.argv[1], json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
d, best = v["devices"][0], p["best"] or {}
print(json.dumps({"section": "gpu", "target": t, "model": v["model"], "batch": v["batch"],
    "microbatches": v["microbatches"], "remat": v["remat"], "dtype": v["dtype"],
    "compile_s": round(v["compile_seconds"], 1), **{k: d[k] for k in ("argument_bytes", "output_bytes", "temp_bytes", "peak_bytes")},
    "hbm_bytes": v["hbm_bytes"], "step_bound_s": v["step_time_lower_bound_seconds"],
    "largest_batch": best.get("batch"), "largest_batch_choice": best,
    "plan_compiles": p["compiles"], "plan_s": round(p["seconds"], 1)}))
PY
  done
fi

if has basicl; then
  /usr/bin/time -f "%e %M" -o "$tmp/time" $B compile --model basic-l --mesh data=64,model=8 \
    --partitioning data_model --target tpu-v4:4x8x8 --json >"$tmp/l.json"
  python3 - "$tmp/l.json" "$tmp/time" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); wall, rss = open(sys.argv[2]).read().split()
x = d["devices"][0]
print(json.dumps({"section": "basicl", "target": d["target"], "mesh": d["mesh"], "batch": d["batch"],
    "microbatches": d["microbatches"], "params": d["params"], "hosts": d["hosts"],
    **{k: x[k] for k in ("argument_bytes", "output_bytes", "temp_bytes", "peak_bytes")},
    "hbm_bytes": d["hbm_bytes"], "fits": d["fits"], "generated_code_bytes": d["generated_code_bytes"],
    "compile_s": round(d["compile_seconds"], 1), "wall_s": float(wall), "max_rss_kb": int(rss)}))
PY
fi

if has plan; then
  for pass in cold warm; do
    $B plan --model small --target tpu-v5e:2x2 --batch 16384 --cache "$tmp/plan-cache" --json \
      2>/dev/null >"$tmp/p.json"
    python3 - "$pass" "$tmp/p.json" <<'PY'
import json, sys
p = json.load(open(sys.argv[2])); b = p["best"] or {}
print(json.dumps({"section": "plan", "pass": sys.argv[1], "model": p["model"], "target": p["target"],
    "seconds": round(p["seconds"], 1), "compiles": p["compiles"], "looked_at": len(p["tried"]),
    "space": p["space"], "best": {k: b.get(k) for k in ("batch", "microbatches", "remat", "mesh",
    "partitioning", "scan_layers", "donate", "peak_bytes")}}))
PY
  done
fi
