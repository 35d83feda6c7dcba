//! Text tower: token and position embeddings, pre-LN transformer blocks under a padding mask
//! and/or a causal mask (CLIP: causal only; SigLIP: neither), a final LayerNorm, then the
//! end-of-text token's output (the last real token, or CLIP's largest id), the first token's,
//! the last position's (SigLIP), or the mean over real tokens.

use crate::dtype::DType;
use crate::error::Result;
use crate::trace::Tensor;

use super::config::{TextConfig, TextPool};
use super::params::Init;
use super::scope::{Scope, Tower};
use super::transformer::{self, norm, TransformerConfig};

fn blocks(c: &TextConfig) -> TransformerConfig {
    TransformerConfig {
        width: c.width,
        depth: c.depth,
        heads: c.heads,
        mlp: c.mlp,
        act: c.act,
        eps: c.eps(),
    }
}

/// Which tokens are real (not `pad_id`): `tokens [B, L]` (s32) → a `[B, L]` predicate.
pub fn real_tokens(tokens: &Tensor, pad_id: i64) -> Result<Tensor> {
    tokens.ne(&tokens.builder().scalar(pad_id as f64, DType::S32)?)
}

/// The additive attention mask of a padded batch: 0 where a query may attend to a key, -1e9
/// elsewhere. `real [B, L]` (1.0 for real tokens, 0.0 for padding, in the compute dtype) masks
/// padded keys as `[B, 1, 1, L]`; `causal` also masks later keys, as `[B, 1, L, L]`.
pub fn mask_bias(real: &Tensor, causal: bool) -> Result<Tensor> {
    let (b, l) = (real.shape()[0], real.shape()[1]);
    // 0 where allowed, -1e9 where masked.
    let bias = |allowed: &Tensor| allowed.neg()?.add_scalar(1.0)?.mul_scalar(-1e9);
    if !causal {
        return bias(real)?.reshape(&[b, 1, 1, l]);
    }
    // The key mask [B, 1, 1, L] under the lower triangle [1, 1, L, L].
    let bd = real.builder();
    let allowed = real.reshape(&[b, 1, 1, l])?.broadcast_to(&[b, 1, l, l])?;
    let row = bd.iota(DType::S32, &[l, l], 0)?;
    let col = bd.iota(DType::S32, &[l, l], 1)?;
    let tri = col
        .le(&row)?
        .convert(real.dtype())?
        .reshape(&[1, 1, l, l])?;
    bias(&allowed.mul(&tri)?)
}

/// `tokens [B, L]` (s32, padded with `pad_id`) → features `[B, width]`; parameters under `s`,
/// the blocks scanned (`s/layers/...`) when the tower says so.
pub fn apply(tokens: &Tensor, s: &Scope, c: &TextConfig, t: &Tower) -> Result<Tensor> {
    let (b, l) = (tokens.shape()[0], tokens.shape()[1]);
    let bd = tokens.builder().clone();
    let emb = s.param(
        "token_embedding",
        &[c.vocab, c.width],
        Init::Normal(0.02),
        &["vocab", "embed"],
    )?;
    let pos = s.param(
        "pos",
        &[c.length, c.width],
        Init::Normal(0.01),
        &["length", "embed"],
    )?;
    let x = emb.take_rows(tokens)?.add(&pos)?;
    let x = x.constrain(&[Some("batch"), None, None])?;
    // Real tokens: 1.0, padding: 0.0, as [B, L].
    let real = real_tokens(tokens, c.pad_id)?;
    let realf = real.convert(t.dtype)?;
    let mask = if c.padding_mask {
        Some(mask_bias(&realf, c.causal)?)
    } else if c.causal {
        Some(mask_bias(&realf.ones_like()?, true)?)
    } else {
        None
    };
    let stack = if t.scan {
        transformer::scanned
    } else {
        transformer::stack
    };
    let x = stack(&x, s, &blocks(c), mask.as_ref(), t)?;
    let x = norm(&x, &s.sub("ln"), "embed", c.eps())?;
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
            let pick = pos.eq(&last.reshape(&[b, 1])?)?.convert(t.dtype)?;
            x.mul(&pick.reshape(&[b, l, 1])?)?.sum(&[1])
        }
        TextPool::Argmax => {
            // The first position holding the largest id: positions where the id is not the
            // row's maximum count as L, and the minimum is taken.
            let top = tokens
                .max_over(&[1])?
                .reshape(&[b, 1])?
                .broadcast_to(&[b, l])?;
            let pos = bd.iota(DType::S32, &[b, l], 1)?;
            let beyond = bd.full(l as f64, DType::S32, &[b, l])?;
            let first = Tensor::select(&tokens.eq(&top)?, &pos, &beyond)?.min_over(&[1])?;
            let pick = pos.eq(&first.reshape(&[b, 1])?.broadcast_to(&[b, l])?)?;
            x.mul(&pick.convert(t.dtype)?.reshape(&[b, l, 1])?)?
                .sum(&[1])
        }
        TextPool::Last => x.slice_axis(1, l - 1, l)?.reshape(&[b, c.width]),
        TextPool::Mean => {
            let n = realf.sum_keepdims(&[1])?.max_scalar(1.0)?;
            x.mul(&realf.reshape(&[b, l, 1])?)?.sum(&[1])?.div(&n)
        }
    }
}
