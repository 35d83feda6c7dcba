"""JAX peer of basic's training step: the same BASIC/CLIP dual encoder and AdamW step as the Rust
`tiny` preset (graphs/tiny.toml, f32, one micro-batch), or a wider `small` variant. Times trace +
lower + compile, the median compiled step, and reads XLA's memory figures; prints one JSON line.
Math as in src/model/{transformer,vit,text,basic}.rs and src/train/{optim,step}.rs. Buffers are
not donated unless --donate is given (basic does not alias inputs to outputs).

Usage: JAX_PLATFORMS=cpu .venv/bin/python benches/basic_jax.py [--model tiny|small] [--batch N]
       [--steps K] [--donate]
"""
import argparse
import json
import math
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

# Tower sizes: (width, depth, heads, mlp) for the image and the text tower, and embed_dim.
MODELS = {
    "tiny": {"image": (64, 2, 4, 128), "text": (64, 2, 4, 128), "embed": 64},
    "small": {"image": (256, 6, 8, 1024), "text": (256, 6, 8, 1024), "embed": 256},
}
# Shared by both models (tiny.toml).
IMAGE_SIZE, CHANNELS, PATCH = 28, 1, 7
VOCAB, LENGTH, PAD_ID = 1024, 16, 0
TAU_INIT, TAU_MIN = 0.07, 0.01
LR, WARMUP, TOTAL, WEIGHT_DECAY, CLIP = 1e-3, 20, 600, 0.05, 1.0
BETA1, BETA2, EPS = 0.9, 0.999, 1e-8
LN_EPS, L2_EPS, MASK_NEG = 1e-6, 1e-12, -1e9


# ---------------------------------------------------------------- parameters

def param_specs(cfg):
    """Name -> (shape, init) in the Rust spec order; init is 'zeros', 'ones', ('normal', std),
    'lecun' (uniform in +-sqrt(3/fan_in)) or ('const', value)."""
    specs = {}

    def stack(prefix, d, depth, m):
        block = [("ln1/scale", (d,), "ones"), ("ln1/bias", (d,), "zeros"),
                 ("attn/qkv/kernel", (d, 3 * d), ("normal", 0.02)), ("attn/qkv/bias", (3 * d,), "zeros"),
                 ("attn/out/kernel", (d, d), ("normal", 0.02)), ("attn/out/bias", (d,), "zeros"),
                 ("ln2/scale", (d,), "ones"), ("ln2/bias", (d,), "zeros"),
                 ("mlp/in/kernel", (d, m), ("normal", 0.02)), ("mlp/in/bias", (m,), "zeros"),
                 ("mlp/out/kernel", (m, d), ("normal", 0.02)), ("mlp/out/bias", (d,), "zeros")]
        for i in range(depth):
            for name, shape, init in block:
                specs[f"{prefix}/blocks/{i}/{name}"] = (shape, init)
        specs[f"{prefix}/ln/scale"] = ((d,), "ones")
        specs[f"{prefix}/ln/bias"] = ((d,), "zeros")

    iw, idepth, _, imlp = cfg["image"]
    grid = IMAGE_SIZE // PATCH
    specs.update({"image/patch/kernel": ((PATCH * PATCH * CHANNELS, iw), "lecun"),
                  "image/patch/bias": ((iw,), "zeros"), "image/cls": ((iw,), ("normal", 0.02)),
                  "image/pos": ((grid * grid + 1, iw), ("normal", 0.02))})
    stack("image", iw, idepth, imlp)
    specs["image/proj/kernel"] = ((iw, cfg["embed"]), "lecun")
    tw, tdepth, _, tmlp = cfg["text"]
    specs["text/token_embedding"] = ((VOCAB, tw), ("normal", 0.02))
    specs["text/pos"] = ((LENGTH, tw), ("normal", 0.01))
    stack("text", tw, tdepth, tmlp)
    specs["text/proj/kernel"] = ((tw, cfg["embed"]), "lecun")
    specs["logit_scale"] = ((), ("const", math.log(1.0 / TAU_INIT)))
    return specs


def init_params(specs, seed=0):
    """Random initial values (numpy, f32). Values only need to be plausible for timing."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, (shape, init) in specs.items():
        if init == "zeros":
            v = np.zeros(shape)
        elif init == "ones":
            v = np.ones(shape)
        elif init == "lecun":
            lim = math.sqrt(3.0 / max(1, int(np.prod(shape[:-1]))))
            v = rng.uniform(-lim, lim, shape)
        elif init[0] == "normal":
            v = init[1] * rng.standard_normal(shape)
        else:
            v = np.full(shape, init[1])
        params[name] = jnp.asarray(v, jnp.float32)
    return params


def decays(name, shape):
    """Decoupled weight decay applies to rank >= 2 parameters only (never to the logit scale)."""
    return len(shape) >= 2 and name != "logit_scale"


# ---------------------------------------------------------------- model

def layer_norm(x, scale, bias):
    mu = jnp.mean(x, -1, keepdims=True)
    xc = x - mu
    var = jnp.mean(xc * xc, -1, keepdims=True)
    return xc * jax.lax.rsqrt(var + LN_EPS) * scale + bias


def gelu_tanh(x):
    c = math.sqrt(2.0 / math.pi)
    return 0.5 * x * (1.0 + jnp.tanh(c * (x + 0.044715 * x ** 3)))


def attention(x, p, heads, mask_bias):
    """Multi-head self-attention on x [B, L, D]; mask_bias broadcasts to [B, H, L, L]."""
    b, l, d = x.shape
    dh = d // heads
    qkv = (x @ p["attn/qkv/kernel"] + p["attn/qkv/bias"]).reshape(b, l, 3, heads, dh)
    q, k, v = jnp.transpose(qkv, (2, 0, 3, 1, 4))  # each [B, H, L, dh]
    scores = (q @ jnp.swapaxes(k, -1, -2)) * (1.0 / math.sqrt(dh))
    if mask_bias is not None:
        scores = scores + mask_bias
    weights = jax.nn.softmax(scores, axis=-1)
    out = jnp.transpose(weights @ v, (0, 2, 1, 3)).reshape(b, l, d)
    return out @ p["attn/out/kernel"] + p["attn/out/bias"]


def transformer(x, params, prefix, depth, heads, mask_bias):
    """A stack of pre-LN blocks, unrolled (as basic emits it with remat = none)."""
    for i in range(depth):
        s = f"{prefix}/blocks/{i}/"
        p = {k[len(s):]: v for k, v in params.items() if k.startswith(s)}
        x = x + attention(layer_norm(x, p["ln1/scale"], p["ln1/bias"]), p, heads, mask_bias)
        h = layer_norm(x, p["ln2/scale"], p["ln2/bias"])
        h = gelu_tanh(h @ p["mlp/in/kernel"] + p["mlp/in/bias"])
        x = x + h @ p["mlp/out/kernel"] + p["mlp/out/bias"]
    return layer_norm(x, params[f"{prefix}/ln/scale"], params[f"{prefix}/ln/bias"])


def l2_normalize(x):
    ss = jnp.sum(x * x, -1, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(ss, L2_EPS * L2_EPS))


def embed_images(params, images, cfg):
    """images [B, H, W, C] -> normalised embeddings [B, E]."""
    width, depth, heads, _ = cfg["image"]
    b, g = images.shape[0], IMAGE_SIZE // PATCH
    patches = images.reshape(b, g, PATCH, g, PATCH, CHANNELS).transpose(0, 1, 3, 2, 4, 5)
    x = patches.reshape(b, g * g, PATCH * PATCH * CHANNELS) @ params["image/patch/kernel"]
    x = x + params["image/patch/bias"]
    cls = jnp.broadcast_to(params["image/cls"], (b, 1, width))
    x = jnp.concatenate([cls, x], axis=1) + params["image/pos"]
    x = transformer(x, params, "image", depth, heads, None)
    feats = jnp.mean(x[:, 1:], axis=1)  # mean over patch tokens, class token left out
    return l2_normalize(feats @ params["image/proj/kernel"])


def embed_texts(params, tokens, cfg):
    """tokens [B, L] int32 padded with PAD_ID -> normalised embeddings [B, E]."""
    width, depth, heads, _ = cfg["text"]
    b, l = tokens.shape
    x = params["text/token_embedding"][tokens] + params["text/pos"]
    real = tokens != PAD_ID
    # Allowed (key is real and not in the future): bias 0; otherwise -1e9.
    allowed = jnp.broadcast_to(real.astype(jnp.float32).reshape(b, 1, 1, l), (b, 1, l, l))
    causal = (jnp.arange(l)[None, :] <= jnp.arange(l)[:, None]).astype(jnp.float32)
    allowed = allowed * causal.reshape(1, 1, l, l)
    mask_bias = (1.0 - allowed) * MASK_NEG
    x = transformer(x, params, "text", depth, heads, mask_bias)
    # End-of-text pooling: one-hot at (number of real tokens - 1), as basic computes it.
    last = jnp.maximum(jnp.sum(real.astype(jnp.int32), axis=1) - 1, 0)
    pick = (jnp.arange(l)[None, :] == last[:, None]).astype(jnp.float32)
    feats = jnp.sum(x * pick[:, :, None], axis=1)
    return l2_normalize(feats @ params["text/proj/kernel"])


def loss_fn(params, images, tokens, cfg):
    img = embed_images(params, images, cfg)
    txt = embed_texts(params, tokens, cfg)
    scale = jnp.minimum(jnp.exp(params["logit_scale"]), 1.0 / TAU_MIN)
    logits = (img @ txt.T) * scale
    # Mean cross-entropy of matching pair i to i, in both directions.
    ce_i2t = -jnp.mean(jnp.diagonal(jax.nn.log_softmax(logits, axis=-1)))
    ce_t2i = -jnp.mean(jnp.diagonal(jax.nn.log_softmax(logits.T, axis=-1)))
    return 0.5 * (ce_i2t + ce_t2i)


# ---------------------------------------------------------------- optimizer and step

def learning_rate(stepf):
    """Linear warm-up to the peak ((step + 1) / warmup), then cosine decay to 0 at TOTAL."""
    warm = jnp.minimum((stepf + 1.0) / WARMUP, 1.0)
    frac = jnp.clip((stepf - WARMUP) / (TOTAL - WARMUP), 0.0, 1.0)
    return warm * 0.5 * (1.0 + jnp.cos(math.pi * frac)) * LR


def make_train_step(cfg):
    def train_step(params, opt_state, step, images, tokens):
        loss, grads = jax.value_and_grad(loss_fn)(params, images, tokens, cfg)
        stepf = step.astype(jnp.float32)
        lr = learning_rate(stepf)
        norm = jnp.sqrt(sum(jnp.sum(g * g) for g in grads.values()))
        clip = jnp.minimum(CLIP / jnp.maximum(norm, 1e-12), 1.0)
        count = stepf + 1.0
        c1 = 1.0 - jnp.exp(count * math.log(BETA1))  # bias corrections 1 - beta^t
        c2 = 1.0 - jnp.exp(count * math.log(BETA2))
        new_params, new_state = {}, {}
        for name, p in params.items():
            g = grads[name] * clip
            m = BETA1 * opt_state[f"opt/m/{name}"] + (1.0 - BETA1) * g
            v = BETA2 * opt_state[f"opt/v/{name}"] + (1.0 - BETA2) * g * g
            upd = (m / c1) / (jnp.sqrt(v / c2) + EPS)
            if decays(name, p.shape):
                upd = upd + WEIGHT_DECAY * p
            new_params[name] = p - lr * upd
            new_state[f"opt/m/{name}"], new_state[f"opt/v/{name}"] = m, v
        return new_params, new_state, loss

    return train_step


def make_batch(batch, seed=1):
    """Random images and captions of random lengths 1..LENGTH, padded with PAD_ID."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, IMAGE_SIZE, IMAGE_SIZE, CHANNELS)).astype(np.float32)
    tokens = rng.integers(1, VOCAB, (batch, LENGTH), dtype=np.int32)
    lengths = rng.integers(1, LENGTH + 1, batch)
    tokens[np.arange(LENGTH)[None, :] >= lengths[:, None]] = PAD_ID
    return jnp.asarray(images), jnp.asarray(tokens)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="tiny")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--donate", action="store_true", help="donate params and state (basic does not)")
    ap.add_argument("--emit", metavar="FILE",
                    help="write the lowered StableHLO of the step here and stop (nothing compiles or runs)")
    ap.add_argument("--devices", type=int, default=1,
                    help="with --emit: split the batch over this many devices, replicate the rest "
                         "(as basic's data_parallel preset); needs that many JAX devices")
    a = ap.parse_args()
    cfg = MODELS[a.model]
    specs = param_specs(cfg)
    params = init_params(specs)
    state = {f"opt/{slot}/{k}": jnp.zeros_like(v) for slot in ("m", "v") for k, v in params.items()}
    images, tokens = make_batch(a.batch)
    step0 = np.int32(0)

    if a.emit:
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        mesh = Mesh(np.array(jax.devices()[: a.devices]), ("data",))
        rep, batch = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
        jitted = jax.jit(make_train_step(cfg), donate_argnums=(0, 1) if a.donate else (),
                         in_shardings=(rep, rep, rep, batch, batch), out_shardings=(rep, rep, rep))
        with open(a.emit, "w") as f:
            f.write(jitted.lower(params, state, step0, images, tokens).as_text())
        return

    jitted = jax.jit(make_train_step(cfg), donate_argnums=(0, 1) if a.donate else ())
    t0 = time.perf_counter()
    lowered = jitted.lower(params, state, step0, images, tokens)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()

    times = []
    for i in range(3 + a.steps):  # 3 warm-up steps, then the timed ones
        t = time.perf_counter()
        params, state, loss = compiled(params, state, np.int32(i), images, tokens)
        jax.block_until_ready((params, state, loss))
        if i >= 3:
            times.append(time.perf_counter() - t)
    if not np.isfinite(float(loss)):
        raise SystemExit(f"non-finite loss {float(loss)}")

    try:
        mem = compiled.memory_analysis()
    except Exception:  # not every backend reports it
        mem = None

    def field(name):
        return None if mem is None else int(getattr(mem, name, -1))

    print(json.dumps({
        "impl": "jax", "version": jax.__version__, "model": a.model, "batch": a.batch,
        "params": int(sum(int(np.prod(s)) for s, _ in specs.values())),
        "lower_s": round(t1 - t0, 4), "compile_s": round(t2 - t0, 4),
        "step_s_median": round(statistics.median(times), 6), "steps": a.steps,
        "loss": round(float(loss), 5), "temp_bytes": field("temp_size_in_bytes"),
        "argument_bytes": field("argument_size_in_bytes"),
        "output_bytes": field("output_size_in_bytes"), "alias_bytes": field("alias_size_in_bytes"),
        "backend": jax.default_backend(),
    }), flush=True)


if __name__ == "__main__":
    main()
