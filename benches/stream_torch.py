"""What a PyTorch user writes to stream webdataset shards: webdataset 1.0 + a DataLoader with
2 workers, PIL decoding and torchvision's eval transform to 224 px, batches of 32, one pass over
the shards given (`|`-separated: local paths, or http URLs that webdataset reads through curl, as it reads any
http(s) object). One JSON line: images per second of wall time and per CPU-second of this
process and its DataLoader workers (benches/stream.sh compares it with basic's loader)."""

import json
import resource
import sys
import time

import torch
import torchvision.transforms as T
import webdataset as wds

SIZE = 224
EVAL = T.Compose([
    T.Resize(SIZE, interpolation=T.InterpolationMode.BILINEAR),
    T.CenterCrop(SIZE),
    T.ToTensor(),
    T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
])


def cpu_s():
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main():
    urls, label = sys.argv[1].split("|"), sys.argv[2]
    workers = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    torch.set_num_threads(1)
    ds = (wds.WebDataset(urls, shardshuffle=False, empty_check=False)
          .decode("pil").to_tuple("jpg", "txt").map_tuple(EVAL, lambda t: t))
    dl = torch.utils.data.DataLoader(ds, batch_size=32, num_workers=workers)
    t, c, n = time.perf_counter(), cpu_s(), 0
    for images, _ in dl:
        n += len(images)
    wall = time.perf_counter() - t
    # The workers have exited: their CPU time is in RUSAGE_CHILDREN (with curl's).
    cpu = cpu_s() - c
    print(json.dumps({"impl": "webdataset+torch", "source": label, "workers": workers, "images": n,
                      "images_per_s": round(n / wall, 1), "images_per_cpu_s": round(n / cpu, 1)}),
          flush=True)


if __name__ == "__main__":
    main()
