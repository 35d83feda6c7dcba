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
use crate::error::Result;
use crate::ir::RematPolicy;
use crate::trace::Tensor;

use super::config::{ImageConfig, LossKind, ModelConfig, TextKind};
use super::noise::Noise;
use super::params::{Init, ParamSpec, Params};
use super::{bert, coatnet, text, vit};

/// Width of the image tower's features (before projection).
pub fn image_width(c: &ModelConfig) -> i64 {
    match &c.image {
        ImageConfig::Vit(v) => v.width,
        ImageConfig::Coatnet(cn) => cn.stages.last().map_or(cn.stem_width, |s| s.width),
    }
}

/// Every parameter of the model, in a fixed order, with stable readable names.
pub fn specs(c: &ModelConfig) -> Vec<ParamSpec> {
    let mut v = match &c.image {
        ImageConfig::Vit(vc) => vit::specs("image", vc, c.scan_layers),
        ImageConfig::Coatnet(cc) => coatnet::specs("image", cc, c.scan_layers),
    };
    v.push(ParamSpec::new(
        "image/proj/kernel",
        &[image_width(c), c.embed_dim],
        Init::LecunUniform,
        &["embed", "proj"],
    ));
    match c.text.kind {
        TextKind::Transformer => v.extend(text::specs("text", &c.text, c.scan_layers)),
        TextKind::Bert => v.extend(bert::specs("text/bert", &c.text)),
    }
    v.push(ParamSpec::new(
        "text/proj/kernel",
        &[c.text.width, c.embed_dim],
        Init::LecunUniform,
        &["embed", "proj"],
    ));
    let mut ls = ParamSpec::new(
        "logit_scale",
        &[],
        Init::Constant((1.0 / c.temperature.init).ln()),
        &[],
    );
    ls.no_decay = true;
    v.push(ls);
    if c.loss == LossKind::Sigmoid {
        let mut lb = ParamSpec::new("logit_bias", &[], Init::Constant(-10.0), &[]);
        lb.no_decay = true;
        v.push(lb);
    }
    v
}

/// Parameters that belong to the image tower (including its projection).
pub fn is_image_param(name: &str) -> bool {
    name.starts_with("image/")
}

/// Parameters that belong to the text tower (including its projection).
pub fn is_text_param(name: &str) -> bool {
    name.starts_with("text/")
}

/// The parameters of the towers named in `lock` (`image`, `text`).
pub fn locked(specs: &[ParamSpec], lock: &[String]) -> Vec<String> {
    specs
        .iter()
        .filter(|s| {
            lock.iter().any(|t| {
                (t == "image" && is_image_param(&s.name)) || (t == "text" && is_text_param(&s.name))
            })
        })
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

/// Normalised image embeddings `[B, embed_dim]` of `images [B, H, W, C]`.
/// `noise` drives dropout and stochastic depth in the tower's blocks.
pub fn embed_images(
    images: &Tensor,
    p: &Params,
    c: &ModelConfig,
    remat: Option<&RematPolicy>,
    noise: Option<&Noise>,
) -> Result<Tensor> {
    let ip = p.scope("image");
    let noise = noise.map(|n| n.fold(1)).transpose()?;
    let f = match &c.image {
        ImageConfig::Vit(vc) => vit::apply(images, &ip, vc, remat, noise.as_ref(), c.scan_layers)?,
        ImageConfig::Coatnet(cc) => {
            coatnet::apply(images, &ip, cc, remat, noise.as_ref(), c.scan_layers)?
        }
    };
    let e = f.matmul(ip.get("proj/kernel")?)?;
    e.l2_normalize(-1, 1e-12)?.constrain(&[Some("batch"), None])
}

/// The text tower's pooled features `[B, text width]` (before projection).
pub fn text_features(
    tokens: &Tensor,
    p: &Params,
    c: &ModelConfig,
    dtype: DType,
    remat: Option<&RematPolicy>,
    noise: Option<&Noise>,
) -> Result<Tensor> {
    let tp = p.scope("text");
    let noise = noise.map(|n| n.fold(2)).transpose()?;
    match c.text.kind {
        TextKind::Transformer => text::apply(
            tokens,
            &tp,
            &c.text,
            dtype,
            remat,
            noise.as_ref(),
            c.scan_layers,
        ),
        TextKind::Bert => bert::apply(
            tokens,
            &tp.scope("bert"),
            &c.text,
            dtype,
            remat,
            noise.as_ref(),
        ),
    }
}

/// Normalised text embeddings `[B, embed_dim]` of `tokens [B, L]`.
pub fn embed_texts(
    tokens: &Tensor,
    p: &Params,
    c: &ModelConfig,
    dtype: DType,
    remat: Option<&RematPolicy>,
    noise: Option<&Noise>,
) -> Result<Tensor> {
    let tp = p.scope("text");
    let f = text_features(tokens, p, c, dtype, remat, noise)?;
    let e = f.matmul(tp.get("proj/kernel")?)?;
    e.l2_normalize(-1, 1e-12)?.constrain(&[Some("batch"), None])
}

/// `s = min(exp(logit_scale), 1/τ_min)`; constant `1/τ_init` when the temperature is not learned.
pub fn logit_scale(p: &Params, c: &ModelConfig) -> Result<Tensor> {
    let ls = p.get("logit_scale")?;
    if !c.temperature.learnable {
        return ls.scalar_like(1.0 / c.temperature.init);
    }
    ls.exp()?.min_scalar(1.0 / c.temperature.min)
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
