//! The primitive table. Each family file holds, per op, its shape rule (`infer`), its derivative
//! (`vjp`, written with the same `Tensor` methods models use) and its StableHLO lowering
//! (`lower`), side by side. The three dispatchers below match exhaustively on [`Op`], so a new op
//! cannot be added without deciding all three.

mod control;
mod elementwise;
mod linalg;
mod reduce;
mod structural;

use crate::dtype::TensorType;
use crate::error::{Error, Result};
use crate::ir::Op;
use crate::lower::Emitter;
use crate::trace::{Builder, Tensor};

pub use linalg::{conv_lhs_vjp_padding, dot_output_shape};

/// What a derivative rule may need besides the values: the builder, and the node it
/// differentiates (a scan marks its node to keep per-step carries).
pub struct VjpCtx<'a> {
    pub b: &'a Builder,
    pub node: usize,
}

/// The output types of `op` applied to operands of `ins`, or an error naming the op and types.
pub fn infer(op: &Op, ins: &[TensorType]) -> Result<Vec<TensorType>> {
    match op {
        Op::Parameter { .. }
        | Op::Constant { .. }
        | Op::Iota { .. }
        | Op::Unary(_)
        | Op::Binary(_)
        | Op::Compare(_)
        | Op::Select
        | Op::Convert { .. }
        | Op::BitcastConvert { .. } => elementwise::infer(op, ins),
        Op::BroadcastInDim { .. }
        | Op::Reshape { .. }
        | Op::Transpose { .. }
        | Op::Reverse { .. }
        | Op::Slice { .. }
        | Op::DynamicSlice { .. }
        | Op::DynamicUpdateSlice
        | Op::Concatenate { .. }
        | Op::Pad { .. }
        | Op::Gather
        | Op::ScatterAdd => structural::infer(op, ins),
        Op::DotGeneral(_) | Op::Conv(_) => linalg::infer(op, ins),
        Op::Reduce { .. } | Op::ReduceWindow { .. } | Op::SelectAndScatterAdd { .. } => {
            reduce::infer(op, ins)
        }
        Op::RngBitGenerator { .. }
        | Op::OptimizationBarrier
        | Op::StopGradient
        | Op::Scan(_)
        | Op::ShardingConstraint { .. } => control::infer(op, ins),
    }
}

/// Cotangents of the inputs given those of the outputs (`None`: no gradient flows there).
pub fn vjp(
    ctx: &VjpCtx,
    op: &Op,
    ins: &[Tensor],
    outs: &[Tensor],
    cots: &[Option<Tensor>],
) -> Result<Vec<Option<Tensor>>> {
    match op {
        Op::Parameter { .. }
        | Op::Constant { .. }
        | Op::Iota { .. }
        | Op::Unary(_)
        | Op::Binary(_)
        | Op::Compare(_)
        | Op::Select
        | Op::Convert { .. }
        | Op::BitcastConvert { .. } => elementwise::vjp(op, ins, outs, cots),
        Op::BroadcastInDim { .. }
        | Op::Reshape { .. }
        | Op::Transpose { .. }
        | Op::Reverse { .. }
        | Op::Slice { .. }
        | Op::DynamicSlice { .. }
        | Op::DynamicUpdateSlice
        | Op::Concatenate { .. }
        | Op::Pad { .. }
        | Op::Gather
        | Op::ScatterAdd => structural::vjp(op, ins, outs, cots),
        Op::DotGeneral(_) | Op::Conv(_) => linalg::vjp(op, ins, outs, cots),
        Op::Reduce { .. } | Op::ReduceWindow { .. } | Op::SelectAndScatterAdd { .. } => {
            reduce::vjp(op, ins, outs, cots)
        }
        Op::RngBitGenerator { .. }
        | Op::OptimizationBarrier
        | Op::StopGradient
        | Op::Scan(_)
        | Op::ShardingConstraint { .. } => control::vjp(ctx, op, ins, outs, cots),
    }
}

/// Writes `op` and returns the names of its results.
pub fn lower(
    e: &mut Emitter,
    op: &Op,
    ins: &[String],
    in_tys: &[TensorType],
    out_tys: &[TensorType],
) -> Result<Vec<String>> {
    match op {
        Op::Parameter { .. } => Err(Error::Program(
            "parameters are bound by the enclosing function, not emitted".into(),
        )),
        Op::Constant { .. }
        | Op::Iota { .. }
        | Op::Unary(_)
        | Op::Binary(_)
        | Op::Compare(_)
        | Op::Select
        | Op::Convert { .. }
        | Op::BitcastConvert { .. } => elementwise::lower(e, op, ins, in_tys, out_tys),
        Op::BroadcastInDim { .. }
        | Op::Reshape { .. }
        | Op::Transpose { .. }
        | Op::Reverse { .. }
        | Op::Slice { .. }
        | Op::DynamicSlice { .. }
        | Op::DynamicUpdateSlice
        | Op::Concatenate { .. }
        | Op::Pad { .. }
        | Op::Gather
        | Op::ScatterAdd => structural::lower(e, op, ins, in_tys, out_tys),
        Op::DotGeneral(_) | Op::Conv(_) => linalg::lower(e, op, ins, in_tys, out_tys),
        Op::Reduce { .. } | Op::ReduceWindow { .. } | Op::SelectAndScatterAdd { .. } => {
            reduce::lower(e, op, ins, in_tys, out_tys)
        }
        Op::RngBitGenerator { .. }
        | Op::OptimizationBarrier
        | Op::StopGradient
        | Op::Scan(_)
        | Op::ShardingConstraint { .. } => control::lower(e, op, ins, in_tys, out_tys),
    }
}

/// Checks the operand count of an op.
pub(crate) fn arity(op: &Op, ins: &[TensorType], n: usize) -> Result<()> {
    if ins.len() != n {
        return crate::error::shape_err(
            &op.name(),
            format!("takes {n} operand(s), got {}", ins.len()),
        );
    }
    Ok(())
}

/// The cotangent of a single-output op (present whenever its rule is called).
pub(crate) fn cot0(op: &Op, cots: &[Option<Tensor>]) -> Result<Tensor> {
    cots.first()
        .cloned()
        .flatten()
        .ok_or_else(|| Error::NoDerivative {
            op: op.name(),
            detail: ": called without a cotangent".into(),
        })
}

/// Formats the types of operands for messages: `f32[2,3], s32[4]`.
pub(crate) fn show(ins: &[TensorType]) -> String {
    ins.iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
