//! The training step as a program compiled ahead of time: emitted once, compiled for a described
//! target (or the local client) and measured, saved with its manifest, and loaded back by `basic
//! train --executable` instead of compiling. `basic compile` and `basic plan` both measure
//! through [`compile_step`] / [`StepProgram::measure_on_target`], so they agree on what fits.

use std::path::Path;
use std::time::Instant;

use serde_json::json;

use super::setup::StepSetup;
use super::step::{train_donations, train_graph, StepOptions};
use super::Layout;
use crate::error::{Error, Result};
use crate::exec::{emit, ShardedProgram};
use crate::io::executable::{sha256_hex, Manifest, SavedExecutable, FORMAT};
use crate::ir::Graph;
use crate::model::{names, ModelConfig, ParamSpec};
use crate::partition::PartitionSpec;
use crate::runtime::{Client, CompiledProgram, Costs, MemoryStats, Signature, Topology};
use crate::target::{OutOfMemory, Target};

/// The emitted training step and what describes it.
pub struct StepProgram {
    pub graph: Graph,
    /// Parameters, then optimizer state.
    pub params: Vec<ParamSpec>,
    pub state: Vec<ParamSpec>,
    pub args: Vec<PartitionSpec>,
    pub results: Vec<PartitionSpec>,
    pub donations: Vec<(usize, usize)>,
    /// The partitioned StableHLO.
    pub text: String,
}

impl StepProgram {
    /// Builds and emits the step of `c` under `layout`, donating parameters and optimizer state
    /// when asked.
    pub fn build(
        c: &ModelConfig,
        o: &StepOptions,
        layout: &Layout,
        donate: bool,
    ) -> Result<StepProgram> {
        let mut o = o.clone();
        if o.loss_block > 0 {
            o.ring = layout.ring()?;
        }
        let (graph, params, state) = train_graph(c, &o)?;
        let mut all = params.clone();
        all.extend(state.iter().cloned());
        let (args, results) = layout.specs(&graph, &all)?;
        let donations = if donate {
            train_donations(&params, &state)
        } else {
            vec![]
        };
        let text = emit(&graph, &layout.context(), &args, &results, &donations)?;
        Ok(StepProgram {
            graph,
            params,
            state,
            args,
            results,
            donations,
            text,
        })
    }

    /// The position of the input called `name` (`step`, `images`, `tokens`, `rng`).
    pub fn input_index(&self, name: &str) -> Result<usize> {
        self.graph
            .params
            .iter()
            .position(|(n, _)| n == name)
            .ok_or_else(|| Error::Program(format!("the step has no input `{name}`")))
    }

    /// The position of the output called `name` (`loss`, `grad_norm`, ...).
    pub fn output_index(&self, name: &str) -> Result<usize> {
        self.graph
            .outputs
            .iter()
            .position(|(n, _)| n == name)
            .ok_or_else(|| Error::Program(format!("the step has no output `{name}`")))
    }

    /// Number of model parameters (not optimizer state).
    pub fn param_count(&self) -> i64 {
        self.params.iter().map(|s| s.element_count()).sum()
    }

    /// Writes the compiled program `executable` with its manifest for `machine` to `path`.
    pub fn save(
        &self,
        path: &Path,
        setup: &StepSetup,
        machine: &Machine,
        executable: Vec<u8>,
    ) -> Result<()> {
        let manifest = self.manifest(
            &setup.config,
            &setup.options,
            &setup.layout,
            &setup.partitioning,
            machine,
        )?;
        SavedExecutable {
            manifest,
            program: self.text.clone(),
            executable,
        }
        .write(path)
    }

    /// The manifest of this program compiled for `machine`.
    pub fn manifest(
        &self,
        c: &ModelConfig,
        o: &StepOptions,
        layout: &Layout,
        partitioning: &str,
        machine: &Machine,
    ) -> Result<Manifest> {
        let sig = Signature::from_program(&self.text)?;
        let config = toml::to_string(c).map_err(|e| {
            Error::invalid(
                format!("model config `{}`", c.name),
                format!("cannot serialize it: {e}"),
            )
        })?;
        Ok(Manifest {
            format: FORMAT,
            target: machine.target.clone(),
            platform: machine.platform.clone(),
            device_kind: machine.device_kind.clone(),
            devices: layout.mesh.size() as usize,
            plugin_version: machine.plugin_version.clone(),
            model: c.name.clone(),
            config_sha256: sha256_hex(config.as_bytes()),
            config,
            batch: o.batch,
            microbatches: o.microbatches,
            remat: c.train.remat.clone(),
            dtype: c.train.dtype,
            mesh: layout.mesh.to_string(),
            partitioning: partitioning.to_string(),
            partitioner: layout.partitioner,
            donate: !self.donations.is_empty(),
            program_sha256: sha256_hex(self.text.as_bytes()),
            arguments: sig.args.iter().map(|p| p.ty.to_string()).collect(),
            results: sig.results.iter().map(|p| p.ty.to_string()).collect(),
            device_assignment: machine.device_assignment.clone(),
            processes: machine.processes(),
            device_processes: machine.device_processes.clone(),
        })
    }

    /// Compiles the program for a described target and measures it. A compiler that refuses the
    /// program as too large for the target (libtpu stops with RESOURCE_EXHAUSTED instead of
    /// sizing it) gives what it said it needs as the figures, and its message.
    pub fn measure_on_target(
        &self,
        target: &Target,
        topology: &Topology,
        layout: &Layout,
    ) -> Result<TargetCompile> {
        let t0 = Instant::now();
        match self.compile_for(target, topology, layout) {
            Ok(compiled) => Ok(TargetCompile {
                memory: compiled.memory_stats()?,
                seconds: t0.elapsed().as_secs_f64(),
                refused: None,
                compiled: Some(compiled),
            }),
            Err(e) => match OutOfMemory::from_error(&e) {
                Some(oom) => Ok(TargetCompile {
                    memory: oom.memory_stats(),
                    seconds: t0.elapsed().as_secs_f64(),
                    refused: Some(oom.message),
                    compiled: None,
                }),
                None => Err(e),
            },
        }
    }

    /// Compiles the program for a described target with its own compiler; nothing runs.
    pub fn compile_for(
        &self,
        target: &Target,
        topology: &Topology,
        layout: &Layout,
    ) -> Result<CompiledProgram> {
        let n = layout.mesh.size() as usize;
        if n > topology.devices().len() {
            return Err(Error::NotEnoughDevices {
                what: format!("mesh {} on target `{}`", layout.mesh, target.name()),
                needed: n,
                available: topology.devices().len(),
                platform: format!("target `{}`", target.name()),
                fix: format!(
                    "use a mesh of at most {} devices, or a larger topology ({})",
                    topology.devices().len(),
                    target.spec.topology_syntax
                ),
            });
        }
        let options = target.compile_options(&layout.context().compile_options())?;
        topology.compile(&self.text, &options)
    }

    /// Loads a saved executable of this very program on `client`, refusing one saved for another
    /// target, plugin version, model, batch or layout with one error that lists the differences.
    pub fn load(
        self,
        client: &Client,
        path: &Path,
        expected: &Manifest,
        layout: &Layout,
    ) -> Result<ShardedProgram> {
        let saved = SavedExecutable::read(path)?;
        saved.check(path, expected)?;
        let ctx = layout.context();
        let mut options = ctx.compile_options();
        options.device_assignment = Some(saved.manifest.device_assignment.clone());
        let exe = client.load_serialized(&saved.executable, &saved.program, &options)?;
        Ok(ShardedProgram::from_loaded(
            exe,
            &ctx,
            self.args,
            self.results,
            saved.program,
        ))
    }
}

/// The machine a program is compiled for or loaded on, as a manifest records it.
#[derive(Clone, Debug)]
pub struct Machine {
    pub target: String,
    pub platform: String,
    pub device_kind: String,
    pub plugin_version: String,
    pub device_assignment: Vec<i64>,
    /// The process that drives each device of the assignment.
    pub device_processes: Vec<i32>,
}

impl Machine {
    /// The processes the program spans.
    pub fn processes(&self) -> usize {
        let mut p = self.device_processes.clone();
        p.sort_unstable();
        p.dedup();
        p.len().max(1)
    }

    /// A described target's machine, for a program compiled with `program`'s device assignment.
    pub fn of_target(target: &Target, topology: &Topology, program: &CompiledProgram) -> Machine {
        Machine {
            target: target.name(),
            platform: topology.platform().to_string(),
            device_kind: topology
                .devices()
                .first()
                .map(|d| d.kind.clone())
                .unwrap_or_default(),
            plugin_version: crate::target::plugin_identity(
                topology.plugin(),
                topology.platform_version(),
            ),
            device_processes: program
                .options()
                .devices()
                .iter()
                .map(|id| {
                    topology
                        .devices()
                        .iter()
                        .find(|d| i64::from(d.id) == *id)
                        .map_or(0, |d| d.process_index)
                })
                .collect(),
            device_assignment: program.options().devices(),
        }
    }

    /// The client's machine, for a program over its first `devices` devices in the job's order
    /// (by process, then id; one process: the local devices by id).
    pub fn of_client(client: &Client, devices: usize) -> Machine {
        let plugin = client.plugin();
        let mut all: Vec<(i32, i32)> = client
            .devices()
            .iter()
            .map(|d| (d.process_index, d.id))
            .collect();
        all.sort_unstable();
        all.truncate(devices);
        let ids: Vec<i64> = all.iter().map(|&(_, id)| i64::from(id)).collect();
        Machine {
            target: format!("{}:{}", client.platform(), devices),
            platform: client.platform().to_string(),
            device_kind: client
                .devices()
                .first()
                .map(|d| d.kind.clone())
                .unwrap_or_default(),
            plugin_version: crate::target::plugin_identity(plugin, client.platform_version()),
            device_assignment: ids,
            device_processes: all.iter().map(|&(p, _)| p).collect(),
        }
    }
}

/// A step compiled for a described target, or refused by its compiler as too large.
pub struct TargetCompile {
    /// Per device; for a refused program, what the compiler said it needs (a lower bound).
    pub memory: MemoryStats,
    pub seconds: f64,
    /// The compiler's out-of-memory message, when it refused the program.
    pub refused: Option<String>,
    pub compiled: Option<CompiledProgram>,
}

impl TargetCompile {
    /// Whether the program fits `budget` bytes per device ([`fits_in`]).
    pub fn fits_in(&self, budget: i64) -> bool {
        fits_in(&self.memory, self.refused.as_deref(), budget)
    }
}

/// The one test of what fits, for `basic compile` and `basic plan` alike: the target's compiler
/// accepted the program (`refused` is `None`) and its peak per device is within `budget` bytes.
pub fn fits_in(memory: &MemoryStats, refused: Option<&str>, budget: i64) -> bool {
    refused.is_none() && memory.peak_bytes <= budget
}

/// What compiles a step: a described target's own compiler (nothing runs), or a local client.
#[derive(Clone, Copy)]
pub enum CompileOn<'a> {
    Target(&'a Target),
    Client(&'a Client),
}

/// What one compile of the step reports.
#[derive(Clone, Debug)]
pub struct StepReport {
    pub target: Option<Target>,
    pub params: i64,
    pub flops: f64,
    pub build_seconds: f64,
    pub compile_seconds: f64,
    pub mem: MemoryStats,
    /// Each device's process (host) index.
    pub process_index: Vec<i32>,
    /// The target's compiler refused the program as too large, with this message; `mem` then
    /// holds only what it said it needs (a lower bound on the peak).
    pub refused: Option<String>,
    /// The compiler's cost analysis, where the plugin gives one.
    pub costs: Option<Costs>,
    /// What each process of the job runs and loads.
    pub shares: Vec<ProcessShare>,
}

/// One process's part of a job: its devices and the rows of each global batch it loads.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ProcessShare {
    pub process: i32,
    /// Global device ids, in mesh-position order.
    pub devices: Vec<i64>,
    /// Rows `[start, end)` of the global batch its devices hold.
    pub rows: (i64, i64),
}

/// The share of each process of a program whose mesh position `k` runs on device `ids[k]`,
/// driven by process `process_index[k]`; the rows from the images' spec `spec`.
fn process_shares(
    process_index: &[i32],
    ids: &[i64],
    spec: &crate::partition::PartitionSpec,
    mesh: &crate::partition::Mesh,
    batch: i64,
) -> Result<Vec<ProcessShare>> {
    let mut procs: Vec<i32> = process_index.to_vec();
    procs.sort_unstable();
    procs.dedup();
    procs
        .into_iter()
        .map(|p| {
            let positions: Vec<i64> = (0..process_index.len())
                .filter(|&k| process_index[k] == p)
                .map(|k| k as i64)
                .collect();
            let rows = super::hosts::rows_held(names::io::IMAGES, batch, spec, mesh, &positions)?;
            Ok(ProcessShare {
                process: p,
                devices: positions.iter().map(|&k| ids[k as usize]).collect(),
                rows,
            })
        })
        .collect()
}

impl StepReport {
    /// Whether the peak fits the target's HBM per device (`None` on a local client).
    pub fn fits(&self) -> Option<bool> {
        self.target
            .as_ref()
            .map(|t| fits_in(&self.mem, self.refused.as_deref(), t.spec.hbm_bytes))
    }

    /// The distinct processes (hosts) the program spans.
    pub fn hosts(&self) -> usize {
        let mut h = self.process_index.clone();
        h.sort_unstable();
        h.dedup();
        h.len()
    }

    /// The analytic FLOPs over the devices' peak bf16 rate, on a target.
    pub fn step_time_bound(&self) -> Option<f64> {
        let n = self.process_index.len();
        self.target
            .as_ref()
            .map(|t| t.step_time_bound(self.flops, n))
    }

    /// `basic compile --json`'s object.
    pub fn to_json(&self, setup: &StepSetup) -> serde_json::Value {
        let (c, o, layout, mem) = (&setup.config, &setup.options, &setup.layout, &self.mem);
        let fits = self.fits();
        let devices: Vec<_> = (0..setup.devices())
            .map(|d| {
                let mut v = json!({"id": d, "argument_bytes": mem.argument_bytes, "output_bytes": mem.output_bytes,
                       "temp_bytes": mem.temp_bytes, "alias_bytes": mem.alias_bytes, "peak_bytes": mem.peak_bytes,
                       "generated_code_bytes": mem.generated_code_bytes,
                       "process_index": self.process_index.get(d).copied().unwrap_or(0)});
                if let (Some(t), Some(f)) = (&self.target, fits) {
                    v["hbm_bytes"] = json!(t.spec.hbm_bytes);
                    v["fits"] = json!(f);
                }
                v
            })
            .collect();
        let mut out = json!({
            "model": c.name, "params": self.params, "flops_per_step": self.flops,
            "compile_seconds": self.compile_seconds, "build_seconds": self.build_seconds,
            "batch": o.batch, "microbatches": o.microbatches, "remat": c.train.remat,
            "dtype": c.train.dtype, "mesh": layout.mesh.to_string(),
            "partitioner": layout.partitioner, "devices": devices,
            "generated_code_bytes": mem.generated_code_bytes, "hosts": self.hosts(),
        });
        out["processes"] = json!(self
            .shares
            .iter()
            .map(|s| json!({"process": s.process, "devices": s.devices, "rows": [s.rows.0, s.rows.1]}))
            .collect::<Vec<_>>());
        if let Some(c) = &self.costs {
            out["cost_analysis"] = json!({"flops": c.flops, "bytes_accessed": c.bytes_accessed,
                "optimal_seconds": c.optimal_seconds, "loops_counted_once": true});
        }
        if let Some(t) = &self.target {
            out["target"] = json!(t.name());
            out["fits"] = json!(fits);
            out["hbm_bytes"] = json!(t.spec.hbm_bytes);
            out["step_time_lower_bound_seconds"] = json!(self.step_time_bound());
            if let Some(m) = &self.refused {
                out["compiler_refused"] = json!(m);
                out["peak_bytes_is_lower_bound"] = json!(true);
            }
            out["step_time_lower_bound_is"] = json!(
                "analytic FLOPs / (devices × peak dense bf16 FLOP/s): a bound, not a prediction"
            );
        }
        out
    }
}

/// Where [`compile_step`] writes what it made, besides reporting.
#[derive(Clone, Copy, Debug, Default)]
pub struct CompileOutputs<'a> {
    /// The partitioned StableHLO text.
    pub emit: Option<&'a Path>,
    /// The compiled step and its manifest, for `basic train --executable`.
    pub save_executable: Option<&'a Path>,
}

/// Builds the step of `setup`, compiles it on `on` and measures it; writes what `out` asks for.
/// A program a target's compiler refuses as too large is reported (`fits` false), not an error,
/// unless an executable was to be saved.
pub fn compile_step(
    setup: &StepSetup,
    on: CompileOn<'_>,
    out: CompileOutputs<'_>,
) -> Result<StepReport> {
    let t0 = Instant::now();
    let sp = setup.build()?;
    let build_seconds = t0.elapsed().as_secs_f64();
    if let Some(p) = out.emit {
        crate::fs::write_atomic(p, sp.text.as_bytes())?;
    }
    let n = setup.devices();
    let ids: Vec<i64>;
    let (target, compile_seconds, mem, process_index, refused, costs) = match on {
        CompileOn::Target(t) => {
            let topo = t.topology()?;
            // The program runs on the topology's first `n` devices in the job's order (its
            // default assignment).
            let order = topo.job_order(n);
            let process_index: Vec<i32> = order.iter().map(|d| d.process_index).collect();
            ids = order.iter().map(|d| i64::from(d.id)).collect();
            let m = sp.measure_on_target(t, &topo, &setup.layout)?;
            if let Some(path) = out.save_executable {
                let compiled = m.compiled.as_ref().ok_or_else(|| {
                    Error::invalid(
                        format!("--save-executable `{}`", path.display()),
                        format!(
                            "nothing saved: the program does not fit the target ({})",
                            m.refused.clone().unwrap_or_default()
                        ),
                    )
                })?;
                let machine = Machine::of_target(t, &topo, compiled);
                sp.save(path, setup, &machine, compiled.serialize()?)?;
            }
            let costs = m.compiled.as_ref().and_then(|c| c.cost_analysis().ok());
            (
                Some(t.clone()),
                m.seconds,
                m.memory,
                process_index,
                m.refused,
                costs,
            )
        }
        CompileOn::Client(client) => {
            // A job's devices in its order (by process, then id), as `basic train` takes them.
            let order = super::hosts::global_order(client, n)?;
            let process_index: Vec<i32> = order
                .iter()
                .map(|id| {
                    client
                        .devices()
                        .iter()
                        .find(|d| i64::from(d.id) == *id)
                        .map_or(0, |d| d.process_index)
                })
                .collect();
            let t1 = Instant::now();
            let prog = ShardedProgram::compile_assigned(
                client,
                &setup.layout.context(),
                Some(order.clone()),
                sp.args.clone(),
                sp.results.clone(),
                sp.text.clone(),
            )?;
            let seconds = t1.elapsed().as_secs_f64();
            if let Some(path) = out.save_executable {
                let machine = Machine::of_client(client, n);
                sp.save(path, setup, &machine, prog.exe.serialize()?)?;
            }
            let costs = prog.exe.cost_analysis().ok();
            ids = order;
            (
                None,
                seconds,
                prog.memory_stats()?,
                process_index,
                None,
                costs,
            )
        }
    };
    let images = &sp.args[sp.input_index(names::io::IMAGES)?];
    let shares = process_shares(
        &process_index,
        &ids,
        images,
        &setup.layout.mesh,
        setup.options.batch,
    )?;
    Ok(StepReport {
        target,
        params: sp.param_count(),
        flops: crate::ops::flops(&sp.graph),
        build_seconds,
        compile_seconds,
        mem,
        process_index,
        refused,
        costs,
        shares,
    })
}
