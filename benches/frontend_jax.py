"""JAX peer of benches/frontend.rs: the same pre-LN transformer stack (batch 8, length 64,
width 256, 4 heads, MLP 1024, f32), loss = mean(stack(x)^2), jit(value_and_grad).lower().compile()
timed from a fresh trace; unrolled and lax.scan over stacked layers. One JSON line each."""
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

B, L, D, H, M = 8, 64, 256, 4, 1024


def layer_norm(x, scale, bias, eps=1e-6):
    mu = jnp.mean(x, -1, keepdims=True)
    var = jnp.mean((x - mu) ** 2, -1, keepdims=True)
    return (x - mu) * jax.lax.rsqrt(var + eps) * scale + bias


def block(x, p):
    h = layer_norm(x, p["ln1/scale"], p["ln1/bias"])
    qkv = (h @ p["attn/qkv/kernel"] + p["attn/qkv/bias"]).reshape(B, L, 3, H, D // H)
    qkv = qkv.transpose(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    s = jax.nn.softmax(q @ k.swapaxes(-1, -2) / np.sqrt(D // H), axis=-1)
    a = (s @ v).transpose(0, 2, 1, 3).reshape(B, L, D) @ p["attn/out/kernel"] + p["attn/out/bias"]
    x = x + a
    h = layer_norm(x, p["ln2/scale"], p["ln2/bias"])
    h = jax.nn.gelu(h @ p["mlp/in/kernel"] + p["mlp/in/bias"], approximate=True)
    return x + h @ p["mlp/out/kernel"] + p["mlp/out/bias"]


SHAPES = {"ln1/scale": (D,), "ln1/bias": (D,), "attn/qkv/kernel": (D, 3 * D), "attn/qkv/bias": (3 * D,),
          "attn/out/kernel": (D, D), "attn/out/bias": (D,), "ln2/scale": (D,), "ln2/bias": (D,),
          "mlp/in/kernel": (D, M), "mlp/in/bias": (M,), "mlp/out/kernel": (M, D), "mlp/out/bias": (D,)}


def measure(depth, scan):
    x = jax.ShapeDtypeStruct((B, L, D), jnp.float32)
    if scan:
        params = {k: jax.ShapeDtypeStruct((depth,) + s, jnp.float32) for k, s in SHAPES.items()}

        def loss(params, x):
            y, _ = jax.lax.scan(lambda c, p: (block(c, p), None), x, params)
            return jnp.mean(y ** 2)
    else:
        params = [{k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in SHAPES.items()} for _ in range(depth)]

        def loss(params, x):
            for p in params:
                x = block(x, p)
            return jnp.mean(x ** 2)

    f = jax.jit(jax.value_and_grad(loss))
    t0 = time.perf_counter()
    lowered = f.lower(params, x)
    t1 = time.perf_counter()
    lowered.compile()
    t2 = time.perf_counter()
    print(json.dumps({"impl": "jax", "version": jax.__version__, "depth": depth, "scan": scan,
                      "build_emit_s": round(t1 - t0, 4), "compile_s": round(t2 - t1, 4),
                      "total_s": round(t2 - t0, 4)}), flush=True)


measure(1, False)  # warm up
for depth, scan in [(12, False), (4, False), (4, True), (12, True), (48, False), (48, True)]:
    measure(depth, scan)
