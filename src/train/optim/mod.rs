//! Optimizers as graph code: AdamW and AdaFactorW (Loshchilov & Hutter, 2019; Shazeer & Stern,
//! 2018), learning-rate schedules and global-norm clipping. Weight decay is decoupled and skips
//! norms, biases and the temperature (`ParamSpec::no_decay`).

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::model::config::{OptimizerKind, Schedule, TrainConfig};
use crate::model::{names, Init, ParamSpec};
use crate::trace::Tensor;

mod adafactor;
mod adamw;

/// One state slot of a parameter: its name (`m`, `v`, `vr`, `vc`), shape and logical axes.
pub(crate) struct Slot {
    pub name: &'static str,
    pub shape: Vec<i64>,
    pub axes: Vec<String>,
}

impl Slot {
    /// A slot laid out like its parameter.
    fn like(name: &'static str, s: &ParamSpec) -> Slot {
        Slot {
            name,
            shape: s.shape.clone(),
            axes: s.axes.clone(),
        }
    }
}

/// The state slots `t`'s optimizer keeps for parameter `s`, in order.
fn slots(s: &ParamSpec, t: &TrainConfig) -> Vec<Slot> {
    match t.optimizer {
        OptimizerKind::Adamw => adamw::slots(s),
        OptimizerKind::Adafactorw => adafactor::slots(s, t),
    }
}

/// The optimizer state's specs, named `opt/<slot>/<param>`, laid out like their parameters.
pub fn state_specs(specs: &[ParamSpec], t: &TrainConfig) -> Vec<ParamSpec> {
    specs
        .iter()
        .flat_map(|s| {
            slots(s, t).into_iter().map(move |slot| ParamSpec {
                name: names::slot(slot.name, &s.name),
                shape: slot.shape,
                init: Init::Zeros,
                axes: slot.axes,
                no_decay: true,
            })
        })
        .collect()
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
        None => Err(crate::Error::invalid(
            "global norm of no gradients",
            "the model has no trainable parameters",
        )),
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
    let mut at = 0;
    for ((s, p), g) in specs.iter().zip(params).zip(grads) {
        let g = match &clip {
            Some(c) => g.mul(&c.convert(g.dtype())?)?,
            None => g.clone(),
        };
        let n = slots(s, t).len();
        let mine = state.get(at..at + n).ok_or_else(|| {
            Error::invalid(
                format!("optimizer state for `{}`", s.name),
                format!(
                    "give the state `state_specs` lays out: {} slot(s) for this parameter",
                    n
                ),
            )
        })?;
        at += n;
        let (upd, slots) = match t.optimizer {
            OptimizerKind::Adamw => adamw::direction(p, &g, mine, &count, t)?,
            OptimizerKind::Adafactorw => adafactor::direction(s, p, &g, mine, t)?,
        };
        new_state.extend(slots);
        // Decoupled weight decay, then the step.
        let upd = if t.weight_decay > 0.0 && !s.no_decay {
            upd.add(&p.mul_scalar(t.weight_decay)?)?
        } else {
            upd
        };
        new_params.push(p.sub(&upd.mul(&lr.convert(p.dtype())?)?)?);
    }
    Ok((new_params, new_state, lr, norm))
}
