#!/usr/bin/env bash
# Input pipeline, basic vs PIL + torchvision side by side in one run: JPEG decoding and
# preprocessing of real photographs (benches/photos.sh) to the model's 224 px input — short side
# resized to 224 (bilinear), centre crop, normalised; and the training augmentation with a
# random-resized crop — on one thread and through the loaders (basic's on 1 and all cores, a torch
# DataLoader with 1 and 2 workers). ROUNDS rounds (default 5) interleave the two, so that a noisy
# stretch of the machine hits both; each figure is the median over rounds. Rates are images per
# second of wall time and, on one thread, per second that thread ran on a core.
# PY names a Python with pillow, torch, torchvision and scikit-image, else .venv-pipeline is made.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv-pipeline/bin/python}
if [ ! -x "$PY" ]; then
  python3 -m venv .venv-pipeline
  .venv-pipeline/bin/pip install --quiet pillow numpy scikit-image torch torchvision
  PY=.venv-pipeline/bin/python
fi
data=${PIPELINE_DATA:-runs/photos}
[ -f "$data/train-00000.tar" ] || PY=$PY benches/photos.sh "$data"
export PIPELINE_DATA=$data
cargo bench --quiet --bench pipeline --no-run 2>/dev/null
PIPELINE_WHAT=pixels cargo bench --quiet --bench pipeline 2>/dev/null
runs=""
for _ in $(seq "${ROUNDS:-5}"); do
  runs+=$(cargo bench --quiet --bench pipeline 2>/dev/null)$'\n'
  runs+=$("$PY" benches/pipeline_torch.py "$data")$'\n'
done
echo "$runs"
echo "$runs" | python3 benches/pipeline_summary.py
