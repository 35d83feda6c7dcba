//! Reductions over dimensions and over windows (pooling).

use crate::dtype::{DType, TensorType};
use crate::error::{shape_err, Error, Result};
use crate::ir::{Reduce, ReduceKind, ReduceWindow, SelectAndScatterAdd, Window};
use crate::lower::{i64_array, padding_attr, Emitter, Region};
use crate::trace::Tensor;

use super::{arity, conv_lhs_vjp_padding, cot0, extents, Lowering, Rule, Vjp};

fn window_shape(name: &str, x: &TensorType, w: &Window) -> Result<Vec<i64>> {
    let r = x.rank();
    if w.dims.len() != r || w.strides.len() != r || w.padding.len() != r {
        return shape_err(
            name,
            format!("window, strides and padding need {r} entries each for {x}"),
        );
    }
    (0..r)
        .map(|i| {
            let padded = x.shape[i] + w.padding[i].0 + w.padding[i].1;
            if w.dims[i] < 1 || w.strides[i] < 1 || padded < w.dims[i] {
                return shape_err(
                    name,
                    format!(
                        "window {:?} stride {:?} does not fit {x} padded by {:?}",
                        w.dims, w.strides, w.padding
                    ),
                );
            }
            Ok((padded - w.dims[i]) / w.strides[i] + 1)
        })
        .collect()
}

impl Rule for Reduce {
    fn name(&self) -> String {
        format!("reduce_{:?}", self.kind).to_lowercase()
    }

    fn infer(&self, ins: &[TensorType]) -> Result<Vec<TensorType>> {
        let name = format!("reduce_{:?}", self.kind).to_lowercase();
        arity(&name, ins, 1)?;
        let (x, axes) = (&ins[0], &self.axes);
        let mut seen = vec![false; x.rank()];
        for &a in axes {
            if a >= x.rank() || seen[a] {
                return shape_err(&name, format!("axes {axes:?} invalid for {x}"));
            }
            seen[a] = true;
        }
        if self.kind == ReduceKind::Sum && x.dtype == DType::Pred {
            return shape_err(&name, "cannot sum pred; convert first");
        }
        let shape: Vec<i64> = (0..x.rank())
            .filter(|i| !seen[*i])
            .map(|i| x.shape[i])
            .collect();
        Ok(vec![TensorType::new(x.dtype, &shape)])
    }

    fn vjp(&self, v: &Vjp) -> Result<Vec<Option<Tensor>>> {
        let (g, x, axes) = (cot0("reduce", v.cots)?, &v.ins[0], &self.axes);
        let kept: Vec<usize> = (0..x.rank()).filter(|i| !axes.contains(i)).collect();
        let gb = g.broadcast_in_dim(x.shape(), &kept)?;
        match self.kind {
            ReduceKind::Sum => Ok(vec![Some(gb)]),
            ReduceKind::Max | ReduceKind::Min => {
                // The gradient goes to the positions that attain the extremum, split evenly
                // among ties.
                let y = v.outs[0].broadcast_in_dim(x.shape(), &kept)?;
                let hit = x.eq(&y)?;
                let ones = Tensor::select(&hit, &x.ones_like()?, &x.zeros_like()?)?;
                let count = ones.sum(axes)?.broadcast_in_dim(x.shape(), &kept)?;
                Ok(vec![Some(ones.mul(&gb)?.div(&count)?)])
            }
        }
    }

    fn lower(&self, e: &mut Emitter, l: &Lowering) -> Result<Vec<String>> {
        let (kind, dtype) = (self.kind, l.in_tys[0].dtype);
        let s = TensorType::scalar(dtype);
        let init = init_value(e, kind, dtype);
        let axes: Vec<i64> = self.axes.iter().map(|&a| a as i64).collect();
        e.op_with_regions(
            "stablehlo.reduce",
            &[l.ins[0].clone(), init],
            &[l.in_tys[0].clone(), s],
            monoid(kind, dtype),
            &format!("dimensions = {}", i64_array(&axes)),
            l.out_tys,
        )
    }
}

impl Rule for ReduceWindow {
    fn name(&self) -> String {
        format!("reduce_window_{:?}", self.kind).to_lowercase()
    }

    fn infer(&self, ins: &[TensorType]) -> Result<Vec<TensorType>> {
        let name = format!("reduce_window_{:?}", self.kind).to_lowercase();
        arity(&name, ins, 1)?;
        let shape = window_shape(&name, &ins[0], &self.window)?;
        Ok(vec![TensorType::new(ins[0].dtype, &shape)])
    }

    fn vjp(&self, v: &Vjp) -> Result<Vec<Option<Tensor>>> {
        let (g, x, window) = (cot0("reduce_window", v.cots)?, &v.ins[0], &self.window);
        match self.kind {
            ReduceKind::Sum => {
                // Each input element receives the cotangents of every window it was part of:
                // dilate g by the strides, pad, and sum over windows of stride 1.
                let r = x.rank();
                let ones = vec![1; r];
                let ext = extents(
                    x.shape(),
                    &window.dims,
                    &window.strides,
                    g.shape(),
                    &ones,
                    &ones,
                );
                let pads = conv_lhs_vjp_padding(&ext, &window.padding);
                let zero = g.scalar_like(0.0)?;
                let low: Vec<i64> = pads.iter().map(|p| p.0).collect();
                let high: Vec<i64> = pads.iter().map(|p| p.1).collect();
                let interior: Vec<i64> = window.strides.iter().map(|s| s - 1).collect();
                let padded = g.pad(&zero, &low, &high, &interior)?;
                let unit = Window {
                    dims: window.dims.clone(),
                    strides: ones,
                    padding: vec![(0, 0); r],
                };
                Ok(vec![Some(padded.reduce_window(ReduceKind::Sum, unit)?)])
            }
            ReduceKind::Max => Ok(vec![Some(x.select_and_scatter_add(&g, window.clone())?)]),
            // min over a window is the max of -x.
            ReduceKind::Min => Ok(vec![Some(
                x.neg()?.select_and_scatter_add(&g, window.clone())?,
            )]),
        }
    }

    fn lower(&self, e: &mut Emitter, l: &Lowering) -> Result<Vec<String>> {
        let (kind, dtype, window) = (self.kind, l.in_tys[0].dtype, &self.window);
        let s = TensorType::scalar(dtype);
        let init = init_value(e, kind, dtype);
        e.op_with_regions(
            "stablehlo.reduce_window",
            &[l.ins[0].clone(), init],
            &[l.in_tys[0].clone(), s],
            monoid(kind, dtype),
            &window_attr(window),
            l.out_tys,
        )
    }
}

impl Rule for SelectAndScatterAdd {
    fn name(&self) -> String {
        "select_and_scatter_add".into()
    }

    fn infer(&self, ins: &[TensorType]) -> Result<Vec<TensorType>> {
        let name = "select_and_scatter_add";
        arity(name, ins, 2)?;
        let shape = window_shape(name, &ins[0], &self.window)?;
        if ins[1].shape != shape || ins[1].dtype != ins[0].dtype {
            return shape_err(
                name,
                format!("source must be {}{shape:?}, got {}", ins[0].dtype, ins[1]),
            );
        }
        Ok(vec![ins[0].clone()])
    }

    fn vjp(&self, _: &Vjp) -> Result<Vec<Option<Tensor>>> {
        Err(Error::NoDerivative {
            op: "select_and_scatter_add".into(),
            detail: " (second derivatives of max pooling are not supported)".into(),
        })
    }

    fn lower(&self, e: &mut Emitter, l: &Lowering) -> Result<Vec<String>> {
        let dtype = l.in_tys[0].dtype;
        let s = TensorType::scalar(dtype);
        let init = init_value(e, ReduceKind::Sum, dtype);
        let pred = TensorType::scalar(DType::Pred);
        let ge = "comparison_direction = #stablehlo<comparison_direction GE>";
        let select = {
            let s = s.clone();
            Box::new(move |e: &mut Emitter, a: &[String]| {
                let c = e.op(
                    "stablehlo.compare",
                    a,
                    &[s.clone(), s.clone()],
                    ge,
                    std::slice::from_ref(&pred),
                );
                Ok((c, vec![pred]))
            })
        };
        let scatter = Box::new(move |e: &mut Emitter, a: &[String]| {
            Ok(e.scalar_region("stablehlo.add", a, dtype))
        });
        e.op_with_regions(
            "stablehlo.select_and_scatter",
            &[l.ins[0].clone(), l.ins[1].clone(), init],
            &[l.in_tys[0].clone(), l.in_tys[1].clone(), s.clone()],
            vec![
                (vec![s.clone(), s.clone()], select),
                (vec![s.clone(), s], scatter),
            ],
            &window_attr(&self.window),
            l.out_tys,
        )
    }
}

/// The region of a reduction: the monoid's combiner on two scalars.
fn monoid(kind: ReduceKind, dtype: DType) -> Vec<(Vec<TensorType>, Region<'static>)> {
    let s = TensorType::scalar(dtype);
    vec![(
        vec![s.clone(), s],
        Box::new(move |e: &mut Emitter, a: &[String]| {
            Ok(e.scalar_region(combiner(kind, dtype), a, dtype))
        }),
    )]
}

fn window_attr(w: &Window) -> String {
    format!(
        "padding = {}, window_dimensions = {}, window_strides = {}",
        padding_attr(&w.padding),
        i64_array(&w.dims),
        i64_array(&w.strides)
    )
}

/// The identity of a reduction for a dtype, as a constant op.
fn init_value(e: &mut Emitter, kind: ReduceKind, dtype: DType) -> String {
    let s = TensorType::scalar(dtype);
    let lit = match (kind, dtype) {
        (ReduceKind::Sum, DType::Pred) => "false".to_string(),
        (ReduceKind::Sum, d) if d.is_float() => match d {
            DType::BF16 => "0x0000".into(),
            _ => "0.0".into(),
        },
        (ReduceKind::Sum, _) => "0".into(),
        (ReduceKind::Max, DType::BF16) => "0xFF80".into(),
        (ReduceKind::Min, DType::BF16) => "0x7F80".into(),
        (ReduceKind::Max, DType::F32) => "0xFF800000".into(),
        (ReduceKind::Min, DType::F32) => "0x7F800000".into(),
        (ReduceKind::Max, DType::F64) => "0xFFF0000000000000".into(),
        (ReduceKind::Min, DType::F64) => "0x7FF0000000000000".into(),
        (ReduceKind::Max, DType::Pred) => "false".into(),
        (ReduceKind::Min, DType::Pred) => "true".into(),
        (ReduceKind::Max, DType::S32) => i32::MIN.to_string(),
        (ReduceKind::Min, DType::S32) => i32::MAX.to_string(),
        (ReduceKind::Max, DType::S64) => i64::MIN.to_string(),
        (ReduceKind::Min, DType::S64) => i64::MAX.to_string(),
        (ReduceKind::Max, _) => "0".into(),
        (ReduceKind::Min, DType::U8) => u8::MAX.to_string(),
        (ReduceKind::Min, DType::U32) => u32::MAX.to_string(),
        (ReduceKind::Min, _) => u64::MAX.to_string(),
    };
    e.constant(&lit, &s)
}

fn combiner(kind: ReduceKind, dtype: DType) -> &'static str {
    match (kind, dtype) {
        (ReduceKind::Sum, DType::Pred) => "stablehlo.or",
        (ReduceKind::Sum, _) => "stablehlo.add",
        (ReduceKind::Max, _) => "stablehlo.maximum",
        (ReduceKind::Min, _) => "stablehlo.minimum",
    }
}
