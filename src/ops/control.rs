//! Random bits, optimization barriers, stop-gradient, sharding constraints and the fixed-length
//! loop (`scan`).

use crate::dtype::{DType, TensorType};
use crate::error::{shape_err, Error, Result};
use crate::ir::{Op, OptimizationBarrier, RngBitGenerator, Scan, ShardingConstraint, StopGradient};
use crate::lower::Emitter;
use crate::trace::Tensor;

use super::{show, Lowering, Rule, Vjp};

/// Output types of a scan node (see [`Scan`] and [`ScanLayout`]).
fn scan_outputs(s: &Scan, ins: &[TensorType]) -> Result<Vec<TensorType>> {
    let name = "scan";
    let l = s.layout();
    let body_in = s.body.param_types();
    let body_out = s.body.output_types();
    let mismatch = || {
        shape_err(
            name,
            format!(
                "operands {} do not match the body `{}`",
                show(ins),
                s.body.name
            ),
        )
    };
    if ins.len() != l.operands() || body_in.len() != 1 + l.operands() || body_out.len() < l.carry {
        return mismatch();
    }
    let body_ins = l.ins(&body_in[1..])?;
    let ops = l.ins(ins)?;
    let stacked = |t: &TensorType| {
        let mut shape = vec![s.length];
        shape.extend_from_slice(&t.shape);
        TensorType::new(t.dtype, &shape)
    };
    let want = body_ins
        .consts
        .iter()
        .chain(body_ins.carry)
        .cloned()
        .chain(body_ins.xs.iter().map(stacked));
    let got = ops.consts.iter().chain(ops.carry).chain(ops.xs);
    for (i, (t, want)) in got.zip(want).enumerate() {
        if *t != want {
            return shape_err(
                name,
                format!("operand {i} is {t} but the body needs {want}"),
            );
        }
    }
    let (carry, ys) = l.body_outs(&body_out)?;
    let mut out: Vec<TensorType> = carry.to_vec();
    out.extend(ys.iter().map(stacked));
    if l.saved {
        out.extend(body_ins.carry.iter().map(stacked));
    }
    Ok(out)
}

fn or_zeros(c: &Option<Tensor>, like: &Tensor) -> Result<Tensor> {
    match c {
        Some(t) => Ok(t.clone()),
        None => like.zeros_like(),
    }
}

/// The derivative of a scan is a scan in the opposite direction. The forward scan keeps the
/// carry entering each step (the sweep swaps in [`Rule::for_vjp`]'s scan before it reads the
/// graph); each backward step recomputes its forward step from that carry (so only carries are
/// stored, never a step's activations) and backpropagates through it.
///
/// The backward scan's carry is `(carry cotangent, one accumulator per constant)`; its inputs
/// are `(xs, saved carries, y cotangents)` and its per-step outputs the xs' cotangents.
fn scan_vjp(
    s: &Scan,
    ins: &[Tensor],
    outs: &[Tensor],
    cots: &[Option<Tensor>],
) -> Result<Vec<Option<Tensor>>> {
    let l = s.layout();
    if !l.saved || outs.len() != l.results() {
        return Err(Error::Internal(format!(
            "the scan over `{}` is differentiated without its per-step carries",
            s.body.name
        )));
    }
    let b = outs[0].builder();
    let fwd_in = l.ins(ins)?;
    let fwd_out = l.outs(outs)?;
    let out_cots = l.outs(cots)?;
    let carry_cot: Vec<Tensor> = out_cots
        .carry
        .iter()
        .zip(fwd_out.carry)
        .map(|(c, o)| or_zeros(c, o))
        .collect::<Result<_>>()?;
    let y_cot: Vec<Tensor> = out_cots
        .ys
        .iter()
        .zip(fwd_out.ys)
        .map(|(c, o)| or_zeros(c, o))
        .collect::<Result<_>>()?;
    let acc0: Vec<Tensor> = fwd_in
        .consts
        .iter()
        .map(|c| c.zeros_like())
        .collect::<Result<_>>()?;
    let carry: Vec<Tensor> = carry_cot.into_iter().chain(acc0).collect();
    let bxs: Vec<Tensor> = [fwd_in.xs, fwd_out.saved, &y_cot].concat();
    let body = s.body.clone();
    let (nk, nx) = (l.carry, l.xs);
    let (fin, x_cots) = b.scan(
        s.length,
        fwd_in.consts,
        &carry,
        &bxs,
        !s.reverse,
        |index, c, carry, xsl| {
            let sub = index.builder();
            let (kc, acc) = carry.split_at(nk);
            let (x_i, rest) = xsl.split_at(nx);
            let (saved_i, ycot_i) = rest.split_at(nk);
            let step_in = [std::slice::from_ref(index), c, saved_i, x_i].concat();
            let step_out = sub.inline(&body, &step_in)?;
            let out_cots: Vec<Option<Tensor>> =
                kc.iter().chain(ycot_i).map(|t| Some(t.clone())).collect();
            let wrt = [c, saved_i, x_i].concat();
            let grads = crate::autodiff::vjp(&step_out, &out_cots, &wrt)?;
            let g = l.ins(&grads)?;
            let mut new_carry = Vec::with_capacity(nk + c.len());
            for (gk, saved) in g.carry.iter().zip(saved_i) {
                new_carry.push(or_zeros(gk, saved)?);
            }
            for (a, gc) in acc.iter().zip(g.consts) {
                new_carry.push(match gc {
                    Some(gc) if a.dtype().is_float() => a.add(gc)?,
                    _ => a.clone(),
                });
            }
            let ys =
                g.xs.iter()
                    .zip(x_i)
                    .map(|(gx, x)| or_zeros(gx, x))
                    .collect::<Result<Vec<_>>>()?;
            Ok((new_carry, ys))
        },
    )?;
    let (carry_fin, const_fin) = fin.split_at(nk);
    let float = |t: &Tensor| t.dtype().is_float();
    let grad = |x: &Tensor, g: &Tensor| float(x).then(|| g.clone());
    let mut res: Vec<Option<Tensor>> = Vec::with_capacity(ins.len());
    res.extend(fwd_in.consts.iter().zip(const_fin).map(|(x, g)| grad(x, g)));
    res.extend(fwd_in.carry.iter().zip(carry_fin).map(|(x, g)| grad(x, g)));
    res.extend(fwd_in.xs.iter().zip(&x_cots).map(|(x, g)| grad(x, g)));
    Ok(res)
}

/// A scan as a `stablehlo.while` over `(counter, operands..., accumulators...)`: each step
/// slices its row of every `xs` array, runs the body, and writes its `ys` (and, when kept, the
/// carry it started from) into row `i` of the accumulators. A reverse scan walks the rows from
/// the last.
fn lower_scan(
    e: &mut Emitter,
    s: &Scan,
    ins: &[String],
    in_tys: &[TensorType],
    out_tys: &[TensorType],
) -> Result<Vec<String>> {
    let l = s.layout();
    let out_t = l.outs(out_tys)?;
    let acc_tys: Vec<TensorType> = [out_t.ys, out_t.saved].concat();
    let mut operands = vec![e.constant_i32(0)];
    operands.extend_from_slice(ins);
    for t in &acc_tys {
        operands.push(e.zeros(t));
    }
    let i32t = TensorType::scalar(DType::S32);
    let loop_tys: Vec<TensorType> = [std::slice::from_ref(&i32t), in_tys, &acc_tys].concat();
    let length = s.length;
    let cond = Box::new(move |e: &mut Emitter, a: &[String]| {
        let lim = e.constant_i32(length);
        let s32 = TensorType::scalar(DType::S32);
        let pred = TensorType::scalar(DType::Pred);
        let attr = "comparison_direction = #stablehlo<comparison_direction LT>";
        let p = e.op(
            "stablehlo.compare",
            &[a[0].clone(), lim],
            &[s32.clone(), s32],
            attr,
            std::slice::from_ref(&pred),
        );
        Ok((p, vec![pred]))
    });
    let (scan, lt) = (s.clone(), loop_tys.clone());
    let body = Box::new(move |e: &mut Emitter, a: &[String]| {
        let rets = scan_step(e, &scan, &lt, a)?;
        Ok((rets, lt.clone()))
    });
    let results = e.op_with_regions(
        "stablehlo.while",
        &operands,
        &loop_tys,
        vec![(loop_tys.clone(), cond), (loop_tys.clone(), body)],
        "",
        &loop_tys,
    )?;
    let fin = l.loop_state(&results)?;
    Ok([fin.ins.carry, fin.ys, fin.saved].concat())
}

/// One step of [`lower_scan`]'s loop: from the loop state `a` (of types `lt`) to the next.
fn scan_step(e: &mut Emitter, s: &Scan, lt: &[TensorType], a: &[String]) -> Result<Vec<String>> {
    let l = s.layout();
    let (st, ty) = (l.loop_state(a)?, l.loop_state(lt)?);
    let i32t = TensorType::scalar(DType::S32);
    let i = st.index.clone();
    let idx = if s.reverse {
        let last = e.constant_i32(s.length - 1);
        e.binary("stablehlo.subtract", &last, &i, &i32t)
    } else {
        i.clone()
    };
    let zero = e.constant_i32(0);
    let mut params = vec![idx.clone()];
    params.extend_from_slice(st.ins.consts);
    params.extend_from_slice(st.ins.carry);
    for (x, xt) in st.ins.xs.iter().zip(ty.ins.xs) {
        params.push(e.dynamic_row(x, xt, &idx, &zero));
    }
    let outs = e.graph_body(&s.body, &params)?;
    let (carry, ys) = l.body_outs(&outs)?;
    let one = e.constant_i32(1);
    let mut rets = vec![e.binary("stablehlo.add", &i, &one, &i32t)];
    rets.extend_from_slice(st.ins.consts);
    rets.extend_from_slice(carry);
    rets.extend_from_slice(st.ins.xs);
    // Row `idx` of each accumulator: the step's ys, then the carry it started from.
    let rows = ys.iter().zip(st.ys).zip(ty.ys);
    let saved = st.ins.carry.iter().zip(st.saved).zip(ty.saved);
    for ((row, acc), acc_t) in rows.chain(saved) {
        rets.push(e.update_row(acc, acc_t, row, &idx, &zero));
    }
    Ok(rets)
}

impl Rule for RngBitGenerator {
    fn name(&self) -> String {
        "rng_bit_generator".into()
    }

    fn infer(&self, ins: &[TensorType]) -> Result<Vec<TensorType>> {
        if ins.len() != 1 || ins[0] != TensorType::new(DType::U64, &[2]) {
            return shape_err(
                "rng_bit_generator",
                format!("takes one u64[2] key, got {}", show(ins)),
            );
        }
        Ok(vec![
            ins[0].clone(),
            TensorType::new(DType::U32, &self.shape),
        ])
    }

    fn vjp(&self, _: &Vjp) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![None])
    }

    fn lower(&self, e: &mut Emitter, l: &Lowering) -> Result<Vec<String>> {
        let attr = "rng_algorithm = #stablehlo<rng_algorithm THREE_FRY>";
        Ok(l.op(e, "stablehlo.rng_bit_generator", attr))
    }
}

impl Rule for OptimizationBarrier {
    fn name(&self) -> String {
        "optimization_barrier".into()
    }

    fn infer(&self, ins: &[TensorType]) -> Result<Vec<TensorType>> {
        Ok(ins.to_vec())
    }

    /// The barrier is the identity: cotangents pass straight through.
    fn vjp(&self, v: &Vjp) -> Result<Vec<Option<Tensor>>> {
        Ok(v.cots.to_vec())
    }

    fn lower(&self, e: &mut Emitter, l: &Lowering) -> Result<Vec<String>> {
        Ok(l.op(e, "stablehlo.optimization_barrier", ""))
    }
}

impl Rule for StopGradient {
    fn name(&self) -> String {
        "stop_gradient".into()
    }

    fn infer(&self, ins: &[TensorType]) -> Result<Vec<TensorType>> {
        if ins.len() != 1 {
            return shape_err(
                "stop_gradient",
                format!("takes one operand, got {}", show(ins)),
            );
        }
        Ok(ins.to_vec())
    }

    fn vjp(&self, _: &Vjp) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![None])
    }

    /// Only the sweep looks at it: the program uses the value as it is.
    fn lower(&self, _: &mut Emitter, l: &Lowering) -> Result<Vec<String>> {
        Ok(vec![l.ins[0].clone()])
    }
}

impl Rule for Scan {
    fn name(&self) -> String {
        "scan".into()
    }

    /// The body's, as many times as the loop runs.
    fn flops(&self, _ins: &[TensorType], _outs: &[TensorType]) -> f64 {
        self.length as f64 * super::flops(&self.body)
    }

    fn infer(&self, ins: &[TensorType]) -> Result<Vec<TensorType>> {
        scan_outputs(self, ins)
    }

    fn vjp(&self, v: &Vjp) -> Result<Vec<Option<Tensor>>> {
        scan_vjp(self, v.ins, v.outs, v.cots)
    }

    fn lower(&self, e: &mut Emitter, l: &Lowering) -> Result<Vec<String>> {
        lower_scan(e, self, l.ins, l.in_tys, l.out_tys)
    }

    fn for_vjp(&self) -> Option<Op> {
        (!self.save_carries).then(|| {
            Scan {
                save_carries: true,
                ..self.clone()
            }
            .into()
        })
    }
}

impl Rule for ShardingConstraint {
    fn name(&self) -> String {
        "sharding_constraint".into()
    }

    fn infer(&self, ins: &[TensorType]) -> Result<Vec<TensorType>> {
        if ins.len() != 1 || self.axes.len() != ins[0].rank() {
            return shape_err(
                "sharding_constraint",
                format!(
                    "needs one logical axis entry per dimension, got {:?} for {}",
                    self.axes,
                    show(ins)
                ),
            );
        }
        Ok(ins.to_vec())
    }

    /// The cotangent is laid out like the value.
    fn vjp(&self, v: &Vjp) -> Result<Vec<Option<Tensor>>> {
        match &v.cots[0] {
            Some(g) => Ok(vec![Some(g.constrain_axes(&self.axes)?)]),
            None => Ok(vec![None]),
        }
    }

    fn lower(&self, e: &mut Emitter, l: &Lowering) -> Result<Vec<String>> {
        e.sharding_constraint(&l.ins[0], &l.in_tys[0], &self.axes)
    }
}
