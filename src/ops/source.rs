//! Values that read no operand: parameters, constants and iota.

use crate::dtype::{DType, TensorType};
use crate::error::{shape_err, Error, Result};
use crate::ir::{Constant, Iota, Parameter};
use crate::lower::{dense_attr, Emitter};
use crate::trace::Tensor;

use super::{arity, Lowering, Rule, Vjp};

impl Rule for Parameter {
    fn name(&self) -> String {
        "parameter".into()
    }

    fn infer(&self, ins: &[TensorType]) -> Result<Vec<TensorType>> {
        arity("parameter", ins, 0)?;
        Ok(vec![self.ty.clone()])
    }

    fn vjp(&self, _: &Vjp) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![])
    }

    fn lower(&self, _: &mut Emitter, _: &Lowering) -> Result<Vec<String>> {
        Err(Error::Program(
            "parameters are bound by the enclosing function, not emitted".into(),
        ))
    }
}

impl Rule for Constant {
    fn name(&self) -> String {
        "constant".into()
    }

    fn infer(&self, ins: &[TensorType]) -> Result<Vec<TensorType>> {
        arity("constant", ins, 0)?;
        if self.bytes.len() as i64 != self.ty.size_in_bytes() {
            return shape_err(
                "constant",
                format!("{} bytes do not make a {}", self.bytes.len(), self.ty),
            );
        }
        Ok(vec![self.ty.clone()])
    }

    fn vjp(&self, _: &Vjp) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![])
    }

    fn lower(&self, e: &mut Emitter, l: &Lowering) -> Result<Vec<String>> {
        let value = format!("value = {}", dense_attr(&self.ty, &self.bytes));
        Ok(e.op("stablehlo.constant", &[], &[], &value, l.out_tys))
    }
}

impl Rule for Iota {
    fn name(&self) -> String {
        "iota".into()
    }

    fn infer(&self, ins: &[TensorType]) -> Result<Vec<TensorType>> {
        arity("iota", ins, 0)?;
        if self.axis >= self.ty.rank() {
            return shape_err(
                "iota",
                format!("axis {} out of range for {}", self.axis, self.ty),
            );
        }
        if self.ty.dtype == DType::Pred {
            return shape_err("iota", "cannot count in pred");
        }
        Ok(vec![self.ty.clone()])
    }

    fn vjp(&self, _: &Vjp) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![])
    }

    fn lower(&self, e: &mut Emitter, l: &Lowering) -> Result<Vec<String>> {
        let attr = format!("iota_dimension = {} : i64", self.axis);
        Ok(e.op("stablehlo.iota", &[], &[], &attr, l.out_tys))
    }
}
