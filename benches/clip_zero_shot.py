"""Zero-shot top-1 of an exported CLIP folder by transformers' own model code: loads DIR with
`transformers.CLIPModel.from_pretrained` and its `tokenizer.json` with the tokenizers library,
embeds the Fashion-MNIST test images (the IDX files; grey repeated to 3 channels, normalised
with the mean and std of the folder's `preprocessor_config.json`) and each class's prompts, and classifies by the renormalised
mean prompt embedding. Prints one JSON line.

Usage: .ref/bin/python benches/clip_zero_shot.py DIR DATA [--limit N]
(DATA: the folder `basic data fashion-mnist` wrote: classes.txt, templates.txt.)
"""
import argparse
import gzip
import json
import os

import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import CLIPModel

FASHION = "/usr/share/datasets/fashion-mnist"


def idx(path):
    raw = gzip.open(path).read()
    n = int.from_bytes(raw[4:8], "big")
    if raw[2:4] == b"\x08\x03":
        return np.frombuffer(raw[16:], np.uint8).reshape(n, 28, 28)
    return np.frombuffer(raw[8:], np.uint8)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("data")
    ap.add_argument("--limit", type=int, default=10000)
    a = ap.parse_args()
    torch.set_num_threads(os.cpu_count())
    model = CLIPModel.from_pretrained(a.dir).eval()
    pre = json.load(open(os.path.join(a.dir, "preprocessor_config.json")))
    mean = np.array(pre["image_mean"], np.float32)[None, :, None, None]
    std = np.array(pre["image_std"], np.float32)[None, :, None, None]
    length = model.config.text_config.max_position_embeddings
    tok = Tokenizer.from_file(os.path.join(a.dir, "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=length)
    classes = [l.strip() for l in open(os.path.join(a.data, "classes.txt")) if l.strip()]
    templates = [l.strip() for l in open(os.path.join(a.data, "templates.txt")) if l.strip()]

    def article(c):
        return "an" if c[0].lower() in "aeiou" else "a"

    with torch.no_grad():
        heads = []
        for c in classes:
            prompts = [t.replace("{a}", article(c)).replace("{}", c) for t in templates]
            ids = [e.ids + [0] * (length - len(e.ids)) for e in tok.encode_batch(prompts)]
            e = model.get_text_features(input_ids=torch.tensor(ids))
            e = getattr(e, "pooler_output", e)
            e = torch.nn.functional.normalize(e, dim=-1).mean(0)
            heads.append(torch.nn.functional.normalize(e, dim=0))
        heads = torch.stack(heads)
        images = idx(os.path.join(FASHION, "t10k-images-idx3-ubyte.gz"))[: a.limit]
        labels = idx(os.path.join(FASHION, "t10k-labels-idx1-ubyte.gz"))[: a.limit]
        correct = 0
        for i in range(0, len(images), 500):
            x = np.repeat(images[i:i + 500, None].astype(np.float32) / 255.0, 3, axis=1)
            x = torch.tensor((x - mean) / std)
            f = model.get_image_features(pixel_values=x)
            f = getattr(f, "pooler_output", f)
            f = torch.nn.functional.normalize(f, dim=-1)
            correct += int((f @ heads.T).argmax(1).eq(torch.tensor(labels[i:i + 500])).sum())
    print(json.dumps({"impl": "transformers", "top1": correct / len(images), "images": len(images)}))


if __name__ == "__main__":
    main()
