//! Elementwise ops, constants and iota.

use crate::dtype::{DType, TensorType};
use crate::error::{shape_err, Error, Result};
use crate::ir::{Binary, Cmp, Op, Unary};
use crate::lower::{dense_attr, Emitter};
use crate::trace::Tensor;

use super::{arity, cot0, show};

pub fn infer(op: &Op, ins: &[TensorType]) -> Result<Vec<TensorType>> {
    let name = op.name();
    match op {
        Op::Parameter { ty, .. } => {
            arity(op, ins, 0)?;
            Ok(vec![ty.clone()])
        }
        Op::Constant { bytes, ty } => {
            arity(op, ins, 0)?;
            if bytes.len() as i64 != ty.size_in_bytes() {
                return shape_err(&name, format!("{} bytes do not make a {ty}", bytes.len()));
            }
            Ok(vec![ty.clone()])
        }
        Op::Iota { axis, ty } => {
            arity(op, ins, 0)?;
            if *axis >= ty.rank() {
                return shape_err(&name, format!("axis {axis} out of range for {ty}"));
            }
            if ty.dtype == DType::Pred {
                return shape_err(&name, "cannot count in pred");
            }
            Ok(vec![ty.clone()])
        }
        Op::Unary(u) => {
            arity(op, ins, 1)?;
            let t = &ins[0];
            let ok = match u {
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
        Op::Binary(bop) => {
            arity(op, ins, 2)?;
            let (a, b) = (&ins[0], &ins[1]);
            if a != b {
                return shape_err(
                    &name,
                    format!("operands must have the same type, got {}", show(ins)),
                );
            }
            let ok = match bop {
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
        Op::Compare(_) => {
            arity(op, ins, 2)?;
            if ins[0] != ins[1] {
                return shape_err(
                    &name,
                    format!("operands must have the same type, got {}", show(ins)),
                );
            }
            Ok(vec![ins[0].with_dtype(DType::Pred)])
        }
        Op::Select => {
            arity(op, ins, 3)?;
            if ins[0].dtype != DType::Pred || ins[0].shape != ins[1].shape || ins[1] != ins[2] {
                return shape_err(
                    &name,
                    format!("expects pred[s], T[s], T[s]; got {}", show(ins)),
                );
            }
            Ok(vec![ins[1].clone()])
        }
        Op::Convert { to } => {
            arity(op, ins, 1)?;
            Ok(vec![ins[0].with_dtype(*to)])
        }
        Op::BitcastConvert { to } => {
            arity(op, ins, 1)?;
            if ins[0].dtype.size_in_bytes() != to.size_in_bytes() || ins[0].dtype == DType::Pred {
                return shape_err(&name, format!("cannot reinterpret {} as {to}", ins[0]));
            }
            Ok(vec![ins[0].with_dtype(*to)])
        }
        _ => Err(Error::Program(format!("{name} is not elementwise"))),
    }
}

pub fn vjp(
    op: &Op,
    ins: &[Tensor],
    outs: &[Tensor],
    cots: &[Option<Tensor>],
) -> Result<Vec<Option<Tensor>>> {
    let none = |n: usize| Ok(vec![None; n]);
    match op {
        Op::Parameter { .. } | Op::Constant { .. } | Op::Iota { .. } => none(0),
        Op::Unary(u) => {
            let g = cot0(op, cots)?;
            let x = &ins[0];
            let y = &outs[0];
            let d = match u {
                Unary::Neg => g.neg()?,
                Unary::Abs => g.mul(&x.sign()?)?,
                Unary::Sign | Unary::Floor | Unary::Not => return none(1),
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
                // d erf = 2/√π exp(-x²)
                Unary::Erf => g.mul(
                    &x.square()?
                        .neg()?
                        .exp()?
                        .mul_scalar(2.0 / std::f64::consts::PI.sqrt())?,
                )?,
            };
            Ok(vec![Some(d)])
        }
        Op::Binary(bop) => {
            let g = cot0(op, cots)?;
            let (a, b) = (&ins[0], &ins[1]);
            let y = &outs[0];
            let (da, db) = match bop {
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
                    let wins = if *bop == Binary::Max {
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
                | Binary::ShiftRightLogical => return none(2),
            };
            Ok(vec![Some(da), Some(db)])
        }
        Op::Compare(_) => none(2),
        Op::Select => {
            let g = cot0(op, cots)?;
            let z = g.zeros_like()?;
            Ok(vec![
                None,
                Some(Tensor::select(&ins[0], &g, &z)?),
                Some(Tensor::select(&ins[0], &z, &g)?),
            ])
        }
        Op::Convert { to } => {
            let from = ins[0].dtype();
            if from.is_float() && to.is_float() {
                Ok(vec![Some(cot0(op, cots)?.convert(from)?)])
            } else {
                none(1)
            }
        }
        Op::BitcastConvert { .. } => none(1),
        _ => Err(Error::Program(format!("{} is not elementwise", op.name()))),
    }
}

fn unary_name(u: Unary) -> &'static str {
    match u {
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
        Unary::Floor => "stablehlo.floor",
        Unary::Not => "stablehlo.not",
    }
}

pub(crate) fn binary_name(b: Binary) -> &'static str {
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

pub fn lower(
    e: &mut Emitter,
    op: &Op,
    ins: &[String],
    in_tys: &[TensorType],
    out_tys: &[TensorType],
) -> Result<Vec<String>> {
    Ok(match op {
        Op::Constant { bytes, ty } => e.op(
            "stablehlo.constant",
            &[],
            &[],
            &format!("value = {}", dense_attr(ty, bytes)),
            out_tys,
        ),
        Op::Iota { axis, .. } => e.op(
            "stablehlo.iota",
            &[],
            &[],
            &format!("iota_dimension = {axis} : i64"),
            out_tys,
        ),
        Op::Unary(u) => e.op(unary_name(*u), ins, in_tys, "", out_tys),
        Op::Binary(b) => e.op(binary_name(*b), ins, in_tys, "", out_tys),
        Op::Compare(c) => {
            let dir = match c {
                Cmp::Eq => "EQ",
                Cmp::Ne => "NE",
                Cmp::Lt => "LT",
                Cmp::Le => "LE",
                Cmp::Gt => "GT",
                Cmp::Ge => "GE",
            };
            e.op(
                "stablehlo.compare",
                ins,
                in_tys,
                &format!("comparison_direction = #stablehlo<comparison_direction {dir}>"),
                out_tys,
            )
        }
        Op::Select => e.op("stablehlo.select", ins, in_tys, "", out_tys),
        Op::Convert { .. } => e.op("stablehlo.convert", ins, in_tys, "", out_tys),
        Op::BitcastConvert { .. } => e.op("stablehlo.bitcast_convert", ins, in_tys, "", out_tys),
        _ => return Err(Error::Program(format!("{} is not elementwise", op.name()))),
    })
}
