#!/usr/bin/env bash
# Creates the reference environment .ref/ (a Python venv with pinned torch, transformers, open_clip,
# ...) used only to regenerate test fixtures (tests/fixtures/clip/, src/eval/metadata/) and to run
# comparison benchmarks. The Rust tests never need it: the fixtures they read are committed.
#
# Usage: scripts/ref-env.sh        (idempotent: does nothing once .ref/READY exists)
# Then:  .ref/bin/python scripts/fixtures/make_clip_fixtures.py
#
# torch is used on the CPU only, but the registry's Linux torch wheel imports only with its CUDA
# runtime dependency packages present, so it is installed normally (about 3 GB, 10+ minutes).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VENV=.ref

if [ -f "$VENV/READY" ]; then
  echo "$VENV ready"
  exit 0
fi

PINS=(
  torch==2.15.0
  torchvision==0.29.2
  pillow==13.0.0
  transformers==5.24.0  # 5.25 needs kernels>=0.19.1, which needs Python >= 3.12
  open_clip_torch==3.3.0
  safetensors==0.8.0
  numpy==2.4.6
  scikit-image==0.26.0
  sentencepiece==0.2.3
  tokenizers==0.23.3
)

PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$VENV/bin/python" -m pip install --disable-pip-version-check "${PINS[@]}"

# READY only once everything imports.
"$VENV/bin/python" -c "import torch, torchvision, PIL, transformers, open_clip, skimage, safetensors, sentencepiece, tokenizers, numpy
print('torch', torch.__version__, 'transformers', transformers.__version__, 'open_clip', open_clip.__version__)"
"$VENV/bin/python" -m pip freeze --disable-pip-version-check > "$VENV/freeze.txt"
touch "$VENV/READY"
echo "$VENV ready"
