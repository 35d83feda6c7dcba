//! The graph IR: equations over typed values, with named parameters and outputs.
//!
//! A [`Graph`] is append-only while it is built: node `n` only reads values of nodes `< n`, so
//! the node order is a topological order, which both the reverse sweep and the emitter use.

use std::fmt;
use std::sync::Arc;

use crate::dtype::{DType, TensorType};

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

/// The primitive operations. Each one's shape rule, derivative and lowering live together in
/// `crate::ops`; the exhaustive matches there make every new variant decide all three.
#[derive(Clone, Debug)]
pub enum Op {
    Parameter {
        index: usize,
        ty: TensorType,
    },
    /// Little-endian bytes of a dense array of type `ty`.
    Constant {
        bytes: Arc<Vec<u8>>,
        ty: TensorType,
    },
    Iota {
        axis: usize,
        ty: TensorType,
    },
    Unary(Unary),
    Binary(Binary),
    Compare(Cmp),
    Select,
    Convert {
        to: DType,
    },
    /// Reinterprets the bits as another type of the same width.
    BitcastConvert {
        to: DType,
    },
    DotGeneral(DotDims),
    /// `dims[i]` is the output dimension that operand dimension `i` maps to.
    BroadcastInDim {
        dims: Vec<usize>,
        shape: Vec<i64>,
    },
    Reshape {
        shape: Vec<i64>,
    },
    Transpose {
        perm: Vec<usize>,
    },
    Reverse {
        dims: Vec<usize>,
    },
    Slice {
        start: Vec<i64>,
        limit: Vec<i64>,
        strides: Vec<i64>,
    },
    /// Inputs: operand, then one s32 scalar start index per dimension.
    DynamicSlice {
        sizes: Vec<i64>,
    },
    /// Inputs: operand, update, then one s32 scalar start index per dimension.
    DynamicUpdateSlice,
    Concatenate {
        axis: usize,
    },
    /// Inputs: operand, padding value (scalar).
    Pad {
        low: Vec<i64>,
        high: Vec<i64>,
        interior: Vec<i64>,
    },
    Reduce {
        kind: ReduceKind,
        axes: Vec<usize>,
    },
    ReduceWindow {
        kind: ReduceKind,
        window: Window,
    },
    /// The derivative of max pooling: adds each `source` element at the position of its window's
    /// maximum in `operand`. Inputs: operand, source.
    SelectAndScatterAdd {
        window: Window,
    },
    Conv(Box<ConvAttrs>),
    /// Rows of a table: inputs `table [V, ...]`, `ids` (s32, any shape); output `ids.shape ++ table.shape[1..]`.
    Gather,
    /// Adds `updates [ids.shape ++ target.shape[1..]]` into rows `ids` of `target`.
    ScatterAdd,
    /// Threefry: input key `u64[2]`; outputs the next key and `u32` bits of the requested shape.
    RngBitGenerator {
        shape: Vec<i64>,
    },
    /// Identity that XLA may not look through (keeps recomputation from being merged back).
    OptimizationBarrier,
    /// Identity whose derivative is zero; it emits nothing.
    StopGradient,
    Scan(Box<Scan>),
    /// Identity that asks the SPMD partitioner to lay the value out by these logical axis names
    /// (`None`: not split); the rules file maps them to mesh axes. Without partitioning it
    /// disappears.
    ShardingConstraint {
        axes: Vec<Option<String>>,
    },
}

impl Op {
    /// The op's name as it appears in errors and dumps.
    pub fn name(&self) -> String {
        match self {
            Op::Parameter { .. } => "parameter".into(),
            Op::Constant { .. } => "constant".into(),
            Op::Iota { .. } => "iota".into(),
            Op::Unary(u) => format!("{u:?}").to_lowercase(),
            Op::Binary(b) => format!("{b:?}").to_lowercase(),
            Op::Compare(c) => format!("compare_{c:?}").to_lowercase(),
            Op::Select => "select".into(),
            Op::Convert { .. } => "convert".into(),
            Op::BitcastConvert { .. } => "bitcast_convert".into(),
            Op::DotGeneral(_) => "dot_general".into(),
            Op::BroadcastInDim { .. } => "broadcast_in_dim".into(),
            Op::Reshape { .. } => "reshape".into(),
            Op::Transpose { .. } => "transpose".into(),
            Op::Reverse { .. } => "reverse".into(),
            Op::Slice { .. } => "slice".into(),
            Op::DynamicSlice { .. } => "dynamic_slice".into(),
            Op::DynamicUpdateSlice => "dynamic_update_slice".into(),
            Op::Concatenate { .. } => "concatenate".into(),
            Op::Pad { .. } => "pad".into(),
            Op::Reduce { kind, .. } => format!("reduce_{kind:?}").to_lowercase(),
            Op::ReduceWindow { kind, .. } => format!("reduce_window_{kind:?}").to_lowercase(),
            Op::SelectAndScatterAdd { .. } => "select_and_scatter_add".into(),
            Op::Conv(_) => "convolution".into(),
            Op::Gather => "gather".into(),
            Op::ScatterAdd => "scatter_add".into(),
            Op::RngBitGenerator { .. } => "rng_bit_generator".into(),
            Op::OptimizationBarrier => "optimization_barrier".into(),
            Op::StopGradient => "stop_gradient".into(),
            Op::Scan(_) => "scan".into(),
            Op::ShardingConstraint { .. } => "sharding_constraint".into(),
        }
    }
}

/// Rematerialisation policies: which values of a checkpointed block the backward pass keeps
/// (the rest it recomputes).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RematPolicy {
    /// Keep nothing: recompute the whole block from its inputs.
    NothingSaveable,
    /// Keep the outputs of matrix multiplications (`dot_general`).
    DotsSaveable,
    /// Keep values named with [`crate::trace::Tensor::named`] by one of these names.
    SaveNames(Vec<String>),
    /// Keep everything: the same as no checkpoint.
    EverythingSaveable,
}

impl RematPolicy {
    /// Parses `nothing_saveable`, `dots_saveable`, `everything_saveable`, `none`, or
    /// `save_names(a,b)`.
    pub fn parse(s: &str) -> Option<RematPolicy> {
        let s = s.trim();
        match s {
            "nothing_saveable" | "full" => Some(RematPolicy::NothingSaveable),
            "dots_saveable" => Some(RematPolicy::DotsSaveable),
            "everything_saveable" | "none" => Some(RematPolicy::EverythingSaveable),
            _ => {
                let inner = s.strip_prefix("save_names(")?.strip_suffix(')')?;
                Some(RematPolicy::SaveNames(
                    inner
                        .split(',')
                        .map(|n| n.trim().to_string())
                        .filter(|n| !n.is_empty())
                        .collect(),
                ))
            }
        }
    }

    /// Whether the backward pass keeps the output of `node`.
    pub fn saves(&self, node: &Node) -> bool {
        match self {
            RematPolicy::NothingSaveable => false,
            RematPolicy::EverythingSaveable => true,
            RematPolicy::DotsSaveable => matches!(node.op, Op::DotGeneral(_)),
            RematPolicy::SaveNames(names) => node
                .name
                .as_ref()
                .is_some_and(|n| names.iter().any(|m| m == n)),
        }
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
    /// Parameter names, in order; parameter `i` is the node with `Op::Parameter { index: i }`.
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

fn fmt_ty(t: &TensorType) -> String {
    format!(
        "{}[{}]",
        t.dtype,
        t.shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(",")
    )
}

impl fmt::Display for Graph {
    /// A readable dump: one equation per line, `%node.out` names.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = |x: &Value| {
            if x.out == 0 {
                format!("%{}", x.node)
            } else {
                format!("%{}.{}", x.node, x.out)
            }
        };
        writeln!(
            f,
            "graph {}({}) {{",
            self.name,
            self.params
                .iter()
                .map(|(n, x)| format!("{n}: {}", fmt_ty(self.ty(*x))))
                .collect::<Vec<_>>()
                .join(", ")
        )?;
        for (i, n) in self.nodes.iter().enumerate() {
            if matches!(n.op, Op::Parameter { .. }) {
                continue;
            }
            let outs = n.outputs.iter().map(fmt_ty).collect::<Vec<_>>().join(", ");
            let attrs = match &n.op {
                Op::Unary(_)
                | Op::Binary(_)
                | Op::Compare(_)
                | Op::Select
                | Op::Convert { .. }
                | Op::Reshape { .. }
                | Op::OptimizationBarrier
                | Op::Gather
                | Op::ScatterAdd
                | Op::RngBitGenerator { .. }
                | Op::DynamicUpdateSlice
                | Op::BitcastConvert { .. }
                | Op::Constant { .. }
                | Op::Parameter { .. }
                | Op::Iota { .. }
                | Op::BroadcastInDim { .. } => match &n.op {
                    Op::BroadcastInDim { dims, .. } => format!(" dims={dims:?}"),
                    Op::Iota { axis, .. } => format!(" axis={axis}"),
                    _ => String::new(),
                },
                Op::Scan(s) => format!(
                    " length={} reverse={} body={}",
                    s.length, s.reverse, s.body.name
                ),
                other => {
                    let d = format!("{other:?}");
                    match d.find(['{', '(']) {
                        Some(p) => format!(" {}", &d[p..]),
                        None => String::new(),
                    }
                }
            };
            writeln!(
                f,
                "  %{i} = {}{}({}) : {outs}{}{}",
                n.op.name(),
                attrs,
                n.inputs.iter().map(v).collect::<Vec<_>>().join(", "),
                n.name
                    .as_ref()
                    .map(|s| format!("  # {s}"))
                    .unwrap_or_default(),
                n.region
                    .map(|r| format!("  [remat {r}]"))
                    .unwrap_or_default(),
            )?;
        }
        writeln!(
            f,
            "  return {}\n}}",
            self.outputs
                .iter()
                .map(|(n, x)| format!("{n}={}", v(x)))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// True for element types that carry gradients.
pub fn differentiable(d: DType) -> bool {
    d.is_float()
}

/// Floating-point operations of matrix products and convolutions in `graph` (2 per
/// multiply–add), loops counted as many times as they run: the analytic FLOPs of a program.
pub fn flops(graph: &Graph) -> f64 {
    graph
        .nodes
        .iter()
        .map(|n| match &n.op {
            Op::DotGeneral(d) => {
                let lhs = graph.ty(n.inputs[0]);
                let k: i64 = d.lhs_contract.iter().map(|&i| lhs.shape[i]).product();
                2.0 * n.outputs[0].element_count() as f64 * k as f64
            }
            Op::Conv(a) => {
                let k = graph.ty(n.inputs[1]);
                let window: i64 = a.dims.rhs.2.iter().map(|&i| k.shape[i]).product();
                let per_out = window * k.shape[a.dims.rhs.1];
                2.0 * n.outputs[0].element_count() as f64 * per_out as f64
            }
            Op::Scan(s) => s.length as f64 * flops(&s.body),
            _ => 0.0,
        })
        .sum()
}
