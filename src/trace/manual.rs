//! Manual SPMD regions in the tracer (JAX's `shard_map`) and the collectives written inside them.
//!
//! ```
//! use basic::partition::{Mesh, PartitionSpec};
//! use basic::trace::Builder;
//! use basic::DType;
//! # fn main() -> basic::Result<()> {
//! // Each of 4 devices sums its block of x; psum adds the 4 partial sums.
//! let b = Builder::new("sum");
//! let x = b.parameter("x", DType::F32, &[8, 3])?;
//! let mesh = Mesh::parse("data=4")?;
//! let out = b.shard_map(
//!     "partial_sums",
//!     &mesh,
//!     &["data"],
//!     &[x],
//!     &[PartitionSpec::of(&[&["data"], &[]])],
//!     &[PartitionSpec::of(&[&[]])],
//!     |_, blocks| Ok(vec![blocks[0].sum(&[0])?.psum(&["data"])?]),
//! )?;
//! assert_eq!(out[0].shape(), &[3]);
//! # Ok(()) }
//! ```

use std::sync::Arc;

use crate::dtype::TensorType;
use crate::error::{Error, Result};
use crate::ir::{self, DimAxes, MeshAxes};
use crate::partition::{Mesh, PartitionSpec};

use super::{Builder, Tensor};

/// What the body of a manual region knows while it is traced.
#[derive(Clone, Debug)]
pub(crate) struct ManualContext {
    /// The region's name, for errors.
    pub region: String,
    pub mesh: MeshAxes,
    pub manual: Vec<String>,
}

impl ManualContext {
    /// Checks that `axes` are distinct manual axes of the region; `op` names the collective.
    fn axes(&self, op: &str, axes: &[&str]) -> Result<Vec<String>> {
        if axes.is_empty() {
            return Err(self.err(
                op,
                "names no mesh axis".into(),
                "name one or more manual axes",
            ));
        }
        let mut out: Vec<String> = Vec::new();
        for a in axes {
            if !self.mesh.iter().any(|(n, _)| n == a) {
                return Err(self.err(
                    op,
                    format!("axis `{a}` is not an axis of the mesh"),
                    "name an axis of the region's mesh",
                ));
            }
            if !self.manual.iter().any(|m| m == a) {
                return Err(self.err(
                    op,
                    format!("axis `{a}` is not manual in this region (it stays automatic)"),
                    "name a manual axis, or add it to the region's manual axes",
                ));
            }
            if out.iter().any(|o| o == a) {
                return Err(self.err(op, format!("axis `{a}` is named twice"), "name it once"));
            }
            out.push(a.to_string());
        }
        Ok(out)
    }

    fn err(&self, op: &str, problem: String, fix: &str) -> Error {
        Error::invalid(
            format!(
                "{op} in manual region `{}` (manual axes {:?}): {problem}",
                self.region, self.manual
            ),
            fix,
        )
    }

    fn size(&self, axes: &[String]) -> i64 {
        ir::axes_size(&self.mesh, axes)
    }
}

impl PartitionSpec {
    /// A spec from per-dimension axis lists: `PartitionSpec::of(&[&["data"], &[]])`.
    pub fn of(dims: &[&[&str]]) -> PartitionSpec {
        PartitionSpec(
            dims.iter()
                .map(|d| d.iter().map(|a| a.to_string()).collect())
                .collect(),
        )
    }
}

/// A spec gives one entry per dimension of its operand.
fn check_rank(ctx: &ManualContext, what: &str, t: &TensorType, spec: &PartitionSpec) -> Result<()> {
    if spec.0.len() != t.rank() {
        return Err(ctx.err(
            "shard_map",
            format!(
                "{what} is {t} but its spec {spec} has {} entries",
                spec.0.len()
            ),
            "give one entry per dimension",
        ));
    }
    Ok(())
}

/// The block of `t` a device holds under `spec` (each dimension divided by its axes' sizes), or
/// an error naming the region, the operand and the dimension.
fn local_type(
    ctx: &ManualContext,
    what: &str,
    t: &TensorType,
    spec: &PartitionSpec,
) -> Result<TensorType> {
    check_rank(ctx, what, t, spec)?;
    let mut shape = t.shape.clone();
    let mut used: Vec<&String> = Vec::new();
    for (d, axes) in spec.0.iter().enumerate() {
        for a in axes {
            if !ctx.manual.contains(a) {
                return Err(ctx.err(
                    "shard_map",
                    format!("{what}'s spec {spec} splits dimension {d} over `{a}`, which is not a manual axis"),
                    "split dimensions over the region's manual axes only (automatic axes stay the partitioner's)",
                ));
            }
            if used.contains(&a) {
                return Err(ctx.err(
                    "shard_map",
                    format!("{what}'s spec {spec} uses `{a}` twice"),
                    "split one dimension per axis",
                ));
            }
            used.push(a);
        }
        let n = ctx.size(axes);
        if shape[d] % n != 0 {
            return Err(ctx.err(
                "shard_map",
                format!(
                    "{what} is {t}: dimension {d} of size {} does not divide over {} (size {n})",
                    shape[d],
                    axes.join("×")
                ),
                "choose sizes that divide, or split another dimension",
            ));
        }
        shape[d] /= n;
    }
    Ok(TensorType::new(t.dtype, &shape))
}

fn dim_axes(spec: &PartitionSpec) -> DimAxes {
    spec.0.clone()
}

impl Builder {
    /// The region this builder traces the body of, for a collective named `op` over `axes`; an
    /// error outside any region.
    fn manual_for(&self, op: &str, axes: &[&str]) -> Result<(ManualContext, Vec<String>)> {
        let ctx = self.state.borrow().manual.clone().ok_or_else(|| {
            Error::invalid(
                format!("{op} over {axes:?} outside a manual region"),
                "collectives run inside Builder::shard_map, whose body names the mesh axes",
            )
        })?;
        let axes = ctx.axes(op, axes)?;
        Ok((ctx, axes))
    }

    /// A manual SPMD region (JAX's `shard_map`): `body` is traced once on each device's blocks of
    /// `inputs` (cut along the dimensions that `in_specs` split over manual axes) and returns the
    /// device's blocks of the results, assembled by `out_specs`. Inside, the axes in `manual` are
    /// the program's to handle with collectives ([`Tensor::psum`], [`Tensor::all_gather`],
    /// [`Tensor::psum_scatter`], [`Tensor::ppermute`], [`Tensor::all_to_all`],
    /// [`Builder::axis_index`]); the mesh's other axes stay automatic. A result whose spec does
    /// not split it over a manual axis must be the same on every device along that axis.
    ///
    /// The program must be emitted over the same mesh. Regions do not nest.
    #[allow(clippy::too_many_arguments)]
    pub fn shard_map(
        &self,
        name: &str,
        mesh: &Mesh,
        manual: &[&str],
        inputs: &[Tensor],
        in_specs: &[PartitionSpec],
        out_specs: &[PartitionSpec],
        body: impl FnOnce(&Builder, &[Tensor]) -> Result<Vec<Tensor>>,
    ) -> Result<Vec<Tensor>> {
        if let Some(outer) = &self.state.borrow().manual {
            return Err(Error::invalid(
                format!(
                    "manual region `{name}` inside manual region `{}`",
                    outer.region
                ),
                "regions do not nest: make the outer region manual over both sets of axes",
            ));
        }
        // Every mesh axis is a candidate while the region's own axes are checked.
        let candidates = ManualContext {
            region: name.to_string(),
            mesh: mesh.axes.clone(),
            manual: mesh.axes.iter().map(|(n, _)| n.clone()).collect(),
        };
        let manual = candidates.axes("shard_map", manual)?;
        let ctx = ManualContext {
            manual,
            ..candidates
        };
        if inputs.len() != in_specs.len() {
            return Err(ctx.err(
                "shard_map",
                format!("{} operands but {} in_specs", inputs.len(), in_specs.len()),
                "give one spec per operand",
            ));
        }
        let sub = self.child(&format!("{}_{name}", self.graph_name()));
        sub.state.borrow_mut().manual = Some(ctx.clone());
        let blocks: Vec<Tensor> = inputs
            .iter()
            .zip(in_specs)
            .enumerate()
            .map(|(i, (x, spec))| {
                let t = local_type(&ctx, &format!("operand {i}"), &x.ty, spec)?;
                sub.parameter_typed(&format!("b{i}"), &t)
            })
            .collect::<Result<_>>()?;
        let outs = body(&sub, &blocks)?;
        if outs.len() != out_specs.len() {
            return Err(ctx.err(
                "shard_map",
                format!(
                    "the body returned {} results but there are {} out_specs",
                    outs.len(),
                    out_specs.len()
                ),
                "give one spec per result",
            ));
        }
        for (i, (o, spec)) in outs.iter().zip(out_specs).enumerate() {
            // Checks the spec names manual axes only and fits the block's rank.
            let global = global_type(&ctx, &format!("result {i}"), &o.ty, spec)?;
            local_type(&ctx, &format!("result {i}"), &global, spec)?;
            sub.output(&format!("r{i}"), o)?;
        }
        let refs: Vec<&Tensor> = inputs.iter().collect();
        self.push(
            ir::ManualRegion {
                name: name.to_string(),
                body: Arc::new(sub.finish()),
                mesh: ctx.mesh.clone(),
                manual: ctx.manual.clone(),
                in_specs: in_specs.iter().map(dim_axes).collect(),
                out_specs: out_specs.iter().map(dim_axes).collect(),
            },
            &refs,
        )
    }

    /// The device's position along manual axis `axis` (an `s32` scalar), inside a region.
    pub fn axis_index(&self, axis: &str) -> Result<Tensor> {
        let (ctx, axes) = self.manual_for("axis_index", &[axis])?;
        let at = ctx
            .mesh
            .iter()
            .position(|(n, _)| *n == axes[0])
            .unwrap_or(0);
        let stride = ctx.mesh[at + 1..].iter().map(|(_, s)| s).product();
        self.push1(
            ir::AxisIndex {
                axis: axes[0].clone(),
                size: ctx.mesh[at].1,
                stride,
            },
            &[],
        )
    }

    /// The number of devices along manual axis `axis`, inside a region.
    pub fn axis_size(&self, axis: &str) -> Result<i64> {
        let (ctx, axes) = self.manual_for("axis_size", &[axis])?;
        Ok(ctx.size(&axes))
    }
}

/// The global type of a block `t` under `spec` (each split dimension multiplied by its axes'
/// sizes).
fn global_type(
    ctx: &ManualContext,
    what: &str,
    t: &TensorType,
    spec: &PartitionSpec,
) -> Result<TensorType> {
    check_rank(ctx, what, t, spec)?;
    let shape: Vec<i64> = t
        .shape
        .iter()
        .zip(&spec.0)
        .map(|(d, axes)| d * ctx.size(axes))
        .collect();
    Ok(TensorType::new(t.dtype, &shape))
}

impl Tensor {
    /// The sum over the devices along `axes` (JAX's `psum`), inside a manual region.
    pub fn psum(&self, axes: &[&str]) -> Result<Tensor> {
        let (ctx, axes) = self.b.manual_for("psum", axes)?;
        let groups = ir::device_groups(&ctx.mesh, &axes);
        self.b.push1(ir::Psum { axes, groups }, &[self])
    }

    /// The blocks of the devices along `axes`, concatenated along `dim` in device order (JAX's
    /// `all_gather(..., tiled=True)`), inside a manual region.
    pub fn all_gather(&self, axes: &[&str], dim: usize) -> Result<Tensor> {
        let (ctx, axes) = self.b.manual_for("all_gather", axes)?;
        let groups = ir::device_groups(&ctx.mesh, &axes);
        self.b.push1(ir::AllGather { axes, dim, groups }, &[self])
    }

    /// The sum over the devices along `axes`, cut along `dim`: device `k` keeps piece `k` (JAX's
    /// `psum_scatter(..., tiled=True)`, a reduce-scatter), inside a manual region.
    pub fn psum_scatter(&self, axes: &[&str], dim: usize) -> Result<Tensor> {
        let (ctx, axes) = self.b.manual_for("psum_scatter", axes)?;
        let groups = ir::device_groups(&ctx.mesh, &axes);
        self.b
            .push1(ir::ReduceScatter { axes, dim, groups }, &[self])
    }

    /// Sends each device's block along `axis` by `perm` (`(source, destination)` positions along
    /// the axis; JAX's `ppermute`): a device no pair sends to receives zeros.
    pub fn ppermute(&self, axis: &str, perm: &[(i64, i64)]) -> Result<Tensor> {
        let (ctx, axes) = self.b.manual_for("ppermute", &[axis])?;
        let n = ctx.size(&axes);
        for (i, &(s, d)) in perm.iter().enumerate() {
            if !(0..n).contains(&s) || !(0..n).contains(&d) {
                return Err(ctx.err(
                    "ppermute",
                    format!("pair {i} ({s}, {d}) is outside the {n} positions of `{axis}`"),
                    "use positions 0..size",
                ));
            }
            if perm[..i].iter().any(|&(a, b)| a == s || b == d) {
                return Err(ctx.err(
                    "ppermute",
                    format!("pair {i} ({s}, {d}) repeats a source or a destination"),
                    "each position sends and receives at most once",
                ));
            }
        }
        let pairs = ir::device_groups(&ctx.mesh, &axes)
            .iter()
            .flat_map(|g| {
                perm.iter()
                    .map(move |&(s, d)| (g[s as usize], g[d as usize]))
            })
            .collect();
        self.b.push1(
            ir::Ppermute {
                axis: axes[0].clone(),
                perm: perm.to_vec(),
                pairs,
            },
            &[self],
        )
    }

    /// Cuts each block into as many pieces as there are devices along `axis` (along `split`),
    /// sends piece `j` to device `j`, and concatenates the pieces received along `concat` in
    /// device order (JAX's `all_to_all(..., tiled=True)`).
    pub fn all_to_all(&self, axis: &str, split: usize, concat: usize) -> Result<Tensor> {
        let (ctx, axes) = self.b.manual_for("all_to_all", &[axis])?;
        let groups = ir::device_groups(&ctx.mesh, &axes);
        self.b.push1(
            ir::AllToAll {
                axis: axes[0].clone(),
                split,
                concat,
                groups,
            },
            &[self],
        )
    }

    /// `axis_index` as an `s32` scalar of this tensor's builder.
    pub fn axis_index(&self, axis: &str) -> Result<Tensor> {
        self.b.axis_index(axis)
    }
}

/// The devices along the manual axes of a region's body that hold each block: used by the
/// derivative of a region, which divides the cotangent of a result replicated along a manual
/// axis by that axis' size and sums the cotangent of an operand replicated along it.
pub(crate) fn replicated_axes(manual: &[String], spec: &DimAxes) -> Vec<String> {
    manual
        .iter()
        .filter(|a| !spec.iter().flatten().any(|s| s == *a))
        .cloned()
        .collect()
}
