//! The training loop: data → one compiled step per batch, parameters and optimizer state staying
//! on the devices; metrics as JSONL; atomic checkpoints (parameters, optimizer state, step, data
//! position) keeping the last k; exact resume; a stop with the step named on a non-finite loss;
//! periodic zero-shot evaluation; PNG plots at the end.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::data::loader::Batch;
use crate::data::source::Dataset;
use crate::data::stream::Counts;
use crate::data::{Loader, LoaderOptions, Position, Sample, Tokenizer};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::eval::{class_embeddings, zero_shot_scores, Embedder};
use crate::exec::{Sharded, ShardedArg, ShardedProgram};
use crate::io::safetensors;
use crate::io::storage::Location;
use crate::model::names::{self, io};
use crate::model::{dual, ModelConfig};
use crate::runtime::{HostArray, Runtime};

use super::aot::{Machine, StepProgram};
use super::hosts::{rows_held, Hosts};
use super::init;
use super::persist;
use super::setup::StepSetup;
use super::streamed::{MicroBatch, Part, StreamedDone as StepDone, StreamedProgram, StreamedStep};
use crate::model::ParamSpec;

/// What `basic train` was asked to do.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The step: the config with the flags applied, its options and layout, donation.
    pub setup: StepSetup,
    /// `--data`: a folder, shards, a list, URLs, `pipe:` commands, joined by `::`
    /// (`data::source`).
    pub data: String,
    pub stream: StreamOptions,
    pub out: PathBuf,
    pub steps: u64,
    pub resume: bool,
    pub seed: u64,
    pub checkpoint_every: u64,
    pub keep: usize,
    pub eval_every: u64,
    /// Test images used by the periodic evaluation.
    pub eval_images: usize,
    pub workers: usize,
    pub skip_bad: bool,
    /// Print progress to stderr.
    pub progress: bool,
    /// Parameters to start from, by name (pretrained towers), instead of the seed.
    pub init_from: Option<PathBuf>,
    /// The tokenizer to use instead of the data folder's (e.g. a pretrained text tower's).
    pub tokenizer: Option<PathBuf>,
    /// Load the step from this saved executable instead of compiling it.
    pub executable: Option<PathBuf>,
    /// Run the streamed step ([`super::streamed`]): the loader reads micro-batches, each
    /// uploaded for pass 1 and read again (replayed from the step's data position) for pass 3.
    pub streamed: bool,
    /// Where checkpoints go: a folder or a bucket prefix (`gs://b/run/checkpoints`)
    /// [default: RUN/checkpoints].
    pub checkpoint_dir: Option<String>,
    /// This process's client of a multi-process job's coordinator (none: one process).
    pub job: Option<crate::coord::Client>,
    /// Processes simulated in this one (tests of the multi-process code paths on one client).
    pub simulated_processes: usize,
}

impl RunOptions {
    /// Where this run's checkpoints go.
    pub fn checkpoint_dir(&self) -> String {
        self.checkpoint_dir
            .clone()
            .unwrap_or_else(|| ckpt_dir(&self.out).display().to_string())
    }
}

/// How the training data streams (`data::stream`).
#[derive(Clone, Debug)]
pub struct StreamOptions {
    /// One weight per `::`-joined source (with `resampled`).
    pub weights: Option<Vec<f64>>,
    /// Data streams S (0: the default for the shards and batch).
    pub data_streams: usize,
    /// Samples each stream shuffles together.
    pub shuffle_buffer: usize,
    /// Samples an epoch, where the data's size is not known up front.
    pub samples_per_epoch: Option<u64>,
    /// Draw shards with replacement (weighted).
    pub resampled: bool,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            weights: None,
            data_streams: 0,
            shuffle_buffer: 1000,
            samples_per_epoch: None,
            resampled: false,
        }
    }
}

/// What a run ended with.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub steps: u64,
    pub losses: Vec<(u64, f64)>,
    pub last_zero_shot: Option<f64>,
    pub seconds: f64,
    pub input_fraction: f64,
    /// Captions of the run's batches whose tokens were cut to the text length.
    pub truncated_captions: usize,
    /// What the data streams skipped, left and padded (the whole run's, resumed runs included).
    pub data: Counts,
    pub data_streams: usize,
    /// The step a stop request (SIGTERM) ended the run at, after checkpointing it.
    pub preempted: Option<u64>,
}

fn ckpt_dir(out: &Path) -> PathBuf {
    out.join("checkpoints")
}

/// Checkpoints in `RUN/checkpoints`, oldest first: step folders with a manifest, and the
/// single files of earlier versions (interrupted writes are not checkpoints).
pub fn checkpoints(out: &Path) -> Vec<(u64, PathBuf)> {
    super::checkpoint::list(&ckpt_dir(out).display().to_string())
        .unwrap_or_default()
        .into_iter()
        .map(|(s, p)| (s, PathBuf::from(p)))
        .collect()
}

/// The run's tokenizer: the one given, else the data folder's `tokenizer.json`, else one trained
/// on its `captions.txt` (the folder local or in a bucket). It is saved in the run folder.
pub fn data_tokenizer(
    root: Option<&str>,
    out: &Path,
    vocab: usize,
    given: Option<&Path>,
) -> Result<Tokenizer> {
    let saved = out.join("tokenizer.json");
    if let Some(g) = given {
        Tokenizer::load(g)?;
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        std::fs::copy(g, &saved).map_err(|e| Error::io(&saved, e))?;
        return Tokenizer::load(&saved);
    }
    if saved.is_file() {
        return Tokenizer::load(&saved);
    }
    let Some(root) = root else {
        return Err(Error::invalid(
            "--data without a folder",
            "shard lists carry no tokenizer: pass --tokenizer FILE (or a data folder with tokenizer.json or captions.txt)",
        ));
    };
    let aux = |name: &str| Location::parse(&format!("{root}{name}"))?.get_if_exists();
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    if let Some(t) = aux("tokenizer.json")? {
        crate::fs::write_atomic(&saved, &t)?;
        return Tokenizer::load(&saved);
    }
    let missing = || {
        Error::invalid(
            format!("data folder `{root}`"),
            "it has neither tokenizer.json nor captions.txt; train one with `basic tokenizer train`, or pass --tokenizer",
        )
    };
    // A bucket's corpus is copied next to the run; a local one is read where it is.
    let local = if crate::io::storage::is_remote(root) {
        let corpus = aux("captions.txt")?.ok_or_else(missing)?;
        let local = out.join("captions.txt");
        crate::fs::write_atomic(&local, &corpus)?;
        local
    } else {
        let p = PathBuf::from(format!("{root}captions.txt"));
        if !p.is_file() {
            return Err(missing());
        }
        p
    };
    Tokenizer::train(
        &local,
        crate::data::tokenizer::Kind::WordLevel,
        vocab,
        &saved,
    )
}

/// Pairs the loader reads at a time: the step's batch, or with the streamed step one
/// micro-batch.
fn loader_batch(o: &RunOptions) -> i64 {
    let s = &o.setup.options;
    if o.streamed {
        s.batch / s.microbatches
    } else {
        s.batch
    }
}

fn loader_options(o: &RunOptions, process: usize, processes: usize) -> LoaderOptions {
    let c = &o.setup.config;
    LoaderOptions {
        batch: loader_batch(o) as usize,
        seed: o.seed,
        image_size: c.image.image_size() as usize,
        channels: c.image.channels() as usize,
        mean: c.train.mean.clone(),
        std: c.train.std.clone(),
        text_length: c.text.length as usize,
        workers: o.workers,
        prefetch: 4,
        data_streams: o.stream.data_streams,
        shuffle_buffer: o.stream.shuffle_buffer,
        process,
        processes,
        samples_per_epoch: o.stream.samples_per_epoch,
        resampled: o.stream.resampled,
        skip_bad: o.skip_bad,
        augment: c.train.random_resized_crop,
        bytes: o.setup.options.image_bytes,
    }
}

/// The data folder's class names and prompt templates, where it has both.
fn class_lists(root: Option<&str>) -> Result<Option<(Vec<String>, Vec<String>)>> {
    let Some(root) = root else { return Ok(None) };
    let get = |name: &str| -> Result<Option<Vec<String>>> {
        let bytes = Location::parse(&format!("{root}{name}"))?.get_if_exists()?;
        Ok(bytes.map(|b| crate::eval::entries(&String::from_utf8_lossy(&b))))
    };
    Ok(match (get("classes.txt")?, get("templates.txt")?) {
        (Some(c), Some(t)) if !c.is_empty() && !t.is_empty() => Some((c, t)),
        _ => None,
    })
}

/// Zero-shot top-1 on up to `n` test images of the data folder.
pub fn quick_zero_shot(
    rt: &Runtime,
    c: &ModelConfig,
    params: Vec<HostArray>,
    lists: Option<&(Vec<String>, Vec<String>)>,
    tok: &Tokenizer,
    test: &[Sample],
    n: usize,
) -> Result<Option<f64>> {
    let Some((names, temps)) = lists else {
        return Ok(None);
    };
    if test.is_empty() {
        return Ok(None);
    }
    let subset: Vec<Sample> = test
        .iter()
        .filter(|s| s.label.is_some())
        .take(n)
        .cloned()
        .collect();
    let labels: Vec<i64> = subset.iter().map(|s| s.label.unwrap_or(0)).collect();
    let emb = Embedder::new(rt.client(), c, params, 250, DType::F32)?;
    let ce = class_embeddings(&emb, tok, names, temps)?;
    let ie = emb.embed_images(&subset, 2)?;
    Ok(Some(zero_shot_scores(&ie, &labels, &ce, names)?.top1))
}

/// Up to `n` labelled samples of the data folder's test split, read in order (streamed: only
/// those kept are held).
fn test_samples(root: &str, n: usize, skip_bad: bool) -> Result<Vec<Sample>> {
    let Ok(test) = crate::data::source::parse(root, "test", None) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    crate::data::stream::for_each_sample(&test, skip_bad, &mut |s| {
        if s.label.is_some() {
            out.push(s);
        }
        Ok(out.len() < n)
    })?;
    Ok(out)
}

/// Trains; returns the summary. Resumes from the newest checkpoint when asked. A stop request
/// (SIGTERM, or another process's through the coordinator) checkpoints the step reached and
/// ends the run early, saying so in the summary.
pub fn train(rt: &Runtime, o: &RunOptions) -> Result<Summary> {
    let mut t = Trainer::start(rt, o)?;
    let stop = stop_flag()?;
    while t.step < o.steps {
        if t.stopping(&stop)? {
            if t.last_checkpointed != Some(t.step) {
                t.checkpoint()?;
            }
            t.summary.preempted = Some(t.step);
            break;
        }
        let done = t.step()?;
        t.log(&done)?;
        if o.checkpoint_every > 0 && (t.step % o.checkpoint_every == 0 || t.step == o.steps) {
            t.checkpoint()?;
        }
    }
    t.finish()
}

/// A flag SIGTERM sets (a TPU maintenance event, a spot reclaim, `scancel`): the run checkpoints
/// and stops at the next step boundary instead of dying mid-step.
fn stop_flag() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, flag.clone())
        .map_err(|e| Error::Internal(format!("cannot watch for SIGTERM: {e}")))?;
    Ok(flag)
}

/// Where the step's inputs and outputs sit, found by name.
struct StepIo {
    step: usize,
    images: usize,
    tokens: usize,
    rng: Option<usize>,
    /// loss, grad_norm, learning_rate, temperature.
    scalars: [usize; 4],
}

impl StepIo {
    fn of(sp: &StepProgram, c: &ModelConfig) -> Result<StepIo> {
        let input = |name: &str| sp.input_index(name);
        let output = |name: &str| sp.output_index(name);
        let [loss, grad_norm, lr, temperature] = io::REPORTED;
        Ok(StepIo {
            step: input(io::STEP)?,
            images: input(io::IMAGES)?,
            tokens: input(io::TOKENS)?,
            rng: if crate::train::step::has_rng(c) {
                Some(input(io::RNG)?)
            } else {
                None
            },
            scalars: [
                output(loss)?,
                output(grad_norm)?,
                output(lr)?,
                output(temperature)?,
            ],
        })
    }
}

/// The compiled step: one program over the whole batch, or the streamed step's four programs.
enum Runner {
    One {
        prog: Box<ShardedProgram>,
        io: StepIo,
    },
    Streamed(StreamedStep),
}

impl Runner {
    /// The program whose first arguments and results are the parameters, then the optimizer
    /// state (what checkpoints and uploads of the values go through).
    fn values(&self) -> &ShardedProgram {
        match self {
            Runner::One { prog, .. } => prog,
            Runner::Streamed(s) => s.program(Part::Update),
        }
    }

    /// The program a batch's images and tokens are uploaded for, and their argument positions.
    fn batch_args(&self) -> Result<(&ShardedProgram, usize, usize)> {
        match self {
            Runner::One { prog, io } => Ok((prog, io.images, io.tokens)),
            Runner::Streamed(s) => {
                let (i, t) = s.micro_args()?;
                Ok((s.micro_program(), i, t))
            }
        }
    }
}

/// A run in progress: the compiled step, parameters and optimizer state on the devices, the
/// data of each process acting here, and (as process 0) the run folder's metrics.
struct Trainer<'a> {
    rt: &'a Runtime,
    o: &'a RunOptions,
    tok: Arc<Tokenizer>,
    /// The training data (the streamed step replays each step's samples from it).
    data: Dataset,
    test: Vec<Sample>,
    /// The data folder's classes and templates (periodic zero-shot).
    lists: Option<(Vec<String>, Vec<String>)>,
    runner: Runner,
    /// Parameters, then optimizer state, in the step's argument order.
    specs: Vec<ParamSpec>,
    /// How many of `specs` are parameters.
    np: usize,
    values: Vec<Sharded>,
    hosts: Hosts,
    /// One loader per process acting here, in `hosts.local` order.
    loaders: Vec<Loader>,
    /// Each local process's rows `[start, end)` of what a loader reads at a time (the global
    /// batch, or with the streamed step a micro-batch).
    rows: Vec<(i64, i64)>,
    /// Process 0's metrics file.
    metrics: Option<(std::fs::File, PathBuf)>,
    /// Steps done (the next step's number).
    step: u64,
    /// The step the run (re)started at.
    first: u64,
    /// The data position after the last step (every local process's streams).
    position: Position,
    t0: Instant,
    last_good: Option<String>,
    last_checkpointed: Option<u64>,
    /// Whether this process has asked the job to stop.
    stop_asked: bool,
    summary: Summary,
}

impl<'a> Trainer<'a> {
    /// Writes the run folder's config, opens the data, compiles (or loads) the step, and puts
    /// the starting parameters and state on the devices: fresh, pretrained, or the newest
    /// checkpoint's.
    fn start(rt: &'a Runtime, o: &'a RunOptions) -> Result<Trainer<'a>> {
        let c = &o.setup.config;
        std::fs::create_dir_all(&o.out).map_err(|e| Error::io(&o.out, e))?;
        let train_data = crate::data::source::parse(&o.data, "train", o.stream.weights.as_deref())?;
        if o.stream.weights.is_some() && !o.stream.resampled {
            return Err(Error::invalid(
                "--data-weights without --dataset-resampled",
                "weights set how often shards are drawn, which needs drawing with replacement: add --dataset-resampled (as open_clip)",
            ));
        }
        let root = train_data.root.clone();
        let tok = Arc::new(data_tokenizer(
            root.as_deref(),
            &o.out,
            c.text.vocab as usize,
            o.tokenizer.as_deref(),
        )?);
        if tok.vocab_size() > c.text.vocab as usize {
            return Err(Error::invalid(
                format!("tokenizer with {} tokens", tok.vocab_size()),
                format!(
                    "model `{}` has a vocabulary of {}: raise text.vocab",
                    c.name, c.text.vocab
                ),
            ));
        }
        let cfg_text = toml::to_string(c).map_err(|e| {
            Error::invalid(
                format!("model config `{}`", c.name),
                format!("it cannot be written as TOML: {e}"),
            )
        })?;
        crate::fs::write_atomic(&o.out.join("config.toml"), cfg_text.as_bytes())?;
        let lists = class_lists(root.as_deref())?;
        // Periodic zero-shot reads the whole parameters, which one host of a multi-process job
        // does not hold.
        let test = match (&lists, &root) {
            (Some(_), Some(r)) if o.eval_every > 0 && o.job.is_none() => {
                test_samples(r, o.eval_images, o.skip_bad)?
            }
            _ => Vec::new(),
        };
        let (runner, hosts, specs, np) = Self::program(rt, o)?;
        let (step, start, values) = initial_state(o, runner.values(), &specs, np)?;
        let per_read = loader_batch(o);
        let (bprog, images_arg, _) = runner.batch_args()?;
        let rows = hosts
            .local
            .iter()
            .map(|&p| {
                let positions: Vec<i64> = hosts.devices_of(p).iter().map(|&d| hosts.positions[d]).collect();
                let held = rows_held(io::IMAGES, per_read, bprog.arg(images_arg)?, bprog.mesh(), &positions)?;
                // The loader of process p makes rows [p·B/P, (p+1)·B/P).
                let per = per_read / hosts.processes as i64;
                let loads = (p as i64 * per, (p as i64 + 1) * per);
                if held != loads {
                    return Err(Error::invalid(
                        format!(
                            "process {p} of {}: its devices hold rows {}..{} of the batch, not its share {}..{}",
                            hosts.processes, held.0, held.1, loads.0, loads.1
                        ),
                        "split the batch over at least as many devices as processes, the data axis first in the mesh (e.g. --mesh data=P*k,model=m)",
                    ));
                }
                Ok(held)
            })
            .collect::<Result<Vec<_>>>()?;
        let loaders = hosts
            .local
            .iter()
            .map(|&p| {
                let opts = loader_options(o, p, hosts.processes);
                Loader::new(&train_data, tok.clone(), opts, start.clone())
            })
            .collect::<Result<Vec<_>>>()?;
        let leads = hosts.leads();
        if o.progress && leads {
            eprintln!(
                "data: {} shards, {} samples an epoch, {} data streams",
                train_data.shards.len(),
                loaders[0].samples_per_epoch,
                loaders[0].data_streams
            );
        }
        let metrics = if leads {
            Some(open_metrics(&o.out, step)?)
        } else {
            None
        };
        let last_good = super::checkpoint::list(&o.checkpoint_dir())?
            .last()
            .map(|(_, p)| p.clone());
        Ok(Trainer {
            rt,
            o,
            tok,
            data: train_data,
            test,
            lists,
            runner,
            specs,
            np,
            values,
            hosts,
            loaders,
            rows,
            metrics,
            step,
            first: step,
            position: start,
            t0: Instant::now(),
            last_good,
            last_checkpointed: Some(step).filter(|&s| s > 0),
            stop_asked: false,
            summary: Summary::default(),
        })
    }

    /// The step built and compiled (or loaded from a saved executable) for this process's
    /// devices, which process each device belongs to, and the specs of the parameters and
    /// state (with how many are parameters).
    fn program(rt: &Runtime, o: &RunOptions) -> Result<(Runner, Hosts, Vec<ParamSpec>, usize)> {
        let c = &o.setup.config;
        let n = o.setup.devices();
        // A job's mesh runs over the global devices ordered by process, then id (as JAX orders
        // them): each process's devices are consecutive mesh positions, so its rows of the
        // batch are contiguous.
        let order = match &o.job {
            Some(_) => Some(super::hosts::global_order(rt.client(), n)?),
            None => None,
        };
        let (mut runner, specs, np) = if o.streamed {
            if o.executable.is_some() {
                return Err(Error::invalid(
                    "--executable with --streamed",
                    "a saved executable holds the one-program step: drop one of the two",
                ));
            }
            let s = &o.setup;
            let sp = StreamedProgram::build(c, &s.options, &s.layout, s.donate)?;
            let specs: Vec<ParamSpec> = sp.params.iter().chain(&sp.state).cloned().collect();
            let np = sp.params.len();
            let step = sp.compile(rt.client(), &s.layout, order.clone())?;
            (Runner::Streamed(step), specs, np)
        } else {
            let sp = o.setup.build()?;
            let io = StepIo::of(&sp, c)?;
            let specs: Vec<ParamSpec> = sp.params.iter().chain(&sp.state).cloned().collect();
            let np = sp.params.len();
            let prog = Self::one_program(rt, o, sp, order.clone())?;
            (
                Runner::One {
                    prog: Box::new(prog),
                    io,
                },
                specs,
                np,
            )
        };
        let ids = runner.values().exe.device_ids();
        let hosts = match (&o.job, &order) {
            (Some(job), Some(order)) => {
                Hosts::of_job(order, &ids, job.process_id(), job.num_processes())?
            }
            _ => Hosts::simulated(
                runner.values().positions().len(),
                o.simulated_processes.max(1),
            )?,
        };
        match &mut runner {
            Runner::One { prog, .. } => prog.set_positions(hosts.positions.clone())?,
            Runner::Streamed(s) => s.set_positions(hosts.positions.clone())?,
        }
        Ok((runner, hosts, specs, np))
    }

    /// The one-program step compiled over `order`, or loaded from `--executable`.
    fn one_program(
        rt: &Runtime,
        o: &RunOptions,
        sp: StepProgram,
        order: Option<Vec<i64>>,
    ) -> Result<ShardedProgram> {
        let c = &o.setup.config;
        let n = o.setup.devices();
        match &o.executable {
            Some(path) => {
                let machine = Machine::of_client(rt.client(), n);
                let expected = sp.manifest(
                    c,
                    &o.setup.options,
                    &o.setup.layout,
                    &o.setup.partitioning,
                    &machine,
                )?;
                let prog = sp.load(rt.client(), path, &expected, &o.setup.layout)?;
                if o.progress {
                    eprintln!("loaded the step from {}", path.display());
                }
                Ok(prog)
            }
            None => ShardedProgram::compile_assigned(
                rt.client(),
                &o.setup.layout.context(),
                order,
                sp.args,
                sp.results,
                sp.text,
            ),
        }
    }

    /// Runs one step on the next batch; the parameters and state are replaced by the step's.
    fn step(&mut self) -> Result<StepDone> {
        match &self.runner {
            Runner::One { .. } => self.step_one(),
            Runner::Streamed(_) => self.step_streamed(),
        }
    }

    /// The one-program step on the next batch.
    fn step_one(&mut self) -> Result<StepDone> {
        let Runner::One { prog, io } = &self.runner else {
            return Err(Error::Internal("not the one-program step".into()));
        };
        let dtype = self.o.setup.options.image_dtype();
        let mut batches = Vec::with_capacity(self.loaders.len());
        for l in &mut self.loaders {
            batches.push(l.next_batch()?);
        }
        let o = self.o;
        let feed = Feed {
            hosts: &self.hosts,
            rows: &self.rows,
            global: o.setup.options.batch,
        };
        let (img, tks) = feed.upload(prog, io.images, io.tokens, &batches, dtype)?;
        let step_arg = prog.upload(io.step, &HostArray::scalar(self.step as i32))?;
        // Dropout and stochastic depth draw from a key made of the seed and the step, so a
        // resumed run draws the same masks.
        let rng = match io.rng {
            Some(i) => Some(prog.upload(i, &HostArray::new(&[2], &[o.seed, self.step])?)?),
            None => None,
        };
        // The values are consumed by the step (donated, when asked) and replaced by its outputs.
        let mut args: Vec<ShardedArg> = std::mem::take(&mut self.values)
            .into_iter()
            .map(ShardedArg::Owned)
            .collect();
        args.extend([step_arg, img, tks].map(ShardedArg::Owned));
        args.extend(rng.map(ShardedArg::Owned));
        let mut out = prog.run_owned(args)?;
        // The reported scalars are replicated: any device's copy is the value.
        let scalars: Vec<f64> = io
            .scalars
            .iter()
            .map(|&i| Ok(out[i].bufs[0].to_host()?.to_f64_vec()[0]))
            .collect::<Result<_>>()?;
        out.truncate(self.specs.len());
        let done = StepDone {
            loss: scalars[0],
            grad_norm: scalars[1],
            learning_rate: scalars[2],
            temperature: scalars[3],
        };
        let truncated = batches.iter().map(|b| b.truncated).sum();
        self.finish_step(out, done, truncated, &batches)
    }

    /// The streamed step: each micro-batch read, uploaded and embedded (pass 1); the loss;
    /// each micro-batch read again from the step's data position and backpropagated (pass 3);
    /// the update. A micro-batch whose tokens differ between the two reads (the data changed
    /// under the run) fails the step.
    fn step_streamed(&mut self) -> Result<StepDone> {
        let Runner::Streamed(st) = &self.runner else {
            return Err(Error::Internal("not the streamed step".into()));
        };
        let o = self.o;
        let m = o.setup.options.microbatches as usize;
        let dtype = o.setup.options.image_dtype();
        let (images_arg, tokens_arg) = st.micro_args()?;
        let feed = Feed {
            hosts: &self.hosts,
            rows: &self.rows,
            global: loader_batch(o),
        };
        let (loaders, data, tok) = (&mut self.loaders, &self.data, &self.tok);
        let (start, step_no) = (self.position.clone(), self.step);
        let mut replay: Vec<Loader> = Vec::new();
        let mut read: Vec<u64> = Vec::with_capacity(m);
        let mut last: Vec<Batch> = Vec::new();
        let mut truncated = 0;
        let mut calls = 0;
        let rng = crate::train::step::has_rng(&o.setup.config).then_some([o.seed, self.step]);
        let values = std::mem::take(&mut self.values);
        let (out, done) = st.run(values, self.step as i32, rng, |k| {
            let pass1 = calls < m;
            calls += 1;
            if !pass1 && replay.is_empty() {
                replay = feed
                    .hosts
                    .local
                    .iter()
                    .zip(loaders.iter())
                    .map(|(&p, l)| {
                        let mut lo = loader_options(o, p, feed.hosts.processes);
                        // As the first read counted them: no second count of the dataset.
                        lo.samples_per_epoch = Some(l.samples_per_epoch);
                        lo.data_streams = l.data_streams;
                        Loader::new(data, tok.clone(), lo, start.clone())
                    })
                    .collect::<Result<_>>()?;
            }
            let source = if pass1 { &mut *loaders } else { &mut replay };
            let batches = source
                .iter_mut()
                .map(Loader::next_batch)
                .collect::<Result<Vec<_>>>()?;
            let digest = tokens_digest(&batches);
            if pass1 {
                read.push(digest);
                truncated += batches.iter().map(|b| b.truncated).sum::<usize>();
            } else if read.get(k) != Some(&digest) {
                return Err(Error::invalid(
                    format!("micro-batch {k} of step {step_no}"),
                    "its samples differ between the step's first read and its replay for the backward pass: the data changed under the run (a shard rewritten or removed); keep the training data fixed while a run reads it",
                ));
            }
            let (images, tokens) = feed.upload(st.micro_program(), images_arg, tokens_arg, &batches, dtype)?;
            if pass1 && k + 1 == m {
                last = batches;
            }
            Ok(MicroBatch { images, tokens })
        })?;
        self.finish_step(out, done, truncated, &last)
    }

    /// Keeps the step's new values and records it: the loss (a non-finite one stops the run),
    /// the `truncated` captions of its reads, and the data position after `batches` (the
    /// step's last read).
    fn finish_step(
        &mut self,
        out: Vec<Sharded>,
        done: StepDone,
        truncated: usize,
        batches: &[Batch],
    ) -> Result<StepDone> {
        if !done.loss.is_finite() {
            return Err(Error::Diverged {
                step: self.step,
                loss: done.loss,
                checkpoint: self.last_good.clone().unwrap_or_else(|| "none".to_string()),
            });
        }
        self.values = out;
        self.step += 1;
        self.summary.losses.push((self.step, done.loss));
        self.summary.truncated_captions += truncated;
        let parts: Vec<_> = batches.iter().map(|b| b.next.streams.clone()).collect();
        self.position = Position {
            streams: crate::data::stream::merge(&parts),
            ..batches[0].next.clone()
        };
        self.summary.data = self.position.counts();
        self.summary.data_streams = self.position.data_streams;
        for l in &self.loaders {
            for r in l.take_reports() {
                if self.o.progress {
                    eprintln!("{r}");
                }
            }
        }
        Ok(done)
    }

    /// Whether the run stops before the next step: this process was sent SIGTERM, or (in a
    /// multi-process job) any process was, and every process agrees on this step through the
    /// coordinator.
    fn stopping(&mut self, flag: &AtomicBool) -> Result<bool> {
        let term = flag.load(Ordering::SeqCst);
        let Some(job) = &self.o.job else {
            return Ok(term);
        };
        if term && !self.stop_asked {
            self.stop_asked = true;
            job.request_stop(&format!("SIGTERM on process {}", job.process_id()))?;
        }
        job.begin_step(self.step)
    }

    /// Appends the step's metrics line (with a zero-shot evaluation when one is due) and shows
    /// progress (process 0).
    fn log(&mut self, d: &StepDone) -> Result<()> {
        let (o, step) = (self.o, self.step);
        let elapsed = self.t0.elapsed().as_secs_f64();
        let waited: f64 = self.loaders.iter().map(|l| l.waited.as_secs_f64()).sum();
        let mut line = serde_json::json!({
            "step": step, "loss": d.loss, "grad_norm": d.grad_norm,
            "learning_rate": d.learning_rate, "temperature": d.temperature,
            "epoch": self.position.epoch, "seconds": elapsed,
            "input_seconds": waited,
            "truncated_captions": self.summary.truncated_captions,
            "skipped_samples": self.summary.data.skipped_samples,
            "bad_shards": self.summary.data.bad_shards,
            "padded_samples": self.summary.data.padded_samples,
        });
        if o.eval_every > 0 && (step % o.eval_every == 0 || step == o.steps) {
            if let Some(acc) = self.zero_shot()? {
                line["zero_shot_top1"] = serde_json::json!(acc);
                self.summary.last_zero_shot = Some(acc);
            }
        }
        let Some((metrics, path)) = &mut self.metrics else {
            return Ok(());
        };
        writeln!(metrics, "{line}").map_err(|e| Error::io(&*path, e))?;
        // A live line on a terminal; a line every 10% of the run in logs.
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let every = ((o.steps - self.first) / 10).max(1);
        if o.progress && (tty || (step - self.first).is_multiple_of(every) || step == o.steps) {
            let rate = (step - self.first) as f64 / elapsed.max(1e-9);
            let eta = (o.steps - step) as f64 / rate.max(1e-9);
            let text = format!(
                "step {step}/{} | {:.2} steps/s | {:.0} img/s | loss {:.4} | lr {:.2e} | τ {:.4} | ETA {:.0}s",
                o.steps,
                rate,
                rate * o.setup.options.batch as f64,
                d.loss,
                d.learning_rate,
                d.temperature,
                eta
            );
            if tty {
                eprint!("\r{text}   ");
            } else {
                eprintln!("{text}");
            }
        }
        Ok(())
    }

    /// Zero-shot top-1 of the current parameters on the data folder's test images (one
    /// process, or processes simulated in one: it gathers the parameters).
    fn zero_shot(&self) -> Result<Option<f64>> {
        if self.o.job.is_some() || self.test.is_empty() {
            return Ok(None);
        }
        let params = (0..self.np)
            .map(|i| {
                let p = self.runner.values().gather(i, &self.values[i])?;
                safetensors::convert(&p, DType::F32)
            })
            .collect::<Result<Vec<_>>>()?;
        let o = self.o;
        quick_zero_shot(
            self.rt,
            &o.setup.config,
            params,
            self.lists.as_ref(),
            &self.tok,
            &self.test,
            o.eval_images,
        )
    }

    /// Writes a checkpoint of the parameters, state and data position (each process its
    /// blocks, process 0 the manifest), then keeps the newest `keep`.
    fn checkpoint(&mut self) -> Result<()> {
        let o = self.o;
        let dir = o.checkpoint_dir();
        let saved = persist::Saved {
            step: self.step,
            seed: o.seed,
            position: self.position.clone(),
        };
        let folder = persist::save(
            self.runner.values(),
            &self.hosts,
            &self.specs,
            &self.values,
            &dir,
            &saved,
            o.job.as_ref(),
        )?;
        if self.hosts.leads() {
            let all = super::checkpoint::list(&dir)?;
            let keep = o.keep.max(1);
            if all.len() > keep {
                for (_, at) in &all[..all.len() - keep] {
                    super::checkpoint::remove(at)?;
                }
            }
        }
        self.last_good = Some(folder);
        self.last_checkpointed = Some(self.step);
        Ok(())
    }

    /// Ends the run: the summary, and (process 0) plots from the whole metrics file, resumed
    /// runs included.
    fn finish(mut self) -> Result<Summary> {
        let o = self.o;
        if o.progress && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            eprintln!();
        }
        self.summary.steps = self.step;
        self.summary.seconds = self.t0.elapsed().as_secs_f64();
        let waited: f64 = self.loaders.iter().map(|l| l.waited.as_secs_f64()).sum();
        self.summary.input_fraction = waited / self.summary.seconds.max(1e-9);
        let Some((_, metrics_path)) = &self.metrics else {
            return Ok(self.summary);
        };
        let text = std::fs::read_to_string(metrics_path).unwrap_or_default();
        let rows: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let series = |key: &str| -> Vec<(f64, f64)> {
            rows.iter()
                .filter_map(|r| Some((r["step"].as_f64()?, r[key].as_f64()?)))
                .collect()
        };
        crate::train::plot::plot(&o.out.join("loss.png"), &series("loss"))?;
        let acc = series("zero_shot_top1");
        if !acc.is_empty() {
            crate::train::plot::plot(&o.out.join("accuracy.png"), &acc)?;
        }
        Ok(self.summary)
    }
}

/// How a batch read by each local process reaches the devices: each device gets its block of
/// the rows its process read.
struct Feed<'h> {
    hosts: &'h Hosts,
    /// Each local process's rows of a read.
    rows: &'h [(i64, i64)],
    /// Rows of a read over the whole job.
    global: i64,
}

impl Feed<'_> {
    /// Uploads a batch argument of `prog` from each local process's rows.
    fn upload_rows(
        &self,
        prog: &ShardedProgram,
        arg: usize,
        local: &[&HostArray],
    ) -> Result<Sharded> {
        let spec = prog.arg(arg)?.clone();
        let mesh = prog.mesh().clone();
        prog.upload_with(|d, position| {
            let owner = self.hosts.owner[d];
            let k = self
                .hosts
                .local
                .iter()
                .position(|&p| p == owner)
                .ok_or_else(|| {
                    Error::Internal(format!(
                        "device {d} belongs to process {owner}, not acting here"
                    ))
                })?;
            let a = local[k];
            let mut shape = a.shape().to_vec();
            shape[0] = self.global;
            let (start, block) = persist::region(&shape, &spec, &mesh, position);
            slice_rows(a, start[0] - self.rows[k].0, block[0])
        })
    }

    /// Uploads the images (as `dtype`) and tokens of each local process's batch.
    fn upload(
        &self,
        prog: &ShardedProgram,
        images: usize,
        tokens: usize,
        batches: &[Batch],
        dtype: DType,
    ) -> Result<(Sharded, Sharded)> {
        // Images arrive as the step takes them (u8), or as normalised f32 for a step in
        // another float type.
        let converted: Vec<HostArray> = batches
            .iter()
            .filter(|b| b.images.dtype() != dtype)
            .map(|b| safetensors::convert(&b.images, dtype))
            .collect::<Result<_>>()?;
        let imgs: Vec<&HostArray> = if converted.is_empty() {
            batches.iter().map(|b| &b.images).collect()
        } else {
            converted.iter().collect()
        };
        let img = self.upload_rows(prog, images, &imgs)?;
        let tks = self.upload_rows(
            prog,
            tokens,
            &batches.iter().map(|b| &b.tokens).collect::<Vec<_>>(),
        )?;
        Ok((img, tks))
    }
}

/// A digest of the tokens of each local process's batch: the streamed step's check that its
/// replay read the same samples.
fn tokens_digest(batches: &[Batch]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for b in batches {
        b.tokens.bytes().hash(&mut h);
        b.images.bytes().len().hash(&mut h);
    }
    h.finish()
}

/// Rows `[from, from + n)` of `a` (along its first dimension).
fn slice_rows(a: &HostArray, from: i64, n: i64) -> Result<HostArray> {
    let rows = a.shape().first().copied().unwrap_or(0);
    if from < 0 || from + n > rows {
        return Err(Error::Internal(format!(
            "rows {from}..{} of a batch of {rows} rows",
            from + n
        )));
    }
    let per: usize = a.shape()[1..].iter().product::<i64>() as usize * a.dtype().size_in_bytes();
    let bytes = a.bytes()[from as usize * per..(from + n) as usize * per].to_vec();
    let mut shape = a.shape().to_vec();
    shape[0] = n;
    HostArray::from_bytes(a.dtype(), &shape, bytes)
}

/// The step, data position and the state on the devices a run starts from: the newest
/// checkpoint with `--resume` (each device reading its own blocks), else fresh or `--init-from`
/// weights and zero optimizer state.
fn initial_state(
    o: &RunOptions,
    prog: &ShardedProgram,
    specs: &[ParamSpec],
    np: usize,
) -> Result<(u64, Position, Vec<Sharded>)> {
    let dtype = o.setup.options.param_dtype;
    let dir = o.checkpoint_dir();
    let latest = super::checkpoint::list(&dir)?.pop();
    match latest {
        Some((_, at)) if o.resume => {
            let ck = persist::Opened::open(&at)?;
            if o.progress {
                eprintln!("resuming from {at} (step {})", ck.step()?);
            }
            check_complete(&ck, specs, &at)?;
            let values = specs
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    if ck.has(&s.name) {
                        ck.upload(prog, i, s, dtype)
                    } else {
                        // A tower locked when the checkpoint was written and unlocked now has
                        // no optimizer state yet: it starts from zeros, as on the first step.
                        if o.progress {
                            eprintln!("starting optimizer state `{}` from zeros (the tower was locked before)", s.name);
                        }
                        prog.upload(i, &HostArray::zeros(dtype, &s.shape)?)
                    }
                })
                .collect::<Result<Vec<_>>>()?;
            Ok((ck.step()?, ck.position()?, values))
        }
        Some(_) => Err(Error::invalid(
            format!("run folder `{}`", o.out.display()),
            "it already has checkpoints: pass --resume to continue it, or choose another --out",
        )),
        None => {
            if o.resume {
                // Said even with --quiet: a restart loop that always passes --resume must not
                // mistake a fresh start for a continued run.
                eprintln!(
                    "--resume: `{}` has no checkpoint yet; starting from step 0",
                    dir
                );
            }
            let params = &specs[..np];
            let mut m = BTreeMap::new();
            for (s, a) in params.iter().zip(init::init_params(params, o.seed, dtype)?) {
                m.insert(s.name.clone(), a);
            }
            if let Some(p) = &o.init_from {
                init_from(o, p, params, &mut m)?;
            }
            let values = specs
                .iter()
                .enumerate()
                .map(|(i, s)| match m.get(&s.name) {
                    Some(v) => prog.upload(i, v),
                    None => prog.upload(i, &HostArray::zeros(dtype, &s.shape)?),
                })
                .collect::<Result<Vec<_>>>()?;
            Ok((0, Position::default(), values))
        }
    }
}

/// Refuses a checkpoint that lacks a tensor the step needs (an optimizer slot of a parameter it
/// has may start from zeros), naming how many and the first.
fn check_complete(ck: &persist::Opened, specs: &[ParamSpec], at: &str) -> Result<()> {
    let missing: Vec<&String> = specs
        .iter()
        .filter(|s| {
            let zeroable = names::slot_param(&s.name).is_some_and(|p| ck.has(p));
            !ck.has(&s.name) && !zeroable
        })
        .map(|s| &s.name)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::invalid(
        format!("checkpoint `{at}`"),
        format!(
            "it lacks {} entries the step needs (first: {}); was it written for another model or optimizer?",
            missing.len(),
            missing[0]
        ),
    ))
}

/// Replaces the parameters in `m` that the file `p` has by its values; refuses a file none of
/// whose tensors is a parameter, and says how many matched and which tensors did not.
fn init_from(
    o: &RunOptions,
    p: &Path,
    specs: &[crate::model::ParamSpec],
    m: &mut BTreeMap<String, HostArray>,
) -> Result<()> {
    let (c, dtype) = (&o.setup.config, o.setup.options.param_dtype);
    let file = safetensors::read_params(p, c)?;
    let mut matched = 0usize;
    let mut unmatched = Vec::new();
    for (k, v) in file {
        if let Some(s) = specs.iter().find(|s| s.name == k) {
            if v.shape() != s.shape.as_slice() {
                return Err(Error::invalid(
                    format!("`{k}` in `{}`", p.display()),
                    format!("it is {:?}; the model needs {:?}", v.shape(), s.shape),
                ));
            }
            m.insert(k, safetensors::convert(&v, dtype)?);
            matched += 1;
        } else {
            unmatched.push(k);
        }
    }
    if matched == 0 {
        // Training from random weights while the user asked for pretrained ones.
        return Err(Error::invalid(format!(
                "--init-from `{}`: none of its {} tensors is a parameter of model `{}` (it has {}, e.g. `{}`)",
                p.display(),
                unmatched.len(),
                c.name,
                unmatched.iter().take(3).cloned().collect::<Vec<_>>().join(", "),
                specs.first().map_or("", |s| s.name.as_str())
            ), "give a checkpoint written for this model (its parameter names), or the matching --model"));
    }
    if o.progress {
        let rest = if unmatched.is_empty() {
            String::new()
        } else {
            format!(
                "; {} tensors of the file are not parameters of this model: {}",
                unmatched.len(),
                unmatched.join(", ")
            )
        };
        eprintln!(
            "initialised {matched} of {} parameters from {}{rest}",
            specs.len(),
            p.display()
        );
    }
    Ok(())
}

/// Opens the run's `metrics.jsonl`, keeping the lines of steps up to `step` (a resumed run
/// continues the file).
fn open_metrics(out: &Path, step: u64) -> Result<(std::fs::File, PathBuf)> {
    let path = out.join("metrics.jsonl");
    let kept: Vec<String> = std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .map(str::to_string)
        .collect();
    let mut f = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
    for l in &kept {
        writeln!(f, "{l}").map_err(|e| Error::io(&path, e))?;
    }
    Ok((f, path))
}

/// The parameters of a run's newest checkpoint (a step folder, or a single file of an earlier
/// version), by name, as f32.
pub fn load_run_params(run: &Path, c: &ModelConfig) -> Result<Vec<HostArray>> {
    let (_, path) = checkpoints(run).pop().ok_or_else(|| {
        Error::invalid(
            format!("run `{}`", run.display()),
            "it has no checkpoints; train it first with `basic train`",
        )
    })?;
    let at = path.display().to_string();
    let ck = persist::Opened::open(&at)?;
    dual::specs(c)?
        .iter()
        .map(|s| {
            ck.whole(&s.name, DType::F32)?.ok_or_else(|| {
                let hint = crate::model::coatnet::layout_hint([s.name.as_str()], [])
                    .map_or(String::new(), |h| format!("; {h}"));
                Error::invalid(
                    format!("checkpoint `{at}`"),
                    format!("it has no parameter `{}`{hint}", s.name),
                )
            })
        })
        .collect()
}
