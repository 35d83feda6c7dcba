"""open_clip on PyTorch as a peer of basic's training step: a CLIP model of the same tower sizes
as basic's `tiny` or `small` preset (graphs/*.toml: ViT on 28×28 images in 7×7 patches, a causal
text transformer of 16 tokens over a 1024-token vocabulary), batch 64, open_clip's `ClipLoss`,
`torch.optim.AdamW`, f32, on the CPU with all of its cores. Times forward + loss + backward +
optimizer step; prints one JSON line with the median step.

Differences from basic's model that do not change the work by more than a rounding: open_clip's
patch embedding reads 3 channels (basic's presets read 1), its ViT pools the class token (`small`
pools the mean over patches), and its GELU is the exact one (basic's presets use the tanh form).

Usage: .ref/bin/python benches/basic_torch.py [--model tiny|small] [--batch N] [--steps K]
"""
import argparse
import json
import os
import statistics
import time

import open_clip
import torch
from open_clip.loss import ClipLoss

# (width, depth, heads, mlp) per tower, and embed_dim, as in graphs/tiny.toml and small.toml.
MODELS = {
    "tiny": {"image": (64, 2, 4, 128), "text": (64, 2, 4, 128), "embed": 64},
    "small": {"image": (256, 6, 8, 1024), "text": (256, 6, 8, 1024), "embed": 256},
}
IMAGE_SIZE, PATCH, VOCAB, LENGTH = 28, 7, 1024, 16


def build(name):
    m = MODELS[name]
    (iw, idepth, iheads, imlp), (tw, tdepth, theads, tmlp) = m["image"], m["text"]
    vision = {"image_size": IMAGE_SIZE, "patch_size": PATCH, "width": iw, "layers": idepth,
              "head_width": iw // iheads, "mlp_ratio": imlp / iw}
    text = {"context_length": LENGTH, "vocab_size": VOCAB, "width": tw, "heads": theads,
            "layers": tdepth, "mlp_ratio": tmlp / tw}
    return open_clip.CLIP(embed_dim=m["embed"], vision_cfg=vision, text_cfg=text)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="small", choices=sorted(MODELS))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(a.threads)
    model = build(a.model)
    model.train()
    loss_fn = ClipLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    images = torch.randn(a.batch, 3, IMAGE_SIZE, IMAGE_SIZE)
    tokens = torch.randint(1, VOCAB, (a.batch, LENGTH))

    def step():
        img, txt, scale = model(images, tokens)[:3]
        loss = loss_fn(img, txt, scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()

    for _ in range(3):  # warm-up, as basic's and JAX's: allocations and first-call dispatch
        step()
    times = []
    for _ in range(a.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    print(json.dumps({
        "impl": "open_clip", "model": a.model, "batch": a.batch, "threads": a.threads,
        "step_s_median": round(statistics.median(times), 6),
        "params": sum(p.numel() for p in model.parameters()),
        "torch": torch.__version__, "open_clip": open_clip.__version__,
    }))


if __name__ == "__main__":
    main()
