//! AdaFactorW (Shazeer & Stern, 2018, with decoupled weight decay as BASIC trains): a factored
//! second moment for matrices (row and column means), update clipping by the per-layer RMS, and
//! optional momentum on the clipped update.

use super::Slot;
use crate::error::Result;
use crate::model::config::TrainConfig;
use crate::model::ParamSpec;
use crate::trace::Tensor;

/// Whether the second moment is factored (matrices and up; a stacked parameter by the rank of one
/// layer, so that a scanned stack is optimized like its layers).
fn factored(s: &ParamSpec) -> bool {
    s.layer_shape().len() >= 2
}

/// `m` (with momentum), then `vr` and `vc` (factored) or `v`.
pub(super) fn slots(s: &ParamSpec, t: &TrainConfig) -> Vec<Slot> {
    let mut out = Vec::new();
    if t.momentum {
        out.push(Slot::like("m", s));
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
        out.push(Slot {
            name: "vr",
            shape: row,
            axes: ax(r - 1),
        });
        out.push(Slot {
            name: "vc",
            shape: col,
            axes: ax(r - 2),
        });
    } else {
        out.push(Slot::like("v", s));
    }
    out
}

/// The update direction and the new state, in [`slots`] order.
pub(super) fn direction(
    s: &ParamSpec,
    p: &Tensor,
    g: &Tensor,
    state: &[Tensor],
    t: &TrainConfig,
) -> Result<(Tensor, Vec<Tensor>)> {
    let (b1, b2) = (t.beta1, t.beta2);
    let (m, moments) = if t.momentum {
        (Some(&state[0]), &state[1..])
    } else {
        (None, state)
    };
    let g2 = g.square()?.add_scalar(1e-30)?;
    let r = p.rank();
    let mut new_moments = Vec::with_capacity(2);
    let u = if factored(s) {
        let (vr, vc) = (&moments[0], &moments[1]);
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
        new_moments.push(vr2);
        new_moments.push(vc2);
        g.mul(&vhat.rsqrt()?)?
    } else {
        let v2 = moments[0].mul_scalar(b2)?.add(&g2.mul_scalar(1.0 - b2)?)?;
        new_moments.push(v2.clone());
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
    Ok(match m {
        Some(m) => {
            let m2 = m.mul_scalar(b1)?.add(&u.mul_scalar(1.0 - b1)?)?;
            let mut state = vec![m2.clone()];
            state.extend(new_moments);
            (m2, state)
        }
        None => (u, new_moments),
    })
}
