#!/usr/bin/env bash
# The training step of basic against the peers a user would pick, in one run: basic on each CPU
# plugin, the JAX peer (benches/basic_jax.py) and open_clip on PyTorch (benches/basic_torch.py),
# the `tiny` and `small` presets' tower sizes, batch 64, f32, AdamW, all cores. ROUNDS rounds
# (default 3) interleave every implementation, so that a noisy stretch of the machine hits all of
# them; each figure is the median over rounds of the per-run median step, and the ratios are
# basic's over each peer's.
#
# JAX goes into .venv, PyTorch and open_clip into .ref (scripts/ref-env.sh); tests need neither.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
install_cpu_plugins
[ -x .venv/bin/python ] || { python3 -m venv .venv && .venv/bin/pip install --quiet jax==0.10.2 numpy; }
[ -f .ref/READY ] || bash scripts/ref-env.sh
export TF_CPP_MIN_LOG_LEVEL=2
declare -A plugins=(
  [xla-cpu-pjrt]=.pjrt/xla-cpu-pjrt/xla_plugins/xla_cpu_pjrt/xla_cpu_pjrt.so
  [lammps-jax-pjrt-cpu]=.pjrt/lammps-jax-pjrt-cpu/lammps_jax_pjrt_cpu/pjrt_c_api_cpu_plugin.so
  [fastatomstruct-xla-cpu]=.pjrt/fastatomstruct-xla-cpu/fastatomstruct_xla_cpu/libpjrt_cpu.so
)
cargo bench --quiet --bench step --no-run 2>/dev/null
runs=""
for _ in $(seq "${ROUNDS:-3}"); do
  for name in "${!plugins[@]}"; do
    runs+=$(BASIC_BENCH=jax BASIC_PJRT_PLUGIN=$PWD/${plugins[$name]} cargo bench --quiet --bench step 2>/dev/null |
      sed "s/\"impl\": \"basic\"/\"impl\": \"basic\", \"plugin\": \"$name\"/")$'\n'
  done
  # basic with no plugin named: what `--backend cpu` picks.
  runs+=$(BASIC_BENCH=jax cargo bench --quiet --bench step 2>/dev/null |
    sed 's/"impl": "basic"/"impl": "basic", "plugin": "default"/')$'\n'
  for m in tiny small; do
    steps=$([ $m = tiny ] && echo 20 || echo 15)
    runs+=$(JAX_PLATFORMS=cpu .venv/bin/python benches/basic_jax.py --model $m --steps "$steps")$'\n'
    runs+=$(.ref/bin/python benches/basic_torch.py --model $m --steps "$steps")$'\n'
  done
done
echo "$runs"
python3 - "$runs" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in sys.argv[1].splitlines() if l.strip()]
def med(model, impl, plugin=None):
    v = [r["step_s_median"] for r in runs
         if r["impl"] == impl and r["model"] == model and r.get("plugin") == plugin]
    return statistics.median(v) if v else float("nan")
for m in ["tiny", "small"]:
    jax, torch = med(m, "jax"), med(m, "open_clip")
    print(f"{m}: JAX {jax*1e3:.1f} ms, open_clip {torch*1e3:.1f} ms")
    for plugin in ["default", "xla-cpu-pjrt", "lammps-jax-pjrt-cpu", "fastatomstruct-xla-cpu"]:
        b = med(m, "basic", plugin)
        print(f"  basic on {plugin}: {b*1e3:.1f} ms = {b/torch:.2f}x open_clip, {b/jax:.2f}x JAX")
PY
