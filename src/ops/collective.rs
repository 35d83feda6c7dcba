//! Manual regions and collectives: shape rules, derivatives and lowerings.
//!
//! Derivatives follow one convention, which makes every rule below exact without tracking which
//! values are replicated (JAX's "efficient transposition" note describes the same choice): the
//! derivative of a region is a region of the same mesh whose body replays the forward body and
//! backpropagates; the cotangent of a result that its spec leaves replicated along a manual axis
//! is divided by that axis' size (each device holds one copy of a value counted once), and the
//! cotangent of an operand replicated along a manual axis is summed over it (each device's copy
//! was used). With that, `psum`'s derivative is `psum`, `all_gather`'s is `psum_scatter` and the
//! reverse, `ppermute`'s is the inverse permutation and `all_to_all`'s swaps its two dimensions.

use crate::dtype::{DType, TensorType};
use crate::error::{shape_err, Error, Result};
use crate::ir::{
    axes_size, AllGather, AllToAll, AxisIndex, ManualRegion, Ppermute, Psum, ReduceScatter,
};
use crate::lower::Emitter;
use crate::partition::{Mesh, PartitionSpec};
use crate::runtime::Partitioner;
use crate::trace::Tensor;

use super::{arity, cot0, show, Lowering, Rule, Vjp};

/// `dense<[[0, 1], [2, 3]]> : tensor<2x2xi64>`.
fn groups_attr(groups: &[Vec<i64>]) -> String {
    let rows: Vec<String> = groups
        .iter()
        .map(|g| {
            format!(
                "[{}]",
                g.iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
        .collect();
    let n = groups.first().map_or(0, Vec::len);
    format!(
        "replica_groups = dense<[{}]> : tensor<{}x{n}xi64>",
        rows.join(", "),
        groups.len()
    )
}

fn channel_attr(e: &mut Emitter) -> String {
    format!(
        "channel_handle = #stablehlo.channel_handle<handle = {}, type = 1>",
        e.next_channel()
    )
}

fn group_size(groups: &[Vec<i64>]) -> i64 {
    groups.first().map_or(1, |g| g.len() as i64)
}

/// A collective whose results sum over its group: `stablehlo.all_reduce` or `reduce_scatter`
/// with an adding region.
fn summing(e: &mut Emitter, l: &Lowering, name: &str, attrs: String) -> Result<Vec<String>> {
    let dtype = l.in_tys[0].dtype;
    let s = TensorType::scalar(dtype);
    let add = if dtype == DType::Pred {
        "stablehlo.or"
    } else {
        "stablehlo.add"
    };
    let region: crate::lower::Region<'_> =
        Box::new(move |e: &mut Emitter, a: &[String]| Ok(e.scalar_region(add, a, dtype)));
    e.op_with_regions(
        name,
        l.ins,
        l.in_tys,
        vec![(vec![s.clone(), s], region)],
        &attrs,
        l.out_tys,
    )
}

fn check_dim(op: &str, ins: &[TensorType], dim: usize) -> Result<()> {
    arity(op, ins, 1)?;
    if dim >= ins[0].rank() {
        return shape_err(op, format!("dimension {dim} of {}", show(ins)));
    }
    Ok(())
}

impl Rule for Psum {
    fn name(&self) -> String {
        "psum".into()
    }

    fn infer(&self, ins: &[TensorType]) -> Result<Vec<TensorType>> {
        arity("psum", ins, 1)?;
        Ok(ins.to_vec())
    }

    fn vjp(&self, v: &Vjp) -> Result<Vec<Option<Tensor>>> {
        let g = cot0("psum", v.cots)?;
        Ok(vec![Some(g.psum(&refs(&self.axes))?)])
    }

    fn lower(&self, e: &mut Emitter, l: &Lowering) -> Result<Vec<String>> {
        if group_size(&self.groups) == 1 {
            return Ok(l.ins.to_vec());
        }
        let attrs = format!(
            "{}, {}, use_global_device_ids",
            channel_attr(e),
            groups_attr(&self.groups)
        );
        summing(e, l, "stablehlo.all_reduce", attrs)
    }
}

impl Rule for AllGather {
    fn name(&self) -> String {
        "all_gather".into()
    }

    fn infer(&self, ins: &[TensorType]) -> Result<Vec<TensorType>> {
        check_dim("all_gather", ins, self.dim)?;
        let mut t = ins[0].clone();
        t.shape[self.dim] *= group_size(&self.groups);
        Ok(vec![t])
    }

    fn vjp(&self, v: &Vjp) -> Result<Vec<Option<Tensor>>> {
        let g = cot0("all_gather", v.cots)?;
        Ok(vec![Some(g.psum_scatter(&refs(&self.axes), self.dim)?)])
    }

    fn lower(&self, e: &mut Emitter, l: &Lowering) -> Result<Vec<String>> {
        if group_size(&self.groups) == 1 {
            return Ok(l.ins.to_vec());
        }
        let attrs = format!(
            "all_gather_dim = {} : i64, {}, {}, use_global_device_ids",
            self.dim,
            channel_attr(e),
            groups_attr(&self.groups)
        );
        Ok(e.op("stablehlo.all_gather", l.ins, l.in_tys, &attrs, l.out_tys))
    }
}

impl Rule for ReduceScatter {
    fn name(&self) -> String {
        "psum_scatter".into()
    }

    fn infer(&self, ins: &[TensorType]) -> Result<Vec<TensorType>> {
        check_dim("psum_scatter", ins, self.dim)?;
        let n = group_size(&self.groups);
        let mut t = ins[0].clone();
        if t.shape[self.dim] % n != 0 {
            return shape_err(
                "psum_scatter",
                format!(
                    "dimension {} of {} does not divide over the {n} devices of {:?}",
                    self.dim,
                    show(ins),
                    self.axes
                ),
            );
        }
        t.shape[self.dim] /= n;
        Ok(vec![t])
    }

    fn vjp(&self, v: &Vjp) -> Result<Vec<Option<Tensor>>> {
        let g = cot0("psum_scatter", v.cots)?;
        Ok(vec![Some(g.all_gather(&refs(&self.axes), self.dim)?)])
    }

    fn lower(&self, e: &mut Emitter, l: &Lowering) -> Result<Vec<String>> {
        if group_size(&self.groups) == 1 {
            return Ok(l.ins.to_vec());
        }
        let attrs = format!(
            "scatter_dimension = {} : i64, {}, {}, use_global_device_ids",
            self.dim,
            channel_attr(e),
            groups_attr(&self.groups)
        );
        summing(e, l, "stablehlo.reduce_scatter", attrs)
    }
}

impl Rule for Ppermute {
    fn name(&self) -> String {
        "ppermute".into()
    }

    fn infer(&self, ins: &[TensorType]) -> Result<Vec<TensorType>> {
        arity("ppermute", ins, 1)?;
        Ok(ins.to_vec())
    }

    /// The cotangent travels back: the inverse permutation.
    fn vjp(&self, v: &Vjp) -> Result<Vec<Option<Tensor>>> {
        let g = cot0("ppermute", v.cots)?;
        let back: Vec<(i64, i64)> = self.perm.iter().map(|&(s, d)| (d, s)).collect();
        Ok(vec![Some(g.ppermute(&self.axis, &back)?)])
    }

    fn lower(&self, e: &mut Emitter, l: &Lowering) -> Result<Vec<String>> {
        if self.pairs.iter().all(|(s, d)| s == d) && !self.pairs.is_empty() {
            return Ok(l.ins.to_vec());
        }
        let pairs: Vec<String> = self
            .pairs
            .iter()
            .map(|(s, d)| format!("[{s}, {d}]"))
            .collect();
        let attrs = format!(
            "{}, source_target_pairs = dense<[{}]> : tensor<{}x2xi64>",
            channel_attr(e),
            pairs.join(", "),
            self.pairs.len()
        );
        Ok(e.op(
            "stablehlo.collective_permute",
            l.ins,
            l.in_tys,
            &attrs,
            l.out_tys,
        ))
    }
}

impl Rule for AllToAll {
    fn name(&self) -> String {
        "all_to_all".into()
    }

    fn infer(&self, ins: &[TensorType]) -> Result<Vec<TensorType>> {
        check_dim("all_to_all", ins, self.split.max(self.concat))?;
        let n = group_size(&self.groups);
        let mut t = ins[0].clone();
        if t.shape[self.split] % n != 0 {
            return shape_err(
                "all_to_all",
                format!(
                    "dimension {} of {} does not divide over the {n} devices of `{}`",
                    self.split,
                    show(ins),
                    self.axis
                ),
            );
        }
        t.shape[self.split] /= n;
        t.shape[self.concat] *= n;
        Ok(vec![t])
    }

    fn vjp(&self, v: &Vjp) -> Result<Vec<Option<Tensor>>> {
        let g = cot0("all_to_all", v.cots)?;
        Ok(vec![Some(g.all_to_all(
            &self.axis,
            self.concat,
            self.split,
        )?)])
    }

    fn lower(&self, e: &mut Emitter, l: &Lowering) -> Result<Vec<String>> {
        let n = group_size(&self.groups);
        if n == 1 {
            return Ok(l.ins.to_vec());
        }
        let attrs = format!(
            "split_dimension = {} : i64, concat_dimension = {} : i64, split_count = {n} : i64, {}, {}",
            self.split,
            self.concat,
            groups_attr(&self.groups),
            channel_attr(e)
        );
        Ok(e.op("stablehlo.all_to_all", l.ins, l.in_tys, &attrs, l.out_tys))
    }
}

impl Rule for AxisIndex {
    fn name(&self) -> String {
        "axis_index".into()
    }

    fn infer(&self, ins: &[TensorType]) -> Result<Vec<TensorType>> {
        arity("axis_index", ins, 0)?;
        Ok(vec![TensorType::scalar(DType::S32)])
    }

    fn vjp(&self, _: &Vjp) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![])
    }

    /// `(partition_id / stride) % size`: SPMD partition `d` holds the mesh coordinates
    /// `unravel(d)`, row-major.
    fn lower(&self, e: &mut Emitter, _: &Lowering) -> Result<Vec<String>> {
        let s32 = TensorType::scalar(DType::S32);
        if self.size == 1 {
            return Ok(vec![e.constant("0", &s32)]);
        }
        let u32t = TensorType::scalar(DType::U32);
        let id = e.op1("stablehlo.partition_id", &[], &[], "", &u32t);
        let id = e.op1("stablehlo.convert", &[id], &[u32t], "", &s32);
        let stride = e.constant_i32(self.stride);
        let q = e.binary("stablehlo.divide", &id, &stride, &s32);
        let size = e.constant_i32(self.size);
        Ok(vec![e.binary("stablehlo.remainder", &q, &size, &s32)])
    }
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn spec(axes: &crate::ir::DimAxes) -> PartitionSpec {
    PartitionSpec(axes.clone())
}

/// The block type a device holds of `t` under `axes`.
fn local(r: &ManualRegion, t: &TensorType, axes: &crate::ir::DimAxes) -> TensorType {
    let shape: Vec<i64> = t
        .shape
        .iter()
        .zip(axes)
        .map(|(d, a)| d / axes_size(&r.mesh, a).max(1))
        .collect();
    TensorType::new(t.dtype, &shape)
}

impl Rule for ManualRegion {
    fn name(&self) -> String {
        "manual_region".into()
    }

    fn infer(&self, ins: &[TensorType]) -> Result<Vec<TensorType>> {
        let name = format!("manual region `{}`", self.name);
        let params = self.body.param_types();
        if ins.len() != self.in_specs.len() || params.len() != ins.len() {
            return shape_err(
                &name,
                format!("operands {} do not match its body", show(ins)),
            );
        }
        for (i, ((t, s), p)) in ins.iter().zip(&self.in_specs).zip(&params).enumerate() {
            if s.len() != t.rank() || local(self, t, s) != *p {
                return shape_err(
                    &name,
                    format!("operand {i} is {t}, whose block under its spec is not the body's {p}"),
                );
            }
        }
        let outs = self.body.output_types();
        if outs.len() != self.out_specs.len() {
            return shape_err(&name, "its body's results do not match its out_specs");
        }
        Ok(outs
            .iter()
            .zip(&self.out_specs)
            .map(|(t, s)| {
                let shape: Vec<i64> = t
                    .shape
                    .iter()
                    .zip(s)
                    .map(|(d, a)| d * axes_size(&self.mesh, a))
                    .collect();
                TensorType::new(t.dtype, &shape)
            })
            .collect())
    }

    fn vjp(&self, v: &Vjp) -> Result<Vec<Option<Tensor>>> {
        region_vjp(self, v.ins, v.outs, v.cots)
    }

    /// The body's, on every device group of the manual axes.
    fn flops(&self, _ins: &[TensorType], _outs: &[TensorType]) -> f64 {
        self.manual_size() as f64 * super::flops(&self.body)
    }

    fn lower(&self, e: &mut Emitter, l: &Lowering) -> Result<Vec<String>> {
        lower_region(self, e, l)
    }
}

/// See the module doc: a region whose body replays the forward body and backpropagates, with
/// cotangents of replicated results divided and of replicated operands summed.
fn region_vjp(
    r: &ManualRegion,
    ins: &[Tensor],
    outs: &[Tensor],
    cots: &[Option<Tensor>],
) -> Result<Vec<Option<Tensor>>> {
    let diff: Vec<usize> = (0..ins.len())
        .filter(|&i| ins[i].dtype().is_float())
        .collect();
    let Some(b) = outs.first().map(|o| o.builder().clone()) else {
        return Ok(vec![None; ins.len()]);
    };
    if diff.is_empty() {
        return Ok(vec![None; ins.len()]);
    }
    // The float results' cotangents (zeros where none arrived) ride in after the operands.
    let mut cot_ins: Vec<(usize, Tensor)> = Vec::new();
    for (j, o) in outs
        .iter()
        .enumerate()
        .filter(|(_, o)| o.dtype().is_float())
    {
        cot_ins.push((
            j,
            match &cots[j] {
                Some(c) => c.clone(),
                None => o.zeros_like()?,
            },
        ));
    }
    let mut inputs: Vec<Tensor> = ins.to_vec();
    inputs.extend(cot_ins.iter().map(|(_, c)| c.clone()));
    let mut in_specs: Vec<PartitionSpec> = r.in_specs.iter().map(spec).collect();
    in_specs.extend(cot_ins.iter().map(|(j, _)| spec(&r.out_specs[*j])));
    let out_specs: Vec<PartitionSpec> = diff.iter().map(|&i| spec(&r.in_specs[i])).collect();
    let mesh = Mesh {
        axes: r.mesh.clone(),
    };
    let manual = refs(&r.manual);
    let n_in = ins.len();
    let grads = b.shard_map(
        &format!("{}_vjp", r.name),
        &mesh,
        &manual,
        &inputs,
        &in_specs,
        &out_specs,
        |sub, blocks| {
            let (x, ct) = blocks.split_at(n_in);
            let y = sub.inline(&r.body, x)?;
            let mut out_cots: Vec<Option<Tensor>> = vec![None; y.len()];
            for ((j, _), c) in cot_ins.iter().zip(ct) {
                let k = axes_size(
                    &r.mesh,
                    &crate::trace::replicated_axes(&r.manual, &r.out_specs[*j]),
                );
                out_cots[*j] = Some(if k > 1 {
                    c.mul_scalar(1.0 / k as f64)?
                } else {
                    c.clone()
                });
            }
            let wrt: Vec<Tensor> = diff.iter().map(|&i| x[i].clone()).collect();
            let g = crate::autodiff::vjp(&y, &out_cots, &wrt)?;
            diff.iter()
                .zip(g)
                .map(|(&i, gi)| {
                    let gi = match gi {
                        Some(g) => g,
                        None => x[i].zeros_like()?,
                    };
                    let rep = crate::trace::replicated_axes(&r.manual, &r.in_specs[i]);
                    if rep.is_empty() {
                        Ok(gi)
                    } else {
                        gi.psum(&refs(&rep))
                    }
                })
                .collect()
        },
    )?;
    let mut res: Vec<Option<Tensor>> = vec![None; ins.len()];
    for (&i, g) in diff.iter().zip(grads) {
        res[i] = Some(g);
    }
    Ok(res)
}

/// `<@mesh, [{"data"}, {}]>` (an entry of `#sdy.sharding_per_value`).
fn sdy_entry(axes: &crate::ir::DimAxes) -> String {
    spec(axes)
        .sdy()
        .trim_start_matches("#sdy.sharding")
        .to_string()
}

/// Shardy: one `sdy.manual_computation`. GSPMD: the operands marked manual with
/// `SPMDFullToShardShape`, the body inline, the results brought back with
/// `SPMDShardToFullShape` (GSPMD cannot leave some axes automatic inside: such a region needs
/// Shardy).
fn lower_region(r: &ManualRegion, e: &mut Emitter, l: &Lowering) -> Result<Vec<String>> {
    let region_err = |problem: String, fix: &str| {
        Error::invalid(format!("manual region `{}`: {problem}", r.name), fix)
    };
    let mesh = Mesh {
        axes: r.mesh.clone(),
    };
    let Some(ctx) = e.sharding().cloned().filter(|c| c.mesh.size() > 1) else {
        if mesh.size() == 1 {
            // One device: the region is its body.
            return e.manual_body(&r.manual, &r.body, l.ins);
        }
        return Err(region_err(
            format!("the program is emitted without a mesh, the region needs {mesh}"),
            "emit the program over the region's mesh (ShardedProgram::compile, lower::module_sharded)",
        ));
    };
    if ctx.mesh != mesh {
        return Err(region_err(
            format!("its mesh {mesh} is not the program's {}", ctx.mesh),
            "give the region the mesh the program is partitioned over",
        ));
    }
    let local_tys: Vec<TensorType> = l
        .in_tys
        .iter()
        .zip(&r.in_specs)
        .map(|(t, s)| local(r, t, s))
        .collect();
    match ctx.partitioner {
        Partitioner::Shardy => {
            let entries = |specs: &[crate::ir::DimAxes]| {
                specs.iter().map(sdy_entry).collect::<Vec<_>>().join(", ")
            };
            let attrs = format!(
                "in_shardings = #sdy.sharding_per_value<[{}]>, manual_axes = #sdy<manual_axes{{{}}}>, out_shardings = #sdy.sharding_per_value<[{}]>",
                entries(&r.in_specs),
                r.manual.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", "),
                entries(&r.out_specs)
            );
            let (body, manual) = (r.body.clone(), r.manual.clone());
            let region: crate::lower::Region<'_> =
                Box::new(move |e: &mut Emitter, a: &[String]| {
                    let outs = e.manual_body(&manual, &body, a)?;
                    Ok((outs, body.output_types()))
                });
            e.op_with_regions_ending(
                "sdy.manual_computation",
                l.ins,
                l.in_tys,
                vec![(local_tys, region)],
                &attrs,
                l.out_tys,
                "sdy.return",
            )
        }
        Partitioner::Gspmd => {
            if r.manual.len() != mesh.axes.len() {
                return Err(region_err(
                    format!(
                        "it leaves axes of {mesh} automatic (manual: {:?}), which GSPMD cannot express",
                        r.manual
                    ),
                    "use --partitioner shardy, or make the region manual over every mesh axis",
                ));
            }
            let mut blocks = Vec::with_capacity(l.ins.len());
            for ((x, t), (s, lt)) in l
                .ins
                .iter()
                .zip(l.in_tys)
                .zip(r.in_specs.iter().zip(&local_tys))
            {
                let global = format!("mhlo.sharding = \"{}\"", spec(s).hlo(&mesh));
                let marked = e.custom_call("Sharding", x, t, &global, t);
                blocks.push(e.custom_call(
                    "SPMDFullToShardShape",
                    &marked,
                    t,
                    "mhlo.sharding = \"{manual}\"",
                    lt,
                ));
            }
            let outs = e.call_manual_body(&r.manual, &r.body, &blocks, &local_tys)?;
            let body_tys = r.body.output_types();
            let mut res = Vec::with_capacity(outs.len());
            for ((y, lt), (s, t)) in outs
                .iter()
                .zip(&body_tys)
                .zip(r.out_specs.iter().zip(l.out_tys))
            {
                let manual = e.custom_call("Sharding", y, lt, "mhlo.sharding = \"{manual}\"", lt);
                let global = format!("mhlo.sharding = \"{}\"", spec(s).hlo(&mesh));
                res.push(e.custom_call("SPMDShardToFullShape", &manual, lt, &global, t));
            }
            Ok(res)
        }
    }
}
