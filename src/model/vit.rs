//! Vision Transformer image tower (Dosovitskiy et al., 2021): non-overlapping patches, linearly
//! embedded, a learned class token and position embeddings, pre-LN transformer blocks, a final
//! LayerNorm, then the class token's output or the mean over patches.

use crate::error::Result;
use crate::trace::Tensor;

use super::config::{ImagePool, VitConfig};
use super::params::Init;
use super::scope::{Scope, Tower};
use super::transformer::{self, linear, norm, TransformerConfig};

fn blocks(c: &VitConfig) -> TransformerConfig {
    TransformerConfig {
        width: c.width,
        depth: c.depth,
        heads: c.heads,
        mlp: c.mlp,
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
    let x = linear(
        &patches,
        &s.sub("patch"),
        d,
        Init::LecunUniform,
        ["patch", "embed"],
    )?;
    let cls = s
        .param("cls", &[d], Init::Normal(0.02), &["embed"])?
        .broadcast_in_dim(&[b, 1, d], &[2])?;
    let pos = s.param(
        "pos",
        &[num_patches(c) + 1, d],
        Init::Normal(0.02),
        &["length", "embed"],
    )?;
    let x = Tensor::concat(&[cls, x], 1)?.add(&pos)?;
    let x = x.constrain(&[Some("batch"), None, None])?;
    let stack = if t.scan {
        transformer::scanned
    } else {
        transformer::stack
    };
    let x = stack(&x, s, &blocks(c), None, t)?;
    let x = norm(&x, &s.sub("ln"), "embed", 1e-6)?;
    match c.pool {
        ImagePool::Cls => x.slice_axis(1, 0, 1)?.reshape(&[b, d]),
        ImagePool::Mean => x.slice_axis(1, 1, g * g + 1)?.mean(&[1]),
    }
}
