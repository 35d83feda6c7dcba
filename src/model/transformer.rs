//! The pre-LN transformer block shared by the text tower and the ViT image tower
//! (Vaswani et al., 2017; pre-LN as in ViT and CLIP):
//!
//! `x ← x + Attn(LN₁(x))`, `x ← x + MLP(LN₂(x))`, with `MLP(h) = W₂·GELU(W₁h + b₁) + b₂` and
//! multi-head self-attention `softmax(QKᵀ/√d_h + mask)·V`.

use crate::error::{shape_err, Result};
use crate::ir::RematPolicy;
use crate::trace::Tensor;

use super::config::Activation;
use super::names;
use super::noise::Noise;
use super::params::{Init, ParamSpec, Params};
use super::scope::{trace_specs, Scope, Tower};

/// Sizes of a stack of transformer blocks.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TransformerConfig {
    pub width: i64,
    pub depth: i64,
    pub heads: i64,
    /// Hidden width of the MLP (usually 4 × width).
    pub mlp: i64,
    /// The MLP's nonlinearity.
    pub act: Activation,
    /// LayerNorm epsilon.
    pub eps: f64,
}

/// `LN(x)·scale + bias` over the last axis.
pub fn layer_norm(x: &Tensor, scale: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    x.layer_norm(eps)?.mul(scale)?.add(bias)
}

/// `x·W + b` on the last axis.
pub fn dense(x: &Tensor, kernel: &Tensor, bias: &Tensor) -> Result<Tensor> {
    x.matmul(kernel)?.add(bias)
}

/// The size of the last axis of `x`.
fn last_dim(x: &Tensor) -> i64 {
    x.shape().last().copied().unwrap_or(1)
}

/// LayerNorm over the last axis of `x` (logical axis `axis`) with `scale` (ones) and `bias`
/// (zeros) declared under `s`.
pub fn norm(x: &Tensor, s: &Scope, axis: &str, eps: f64) -> Result<Tensor> {
    let d = last_dim(x);
    let scale = s.param("scale", &[d], Init::Ones, &[axis])?;
    let bias = s.param("bias", &[d], Init::Zeros, &[axis])?;
    layer_norm(x, &scale, &bias, eps)
}

/// A dense layer's parameters: `kernel [in, out]` and `bias [out]`.
pub struct Dense {
    pub kernel: Tensor,
    pub bias: Tensor,
}

impl Dense {
    /// Declares `kernel [din, dout]` (initialised by `init`, logical axes `axes`) and
    /// `bias [dout]` (zeros, axis `axes[1]`) under `s`.
    pub fn declare(s: &Scope, din: i64, dout: i64, init: Init, axes: [&str; 2]) -> Result<Dense> {
        Ok(Dense {
            kernel: s.param("kernel", &[din, dout], init, &axes)?,
            bias: s.param("bias", &[dout], Init::Zeros, &[axes[1]])?,
        })
    }

    /// `x·W + b` on the last axis.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        dense(x, &self.kernel, &self.bias)
    }
}

/// `x·W + b` on the last axis to `dout` features, with the layer declared under `s` (see
/// [`Dense::declare`]; its input width is that of `x`).
pub fn linear(x: &Tensor, s: &Scope, dout: i64, init: Init, axes: [&str; 2]) -> Result<Tensor> {
    Dense::declare(s, last_dim(x), dout, init, axes)?.apply(x)
}

/// The multi-head core: `softmax(q·kᵀ/√d_h + mask)·v` of `q, k, v [B, H, L, d_h]`, heads merged
/// to `[B, L, H·d_h]`. `mask_bias`, if given, is added to the scores and broadcasts to
/// `[B, H, L, L]` (0 where attention is allowed, a large negative number elsewhere; CoAtNet passes
/// its relative position bias here).
pub fn multi_head(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask_bias: Option<&Tensor>,
) -> Result<Tensor> {
    let (b, h, l, dh) = match q.shape() {
        [b, h, l, dh] => (*b, *h, *l, *dh),
        _ => {
            return shape_err(
                "attention",
                format!(
                    "expects q as [batch, heads, length, head width], got {}",
                    q.ty()
                ),
            )
        }
    };
    let scores = q
        .batch_matmul(&k.t()?)?
        .mul_scalar(1.0 / (dh as f64).sqrt())?;
    let scores = match mask_bias {
        Some(m) => scores.add(m)?,
        None => scores,
    };
    let weights = scores.softmax(-1)?;
    weights
        .batch_matmul(v)?
        .transpose(&[0, 2, 1, 3])?
        .reshape(&[b, l, h * dh])
}

/// Multi-head self-attention with a fused `qkv` projection `[D_in, 3·D]` and an `out`
/// projection `[D, D]`.
pub struct Attention {
    pub qkv: Dense,
    pub out: Dense,
    pub heads: i64,
}

impl Attention {
    /// Declares `qkv/{kernel,bias}` and `out/{kernel,bias}` under `s`: kernels initialised by
    /// `init`, the model width on logical axis `axis` (`embed`, `channels`), the heads on
    /// `heads`.
    pub fn declare(
        s: &Scope,
        din: i64,
        d: i64,
        heads: i64,
        init: Init,
        axis: &str,
    ) -> Result<Attention> {
        Ok(Attention {
            qkv: Dense::declare(&s.sub("qkv"), din, 3 * d, init.clone(), [axis, "heads"])?,
            out: Dense::declare(&s.sub("out"), d, d, init, ["heads", axis])?,
            heads,
        })
    }

    /// Self-attention on `x [B, L, D_in]` → `[B, L, D]`, with `mask_bias` as in [`multi_head`].
    pub fn apply(&self, x: &Tensor, mask_bias: Option<&Tensor>) -> Result<Tensor> {
        let (b, l) = match x.shape() {
            [b, l, _] => (*b, *l),
            _ => {
                return shape_err(
                    "attention",
                    format!("expects [batch, length, width], got {}", x.ty()),
                )
            }
        };
        let heads = self.heads;
        let d = self.qkv.kernel.shape().get(1).copied().unwrap_or(0) / 3;
        if heads < 1 || d % heads != 0 {
            return shape_err(
                "attention",
                format!("width {d} is not divisible by {heads} heads"),
            );
        }
        let dh = d / heads;
        let qkv = self
            .qkv
            .apply(x)?
            .reshape(&[b, l, 3, heads, dh])?
            .transpose(&[2, 0, 3, 1, 4])?; // [3, B, H, L, dh]
        let part =
            |i: i64| -> Result<Tensor> { qkv.slice_axis(0, i, i + 1)?.reshape(&[b, heads, l, dh]) };
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        self.out.apply(&multi_head(&q, &k, &v, mask_bias)?)
    }
}

/// One pre-LN block under `s`, checkpointed with the tower's remat policy, with dropout /
/// stochastic depth on both residual branches when the tower has noise (its key already folded
/// for this block).
pub fn block(
    x: &Tensor,
    s: &Scope,
    c: &TransformerConfig,
    mask_bias: Option<&Tensor>,
    t: &Tower,
) -> Result<Tensor> {
    let branch = |h: Tensor, salt: u64| -> Result<Tensor> {
        match t.noise {
            Some(n) => n.branch(&h, salt),
            None => Ok(h),
        }
    };
    let (d, std) = (c.width, Init::Normal(0.02));
    x.builder().checkpoint(t.remat, || {
        let h = norm(x, &s.sub("ln1"), "embed", c.eps)?;
        let a = Attention::declare(&s.sub("attn"), d, d, c.heads, std.clone(), "embed")?
            .apply(&h, mask_bias)?
            .named("attn_out");
        let x = x.add(&branch(a, 1)?)?;
        let h = norm(&x, &s.sub("ln2"), "embed", c.eps)?;
        let h = linear(&h, &s.sub("mlp/in"), c.mlp, std.clone(), ["embed", "mlp"])?;
        let h = c.act.apply(&h)?.named("mlp_hidden");
        let h = linear(&h, &s.sub("mlp/out"), d, std, ["mlp", "embed"])?;
        x.add(&branch(h, 2)?)
    })
}

/// The whole stack, `s/blocks/{i}/...`; with noise, block `i` draws from the key folded with
/// `100 + i`.
pub fn stack(
    x: &Tensor,
    s: &Scope,
    c: &TransformerConfig,
    mask_bias: Option<&Tensor>,
    t: &Tower,
) -> Result<Tensor> {
    let mut x = x.clone();
    for i in 0..c.depth {
        let n = t.fold(100 + i as u64)?;
        x = block(
            &x,
            &s.sub(&names::block(i as usize)),
            c,
            mask_bias,
            &t.with_noise(n.as_ref()),
        )?;
    }
    Ok(x)
}

/// The parameter specs of one layer, named relative to it, in the order `block` first uses them:
/// `block` traced once on a throwaway builder, on an input of `x`'s type and constants of
/// `consts`' types, without noise.
pub fn layer_specs<F>(x: &Tensor, consts: &[Tensor], t: &Tower, block: &F) -> Result<Vec<ParamSpec>>
where
    F: Fn(&Tensor, &Scope, &[Tensor], &Tower) -> Result<Tensor>,
{
    trace_specs("layer", x.dtype(), |b, s| {
        let x = b.parameter_typed("input", x.ty())?;
        let cs = consts
            .iter()
            .enumerate()
            .map(|(i, c)| b.parameter_typed(&format!("const{i}"), c.ty()))
            .collect::<Result<Vec<_>>>()?;
        block(&x, s, &cs, &t.with_noise(None))?;
        Ok(())
    })
}

/// Runs `depth` identical blocks as ONE loop over parameters stacked on a leading layers axis,
/// declared under `s` (`s/R` of shape `[depth, ...]` for each parameter `R` of one layer, see
/// [`layer_specs`] and [`ParamSpec::stacked`]). The body is traced once, so compile time and
/// program size do not grow with depth. `block(x, scope, consts, tower)` sees a scope over one
/// layer's parameters, the loop-invariant `consts`, and the tower with its noise, if any, folded
/// with the step index; it applies the tower's remat policy itself.
pub fn scan_layers<F>(
    x: &Tensor,
    s: &Scope,
    depth: i64,
    consts: &[Tensor],
    t: &Tower,
    block: F,
) -> Result<Tensor>
where
    F: Fn(&Tensor, &Scope, &[Tensor], &Tower) -> Result<Tensor>,
{
    let layer = layer_specs(x, consts, t, &block)?;
    if layer.is_empty() {
        return shape_err("scan_layers", "the layer declares no parameters to stack");
    }
    let stacked = layer
        .iter()
        .map(|p| s.declare(p.stacked(depth, p.name.clone())))
        .collect::<Result<Vec<_>>>()?;
    // The loop takes the stacked weights in name order.
    let mut order: Vec<usize> = (0..layer.len()).collect();
    order.sort_by(|&i, &j| layer[i].name.cmp(&layer[j].name));
    let xs: Vec<Tensor> = order.iter().map(|&i| stacked[i].clone()).collect();
    let mut all = consts.to_vec();
    if let Some(n) = t.noise {
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
            for (&i, w) in order.iter().zip(ws) {
                p.insert(&layer[i].name, w.clone());
            }
            let (cs, n) = match t.noise {
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
            let y = block(&k[0], &Scope::bound(&p), cs, &t.with_noise(n.as_ref()))?;
            Ok((vec![y], vec![]))
        },
    )?;
    Ok(carry[0].clone())
}

/// The stack as one scan over `s/layers/...` parameters, each block's stacked on a leading
/// `depth` axis; with noise, dropout / stochastic depth, step `i` drawing from the key folded
/// with 100 and then `i`.
pub fn scanned(
    x: &Tensor,
    s: &Scope,
    c: &TransformerConfig,
    mask_bias: Option<&Tensor>,
    t: &Tower,
) -> Result<Tensor> {
    let consts: Vec<Tensor> = mask_bias.into_iter().cloned().collect();
    let noise = t.fold(100)?;
    scan_layers(
        x,
        &s.sub(crate::model::names::LAYERS),
        c.depth,
        &consts,
        &t.with_noise(noise.as_ref()),
        |x, s, cs, t| block(x, s, c, cs.first(), t),
    )
}

/// The parameter specs of one block (relative names such as `attn/qkv/kernel`) in the order it
/// uses them: the order [`scanned_stack`] takes its stacked weights in.
pub fn block_param_specs(
    x: &Tensor,
    c: &TransformerConfig,
    mask_bias: Option<&Tensor>,
) -> Result<Vec<ParamSpec>> {
    let consts: Vec<Tensor> = mask_bias.into_iter().cloned().collect();
    layer_specs(x, &consts, &Tower::new(x.dtype()), &|x, s, cs, t| {
        block(x, s, c, cs.first(), t)
    })
}

/// The stack as one scan over weights stacked on a leading `depth` axis (`stacked` holds one
/// block's parameters in [`block_param_specs`] order, each `[depth, ...]`): one loop body for all
/// blocks, so compile time does not grow with depth. Each step is checkpointed with `remat`
/// inside the body.
pub fn scanned_stack(
    x: &Tensor,
    stacked: &[Tensor],
    c: &TransformerConfig,
    mask_bias: Option<&Tensor>,
    remat: &RematPolicy,
) -> Result<Tensor> {
    let layer = block_param_specs(x, c, mask_bias)?;
    if layer.len() != stacked.len() {
        return shape_err(
            "scanned_stack",
            format!(
                "a block has {} parameters, {} stacked weights given",
                layer.len(),
                stacked.len()
            ),
        );
    }
    let mut p = Params::default();
    for (spec, w) in layer.iter().zip(stacked) {
        p.insert(&names::join(names::LAYERS, &spec.name), w.clone());
    }
    let t = Tower::new(x.dtype()).with_remat(remat);
    scanned(x, &Scope::bound(&p), c, mask_bias, &t)
}
