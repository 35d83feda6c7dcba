//! The primitive table. Every op type of [`crate::ir`] implements [`Rule`]: its shape rule
//! (`infer`), its derivative (`vjp`, written with the same `Tensor` methods models use) and its
//! StableHLO lowering (`lower`), in one `impl`, one screen. [`rule`] routes an [`Op`] to its
//! rule with one exhaustive match per family, written once for all three, so a new op does not
//! compile until it has every rule.

mod collective;
mod control;
mod dump;
mod elementwise;
mod linalg;
mod reduce;
mod source;
mod structural;

use crate::dtype::TensorType;
use crate::error::{Error, Result};
use crate::ir::{Collective, Control, Elementwise, Linalg, Op, Reduction, Source, Structural};
use crate::lower::Emitter;
use crate::trace::Tensor;

pub use dump::flops;
pub use linalg::{conv_lhs_vjp_padding, dot_output_shape, extents, Extents};
pub use structural::{slice_cotangent_terms, SlicePiece};

/// What each primitive defines.
pub trait Rule {
    /// The op's name in errors and graph dumps (`dot_general`, `reduce_sum`, `exp`).
    fn name(&self) -> String;

    /// Floating-point operations of one application to operands of types `ins` with results of
    /// types `outs` (2 per multiply–add), for the analytic FLOPs of a program. Only matrix
    /// products and convolutions count (and loops, as many times as they run); elementwise and
    /// data-movement ops are memory-bound and count 0, as JAX's and XLA's FLOP counts of a
    /// model's step leave them out.
    fn flops(&self, _ins: &[TensorType], _outs: &[TensorType]) -> f64 {
        0.0
    }

    /// The output types for operands of types `ins`, or an error naming the op and the types.
    fn infer(&self, ins: &[TensorType]) -> Result<Vec<TensorType>>;

    /// Cotangents of the inputs given those of the outputs (`None`: no gradient flows there).
    fn vjp(&self, v: &Vjp) -> Result<Vec<Option<Tensor>>>;

    /// Writes the op and returns the names of its results.
    fn lower(&self, e: &mut Emitter, l: &Lowering) -> Result<Vec<String>>;

    /// The cotangent `g` of the output as a piece of the operand's cotangent that the reverse
    /// sweep may hold back until every piece of that operand has arrived, to sum them at once
    /// ([`slice_cotangent_terms`]). Such a rule reads no primal value. `None` (the default): the
    /// sweep calls [`Rule::vjp`].
    fn piece(&self, _g: &Tensor) -> Option<SlicePiece> {
        None
    }

    /// The op to differentiate in place of this one, when differentiating needs more of the
    /// forward pass than its outputs (a scan keeps the carry that entered each step). The sweep
    /// swaps it in before it reads the graph.
    fn for_vjp(&self) -> Option<Op> {
        None
    }
}

/// What a derivative rule reads: the node's operands and outputs (primal values) and the
/// cotangents of its outputs.
pub struct Vjp<'a> {
    pub ins: &'a [Tensor],
    pub outs: &'a [Tensor],
    pub cots: &'a [Option<Tensor>],
}

/// What a lowering reads: the names and types of the node's operands, and its result types.
pub struct Lowering<'a> {
    pub ins: &'a [String],
    pub in_tys: &'a [TensorType],
    pub out_tys: &'a [TensorType],
}

impl Lowering<'_> {
    /// Writes the op `name` with `attrs` on the node's operands.
    fn op(&self, e: &mut Emitter, name: &str, attrs: &str) -> Vec<String> {
        e.op(name, self.ins, self.in_tys, attrs, self.out_tys)
    }
}

/// The rule of `op`.
pub fn rule(op: &Op) -> &dyn Rule {
    match op {
        Op::Source(f) => match f {
            Source::Parameter(r) => r,
            Source::Constant(r) => r,
            Source::Iota(r) => r,
        },
        Op::Elementwise(f) => match f {
            Elementwise::Unary(r) => r,
            Elementwise::Binary(r) => r,
            Elementwise::Compare(r) => r,
            Elementwise::Select(r) => r,
            Elementwise::Convert(r) => r,
            Elementwise::BitcastConvert(r) => r,
        },
        Op::Structural(f) => match f {
            Structural::BroadcastInDim(r) => r,
            Structural::Reshape(r) => r,
            Structural::Transpose(r) => r,
            Structural::Reverse(r) => r,
            Structural::Slice(r) => r,
            Structural::DynamicSlice(r) => r,
            Structural::DynamicUpdateSlice(r) => r,
            Structural::Concatenate(r) => r,
            Structural::Pad(r) => r,
            Structural::Gather(r) => r,
            Structural::ScatterAdd(r) => r,
        },
        Op::Linalg(f) => match f {
            Linalg::DotGeneral(r) => r,
            Linalg::Conv(r) => &**r,
        },
        Op::Reduction(f) => match f {
            Reduction::Reduce(r) => r,
            Reduction::ReduceWindow(r) => r,
            Reduction::SelectAndScatterAdd(r) => r,
        },
        Op::Control(f) => match f {
            Control::RngBitGenerator(r) => r,
            Control::OptimizationBarrier(r) => r,
            Control::StopGradient(r) => r,
            Control::Scan(r) => &**r,
            Control::ShardingConstraint(r) => r,
            Control::Manual(r) => &**r,
        },
        Op::Collective(f) => match f {
            Collective::Psum(r) => r,
            Collective::AllGather(r) => r,
            Collective::ReduceScatter(r) => r,
            Collective::Ppermute(r) => r,
            Collective::AllToAll(r) => r,
            Collective::AxisIndex(r) => r,
        },
    }
}

/// The output types of `op` applied to operands of `ins`, or an error naming the op and types.
pub fn infer(op: &Op, ins: &[TensorType]) -> Result<Vec<TensorType>> {
    rule(op).infer(ins)
}

/// Cotangents of the inputs given those of the outputs (`None`: no gradient flows there).
pub fn vjp(
    op: &Op,
    ins: &[Tensor],
    outs: &[Tensor],
    cots: &[Option<Tensor>],
) -> Result<Vec<Option<Tensor>>> {
    rule(op).vjp(&Vjp { ins, outs, cots })
}

/// Writes `op` and returns the names of its results.
pub fn lower(
    e: &mut Emitter,
    op: &Op,
    ins: &[String],
    in_tys: &[TensorType],
    out_tys: &[TensorType],
) -> Result<Vec<String>> {
    rule(op).lower(
        e,
        &Lowering {
            ins,
            in_tys,
            out_tys,
        },
    )
}

/// Checks the operand count of an op.
pub(crate) fn arity(name: &str, ins: &[TensorType], n: usize) -> Result<()> {
    if ins.len() != n {
        return crate::error::shape_err(name, format!("takes {n} operand(s), got {}", ins.len()));
    }
    Ok(())
}

/// The cotangent of a single-output op (present whenever its rule is called).
pub(crate) fn cot0(name: &str, cots: &[Option<Tensor>]) -> Result<Tensor> {
    cots.first()
        .cloned()
        .flatten()
        .ok_or_else(|| Error::NoDerivative {
            op: name.into(),
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
