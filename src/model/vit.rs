//! Vision Transformer image tower (Dosovitskiy et al., 2021): non-overlapping patches, linearly
//! embedded, a learned class token and position embeddings, pre-LN transformer blocks, a final
//! LayerNorm, then the class token's output or the mean over patches.

use crate::error::Result;
use crate::ir::RematPolicy;
use crate::trace::Tensor;

use super::config::{ImagePool, VitConfig};
use super::noise::Noise;
use super::params::{Init, ParamSpec, Params};
use super::transformer::{self, layer_norm, TransformerConfig};

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

/// Parameter specs; `scan`: the blocks stacked under `prefix/layers/` for one loop.
pub fn specs(prefix: &str, c: &VitConfig, scan: bool) -> Vec<ParamSpec> {
    let pd = c.patch * c.patch * c.channels;
    let d = c.width;
    let s = |n: &str| format!("{prefix}/{n}");
    let mut v = vec![
        ParamSpec::new(
            s("patch/kernel"),
            &[pd, d],
            Init::LecunUniform,
            &["patch", "embed"],
        ),
        ParamSpec::new(s("patch/bias"), &[d], Init::Zeros, &["embed"]),
        ParamSpec::new(s("cls"), &[d], Init::Normal(0.02), &["embed"]),
        ParamSpec::new(
            s("pos"),
            &[num_patches(c) + 1, d],
            Init::Normal(0.02),
            &["length", "embed"],
        ),
    ];
    if scan {
        v.extend(transformer::scanned_stack_specs(prefix, &blocks(c)));
    } else {
        v.extend(transformer::stack_specs(prefix, &blocks(c)));
    }
    v.push(ParamSpec::new(s("ln/scale"), &[d], Init::Ones, &["embed"]));
    v.push(ParamSpec::new(s("ln/bias"), &[d], Init::Zeros, &["embed"]));
    v
}

/// `images [B, H, W, C]` → features `[B, width]`.
pub fn apply(
    images: &Tensor,
    p: &Params,
    c: &VitConfig,
    remat: Option<&RematPolicy>,
    noise: Option<&Noise>,
    scan: bool,
) -> Result<Tensor> {
    let b = images.shape()[0];
    let (g, ps, ch) = (c.image_size / c.patch, c.patch, c.channels);
    // [B, g, p, g, p, C] → [B, g, g, p, p, C] → [B, g·g, p·p·C]
    let patches = images
        .reshape(&[b, g, ps, g, ps, ch])?
        .transpose(&[0, 1, 3, 2, 4, 5])?
        .reshape(&[b, g * g, ps * ps * ch])?;
    let x = transformer::dense(&patches, p.get("patch/kernel")?, p.get("patch/bias")?)?;
    let cls = p.get("cls")?.broadcast_in_dim(&[b, 1, c.width], &[2])?;
    let x = Tensor::concat(&[cls, x], 1)?.add(p.get("pos")?)?;
    let x = x.constrain(&[Some("batch"), None, None])?;
    let stack = if scan {
        transformer::scanned
    } else {
        transformer::stack
    };
    let x = stack(&x, p, &blocks(c), None, remat, noise)?;
    let x = layer_norm(&x, p.get("ln/scale")?, p.get("ln/bias")?, 1e-6)?;
    match c.pool {
        ImagePool::Cls => x.slice_axis(1, 0, 1)?.reshape(&[b, c.width]),
        ImagePool::Mean => x.slice_axis(1, 1, g * g + 1)?.mean(&[1]),
    }
}
