//! Elementwise functions, comparisons, selection and conversions.

use crate::dtype::{DType, TensorType};
use crate::error::{shape_err, Result};
use crate::ir::{Binary, BitcastConvert, Cmp, Convert, Select, Unary};
use crate::lower::Emitter;
use crate::trace::Tensor;

use super::{arity, cot0, show, Lowering, Rule, Vjp};

fn unary_name(u: Unary) -> String {
    format!("{u:?}").to_lowercase()
}

impl Rule for Unary {
    fn name(&self) -> String {
        format!("{self:?}").to_lowercase()
    }

    fn infer(&self, ins: &[TensorType]) -> Result<Vec<TensorType>> {
        let name = unary_name(*self);
        arity(&name, ins, 1)?;
        let t = &ins[0];
        let ok = match self {
            Unary::Neg | Unary::Abs | Unary::Sign => {
                t.dtype.is_float() || matches!(t.dtype, DType::S32 | DType::S64)
            }
            Unary::Not => !t.dtype.is_float(),
            _ => t.dtype.is_float(),
        };
        if !ok {
            return shape_err(&name, format!("not defined for {t}"));
        }
        Ok(vec![t.clone()])
    }

    fn vjp(&self, v: &Vjp) -> Result<Vec<Option<Tensor>>> {
        let g = cot0(&unary_name(*self), v.cots)?;
        let (x, y) = (&v.ins[0], &v.outs[0]);
        let d = match self {
            Unary::Neg => g.neg()?,
            Unary::Abs => g.mul(&x.sign()?)?,
            Unary::Sign | Unary::Floor | Unary::Not => return Ok(vec![None]),
            // d exp(x) = exp(x)
            Unary::Exp => g.mul(y)?,
            Unary::Log => g.div(x)?,
            Unary::Log1p => g.div(&x.add_scalar(1.0)?)?,
            // d tanh = 1 - tanh²
            Unary::Tanh => g.mul(&y.square()?.neg()?.add_scalar(1.0)?)?,
            // d σ = σ (1 - σ)
            Unary::Logistic => g.mul(&y.mul(&y.neg()?.add_scalar(1.0)?)?)?,
            // d √x = 1 / (2 √x)
            Unary::Sqrt => g.div(&y.mul_scalar(2.0)?)?,
            // d x^{-1/2} = -½ x^{-3/2} = -½ y / x
            Unary::Rsqrt => g.mul(&y.div(x)?.mul_scalar(-0.5)?)?,
            Unary::Cos => g.mul(&x.sin()?.neg()?)?,
            Unary::Sin => g.mul(&x.cos()?)?,
            Unary::GeluTanh => g.mul(&gelu_tanh_slope(x)?)?,
            Unary::Gelu => g.mul(&gelu_slope(x)?)?,
            Unary::QuickGelu => g.mul(&quick_gelu_slope(x)?)?,
            // d erf = 2/√π exp(-x²)
            Unary::Erf => g.mul(&x.square()?.neg()?.exp()?.mul_scalar(TWO_OVER_SQRT_PI)?)?,
            Unary::Erfc => g.mul(&x.square()?.neg()?.exp()?.mul_scalar(-TWO_OVER_SQRT_PI)?)?,
        };
        Ok(vec![Some(d)])
    }

    fn lower(&self, e: &mut Emitter, l: &Lowering) -> Result<Vec<String>> {
        let op = match self {
            Unary::Neg => "stablehlo.negate",
            Unary::Abs => "stablehlo.abs",
            Unary::Sign => "stablehlo.sign",
            Unary::Exp => "stablehlo.exponential",
            Unary::Log => "stablehlo.log",
            Unary::Log1p => "stablehlo.log_plus_one",
            Unary::Tanh => "stablehlo.tanh",
            Unary::Logistic => "stablehlo.logistic",
            Unary::Sqrt => "stablehlo.sqrt",
            Unary::Rsqrt => "stablehlo.rsqrt",
            Unary::Cos => "stablehlo.cosine",
            Unary::Sin => "stablehlo.sine",
            Unary::Erf => "chlo.erf",
            Unary::Erfc => "chlo.erfc",
            Unary::GeluTanh => return Ok(vec![lower_gelu_tanh(e, &l.ins[0], &l.in_tys[0])]),
            Unary::Gelu => return Ok(vec![lower_gelu(e, &l.ins[0], &l.in_tys[0])]),
            Unary::QuickGelu => return Ok(vec![lower_quick_gelu(e, &l.ins[0], &l.in_tys[0])]),
            Unary::Floor => "stablehlo.floor",
            Unary::Not => "stablehlo.not",
        };
        Ok(e.op(op, l.ins, l.in_tys, "", l.out_tys))
    }
}

/// 2/√π, the scale of erf's derivative.
const TWO_OVER_SQRT_PI: f64 = std::f64::consts::FRAC_2_SQRT_PI;
/// √(2/π) and the cubic coefficient of GELU's tanh form.
const GELU_C: f64 = 0.797_884_560_802_865_4;
const GELU_K: f64 = 0.044715;
/// 1/√(2π), the standard normal density's scale.
const INV_SQRT_2PI: f64 = std::f64::consts::FRAC_1_SQRT_2 * std::f64::consts::FRAC_2_SQRT_PI / 2.0;
/// QuickGELU's slope inside the sigmoid.
const QUICK_GELU_A: f64 = 1.702;

/// Writes an elementwise function of one operand as StableHLO ops, every value of `t`'s type.
struct Elementwise<'e> {
    e: &'e mut Emitter,
    t: TensorType,
}

impl Elementwise<'_> {
    fn constant(&mut self, v: f64) -> String {
        self.e.constant(&format!("{v:.17e}"), &self.t)
    }
    fn unary(&mut self, op: &str, a: &str) -> String {
        let tys = std::slice::from_ref(&self.t);
        self.e.op1(op, &[a.to_string()], tys, "", &self.t)
    }
    fn binary(&mut self, op: &str, a: &str, b: &str) -> String {
        self.e.binary(op, a, b, &self.t)
    }
    fn mul(&mut self, a: &str, b: &str) -> String {
        self.binary("stablehlo.multiply", a, b)
    }
    fn add(&mut self, a: &str, b: &str) -> String {
        self.binary("stablehlo.add", a, b)
    }
}

/// `½x(1 + tanh(√(2/π)(x + kx³)))` written out in StableHLO, in the order the composite it
/// replaces wrote it (so the forward numerics are unchanged).
fn lower_gelu_tanh(e: &mut Emitter, x: &str, t: &TensorType) -> String {
    let mut w = Elementwise { e, t: t.clone() };
    let (k, c, one, half) = (
        w.constant(GELU_K),
        w.constant(GELU_C),
        w.constant(1.0),
        w.constant(0.5),
    );
    let x2 = w.mul(x, x);
    let x3 = w.mul(&x2, x);
    let kx3 = w.mul(&x3, &k);
    let s = w.add(x, &kx3);
    let u = w.mul(&s, &c);
    let th = w.unary("stablehlo.tanh", &u);
    let p = w.add(&th, &one);
    let q = w.mul(x, &p);
    w.mul(&q, &half)
}

/// `½x(1 + erf(x/√2))`, in the order of the composite it replaces.
fn lower_gelu(e: &mut Emitter, x: &str, t: &TensorType) -> String {
    let mut w = Elementwise { e, t: t.clone() };
    let (c, one, half) = (
        w.constant(std::f64::consts::FRAC_1_SQRT_2),
        w.constant(1.0),
        w.constant(0.5),
    );
    let xc = w.mul(x, &c);
    let erf = w.unary("chlo.erf", &xc);
    let p = w.add(&erf, &one);
    let q = w.mul(x, &p);
    w.mul(&q, &half)
}

/// `x·σ(1.702x)`, in the order of the composite it replaces.
fn lower_quick_gelu(e: &mut Emitter, x: &str, t: &TensorType) -> String {
    let mut w = Elementwise { e, t: t.clone() };
    let a = w.constant(QUICK_GELU_A);
    let u = w.mul(x, &a);
    let s = w.unary("stablehlo.logistic", &u);
    w.mul(x, &s)
}

/// d/dx of GELU's tanh form, from `x` alone and without `tanh`: with `u = √(2/π)(x + kx³)`,
/// `½(1 + tanh u) = σ(2u)` and `1 - tanh² u = 4σ'(2u)`, so the slope is
/// `σ(2u) + ½x(1 - tanh² u)·√(2/π)(1 + 3kx²)`. A `tanh` here would be merged with the forward
/// pass's, whose array the compiler would then keep for the backward pass; [`sigmoid_from_exp`]
/// is also free of the cancellation in `1 - tanh²`.
fn gelu_tanh_slope(x: &Tensor) -> Result<Tensor> {
    let x2 = x.square()?;
    let u = x.add(&x2.mul(x)?.mul_scalar(GELU_K)?)?.mul_scalar(GELU_C)?;
    let (sigma, slope) = sigmoid_from_exp(&u.mul_scalar(2.0)?)?;
    let sech2 = slope.mul_scalar(4.0)?;
    let du = x2
        .mul_scalar(3.0 * GELU_K)?
        .add_scalar(1.0)?
        .mul_scalar(GELU_C)?;
    sigma.add(&x.mul(&sech2)?.mul(&du)?.mul_scalar(0.5)?)
}

/// `σ(u)` and `σ'(u) = σ(u)(1 - σ(u))` through `e = exp(-|u|)`: `σ(u)` is `1/(1+e)` for
/// `u ≥ 0` and `e/(1+e)` below, and `σ'(u) = e/(1+e)²`. No `logistic` (it would be merged with
/// a forward one, which the compiler would then keep for the backward pass), no overflow, no
/// cancellation in `1 - σ`.
fn sigmoid_from_exp(u: &Tensor) -> Result<(Tensor, Tensor)> {
    let e = u.abs()?.neg()?.exp()?;
    let r = u.ones_like()?.div(&e.add_scalar(1.0)?)?;
    let sigma = Tensor::select(&u.ge(&u.zeros_like()?)?, &r, &e.mul(&r)?)?;
    let slope = e.mul(&r.square()?)?;
    Ok((sigma, slope))
}

/// d/dx of the exact GELU, `Φ(x) + x·φ(x)`, from `x` alone: `Φ(x) = ½ erfc(-x/√2)`, which is
/// not the forward pass's `erf(x/√2)` (so the compiler does not keep that array for the backward
/// pass) and is accurate in the left tail, where `1 + erf` cancels.
fn gelu_slope(x: &Tensor) -> Result<Tensor> {
    let cdf = x
        .mul_scalar(-std::f64::consts::FRAC_1_SQRT_2)?
        .erfc()?
        .mul_scalar(0.5)?;
    let pdf = x
        .square()?
        .mul_scalar(-0.5)?
        .exp()?
        .mul_scalar(INV_SQRT_2PI)?;
    cdf.add(&x.mul(&pdf)?)
}

/// d/dx of QuickGELU, `σ(ax) + a·x·σ'(ax)` with `a = 1.702`, from `x` alone.
fn quick_gelu_slope(x: &Tensor) -> Result<Tensor> {
    let (sigma, slope) = sigmoid_from_exp(&x.mul_scalar(QUICK_GELU_A)?)?;
    sigma.add(&x.mul(&slope)?.mul_scalar(QUICK_GELU_A)?)
}

/// The StableHLO op of a binary function (also the combiner of reduction regions).
pub(crate) fn binary_op(b: Binary) -> &'static str {
    match b {
        Binary::Add => "stablehlo.add",
        Binary::Sub => "stablehlo.subtract",
        Binary::Mul => "stablehlo.multiply",
        Binary::Div => "stablehlo.divide",
        Binary::Pow => "stablehlo.power",
        Binary::Max => "stablehlo.maximum",
        Binary::Min => "stablehlo.minimum",
        Binary::Rem => "stablehlo.remainder",
        Binary::And => "stablehlo.and",
        Binary::Or => "stablehlo.or",
        Binary::Xor => "stablehlo.xor",
        Binary::ShiftLeft => "stablehlo.shift_left",
        Binary::ShiftRightLogical => "stablehlo.shift_right_logical",
    }
}

impl Rule for Binary {
    fn name(&self) -> String {
        format!("{self:?}").to_lowercase()
    }

    fn infer(&self, ins: &[TensorType]) -> Result<Vec<TensorType>> {
        let name = format!("{self:?}").to_lowercase();
        arity(&name, ins, 2)?;
        let (a, b) = (&ins[0], &ins[1]);
        if a != b {
            return shape_err(
                &name,
                format!("operands must have the same type, got {}", show(ins)),
            );
        }
        let ok = match self {
            Binary::Pow => a.dtype.is_float(),
            Binary::And | Binary::Or | Binary::Xor => !a.dtype.is_float(),
            Binary::ShiftLeft | Binary::ShiftRightLogical => a.dtype.is_integer(),
            _ => a.dtype != DType::Pred,
        };
        if !ok {
            return shape_err(&name, format!("not defined for {a}"));
        }
        Ok(vec![a.clone()])
    }

    fn vjp(&self, v: &Vjp) -> Result<Vec<Option<Tensor>>> {
        let g = cot0(&format!("{self:?}").to_lowercase(), v.cots)?;
        let (a, b, y) = (&v.ins[0], &v.ins[1], &v.outs[0]);
        let (da, db) = match self {
            Binary::Add => (g.clone(), g),
            Binary::Sub => (g.clone(), g.neg()?),
            Binary::Mul => (g.mul(b)?, g.mul(a)?),
            // d(a/b) = g/b, -g a/b² = -g y / b
            Binary::Div => (g.div(b)?, g.mul(y)?.div(b)?.neg()?),
            Binary::Pow => {
                // d a^b / da = b a^(b-1); d a^b / db = log(a) a^b, with log(0) read as 0
                // where it would multiply a zero power (as JAX does).
                let da = g.mul(&b.mul(&a.pow(&b.sub_scalar(1.0)?)?)?)?;
                let zero = a.eq(&a.zeros_like()?)?;
                let safe = Tensor::select(&zero, &a.ones_like()?, a)?;
                (da, g.mul(&safe.log()?.mul(y)?)?)
            }
            Binary::Max | Binary::Min => {
                // The larger (smaller) operand takes the gradient; ties split it evenly.
                let wins = if *self == Binary::Max {
                    a.gt(b)?
                } else {
                    a.lt(b)?
                };
                let tie = a.eq(b)?;
                let one = g.ones_like()?;
                let half = one.mul_scalar(0.5)?;
                let zero = g.zeros_like()?;
                let wa = Tensor::select(&wins, &one, &Tensor::select(&tie, &half, &zero)?)?;
                let wb = one.sub(&wa)?;
                (g.mul(&wa)?, g.mul(&wb)?)
            }
            // a rem b = a - b·trunc(a/b)
            Binary::Rem => {
                let q = a.div(b)?;
                let trunc = q.sign()?.mul(&q.abs()?.floor()?)?;
                (g.clone(), g.mul(&trunc)?.neg()?)
            }
            Binary::And
            | Binary::Or
            | Binary::Xor
            | Binary::ShiftLeft
            | Binary::ShiftRightLogical => return Ok(vec![None, None]),
        };
        Ok(vec![Some(da), Some(db)])
    }

    fn lower(&self, e: &mut Emitter, l: &Lowering) -> Result<Vec<String>> {
        Ok(e.op(binary_op(*self), l.ins, l.in_tys, "", l.out_tys))
    }
}

impl Rule for Cmp {
    fn name(&self) -> String {
        format!("compare_{self:?}").to_lowercase()
    }

    fn infer(&self, ins: &[TensorType]) -> Result<Vec<TensorType>> {
        let name = format!("compare_{self:?}").to_lowercase();
        arity(&name, ins, 2)?;
        if ins[0] != ins[1] {
            return shape_err(
                &name,
                format!("operands must have the same type, got {}", show(ins)),
            );
        }
        Ok(vec![ins[0].with_dtype(DType::Pred)])
    }

    fn vjp(&self, _: &Vjp) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![None, None])
    }

    fn lower(&self, e: &mut Emitter, l: &Lowering) -> Result<Vec<String>> {
        let dir = match self {
            Cmp::Eq => "EQ",
            Cmp::Ne => "NE",
            Cmp::Lt => "LT",
            Cmp::Le => "LE",
            Cmp::Gt => "GT",
            Cmp::Ge => "GE",
        };
        let attr = format!("comparison_direction = #stablehlo<comparison_direction {dir}>");
        Ok(l.op(e, "stablehlo.compare", &attr))
    }
}

impl Rule for Select {
    fn name(&self) -> String {
        "select".into()
    }

    fn infer(&self, ins: &[TensorType]) -> Result<Vec<TensorType>> {
        arity("select", ins, 3)?;
        if ins[0].dtype != DType::Pred || ins[0].shape != ins[1].shape || ins[1] != ins[2] {
            return shape_err(
                "select",
                format!("expects pred[s], T[s], T[s]; got {}", show(ins)),
            );
        }
        Ok(vec![ins[1].clone()])
    }

    fn vjp(&self, v: &Vjp) -> Result<Vec<Option<Tensor>>> {
        let g = cot0("select", v.cots)?;
        let z = g.zeros_like()?;
        Ok(vec![
            None,
            Some(Tensor::select(&v.ins[0], &g, &z)?),
            Some(Tensor::select(&v.ins[0], &z, &g)?),
        ])
    }

    fn lower(&self, e: &mut Emitter, l: &Lowering) -> Result<Vec<String>> {
        Ok(l.op(e, "stablehlo.select", ""))
    }
}

impl Rule for Convert {
    fn name(&self) -> String {
        "convert".into()
    }

    fn infer(&self, ins: &[TensorType]) -> Result<Vec<TensorType>> {
        arity("convert", ins, 1)?;
        Ok(vec![ins[0].with_dtype(self.to)])
    }

    fn vjp(&self, v: &Vjp) -> Result<Vec<Option<Tensor>>> {
        let from = v.ins[0].dtype();
        if from.is_float() && self.to.is_float() {
            Ok(vec![Some(cot0("convert", v.cots)?.convert(from)?)])
        } else {
            Ok(vec![None])
        }
    }

    fn lower(&self, e: &mut Emitter, l: &Lowering) -> Result<Vec<String>> {
        Ok(l.op(e, "stablehlo.convert", ""))
    }
}

impl Rule for BitcastConvert {
    fn name(&self) -> String {
        "bitcast_convert".into()
    }

    fn infer(&self, ins: &[TensorType]) -> Result<Vec<TensorType>> {
        arity("bitcast_convert", ins, 1)?;
        let (from, to) = (ins[0].dtype, self.to);
        if from.size_in_bytes() != to.size_in_bytes() || from == DType::Pred {
            return shape_err(
                "bitcast_convert",
                format!("cannot reinterpret {} as {to}", ins[0]),
            );
        }
        Ok(vec![ins[0].with_dtype(to)])
    }

    fn vjp(&self, _: &Vjp) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![None])
    }

    fn lower(&self, e: &mut Emitter, l: &Lowering) -> Result<Vec<String>> {
        Ok(l.op(e, "stablehlo.bitcast_convert", ""))
    }
}
