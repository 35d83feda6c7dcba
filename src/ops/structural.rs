//! Ops that move data without arithmetic: broadcast, reshape, transpose, reverse, slices,
//! concatenation, padding, row gather and scatter-add.

use crate::dtype::{DType, TensorType};
use crate::error::{shape_err, Error, Result};
use crate::ir::Op;
use crate::lower::{i64_array, list, Emitter};
use crate::trace::Tensor;

use super::{arity, cot0, show};

fn check_perm(name: &str, perm: &[usize], rank: usize) -> Result<()> {
    let mut seen = vec![false; rank];
    if perm.len() != rank {
        return shape_err(
            name,
            format!("{perm:?} is not a permutation of {rank} dimensions"),
        );
    }
    for &p in perm {
        if p >= rank || seen[p] {
            return shape_err(
                name,
                format!("{perm:?} is not a permutation of {rank} dimensions"),
            );
        }
        seen[p] = true;
    }
    Ok(())
}

fn index_operands(name: &str, idx: &[TensorType], rank: usize) -> Result<()> {
    if idx.len() != rank {
        return shape_err(
            name,
            format!("needs {rank} start indices, got {}", idx.len()),
        );
    }
    for t in idx {
        if t.rank() != 0 || !matches!(t.dtype, DType::S32 | DType::S64 | DType::U32) {
            return shape_err(
                name,
                format!("start indices must be integer scalars, got {t}"),
            );
        }
    }
    if idx.windows(2).any(|w| w[0].dtype != w[1].dtype) {
        return shape_err(name, "start indices must share one integer type");
    }
    Ok(())
}

pub fn infer(op: &Op, ins: &[TensorType]) -> Result<Vec<TensorType>> {
    let name = op.name();
    let name = name.as_str();
    match op {
        Op::BroadcastInDim { dims, shape } => {
            arity(op, ins, 1)?;
            let x = &ins[0];
            if dims.len() != x.rank() {
                return shape_err(name, format!("{} needs {} dims, got {dims:?}", x, x.rank()));
            }
            let mut used = vec![false; shape.len()];
            for (i, &d) in dims.iter().enumerate() {
                if d >= shape.len() || used[d] {
                    return shape_err(name, format!("dims {dims:?} invalid for output {shape:?}"));
                }
                used[d] = true;
                if x.shape[i] != 1 && x.shape[i] != shape[d] {
                    return shape_err(
                        name,
                        format!("cannot broadcast {x} to {shape:?} (dims {dims:?})"),
                    );
                }
            }
            Ok(vec![TensorType::new(x.dtype, shape)])
        }
        Op::Reshape { shape } => {
            arity(op, ins, 1)?;
            let n: i64 = shape.iter().product();
            if shape.iter().any(|&d| d < 0) || n != ins[0].element_count() {
                return shape_err(name, format!("cannot reshape {} to {shape:?}", ins[0]));
            }
            Ok(vec![TensorType::new(ins[0].dtype, shape)])
        }
        Op::Transpose { perm } => {
            arity(op, ins, 1)?;
            check_perm(name, perm, ins[0].rank())?;
            let shape: Vec<i64> = perm.iter().map(|&p| ins[0].shape[p]).collect();
            Ok(vec![TensorType::new(ins[0].dtype, &shape)])
        }
        Op::Reverse { dims } => {
            arity(op, ins, 1)?;
            if dims.iter().any(|&d| d >= ins[0].rank()) {
                return shape_err(name, format!("dims {dims:?} out of range for {}", ins[0]));
            }
            Ok(vec![ins[0].clone()])
        }
        Op::Slice {
            start,
            limit,
            strides,
        } => {
            arity(op, ins, 1)?;
            let x = &ins[0];
            let r = x.rank();
            if start.len() != r || limit.len() != r || strides.len() != r {
                return shape_err(
                    name,
                    format!("start/limit/strides need {r} entries each for {x}"),
                );
            }
            let mut shape = Vec::with_capacity(r);
            for i in 0..r {
                if start[i] < 0 || start[i] > limit[i] || limit[i] > x.shape[i] || strides[i] < 1 {
                    return shape_err(
                        name,
                        format!("[{start:?}, {limit:?}) step {strides:?} is out of bounds for {x}"),
                    );
                }
                shape.push((limit[i] - start[i] + strides[i] - 1) / strides[i]);
            }
            Ok(vec![TensorType::new(x.dtype, &shape)])
        }
        Op::DynamicSlice { sizes } => {
            let x = ins.first().ok_or_else(|| Error::Shape {
                op: name.into(),
                message: "needs an operand".into(),
            })?;
            index_operands(name, &ins[1..], x.rank())?;
            if sizes.len() != x.rank() || sizes.iter().zip(&x.shape).any(|(s, d)| *s < 0 || s > d) {
                return shape_err(name, format!("sizes {sizes:?} do not fit in {x}"));
            }
            Ok(vec![TensorType::new(x.dtype, sizes)])
        }
        Op::DynamicUpdateSlice => {
            if ins.len() < 2 {
                return shape_err(name, "needs an operand and an update");
            }
            let (x, u) = (&ins[0], &ins[1]);
            index_operands(name, &ins[2..], x.rank())?;
            if u.dtype != x.dtype
                || u.rank() != x.rank()
                || u.shape.iter().zip(&x.shape).any(|(a, b)| a > b)
            {
                return shape_err(name, format!("update {u} does not fit in {x}"));
            }
            Ok(vec![x.clone()])
        }
        Op::Concatenate { axis } => {
            let first = ins.first().ok_or_else(|| Error::Shape {
                op: name.into(),
                message: "needs operands".into(),
            })?;
            if *axis >= first.rank() {
                return shape_err(name, format!("axis {axis} out of range for {first}"));
            }
            let mut shape = first.shape.clone();
            shape[*axis] = 0;
            for t in ins {
                let same = t.dtype == first.dtype
                    && t.rank() == first.rank()
                    && (0..t.rank()).all(|i| i == *axis || t.shape[i] == first.shape[i]);
                if !same {
                    return shape_err(
                        name,
                        format!("operands differ beyond axis {axis}: {}", show(ins)),
                    );
                }
                shape[*axis] += t.shape[*axis];
            }
            Ok(vec![TensorType::new(first.dtype, &shape)])
        }
        Op::Pad {
            low,
            high,
            interior,
        } => {
            arity(op, ins, 2)?;
            let (x, v) = (&ins[0], &ins[1]);
            let r = x.rank();
            if v.rank() != 0 || v.dtype != x.dtype {
                return shape_err(
                    name,
                    format!("padding value must be a {} scalar, got {v}", x.dtype),
                );
            }
            if low.len() != r
                || high.len() != r
                || interior.len() != r
                || interior.iter().any(|&i| i < 0)
            {
                return shape_err(
                    name,
                    format!("low/high/interior need {r} entries (interior ≥ 0) for {x}"),
                );
            }
            let shape: Vec<i64> = (0..r)
                .map(|i| low[i] + high[i] + x.shape[i] + (x.shape[i] - 1).max(0) * interior[i])
                .collect();
            if shape.iter().any(|&d| d < 0) {
                return shape_err(
                    name,
                    format!("padding {low:?}/{high:?} crops {x} below zero"),
                );
            }
            Ok(vec![TensorType::new(x.dtype, &shape)])
        }
        Op::Gather => {
            arity(op, ins, 2)?;
            let (table, ids) = (&ins[0], &ins[1]);
            if table.rank() < 1 || !ids.dtype.is_integer() {
                return shape_err(
                    name,
                    format!(
                        "expects a table [V, ...] and integer ids, got {}",
                        show(ins)
                    ),
                );
            }
            let mut shape = ids.shape.clone();
            shape.extend_from_slice(&table.shape[1..]);
            Ok(vec![TensorType::new(table.dtype, &shape)])
        }
        Op::ScatterAdd => {
            arity(op, ins, 3)?;
            let (target, ids, upd) = (&ins[0], &ins[1], &ins[2]);
            let mut want = ids.shape.clone();
            want.extend_from_slice(target.shape.get(1..).unwrap_or(&[]));
            if target.rank() < 1
                || !ids.dtype.is_integer()
                || upd.dtype != target.dtype
                || upd.shape != want
            {
                return shape_err(
                    name,
                    format!(
                        "expects target [V, D...], ids [I...], updates [I..., D...]; got {}",
                        show(ins)
                    ),
                );
            }
            Ok(vec![target.clone()])
        }
        _ => Err(Error::Program(format!("{name} is not structural"))),
    }
}

pub fn vjp(
    op: &Op,
    ins: &[Tensor],
    _outs: &[Tensor],
    cots: &[Option<Tensor>],
) -> Result<Vec<Option<Tensor>>> {
    let g = cot0(op, cots)?;
    let x = &ins[0];
    Ok(match op {
        Op::BroadcastInDim { dims, shape } => {
            // Sum over the dimensions the broadcast created or expanded, then restore x's order.
            let expanded: Vec<usize> = (0..x.rank())
                .filter(|&i| x.shape()[i] == 1 && shape[dims[i]] != 1)
                .map(|i| dims[i])
                .collect();
            let g1 = if expanded.is_empty() {
                g
            } else {
                g.sum_keepdims(&expanded)?
            };
            let new_axes: Vec<usize> = (0..shape.len()).filter(|d| !dims.contains(d)).collect();
            let g2 = g1.sum(&new_axes)?;
            let mut sorted = dims.clone();
            sorted.sort_unstable();
            let perm: Vec<usize> = dims
                .iter()
                .map(|d| sorted.iter().position(|s| s == d).unwrap_or(0))
                .collect();
            vec![Some(g2.transpose(&perm)?.reshape(x.shape())?)]
        }
        Op::Reshape { .. } => vec![Some(g.reshape(x.shape())?)],
        Op::Transpose { perm } => {
            let mut inv = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inv[p] = i;
            }
            vec![Some(g.transpose(&inv)?)]
        }
        Op::Reverse { dims } => vec![Some(g.reverse(dims)?)],
        Op::Slice { start, strides, .. } => {
            // Put each element back where it came from: zeros elsewhere, strides as interior pad.
            let r = x.rank();
            let out = g.shape().to_vec();
            let high: Vec<i64> = (0..r)
                .map(|i| x.shape()[i] - start[i] - (out[i] - 1).max(0) * strides[i] - out[i].min(1))
                .collect();
            let interior: Vec<i64> = strides.iter().map(|s| s - 1).collect();
            let zero = g.scalar_like(0.0)?;
            vec![Some(g.pad(&zero, start, &high, &interior)?)]
        }
        Op::DynamicSlice { .. } => {
            let starts = &ins[1..];
            let mut v = vec![Some(x.zeros_like()?.dynamic_update_slice(&g, starts)?)];
            v.extend(starts.iter().map(|_| None));
            v
        }
        Op::DynamicUpdateSlice => {
            let upd = &ins[1];
            let starts = &ins[2..];
            let mut v = vec![
                Some(g.dynamic_update_slice(&upd.zeros_like()?, starts)?),
                Some(g.dynamic_slice(starts, upd.shape())?),
            ];
            v.extend(starts.iter().map(|_| None));
            v
        }
        Op::Concatenate { axis } => {
            let mut at = 0;
            ins.iter()
                .map(|t| {
                    let n = t.shape()[*axis];
                    let s = g.slice_axis(*axis, at, at + n);
                    at += n;
                    s.map(Some)
                })
                .collect::<Result<Vec<_>>>()?
        }
        Op::Pad {
            low,
            high,
            interior,
        } => {
            // Undo the edge padding (negated pads crop), then take every (interior+1)-th element;
            // the padding value receives everything that did not come from the operand.
            let r = x.rank();
            let zero = g.scalar_like(0.0)?;
            let nl: Vec<i64> = low.iter().map(|v| -v).collect();
            let nh: Vec<i64> = high.iter().map(|v| -v).collect();
            let unpadded = g.pad(&zero, &nl, &nh, &vec![0; r])?;
            let steps: Vec<i64> = interior.iter().map(|i| i + 1).collect();
            let t_op = unpadded.slice(&vec![0; r], unpadded.shape(), &steps)?;
            let t_val = g.sum_all()?.sub(&t_op.sum_all()?)?;
            vec![Some(t_op), Some(t_val)]
        }
        Op::Gather => vec![Some(x.zeros_like()?.scatter_add_rows(&ins[1], &g)?), None],
        Op::ScatterAdd => vec![Some(g.clone()), None, Some(g.take_rows(&ins[1])?)],
        _ => return Err(Error::Program(format!("{} is not structural", op.name()))),
    })
}

pub fn lower(
    e: &mut Emitter,
    op: &Op,
    ins: &[String],
    in_tys: &[TensorType],
    out_tys: &[TensorType],
) -> Result<Vec<String>> {
    let i64s = |v: &[usize]| v.iter().map(|&x| x as i64).collect::<Vec<_>>();
    Ok(match op {
        Op::BroadcastInDim { dims, .. } => e.op(
            "stablehlo.broadcast_in_dim",
            ins,
            in_tys,
            &format!("broadcast_dimensions = {}", i64_array(&i64s(dims))),
            out_tys,
        ),
        Op::Reshape { .. } => e.op("stablehlo.reshape", ins, in_tys, "", out_tys),
        Op::Transpose { perm } => e.op(
            "stablehlo.transpose",
            ins,
            in_tys,
            &format!("permutation = {}", i64_array(&i64s(perm))),
            out_tys,
        ),
        Op::Reverse { dims } => e.op(
            "stablehlo.reverse",
            ins,
            in_tys,
            &format!("dimensions = {}", i64_array(&i64s(dims))),
            out_tys,
        ),
        Op::Slice {
            start,
            limit,
            strides,
        } => e.op(
            "stablehlo.slice",
            ins,
            in_tys,
            &format!(
                "limit_indices = {}, start_indices = {}, strides = {}",
                i64_array(limit),
                i64_array(start),
                i64_array(strides)
            ),
            out_tys,
        ),
        Op::DynamicSlice { sizes } => e.op(
            "stablehlo.dynamic_slice",
            ins,
            in_tys,
            &format!("slice_sizes = {}", i64_array(sizes)),
            out_tys,
        ),
        Op::DynamicUpdateSlice => e.op("stablehlo.dynamic_update_slice", ins, in_tys, "", out_tys),
        Op::Concatenate { axis } => e.op(
            "stablehlo.concatenate",
            ins,
            in_tys,
            &format!("dimension = {axis} : i64"),
            out_tys,
        ),
        Op::Pad {
            low,
            high,
            interior,
        } => e.op(
            "stablehlo.pad",
            ins,
            in_tys,
            &format!(
                "edge_padding_high = {}, edge_padding_low = {}, interior_padding = {}",
                i64_array(high),
                i64_array(low),
                i64_array(interior)
            ),
            out_tys,
        ),
        Op::Gather => {
            let (table, ids) = (&in_tys[0], &in_tys[1]);
            let r = ids.rank() as i64;
            let offset: Vec<i64> = (0..table.rank() as i64 - 1).map(|i| r + i).collect();
            let mut sizes = vec![1];
            sizes.extend_from_slice(&table.shape[1..]);
            e.op(
                "stablehlo.gather",
                ins,
                in_tys,
                &format!(
                    "dimension_numbers = #stablehlo.gather<{}collapsed_slice_dims = [0], start_index_map = [0], index_vector_dim = {r}>, indices_are_sorted = false, slice_sizes = {}",
                    if offset.is_empty() { String::new() } else { format!("offset_dims = {}, ", list(&offset)) },
                    i64_array(&sizes)
                ),
                out_tys,
            )
        }
        Op::ScatterAdd => {
            let (target, ids) = (&in_tys[0], &in_tys[1]);
            let r = ids.rank() as i64;
            let window: Vec<i64> = (0..target.rank() as i64 - 1).map(|i| r + i).collect();
            let dtype = target.dtype;
            let attrs = format!(
                "indices_are_sorted = false, scatter_dimension_numbers = #stablehlo.scatter<{}inserted_window_dims = [0], scatter_dims_to_operand_dims = [0], index_vector_dim = {r}>, unique_indices = false",
                if window.is_empty() { String::new() } else { format!("update_window_dims = {}, ", list(&window)) },
            );
            let s = TensorType::scalar(dtype);
            e.op_with_regions(
                "stablehlo.scatter",
                ins,
                in_tys,
                vec![(
                    vec![s.clone(), s],
                    Box::new(move |e: &mut Emitter, args: &[String]| {
                        Ok(e.scalar_region("stablehlo.add", args, dtype))
                    }),
                )],
                &attrs,
                out_tys,
            )?
        }
        _ => return Err(Error::Program(format!("{} is not structural", op.name()))),
    })
}
