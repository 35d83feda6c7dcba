"""Dispatch overhead of JAX's jit on the same tiny program as benches/dispatch.rs:
numpy array in, x + 1 on the CPU device, numpy array out. Prints one JSON line."""
import json
import time

import jax
import numpy as np

BATCHES = 30
CALLS = 300

f = jax.jit(lambda x: x + np.float32(1.0))
x = np.full((8,), 0.5, dtype=np.float32)
for _ in range(CALLS):
    np.asarray(f(x))
per_call = []
for _ in range(BATCHES):
    t = time.perf_counter()
    for _ in range(CALLS):
        np.asarray(f(x))
    per_call.append((time.perf_counter() - t) / CALLS)
per_call.sort()
print(json.dumps({"impl": "jax", "version": jax.__version__,
                  "median_us": round(per_call[BATCHES // 2] * 1e6, 3),
                  "min_us": round(per_call[0] * 1e6, 3)}))
