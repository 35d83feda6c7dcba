//! The primitive operations, grouped in families. Each op is a type of its own whose attributes
//! are its fields; `crate::ops` gives every op type its shape rule, derivative and lowering in one
//! `impl`, and routes an [`Op`] to it with one exhaustive match per family, so an op added to a
//! family does not compile until it has all three.

use std::sync::Arc;

use crate::dtype::{DType, TensorType};

use super::{
    AllGather, AllToAll, AxisIndex, Binary, Cmp, ConvAttrs, DotDims, ManualRegion, Ppermute, Psum,
    ReduceKind, ReduceScatter, Scan, Unary, Window,
};

/// Declares a family enum whose variants each hold one op type, and `From<op> for Op`.
macro_rules! family {
    ($(#[$doc:meta])* $family:ident { $($(#[$vdoc:meta])* $variant:ident($ty:ty)),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Debug)]
        pub enum $family {
            $($(#[$vdoc])* $variant($ty)),*
        }
        impl $family {
            /// The family's op types, by variant name.
            pub const TYPES: &'static [&'static str] = &[$(stringify!($variant)),*];

            /// This op's type, by variant name.
            pub fn type_name(&self) -> &'static str {
                match self {
                    $($family::$variant(_) => stringify!($variant)),*
                }
            }
        }
        $(impl From<$ty> for Op {
            fn from(op: $ty) -> Op {
                Op::$family($family::$variant(op))
            }
        })*
    };
}

/// One primitive: its family, then the op.
#[derive(Clone, Debug)]
pub enum Op {
    Source(Source),
    Elementwise(Elementwise),
    Structural(Structural),
    Linalg(Linalg),
    Reduction(Reduction),
    Control(Control),
    Collective(Collective),
}

family! {
    /// Values that read no operand.
    Source {
        Parameter(Parameter),
        Constant(Constant),
        Iota(Iota),
    }
}

family! {
    /// Functions applied element by element.
    Elementwise {
        Unary(Unary),
        Binary(Binary),
        Compare(Cmp),
        Select(Select),
        Convert(Convert),
        BitcastConvert(BitcastConvert),
    }
}

family! {
    /// Ops that move data without arithmetic.
    Structural {
        BroadcastInDim(BroadcastInDim),
        Reshape(Reshape),
        Transpose(Transpose),
        Reverse(Reverse),
        Slice(Slice),
        DynamicSlice(DynamicSlice),
        DynamicUpdateSlice(DynamicUpdateSlice),
        Concatenate(Concatenate),
        Pad(Pad),
        Gather(Gather),
        ScatterAdd(ScatterAdd),
    }
}

family! {
    /// Matrix products and convolutions.
    Linalg {
        DotGeneral(DotDims),
        Conv(Box<ConvAttrs>),
    }
}

family! {
    /// Reductions over dimensions and over windows.
    Reduction {
        Reduce(Reduce),
        ReduceWindow(ReduceWindow),
        SelectAndScatterAdd(SelectAndScatterAdd),
    }
}

family! {
    /// Randomness, barriers, loops and layout hints.
    Control {
        RngBitGenerator(RngBitGenerator),
        OptimizationBarrier(OptimizationBarrier),
        StopGradient(StopGradient),
        Scan(Box<Scan>),
        ShardingConstraint(ShardingConstraint),
        Manual(Box<ManualRegion>),
    }
}

family! {
    /// Communication between the devices of a manual region, over named mesh axes.
    Collective {
        Psum(Psum),
        AllGather(AllGather),
        ReduceScatter(ReduceScatter),
        Ppermute(Ppermute),
        AllToAll(AllToAll),
        AxisIndex(AxisIndex),
    }
}

impl From<ManualRegion> for Op {
    fn from(r: ManualRegion) -> Op {
        Op::Control(Control::Manual(Box::new(r)))
    }
}

impl From<Scan> for Op {
    fn from(s: Scan) -> Op {
        Op::Control(Control::Scan(Box::new(s)))
    }
}

impl From<ConvAttrs> for Op {
    fn from(a: ConvAttrs) -> Op {
        Op::Linalg(Linalg::Conv(Box::new(a)))
    }
}

/// Parameter `index` of the enclosing function.
#[derive(Clone, Debug)]
pub struct Parameter {
    pub index: usize,
    pub ty: TensorType,
}

/// Little-endian bytes of a dense array of type `ty`.
#[derive(Clone, Debug)]
pub struct Constant {
    pub bytes: Arc<Vec<u8>>,
    pub ty: TensorType,
}

/// Counts along `axis`.
#[derive(Clone, Debug)]
pub struct Iota {
    pub axis: usize,
    pub ty: TensorType,
}

/// `pred ? on_true : on_false`, element by element.
#[derive(Clone, Debug)]
pub struct Select;

/// Converts values to another element type.
#[derive(Clone, Debug)]
pub struct Convert {
    pub to: DType,
}

/// Reinterprets the bits as another type of the same width.
#[derive(Clone, Debug)]
pub struct BitcastConvert {
    pub to: DType,
}

/// `dims[i]` is the output dimension that operand dimension `i` maps to.
#[derive(Clone, Debug)]
pub struct BroadcastInDim {
    pub dims: Vec<usize>,
    pub shape: Vec<i64>,
}

#[derive(Clone, Debug)]
pub struct Reshape {
    pub shape: Vec<i64>,
}

#[derive(Clone, Debug)]
pub struct Transpose {
    pub perm: Vec<usize>,
}

#[derive(Clone, Debug)]
pub struct Reverse {
    pub dims: Vec<usize>,
}

#[derive(Clone, Debug)]
pub struct Slice {
    pub start: Vec<i64>,
    pub limit: Vec<i64>,
    pub strides: Vec<i64>,
}

/// Inputs: operand, then one s32 scalar start index per dimension.
#[derive(Clone, Debug)]
pub struct DynamicSlice {
    pub sizes: Vec<i64>,
}

/// Inputs: operand, update, then one s32 scalar start index per dimension.
#[derive(Clone, Debug)]
pub struct DynamicUpdateSlice;

#[derive(Clone, Debug)]
pub struct Concatenate {
    pub axis: usize,
}

/// Inputs: operand, padding value (scalar).
#[derive(Clone, Debug)]
pub struct Pad {
    pub low: Vec<i64>,
    pub high: Vec<i64>,
    pub interior: Vec<i64>,
}

/// Rows of a table: inputs `table [V, ...]`, `ids` (s32, any shape); output `ids.shape ++ table.shape[1..]`.
#[derive(Clone, Debug)]
pub struct Gather;

/// Adds `updates [ids.shape ++ target.shape[1..]]` into rows `ids` of `target`.
#[derive(Clone, Debug)]
pub struct ScatterAdd;

#[derive(Clone, Debug)]
pub struct Reduce {
    pub kind: ReduceKind,
    pub axes: Vec<usize>,
}

#[derive(Clone, Debug)]
pub struct ReduceWindow {
    pub kind: ReduceKind,
    pub window: Window,
}

/// The derivative of max pooling: adds each `source` element at the position of its window's
/// maximum in `operand`. Inputs: operand, source.
#[derive(Clone, Debug)]
pub struct SelectAndScatterAdd {
    pub window: Window,
}

/// Threefry: input key `u64[2]`; outputs the next key and `u32` bits of the requested shape.
#[derive(Clone, Debug)]
pub struct RngBitGenerator {
    pub shape: Vec<i64>,
}

/// Identity that XLA may not look through (keeps recomputation from being merged back).
#[derive(Clone, Debug)]
pub struct OptimizationBarrier;

/// Identity whose derivative is zero; it emits nothing.
#[derive(Clone, Debug)]
pub struct StopGradient;

/// Identity that asks the SPMD partitioner to lay the value out by these logical axis names
/// (`None`: not split); the rules file maps them to mesh axes. Without partitioning it
/// disappears.
#[derive(Clone, Debug)]
pub struct ShardingConstraint {
    pub axes: Vec<Option<String>>,
}

impl Op {
    /// The op's type (`DotGeneral`, `Scan`, ...): one per op type of the families, for
    /// coverage checks. Its readable name, for errors and dumps, is its rule's
    /// (`crate::ops::Rule::name`).
    pub fn type_name(&self) -> &'static str {
        match self {
            Op::Source(f) => f.type_name(),
            Op::Elementwise(f) => f.type_name(),
            Op::Structural(f) => f.type_name(),
            Op::Linalg(f) => f.type_name(),
            Op::Reduction(f) => f.type_name(),
            Op::Control(f) => f.type_name(),
            Op::Collective(f) => f.type_name(),
        }
    }

    /// Every op type of every family.
    pub fn all_types() -> Vec<&'static str> {
        [
            Source::TYPES,
            Elementwise::TYPES,
            Structural::TYPES,
            Linalg::TYPES,
            Reduction::TYPES,
            Control::TYPES,
            Collective::TYPES,
        ]
        .concat()
    }

    /// The parameter this node binds, if it is one.
    pub fn as_parameter(&self) -> Option<&Parameter> {
        match self {
            Op::Source(Source::Parameter(p)) => Some(p),
            _ => None,
        }
    }

    pub fn is_parameter(&self) -> bool {
        self.as_parameter().is_some()
    }

    /// The loop this node runs, if it is one.
    pub fn as_scan(&self) -> Option<&Scan> {
        match self {
            Op::Control(Control::Scan(s)) => Some(s),
            _ => None,
        }
    }

    /// The manual region this node runs, if it is one.
    pub fn as_manual(&self) -> Option<&ManualRegion> {
        match self {
            Op::Control(Control::Manual(r)) => Some(r),
            _ => None,
        }
    }

    /// Whether the node is a matrix product (what `dots_saveable` keeps).
    pub fn is_dot(&self) -> bool {
        matches!(self, Op::Linalg(Linalg::DotGeneral(_)))
    }

    /// The attributes shown in a graph dump: the op's fields, or a summary for loops.
    pub fn dump_attrs(&self) -> String {
        match self {
            Op::Source(Source::Iota(i)) => return format!(" axis={}", i.axis),
            Op::Source(_) => return String::new(),
            Op::Structural(Structural::BroadcastInDim(b)) => return format!(" dims={:?}", b.dims),
            Op::Control(Control::Manual(r)) => {
                return format!(
                    " name={} manual={:?} body={}",
                    r.name, r.manual, r.body.name
                )
            }
            Op::Control(Control::Scan(s)) => {
                return format!(
                    " length={} reverse={} body={}",
                    s.length, s.reverse, s.body.name
                )
            }
            _ => {}
        }
        // `Family(Op { fields })` → ` { fields }`; ops without fields show nothing.
        let d = format!("{self:?}");
        let inner = d
            .split_once('(')
            .and_then(|(_, r)| r.split_once('('))
            .map_or("", |(_, r)| r);
        let inner = inner.strip_suffix("))").unwrap_or(inner);
        match inner.find(['{', '(']) {
            Some(p) => format!(" {}", &inner[p..]),
            None => String::new(),
        }
    }
}
