//! Text tower: token and position embeddings, pre-LN transformer blocks under a padding mask
//! (and a causal mask, as in CLIP), a final LayerNorm, then the end-of-text token's output, the
//! first token's, or the mean over real tokens.

use crate::dtype::DType;
use crate::error::Result;
use crate::ir::RematPolicy;
use crate::trace::Tensor;

use super::config::{TextConfig, TextPool};
use super::noise::Noise;
use super::params::{Init, ParamSpec, Params};
use super::transformer::{self, layer_norm, TransformerConfig};

fn blocks(c: &TextConfig) -> TransformerConfig {
    TransformerConfig {
        width: c.width,
        depth: c.depth,
        heads: c.heads,
        mlp: c.mlp,
    }
}

/// Parameter specs; `scan`: the blocks stacked under `prefix/layers/` for one loop.
pub fn specs(prefix: &str, c: &TextConfig, scan: bool) -> Vec<ParamSpec> {
    let s = |n: &str| format!("{prefix}/{n}");
    let mut v = vec![
        ParamSpec::new(
            s("token_embedding"),
            &[c.vocab, c.width],
            Init::Normal(0.02),
            &["vocab", "embed"],
        ),
        ParamSpec::new(
            s("pos"),
            &[c.length, c.width],
            Init::Normal(0.01),
            &["length", "embed"],
        ),
    ];
    if scan {
        v.extend(transformer::scanned_stack_specs(prefix, &blocks(c)));
    } else {
        v.extend(transformer::stack_specs(prefix, &blocks(c)));
    }
    v.push(ParamSpec::new(
        s("ln/scale"),
        &[c.width],
        Init::Ones,
        &["embed"],
    ));
    v.push(ParamSpec::new(
        s("ln/bias"),
        &[c.width],
        Init::Zeros,
        &["embed"],
    ));
    v
}

/// `tokens [B, L]` (s32, padded with `pad_id`) → features `[B, width]`.
pub fn apply(
    tokens: &Tensor,
    p: &Params,
    c: &TextConfig,
    dtype: DType,
    remat: Option<&RematPolicy>,
    noise: Option<&Noise>,
    scan: bool,
) -> Result<Tensor> {
    let (b, l) = (tokens.shape()[0], tokens.shape()[1]);
    let bd = tokens.builder().clone();
    let x = p
        .get("token_embedding")?
        .take_rows(tokens)?
        .add(p.get("pos")?)?;
    let x = x.constrain(&[Some("batch"), None, None])?;
    // Real tokens: 1.0, padding: 0.0, as [B, L].
    let real = tokens.ne(&bd.scalar(c.pad_id as f64, DType::S32)?)?;
    let realf = real.convert(dtype)?;
    // Key mask [B, 1, 1, L] and, for causal models, the lower triangle [1, 1, L, L].
    let neg = -1e9;
    let key_ok = realf.reshape(&[b, 1, 1, l])?;
    let mut allowed = key_ok.broadcast_to(&[b, 1, l, l])?;
    if c.causal {
        let row = bd.iota(DType::S32, &[l, l], 0)?;
        let col = bd.iota(DType::S32, &[l, l], 1)?;
        let tri = col.le(&row)?.convert(dtype)?.reshape(&[1, 1, l, l])?;
        allowed = allowed.mul(&tri)?;
    }
    // 0 where allowed, -1e9 where masked.
    let mask_bias = allowed.neg()?.add_scalar(1.0)?.mul_scalar(neg)?;
    let stack = if scan {
        transformer::scanned
    } else {
        transformer::stack
    };
    let x = stack(&x, p, &blocks(c), Some(&mask_bias), remat, noise)?;
    let x = layer_norm(&x, p.get("ln/scale")?, p.get("ln/bias")?, 1e-6)?;
    match c.pool {
        TextPool::First => x.slice_axis(1, 0, 1)?.reshape(&[b, c.width]),
        TextPool::Eot => {
            // One-hot of the last real position: count of real tokens - 1.
            let last = real
                .convert(DType::S32)?
                .sum(&[1])?
                .sub_scalar(1.0)?
                .max_scalar(0.0)?;
            let pos = bd.iota(DType::S32, &[b, l], 1)?;
            let pick = pos.eq(&last.reshape(&[b, 1])?)?.convert(dtype)?;
            x.mul(&pick.reshape(&[b, l, 1])?)?.sum(&[1])
        }
        TextPool::Mean => {
            let n = realf.sum_keepdims(&[1])?.max_scalar(1.0)?;
            x.mul(&realf.reshape(&[b, l, 1])?)?.sum(&[1])?.div(&n)
        }
    }
}
