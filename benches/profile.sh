#!/usr/bin/env bash
# Where the BASIC step's time goes, by kind of work (benches/step_profile.py): basic's step program and
# the JAX peer's, for the tiny and small presets at batch 64 (f32, one micro-batch, no remat),
# each compiled by jaxlib's XLA CPU compiler and timed op by op by XLA's own profiler events.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || { python3 -m venv .venv && .venv/bin/pip install --quiet jax==0.10.2 numpy; }
cargo build --release --quiet
export JAX_PLATFORMS=cpu TF_CPP_MIN_LOG_LEVEL=2
dir=$(mktemp -d)
progs=()
for m in tiny small; do
  ./target/release/basic compile --model $m --batch 64 --microbatches 1 --remat none --emit "$dir/basic-$m.mlir" >/dev/null
  .venv/bin/python benches/basic_jax.py --model $m --emit "$dir/jax-$m.mlir"
  progs+=("basic-$m=$dir/basic-$m.mlir" "jax-$m=$dir/jax-$m.mlir")
done
out=$(.venv/bin/python benches/step_profile.py --steps "${STEPS:-5}" "${progs[@]}")
echo "$out"
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in sys.argv[1].splitlines() if l.strip()]
kinds = ["matrix products", "elementwise fusions", "reductions", "transposes and copies", "the loss", "optimizer update"]
print("| program | step | " + " | ".join(kinds) + " |")
print("|---|---|" + "---|" * len(kinds))
for r in rows:
    tot = sum(r["kinds"].values())
    cells = [f'{r["kinds"].get(k, 0)*1e3:.1f} ms ({100*r["kinds"].get(k, 0)/tot:.0f}%)' for k in kinds]
    print(f'| {r["program"]} | {r["step_s"]*1e3:.1f} ms | ' + " | ".join(cells) + " |")
PY
rm -rf "$dir"
