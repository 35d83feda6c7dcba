//! The graph IR: equations over typed values, with named parameters and outputs.
//!
//! A [`Graph`] is append-only while it is built: node `n` only reads values of nodes `< n`, so
//! the node order is a topological order, which both the reverse sweep and the emitter use.

use std::fmt;
use std::sync::Arc;

use crate::dtype::{DType, TensorType};

mod op;
pub use op::*;

mod manual;
pub use manual::*;

/// One output of one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Value {
    pub node: usize,
    pub out: usize,
}

/// Elementwise functions of one argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unary {
    Neg,
    Abs,
    Sign,
    Exp,
    Log,
    Log1p,
    Tanh,
    Logistic,
    Sqrt,
    Rsqrt,
    Cos,
    Sin,
    Erf,
    /// `1 - erf(x)`, accurate where `erf` is near 1.
    Erfc,
    /// GELU in its tanh form, `½x(1 + tanh(√(2/π)(x + 0.044715x³)))`, as one primitive so that
    /// its derivative can be computed from `x` alone: the composite's product rule reads the
    /// forward `tanh`, which makes the compiler keep that activation-sized array from the
    /// forward pass to the backward one.
    GeluTanh,
    /// The exact GELU, `x·Φ(x) = ½x(1 + erf(x/√2))`, one primitive for the same reason.
    Gelu,
    /// OpenAI CLIP's `x·σ(1.702x)`, one primitive for the same reason (its composite keeps `σ`).
    QuickGelu,
    Floor,
    Not,
}

/// Elementwise functions of two arguments of the same type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Max,
    Min,
    Rem,
    And,
    Or,
    Xor,
    ShiftLeft,
    ShiftRightLogical,
}

/// Comparison directions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// The monoid of a reduction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceKind {
    Sum,
    Max,
    Min,
}

/// `dot_general` dimension numbers.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct DotDims {
    pub lhs_batch: Vec<usize>,
    pub rhs_batch: Vec<usize>,
    pub lhs_contract: Vec<usize>,
    pub rhs_contract: Vec<usize>,
}

/// Which dimension of each convolution operand plays which role.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConvDims {
    /// Input: batch, feature, spatial dimensions.
    pub lhs: (usize, usize, Vec<usize>),
    /// Kernel: output feature, input feature, spatial dimensions.
    pub rhs: (usize, usize, Vec<usize>),
    /// Output: batch, feature, spatial dimensions.
    pub out: (usize, usize, Vec<usize>),
}

impl ConvDims {
    /// Images `[N, H, W, C]`, kernels `[KH, KW, C_in, C_out]`, outputs `[N, H', W', C_out]`.
    pub fn nhwc(spatial: usize) -> ConvDims {
        let sp: Vec<usize> = (1..=spatial).collect();
        ConvDims {
            lhs: (0, spatial + 1, sp.clone()),
            rhs: (spatial + 1, spatial, (0..spatial).collect()),
            out: (0, spatial + 1, sp),
        }
    }
}

/// `convolution` attributes (XLA semantics).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConvAttrs {
    pub strides: Vec<i64>,
    pub padding: Vec<(i64, i64)>,
    pub lhs_dilation: Vec<i64>,
    pub rhs_dilation: Vec<i64>,
    pub feature_groups: i64,
    pub batch_groups: i64,
    pub dims: ConvDims,
}

/// Window attributes of `reduce_window` and `select_and_scatter`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Window {
    pub dims: Vec<i64>,
    pub strides: Vec<i64>,
    pub padding: Vec<(i64, i64)>,
}

/// A fixed-length loop over a body graph.
///
/// Body parameters: `(index: s32, consts..., carry..., x slices...)`; body outputs:
/// `(carry..., y slices...)`. Node inputs: `consts ++ carry_init ++ xs` (each x stacked on a new
/// leading axis of size `length`); node outputs: `carry_final ++ ys` (stacked), then, when
/// `save_carries`, the carry that entered each iteration (stacked), which the reverse sweep reads.
#[derive(Clone, Debug)]
pub struct Scan {
    pub body: Arc<Graph>,
    pub length: i64,
    pub num_consts: usize,
    pub num_carry: usize,
    pub num_xs: usize,
    pub reverse: bool,
    pub save_carries: bool,
}

impl Scan {
    /// How this scan's values are laid out.
    pub fn layout(&self) -> ScanLayout {
        ScanLayout {
            consts: self.num_consts,
            carry: self.num_carry,
            xs: self.num_xs,
            ys: self.body.outputs.len().saturating_sub(self.num_carry),
            saved: self.save_carries,
        }
    }
}

/// The one layout of a scan's values, shared by its shape rule, its derivative, its lowering and
/// [`crate::trace::Builder::scan`]: how many constants, carries, per-step inputs (`xs`) and
/// per-step outputs (`ys`) there are, and whether the carry entering each step is kept. Its
/// methods cut a flat list into named slices, so no caller does offset arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanLayout {
    pub consts: usize,
    pub carry: usize,
    pub xs: usize,
    pub ys: usize,
    pub saved: bool,
}

/// A scan node's operands, or the body's parameters after the index: `consts ++ carry ++ xs`.
#[derive(Debug)]
pub struct ScanIns<'a, T> {
    pub consts: &'a [T],
    pub carry: &'a [T],
    pub xs: &'a [T],
}

/// A scan node's results: the final carry, the stacked `ys`, then (when kept) the carry that
/// entered each step, stacked.
#[derive(Debug)]
pub struct ScanOuts<'a, T> {
    pub carry: &'a [T],
    pub ys: &'a [T],
    pub saved: &'a [T],
}

/// The state of the `while` loop a scan lowers to: the step counter, the operands, then one
/// accumulator per stacked result (`ys`, then the saved carries).
#[derive(Debug)]
pub struct ScanLoop<'a, T> {
    pub index: &'a T,
    pub ins: ScanIns<'a, T>,
    pub ys: &'a [T],
    pub saved: &'a [T],
}

impl ScanLayout {
    fn saved_len(&self) -> usize {
        if self.saved {
            self.carry
        } else {
            0
        }
    }

    /// Operands: `consts ++ carry ++ xs`.
    pub fn operands(&self) -> usize {
        self.consts + self.carry + self.xs
    }

    /// Results: `carry ++ ys ++ saved`.
    pub fn results(&self) -> usize {
        self.carry + self.ys + self.saved_len()
    }

    fn cut<'a, T>(v: &'a [T], sizes: &[usize], what: &str) -> crate::error::Result<Vec<&'a [T]>> {
        if v.len() != sizes.iter().sum::<usize>() {
            return Err(crate::error::Error::Internal(format!(
                "a scan's {what}: {} values for a layout of {sizes:?}",
                v.len()
            )));
        }
        let mut rest = v;
        Ok(sizes
            .iter()
            .map(|&n| {
                let (a, b) = rest.split_at(n);
                rest = b;
                a
            })
            .collect())
    }

    /// Splits a scan's operands (or the body's parameters after its index).
    pub fn ins<'a, T>(&self, v: &'a [T]) -> crate::error::Result<ScanIns<'a, T>> {
        let p = Self::cut(v, &[self.consts, self.carry, self.xs], "operands")?;
        Ok(ScanIns {
            consts: p[0],
            carry: p[1],
            xs: p[2],
        })
    }

    /// Splits a scan's results.
    pub fn outs<'a, T>(&self, v: &'a [T]) -> crate::error::Result<ScanOuts<'a, T>> {
        let p = Self::cut(v, &[self.carry, self.ys, self.saved_len()], "results")?;
        Ok(ScanOuts {
            carry: p[0],
            ys: p[1],
            saved: p[2],
        })
    }

    /// Splits the body's outputs: `(new carry, y slices)`.
    pub fn body_outs<'a, T>(&self, v: &'a [T]) -> crate::error::Result<(&'a [T], &'a [T])> {
        let p = Self::cut(v, &[self.carry, self.ys], "body outputs")?;
        Ok((p[0], p[1]))
    }

    /// Splits the `while` loop's state.
    pub fn loop_state<'a, T>(&self, v: &'a [T]) -> crate::error::Result<ScanLoop<'a, T>> {
        let (index, rest) = v.split_first().ok_or_else(|| {
            crate::error::Error::Internal("a scan's loop state has no counter".into())
        })?;
        let p = Self::cut(
            rest,
            &[self.operands(), self.ys, self.saved_len()],
            "loop state",
        )?;
        Ok(ScanLoop {
            index,
            ins: self.ins(p[0])?,
            ys: p[1],
            saved: p[2],
        })
    }
}

/// Rematerialisation policies: which values of a checkpointed block the backward pass keeps
/// (the rest it recomputes). Parsed once, at the edges (the config's `train.remat`, `--remat`),
/// from `none`, `dots_saveable`, `nothing_saveable` or `save_names(a,b)`; JAX's
/// `everything_saveable` is accepted as another spelling of `none` and `full` of
/// `nothing_saveable`. Declared from the weakest (no recomputation) to the strongest (the least
/// memory), which is the order `Ord` follows and the planner searches.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RematPolicy {
    /// No checkpoint: every value is kept.
    None,
    /// Keep values named with [`crate::trace::Tensor::named`] by one of these names.
    SaveNames(Vec<String>),
    /// Keep the outputs of matrix multiplications (`dot_general`).
    DotsSaveable,
    /// Keep nothing: recompute the whole block from its inputs.
    NothingSaveable,
}

impl RematPolicy {
    /// The policies a plan searches, weakest first.
    pub const SEARCHED: [RematPolicy; 3] = [
        RematPolicy::None,
        RematPolicy::DotsSaveable,
        RematPolicy::NothingSaveable,
    ];

    /// Whether the backward pass keeps the output of `node`.
    pub fn saves(&self, node: &Node) -> bool {
        match self {
            RematPolicy::None => true,
            RematPolicy::NothingSaveable => false,
            RematPolicy::DotsSaveable => node.op.is_dot(),
            RematPolicy::SaveNames(names) => node
                .name
                .as_ref()
                .is_some_and(|n| names.iter().any(|m| m == n)),
        }
    }
}

impl std::str::FromStr for RematPolicy {
    type Err = crate::error::Error;

    fn from_str(s: &str) -> crate::error::Result<RematPolicy> {
        let s = s.trim();
        match s {
            "none" | "everything_saveable" => Ok(RematPolicy::None),
            "nothing_saveable" | "full" => Ok(RematPolicy::NothingSaveable),
            "dots_saveable" => Ok(RematPolicy::DotsSaveable),
            _ => {
                let names = s
                    .strip_prefix("save_names(")
                    .and_then(|r| r.strip_suffix(')'))
                    .ok_or_else(|| {
                        crate::error::Error::invalid(
                            format!("remat policy `{s}`"),
                            "use none, dots_saveable, nothing_saveable or save_names(a,b)",
                        )
                    })?;
                Ok(RematPolicy::SaveNames(
                    names
                        .split(',')
                        .map(|n| n.trim().to_string())
                        .filter(|n| !n.is_empty())
                        .collect(),
                ))
            }
        }
    }
}

impl fmt::Display for RematPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RematPolicy::None => f.write_str("none"),
            RematPolicy::DotsSaveable => f.write_str("dots_saveable"),
            RematPolicy::NothingSaveable => f.write_str("nothing_saveable"),
            RematPolicy::SaveNames(n) => write!(f, "save_names({})", n.join(",")),
        }
    }
}

impl serde::Serialize for RematPolicy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for RematPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A checkpointed block: nodes `start..end` of the graph.
#[derive(Clone, Debug)]
pub struct Region {
    pub policy: RematPolicy,
    pub start: usize,
    pub end: usize,
}

/// One equation.
#[derive(Clone, Debug)]
pub struct Node {
    pub op: Op,
    pub inputs: Vec<Value>,
    pub outputs: Vec<TensorType>,
    /// A name given with `Tensor::named` (for `save_names` and dumps).
    pub name: Option<String>,
    /// The outermost checkpoint region the node was traced in.
    pub region: Option<usize>,
}

/// A traced function.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub name: String,
    pub nodes: Vec<Node>,
    /// Parameter names, in order; parameter `i` is the node with `Parameter { index: i, .. }`.
    pub params: Vec<(String, Value)>,
    pub outputs: Vec<(String, Value)>,
    pub regions: Vec<Region>,
}

impl Graph {
    pub fn ty(&self, v: Value) -> &TensorType {
        &self.nodes[v.node].outputs[v.out]
    }

    pub fn param_types(&self) -> Vec<TensorType> {
        self.params
            .iter()
            .map(|(_, v)| self.ty(*v).clone())
            .collect()
    }

    pub fn output_types(&self) -> Vec<TensorType> {
        self.outputs
            .iter()
            .map(|(_, v)| self.ty(*v).clone())
            .collect()
    }
}

/// True for element types that carry gradients.
pub fn differentiable(d: DType) -> bool {
    d.is_float()
}
