#!/usr/bin/env bash
# Checkpoint interop, measured: (1) a CLIP-architecture model (graphs/tiny-clip.toml) trained by
# basic on Fashion-MNIST, exported with `basic export --format hf`, then evaluated zero-shot by
# transformers' own model code (benches/clip_zero_shot.py) and by `basic eval zero-shot` on the
# exported folder: the two top-1 figures. (2) ViT-B/16 image-embedding throughput, basic vs
# open_clip on PyTorch, the same batch, interleaved rounds (benches/embed_throughput.py).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
install_cpu_plugins
install_fashion_mnist
[ -f .ref/READY ] || bash scripts/ref-env.sh
cargo build --release --quiet
BASIC=target/release/basic
DATA=runs/fashion-mnist-data
RUN=runs/fashion-mnist-tiny-clip
OUT=runs/fashion-mnist-tiny-clip-hf
TOK=runs/clip-tokenizer.json
[ -f "$DATA/test-00000.tar" ] || $BASIC data fashion-mnist --out "$DATA"
gunzip -c tests/fixtures/clip/tokenizers/clip-tokenizer.json.gz > "$TOK"
rm -rf "$RUN" "$OUT"
$BASIC train --model tiny-clip --tokenizer "$TOK" --data "$DATA" --out "$RUN" \
  --steps "${STEPS:-1500}" --batch 128 --eval-every 0 --checkpoint-every "${STEPS:-1500}" --quiet
$BASIC export --format hf "$RUN" "$OUT"
.ref/bin/python benches/clip_zero_shot.py "$OUT" "$DATA"
$BASIC eval zero-shot --model "hf:$OUT" --data "$DATA" --classes "$DATA/classes.txt" \
  --templates "$DATA/templates.txt" --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(json.dumps({"impl": "basic", "top1": d["top1"], "images": d["images"]}))'
.ref/bin/python benches/embed_throughput.py --rounds "${ROUNDS:-3}"
