#!/usr/bin/env bash
# The largest contrastive batches, compile-only on the real compilers (no device attached): the
# streamed step (`basic compile --streamed`: one micro-batch's images on the devices at a time,
# the tiled loss over the global batch's embeddings) at growing global batches, per-device peak
# against the batch, and the step-time bound's examples/s against the smallest batch's.
#   vitl    clip-vit-l14 (bf16, AdamW, scanned, donated) on h100:8, micro-batches of 8,192;
#   vitb    vit-b16 on h100:8, micro-batches of 16,384;
#   basicl  basic-l on tpu-v4:4x8x8 (data=64, model=8), micro-batches of 1,024 (the preset's; about 12 minutes
#           a point: four programs of three minutes each).
# SECTIONS="vitl vitb" picks some (default: vitl vitb); BATCHES="..." overrides a section's list.
# Prints one JSON line per point.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
install_target_plugins
cargo build --release --quiet
B=$PWD/target/release/basic
export TF_CPP_MIN_LOG_LEVEL=2
SECTIONS=${SECTIONS:-vitl vitb}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
has() { [[ " $SECTIONS " == *" $1 "* ]]; }

# point MODEL TARGET MESH MICRO BLOCK BATCH [FLAGS...]
point() {
  local model=$1 target=$2 mesh=$3 micro=$4 block=$5 batch=$6
  shift 6
  local out="$tmp/$model-$batch.json"
  /usr/bin/time -f "%e %M" -o "$tmp/time" $B compile --model "$model" --batch "$batch" \
    --microbatches $((batch / micro)) --loss-block "$block" --mesh "$mesh" --target "$target" \
    --streamed --json "$@" >"$out"
  python3 - "$out" "$tmp/time" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); wall, rss = open(sys.argv[2]).read().split()
progs = {p["name"]: {"peak": p["peak_bytes"], "beside": p["resident_beside_bytes"]} for p in d["programs"]}
print(json.dumps({"model": d["model"], "target": d["target"], "mesh": d["mesh"], "batch": d["batch"],
    "micro_batch": d["micro_batch"], "loss_block": d["loss_block"], "peak_bytes": d["peak_bytes"],
    "hbm_bytes": d["hbm_bytes"], "fits": d["fits"], "programs": progs,
    "step_bound_s": d["step_time_lower_bound_seconds"],
    "examples_per_s_bound": d["examples_per_second_upper_bound"],
    "host_bytes_per_micro_batch": d["host_bytes_per_micro_batch"],
    "host_to_device_bytes_per_step": d["host_to_device_bytes_per_step"],
    "wall_s": float(wall), "max_rss_kb": int(rss)}))
PY
}

if has vitl; then
  for n in ${BATCHES:-32768 65536 1048576 4194304 16777216 25165824 33554432}; do
    point clip-vit-l14 h100:8 data=8 8192 16384 "$n" --dtype bf16 --scan-layers --donate || true
  done
fi

if has vitb; then
  for n in ${BATCHES:-32768 1048576 16777216 33554432 67108864}; do
    point vit-b16 h100:8 data=8 16384 16384 "$n" --scan-layers --donate || true
  done
fi

if has basicl; then
  for n in ${BATCHES:-65536 16777216 20971520}; do
    point basic-l tpu-v4:4x8x8 data=64,model=8 1024 16384 "$n" --partitioning data_model || true
  done
fi
