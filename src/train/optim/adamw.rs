//! AdamW (Loshchilov & Hutter, 2019): first and second moments with bias corrections; the
//! decoupled weight decay is applied by the caller.

use super::Slot;
use crate::error::Result;
use crate::model::config::TrainConfig;
use crate::model::ParamSpec;
use crate::trace::Tensor;

/// `m` and `v`, laid out like the parameter.
pub(super) fn slots(s: &ParamSpec) -> Vec<Slot> {
    vec![Slot::like("m", s), Slot::like("v", s)]
}

/// The update direction `m̂ / (√v̂ + ε)` at step `count` (1-based) and the new `[m, v]`.
pub(super) fn direction(
    p: &Tensor,
    g: &Tensor,
    state: &[Tensor],
    count: &Tensor,
    t: &TrainConfig,
) -> Result<(Tensor, Vec<Tensor>)> {
    let dt = p.dtype();
    let (b1, b2) = (t.beta1, t.beta2);
    let (m, v) = (&state[0], &state[1]);
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
    Ok((u, vec![m2, v2]))
}
