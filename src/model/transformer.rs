//! The pre-LN transformer block shared by the text tower and the ViT image tower
//! (Vaswani et al., 2017; pre-LN as in ViT and CLIP):
//!
//! `x ← x + Attn(LN₁(x))`, `x ← x + MLP(LN₂(x))`, with `MLP(h) = W₂·GELU(W₁h + b₁) + b₂` and
//! multi-head self-attention `softmax(QKᵀ/√d_h + mask)·V`.

use crate::error::{shape_err, Result};
use crate::ir::RematPolicy;
use crate::trace::Tensor;

use super::noise::Noise;
use super::params::{Init, ParamSpec, Params};

/// Sizes of a stack of transformer blocks.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TransformerConfig {
    pub width: i64,
    pub depth: i64,
    pub heads: i64,
    /// Hidden width of the MLP (usually 4 × width).
    pub mlp: i64,
}

/// Parameter specs of one block under `prefix` (e.g. `text/blocks/3`).
pub fn block_specs(prefix: &str, c: &TransformerConfig) -> Vec<ParamSpec> {
    let (d, m) = (c.width, c.mlp);
    let s = |n: &str| format!("{prefix}/{n}");
    let std = 0.02;
    vec![
        ParamSpec::new(s("ln1/scale"), &[d], Init::Ones, &["embed"]),
        ParamSpec::new(s("ln1/bias"), &[d], Init::Zeros, &["embed"]),
        ParamSpec::new(
            s("attn/qkv/kernel"),
            &[d, 3 * d],
            Init::Normal(std),
            &["embed", "heads"],
        ),
        ParamSpec::new(s("attn/qkv/bias"), &[3 * d], Init::Zeros, &["heads"]),
        ParamSpec::new(
            s("attn/out/kernel"),
            &[d, d],
            Init::Normal(std),
            &["heads", "embed"],
        ),
        ParamSpec::new(s("attn/out/bias"), &[d], Init::Zeros, &["embed"]),
        ParamSpec::new(s("ln2/scale"), &[d], Init::Ones, &["embed"]),
        ParamSpec::new(s("ln2/bias"), &[d], Init::Zeros, &["embed"]),
        ParamSpec::new(
            s("mlp/in/kernel"),
            &[d, m],
            Init::Normal(std),
            &["embed", "mlp"],
        ),
        ParamSpec::new(s("mlp/in/bias"), &[m], Init::Zeros, &["mlp"]),
        ParamSpec::new(
            s("mlp/out/kernel"),
            &[m, d],
            Init::Normal(std),
            &["mlp", "embed"],
        ),
        ParamSpec::new(s("mlp/out/bias"), &[d], Init::Zeros, &["embed"]),
    ]
}

/// Specs of a whole stack: `prefix/blocks/{i}/...`.
pub fn stack_specs(prefix: &str, c: &TransformerConfig) -> Vec<ParamSpec> {
    (0..c.depth)
        .flat_map(|i| block_specs(&format!("{prefix}/blocks/{i}"), c))
        .collect()
}

/// `LN(x)·scale + bias` over the last axis.
pub fn layer_norm(x: &Tensor, scale: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    x.layer_norm(eps)?.mul(scale)?.add(bias)
}

/// `x·W + b` on the last axis.
pub fn dense(x: &Tensor, kernel: &Tensor, bias: &Tensor) -> Result<Tensor> {
    x.matmul(kernel)?.add(bias)
}

/// Multi-head self-attention on `x [B, L, D_in]`; the output width is that of `out/kernel`
/// (`qkv/kernel` is `[D_in, 3·D]`). `mask_bias`, if given, is added to the scores and broadcasts
/// to `[B, H, L, L]` (0 where attention is allowed, a large negative number elsewhere; CoAtNet
/// passes its relative position bias here).
pub fn attention(x: &Tensor, p: &Params, heads: i64, mask_bias: Option<&Tensor>) -> Result<Tensor> {
    let (b, l) = match x.shape() {
        [b, l, _] => (*b, *l),
        _ => {
            return shape_err(
                "attention",
                format!("expects [batch, length, width], got {}", x.ty()),
            )
        }
    };
    let qkv_kernel = p.get("qkv/kernel")?;
    let d = qkv_kernel.shape().get(1).copied().unwrap_or(0) / 3;
    if heads < 1 || d % heads != 0 {
        return shape_err(
            "attention",
            format!("width {d} is not divisible by {heads} heads"),
        );
    }
    let dh = d / heads;
    let qkv = dense(x, qkv_kernel, p.get("qkv/bias")?)?
        .reshape(&[b, l, 3, heads, dh])?
        .transpose(&[2, 0, 3, 1, 4])?; // [3, B, H, L, dh]
    let part =
        |i: i64| -> Result<Tensor> { qkv.slice_axis(0, i, i + 1)?.reshape(&[b, heads, l, dh]) };
    let (q, k, v) = (part(0)?, part(1)?, part(2)?);
    let scores = q
        .batch_matmul(&k.t()?)?
        .mul_scalar(1.0 / (dh as f64).sqrt())?;
    let scores = match mask_bias {
        Some(m) => scores.add(m)?,
        None => scores,
    };
    let weights = scores.softmax(-1)?;
    let out = weights
        .batch_matmul(&v)?
        .transpose(&[0, 2, 1, 3])?
        .reshape(&[b, l, d])?;
    dense(&out, p.get("out/kernel")?, p.get("out/bias")?)
}

/// One pre-LN block, with dropout / stochastic depth on both residual branches when `noise` is
/// given.
pub fn block(
    x: &Tensor,
    p: &Params,
    c: &TransformerConfig,
    mask_bias: Option<&Tensor>,
    noise: Option<&Noise>,
) -> Result<Tensor> {
    let branch = |t: Tensor, salt: u64| -> Result<Tensor> {
        match noise {
            Some(n) => n.branch(&t, salt),
            None => Ok(t),
        }
    };
    let h = layer_norm(x, p.get("ln1/scale")?, p.get("ln1/bias")?, 1e-6)?;
    let a = attention(&h, &p.scope("attn"), c.heads, mask_bias)?.named("attn_out");
    let x = x.add(&branch(a, 1)?)?;
    let h = layer_norm(&x, p.get("ln2/scale")?, p.get("ln2/bias")?, 1e-6)?;
    let h = dense(&h, p.get("mlp/in/kernel")?, p.get("mlp/in/bias")?)?
        .gelu()?
        .named("mlp_hidden");
    let h = dense(&h, p.get("mlp/out/kernel")?, p.get("mlp/out/bias")?)?;
    x.add(&branch(h, 2)?)
}

/// The whole stack, each block checkpointed with `remat` (None: no checkpoint); with `noise`,
/// dropout / stochastic depth, block `i` drawing from the key folded with `i`.
pub fn stack(
    x: &Tensor,
    p: &Params,
    c: &TransformerConfig,
    mask_bias: Option<&Tensor>,
    remat: Option<&RematPolicy>,
    noise: Option<&Noise>,
) -> Result<Tensor> {
    let mut x = x.clone();
    for i in 0..c.depth {
        let bp = p.scope(&format!("blocks/{i}"));
        let n = noise.map(|n| n.fold(100 + i as u64)).transpose()?;
        let run = |x: &Tensor| block(x, &bp, c, mask_bias, n.as_ref());
        x = x.builder().remat(remat, || run(&x))?;
    }
    Ok(x)
}

/// Names of one block's parameters, in a fixed order (for stacking them for a scan).
pub const BLOCK_PARAM_NAMES: [&str; 12] = [
    "ln1/scale",
    "ln1/bias",
    "attn/qkv/kernel",
    "attn/qkv/bias",
    "attn/out/kernel",
    "attn/out/bias",
    "ln2/scale",
    "ln2/bias",
    "mlp/in/kernel",
    "mlp/in/bias",
    "mlp/out/kernel",
    "mlp/out/bias",
];

/// Specs of a stack run as one scan: each block parameter stacked over the layers, as
/// `prefix/layers/...` with shape `[depth, ...]` (see [`ParamSpec::stacked`]).
pub fn scanned_stack_specs(prefix: &str, c: &TransformerConfig) -> Vec<ParamSpec> {
    block_specs("", c)
        .iter()
        .map(|s| {
            let rel = s.name.trim_start_matches('/');
            s.stacked(c.depth, format!("{prefix}/layers/{rel}"))
        })
        .collect()
}

/// Runs `depth` identical blocks as ONE loop over parameters stacked on a leading layers axis:
/// `stacked` holds one block's parameter paths, each `[depth, ...]`. The body is traced once, so
/// compile time and program size do not grow with depth. Each step is checkpointed with `remat`;
/// with `noise`, step `i` draws from the key folded with `i`. `block(x, params, consts, noise)`
/// sees one layer's parameters and the loop-invariant `consts`.
pub fn scan_layers(
    x: &Tensor,
    stacked: &Params,
    consts: &[Tensor],
    remat: Option<&RematPolicy>,
    noise: Option<&Noise>,
    block: impl Fn(&Tensor, &Params, &[Tensor], Option<&Noise>) -> Result<Tensor>,
) -> Result<Tensor> {
    let names: Vec<String> = stacked.iter().map(|(k, _)| k.clone()).collect();
    let xs: Vec<Tensor> = stacked.iter().map(|(_, t)| t.clone()).collect();
    let depth = match xs.first().map(|t| t.shape()) {
        Some([d, ..]) => *d,
        _ => {
            return shape_err(
                "scan_layers",
                "needs stacked parameters with a leading layers axis",
            )
        }
    };
    let mut all = consts.to_vec();
    if let Some(n) = noise {
        all.push(n.key.clone());
    }
    let b = x.builder().clone();
    let (carry, _) = b.scan(
        depth,
        &all,
        std::slice::from_ref(x),
        &xs,
        false,
        |index, cs, k, ws| {
            let mut p = Params::default();
            for (n, w) in names.iter().zip(ws) {
                p.insert(n, w.clone());
            }
            let (cs, n) = match noise {
                Some(n) => {
                    let Some((key, rest)) = cs.split_last() else {
                        return shape_err("scan_layers", "the loop lost its noise key");
                    };
                    let n = Noise {
                        key: key.clone(),
                        ..n.clone()
                    }
                    .fold_index(index)?;
                    (rest, Some(n))
                }
                None => (cs, None),
            };
            let y = k[0]
                .builder()
                .remat(remat, || block(&k[0], &p, cs, n.as_ref()))?;
            Ok((vec![y], vec![]))
        },
    )?;
    Ok(carry[0].clone())
}

/// The stack as one scan over `prefix/layers/...` parameters ([`scanned_stack_specs`]), with
/// dropout / stochastic depth when `noise` is given.
pub fn scanned(
    x: &Tensor,
    p: &Params,
    c: &TransformerConfig,
    mask_bias: Option<&Tensor>,
    remat: Option<&RematPolicy>,
    noise: Option<&Noise>,
) -> Result<Tensor> {
    let consts: Vec<Tensor> = mask_bias.into_iter().cloned().collect();
    let noise = noise.map(|n| n.fold(100)).transpose()?;
    scan_layers(
        x,
        &p.scope("layers"),
        &consts,
        remat,
        noise.as_ref(),
        |x, p, cs, n| block(x, p, c, cs.first(), n),
    )
}

/// The stack as one scan over weights stacked on a leading `depth` axis (`stacked` holds
/// [`BLOCK_PARAM_NAMES`] in order, each `[depth, ...]`): one loop body for all blocks, so compile
/// time does not grow with depth. Each step is checkpointed with `remat` inside the body.
pub fn scanned_stack(
    x: &Tensor,
    stacked: &[Tensor],
    c: &TransformerConfig,
    mask_bias: Option<&Tensor>,
    remat: Option<&RematPolicy>,
) -> Result<Tensor> {
    let mut p = Params::default();
    for (n, w) in BLOCK_PARAM_NAMES.iter().zip(stacked) {
        p.insert(&format!("layers/{n}"), w.clone());
    }
    scanned(x, &p, c, mask_bias, remat, None)
}
