//! Optimizers as graph code: AdamW and AdaFactorW (Loshchilov & Hutter, 2019; Shazeer & Stern,
//! 2018), learning-rate schedules and global-norm clipping. Weight decay is decoupled and skips
//! norms, biases and the temperature (`ParamSpec::no_decay`).

use crate::dtype::DType;
use crate::error::Result;
use crate::model::config::{OptimizerKind, Schedule, TrainConfig};
use crate::model::{Init, ParamSpec};
use crate::trace::Tensor;

/// Whether AdaFactor factors this parameter's second moment (matrices and up; a stacked
/// parameter by the rank of one layer, so that a scanned stack is optimized like its layers).
fn factored(s: &ParamSpec) -> bool {
    s.layer_shape().len() >= 2
}

/// The optimizer state's specs, named `opt/<slot>/<param>`, laid out like their parameters.
pub fn state_specs(specs: &[ParamSpec], t: &TrainConfig) -> Vec<ParamSpec> {
    let mut out = Vec::new();
    for s in specs {
        let slot = |slot: &str, shape: &[i64], axes: &[String]| ParamSpec {
            name: format!("opt/{slot}/{}", s.name),
            shape: shape.to_vec(),
            init: Init::Zeros,
            axes: axes.to_vec(),
            no_decay: true,
        };
        match t.optimizer {
            OptimizerKind::Adamw => {
                out.push(slot("m", &s.shape, &s.axes));
                out.push(slot("v", &s.shape, &s.axes));
            }
            OptimizerKind::Adafactorw => {
                if t.momentum {
                    out.push(slot("m", &s.shape, &s.axes));
                }
                if factored(s) {
                    let r = s.shape.len();
                    let ax = |skip: usize| -> Vec<String> {
                        if s.axes.len() == r {
                            s.axes
                                .iter()
                                .enumerate()
                                .filter(|(i, _)| *i != skip)
                                .map(|(_, a)| a.clone())
                                .collect()
                        } else {
                            vec![]
                        }
                    };
                    let mut row = s.shape.clone();
                    row.remove(r - 1);
                    let mut col = s.shape.clone();
                    col.remove(r - 2);
                    out.push(slot("vr", &row, &ax(r - 1)));
                    out.push(slot("vc", &col, &ax(r - 2)));
                } else {
                    out.push(slot("v", &s.shape, &s.axes));
                }
            }
        }
    }
    out
}

/// The learning rate at `step` (an f32 scalar holding the 0-based step): linear warm-up to the
/// peak, then the configured decay to 0 at `total_steps`.
pub fn learning_rate(step: &Tensor, t: &TrainConfig) -> Result<Tensor> {
    let peak = t.learning_rate;
    let w = t.warmup_steps.max(0) as f64;
    let s1 = step.add_scalar(1.0)?;
    let warm = if w > 0.0 {
        s1.div_scalar(w)?.min_scalar(1.0)?
    } else {
        s1.ones_like()?
    };
    let total = (t.total_steps as f64).max(w + 1.0);
    // Progress through the decay, in [0, 1].
    let frac = step
        .sub_scalar(w)?
        .div_scalar(total - w)?
        .max_scalar(0.0)?
        .min_scalar(1.0)?;
    let decay = match t.schedule {
        Schedule::Constant => frac.ones_like()?,
        Schedule::Linear => frac.neg()?.add_scalar(1.0)?,
        // ½ (1 + cos(π · frac))
        Schedule::Cosine => frac
            .mul_scalar(std::f64::consts::PI)?
            .cos()?
            .add_scalar(1.0)?
            .mul_scalar(0.5)?,
        // sqrt(w / max(step, w))
        Schedule::InverseSqrt => {
            let ww = w.max(1.0);
            step.add_scalar(1.0)?
                .max_scalar(ww)?
                .div_scalar(ww)?
                .rsqrt()?
        }
    };
    warm.mul(&decay)?.mul_scalar(peak)
}

/// √(Σ ‖g‖²) over all gradients.
pub fn global_norm(grads: &[Tensor]) -> Result<Tensor> {
    let mut acc: Option<Tensor> = None;
    for g in grads {
        // Accumulate in at least f32 (f64 only when the gradients are f64: TPUs have no f64).
        let wide = if grads.iter().any(|g| g.dtype() == DType::F64) {
            DType::F64
        } else {
            DType::F32
        };
        let s = g.convert(wide)?.square()?.sum_all()?;
        acc = Some(match acc {
            Some(a) => a.add(&s)?,
            None => s,
        });
    }
    match acc {
        Some(a) => a.sqrt(),
        None => Err(crate::Error::InvalidArgument {
            what: "global norm of no gradients".into(),
            fix: "the model has no trainable parameters".into(),
        }),
    }
}

/// One optimizer step. `params`, `grads` follow `specs`; `state` follows `state_specs(specs)`.
/// Returns the new parameters, the new state, the learning rate and the gradient norm (before
/// clipping).
pub fn update(
    specs: &[ParamSpec],
    params: &[Tensor],
    grads: &[Tensor],
    state: &[Tensor],
    step: &Tensor,
    t: &TrainConfig,
) -> Result<(Vec<Tensor>, Vec<Tensor>, Tensor, Tensor)> {
    // The schedule and bias corrections run in the parameters' precision (f32, or f64 in parity
    // runs), so that the update carries no rounding beyond the parameters' own.
    let pd = params.first().map_or(DType::F32, |p| p.dtype());
    let step = &step.convert(pd)?;
    let lr = learning_rate(step, t)?;
    let norm = global_norm(grads)?.convert(pd)?;
    let clip = if t.clip_norm > 0.0 {
        // min(1, c / ‖g‖)
        Some(
            norm.scalar_like(t.clip_norm)?
                .div(&norm.max_scalar(1e-12)?)?
                .min_scalar(1.0)?,
        )
    } else {
        None
    };
    let count = step.add_scalar(1.0)?;
    let mut new_params = Vec::with_capacity(params.len());
    let mut new_state = Vec::with_capacity(state.len());
    let mut si = 0;
    let mut next = || {
        si += 1;
        state[si - 1].clone()
    };
    for ((s, p), g) in specs.iter().zip(params).zip(grads) {
        let g = match &clip {
            Some(c) => g.mul(&c.convert(g.dtype())?)?,
            None => g.clone(),
        };
        let dt = p.dtype();
        let (b1, b2) = (t.beta1, t.beta2);
        let upd = match t.optimizer {
            OptimizerKind::Adamw => {
                let (m, v) = (next(), next());
                let m2 = m.mul_scalar(b1)?.add(&g.mul_scalar(1.0 - b1)?)?;
                let v2 = v.mul_scalar(b2)?.add(&g.square()?.mul_scalar(1.0 - b2)?)?;
                // Bias corrections 1 - β^t.
                let c1 = count
                    .mul_scalar(b1.ln())?
                    .exp()?
                    .neg()?
                    .add_scalar(1.0)?
                    .convert(dt)?;
                let c2 = count
                    .mul_scalar(b2.ln())?
                    .exp()?
                    .neg()?
                    .add_scalar(1.0)?
                    .convert(dt)?;
                let u = m2.div(&c1)?.div(&v2.div(&c2)?.sqrt()?.add_scalar(t.eps)?)?;
                new_state.push(m2);
                new_state.push(v2);
                u
            }
            OptimizerKind::Adafactorw => {
                let m = if t.momentum { Some(next()) } else { None };
                let g2 = g.square()?.add_scalar(1e-30)?;
                let r = p.rank();
                let u = if factored(s) {
                    let (vr, vc) = (next(), next());
                    let vr2 = vr
                        .mul_scalar(b2)?
                        .add(&g2.mean(&[r - 1])?.mul_scalar(1.0 - b2)?)?;
                    let vc2 = vc
                        .mul_scalar(b2)?
                        .add(&g2.mean(&[r - 2])?.mul_scalar(1.0 - b2)?)?;
                    // v̂_ij = vr_i · vc_j / mean_i(vr)
                    let mut rshape = vr2.shape().to_vec();
                    rshape.push(1);
                    let mut cshape = vc2.shape().to_vec();
                    cshape.insert(r - 2, 1);
                    let denom = vr2.mean_keepdims(&[r - 2])?;
                    let vhat = vr2
                        .div(&denom)?
                        .reshape(&rshape)?
                        .mul(&vc2.reshape(&cshape)?)?;
                    new_state.push(vr2);
                    new_state.push(vc2);
                    g.mul(&vhat.rsqrt()?)?
                } else {
                    let v = next();
                    let v2 = v.mul_scalar(b2)?.add(&g2.mul_scalar(1.0 - b2)?)?;
                    new_state.push(v2.clone());
                    g.mul(&v2.rsqrt()?)?
                };
                // Update clipping: divide by max(1, RMS(u) / d), the RMS taken per layer.
                let u = if t.update_clip > 0.0 {
                    let lead = usize::from(s.is_stacked());
                    let rms = u
                        .square()?
                        .mean_keepdims(&(lead..r).collect::<Vec<_>>())?
                        .sqrt()?;
                    u.div(&rms.div_scalar(t.update_clip)?.max_scalar(1.0)?)?
                } else {
                    u
                };
                match m {
                    Some(m) => {
                        let m2 = m.mul_scalar(b1)?.add(&u.mul_scalar(1.0 - b1)?)?;
                        // The momentum slot sits before the second-moment slots.
                        let at = new_state.len() - if factored(s) { 2 } else { 1 };
                        new_state.insert(at, m2.clone());
                        m2
                    }
                    None => u,
                }
            }
        };
        let upd = if t.weight_decay > 0.0 && !s.no_decay {
            upd.add(&p.mul_scalar(t.weight_decay)?)?
        } else {
            upd
        };
        new_params.push(p.sub(&upd.mul(&lr.convert(dt)?)?)?);
    }
    Ok((new_params, new_state, lr, norm))
}
