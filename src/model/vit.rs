//! Vision Transformer image tower (Dosovitskiy et al., 2021): non-overlapping patches, linearly
//! embedded, a learned class token and position embeddings, pre-LN transformer blocks, a final
//! LayerNorm, then the class token's output, the mean over patches, or an attention-pool head.
//! The options the published variants differ in are the config's: CLIP's bias-free patch
//! embedding, `ln_pre` and QuickGELU; SigLIP's missing class token and its MAP head (a learned
//! probe attending over the tokens, then a residual MLP).

use crate::error::Result;
use crate::trace::Tensor;

use super::config::{ImagePool, VitConfig};
use super::params::Init;
use super::scope::{Scope, Tower};
use super::transformer::{self, dense, linear, multi_head, norm, Attention, TransformerConfig};

fn blocks(c: &VitConfig) -> TransformerConfig {
    TransformerConfig {
        width: c.width,
        depth: c.depth,
        heads: c.heads,
        mlp: c.mlp,
        act: c.act,
        eps: c.layer_norm_eps,
    }
}

/// Number of patches per image.
pub fn num_patches(c: &VitConfig) -> i64 {
    (c.image_size / c.patch) * (c.image_size / c.patch)
}

/// `images [B, H, W, C]` → features `[B, width]`; parameters under `s`, the blocks scanned
/// (`s/layers/...`) when the tower says so.
pub fn apply(images: &Tensor, s: &Scope, c: &VitConfig, t: &Tower) -> Result<Tensor> {
    let b = images.shape()[0];
    let (g, ps, ch) = (c.image_size / c.patch, c.patch, c.channels);
    let d = c.width;
    // [B, g, p, g, p, C] → [B, g, g, p, p, C] → [B, g·g, p·p·C]
    let patches = images
        .reshape(&[b, g, ps, g, ps, ch])?
        .transpose(&[0, 1, 3, 2, 4, 5])?
        .reshape(&[b, g * g, ps * ps * ch])?;
    let x = if c.patch_bias {
        linear(
            &patches,
            &s.sub("patch"),
            d,
            Init::LecunUniform,
            ["patch", "embed"],
        )?
    } else {
        patches.matmul(&s.param(
            "patch/kernel",
            &[ps * ps * ch, d],
            Init::LecunUniform,
            &["patch", "embed"],
        )?)?
    };
    let tokens = num_patches(c) + i64::from(c.class_token);
    let x = if c.class_token {
        let cls = s
            .param("cls", &[d], Init::Normal(0.02), &["embed"])?
            .broadcast_in_dim(&[b, 1, d], &[2])?;
        Tensor::concat(&[cls, x], 1)?
    } else {
        x
    };
    let pos = s.param(
        "pos",
        &[tokens, d],
        Init::Normal(0.02),
        &["length", "embed"],
    )?;
    let x = x.add(&pos)?;
    let x = if c.ln_pre {
        norm(&x, &s.sub("ln_pre"), "embed", c.layer_norm_eps)?
    } else {
        x
    };
    let x = x.constrain(&[Some("batch"), None, None])?;
    let stack = if t.scan {
        transformer::scanned
    } else {
        transformer::stack
    };
    let x = stack(&x, s, &blocks(c), None, t)?;
    let x = norm(&x, &s.sub("ln"), "embed", c.layer_norm_eps)?;
    let first = i64::from(c.class_token);
    match c.pool {
        ImagePool::Cls => x.slice_axis(1, 0, 1)?.reshape(&[b, d]),
        ImagePool::Mean => x.slice_axis(1, first, tokens)?.mean(&[1]),
        ImagePool::Map => attention_pool(&x, &s.sub("head"), c),
    }
}

/// SigLIP's multi-head attention pooling: a learned probe attends over `x [B, L, D]` (queries
/// from the probe, keys and values from `x`, one fused `qkv` projection as in the blocks), then
/// `h + MLP(LN(h))`; `[B, D]`.
fn attention_pool(x: &Tensor, s: &Scope, c: &VitConfig) -> Result<Tensor> {
    let (b, l, d) = (x.shape()[0], x.shape()[1], c.width);
    let (heads, std) = (c.heads, Init::Normal(0.02));
    let dh = d / heads;
    let probe = s
        .param("probe", &[d], Init::Normal(0.02), &["embed"])?
        .broadcast_in_dim(&[b, 1, d], &[2])?;
    let attn = Attention::declare(&s.sub("attn"), d, d, heads, std.clone(), "embed")?;
    let (w, bias) = (&attn.qkv.kernel, &attn.qkv.bias);
    let split = |t: &Tensor, n: i64, l: i64| -> Result<Tensor> {
        t.reshape(&[b, l, n, heads, dh])?
            .transpose(&[2, 0, 3, 1, 4])
    };
    let q = dense(&probe, &w.slice_axis(1, 0, d)?, &bias.slice_axis(0, 0, d)?)?;
    let q = split(&q, 1, 1)?.reshape(&[b, heads, 1, dh])?;
    let kv = dense(
        x,
        &w.slice_axis(1, d, 3 * d)?,
        &bias.slice_axis(0, d, 3 * d)?,
    )?;
    let kv = split(&kv, 2, l)?;
    let part = |i: i64| kv.slice_axis(0, i, i + 1)?.reshape(&[b, heads, l, dh]);
    let h = attn
        .out
        .apply(&multi_head(&q, &part(0)?, &part(1)?, None)?)?;
    let m = norm(&h, &s.sub("ln"), "embed", c.layer_norm_eps)?;
    let m = linear(&m, &s.sub("mlp/in"), c.mlp, std.clone(), ["embed", "mlp"])?;
    let m = linear(
        &c.act.apply(&m)?,
        &s.sub("mlp/out"),
        d,
        std,
        ["mlp", "embed"],
    )?;
    h.add(&m)?.reshape(&[b, d])
}
