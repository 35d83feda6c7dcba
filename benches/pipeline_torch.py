"""The input pipeline a PyTorch user writes, on the photos of benches/photos.sh: PIL decoding and
torchvision's transforms to 224 px, on one thread and through a DataLoader with 1 and 2 workers.
One round of every rate; one JSON line per measurement (benches/pipeline.sh compares them with
basic's)."""

import io
import json
import sys
import tarfile
import time

import torch
import torchvision.transforms as T
from PIL import Image

SIZE = 224
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
SPAN = 1.5

EVAL = T.Compose([
    T.Resize(SIZE, interpolation=T.InterpolationMode.BILINEAR),
    T.CenterCrop(SIZE),
    T.ToTensor(),
    T.Normalize(MEAN, STD),
])
AUGMENT = T.Compose([
    T.RandomResizedCrop(SIZE, interpolation=T.InterpolationMode.BILINEAR),
    T.ToTensor(),
    T.Normalize(MEAN, STD),
])


def photos(folder):
    with tarfile.open(f"{folder}/train-00000.tar") as tar:
        return [tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".jpg")]


def load(data, transform):
    return transform(Image.open(io.BytesIO(data)).convert("RGB"))


class Photos(torch.utils.data.Dataset):
    def __init__(self, images, transform, repeat):
        self.images, self.transform, self.repeat = images, transform, repeat

    def __len__(self):
        return len(self.images) * self.repeat

    def __getitem__(self, i):
        return load(self.images[i % len(self.images)], self.transform)


def rate(images, transform):
    """Images per second of wall time and per second this thread ran."""
    t, cpu, n = time.perf_counter(), time.thread_time(), 0
    while time.perf_counter() - t < SPAN:
        for data in images:
            load(data, transform)
            n += 1
    return n / (time.perf_counter() - t), n / (time.thread_time() - cpu)


def loader_rate(images, transform, workers):
    ds = Photos(images, transform, 32)
    dl = torch.utils.data.DataLoader(ds, batch_size=32, shuffle=True, num_workers=workers,
                                     persistent_workers=True, prefetch_factor=2)
    it = iter(dl)
    next(it)  # the workers started and warm
    t, n = time.perf_counter(), 0
    while time.perf_counter() - t < SPAN:
        try:
            n += len(next(it))
        except StopIteration:
            it = iter(dl)
    return n / (time.perf_counter() - t), None


def line(what, threads, rates):
    wall, cpu = rates
    print(json.dumps({"impl": "pil", "what": what, "threads": threads, "images_per_s": round(wall, 2),
                      "images_per_cpu_s": cpu and round(cpu, 2)}), flush=True)


def main():
    torch.set_num_threads(1)
    images = photos(sys.argv[1] if len(sys.argv) > 1 else "runs/photos")
    line("decode", 1, rate(images, lambda img: img.load()))
    decoded = [Image.open(io.BytesIO(data)).convert("RGB") for data in images]
    t, cpu, n = time.perf_counter(), time.thread_time(), 0
    while time.perf_counter() - t < SPAN:
        for img in decoded:
            EVAL(img)
            n += 1
    line("resize+crop+normalise only", 1,
         (n / (time.perf_counter() - t), n / (time.thread_time() - cpu)))
    line("eval", 1, rate(images, EVAL))
    line("augment", 1, rate(images, AUGMENT))
    for what, transform in [("eval", EVAL), ("augment", AUGMENT)]:
        for workers in [1, 2]:
            line(f"loader {what}", workers, loader_rate(images, transform, workers))


if __name__ == "__main__":
    main()
