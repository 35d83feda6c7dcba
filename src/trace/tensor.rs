//! `Tensor`: a typed value of a graph under construction, with the methods models use.

use crate::dtype::{DType, TensorType};
use crate::error::{shape_err, Result};
use crate::ir::{
    self, Binary, Cmp, ConvAttrs, ConvDims, DotDims, Op, ReduceKind, Unary, Value, Window,
};

use super::Builder;

/// A value in a graph being built. Cloning is cheap. Every method checks shapes and dtypes and
/// returns an error naming the op and the operand types.
#[derive(Clone)]
pub struct Tensor {
    pub(crate) b: Builder,
    pub(crate) v: Value,
    pub(crate) ty: TensorType,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor(%{}.{}: {})", self.v.node, self.v.out, self.ty)
    }
}

/// NumPy broadcasting of two shapes.
fn broadcast_shapes(op: &str, a: &[i64], b: &[i64]) -> Result<Vec<i64>> {
    let r = a.len().max(b.len());
    let mut out = vec![0; r];
    for i in 0..r {
        let da = if i + a.len() >= r {
            a[i + a.len() - r]
        } else {
            1
        };
        let db = if i + b.len() >= r {
            b[i + b.len() - r]
        } else {
            1
        };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return shape_err(op, format!("shapes {a:?} and {b:?} do not broadcast"));
        };
    }
    Ok(out)
}

impl Tensor {
    pub fn ty(&self) -> &TensorType {
        &self.ty
    }

    pub fn dtype(&self) -> DType {
        self.ty.dtype
    }

    pub fn shape(&self) -> &[i64] {
        &self.ty.shape
    }

    pub fn rank(&self) -> usize {
        self.ty.shape.len()
    }

    pub fn builder(&self) -> &Builder {
        &self.b
    }

    pub fn value(&self) -> Value {
        self.v
    }

    /// Names the value (for `save_names` remat policies and dumps); returns it unchanged.
    pub fn named(self, name: &str) -> Tensor {
        self.b.set_name(self.v, name);
        self
    }

    fn unary(&self, u: Unary) -> Result<Tensor> {
        self.b.push1(u, &[self])
    }

    pub fn neg(&self) -> Result<Tensor> {
        self.unary(Unary::Neg)
    }
    pub fn abs(&self) -> Result<Tensor> {
        self.unary(Unary::Abs)
    }
    pub fn sign(&self) -> Result<Tensor> {
        self.unary(Unary::Sign)
    }
    pub fn exp(&self) -> Result<Tensor> {
        self.unary(Unary::Exp)
    }
    pub fn log(&self) -> Result<Tensor> {
        self.unary(Unary::Log)
    }
    pub fn log1p(&self) -> Result<Tensor> {
        self.unary(Unary::Log1p)
    }
    pub fn tanh(&self) -> Result<Tensor> {
        self.unary(Unary::Tanh)
    }
    /// `1 / (1 + exp(-x))`.
    pub fn logistic(&self) -> Result<Tensor> {
        self.unary(Unary::Logistic)
    }
    pub fn sqrt(&self) -> Result<Tensor> {
        self.unary(Unary::Sqrt)
    }
    pub fn rsqrt(&self) -> Result<Tensor> {
        self.unary(Unary::Rsqrt)
    }
    pub fn cos(&self) -> Result<Tensor> {
        self.unary(Unary::Cos)
    }
    pub fn sin(&self) -> Result<Tensor> {
        self.unary(Unary::Sin)
    }
    pub fn erf(&self) -> Result<Tensor> {
        self.unary(Unary::Erf)
    }
    /// `1 - erf(x)`, without the cancellation of the difference for large `x`.
    pub fn erfc(&self) -> Result<Tensor> {
        self.unary(Unary::Erfc)
    }
    /// GELU, tanh approximation: ½x(1 + tanh(√(2/π)(x + 0.044715x³))) (ViT's, and SigLIP's
    /// `gelu_pytorch_tanh`).
    pub fn gelu(&self) -> Result<Tensor> {
        self.unary(Unary::GeluTanh)
    }
    /// The exact GELU, `x·Φ(x) = ½x(1 + erf(x/√2))` (PyTorch's `nn.GELU()`, open_clip's default).
    pub fn gelu_exact(&self) -> Result<Tensor> {
        self.unary(Unary::Gelu)
    }
    /// QuickGELU, `x·σ(1.702x)` (OpenAI CLIP).
    pub fn quick_gelu(&self) -> Result<Tensor> {
        self.unary(Unary::QuickGelu)
    }
    pub fn floor(&self) -> Result<Tensor> {
        self.unary(Unary::Floor)
    }
    /// Logical (pred) or bitwise (integer) not.
    pub fn not(&self) -> Result<Tensor> {
        self.unary(Unary::Not)
    }

    /// Broadcasts both operands to their NumPy-broadcast shape.
    pub fn broadcast_pair(&self, other: &Tensor, op: &str) -> Result<(Tensor, Tensor)> {
        if self.shape() == other.shape() {
            return Ok((self.clone(), other.clone()));
        }
        let shape = broadcast_shapes(op, self.shape(), other.shape())?;
        Ok((self.broadcast_to(&shape)?, other.broadcast_to(&shape)?))
    }

    fn binary(&self, other: &Tensor, op: Binary) -> Result<Tensor> {
        let name = crate::ops::rule(&Op::from(op)).name();
        let (a, b) = self.broadcast_pair(other, &name)?;
        self.b.push1(op, &[&a, &b])
    }

    pub fn add(&self, o: &Tensor) -> Result<Tensor> {
        self.binary(o, Binary::Add)
    }
    pub fn sub(&self, o: &Tensor) -> Result<Tensor> {
        self.binary(o, Binary::Sub)
    }
    pub fn mul(&self, o: &Tensor) -> Result<Tensor> {
        self.binary(o, Binary::Mul)
    }
    pub fn div(&self, o: &Tensor) -> Result<Tensor> {
        self.binary(o, Binary::Div)
    }
    pub fn pow(&self, o: &Tensor) -> Result<Tensor> {
        self.binary(o, Binary::Pow)
    }
    pub fn max(&self, o: &Tensor) -> Result<Tensor> {
        self.binary(o, Binary::Max)
    }
    pub fn min(&self, o: &Tensor) -> Result<Tensor> {
        self.binary(o, Binary::Min)
    }
    pub fn rem(&self, o: &Tensor) -> Result<Tensor> {
        self.binary(o, Binary::Rem)
    }
    pub fn and(&self, o: &Tensor) -> Result<Tensor> {
        self.binary(o, Binary::And)
    }
    pub fn or(&self, o: &Tensor) -> Result<Tensor> {
        self.binary(o, Binary::Or)
    }
    pub fn xor(&self, o: &Tensor) -> Result<Tensor> {
        self.binary(o, Binary::Xor)
    }
    pub fn shift_left(&self, o: &Tensor) -> Result<Tensor> {
        self.binary(o, Binary::ShiftLeft)
    }
    pub fn shift_right_logical(&self, o: &Tensor) -> Result<Tensor> {
        self.binary(o, Binary::ShiftRightLogical)
    }

    /// A scalar constant of this tensor's dtype.
    pub fn scalar_like(&self, v: f64) -> Result<Tensor> {
        self.b.scalar(v, self.dtype())
    }
    pub fn add_scalar(&self, v: f64) -> Result<Tensor> {
        self.add(&self.scalar_like(v)?)
    }
    pub fn sub_scalar(&self, v: f64) -> Result<Tensor> {
        self.sub(&self.scalar_like(v)?)
    }
    pub fn mul_scalar(&self, v: f64) -> Result<Tensor> {
        self.mul(&self.scalar_like(v)?)
    }
    pub fn div_scalar(&self, v: f64) -> Result<Tensor> {
        self.div(&self.scalar_like(v)?)
    }
    /// `x^v`; small integer powers are repeated multiplications (as JAX's `integer_pow`), which
    /// are exact where they can be and far cheaper than `power`.
    pub fn pow_scalar(&self, v: f64) -> Result<Tensor> {
        if v.fract() == 0.0 && (1.0..=4.0).contains(&v.abs()) {
            let mut r = self.clone();
            for _ in 1..(v.abs() as i64) {
                r = r.mul(self)?;
            }
            return if v < 0.0 {
                r.ones_like()?.div(&r)
            } else {
                Ok(r)
            };
        }
        self.pow(&self.scalar_like(v)?)
    }
    pub fn max_scalar(&self, v: f64) -> Result<Tensor> {
        self.max(&self.scalar_like(v)?)
    }
    pub fn min_scalar(&self, v: f64) -> Result<Tensor> {
        self.min(&self.scalar_like(v)?)
    }
    /// `x * x`.
    pub fn square(&self) -> Result<Tensor> {
        self.mul(self)
    }
    pub fn zeros_like(&self) -> Result<Tensor> {
        self.b.zeros(&self.ty)
    }
    pub fn ones_like(&self) -> Result<Tensor> {
        self.b.full(1.0, self.dtype(), self.shape())
    }

    fn compare(&self, o: &Tensor, c: Cmp) -> Result<Tensor> {
        let name = crate::ops::rule(&Op::from(c)).name();
        let (a, b) = self.broadcast_pair(o, &name)?;
        self.b.push1(c, &[&a, &b])
    }
    pub fn eq(&self, o: &Tensor) -> Result<Tensor> {
        self.compare(o, Cmp::Eq)
    }
    pub fn ne(&self, o: &Tensor) -> Result<Tensor> {
        self.compare(o, Cmp::Ne)
    }
    pub fn lt(&self, o: &Tensor) -> Result<Tensor> {
        self.compare(o, Cmp::Lt)
    }
    pub fn le(&self, o: &Tensor) -> Result<Tensor> {
        self.compare(o, Cmp::Le)
    }
    pub fn gt(&self, o: &Tensor) -> Result<Tensor> {
        self.compare(o, Cmp::Gt)
    }
    pub fn ge(&self, o: &Tensor) -> Result<Tensor> {
        self.compare(o, Cmp::Ge)
    }

    /// `pred ? on_true : on_false`, elementwise (operands broadcast to a common shape).
    pub fn select(pred: &Tensor, on_true: &Tensor, on_false: &Tensor) -> Result<Tensor> {
        let (t, f) = on_true.broadcast_pair(on_false, "select")?;
        let shape = broadcast_shapes("select", pred.shape(), t.shape())?;
        let (p, t, f) = (
            pred.broadcast_to(&shape)?,
            t.broadcast_to(&shape)?,
            f.broadcast_to(&shape)?,
        );
        pred.b.push1(ir::Select, &[&p, &t, &f])
    }

    /// Converts the element type (a no-op when it is already `to`).
    pub fn convert(&self, to: DType) -> Result<Tensor> {
        if to == self.dtype() {
            return Ok(self.clone());
        }
        self.b.push1(ir::Convert { to }, &[self])
    }

    /// Reinterprets the bits as `to` (same width).
    pub fn bitcast(&self, to: DType) -> Result<Tensor> {
        self.b.push1(ir::BitcastConvert { to }, &[self])
    }

    pub fn dot_general(&self, rhs: &Tensor, dims: DotDims) -> Result<Tensor> {
        self.b.push1(dims, &[self, rhs])
    }

    /// `[..., m, k] · [k, n] → [..., m, n]`.
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        if self.rank() == 0 || rhs.rank() != 2 {
            return shape_err(
                "matmul",
                format!(
                    "expects [..., m, k] and [k, n], got {} and {}",
                    self.ty, rhs.ty
                ),
            );
        }
        self.dot_general(
            rhs,
            DotDims {
                lhs_contract: vec![self.rank() - 1],
                rhs_contract: vec![0],
                ..DotDims::default()
            },
        )
    }

    /// `[b..., m, k] · [b..., k, n] → [b..., m, n]`.
    pub fn batch_matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        let r = self.rank();
        if r < 2 || rhs.rank() != r {
            return shape_err(
                "batch_matmul",
                format!(
                    "expects [b..., m, k] and [b..., k, n], got {} and {}",
                    self.ty, rhs.ty
                ),
            );
        }
        let batch: Vec<usize> = (0..r - 2).collect();
        self.dot_general(
            rhs,
            DotDims {
                lhs_batch: batch.clone(),
                rhs_batch: batch,
                lhs_contract: vec![r - 1],
                rhs_contract: vec![r - 2],
            },
        )
    }

    /// XLA broadcast: operand dimension `i` becomes output dimension `dims[i]`.
    pub fn broadcast_in_dim(&self, shape: &[i64], dims: &[usize]) -> Result<Tensor> {
        if self.shape() == shape && dims.iter().enumerate().all(|(i, &d)| i == d) {
            return Ok(self.clone());
        }
        self.b.push1(
            ir::BroadcastInDim {
                dims: dims.to_vec(),
                shape: shape.to_vec(),
            },
            &[self],
        )
    }

    /// NumPy broadcast to `shape` (trailing dimensions aligned).
    pub fn broadcast_to(&self, shape: &[i64]) -> Result<Tensor> {
        if self.shape() == shape {
            return Ok(self.clone());
        }
        if self.rank() > shape.len() {
            return shape_err(
                "broadcast",
                format!("cannot broadcast {} to {shape:?}", self.ty),
            );
        }
        let off = shape.len() - self.rank();
        // Size-1 dimensions that grow must be squeezed first: broadcast_in_dim only maps equal or 1.
        let dims: Vec<usize> = (0..self.rank()).map(|i| i + off).collect();
        self.broadcast_in_dim(shape, &dims)
    }

    pub fn reshape(&self, shape: &[i64]) -> Result<Tensor> {
        if self.shape() == shape {
            return Ok(self.clone());
        }
        self.b.push1(
            ir::Reshape {
                shape: shape.to_vec(),
            },
            &[self],
        )
    }

    pub fn transpose(&self, perm: &[usize]) -> Result<Tensor> {
        if perm.iter().enumerate().all(|(i, &p)| i == p) && perm.len() == self.rank() {
            return Ok(self.clone());
        }
        self.b.push1(
            ir::Transpose {
                perm: perm.to_vec(),
            },
            &[self],
        )
    }

    /// Swaps the last two dimensions.
    pub fn t(&self) -> Result<Tensor> {
        let r = self.rank();
        if r < 2 {
            return shape_err("transpose", format!("needs rank ≥ 2, got {}", self.ty));
        }
        let mut perm: Vec<usize> = (0..r).collect();
        perm.swap(r - 1, r - 2);
        self.transpose(&perm)
    }

    pub fn reverse(&self, dims: &[usize]) -> Result<Tensor> {
        if dims.is_empty() {
            return Ok(self.clone());
        }
        self.b.push1(
            ir::Reverse {
                dims: dims.to_vec(),
            },
            &[self],
        )
    }

    pub fn slice(&self, start: &[i64], limit: &[i64], strides: &[i64]) -> Result<Tensor> {
        self.b.push1(
            ir::Slice {
                start: start.to_vec(),
                limit: limit.to_vec(),
                strides: strides.to_vec(),
            },
            &[self],
        )
    }

    /// `x[..., start:end, ...]` along one axis.
    pub fn slice_axis(&self, axis: usize, start: i64, end: i64) -> Result<Tensor> {
        if axis >= self.rank() {
            return shape_err("slice", format!("axis {axis} out of range for {}", self.ty));
        }
        let mut s = vec![0; self.rank()];
        let mut l = self.shape().to_vec();
        s[axis] = start;
        l[axis] = end;
        self.slice(&s, &l, &vec![1; self.rank()])
    }

    /// A slice of static `sizes` at dynamic start indices (s32 scalars, one per dimension).
    pub fn dynamic_slice(&self, starts: &[Tensor], sizes: &[i64]) -> Result<Tensor> {
        let mut ins: Vec<&Tensor> = vec![self];
        ins.extend(starts.iter());
        self.b.push1(
            ir::DynamicSlice {
                sizes: sizes.to_vec(),
            },
            &ins,
        )
    }

    /// Writes `update` into a copy of `self` at dynamic start indices.
    pub fn dynamic_update_slice(&self, update: &Tensor, starts: &[Tensor]) -> Result<Tensor> {
        let mut ins: Vec<&Tensor> = vec![self, update];
        ins.extend(starts.iter());
        self.b.push1(ir::DynamicUpdateSlice, &ins)
    }

    pub fn concat(parts: &[Tensor], axis: usize) -> Result<Tensor> {
        let first = parts.first().ok_or_else(|| crate::Error::Shape {
            op: "concatenate".into(),
            message: "needs at least one operand".into(),
        })?;
        if parts.len() == 1 {
            return Ok(first.clone());
        }
        let refs: Vec<&Tensor> = parts.iter().collect();
        first.b.push1(ir::Concatenate { axis }, &refs)
    }

    /// Pads with `value` (a scalar): `low`/`high` per dimension (negative crops), `interior`
    /// between elements.
    pub fn pad(
        &self,
        value: &Tensor,
        low: &[i64],
        high: &[i64],
        interior: &[i64],
    ) -> Result<Tensor> {
        self.b.push1(
            ir::Pad {
                low: low.to_vec(),
                high: high.to_vec(),
                interior: interior.to_vec(),
            },
            &[self, value],
        )
    }

    pub fn reduce(&self, kind: ReduceKind, axes: &[usize]) -> Result<Tensor> {
        if axes.is_empty() {
            return Ok(self.clone());
        }
        self.b.push1(
            ir::Reduce {
                kind,
                axes: axes.to_vec(),
            },
            &[self],
        )
    }

    pub fn sum(&self, axes: &[usize]) -> Result<Tensor> {
        self.reduce(ReduceKind::Sum, axes)
    }

    pub fn max_over(&self, axes: &[usize]) -> Result<Tensor> {
        self.reduce(ReduceKind::Max, axes)
    }

    pub fn min_over(&self, axes: &[usize]) -> Result<Tensor> {
        self.reduce(ReduceKind::Min, axes)
    }

    /// Sum of every element.
    pub fn sum_all(&self) -> Result<Tensor> {
        let axes: Vec<usize> = (0..self.rank()).collect();
        self.sum(&axes)
    }

    /// Sum over `axes`, keeping them as size-1 dimensions.
    pub fn sum_keepdims(&self, axes: &[usize]) -> Result<Tensor> {
        let s = self.sum(axes)?;
        s.reshape(&keep_dims(self.shape(), axes))
    }

    pub fn max_keepdims(&self, axes: &[usize]) -> Result<Tensor> {
        let s = self.max_over(axes)?;
        s.reshape(&keep_dims(self.shape(), axes))
    }

    pub fn reduce_window(&self, kind: ReduceKind, window: Window) -> Result<Tensor> {
        self.b.push1(ir::ReduceWindow { kind, window }, &[self])
    }

    /// Adds each element of `source` at the position of its window's maximum in `self`.
    pub fn select_and_scatter_add(&self, source: &Tensor, window: Window) -> Result<Tensor> {
        self.b
            .push1(ir::SelectAndScatterAdd { window }, &[self, source])
    }

    pub fn conv(&self, kernel: &Tensor, attrs: ConvAttrs) -> Result<Tensor> {
        self.b.push1(attrs, &[self, kernel])
    }

    /// 2-D convolution of NHWC images with an HWIO kernel (`groups` = input channels for
    /// depthwise), explicit padding per spatial dimension.
    pub fn conv2d(
        &self,
        kernel: &Tensor,
        strides: [i64; 2],
        padding: [(i64, i64); 2],
        groups: i64,
    ) -> Result<Tensor> {
        self.conv(
            kernel,
            ConvAttrs {
                strides: strides.to_vec(),
                padding: padding.to_vec(),
                lhs_dilation: vec![1, 1],
                rhs_dilation: vec![1, 1],
                feature_groups: groups,
                batch_groups: 1,
                dims: ConvDims::nhwc(2),
            },
        )
    }

    /// Rows `ids` of this table: `[V, D...]` and s32 ids of any shape → `ids.shape ++ [D...]`.
    pub fn take_rows(&self, ids: &Tensor) -> Result<Tensor> {
        self.b.push1(ir::Gather, &[self, ids])
    }

    /// Adds `updates` into rows `ids` of `self`.
    pub fn scatter_add_rows(&self, ids: &Tensor, updates: &Tensor) -> Result<Tensor> {
        self.b.push1(ir::ScatterAdd, &[self, ids, updates])
    }

    /// Asks the SPMD partitioner to lay this value out by logical axis names, one per dimension
    /// (`None`: not split), e.g. `x.constrain(&[Some("batch"), None, Some("embed")])`.
    pub fn constrain(&self, axes: &[Option<&str>]) -> Result<Tensor> {
        self.constrain_axes(
            &axes
                .iter()
                .map(|a| a.map(str::to_string))
                .collect::<Vec<_>>(),
        )
    }

    pub fn constrain_axes(&self, axes: &[Option<String>]) -> Result<Tensor> {
        self.b.push1(
            ir::ShardingConstraint {
                axes: axes.to_vec(),
            },
            &[self],
        )
    }

    /// Threefry random bits from a `u64[2]` key: returns the next key and `u32` bits of `shape`.
    pub fn random_bits(&self, shape: &[i64]) -> Result<(Tensor, Tensor)> {
        let mut o = self.b.push(
            ir::RngBitGenerator {
                shape: shape.to_vec(),
            },
            &[self],
        )?;
        let bits = o.remove(1);
        Ok((o.remove(0), bits))
    }
}

/// `shape` with `axes` set to 1.
pub(crate) fn keep_dims(shape: &[i64], axes: &[usize]) -> Vec<i64> {
    shape
        .iter()
        .enumerate()
        .map(|(i, &d)| if axes.contains(&i) { 1 } else { d })
        .collect()
}

impl Builder {
    /// Passes values through an `optimization_barrier`.
    pub fn optimization_barrier(&self, values: &[Tensor]) -> Result<Vec<Tensor>> {
        if values.is_empty() {
            return Ok(vec![]);
        }
        let refs: Vec<&Tensor> = values.iter().collect();
        self.push(ir::OptimizationBarrier, &refs)
    }
}
