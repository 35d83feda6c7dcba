#!/usr/bin/env bash
# Streaming throughput, basic's loader vs itself and vs webdataset + a PyTorch DataLoader: one
# pass over 16 shards of 64 real photographs (benches/photos.sh's, repeated under distinct keys;
# 1,024 JPEGs) to batches of 32 at 224 px, from local disk and from fake-gcs-server on
# 127.0.0.1 (basic through object_store, gs://; webdataset through curl, its http reader), each
# with 2 decoding workers. ROUNDS rounds (default 5) interleave the four, so that a noisy stretch
# of the shared machine hits all; figures are medians, ratios the median of each round's ratio.
# Per CPU-second counts every thread of the reader (basic: readers, storage runtime, decoders;
# torch: the main process, its DataLoader workers and curl), not the server.
# PY names a Python with pillow, scikit-image, torch, torchvision and webdataset, else
# .venv-pipeline is made; the emulator comes from scripts/lib.sh's install_emulators.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
install_emulators
PY=${PY:-.venv-pipeline/bin/python}
if ! "$PY" -c "import webdataset, torchvision, skimage" 2>/dev/null; then
  python3 -m venv .venv-pipeline
  .venv-pipeline/bin/pip install --quiet pillow numpy scikit-image torch==2.15.0 torchvision==0.29.2 webdataset==1.0.2
  PY=.venv-pipeline/bin/python
fi
[ -f runs/photos/train-00000.tar ] || PY=$PY benches/photos.sh runs/photos
data=runs/stream-photos
if [ ! -f "$data/sizes.json" ]; then
  mkdir -p "$data"
  "$PY" - "$data" <<'PY'
import io, json, sys, tarfile
out = sys.argv[1]
with tarfile.open("runs/photos/train-00000.tar") as t:
    members = {m.name: t.extractfile(m).read() for m in t.getmembers()}
keys = sorted({n.rsplit(".", 1)[0] for n in members})
sizes = {}
for s in range(16):
    name = f"train-{s:05d}.tar"
    with tarfile.open(f"{out}/{name}", "w", format=tarfile.GNU_FORMAT) as tar:
        for i in range(64):
            k = keys[(s * 64 + i) % len(keys)]
            for ext in ["jpg", "txt"]:
                payload = members[f"{k}.{ext}"]
                info = tarfile.TarInfo(f"{s:03d}{i:03d}-{k}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    sizes[name] = 64
json.dump(sizes, open(f"{out}/sizes.json", "w"))
PY
fi
port=$("$PY" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
gcs=$(find .emulators -name fake-gcs-server-linux-amd64 | head -1)
"$gcs" -scheme http -backend memory -host 127.0.0.1 -port "$port" -public-host "127.0.0.1:$port" \
  -log-level error >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/storage/v1/b" >/dev/null && break; sleep 0.1; done
curl -sf -X POST -d '{"name":"photos"}' "http://127.0.0.1:$port/storage/v1/b" >/dev/null
for f in "$data"/*; do
  curl -sf -X POST --data-binary "@$f" \
    "http://127.0.0.1:$port/upload/storage/v1/b/photos/o?uploadType=media&name=d/$(basename "$f")" >/dev/null
done
export STORAGE_EMULATOR_HOST="http://127.0.0.1:$port"
cargo bench --quiet --bench stream --no-run 2>/dev/null
local_urls=$(ls "$data"/train-*.tar | tr '\n' '|' | sed 's/|$//')
http_urls=$(for i in $(seq 0 15); do printf "pipe:curl -s http://127.0.0.1:%s/photos/d/train-%05d.tar|" "$port" "$i"; done | sed 's/|$//')
runs=""
for _ in $(seq "${ROUNDS:-5}"); do
  runs+=$(cargo bench --quiet --bench stream -- "$data" local 2 2>/dev/null)$'\n'
  runs+=$(cargo bench --quiet --bench stream -- "gs://photos/d/" gcs 2 2>/dev/null)$'\n'
  runs+=$("$PY" benches/stream_torch.py "$http_urls" gcs 2)$'\n'
  runs+=$("$PY" benches/stream_torch.py "$local_urls" local 2)$'\n'
done
echo "$runs"
echo "$runs" > runs/stream-rounds.jsonl
python3 - runs/stream-rounds.jsonl <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
def med(impl, source, key):
    v = [r[key] for r in rows if r["impl"] == impl and r["source"] == source]
    return statistics.median(v) if v else float("nan")
for impl in ["basic", "webdataset+torch"]:
    for source in ["local", "gcs"]:
        print(f"{impl:<17} {source:<5} {med(impl, source, 'images_per_s'):8.1f} images/s "
              f"{med(impl, source, 'images_per_cpu_s'):8.1f} per CPU-second")
def per_round(impl_a, src_a, impl_b, src_b, key):
    """The median over rounds of each round's ratio (the rounds interleave, so a ratio compares
    runs made moments apart)."""
    a = [r[key] for r in rows if r["impl"] == impl_a and r["source"] == src_a]
    b = [r[key] for r in rows if r["impl"] == impl_b and r["source"] == src_b]
    return statistics.median(x / y for x, y in zip(a, b))
print(f"basic gcs / basic local: images/s {per_round('basic', 'gcs', 'basic', 'local', 'images_per_s'):.2f}x, "
      f"per CPU-second {per_round('basic', 'gcs', 'basic', 'local', 'images_per_cpu_s'):.2f}x")
print(f"basic / webdataset+torch, both from gcs: per CPU-second {per_round('basic', 'gcs', 'webdataset+torch', 'gcs', 'images_per_cpu_s'):.2f}x, "
      f"images/s {per_round('basic', 'gcs', 'webdataset+torch', 'gcs', 'images_per_s'):.2f}x")
PY
