//! A BERT-family text encoder (Devlin et al., 2019) that reads Hugging Face BERT checkpoints by
//! their own tensor names: token + position + token-type embeddings, LayerNorm, post-LN encoder
//! layers (`x ← LN(x + Attn(x))`, `x ← LN(x + W₂·GELU(W₁x))`, exact GELU), and mean pooling over
//! the attention mask (sentence-transformers' pooling). Dense weights are stored `[out, in]`, as
//! in the checkpoints.

use crate::dtype::DType;
use crate::error::{shape_err, Result};
use crate::ir::{DotDims, RematPolicy};
use crate::trace::Tensor;

use super::config::TextConfig;
use super::noise::Noise;
use super::params::{Init, ParamSpec, Params};

/// Sizes BERT needs beyond the text config.
pub fn max_positions(c: &TextConfig) -> i64 {
    c.max_positions.max(c.length)
}

/// Parameter specs under `prefix` (e.g. `text/bert`), named as in HF checkpoints.
pub fn specs(prefix: &str, c: &TextConfig) -> Vec<ParamSpec> {
    let (d, m) = (c.width, c.mlp);
    let s = |n: &str| format!("{prefix}/{n}");
    let std = 0.02;
    let mut v = vec![
        ParamSpec::new(
            s("embeddings.word_embeddings.weight"),
            &[c.vocab, d],
            Init::Normal(std),
            &["vocab", "embed"],
        ),
        ParamSpec::new(
            s("embeddings.position_embeddings.weight"),
            &[max_positions(c), d],
            Init::Normal(std),
            &["length", "embed"],
        ),
        ParamSpec::new(
            s("embeddings.token_type_embeddings.weight"),
            &[2, d],
            Init::Normal(std),
            &["types", "embed"],
        ),
        ParamSpec::new(
            s("embeddings.LayerNorm.weight"),
            &[d],
            Init::Ones,
            &["embed"],
        ),
        ParamSpec::new(
            s("embeddings.LayerNorm.bias"),
            &[d],
            Init::Zeros,
            &["embed"],
        ),
    ];
    for i in 0..c.depth {
        let l = |n: &str| s(&format!("encoder.layer.{i}.{n}"));
        for q in ["query", "key", "value"] {
            v.push(ParamSpec::new(
                l(&format!("attention.self.{q}.weight")),
                &[d, d],
                Init::Normal(std),
                &["heads", "embed"],
            ));
            v.push(ParamSpec::new(
                l(&format!("attention.self.{q}.bias")),
                &[d],
                Init::Zeros,
                &["heads"],
            ));
        }
        v.push(ParamSpec::new(
            l("attention.output.dense.weight"),
            &[d, d],
            Init::Normal(std),
            &["embed", "heads"],
        ));
        v.push(ParamSpec::new(
            l("attention.output.dense.bias"),
            &[d],
            Init::Zeros,
            &["embed"],
        ));
        v.push(ParamSpec::new(
            l("attention.output.LayerNorm.weight"),
            &[d],
            Init::Ones,
            &["embed"],
        ));
        v.push(ParamSpec::new(
            l("attention.output.LayerNorm.bias"),
            &[d],
            Init::Zeros,
            &["embed"],
        ));
        v.push(ParamSpec::new(
            l("intermediate.dense.weight"),
            &[m, d],
            Init::Normal(std),
            &["mlp", "embed"],
        ));
        v.push(ParamSpec::new(
            l("intermediate.dense.bias"),
            &[m],
            Init::Zeros,
            &["mlp"],
        ));
        v.push(ParamSpec::new(
            l("output.dense.weight"),
            &[d, m],
            Init::Normal(std),
            &["embed", "mlp"],
        ));
        v.push(ParamSpec::new(
            l("output.dense.bias"),
            &[d],
            Init::Zeros,
            &["embed"],
        ));
        v.push(ParamSpec::new(
            l("output.LayerNorm.weight"),
            &[d],
            Init::Ones,
            &["embed"],
        ));
        v.push(ParamSpec::new(
            l("output.LayerNorm.bias"),
            &[d],
            Init::Zeros,
            &["embed"],
        ));
    }
    v
}

/// `x·Wᵀ + b` with `W [out, in]`.
fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    x.dot_general(
        w,
        DotDims {
            lhs_contract: vec![x.rank() - 1],
            rhs_contract: vec![1],
            ..DotDims::default()
        },
    )?
    .add(b)
}

fn ln(x: &Tensor, p: &Params, name: &str, eps: f64) -> Result<Tensor> {
    x.layer_norm(eps)?
        .mul(p.get(&format!("{name}.weight"))?)?
        .add(p.get(&format!("{name}.bias"))?)
}

/// `tokens [B, L]` → mean-pooled sentence embeddings `[B, width]` (not normalised).
pub fn apply(
    tokens: &Tensor,
    p: &Params,
    c: &TextConfig,
    dtype: DType,
    remat: Option<&RematPolicy>,
    noise: Option<&Noise>,
) -> Result<Tensor> {
    let (b, l) = (tokens.shape()[0], tokens.shape()[1]);
    if l > max_positions(c) {
        return shape_err(
            "bert",
            format!("{l} tokens exceed the {} positions", max_positions(c)),
        );
    }
    let (d, h) = (c.width, c.heads);
    let dh = d / h;
    let eps = c.layer_norm_eps;
    let bd = tokens.builder().clone();
    let pos = p
        .get("embeddings.position_embeddings.weight")?
        .slice_axis(0, 0, l)?;
    let typ = p
        .get("embeddings.token_type_embeddings.weight")?
        .slice_axis(0, 0, 1)?;
    let x = p
        .get("embeddings.word_embeddings.weight")?
        .take_rows(tokens)?
        .add(&pos)?
        .add(&typ)?;
    let mut x = ln(&x, p, "embeddings.LayerNorm", eps)?.constrain(&[Some("batch"), None, None])?;
    let real = tokens
        .ne(&bd.scalar(c.pad_id as f64, DType::S32)?)?
        .convert(dtype)?;
    // 0 for real keys, a large negative number for padding: [B, 1, 1, L].
    let mask_bias = real
        .neg()?
        .add_scalar(1.0)?
        .mul_scalar(-1e9)?
        .reshape(&[b, 1, 1, l])?;
    for i in 0..c.depth {
        // Dropout (and stochastic depth) on each sublayer's output before its residual sum, as
        // BERT's hidden dropout; layer `i` draws from the key folded with 100 + i.
        let n = noise.map(|n| n.fold(100 + i as u64)).transpose()?;
        let branch = |t: Tensor, salt: u64| -> Result<Tensor> {
            match &n {
                Some(n) => n.branch(&t, salt),
                None => Ok(t),
            }
        };
        let lp = |n: &str| p.get(&format!("encoder.layer.{i}.{n}"));
        let lname = |n: &str| format!("encoder.layer.{i}.{n}");
        let layer = |x: &Tensor| -> Result<Tensor> {
            let heads = |n: &str| -> Result<Tensor> {
                linear(
                    x,
                    lp(&format!("attention.self.{n}.weight"))?,
                    lp(&format!("attention.self.{n}.bias"))?,
                )?
                .reshape(&[b, l, h, dh])?
                .transpose(&[0, 2, 1, 3])
            };
            let (q, k, v) = (heads("query")?, heads("key")?, heads("value")?);
            let att = q
                .batch_matmul(&k.t()?)?
                .mul_scalar(1.0 / (dh as f64).sqrt())?
                .add(&mask_bias)?
                .softmax(-1)?;
            let a = att
                .batch_matmul(&v)?
                .transpose(&[0, 2, 1, 3])?
                .reshape(&[b, l, d])?;
            let a = linear(
                &a,
                lp("attention.output.dense.weight")?,
                lp("attention.output.dense.bias")?,
            )?;
            let x = ln(
                &x.add(&branch(a, 1)?)?,
                p,
                &lname("attention.output.LayerNorm"),
                eps,
            )?;
            let f = linear(
                &x,
                lp("intermediate.dense.weight")?,
                lp("intermediate.dense.bias")?,
            )?
            .gelu_exact()?;
            let f = linear(&f, lp("output.dense.weight")?, lp("output.dense.bias")?)?;
            ln(&x.add(&branch(f, 2)?)?, p, &lname("output.LayerNorm"), eps)
        };
        x = bd.remat(remat, || layer(&x))?;
    }
    let n = real.sum_keepdims(&[1])?.max_scalar(1e-9)?;
    x.mul(&real.reshape(&[b, l, 1])?)?.sum(&[1])?.div(&n)
}

/// Maps a HF checkpoint's tensor names onto the model's (`prefix/NAME`). Tensors the encoder does
/// not use (the pooler, `position_ids`) are dropped; everything else must match `specs`.
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
