"""ViT-B/16 image-embedding throughput on this CPU, basic against open_clip on PyTorch, the same
batch and precision, interleaved rounds: basic's `cargo bench --bench embed`
(graphs/clip-vit-b16.toml, parameters on the device) and open_clip's `ViT-B-16-quickgelu`
(`encode_image` under `torch.inference_mode()`, all cores), each on random weights and images,
in f32 and in bf16 (basic: bf16 parameters, images and compute; PyTorch: the model and images
cast to bfloat16, which runs its matrix products on oneDNN). Prints each round and, per dtype,
the ratio of the medians (images per second, basic over open_clip).

Usage: .ref/bin/python benches/embed_throughput.py [--batch 8] [--rounds 3] [--runs 5]
                                                   [--dtypes f32,bf16]
"""
import argparse
import json
import os
import statistics
import subprocess
import time

import open_clip
import torch


def basic(batch, runs, dtype):
    env = dict(os.environ, BASIC_MODEL="clip-vit-b16", BASIC_BATCH=str(batch), BASIC_RUNS=str(runs),
               BASIC_DTYPE=dtype, TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run(["cargo", "bench", "--quiet", "--bench", "embed"], env=env, check=True,
                         capture_output=True, text=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]), dtype=dtype)


def torch_peer(models, batch, runs, dtype):
    model = models[dtype]
    x = torch.randn(batch, 3, 224, 224, dtype=torch.bfloat16 if dtype == "bf16" else torch.float32)
    times = []
    with torch.inference_mode():
        model.encode_image(x)
        for _ in range(runs):
            t = time.perf_counter()
            model.encode_image(x)
            times.append(time.perf_counter() - t)
    m = statistics.median(times)
    return {"impl": "open_clip", "model": "ViT-B-16-quickgelu", "dtype": dtype, "batch": batch,
            "batch_s_median": m,
            "images_per_s": batch / m, "torch": torch.__version__, "open_clip": open_clip.__version__}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dtypes", default="f32,bf16")
    a = ap.parse_args()
    dtypes = a.dtypes.split(",")
    torch.set_num_threads(os.cpu_count())
    f32 = open_clip.create_model("ViT-B-16-quickgelu").eval()
    models = {"f32": f32}
    if "bf16" in dtypes:
        models["bf16"] = open_clip.create_model("ViT-B-16-quickgelu").eval().to(torch.bfloat16)
    rows = []
    for _ in range(a.rounds):
        for d in dtypes:
            for r in (basic(a.batch, a.runs, d), torch_peer(models, a.batch, a.runs, d)):
                print(json.dumps(r), flush=True)
                rows.append(r)
    for d in dtypes:
        med = {k: statistics.median(r["images_per_s"] for r in rows
                                    if r["impl"] == k and r["dtype"] == d)
               for k in ("basic", "open_clip")}
        print(json.dumps({"dtype": d, "basic_images_per_s": round(med["basic"], 2),
                          "open_clip_images_per_s": round(med["open_clip"], 2),
                          "ratio": round(med["basic"] / med["open_clip"], 3)}))


if __name__ == "__main__":
    main()
