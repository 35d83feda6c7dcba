//! Random bits, optimization barriers, stop-gradient, sharding constraints and the fixed-length
//! loop (`scan`).

use crate::dtype::{DType, TensorType};
use crate::error::{shape_err, Error, Result};
use crate::ir::{Op, OptimizationBarrier, RngBitGenerator, Scan, ShardingConstraint, StopGradient};
use crate::lower::{i64_array, ty, Emitter};
use crate::trace::Tensor;

use super::{show, Lowering, Rule, Vjp};

/// Output types of a scan node (see [`Scan`]).
fn scan_outputs(s: &Scan, ins: &[TensorType]) -> Result<Vec<TensorType>> {
    let name = "scan";
    let body_in = s.body.param_types();
    let body_out = s.body.output_types();
    let (nc, nk, nx) = (s.num_consts, s.num_carry, s.num_xs);
    if ins.len() != nc + nk + nx || body_in.len() != 1 + nc + nk + nx || body_out.len() < nk {
        return shape_err(
            name,
            format!(
                "operands {} do not match the body `{}`",
                show(ins),
                s.body.name
            ),
        );
    }
    for (i, t) in ins.iter().enumerate() {
        let want = if i < nc + nk {
            body_in[1 + i].clone()
        } else {
            let mut shape = vec![s.length];
            shape.extend_from_slice(&body_in[1 + i].shape);
            TensorType::new(body_in[1 + i].dtype, &shape)
        };
        if *t != want {
            return shape_err(
                name,
                format!("operand {i} is {t} but the body needs {want}"),
            );
        }
    }
    let stacked = |t: &TensorType| {
        let mut shape = vec![s.length];
        shape.extend_from_slice(&t.shape);
        TensorType::new(t.dtype, &shape)
    };
    let mut out: Vec<TensorType> = body_out[..nk].to_vec();
    out.extend(body_out[nk..].iter().map(stacked));
    if s.save_carries {
        out.extend(body_in[1 + nc..1 + nc + nk].iter().map(stacked));
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
fn scan_vjp(
    s: &Scan,
    ins: &[Tensor],
    outs: &[Tensor],
    cots: &[Option<Tensor>],
) -> Result<Vec<Option<Tensor>>> {
    let (nc, nk, nx) = (s.num_consts, s.num_carry, s.num_xs);
    let ny = s.body.outputs.len() - nk;
    if !s.save_carries || outs.len() != nk + ny + nk {
        return Err(Error::Internal(format!(
            "the scan over `{}` is differentiated without its per-step carries",
            s.body.name
        )));
    }
    let b = outs[0].builder();
    let saved: Vec<Tensor> = outs[nk + ny..].to_vec();
    let consts = &ins[..nc];
    let xs = &ins[nc + nk..];
    let carry_cot: Vec<Tensor> = (0..nk)
        .map(|k| or_zeros(&cots[k], &outs[k]))
        .collect::<Result<_>>()?;
    let y_cot: Vec<Tensor> = (0..ny)
        .map(|j| or_zeros(&cots[nk + j], &outs[nk + j]))
        .collect::<Result<_>>()?;
    let acc0: Vec<Tensor> = consts
        .iter()
        .map(|c| c.zeros_like())
        .collect::<Result<_>>()?;
    let mut carry: Vec<Tensor> = carry_cot;
    carry.extend(acc0);
    let mut bxs: Vec<Tensor> = xs.to_vec();
    bxs.extend(saved);
    bxs.extend(y_cot);
    let body = s.body.clone();
    let (fin, x_cots) = b.scan(
        s.length,
        consts,
        &carry,
        &bxs,
        !s.reverse,
        |index, c, carry, xsl| {
            let sub = index.builder();
            let (kc, acc) = carry.split_at(nk);
            let x_i = &xsl[..nx];
            let saved_i = &xsl[nx..nx + nk];
            let ycot_i = &xsl[nx + nk..];
            let mut step_in = vec![index.clone()];
            step_in.extend_from_slice(c);
            step_in.extend_from_slice(saved_i);
            step_in.extend_from_slice(x_i);
            let step_out = sub.inline(&body, &step_in)?;
            let out_cots: Vec<Option<Tensor>> =
                kc.iter().chain(ycot_i).map(|t| Some(t.clone())).collect();
            let mut wrt: Vec<Tensor> = c.to_vec();
            wrt.extend_from_slice(saved_i);
            wrt.extend_from_slice(x_i);
            let grads = crate::autodiff::vjp(&step_out, &out_cots, &wrt)?;
            let mut new_carry = Vec::with_capacity(nk + nc);
            for k in 0..nk {
                new_carry.push(or_zeros(&grads[nc + k], &saved_i[k])?);
            }
            for (i, a) in acc.iter().enumerate() {
                new_carry.push(match &grads[i] {
                    Some(gc) if a.dtype().is_float() => a.add(gc)?,
                    _ => a.clone(),
                });
            }
            let ys = (0..nx)
                .map(|j| or_zeros(&grads[nc + nk + j], &x_i[j]))
                .collect::<Result<Vec<_>>>()?;
            Ok((new_carry, ys))
        },
    )?;
    let float = |t: &Tensor| t.dtype().is_float();
    let mut res: Vec<Option<Tensor>> = Vec::with_capacity(ins.len());
    for (i, c) in consts.iter().enumerate() {
        res.push(float(c).then(|| fin[nk + i].clone()));
    }
    for k in 0..nk {
        res.push(float(&ins[nc + k]).then(|| fin[k].clone()));
    }
    for (j, x) in xs.iter().enumerate() {
        res.push(float(x).then(|| x_cots[j].clone()));
    }
    Ok(res)
}

fn constant_i32(e: &mut Emitter, v: i64) -> String {
    let s = TensorType::scalar(DType::S32);
    e.op(
        "stablehlo.constant",
        &[],
        &[],
        &format!("value = dense<{v}> : tensor<i32>"),
        &[s],
    )
    .remove(0)
}

/// Zeros of type `t` as a broadcast scalar.
fn zeros(e: &mut Emitter, t: &TensorType) -> String {
    let s = TensorType::scalar(t.dtype);
    let lit = match t.dtype {
        DType::Pred => "false",
        DType::BF16 => "0x0000",
        d if d.is_float() => "0.0",
        _ => "0",
    };
    let z = e
        .op(
            "stablehlo.constant",
            &[],
            &[],
            &format!("value = dense<{lit}> : {}", ty(&s)),
            std::slice::from_ref(&s),
        )
        .remove(0);
    if t.rank() == 0 {
        return z;
    }
    e.op(
        "stablehlo.broadcast_in_dim",
        &[z],
        &[s],
        "broadcast_dimensions = array<i64>",
        std::slice::from_ref(t),
    )
    .remove(0)
}

fn lower_scan(
    e: &mut Emitter,
    s: &Scan,
    ins: &[String],
    in_tys: &[TensorType],
    out_tys: &[TensorType],
) -> Result<Vec<String>> {
    let (nc, nk, nx) = (s.num_consts, s.num_carry, s.num_xs);
    let ny = s.body.outputs.len() - nk;
    let i32t = TensorType::scalar(DType::S32);
    let ys_tys: Vec<TensorType> = out_tys[nk..nk + ny].to_vec();
    let saved_tys: Vec<TensorType> = if s.save_carries {
        out_tys[nk + ny..].to_vec()
    } else {
        vec![]
    };
    let start = constant_i32(e, 0);
    let mut operands = vec![start];
    operands.extend_from_slice(ins);
    for t in ys_tys.iter().chain(&saved_tys) {
        operands.push(zeros(e, t));
    }
    let mut loop_tys = vec![i32t.clone()];
    loop_tys.extend_from_slice(in_tys);
    loop_tys.extend(ys_tys.iter().cloned());
    loop_tys.extend(saved_tys.iter().cloned());
    let length = s.length;
    let lt = loop_tys.clone();
    let cond = Box::new(move |e: &mut Emitter, a: &[String]| {
        let lim = constant_i32(e, length);
        let p = e.op(
            "stablehlo.compare",
            &[a[0].clone(), lim],
            &[
                TensorType::scalar(DType::S32),
                TensorType::scalar(DType::S32),
            ],
            "comparison_direction = #stablehlo<comparison_direction LT>",
            &[TensorType::scalar(DType::Pred)],
        );
        Ok((p, vec![TensorType::scalar(DType::Pred)]))
    });
    let body_graph = s.body.clone();
    let reverse = s.reverse;
    let save = s.save_carries;
    let body = Box::new(move |e: &mut Emitter, a: &[String]| {
        let i32t = TensorType::scalar(DType::S32);
        let i = a[0].clone();
        let idx = if reverse {
            let last = constant_i32(e, length - 1);
            e.op(
                "stablehlo.subtract",
                &[last, i.clone()],
                &[i32t.clone(), i32t.clone()],
                "",
                std::slice::from_ref(&i32t),
            )
            .remove(0)
        } else {
            i.clone()
        };
        let zero = constant_i32(e, 0);
        let consts = &a[1..1 + nc];
        let carry = &a[1 + nc..1 + nc + nk];
        let xs = &a[1 + nc + nk..1 + nc + nk + nx];
        let accs = &a[1 + nc + nk + nx..];
        let mut params = vec![idx.clone()];
        params.extend_from_slice(consts);
        params.extend_from_slice(carry);
        for (j, x) in xs.iter().enumerate() {
            let xt = &lt[1 + nc + nk + j];
            let mut sizes = xt.shape.clone();
            sizes[0] = 1;
            let mut operands = vec![x.clone(), idx.clone()];
            operands.extend(std::iter::repeat_n(zero.clone(), xt.rank() - 1));
            let mut tys = vec![xt.clone()];
            tys.extend(std::iter::repeat_n(i32t.clone(), xt.rank()));
            let slice_t = TensorType::new(xt.dtype, &sizes);
            let sl = e
                .op(
                    "stablehlo.dynamic_slice",
                    &operands,
                    &tys,
                    &format!("slice_sizes = {}", i64_array(&sizes)),
                    std::slice::from_ref(&slice_t),
                )
                .remove(0);
            let item_t = TensorType::new(xt.dtype, &xt.shape[1..]);
            params.push(
                e.op("stablehlo.reshape", &[sl], &[slice_t], "", &[item_t])
                    .remove(0),
            );
        }
        let outs = e.graph_body(&body_graph, &params)?;
        let mut rets = vec![];
        let one = constant_i32(e, 1);
        rets.push(
            e.op(
                "stablehlo.add",
                &[i, one],
                &[i32t.clone(), i32t.clone()],
                "",
                std::slice::from_ref(&i32t),
            )
            .remove(0),
        );
        rets.extend_from_slice(consts);
        rets.extend_from_slice(&outs[..nk]);
        rets.extend_from_slice(xs);
        let updates: Vec<(String, String, TensorType)> = outs[nk..]
            .iter()
            .zip(accs)
            .enumerate()
            .map(|(j, (y, acc))| (y.clone(), acc.clone(), lt[1 + nc + nk + nx + j].clone()))
            .chain(if save {
                carry
                    .iter()
                    .zip(&accs[ny..])
                    .enumerate()
                    .map(|(k, (c, acc))| {
                        (
                            c.clone(),
                            acc.clone(),
                            lt[1 + nc + nk + nx + ny + k].clone(),
                        )
                    })
                    .collect::<Vec<_>>()
            } else {
                vec![]
            })
            .collect();
        for (val, acc, acc_t) in updates {
            let mut one_shape = acc_t.shape.clone();
            one_shape[0] = 1;
            let item_t = TensorType::new(acc_t.dtype, &acc_t.shape[1..]);
            let one_t = TensorType::new(acc_t.dtype, &one_shape);
            let r = e
                .op(
                    "stablehlo.reshape",
                    &[val],
                    &[item_t],
                    "",
                    std::slice::from_ref(&one_t),
                )
                .remove(0);
            let mut operands = vec![acc, r, idx.clone()];
            operands.extend(std::iter::repeat_n(zero.clone(), acc_t.rank() - 1));
            let mut tys = vec![acc_t.clone(), one_t];
            tys.extend(std::iter::repeat_n(i32t.clone(), acc_t.rank()));
            rets.push(
                e.op(
                    "stablehlo.dynamic_update_slice",
                    &operands,
                    &tys,
                    "",
                    std::slice::from_ref(&acc_t),
                )
                .remove(0),
            );
        }
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
    let mut out: Vec<String> = results[1 + nc..1 + nc + nk].to_vec();
    out.extend_from_slice(&results[1 + nc + nk + nx..]);
    Ok(out)
}

impl Rule for RngBitGenerator {
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
