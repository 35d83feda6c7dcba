//! A run's parameters and optimizer state to and from checkpoints, process by process: each
//! process writes the blocks its devices hold (one replica of each block) and reads the
//! blocks its devices need, whatever layout wrote them ([`super::checkpoint`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::array::HostArray;
use crate::coord;
use crate::data::Position;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::exec::{Sharded, ShardedProgram};
use crate::model::ParamSpec;
use crate::partition::{shard_index, Mesh, PartitionSpec};

use super::checkpoint::{self, Block, Manifest, Piece, Reader, TensorEntry};
use super::hosts::Hosts;

/// How long processes wait for each other around a checkpoint (writers of big checkpoints to a
/// bucket take their time).
const CHECKPOINT_WAIT: Duration = Duration::from_secs(1800);

/// Where device `position`'s block of a tensor of `shape` lies under `spec`: start and shape.
pub fn region(
    shape: &[i64],
    spec: &PartitionSpec,
    mesh: &Mesh,
    position: i64,
) -> (Vec<i64>, Vec<i64>) {
    let tiles = spec.tiles(mesh);
    let idx = shard_index(spec, mesh, position);
    let block: Vec<i64> = shape
        .iter()
        .zip(&tiles)
        .map(|(n, t)| n / t.max(&1))
        .collect();
    let start = idx.iter().zip(&block).map(|(i, b)| i * b).collect();
    (start, block)
}

/// The mesh positions that write tensor `k` (split by `spec`): one replica of each block. The
/// replica is chosen by the tensor's index, so that replicated tensors (all of them under data
/// parallelism) spread their writes over every process instead of all falling to process 0.
fn writers(spec: &PartitionSpec, mesh: &Mesh, k: usize) -> BTreeSet<i64> {
    let mut holders: BTreeMap<Vec<i64>, Vec<i64>> = BTreeMap::new();
    for q in 0..mesh.size() {
        holders
            .entry(shard_index(spec, mesh, q))
            .or_default()
            .push(q);
    }
    holders.values().map(|h| h[k % h.len()]).collect()
}

/// What a checkpoint records besides the tensors.
pub struct Saved {
    pub step: u64,
    pub seed: u64,
    /// Every process's data streams, merged.
    pub position: Position,
}

/// Writes the state `values` (tensors `specs`, arguments `0..` of `prog`) as a checkpoint in the
/// step folder under `dir`: each process of `hosts` acting here writes its blocks; then process
/// 0 writes the manifest (in a multi-process job, after every process has sent it its pieces
/// through the coordinator). Returns the folder.
pub fn save(
    prog: &ShardedProgram,
    hosts: &Hosts,
    specs: &[ParamSpec],
    values: &[Sharded],
    dir: &str,
    saved: &Saved,
    job: Option<&coord::Client>,
) -> Result<String> {
    let folder = checkpoint::join(dir, &checkpoint::step_folder(saved.step));
    let mut pieces: Vec<(String, Piece)> = Vec::new();
    for &p in &hosts.local {
        let blocks = process_blocks(prog, hosts, p, specs, values)?;
        pieces.extend(checkpoint::write_process(&folder, p, &blocks)?);
    }
    if let Some(c) = job {
        let key = format!("checkpoint/{}/pieces/{}", saved.step, c.process_id());
        let json = serde_json::to_vec(&pieces).map_err(|e| Error::Internal(e.to_string()))?;
        c.put(&key, &json)?;
        c.barrier(
            &format!("checkpoint-{}-written", saved.step),
            CHECKPOINT_WAIT,
        )?;
        if hosts.leads() {
            pieces.clear();
            for q in 0..c.num_processes() {
                let key = format!("checkpoint/{}/pieces/{q}", saved.step);
                let got = c.get(&key, CHECKPOINT_WAIT)?;
                let theirs: Vec<(String, Piece)> = serde_json::from_slice(&got).map_err(|e| {
                    Error::Internal(format!("process {q}'s checkpoint pieces: {e}"))
                })?;
                pieces.extend(theirs);
            }
        }
    }
    // Fault injection for the crash tests: die after this step's data files are written and
    // before the manifest that makes the step folder a checkpoint.
    if std::env::var("BASIC_FAULT_CHECKPOINT_STEP")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        == Some(saved.step)
    {
        std::process::abort();
    }
    if hosts.leads() {
        let manifest = manifest(prog, specs, pieces, saved, hosts)?;
        checkpoint::write_manifest(&folder, &manifest)?;
    }
    if let Some(c) = job {
        c.barrier(
            &format!("checkpoint-{}-committed", saved.step),
            CHECKPOINT_WAIT,
        )?;
    }
    Ok(folder)
}

/// The blocks process `p`'s devices write.
fn process_blocks(
    prog: &ShardedProgram,
    hosts: &Hosts,
    p: usize,
    specs: &[ParamSpec],
    values: &[Sharded],
) -> Result<Vec<Block>> {
    let mesh = prog.mesh();
    let mut blocks = Vec::new();
    for (i, (s, v)) in specs.iter().zip(values).enumerate() {
        let spec = prog.arg(i)?;
        let writers = writers(spec, mesh, i);
        for d in hosts.devices_of(p) {
            let position = hosts.positions[d];
            if !writers.contains(&position) {
                continue;
            }
            let (start, _) = region(&s.shape, spec, mesh, position);
            blocks.push(Block {
                tensor: s.name.clone(),
                start,
                value: v.bufs[d].to_host()?,
            });
        }
    }
    Ok(blocks)
}

fn manifest(
    prog: &ShardedProgram,
    specs: &[ParamSpec],
    pieces: Vec<(String, Piece)>,
    saved: &Saved,
    hosts: &Hosts,
) -> Result<Manifest> {
    let mut by_name: BTreeMap<String, Vec<Piece>> = BTreeMap::new();
    for (t, p) in pieces {
        by_name.entry(t).or_default().push(p);
    }
    let mut tensors = BTreeMap::new();
    for (i, s) in specs.iter().enumerate() {
        let dtype = prog
            .exe
            .signature()
            .args
            .get(i)
            .map(|a| a.ty.dtype)
            .ok_or_else(|| {
                Error::Internal(format!("the step has no argument {i} for `{}`", s.name))
            })?;
        tensors.insert(
            s.name.clone(),
            TensorEntry {
                dtype: dtype.name().to_string(),
                shape: s.shape.clone(),
                pieces: by_name.remove(&s.name).unwrap_or_default(),
            },
        );
    }
    Ok(Manifest {
        format: checkpoint::FORMAT,
        step: saved.step,
        seed: saved.seed,
        processes: hosts.processes,
        mesh: prog.mesh().to_string(),
        tensors,
        data_position: serde_json::to_value(&saved.position)
            .map_err(|e| Error::Internal(e.to_string()))?,
        sha256: String::new(),
    })
}

/// A checkpoint as a run reads it: a step folder, or a single file of an earlier version (its
/// step and data position read when asked: `basic eval` and `export` need only the values).
pub enum Opened {
    Folder(Reader),
    File {
        values: BTreeMap<String, HostArray>,
        meta: BTreeMap<String, String>,
        path: String,
    },
}

impl Opened {
    /// Opens the checkpoint at `at` (a step folder or a `.safetensors` file).
    pub fn open(at: &str) -> Result<Opened> {
        if at.ends_with(".safetensors") {
            let (values, meta) =
                crate::io::safetensors::read_with_metadata(std::path::Path::new(at))?;
            return Ok(Opened::File {
                values,
                meta,
                path: at.to_string(),
            });
        }
        Ok(Opened::Folder(Reader::open(at)?))
    }

    /// The step the checkpoint was written at.
    pub fn step(&self) -> Result<u64> {
        match self {
            Opened::Folder(r) => Ok(r.manifest.step),
            Opened::File { meta, path, .. } => meta_number(meta, path, "step"),
        }
    }

    /// The data position the checkpoint recorded.
    pub fn position(&self) -> Result<Position> {
        match self {
            Opened::Folder(r) => {
                serde_json::from_value(r.manifest.data_position.clone()).map_err(|e| {
                    Error::invalid(
                        format!("checkpoint `{}`", r.dir),
                        format!("its data_position does not parse ({e})"),
                    )
                })
            }
            Opened::File { meta, path, .. } => file_position(meta, path),
        }
    }

    /// The whole of `tensor` in `dtype`, if the checkpoint has it.
    pub fn whole(&self, tensor: &str, dtype: DType) -> Result<Option<HostArray>> {
        match self {
            Opened::Folder(r) => match r.shape(tensor) {
                Some(shape) => {
                    let shape = shape.to_vec();
                    let start = vec![0; shape.len()];
                    r.read(tensor, &start, &shape, dtype).map(Some)
                }
                None => Ok(None),
            },
            Opened::File { values, .. } => values
                .get(tensor)
                .map(|v| crate::io::safetensors::convert(v, dtype))
                .transpose(),
        }
    }

    /// Every tensor of the checkpoint, whole, in its stored dtype.
    pub fn all(&self) -> Result<BTreeMap<String, HostArray>> {
        match self {
            Opened::Folder(r) => r
                .manifest
                .tensors
                .iter()
                .map(|(name, t)| {
                    let dtype: DType = t.dtype.parse()?;
                    let start = vec![0; t.shape.len()];
                    Ok((name.clone(), r.read(name, &start, &t.shape, dtype)?))
                })
                .collect(),
            Opened::File { values, .. } => Ok(values.clone()),
        }
    }

    pub fn has(&self, tensor: &str) -> bool {
        match self {
            Opened::Folder(r) => r.has(tensor),
            Opened::File { values, .. } => values.contains_key(tensor),
        }
    }

    /// Uploads tensor `i` of `prog` (`spec`) onto this process's devices: each device reads the
    /// block it holds.
    pub fn upload(
        &self,
        prog: &ShardedProgram,
        i: usize,
        spec: &ParamSpec,
        dtype: DType,
    ) -> Result<Sharded> {
        let arg = prog.arg(i)?.clone();
        let mesh = prog.mesh().clone();
        match self {
            Opened::Folder(r) => {
                if let Some(shape) = r.shape(&spec.name) {
                    if shape != spec.shape.as_slice() {
                        return Err(Error::invalid(
                            format!("`{}` in checkpoint `{}`", spec.name, r.dir),
                            format!("it is {shape:?}; the model needs {:?}", spec.shape),
                        ));
                    }
                }
                prog.upload_with(|_, position| {
                    let (start, block) = region(&spec.shape, &arg, &mesh, position);
                    r.read(&spec.name, &start, &block, dtype)
                })
            }
            Opened::File { values, .. } => {
                let v = values.get(&spec.name).ok_or_else(|| {
                    Error::invalid(
                        "checkpoint",
                        format!(
                            "it lacks `{}`; was it written for another model or optimizer?",
                            spec.name
                        ),
                    )
                })?;
                prog.upload(i, &crate::io::safetensors::convert(v, dtype)?)
            }
        }
    }
}

fn meta_number(meta: &BTreeMap<String, String>, path: &str, k: &str) -> Result<u64> {
    meta.get(k).and_then(|v| v.parse().ok()).ok_or_else(|| {
        Error::invalid(
            format!("checkpoint `{path}`"),
            format!("its metadata has no `{k}`; it was not written by basic train"),
        )
    })
}

/// The data position of a single-file checkpoint: the streams' state as JSON, or (an older
/// basic's) the epoch and batch only.
fn file_position(meta: &BTreeMap<String, String>, path: &str) -> Result<Position> {
    match meta.get("data_position") {
        Some(j) => serde_json::from_str(j).map_err(|e| {
            Error::invalid(
                format!("checkpoint `{path}`"),
                format!(
                    "its data_position is not readable ({e}); it was not written by basic train"
                ),
            )
        }),
        None => Ok(Position {
            epoch: meta_number(meta, path, "epoch")?,
            batch: meta_number(meta, path, "batch")?,
            ..Default::default()
        }),
    }
}
