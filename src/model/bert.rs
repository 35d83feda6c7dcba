//! A BERT-family text encoder (Devlin et al., 2019) that reads Hugging Face BERT checkpoints by
//! their own tensor names: token + position + token-type embeddings, LayerNorm, post-LN encoder
//! layers (`x ← LN(x + Attn(x))`, `x ← LN(x + W₂·GELU(W₁x))`, exact GELU), and mean pooling over
//! the attention mask (sentence-transformers' pooling). Dense weights are stored `[out, in]`, as
//! in the checkpoints.

use crate::error::{shape_err, Result};
use crate::ir::DotDims;
use crate::trace::Tensor;

use super::config::TextConfig;
use super::params::Init;
use super::scope::{Scope, Tower};
use super::text;
use super::transformer::multi_head;

/// The standard deviation of the weights' and embeddings' initialisation.
const STD: f64 = 0.02;

/// Sizes BERT needs beyond the text config.
pub fn max_positions(c: &TextConfig) -> i64 {
    c.max_positions.max(c.length)
}

/// `x·Wᵀ + b` with `W [out, in]` and `b [out]` declared as `{name}.weight` and `{name}.bias`
/// (logical axes `axes` and `axes[0]`); the input width is that of `x`.
fn linear(x: &Tensor, s: &Scope, name: &str, dout: i64, axes: [&str; 2]) -> Result<Tensor> {
    let din = x.shape().last().copied().unwrap_or(1);
    let w = s.param(
        &format!("{name}.weight"),
        &[dout, din],
        Init::Normal(STD),
        &axes,
    )?;
    let b = s.param(&format!("{name}.bias"), &[dout], Init::Zeros, &[axes[0]])?;
    x.dot_general(
        &w,
        DotDims {
            lhs_contract: vec![x.rank() - 1],
            rhs_contract: vec![1],
            ..DotDims::default()
        },
    )?
    .add(&b)
}

/// LayerNorm with `{name}.weight` and `{name}.bias`.
fn ln(x: &Tensor, s: &Scope, name: &str, eps: f64) -> Result<Tensor> {
    let d = x.shape().last().copied().unwrap_or(1);
    let w = s.param(&format!("{name}.weight"), &[d], Init::Ones, &["embed"])?;
    let b = s.param(&format!("{name}.bias"), &[d], Init::Zeros, &["embed"])?;
    x.layer_norm(eps)?.mul(&w)?.add(&b)
}

/// `tokens [B, L]` → mean-pooled sentence embeddings `[B, width]` (not normalised); parameters
/// under `s` (e.g. `text/bert`), named as in HF checkpoints. The layers are never scanned.
pub fn apply(tokens: &Tensor, s: &Scope, c: &TextConfig, t: &Tower) -> Result<Tensor> {
    let (b, l) = (tokens.shape()[0], tokens.shape()[1]);
    if l > max_positions(c) {
        return shape_err(
            "bert",
            format!("{l} tokens exceed the {} positions", max_positions(c)),
        );
    }
    let (d, h, m) = (c.width, c.heads, c.mlp);
    let dh = d / h;
    let eps = c.eps();
    let word = s.param(
        "embeddings.word_embeddings.weight",
        &[c.vocab, d],
        Init::Normal(STD),
        &["vocab", "embed"],
    )?;
    let pos = s
        .param(
            "embeddings.position_embeddings.weight",
            &[max_positions(c), d],
            Init::Normal(STD),
            &["length", "embed"],
        )?
        .slice_axis(0, 0, l)?;
    let typ = s
        .param(
            "embeddings.token_type_embeddings.weight",
            &[2, d],
            Init::Normal(STD),
            &["types", "embed"],
        )?
        .slice_axis(0, 0, 1)?;
    let x = word.take_rows(tokens)?.add(&pos)?.add(&typ)?;
    let mut x = ln(&x, s, "embeddings.LayerNorm", eps)?.constrain(&[Some("batch"), None, None])?;
    let real = text::real_tokens(tokens, c.pad_id)?.convert(t.dtype)?;
    let mask = text::mask_bias(&real, false)?;
    for i in 0..c.depth {
        // Dropout (and stochastic depth) on each sublayer's output before its residual sum, as
        // BERT's hidden dropout; layer `i` draws from the key folded with 100 + i.
        let n = t.fold(100 + i as u64)?;
        let branch = |t: Tensor, salt: u64| -> Result<Tensor> {
            match &n {
                Some(n) => n.branch(&t, salt),
                None => Ok(t),
            }
        };
        let name = |n: &str| format!("encoder.layer.{i}.{n}");
        let layer = |x: &Tensor| -> Result<Tensor> {
            let heads = |n: &str| -> Result<Tensor> {
                linear(
                    x,
                    s,
                    &name(&format!("attention.self.{n}")),
                    d,
                    ["heads", "embed"],
                )?
                .reshape(&[b, l, h, dh])?
                .transpose(&[0, 2, 1, 3])
            };
            let (q, k, v) = (heads("query")?, heads("key")?, heads("value")?);
            let a = multi_head(&q, &k, &v, Some(&mask))?;
            let a = linear(
                &a,
                s,
                &name("attention.output.dense"),
                d,
                ["embed", "heads"],
            )?;
            let x = ln(
                &x.add(&branch(a, 1)?)?,
                s,
                &name("attention.output.LayerNorm"),
                eps,
            )?;
            let f =
                linear(&x, s, &name("intermediate.dense"), m, ["mlp", "embed"])?.gelu_exact()?;
            let f = linear(&f, s, &name("output.dense"), d, ["embed", "mlp"])?;
            ln(&x.add(&branch(f, 2)?)?, s, &name("output.LayerNorm"), eps)
        };
        x = tokens.builder().checkpoint(t.remat, || layer(&x))?;
    }
    let n = real.sum_keepdims(&[1])?.max_scalar(1e-9)?;
    x.mul(&real.reshape(&[b, l, 1])?)?.sum(&[1])?.div(&n)
}

/// Maps a HF checkpoint's tensor names onto the model's (`prefix/NAME`). Tensors the encoder does
/// not use (the pooler, `position_ids`) are dropped; everything else must match the model's parameter specs.
pub fn from_checkpoint(
    prefix: &str,
    file: std::collections::BTreeMap<String, crate::array::HostArray>,
) -> std::collections::BTreeMap<String, crate::array::HostArray> {
    file.into_iter()
        .filter(|(k, _)| !k.starts_with("pooler.") && k != "embeddings.position_ids")
        .map(|(k, v)| {
            let k = k.strip_prefix("bert.").unwrap_or(&k).to_string();
            (format!("{prefix}/{k}"), v)
        })
        .collect()
}
