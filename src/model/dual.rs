//! BASIC's dual encoder (Pham et al., 2021, §3; the CLIP/ALIGN recipe): an image tower and a text
//! tower, each followed by a linear projection to a shared `embed_dim` and L2 normalisation, and
//! a learnable temperature τ. For a batch of N pairs the logits are `s · x_i · y_j` with
//! `s = min(1/τ, 1/τ_min)`, and the loss is the symmetric cross-entropy of matching each image to
//! its text and each text to its image over the whole (global) batch:
//!
//! `L = ½ (CE(S, I) + CE(Sᵀ, I))`, `S = s · X Yᵀ`.
//!
//! The sigmoid variant (SigLIP) scores every pair independently:
//! `L = -1/N Σ_ij log σ(z_ij (s · x_i · y_j + b))`, `z_ij = 1` on the diagonal, `-1` elsewhere.

use crate::dtype::DType;
use crate::error::{shape_err, Result};
use crate::trace::Tensor;

use super::config::{ImageConfig, LossKind, ModelConfig, Projection, TextKind};
use super::inference::batch_shapes;
use super::names::{self, io, Modality};
use super::params::{Init, ParamSpec, Params};
use super::scope::{trace_specs, Scope, Tower};
use super::{bert, coatnet, text, vit};

/// Width of the image tower's features (before projection).
pub fn image_width(c: &ModelConfig) -> i64 {
    match &c.image {
        ImageConfig::Vit(v) => v.width,
        ImageConfig::Coatnet(cn) => cn.stages.last().map_or(cn.stem_width, |s| s.width),
    }
}

/// Every parameter of the model, with stable readable names, in the order the model first uses
/// them: traced by running the whole model (image and text embeddings, the logit scale and bias)
/// on batch-1 inputs with a collecting [`Scope`].
pub fn specs(c: &ModelConfig) -> Result<Vec<ParamSpec>> {
    trace_specs(&format!("{}_specs", c.name), DType::F32, |b, s| {
        let (is, ts) = batch_shapes(c, 1);
        let images = b.parameter(io::IMAGES, DType::F32, &is)?;
        let tokens = b.parameter(io::TOKENS, DType::S32, &ts)?;
        let t = Tower::of(c, DType::F32);
        embed_images(&images, s, c, &t)?;
        embed_texts(&tokens, s, c, &t)?;
        logit_scale(s, c)?;
        logit_bias(s, c)?;
        Ok(())
    })
}

/// The parameters of the towers in `lock`.
pub fn locked(specs: &[ParamSpec], lock: &[Modality]) -> Vec<String> {
    specs
        .iter()
        .filter(|s| Modality::of_param(&s.name).is_some_and(|m| lock.contains(&m)))
        .map(|s| s.name.clone())
        .collect()
}

/// Casts every parameter to the compute dtype (master weights stay as they are).
pub fn cast(p: &Params, dtype: DType) -> Result<Params> {
    let mut out = Params::default();
    for (k, t) in p.iter() {
        out.insert(
            k,
            if t.dtype().is_float() {
                t.convert(dtype)?
            } else {
                t.clone()
            },
        );
    }
    Ok(out)
}

/// Normalised image embeddings `[B, embed_dim]` of `images [B, H, W, C]`, parameters under
/// `s/image`. The tower's noise (folded with 1) drives dropout and stochastic depth in its blocks.
pub fn embed_images(images: &Tensor, s: &Scope, c: &ModelConfig, t: &Tower) -> Result<Tensor> {
    let s = s.sub(Modality::Image.scope());
    let noise = t.fold(1)?;
    let t = t.with_noise(noise.as_ref());
    let f = match &c.image {
        ImageConfig::Vit(vc) => vit::apply(images, &s, vc, &t)?,
        ImageConfig::Coatnet(cc) => coatnet::apply(images, &s, cc, &t)?,
    };
    let e = project(
        &f,
        &s.sub(names::PROJECTION),
        c.image_projection,
        c.embed_dim,
    )?;
    e.l2_normalize(-1, 1e-12)?.constrain(&[Some("batch"), None])
}

/// A tower's features `f [B, width]` mapped to the embedding space by `kind`, its parameters
/// `kernel [width, embed_dim]` (and `bias`) under `s`.
fn project(f: &Tensor, s: &Scope, kind: Projection, embed_dim: i64) -> Result<Tensor> {
    let width = f.shape()[1];
    let kernel = || {
        s.param(
            "kernel",
            &[width, embed_dim],
            Init::LecunUniform,
            &["embed", "proj"],
        )
    };
    match kind {
        Projection::Linear => f.matmul(&kernel()?),
        Projection::LinearBias => {
            let bias = s.param("bias", &[embed_dim], Init::Zeros, &["proj"])?;
            f.matmul(&kernel()?)?.add(&bias)
        }
        Projection::None if width == embed_dim => Ok(f.clone()),
        Projection::None => shape_err(
            "projection",
            format!("features of width {width} cannot be embeddings of {embed_dim} without a projection"),
        ),
    }
}

/// The text tower's pooled features `[B, text width]` (before projection), parameters under
/// `s/text` (`s/text/bert` for BERT). The tower's noise is folded with 2.
pub fn text_features(tokens: &Tensor, s: &Scope, c: &ModelConfig, t: &Tower) -> Result<Tensor> {
    let s = s.sub(Modality::Text.scope());
    let noise = t.fold(2)?;
    let t = t.with_noise(noise.as_ref());
    match c.text.kind {
        TextKind::Transformer => text::apply(tokens, &s, &c.text, &t),
        TextKind::Bert => bert::apply(tokens, &s.sub(names::BERT), &c.text, &t),
    }
}

/// Normalised text embeddings `[B, embed_dim]` of `tokens [B, L]`.
pub fn embed_texts(tokens: &Tensor, s: &Scope, c: &ModelConfig, t: &Tower) -> Result<Tensor> {
    let f = text_features(tokens, s, c, t)?;
    let e = project(
        &f,
        &s.sub(&names::join(Modality::Text.scope(), names::PROJECTION)),
        c.text_projection,
        c.embed_dim,
    )?;
    e.l2_normalize(-1, 1e-12)?.constrain(&[Some("batch"), None])
}

/// `s = min(exp(logit_scale), 1/τ_min)`; constant `1/τ_init` when the temperature is not learned.
pub fn logit_scale(s: &Scope, c: &ModelConfig) -> Result<Tensor> {
    let ls = s.param(
        names::LOGIT_SCALE,
        &[],
        Init::Constant((1.0 / c.temperature.init).ln()),
        &[],
    )?;
    if !c.temperature.learnable {
        return ls.scalar_like(1.0 / c.temperature.init);
    }
    ls.exp()?.min_scalar(1.0 / c.temperature.min)
}

/// The sigmoid loss's learnable bias `b` (initially -10); `None` for the softmax loss.
pub fn logit_bias(s: &Scope, c: &ModelConfig) -> Result<Option<Tensor>> {
    match c.loss {
        LossKind::Sigmoid => Ok(Some(s.param(
            names::LOGIT_BIAS,
            &[],
            Init::Constant(-10.0),
            &[],
        )?)),
        LossKind::Softmax => Ok(None),
    }
}

/// The contrastive loss of normalised embeddings `img`, `txt` (`[N, E]`, pair i matches i).
pub fn loss(
    img: &Tensor,
    txt: &Tensor,
    scale: &Tensor,
    bias: Option<&Tensor>,
    kind: LossKind,
) -> Result<Tensor> {
    let n = img.shape()[0];
    // The N × N logits stay split by rows over the batch axes (at BASIC's batch of 65,536 a
    // whole f32 copy is 16 GiB), and the matching pairs' logits s·⟨x_i, y_i⟩ come from the
    // embeddings directly, so nothing N × N is ever replicated or built from an identity matrix.
    let logits = img
        .matmul(&txt.t()?)?
        .mul(scale)?
        .constrain(&[Some("batch"), None])?;
    let diag = img.mul(txt)?.sum(&[1])?.mul(scale)?;
    match kind {
        LossKind::Softmax => {
            // CE(S, I) = mean_i(logsumexp_j S_ij - S_ii); CE(Sᵀ, I) uses the column sums.
            let rows = logits.logsumexp(&[1])?;
            let cols = logits.logsumexp(&[0])?;
            rows.add(&cols)?
                .sub(&diag.mul_scalar(2.0)?)?
                .sum_all()?
                .div_scalar(2.0 * n as f64)
        }
        LossKind::Sigmoid => {
            let (z, zd) = match bias {
                Some(bv) => (logits.add(bv)?, diag.add(bv)?),
                None => (logits, diag),
            };
            // -Σ_ij log σ(y_ij z_ij) with y = +1 on the diagonal and -1 elsewhere equals
            // Σ_ij softplus(z_ij) - Σ_i z_ii, since log σ(z) - log σ(-z) = z.
            // softplus(t) = max(t, 0) + log1p(e^{-|t|}), stable for any t.
            let sp = z.max_scalar(0.0)?.add(&z.abs()?.neg()?.exp()?.log1p()?)?;
            sp.sum_all()?.sub(&zd.sum_all()?)?.div_scalar(n as f64)
        }
    }
}
