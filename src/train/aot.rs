//! The training step as a program compiled ahead of time: emitted once, compiled for a described
//! target (or the local client), saved with its manifest, and loaded back by `basic train
//! --executable` instead of compiling.

use std::path::Path;

use super::step::{train_donations, train_graph, StepOptions};
use super::Layout;
use crate::error::{Error, Result};
use crate::exec::{emit, ShardedProgram};
use crate::io::executable::{sha256_hex, Manifest, SavedExecutable, FORMAT};
use crate::ir::Graph;
use crate::model::{ModelConfig, ParamSpec};
use crate::partition::PartitionSpec;
use crate::runtime::{Client, CompiledProgram, Signature, Topology};
use crate::target::Target;

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
        let (graph, params, state) = train_graph(c, o)?;
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
        let config = toml::to_string(c).map_err(|e| Error::InvalidArgument {
            what: format!("model config `{}`", c.name),
            fix: format!("cannot serialize it: {e}"),
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
            dtype: c.train.dtype.clone(),
            mesh: layout.mesh.to_string(),
            partitioning: partitioning.to_string(),
            partitioner: format!("{:?}", layout.partitioner).to_lowercase(),
            donate: !self.donations.is_empty(),
            program_sha256: sha256_hex(self.text.as_bytes()),
            arguments: sig.args.iter().map(|p| p.ty.to_string()).collect(),
            results: sig.results.iter().map(|p| p.ty.to_string()).collect(),
            device_assignment: machine.device_assignment.clone(),
        })
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
}

impl Machine {
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
            device_assignment: program.options().devices(),
        }
    }

    /// The local client's machine, for a program over its first `devices` devices.
    pub fn of_client(client: &Client, devices: usize) -> Machine {
        let plugin = client.plugin();
        let ids: Vec<i64> = client
            .addressable_devices()
            .iter()
            .take(devices)
            .map(|d| i64::from(d.id))
            .collect();
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
        }
    }
}
