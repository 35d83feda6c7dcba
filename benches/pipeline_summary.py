"""Medians and ratios of benches/pipeline.sh's rounds: JSON lines on standard input (other lines
are skipped)."""

import json
import math
import statistics
import sys

runs = []
for l in sys.stdin:
    try:
        r = json.loads(l)
    except ValueError:
        continue
    if isinstance(r, dict) and "impl" in r:
        runs.append(r)


def values(impl, what, threads, key):
    return [r[key] for r in runs if r["impl"] == impl and r["what"] == what
            and r["threads"] == threads and r.get(key) is not None and not math.isnan(r[key])]


def med(impl, what, threads, key="images_per_s"):
    v = values(impl, what, threads, key)
    return statistics.median(v) if v else float("nan")


def best(impl, what, threads):
    return max(values(impl, what, threads, "images_per_s"), default=float("nan"))


n = len(values("basic", "eval", 1, "images_per_s"))
cores = max(r["threads"] for r in runs if r["impl"] == "basic")
print(f"medians over {n} rounds, 224 px, images/s: wall, and per CPU-second of the thread")
for what in ["decode jpeg-decoder", "decode jpeg-decoder dct-scaled", "decode zune-jpeg",
             "resize+crop+normalise only", "eval previous", "eval", "augment previous", "augment"]:
    print(f"  basic {what:<32} {med('basic', what, 1):8.1f} {med('basic', what, 1, 'images_per_cpu_s'):8.1f}")
for what in ["decode", "resize+crop+normalise only", "eval", "augment"]:
    print(f"  pil   {what:<32} {med('pil', what, 1):8.1f} {med('pil', what, 1, 'images_per_cpu_s'):8.1f}")
for what in ["eval", "augment"]:
    b, p = med("basic", what, 1, "images_per_cpu_s"), med("pil", what, 1, "images_per_cpu_s")
    prev = med("basic", what + " previous", 1, "images_per_cpu_s")
    print(f"{what}: basic / PIL+torchvision per core {b / p:.2f}x (previous basic {prev / p:.2f}x)")
    for label, f in [("median", med), ("best round", best)]:
        l1, ln = f("basic", f"loader {what}", 1), f("basic", f"loader {what}", cores)
        t1, t2 = f("pil", f"loader {what}", 1), f("pil", f"loader {what}", 2)
        print(f"  loader {what} ({label}): basic {l1:.1f} -> {ln:.1f} images/s on 1 -> {cores} workers "
              f"({ln / l1:.2f}x); DataLoader {t1:.1f} -> {t2:.1f} on 1 -> 2 workers ({t2 / t1:.2f}x); "
              f"basic / DataLoader at {cores}: {ln / t2:.2f}x")
