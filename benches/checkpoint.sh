#!/usr/bin/env bash
# Sharded checkpoint throughput, basic beside orbax: P processes' shares of one state
# (BASIC_CKPT_MB MiB each, default 64; P = BASIC_CKPT_PROCESSES, default 4) written and restored
# on local disk by both (orbax's save and restore of a jax array sharded over P CPU devices, in
# one process), then by basic to and from S3 (moto) and, restore only, GCS (fake-gcs-server),
# both on 127.0.0.1. ROUNDS rounds (default 3) alternate the two on local disk; the summary gives
# medians and basic's rate over orbax's. PY names a Python with jax and orbax-checkpoint, else
# .venv-ckpt is made; the emulators come from scripts/lib.sh's install_emulators.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
install_emulators
PY=${PY:-.venv-ckpt/bin/python}
if ! "$PY" -c "import jax, orbax.checkpoint" 2>/dev/null; then
  python3 -m venv .venv-ckpt
  .venv-ckpt/bin/pip install --quiet jax==0.10.2 orbax-checkpoint==0.12.8
  PY=.venv-ckpt/bin/python
fi
export BASIC_CKPT_MB=${BASIC_CKPT_MB:-64} BASIC_CKPT_PROCESSES=${BASIC_CKPT_PROCESSES:-4}
out=runs/checkpoint-bench.jsonl
mkdir -p runs
: > "$out"
cargo bench --quiet --bench checkpoint --no-run
for r in $(seq "${ROUNDS:-3}"); do
  cargo bench --quiet --bench checkpoint | tee -a "$out"
  "$PY" benches/checkpoint_orbax.py "$PWD/runs" | tee -a "$out"
done
"$PY" - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
med = {}
for r in rows:
    k = (r.get("peer", "basic"), r["store"], r["op"])
    med.setdefault(k, []).append(r["mib_s_per_process"])
print("who    store          op       MiB/s a process (median)")
for k, v in sorted(med.items()):
    print(f"{k[0]:6} {k[1]:14} {k[2]:8} {statistics.median(v):8.1f}")
for op in ["write", "restore"]:
    b, o = med.get(("basic", "local", op)), med.get(("orbax", "local", op))
    if b and o:
        print(f"local {op}: basic/orbax = {statistics.median(b) / statistics.median(o):.2f}x")
PY
