#!/usr/bin/env bash
# The input-pipeline bench's data: scikit-image's colour sample photographs (its package ships
# them) re-encoded as baseline JPEG, quality 90, 4:2:0, at full size, into one dataset shard in
# the project's layout: OUT/train-00000.tar with KEY.jpg + KEY.txt per photo; and each JPEG as
# libjpeg-turbo (through PIL) decodes it, OUT/reference/KEY.rgb, to compare decoders against.
# Usage: benches/photos.sh [OUT]   (default runs/photos; PY names a Python with pillow and
# scikit-image, else .venv-pipeline is made)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/photos}
PY=${PY:-.venv-pipeline/bin/python}
if [ ! -x "$PY" ]; then
  python3 -m venv .venv-pipeline
  .venv-pipeline/bin/pip install --quiet pillow numpy scikit-image torch torchvision
  PY=.venv-pipeline/bin/python
fi
mkdir -p "$out"
"$PY" - "$out" <<'PY'
import io, os, sys, tarfile
import skimage
from PIL import Image

out = sys.argv[1]
data = os.path.join(os.path.dirname(skimage.__file__), "data")
photos = {
    "astronaut.png": "a photo of an astronaut.",
    "chelsea.png": "a photo of a cat.",
    "coffee.png": "a photo of a cup of coffee.",
    "hubble_deep_field.jpg": "a photo of galaxies.",
    "ihc.png": "a micrograph of stained tissue.",
    "motorcycle_left.png": "a photo of a motorcycle.",
    "motorcycle_right.png": "a photo of a motorcycle.",
    "retina.jpg": "a photo of a retina.",
    "rocket.jpg": "a photo of a rocket.",
}
os.makedirs(os.path.join(out, "reference"), exist_ok=True)
tmp = os.path.join(out, "train-00000.tar.partial")
with tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tar:
    for name, caption in photos.items():
        img = Image.open(os.path.join(data, name)).convert("RGB")
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90, subsampling="4:2:0")
        key = name.rsplit(".", 1)[0]
        with open(os.path.join(out, "reference", key + ".rgb"), "wb") as f:
            f.write(Image.open(io.BytesIO(buf.getvalue())).convert("RGB").tobytes())
        for member, payload in [(key + ".jpg", buf.getvalue()), (key + ".txt", caption.encode())]:
            info = tarfile.TarInfo(member)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        print(f"{key}: {img.width}x{img.height}, {len(buf.getvalue())} bytes")
os.replace(tmp, os.path.join(out, "train-00000.tar"))
PY
