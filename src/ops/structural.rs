//! Ops that move data without arithmetic: broadcast, reshape, transpose, reverse, slices,
//! concatenation, padding, row gather and scatter-add.

use crate::dtype::{DType, TensorType};
use crate::error::{shape_err, Error, Result};
use crate::ir::{
    BroadcastInDim, Concatenate, DynamicSlice, DynamicUpdateSlice, Gather, Pad, Reshape, Reverse,
    ScatterAdd, Slice, Transpose,
};
use crate::lower::{i64_array, list, Emitter};
use crate::trace::Tensor;

use super::{arity, cot0, show, Lowering, Rule, Vjp};

fn i64s(v: &[usize]) -> Vec<i64> {
    v.iter().map(|&x| x as i64).collect()
}

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

impl Rule for BroadcastInDim {
    fn name(&self) -> String {
        "broadcast_in_dim".into()
    }

    fn infer(&self, ins: &[TensorType]) -> Result<Vec<TensorType>> {
        let (name, dims, shape) = ("broadcast_in_dim", &self.dims, &self.shape);
        arity(name, ins, 1)?;
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

    fn vjp(&self, v: &Vjp) -> Result<Vec<Option<Tensor>>> {
        let (g, x, dims) = (cot0("broadcast_in_dim", v.cots)?, &v.ins[0], &self.dims);
        // Sum over the dimensions the broadcast created or expanded, then restore x's order.
        let expanded: Vec<usize> = (0..x.rank())
            .filter(|&i| x.shape()[i] == 1 && self.shape[dims[i]] != 1)
            .map(|i| dims[i])
            .collect();
        let g1 = if expanded.is_empty() {
            g
        } else {
            g.sum_keepdims(&expanded)?
        };
        let new_axes: Vec<usize> = (0..self.shape.len())
            .filter(|d| !dims.contains(d))
            .collect();
        let g2 = g1.sum(&new_axes)?;
        let mut sorted = dims.clone();
        sorted.sort_unstable();
        let perm: Vec<usize> = dims
            .iter()
            .map(|d| sorted.iter().position(|s| s == d).unwrap_or(0))
            .collect();
        Ok(vec![Some(g2.transpose(&perm)?.reshape(x.shape())?)])
    }

    fn lower(&self, e: &mut Emitter, l: &Lowering) -> Result<Vec<String>> {
        let attr = format!("broadcast_dimensions = {}", i64_array(&i64s(&self.dims)));
        Ok(l.op(e, "stablehlo.broadcast_in_dim", &attr))
    }
}

impl Rule for Reshape {
    fn name(&self) -> String {
        "reshape".into()
    }

    fn infer(&self, ins: &[TensorType]) -> Result<Vec<TensorType>> {
        arity("reshape", ins, 1)?;
        let shape = &self.shape;
        let n: i64 = shape.iter().product();
        if shape.iter().any(|&d| d < 0) || n != ins[0].element_count() {
            return shape_err("reshape", format!("cannot reshape {} to {shape:?}", ins[0]));
        }
        Ok(vec![TensorType::new(ins[0].dtype, shape)])
    }

    fn vjp(&self, v: &Vjp) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(
            cot0("reshape", v.cots)?.reshape(v.ins[0].shape())?,
        )])
    }

    fn lower(&self, e: &mut Emitter, l: &Lowering) -> Result<Vec<String>> {
        Ok(l.op(e, "stablehlo.reshape", ""))
    }
}

impl Rule for Transpose {
    fn name(&self) -> String {
        "transpose".into()
    }

    fn infer(&self, ins: &[TensorType]) -> Result<Vec<TensorType>> {
        arity("transpose", ins, 1)?;
        check_perm("transpose", &self.perm, ins[0].rank())?;
        let shape: Vec<i64> = self.perm.iter().map(|&p| ins[0].shape[p]).collect();
        Ok(vec![TensorType::new(ins[0].dtype, &shape)])
    }

    fn vjp(&self, v: &Vjp) -> Result<Vec<Option<Tensor>>> {
        let mut inv = vec![0; self.perm.len()];
        for (i, &p) in self.perm.iter().enumerate() {
            inv[p] = i;
        }
        Ok(vec![Some(cot0("transpose", v.cots)?.transpose(&inv)?)])
    }

    fn lower(&self, e: &mut Emitter, l: &Lowering) -> Result<Vec<String>> {
        let attr = format!("permutation = {}", i64_array(&i64s(&self.perm)));
        Ok(l.op(e, "stablehlo.transpose", &attr))
    }
}

impl Rule for Reverse {
    fn name(&self) -> String {
        "reverse".into()
    }

    fn infer(&self, ins: &[TensorType]) -> Result<Vec<TensorType>> {
        arity("reverse", ins, 1)?;
        if self.dims.iter().any(|&d| d >= ins[0].rank()) {
            return shape_err(
                "reverse",
                format!("dims {:?} out of range for {}", self.dims, ins[0]),
            );
        }
        Ok(vec![ins[0].clone()])
    }

    fn vjp(&self, v: &Vjp) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(cot0("reverse", v.cots)?.reverse(&self.dims)?)])
    }

    fn lower(&self, e: &mut Emitter, l: &Lowering) -> Result<Vec<String>> {
        let attr = format!("dimensions = {}", i64_array(&i64s(&self.dims)));
        Ok(l.op(e, "stablehlo.reverse", &attr))
    }
}

impl Rule for Slice {
    fn name(&self) -> String {
        "slice".into()
    }

    fn infer(&self, ins: &[TensorType]) -> Result<Vec<TensorType>> {
        let (name, start, limit, strides) = ("slice", &self.start, &self.limit, &self.strides);
        arity(name, ins, 1)?;
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

    fn vjp(&self, v: &Vjp) -> Result<Vec<Option<Tensor>>> {
        // Put each element back where it came from: zeros elsewhere, strides as interior pad.
        let (g, x, start, strides) = (
            cot0("slice", v.cots)?,
            &v.ins[0],
            &self.start,
            &self.strides,
        );
        let r = x.rank();
        let out = g.shape().to_vec();
        let high: Vec<i64> = (0..r)
            .map(|i| x.shape()[i] - start[i] - (out[i] - 1).max(0) * strides[i] - out[i].min(1))
            .collect();
        let interior: Vec<i64> = strides.iter().map(|s| s - 1).collect();
        let zero = g.scalar_like(0.0)?;
        Ok(vec![Some(g.pad(&zero, start, &high, &interior)?)])
    }

    /// A unit-stride slice's cotangent waits for its siblings: slices that tile one axis (q, k
    /// and v out of a fused projection) become one concatenate instead of a zero-padded copy
    /// per slice and a sum of them.
    fn piece(&self, g: &Tensor) -> Option<SlicePiece> {
        self.strides.iter().all(|&s| s == 1).then(|| SlicePiece {
            start: self.start.clone(),
            limit: self.limit.clone(),
            g: g.clone(),
        })
    }

    fn lower(&self, e: &mut Emitter, l: &Lowering) -> Result<Vec<String>> {
        let attr = format!(
            "limit_indices = {}, start_indices = {}, strides = {}",
            i64_array(&self.limit),
            i64_array(&self.start),
            i64_array(&self.strides)
        );
        Ok(l.op(e, "stablehlo.slice", &attr))
    }
}

/// The cotangent `g` of `operand[start..limit]` (unit strides), zero elsewhere.
pub struct SlicePiece {
    start: Vec<i64>,
    limit: Vec<i64>,
    g: Tensor,
}

/// The terms of the cotangent of an operand of `shape` from the cotangents of its unit-stride
/// slices: one concatenate (with zeros in the gaps) when the slices tile one axis without
/// overlapping, else each piece padded with zeros to the operand's shape.
pub fn slice_cotangent_terms(shape: &[i64], mut pieces: Vec<SlicePiece>) -> Result<Vec<Tensor>> {
    let r = shape.len();
    // The one axis along which the pieces differ; every other axis whole.
    let axis = (0..r).find(|&d| pieces.iter().any(|p| p.limit[d] - p.start[d] != shape[d]));
    let tiles = pieces.len() > 1
        && axis.is_some_and(|ax| {
            pieces
                .iter()
                .all(|p| (0..r).all(|d| d == ax || (p.start[d] == 0 && p.limit[d] == shape[d])))
        });
    if let (true, Some(ax)) = (tiles, axis) {
        pieces.sort_by_key(|p| p.start[ax]);
        if pieces.windows(2).all(|w| w[0].limit[ax] <= w[1].start[ax]) {
            let zeros = |n: i64| {
                let mut gap = shape.to_vec();
                gap[ax] = n;
                pieces[0].g.scalar_like(0.0)?.broadcast_to(&gap)
            };
            let mut parts = Vec::new();
            let mut at = 0;
            for p in &pieces {
                if p.start[ax] > at {
                    parts.push(zeros(p.start[ax] - at)?);
                }
                parts.push(p.g.clone());
                at = p.limit[ax];
            }
            if at < shape[ax] {
                parts.push(zeros(shape[ax] - at)?);
            }
            return Ok(vec![Tensor::concat(&parts, ax)?]);
        }
    }
    pieces
        .into_iter()
        .map(|p| {
            let high: Vec<i64> = (0..r).map(|d| shape[d] - p.limit[d]).collect();
            let zero = p.g.scalar_like(0.0)?;
            p.g.pad(&zero, &p.start, &high, &vec![0; r])
        })
        .collect()
}

impl Rule for DynamicSlice {
    fn name(&self) -> String {
        "dynamic_slice".into()
    }

    fn infer(&self, ins: &[TensorType]) -> Result<Vec<TensorType>> {
        let (name, sizes) = ("dynamic_slice", &self.sizes);
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

    fn vjp(&self, v: &Vjp) -> Result<Vec<Option<Tensor>>> {
        let (g, x, starts) = (cot0("dynamic_slice", v.cots)?, &v.ins[0], &v.ins[1..]);
        let mut v = vec![Some(x.zeros_like()?.dynamic_update_slice(&g, starts)?)];
        v.extend(starts.iter().map(|_| None));
        Ok(v)
    }

    fn lower(&self, e: &mut Emitter, l: &Lowering) -> Result<Vec<String>> {
        let attr = format!("slice_sizes = {}", i64_array(&self.sizes));
        Ok(l.op(e, "stablehlo.dynamic_slice", &attr))
    }
}

impl Rule for DynamicUpdateSlice {
    fn name(&self) -> String {
        "dynamic_update_slice".into()
    }

    fn infer(&self, ins: &[TensorType]) -> Result<Vec<TensorType>> {
        let name = "dynamic_update_slice";
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

    fn vjp(&self, v: &Vjp) -> Result<Vec<Option<Tensor>>> {
        let (g, upd, starts) = (
            cot0("dynamic_update_slice", v.cots)?,
            &v.ins[1],
            &v.ins[2..],
        );
        let mut v = vec![
            Some(g.dynamic_update_slice(&upd.zeros_like()?, starts)?),
            Some(g.dynamic_slice(starts, upd.shape())?),
        ];
        v.extend(starts.iter().map(|_| None));
        Ok(v)
    }

    fn lower(&self, e: &mut Emitter, l: &Lowering) -> Result<Vec<String>> {
        Ok(l.op(e, "stablehlo.dynamic_update_slice", ""))
    }
}

impl Rule for Concatenate {
    fn name(&self) -> String {
        "concatenate".into()
    }

    fn infer(&self, ins: &[TensorType]) -> Result<Vec<TensorType>> {
        let (name, axis) = ("concatenate", self.axis);
        let first = ins.first().ok_or_else(|| Error::Shape {
            op: name.into(),
            message: "needs operands".into(),
        })?;
        if axis >= first.rank() {
            return shape_err(name, format!("axis {axis} out of range for {first}"));
        }
        let mut shape = first.shape.clone();
        shape[axis] = 0;
        for t in ins {
            let same = t.dtype == first.dtype
                && t.rank() == first.rank()
                && (0..t.rank()).all(|i| i == axis || t.shape[i] == first.shape[i]);
            if !same {
                return shape_err(
                    name,
                    format!("operands differ beyond axis {axis}: {}", show(ins)),
                );
            }
            shape[axis] += t.shape[axis];
        }
        Ok(vec![TensorType::new(first.dtype, &shape)])
    }

    fn vjp(&self, v: &Vjp) -> Result<Vec<Option<Tensor>>> {
        let (g, axis) = (cot0("concatenate", v.cots)?, self.axis);
        let mut at = 0;
        v.ins
            .iter()
            .map(|t| {
                let n = t.shape()[axis];
                let s = g.slice_axis(axis, at, at + n);
                at += n;
                s.map(Some)
            })
            .collect()
    }

    fn lower(&self, e: &mut Emitter, l: &Lowering) -> Result<Vec<String>> {
        let attr = format!("dimension = {} : i64", self.axis);
        Ok(l.op(e, "stablehlo.concatenate", &attr))
    }
}

impl Rule for Pad {
    fn name(&self) -> String {
        "pad".into()
    }

    fn infer(&self, ins: &[TensorType]) -> Result<Vec<TensorType>> {
        let (name, low, high, interior) = ("pad", &self.low, &self.high, &self.interior);
        arity(name, ins, 2)?;
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

    fn vjp(&self, v: &Vjp) -> Result<Vec<Option<Tensor>>> {
        // Undo the edge padding (negated pads crop), then take every (interior+1)-th element;
        // the padding value receives everything that did not come from the operand.
        let (g, r) = (cot0("pad", v.cots)?, v.ins[0].rank());
        let zero = g.scalar_like(0.0)?;
        let nl: Vec<i64> = self.low.iter().map(|v| -v).collect();
        let nh: Vec<i64> = self.high.iter().map(|v| -v).collect();
        let unpadded = g.pad(&zero, &nl, &nh, &vec![0; r])?;
        let steps: Vec<i64> = self.interior.iter().map(|i| i + 1).collect();
        let t_op = unpadded.slice(&vec![0; r], unpadded.shape(), &steps)?;
        let t_val = g.sum_all()?.sub(&t_op.sum_all()?)?;
        Ok(vec![Some(t_op), Some(t_val)])
    }

    fn lower(&self, e: &mut Emitter, l: &Lowering) -> Result<Vec<String>> {
        let attr = format!(
            "edge_padding_high = {}, edge_padding_low = {}, interior_padding = {}",
            i64_array(&self.high),
            i64_array(&self.low),
            i64_array(&self.interior)
        );
        Ok(l.op(e, "stablehlo.pad", &attr))
    }
}

impl Rule for Gather {
    fn name(&self) -> String {
        "gather".into()
    }

    fn infer(&self, ins: &[TensorType]) -> Result<Vec<TensorType>> {
        arity("gather", ins, 2)?;
        let (table, ids) = (&ins[0], &ins[1]);
        if table.rank() < 1 || !ids.dtype.is_integer() {
            return shape_err(
                "gather",
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

    fn vjp(&self, v: &Vjp) -> Result<Vec<Option<Tensor>>> {
        let g = cot0("gather", v.cots)?;
        Ok(vec![
            Some(v.ins[0].zeros_like()?.scatter_add_rows(&v.ins[1], &g)?),
            None,
        ])
    }

    fn lower(&self, e: &mut Emitter, l: &Lowering) -> Result<Vec<String>> {
        let (table, ids) = (&l.in_tys[0], &l.in_tys[1]);
        let r = ids.rank() as i64;
        let offset: Vec<i64> = (0..table.rank() as i64 - 1).map(|i| r + i).collect();
        let mut sizes = vec![1];
        sizes.extend_from_slice(&table.shape[1..]);
        let offset = if offset.is_empty() {
            String::new()
        } else {
            format!("offset_dims = {}, ", list(&offset))
        };
        let attr = format!(
            "dimension_numbers = #stablehlo.gather<{offset}collapsed_slice_dims = [0], start_index_map = [0], index_vector_dim = {r}>, indices_are_sorted = false, slice_sizes = {}",
            i64_array(&sizes)
        );
        Ok(l.op(e, "stablehlo.gather", &attr))
    }
}

impl Rule for ScatterAdd {
    fn name(&self) -> String {
        "scatter_add".into()
    }

    fn infer(&self, ins: &[TensorType]) -> Result<Vec<TensorType>> {
        arity("scatter_add", ins, 3)?;
        let (target, ids, upd) = (&ins[0], &ins[1], &ins[2]);
        let mut want = ids.shape.clone();
        want.extend_from_slice(target.shape.get(1..).unwrap_or(&[]));
        if target.rank() < 1
            || !ids.dtype.is_integer()
            || upd.dtype != target.dtype
            || upd.shape != want
        {
            return shape_err(
                "scatter_add",
                format!(
                    "expects target [V, D...], ids [I...], updates [I..., D...]; got {}",
                    show(ins)
                ),
            );
        }
        Ok(vec![target.clone()])
    }

    fn vjp(&self, v: &Vjp) -> Result<Vec<Option<Tensor>>> {
        let g = cot0("scatter_add", v.cots)?;
        Ok(vec![Some(g.clone()), None, Some(g.take_rows(&v.ins[1])?)])
    }

    fn lower(&self, e: &mut Emitter, l: &Lowering) -> Result<Vec<String>> {
        let (target, ids) = (&l.in_tys[0], &l.in_tys[1]);
        let r = ids.rank() as i64;
        let window: Vec<i64> = (0..target.rank() as i64 - 1).map(|i| r + i).collect();
        let dtype = target.dtype;
        let window = if window.is_empty() {
            String::new()
        } else {
            format!("update_window_dims = {}, ", list(&window))
        };
        let attrs = format!(
            "indices_are_sorted = false, scatter_dimension_numbers = #stablehlo.scatter<{window}inserted_window_dims = [0], scatter_dims_to_operand_dims = [0], index_vector_dim = {r}>, unique_indices = false",
        );
        let s = TensorType::scalar(dtype);
        e.op_with_regions(
            "stablehlo.scatter",
            l.ins,
            l.in_tys,
            vec![(
                vec![s.clone(), s],
                Box::new(move |e: &mut Emitter, args: &[String]| {
                    Ok(e.scalar_region("stablehlo.add", args, dtype))
                }),
            )],
            &attrs,
            l.out_tys,
        )
    }
}
