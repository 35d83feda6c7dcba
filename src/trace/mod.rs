//! The builder and the [`Tensor`] handle that models are written with.
//!
//! ```
//! use basic::trace::Builder;
//! use basic::DType;
//! # fn main() -> basic::Result<()> {
//! let b = Builder::new("affine");
//! let x = b.parameter("x", DType::F32, &[4, 3])?;
//! let w = b.parameter("w", DType::F32, &[3, 2])?;
//! let y = x.matmul(&w)?.tanh()?;
//! b.output("y", &y)?;
//! let graph = b.finish();
//! assert_eq!(graph.output_types()[0].shape, vec![4, 2]);
//! # Ok(()) }
//! ```

mod composite;
pub use composite::stop_gradient;
mod manual;
pub(crate) use manual::replicated_axes;
mod tensor;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

pub use tensor::Tensor;

use crate::dtype::{DType, Element, TensorType};
use crate::error::{Error, Result};
use crate::ir::{self, Graph, Node, Op, Region, RematPolicy, Value};

struct State {
    graph: Graph,
    /// Index of the open checkpoint region, if any (regions do not nest: an inner checkpoint
    /// inside an outer one joins the outer).
    open_region: Option<usize>,
    /// Set while tracing the body of a manual region (and the loops inside it): the mesh and the
    /// axes the collectives may name.
    manual: Option<manual::ManualContext>,
}

/// Records a function as a [`Graph`]. Cheap to clone; clones record into the same graph.
#[derive(Clone)]
pub struct Builder {
    state: Rc<RefCell<State>>,
    id: u64,
}

thread_local! {
    static NEXT_BUILDER: std::cell::Cell<u64> = const { std::cell::Cell::new(1) };
}

impl Builder {
    pub fn new(name: &str) -> Builder {
        let id = NEXT_BUILDER.with(|c| {
            let v = c.get();
            c.set(v + 1);
            v
        });
        Builder {
            state: Rc::new(RefCell::new(State {
                graph: Graph {
                    name: name.to_string(),
                    ..Graph::default()
                },
                open_region: None,
                manual: None,
            })),
            id,
        }
    }

    /// A builder for a body traced inside this one (a loop's, a region's): it sees the same
    /// manual region, if any.
    pub(crate) fn child(&self, name: &str) -> Builder {
        let b = Builder::new(name);
        b.state.borrow_mut().manual = self.state.borrow().manual.clone();
        b
    }

    pub(crate) fn same(&self, other: &Builder) -> bool {
        self.id == other.id
    }

    /// Appends a node after running its shape rule; returns its outputs.
    pub(crate) fn push(&self, op: impl Into<Op>, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
        let op: Op = op.into();
        for t in inputs {
            if !self.same(&t.b) {
                return Err(Error::Shape {
                    op: crate::ops::rule(&op).name(),
                    message: "operands come from different graphs (builders)".into(),
                });
            }
        }
        let in_tys: Vec<TensorType> = inputs.iter().map(|t| t.ty.clone()).collect();
        let outputs = crate::ops::infer(&op, &in_tys)?;
        let mut st = self.state.borrow_mut();
        let region = st.open_region;
        let node = st.graph.nodes.len();
        st.graph.nodes.push(Node {
            op,
            inputs: inputs.iter().map(|t| t.v).collect(),
            outputs: outputs.clone(),
            name: None,
            region,
        });
        drop(st);
        Ok(outputs
            .into_iter()
            .enumerate()
            .map(|(out, ty)| Tensor {
                b: self.clone(),
                v: Value { node, out },
                ty,
            })
            .collect())
    }

    /// `push` for single-output ops.
    pub(crate) fn push1(&self, op: impl Into<Op>, inputs: &[&Tensor]) -> Result<Tensor> {
        Ok(self.push(op, inputs)?.remove(0))
    }

    /// A named input of the function.
    pub fn parameter(&self, name: &str, dtype: DType, shape: &[i64]) -> Result<Tensor> {
        self.parameter_typed(name, &TensorType::new(dtype, shape))
    }

    pub fn parameter_typed(&self, name: &str, ty: &TensorType) -> Result<Tensor> {
        if self
            .state
            .borrow()
            .graph
            .params
            .iter()
            .any(|(n, _)| n == name)
        {
            return Err(Error::Shape {
                op: "parameter".into(),
                message: format!("a parameter named `{name}` already exists"),
            });
        }
        if ty.shape.iter().any(|&d| d < 0) {
            return Err(Error::Shape {
                op: "parameter".into(),
                message: format!("`{name}` has a negative dimension in {:?}", ty.shape),
            });
        }
        let index = self.state.borrow().graph.params.len();
        let t = self.push1(
            ir::Parameter {
                index,
                ty: ty.clone(),
            },
            &[],
        )?;
        self.state
            .borrow_mut()
            .graph
            .params
            .push((name.to_string(), t.v));
        Ok(t)
    }

    /// Marks a value as a named output of the function.
    pub fn output(&self, name: &str, t: &Tensor) -> Result<()> {
        if !self.same(&t.b) {
            return Err(Error::Shape {
                op: "output".into(),
                message: format!("`{name}` comes from another graph"),
            });
        }
        let mut st = self.state.borrow_mut();
        if st.graph.outputs.iter().any(|(n, _)| n == name) {
            return Err(Error::Shape {
                op: "output".into(),
                message: format!("an output named `{name}` already exists"),
            });
        }
        st.graph.outputs.push((name.to_string(), t.v));
        Ok(())
    }

    /// A snapshot of the graph recorded so far.
    pub fn graph(&self) -> Graph {
        self.state.borrow().graph.clone()
    }

    /// The finished graph.
    pub fn finish(self) -> Graph {
        self.graph()
    }

    /// The type of a value of this graph.
    pub(crate) fn type_of(&self, v: Value) -> TensorType {
        self.state.borrow().graph.ty(v).clone()
    }

    /// Replaces the op of `node` by `op`, which must read the same operands and keep the node's
    /// outputs as the first of its own (values already handed out stay valid).
    pub(crate) fn replace_op(&self, node: usize, op: Op) -> Result<()> {
        let mut st = self.state.borrow_mut();
        let g = &mut st.graph;
        let in_tys: Vec<TensorType> = g.nodes[node]
            .inputs
            .iter()
            .map(|v| g.ty(*v).clone())
            .collect();
        let outputs = crate::ops::infer(&op, &in_tys)?;
        if !outputs.starts_with(&g.nodes[node].outputs) {
            return Err(Error::Internal(format!(
                "{} cannot stand in for node %{node}: its outputs differ",
                crate::ops::rule(&op).name()
            )));
        }
        g.nodes[node].op = op;
        g.nodes[node].outputs = outputs;
        Ok(())
    }

    pub(crate) fn tensor(&self, v: Value) -> Tensor {
        Tensor {
            b: self.clone(),
            v,
            ty: self.type_of(v),
        }
    }

    pub(crate) fn set_name(&self, v: Value, name: &str) {
        self.state.borrow_mut().graph.nodes[v.node].name = Some(name.to_string());
    }

    /// A constant array from typed values.
    pub fn constant<T: Element>(&self, shape: &[i64], values: &[T]) -> Result<Tensor> {
        let a = crate::array::HostArray::new(shape, values)?;
        self.constant_array(&a)
    }

    /// A constant from a host array.
    pub fn constant_array(&self, a: &crate::array::HostArray) -> Result<Tensor> {
        self.push1(
            ir::Constant {
                bytes: Arc::new(a.bytes().to_vec()),
                ty: TensorType::new(a.dtype(), a.shape()),
            },
            &[],
        )
    }

    /// A scalar constant of any dtype (converted from f64; integers must be exact).
    pub fn scalar(&self, value: f64, dtype: DType) -> Result<Tensor> {
        let a = match dtype {
            DType::Pred => crate::array::HostArray::scalar(value != 0.0),
            DType::U8 => crate::array::HostArray::scalar(value as u8),
            DType::S32 => crate::array::HostArray::scalar(value as i32),
            DType::U32 => crate::array::HostArray::scalar(value as u32),
            DType::S64 => crate::array::HostArray::scalar(value as i64),
            DType::U64 => crate::array::HostArray::scalar(value as u64),
            DType::BF16 => crate::array::HostArray::scalar(half::bf16::from_f64(value)),
            DType::F32 => crate::array::HostArray::scalar(value as f32),
            DType::F64 => crate::array::HostArray::scalar(value),
        };
        self.constant_array(&a)
    }

    /// An array filled with one value.
    pub fn full(&self, value: f64, dtype: DType, shape: &[i64]) -> Result<Tensor> {
        self.scalar(value, dtype)?.broadcast_to(shape)
    }

    pub fn zeros(&self, ty: &TensorType) -> Result<Tensor> {
        self.full(0.0, ty.dtype, &ty.shape)
    }

    /// `0, 1, 2, ...` along `axis` of an array of `shape`.
    pub fn iota(&self, dtype: DType, shape: &[i64], axis: usize) -> Result<Tensor> {
        self.push1(
            ir::Iota {
                axis,
                ty: TensorType::new(dtype, shape),
            },
            &[],
        )
    }

    /// Traces `f` as a checkpointed block: in the backward pass its values are recomputed from its
    /// inputs, except those the policy saves. The recomputation reads its inputs through an
    /// `optimization_barrier` so that XLA cannot merge it back into the forward pass.
    pub fn checkpoint<T>(&self, policy: &RematPolicy, f: impl FnOnce() -> Result<T>) -> Result<T> {
        if self.state.borrow().open_region.is_some() || *policy == RematPolicy::None {
            // Nested in an open region (which already recomputes it), or nothing to recompute.
            return f();
        }
        let idx = {
            let mut st = self.state.borrow_mut();
            let start = st.graph.nodes.len();
            st.graph.regions.push(Region {
                policy: policy.clone(),
                start,
                end: start,
            });
            let idx = st.graph.regions.len() - 1;
            st.open_region = Some(idx);
            idx
        };
        let r = f();
        let mut st = self.state.borrow_mut();
        st.open_region = None;
        let end = st.graph.nodes.len();
        st.graph.regions[idx].end = end;
        r
    }

    /// Runs `body` `length` times over a carry, slicing each `xs` array along its leading axis and
    /// stacking each per-step output `ys` (a `lax.scan`). The body is traced once, so a stack of N
    /// identical layers compiles in time independent of N; its derivative is itself a scan.
    ///
    /// `body(index, consts, carry, x_slices) -> (new_carry, y_slices)`.
    pub fn scan(
        &self,
        length: i64,
        consts: &[Tensor],
        carry: &[Tensor],
        xs: &[Tensor],
        reverse: bool,
        body: impl FnOnce(
            &Tensor,
            &[Tensor],
            &[Tensor],
            &[Tensor],
        ) -> Result<(Vec<Tensor>, Vec<Tensor>)>,
    ) -> Result<(Vec<Tensor>, Vec<Tensor>)> {
        if length < 1 {
            return Err(scan_err(format!("length must be at least 1, got {length}")));
        }
        let sub = self.child(&format!(
            "{}_body{}",
            self.graph_name(),
            self.state.borrow().graph.nodes.len()
        ));
        let index = sub.parameter("index", DType::S32, &[])?;
        let params: Vec<Tensor> = scan_row_types(length, consts, carry, xs)?
            .iter()
            .enumerate()
            .map(|(p, t)| sub.parameter_typed(&format!("p{}", p + 1), t))
            .collect::<Result<_>>()?;
        let mut layout = crate::ir::ScanLayout {
            consts: consts.len(),
            carry: carry.len(),
            xs: xs.len(),
            ys: 0,
            saved: false,
        };
        let p = layout.ins(&params)?;
        let (new_carry, ys) = body(&index, p.consts, p.carry, p.xs)?;
        check_body_carry(carry, &new_carry)?;
        layout.ys = ys.len();
        for (i, t) in new_carry.iter().chain(&ys).enumerate() {
            sub.output(&format!("o{i}"), t)?;
        }
        let inputs: Vec<&Tensor> = consts.iter().chain(carry).chain(xs).collect();
        let outs = self.push(
            crate::ir::Scan {
                body: Arc::new(sub.finish()),
                length,
                num_consts: consts.len(),
                num_carry: carry.len(),
                num_xs: xs.len(),
                reverse,
                save_carries: false,
            },
            &inputs,
        )?;
        let o = layout.outs(&outs)?;
        Ok((o.carry.to_vec(), o.ys.to_vec()))
    }

    fn graph_name(&self) -> String {
        self.state.borrow().graph.name.clone()
    }

    /// Replays `graph` into this builder on `inputs` (one per parameter); returns its outputs.
    /// Checkpoint regions of `graph` become regions here.
    pub fn inline(&self, graph: &Graph, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        if inputs.len() != graph.params.len() {
            return Err(Error::Shape {
                op: "inline".into(),
                message: format!(
                    "`{}` takes {} inputs, got {}",
                    graph.name,
                    graph.params.len(),
                    inputs.len()
                ),
            });
        }
        let mut map: std::collections::HashMap<Value, Tensor> = std::collections::HashMap::new();
        let mut region_map: std::collections::HashMap<usize, usize> =
            std::collections::HashMap::new();
        for (n, node) in graph.nodes.iter().enumerate() {
            if let Some(ir::Parameter { index, ty }) = node.op.as_parameter() {
                if inputs[*index].ty != *ty {
                    return Err(Error::Shape {
                        op: "inline".into(),
                        message: format!(
                            "input {index} of `{}` must be {ty}, got {}",
                            graph.name, inputs[*index].ty
                        ),
                    });
                }
                map.insert(Value { node: n, out: 0 }, inputs[*index].clone());
                continue;
            }
            let ins: Vec<Tensor> = node.inputs.iter().map(|v| map[v].clone()).collect();
            let refs: Vec<&Tensor> = ins.iter().collect();
            let outs = self.push(node.op.clone(), &refs)?;
            if node.name.is_some() || node.region.is_some() {
                let mut st = self.state.borrow_mut();
                let new_node = outs[0].v.node;
                st.graph.nodes[new_node].name = node.name.clone();
                if st.open_region.is_none() {
                    if let Some(r) = node.region {
                        let nr = *region_map.entry(r).or_insert_with(|| {
                            st.graph.regions.push(Region {
                                policy: graph.regions[r].policy.clone(),
                                start: new_node,
                                end: new_node,
                            });
                            st.graph.regions.len() - 1
                        });
                        st.graph.nodes[new_node].region = Some(nr);
                        st.graph.regions[nr].end = new_node + 1;
                    }
                }
            }
            for (i, t) in outs.into_iter().enumerate() {
                map.insert(Value { node: n, out: i }, t);
            }
        }
        Ok(graph.outputs.iter().map(|(_, v)| map[v].clone()).collect())
    }
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Builder({})", self.graph_name())
    }
}

fn scan_err(message: String) -> Error {
    Error::Shape {
        op: "scan".into(),
        message,
    }
}

/// The types of a scan body's parameters after its index, in the scan's operand order: the
/// constants and carries as they are, one row of each `xs` (which needs `length` rows).
fn scan_row_types(
    length: i64,
    consts: &[Tensor],
    carry: &[Tensor],
    xs: &[Tensor],
) -> Result<Vec<TensorType>> {
    let mut types: Vec<TensorType> = consts.iter().chain(carry).map(|t| t.ty.clone()).collect();
    for t in xs {
        if t.ty.shape.first() != Some(&length) {
            return Err(scan_err(format!(
                "every xs array needs a leading axis of the scan length {length}, got {}",
                t.ty
            )));
        }
        types.push(TensorType::new(t.ty.dtype, &t.ty.shape[1..]));
    }
    Ok(types)
}

/// A scan body returns one carry of the same type for each carry it was given.
fn check_body_carry(carry: &[Tensor], new_carry: &[Tensor]) -> Result<()> {
    if new_carry.len() != carry.len() {
        return Err(scan_err(format!(
            "the body returned {} carries for {} inputs",
            new_carry.len(),
            carry.len()
        )));
    }
    for (i, (a, b)) in new_carry.iter().zip(carry).enumerate() {
        if a.ty != b.ty {
            return Err(scan_err(format!(
                "carry {i} enters as {} but the body returns {}",
                b.ty, a.ty
            )));
        }
    }
    Ok(())
}
