#!/usr/bin/env bash
# Memory of streaming: peak resident set (/usr/bin/time's maximum RSS) of `basic train` over the
# same 100 steps (tiny model, batch 128) on Fashion-MNIST's 60,000 training pairs (6 shards) and
# on ten times as many shards (600,000 pairs: the 6 shards hard-linked under 60 names). ROUNDS
# rounds (default 3) interleave the two; BASELINE=BINARY measures another basic too (one that
# reads the whole dataset into memory grows with it).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
install_cpu_plugins
install_fashion_mnist
cargo build --release --quiet
BASIC=target/release/basic
small=runs/mem-60k
big=runs/mem-600k
[ -f "$small/sizes.json" ] || $BASIC data fashion-mnist --out "$small" >/dev/null
if [ ! -f "$big/sizes.json" ]; then
  mkdir -p "$big"
  for i in $(seq 0 59); do
    ln -f "$small/train-$(printf %05d $((i % 6))).tar" "$big/train-$(printf %05d "$i").tar"
  done
  cp "$small/captions.txt" "$big/"
  python3 -c "import json; json.dump({f'train-{i:05d}.tar': 10000 for i in range(60)}, open('$big/sizes.json', 'w'))"
fi
peak() { # BINARY DATA: peak RSS in MiB
  rm -rf runs/mem-run
  /usr/bin/time -f "%M" -o runs/mem-rss "$1" train --model tiny --data "$2" --out runs/mem-run \
    --steps 100 --batch 128 --eval-every 0 --checkpoint-every 0 --quiet >/dev/null 2>&1
  echo $(( $(cat runs/mem-rss) / 1024 ))
}
for r in $(seq "${ROUNDS:-3}"); do
  for b in $BASIC ${BASELINE:-}; do
    s=$(peak "$b" "$small"); g=$(peak "$b" "$big")
    echo "{\"binary\": \"$b\", \"round\": $r, \"rss_mib_60k\": $s, \"rss_mib_600k\": $g, \"ratio\": $(python3 -c "print(round($g / $s, 3))")}"
  done
done
