//! Compiling a graph over a mesh and running it on per-device shards: where the graph's lowering,
//! the partition specs and the runtime meet (none of those three knows the others' types beyond
//! what it needs: `lower` reads specs, `partition` knows neither graphs nor plugins).

use crate::error::{Error, Result};
use crate::ir::Graph;
use crate::partition::{gather, shard, Mesh, PartitionSpec, ShardingContext};
use crate::runtime::{ArgBuffer, Client, DeviceBuffer, Executable, HostArray, MemoryStats};

/// One logical array held as one buffer per device of the mesh (`bufs[d]` on device `d`).
#[derive(Debug)]
pub struct Sharded {
    pub bufs: Vec<DeviceBuffer>,
}

/// An argument of [`ShardedProgram::run_owned`]: owned (consumed) or borrowed.
pub enum ShardedArg<'a> {
    Owned(Sharded),
    Borrowed(&'a Sharded),
}

impl ShardedArg<'_> {
    fn get(&self) -> &Sharded {
        match self {
            ShardedArg::Owned(s) => s,
            ShardedArg::Borrowed(s) => s,
        }
    }
}

/// Validates every spec against its tensor and the mesh, then emits the partitioned StableHLO,
/// donating each `(argument, result)` pair of `donate`. Names in errors are the graph's own.
pub fn emit(
    graph: &Graph,
    ctx: &ShardingContext,
    args: &[PartitionSpec],
    results: &[PartitionSpec],
    donate: &[(usize, usize)],
) -> Result<String> {
    if args.len() != graph.params.len() || results.len() != graph.outputs.len() {
        return Err(Error::invalid(format!(
                "shardings for `{}`: {} argument and {} result specs for {} parameters and {} outputs",
                graph.name,
                args.len(),
                results.len(),
                graph.params.len(),
                graph.outputs.len()
            ), "give one spec per parameter and per output"));
    }
    for ((name, v), s) in graph.params.iter().zip(args) {
        s.validate(name, &graph.ty(*v).shape, &ctx.mesh)?;
    }
    for ((name, v), s) in graph.outputs.iter().zip(results) {
        s.validate(name, &graph.ty(*v).shape, &ctx.mesh)?;
    }
    crate::lower::module_sharded_donating(graph, ctx, args, results, donate)
}

/// A program partitioned over a mesh, with the specs of its arguments and results.
pub struct ShardedProgram {
    pub exe: Executable,
    pub ctx: ShardingContext,
    pub args: Vec<PartitionSpec>,
    pub results: Vec<PartitionSpec>,
    pub text: String,
    /// The mesh position (SPMD partition) of each addressable device, in execute order: all of
    /// them, `0..n`, on one process; a host's share in a multi-process job.
    positions: Vec<i64>,
}

impl ShardedProgram {
    /// Validates every spec against its tensor and the mesh against the devices, emits and
    /// compiles. Argument and result names in errors are the graph's own.
    pub fn compile(
        client: &Client,
        graph: &Graph,
        ctx: &ShardingContext,
        args: Vec<PartitionSpec>,
        results: Vec<PartitionSpec>,
    ) -> Result<ShardedProgram> {
        Self::compile_donating(client, graph, ctx, args, results, &[])
    }

    /// [`ShardedProgram::compile`] donating each `(argument, result)` pair of `donate`: the
    /// result may be written into the argument's buffers, so a training step holds its
    /// parameters and optimizer state once. Run it with [`ShardedProgram::run_owned`].
    pub fn compile_donating(
        client: &Client,
        graph: &Graph,
        ctx: &ShardingContext,
        args: Vec<PartitionSpec>,
        results: Vec<PartitionSpec>,
        donate: &[(usize, usize)],
    ) -> Result<ShardedProgram> {
        ctx.mesh.check_devices(client.devices().len())?;
        let text = emit(graph, ctx, &args, &results, donate)?;
        Self::compile_text(client, ctx, args, results, text)
    }

    /// Compiles a program [`emit`] made with these specs.
    pub fn compile_text(
        client: &Client,
        ctx: &ShardingContext,
        args: Vec<PartitionSpec>,
        results: Vec<PartitionSpec>,
        text: String,
    ) -> Result<ShardedProgram> {
        Self::compile_assigned(client, ctx, None, args, results, text)
    }

    /// [`ShardedProgram::compile_text`] with mesh position `k` on device `devices[k]` (a
    /// multi-process job's devices, ordered by process; `None`: ids `0..n`).
    pub fn compile_assigned(
        client: &Client,
        ctx: &ShardingContext,
        devices: Option<Vec<i64>>,
        args: Vec<PartitionSpec>,
        results: Vec<PartitionSpec>,
        text: String,
    ) -> Result<ShardedProgram> {
        ctx.mesh.check_devices(client.devices().len())?;
        let mut options = ctx.compile_options();
        if devices.is_some() {
            options.device_assignment = devices;
        }
        let exe = client.compile(&text, &options)?;
        let positions = (0..exe.num_devices() as i64).collect();
        Ok(ShardedProgram {
            exe,
            ctx: ctx.clone(),
            args,
            results,
            text,
            positions,
        })
    }

    /// A program loaded from a serialized executable (`basic train --executable`): `text` is the
    /// StableHLO it was compiled from, whose specs the caller has checked against `args` and
    /// `results`.
    pub fn from_loaded(
        exe: Executable,
        ctx: &ShardingContext,
        args: Vec<PartitionSpec>,
        results: Vec<PartitionSpec>,
        text: String,
    ) -> ShardedProgram {
        let positions = (0..exe.num_devices() as i64).collect();
        ShardedProgram {
            exe,
            ctx: ctx.clone(),
            args,
            results,
            text,
            positions,
        }
    }

    pub fn mesh(&self) -> &Mesh {
        &self.ctx.mesh
    }

    fn devices(&self) -> i64 {
        self.exe.num_devices() as i64
    }

    /// Sets the mesh position of each addressable device (a host's share of a multi-process
    /// job's mesh); one per device.
    pub fn set_positions(&mut self, positions: Vec<i64>) -> Result<()> {
        if positions.len() != self.devices() as usize {
            return Err(Error::Internal(format!(
                "{} mesh positions for a program on {} devices",
                positions.len(),
                self.devices()
            )));
        }
        self.positions = positions;
        Ok(())
    }

    /// The mesh position of each addressable device, in execute order.
    pub fn positions(&self) -> &[i64] {
        &self.positions
    }

    fn arg_spec(&self, i: usize) -> Result<&PartitionSpec> {
        self.args.get(i).ok_or_else(|| {
            Error::invalid(
                format!("argument {i}"),
                format!("the program takes {} arguments", self.args.len()),
            )
        })
    }

    /// The spec of argument `i`.
    pub fn arg(&self, i: usize) -> Result<&PartitionSpec> {
        self.arg_spec(i)
    }

    /// Splits argument `i`'s global value into shards and uploads them.
    pub fn upload(&self, i: usize, global: &HostArray) -> Result<Sharded> {
        let spec = self.arg_spec(i)?.clone();
        let whole = self.mesh().size() == 1;
        self.upload_with(|_, position| {
            if whole {
                Ok(global.clone())
            } else {
                shard(global, &spec, self.mesh(), position)
            }
        })
    }

    /// Uploads to each addressable device the piece `piece(device, mesh position)` gives (a
    /// process's own rows of a batch, a checkpoint's pieces): nothing global passes through.
    pub fn upload_with(
        &self,
        mut piece: impl FnMut(usize, i64) -> Result<HostArray>,
    ) -> Result<Sharded> {
        let bufs = self
            .positions
            .iter()
            .enumerate()
            .map(|(d, &p)| self.exe.upload(&piece(d, p)?, d))
            .collect::<Result<Vec<_>>>()?;
        Ok(Sharded { bufs })
    }

    /// Runs on sharded arguments; returns sharded results. Nothing goes through the host.
    /// A donating program refuses borrowed arguments: use [`ShardedProgram::run_owned`].
    pub fn run(&self, args: &[&Sharded]) -> Result<Vec<Sharded>> {
        self.run_owned(args.iter().map(|a| ShardedArg::Borrowed(a)).collect())
    }

    /// Runs, consuming the owned arguments (every donated argument must be owned).
    pub fn run_owned(&self, args: Vec<ShardedArg<'_>>) -> Result<Vec<Sharded>> {
        let n = self.devices() as usize;
        if let Some((i, a)) = args
            .iter()
            .enumerate()
            .find(|(_, a)| a.get().bufs.len() != n)
        {
            return Err(Error::invalid(
                format!(
                    "argument {i}: {} shard(s) for a program on {n} device(s)",
                    a.get().bufs.len()
                ),
                "upload it with this program's `upload`",
            ));
        }
        let mut lists: Vec<Vec<ArgBuffer<'_>>> = (0..n).map(|_| Vec::new()).collect();
        for a in args {
            match a {
                ShardedArg::Owned(s) => {
                    for (d, b) in s.bufs.into_iter().enumerate() {
                        lists[d].push(ArgBuffer::Owned(b));
                    }
                }
                ShardedArg::Borrowed(s) => {
                    for (d, b) in s.bufs.iter().enumerate() {
                        lists[d].push(ArgBuffer::Borrowed(b));
                    }
                }
            }
        }
        let mut per_device = self.exe.execute_owned(lists)?;
        let n_out = per_device.first().map_or(0, Vec::len);
        let mut out: Vec<Sharded> = (0..n_out)
            .map(|_| Sharded {
                bufs: Vec::with_capacity(n),
            })
            .collect();
        for dev in per_device.iter_mut() {
            for (i, b) in dev.drain(..).enumerate() {
                out[i].bufs.push(b);
            }
        }
        Ok(out)
    }

    /// Brings result `i` back to the host as one global array (every device of the mesh must be
    /// addressable: one process, or processes simulated in one).
    pub fn gather(&self, i: usize, value: &Sharded) -> Result<HostArray> {
        if self.positions.len() as i64 != self.mesh().size() {
            return Err(Error::Internal(format!(
                "gathering result {i} on a host with {} of the mesh's {} devices",
                self.positions.len(),
                self.mesh().size()
            )));
        }
        let mut shards = value
            .bufs
            .iter()
            .map(DeviceBuffer::to_host)
            .collect::<Result<Vec<_>>>()?;
        if shards.len() == 1 {
            return Ok(shards.remove(0));
        }
        gather(&shards, &self.results[i], self.mesh())
    }

    /// Uploads, runs and gathers everything.
    pub fn run_host(&self, args: &[HostArray]) -> Result<Vec<HostArray>> {
        let up = args
            .iter()
            .enumerate()
            .map(|(i, a)| self.upload(i, a))
            .collect::<Result<Vec<_>>>()?;
        let out = self.run_owned(up.into_iter().map(ShardedArg::Owned).collect())?;
        out.iter()
            .enumerate()
            .map(|(i, s)| self.gather(i, s))
            .collect()
    }

    pub fn memory_stats(&self) -> Result<MemoryStats> {
        self.exe.memory_stats()
    }
}
