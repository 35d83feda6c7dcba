//! Reverse-mode differentiation of traced graphs, with rematerialisation.
//!
//! The sweep walks the nodes that lie between the chosen inputs and the outputs in reverse
//! order, asks each op's derivative rule (in `crate::ops`) for its inputs' cotangents and adds
//! them up. The rules are written with the same `Tensor` methods as models, so the gradient is a
//! graph in the same builder, and can itself be differentiated or emitted.
//!
//! Checkpointed blocks (`Builder::checkpoint`) are not read from the forward pass: the first time
//! the sweep needs a value of a block, it replays the block from its inputs (keeping what the
//! policy saves). The replay reads its inputs, the saved values and the cotangents arriving at the
//! block through one `optimization_barrier`, so XLA can neither merge the replay with the forward
//! pass nor schedule it before the backward pass reaches the block.

use std::collections::{BTreeSet, HashMap};

use crate::error::{Error, Result};
use crate::ir::{differentiable, Graph, Value};
use crate::ops::{self, slice_cotangent_terms, SlicePiece};
use crate::trace::{Builder, Tensor};

struct Sweep<'a> {
    b: &'a Builder,
    g: Graph,
    cot: HashMap<Value, Tensor>,
    recomputed: HashMap<Value, Tensor>,
    done_regions: BTreeSet<usize>,
    /// Cotangent pieces held back by their rules ([`ops::Rule::piece`]), by the value they
    /// belong to, summed when the value's cotangent is read.
    pieces: HashMap<Value, Vec<SlicePiece>>,
}

impl Sweep<'_> {
    /// Adds the pending pieces of `v`'s cotangent to it.
    fn flush_pieces(&mut self, v: Value) -> Result<()> {
        let Some(pieces) = self.pieces.remove(&v) else {
            return Ok(());
        };
        let shape = self.b.tensor(v).shape().to_vec();
        for t in slice_cotangent_terms(&shape, pieces)? {
            self.add_cot(v, t)?;
        }
        Ok(())
    }

    fn flush_all_pieces(&mut self) -> Result<()> {
        let pending: Vec<Value> = self.pieces.keys().copied().collect();
        for v in pending {
            self.flush_pieces(v)?;
        }
        Ok(())
    }

    fn add_cot(&mut self, v: Value, t: Tensor) -> Result<()> {
        if !differentiable(t.dtype()) {
            return Ok(());
        }
        let t = match self.cot.remove(&v) {
            Some(prev) => prev.add(&t)?,
            None => t,
        };
        self.cot.insert(v, t);
        Ok(())
    }

    /// The primal value `v` as read by the derivative rule of a node in `reader`'s region: the
    /// replayed value when both sit in the same checkpointed block, else the forward value (a
    /// block's outputs are kept: they are the next block's inputs). Replaying only on reads from
    /// inside the block makes the replay happen when the sweep reaches the block, once every
    /// cotangent arriving at it is known.
    fn primal(&mut self, v: Value, reader: Option<usize>) -> Result<Tensor> {
        let region = self.g.nodes.get(v.node).and_then(|n| n.region);
        if region.is_none() || region != reader {
            return Ok(self.b.tensor(v));
        }
        if let Some(t) = self.recomputed.get(&v) {
            return Ok(t.clone());
        }
        if let Some(r) = region {
            if !self.done_regions.contains(&r) {
                self.replay(r)?;
                if let Some(t) = self.recomputed.get(&v) {
                    return Ok(t.clone());
                }
            }
        }
        Ok(self.b.tensor(v))
    }

    /// Replays checkpointed block `r` from its inputs, through one barrier that also carries
    /// the values its policy saves and the cotangents already arriving at it.
    fn replay(&mut self, r: usize) -> Result<()> {
        // The replay routes every known cotangent arriving at the block through its barrier.
        self.flush_all_pieces()?;
        self.done_regions.insert(r);
        let block = Block::of(&self.g, r, &self.cot);
        let mut through: Vec<Tensor> = block
            .inputs
            .iter()
            .chain(&block.saved)
            .map(|v| self.b.tensor(*v))
            .collect();
        through.extend(block.boundary.iter().map(|v| self.cot[v].clone()));
        let barred = self.b.optimization_barrier(&through)?;
        let token = match block.boundary.first() {
            Some(v) => Some(replay_token(&self.cot[v])?),
            None => None,
        };
        let mut map: HashMap<Value, Tensor> = HashMap::new();
        for (v, t) in block.inputs.iter().chain(&block.saved).zip(&barred) {
            let is_param = self.g.nodes[v.node].op.is_parameter();
            let t = match &token {
                Some(z)
                    if block.inputs.contains(v)
                        && !is_param
                        && t.dtype().is_float()
                        && t.rank() > 0 =>
                {
                    t.add(&z.convert(t.dtype())?)?
                }
                _ => t.clone(),
            };
            map.insert(*v, t);
        }
        let kept = block.inputs.len() + block.saved.len();
        for (v, t) in block.boundary.iter().zip(&barred[kept..]) {
            self.cot.insert(*v, t.clone());
        }
        for &n in &block.members {
            let node = self.g.nodes[n].clone();
            if map.contains_key(&Value { node: n, out: 0 }) {
                continue;
            }
            let ins: Vec<Tensor> = node.inputs.iter().map(|v| map[v].clone()).collect();
            let refs: Vec<&Tensor> = ins.iter().collect();
            let outs = self.b.push(node.op.clone(), &refs)?;
            for (out, t) in outs.into_iter().enumerate() {
                map.insert(Value { node: n, out }, t);
            }
        }
        for &n in &block.members {
            for out in 0..self.g.nodes[n].outputs.len() {
                let v = Value { node: n, out };
                self.recomputed.insert(v, map[&v].clone());
            }
        }
        Ok(())
    }
}

/// A checkpointed block as the replay sees it.
struct Block {
    /// Its nodes, in order.
    members: Vec<usize>,
    /// Values from outside it that it reads.
    inputs: BTreeSet<Value>,
    /// Values its policy keeps (and parameters, which are never recomputed).
    saved: Vec<Value>,
    /// Its values that already have a cotangent.
    boundary: Vec<Value>,
}

impl Block {
    fn of(g: &Graph, r: usize, cot: &HashMap<Value, Tensor>) -> Block {
        let policy = &g.regions[r].policy;
        let members: Vec<usize> = (0..g.nodes.len())
            .filter(|&n| g.nodes[n].region == Some(r))
            .collect();
        let mut inputs: BTreeSet<Value> = BTreeSet::new();
        let mut saved: Vec<Value> = Vec::new();
        for &n in &members {
            let node = &g.nodes[n];
            inputs.extend(
                node.inputs
                    .iter()
                    .filter(|v| g.nodes[v.node].region != Some(r)),
            );
            if node.op.is_parameter() || policy.saves(node) {
                saved.extend((0..node.outputs.len()).map(|out| Value { node: n, out }));
            }
        }
        let boundary: Vec<Value> = members
            .iter()
            .flat_map(|&n| (0..g.nodes[n].outputs.len()).map(move |out| Value { node: n, out }))
            .filter(|v| cot.contains_key(v))
            .collect();
        Block {
            members,
            inputs,
            saved,
            boundary,
        }
    }
}

/// A zero computed from one element `g` of cotangent `c`, added to the replay's activation
/// inputs. XLA's CPU pipeline drops optimization barriers before it schedules, which would let
/// the replay run during the forward pass; a true data dependency on the backward pass keeps it in
/// place on every backend. The zero must stay zero whatever `g` is: `0 · g` is NaN for an
/// infinite or NaN `g`, which would poison the whole block's gradient, so `g` is first replaced by
/// 0 unless finite (`|g| < ∞` is false for both). XLA folds neither `select` of distinct operands
/// nor a float product by zero.
fn replay_token(c: &Tensor) -> Result<Tensor> {
    let n = c.ty().element_count();
    let g = c.reshape(&[n])?.slice_axis(0, 0, 1)?.reshape(&[])?;
    let zero = g.scalar_like(0.0)?;
    let finite = g.abs()?.lt(&g.scalar_like(f64::INFINITY)?)?;
    Tensor::select(&finite, &g, &zero)?.mul_scalar(0.0)
}

/// What a vector–Jacobian product visits: the nodes that depend on an input it differentiates
/// by (`depends`), and the nodes an output needs (`needed`). The sweep walks nodes that are both.
struct Reach {
    depends: Vec<bool>,
    needed: Vec<bool>,
}

impl Reach {
    fn of(g: &Graph, outputs: &[Tensor], wrt: &[Tensor]) -> Reach {
        let n = g.nodes.len();
        let mut depends = vec![false; n];
        for w in wrt {
            depends[w.value().node] = true;
        }
        for i in 0..n {
            if !depends[i] && g.nodes[i].inputs.iter().any(|v| depends[v.node]) {
                depends[i] = true;
            }
        }
        let mut needed = vec![false; n];
        for o in outputs {
            needed[o.value().node] = true;
        }
        for i in (0..n).rev() {
            if needed[i] {
                for v in &g.nodes[i].inputs {
                    needed[v.node] = true;
                }
            }
        }
        Reach { depends, needed }
    }

    /// Whether the sweep visits node `i`.
    fn visits(&self, i: usize) -> bool {
        self.depends[i] && self.needed[i]
    }
}

/// Checks that there is one cotangent (or `None`) per output, each of its output's type.
fn check_cotangents(outputs: &[Tensor], cotangents: &[Option<Tensor>]) -> Result<()> {
    if outputs.len() != cotangents.len() {
        return Err(Error::Shape {
            op: "vjp".into(),
            message: format!(
                "{} outputs but {} cotangents",
                outputs.len(),
                cotangents.len()
            ),
        });
    }
    for (o, c) in outputs.iter().zip(cotangents) {
        if let Some(c) = c {
            if c.ty() != o.ty() {
                return Err(Error::Shape {
                    op: "vjp".into(),
                    message: format!("cotangent {} does not match output {}", c.ty(), o.ty()),
                });
            }
        }
    }
    Ok(())
}

/// Cotangents of `wrt` given cotangents of `outputs` (a vector–Jacobian product). `None` in
/// `cotangents` means zero; `None` in the result means no gradient reaches that input.
pub fn vjp(
    outputs: &[Tensor],
    cotangents: &[Option<Tensor>],
    wrt: &[Tensor],
) -> Result<Vec<Option<Tensor>>> {
    let b = match outputs.first() {
        Some(t) => t.builder().clone(),
        None => return Ok(vec![None; wrt.len()]),
    };
    check_cotangents(outputs, cotangents)?;
    let g = b.graph();
    let reach = Reach::of(&g, outputs, wrt);
    // Ops whose derivative needs more of the forward pass than their outputs are swapped for
    // the op that keeps it, before the sweep reads the graph.
    for i in (0..g.nodes.len()).filter(|&i| reach.visits(i)) {
        if let Some(op) = ops::rule(&g.nodes[i].op).for_vjp() {
            b.replace_op(i, op)?;
        }
    }
    let mut s = Sweep {
        b: &b,
        g: b.graph(),
        cot: HashMap::new(),
        recomputed: HashMap::new(),
        done_regions: BTreeSet::new(),
        pieces: HashMap::new(),
    };
    for (o, c) in outputs.iter().zip(cotangents) {
        if let Some(c) = c {
            s.add_cot(o.value(), c.clone())?;
        }
    }
    let wrt_nodes: BTreeSet<usize> = wrt.iter().map(|w| w.value().node).collect();
    for i in (0..s.g.nodes.len()).rev() {
        let node = &s.g.nodes[i];
        if !reach.visits(i) || node.op.is_parameter() {
            continue;
        }
        // A node that is itself an input we differentiate by ends the sweep along that path
        // only if nothing above it is asked for; its inputs still receive cotangents otherwise.
        if wrt_nodes.contains(&i) && !node.inputs.iter().any(|v| reach.depends[v.node]) {
            continue;
        }
        s.back(i, &reach.depends)?;
    }
    s.flush_all_pieces()?;
    Ok(wrt.iter().map(|w| s.cot.get(&w.value()).cloned()).collect())
}

impl Sweep<'_> {
    /// The cotangents of node `i`'s outputs, as known now.
    fn cots_of(&self, i: usize) -> Vec<Option<Tensor>> {
        (0..self.g.nodes[i].outputs.len())
            .map(|out| self.cot.get(&Value { node: i, out }).cloned())
            .collect()
    }

    /// Propagates node `i`'s output cotangents to its inputs that depend on a `wrt` input: as a
    /// held-back piece when its rule gives one, else through its derivative rule.
    fn back(&mut self, i: usize, depends: &[bool]) -> Result<()> {
        let n_out = self.g.nodes[i].outputs.len();
        for out in 0..n_out {
            self.flush_pieces(Value { node: i, out })?;
        }
        let rule = ops::rule(&self.g.nodes[i].op);
        if let (Some(g), [v]) = (
            self.cot.get(&Value { node: i, out: 0 }),
            &self.g.nodes[i].inputs[..],
        ) {
            if let Some(piece) = rule.piece(g) {
                if depends[v.node] && differentiable(g.dtype()) {
                    self.pieces.entry(*v).or_default().push(piece);
                }
                return Ok(());
            }
        }
        if self.cots_of(i).iter().all(Option::is_none) {
            return Ok(());
        }
        let node = self.g.nodes[i].clone();
        let ins: Vec<Tensor> = node
            .inputs
            .iter()
            .map(|v| self.primal(*v, node.region))
            .collect::<Result<_>>()?;
        let outs: Vec<Tensor> = (0..n_out)
            .map(|out| self.primal(Value { node: i, out }, node.region))
            .collect::<Result<_>>()?;
        // Re-read the cotangents: a replay may have routed them through its barrier.
        let cots = self.cots_of(i);
        let grads = ops::vjp(&node.op, &ins, &outs, &cots).map_err(|e| match e {
            Error::NoDerivative { op, detail } => Error::NoDerivative {
                op,
                detail: format!("{detail} (node %{i} of `{}`)", self.g.name),
            },
            other => other,
        })?;
        for (v, gi) in node.inputs.iter().zip(grads) {
            if let Some(gi) = gi {
                if depends[v.node] {
                    self.add_cot(*v, gi)?;
                }
            }
        }
        Ok(())
    }
}

/// Gradients of a scalar `loss` with respect to `wrt` (zeros where no gradient reaches).
pub fn grad(loss: &Tensor, wrt: &[Tensor]) -> Result<Vec<Tensor>> {
    if loss.rank() != 0 || !loss.dtype().is_float() {
        return Err(Error::Shape {
            op: "grad".into(),
            message: format!("the loss must be a float scalar, got {}", loss.ty()),
        });
    }
    let one = loss.scalar_like(1.0)?;
    vjp(std::slice::from_ref(loss), &[Some(one)], wrt)?
        .into_iter()
        .zip(wrt)
        .map(|(g, w)| match g {
            Some(g) => Ok(g),
            None => w.zeros_like(),
        })
        .collect()
}
