//! The training loop: data → one compiled step per batch, parameters and optimizer state staying
//! on the devices; metrics as JSONL; atomic checkpoints (parameters, optimizer state, step, data
//! position) keeping the last k; exact resume; a stop with the step named on a non-finite loss;
//! periodic zero-shot evaluation; PNG plots at the end.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

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
use super::init;
use super::setup::StepSetup;

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
}

fn ckpt_dir(out: &Path) -> PathBuf {
    out.join("checkpoints")
}

/// Checkpoints in `RUN/checkpoints`, oldest first (temporary files of interrupted writes are
/// not checkpoints).
pub fn checkpoints(out: &Path) -> Vec<(u64, PathBuf)> {
    let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(ckpt_dir(out))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            let s = n
                .strip_prefix("step-")?
                .strip_suffix(".safetensors")?
                .parse()
                .ok()?;
            Some((s, e.path()))
        })
        .collect();
    v.sort();
    v
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
        Error::InvalidArgument {
        what: format!("data folder `{root}`"),
        fix: "it has neither tokenizer.json nor captions.txt; train one with `basic tokenizer train`, or pass --tokenizer".into(),
    }
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

fn loader_options(o: &RunOptions) -> LoaderOptions {
    let c = &o.setup.config;
    LoaderOptions {
        batch: o.setup.options.batch as usize,
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
        process: 0,
        processes: 1,
        samples_per_epoch: o.stream.samples_per_epoch,
        resampled: o.stream.resampled,
        skip_bad: o.skip_bad,
        augment: c.train.random_resized_crop,
    }
}

/// The state written into a checkpoint.
struct Ckpt {
    step: u64,
    position: Position,
    values: BTreeMap<String, HostArray>,
}

/// Writes the checkpoint of `ck` atomically, then removes all but the newest `keep` (at least 1:
/// the one just written is never removed).
fn save_checkpoint(out: &Path, keep: usize, ck: &Ckpt, seed: u64) -> Result<PathBuf> {
    let keep = keep.max(1);
    let path = ckpt_dir(out).join(format!("step-{:07}.safetensors", ck.step));
    let named: Vec<(String, &HostArray)> = ck.values.iter().map(|(k, v)| (k.clone(), v)).collect();
    let mut meta = BTreeMap::new();
    meta.insert("step".into(), ck.step.to_string());
    meta.insert("epoch".into(), ck.position.epoch.to_string());
    meta.insert("batch".into(), ck.position.batch.to_string());
    let position =
        serde_json::to_string(&ck.position).map_err(|e| Error::Internal(e.to_string()))?;
    meta.insert("data_position".into(), position);
    meta.insert("seed".into(), seed.to_string());
    // Fault injection for the crash tests: abort in the middle of this step's checkpoint write,
    // after the temporary file exists and before it is renamed into place.
    if std::env::var("BASIC_FAULT_CHECKPOINT_STEP")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        == Some(ck.step)
    {
        let tmp = ckpt_dir(out).join(format!(
            ".step-{:07}.safetensors.tmp{}",
            ck.step,
            std::process::id()
        ));
        let _ = std::fs::write(&tmp, b"partial");
        std::process::abort();
    }
    safetensors::write(&path, &named, &meta)?;
    let all = checkpoints(out);
    if all.len() > keep {
        for (_, p) in &all[..all.len() - keep] {
            let _ = std::fs::remove_file(p);
        }
    }
    Ok(path)
}

fn load_checkpoint(path: &Path) -> Result<Ckpt> {
    let (values, meta) = safetensors::read_with_metadata(path)?;
    let num = |k: &str| -> Result<u64> {
        meta.get(k).and_then(|v| v.parse().ok()).ok_or_else(|| {
            Error::invalid(
                format!("checkpoint `{}`", path.display()),
                format!("its metadata has no `{k}`; it was not written by basic train"),
            )
        })
    };
    // The streams' state as JSON; a checkpoint of an older basic has the epoch and batch only.
    let position = match meta.get("data_position") {
        Some(j) => serde_json::from_str(j).map_err(|e| Error::InvalidArgument {
            what: format!("checkpoint `{}`", path.display()),
            fix: format!(
                "its data_position is not readable ({e}); it was not written by basic train"
            ),
        })?,
        None => Position {
            epoch: num("epoch")?,
            batch: num("batch")?,
            ..Default::default()
        },
    };
    Ok(Ckpt {
        step: num("step")?,
        position,
        values,
    })
}

/// Pulls arguments `range` of the step back to the host, named.
fn gather_named(
    prog: &ShardedProgram,
    names: &[String],
    values: &[Sharded],
    offset: usize,
) -> Result<BTreeMap<String, HostArray>> {
    let mut m = BTreeMap::new();
    for (i, (n, v)) in names.iter().zip(values).enumerate() {
        // Result i + offset has the same spec as argument i + offset.
        m.insert(n.clone(), prog.gather(i + offset, v)?);
    }
    Ok(m)
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

/// Trains; returns the summary. Resumes from the newest checkpoint when asked.
pub fn train(rt: &Runtime, o: &RunOptions) -> Result<Summary> {
    let mut t = Trainer::start(rt, o)?;
    while t.step < o.steps {
        let done = t.step()?;
        t.log(&done)?;
        if o.checkpoint_every > 0 && (t.step % o.checkpoint_every == 0 || t.step == o.steps) {
            t.checkpoint(done.position.clone())?;
        }
    }
    t.finish()
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

/// What one step reported.
struct StepDone {
    loss: f64,
    grad_norm: f64,
    learning_rate: f64,
    temperature: f64,
    /// The data position after the step's batch.
    position: Position,
}

/// A run in progress: the compiled step, parameters and optimizer state on the devices, the
/// data, and the run folder's metrics and checkpoints.
struct Trainer<'a> {
    rt: &'a Runtime,
    o: &'a RunOptions,
    tok: Arc<Tokenizer>,
    test: Vec<Sample>,
    /// The data folder's classes and templates (periodic zero-shot).
    lists: Option<(Vec<String>, Vec<String>)>,
    prog: ShardedProgram,
    io: StepIo,
    pnames: Vec<String>,
    snames: Vec<String>,
    /// Parameters, then optimizer state, in the step's argument order.
    values: Vec<Sharded>,
    loader: Loader,
    metrics: std::fs::File,
    metrics_path: PathBuf,
    /// Steps done (the next step's number).
    step: u64,
    /// The step the run (re)started at.
    first: u64,
    t0: Instant,
    last_good: Option<PathBuf>,
    summary: Summary,
}

impl<'a> Trainer<'a> {
    /// Writes the run folder's config, reads the data, compiles (or loads) the step, and puts
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
        let test = match (&lists, &root) {
            (Some(_), Some(r)) if o.eval_every > 0 => test_samples(r, o.eval_images, o.skip_bad)?,
            _ => Vec::new(),
        };

        let sp = o.setup.build()?;
        let io = StepIo::of(&sp, c)?;
        let pnames: Vec<String> = sp.params.iter().map(|s| s.name.clone()).collect();
        let snames: Vec<String> = sp.state.iter().map(|s| s.name.clone()).collect();
        let (step, start, host) = initial_state(o, &sp)?;
        let prog = match &o.executable {
            Some(path) => {
                let machine = Machine::of_client(rt.client(), o.setup.layout.mesh.size() as usize);
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
                prog
            }
            None => ShardedProgram::compile_text(
                rt.client(),
                &o.setup.layout.context(),
                sp.args,
                sp.results,
                sp.text,
            )?,
        };
        // Upload parameters and state once; they stay on the devices.
        let values: Vec<Sharded> = pnames
            .iter()
            .chain(&snames)
            .enumerate()
            .map(|(i, n)| prog.upload(i, &host[n]))
            .collect::<Result<_>>()?;
        drop(host);
        let loader = Loader::new(&train_data, tok.clone(), loader_options(o), start)?;
        if o.progress {
            eprintln!(
                "data: {} shards, {} samples an epoch, {} data streams",
                train_data.shards.len(),
                loader.samples_per_epoch,
                loader.data_streams
            );
        }
        let (metrics, metrics_path) = open_metrics(&o.out, step)?;
        Ok(Trainer {
            rt,
            o,
            tok,
            test,
            lists,
            prog,
            io,
            pnames,
            snames,
            values,
            loader,
            metrics,
            metrics_path,
            step,
            first: step,
            t0: Instant::now(),
            last_good: checkpoints(&o.out).last().map(|(_, p)| p.clone()),
            summary: Summary::default(),
        })
    }

    /// Runs one step on the next batch; the parameters and state are replaced by the step's.
    fn step(&mut self) -> Result<StepDone> {
        let (o, prog, io) = (self.o, &self.prog, &self.io);
        let dtype = o.setup.options.param_dtype;
        let batch = self.loader.next_batch()?;
        let step_arg = prog.upload(io.step, &HostArray::scalar(self.step as i32))?;
        let img = prog.upload(io.images, &safetensors::convert(&batch.images, dtype)?)?;
        let tks = prog.upload(io.tokens, &batch.tokens)?;
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
        let scalars: Vec<f64> = io
            .scalars
            .iter()
            .map(|&i| prog.gather(i, &out[i]).map(|a| a.to_f64_vec()[0]))
            .collect::<Result<_>>()?;
        let loss = scalars[0];
        if !loss.is_finite() {
            return Err(Error::Diverged {
                step: self.step,
                loss,
                checkpoint: self
                    .last_good
                    .as_ref()
                    .map_or("none".to_string(), |p| p.display().to_string()),
            });
        }
        out.truncate(self.pnames.len() + self.snames.len());
        self.values = out;
        self.step += 1;
        self.summary.losses.push((self.step, loss));
        self.summary.truncated_captions += batch.truncated;
        self.summary.data = batch.next.counts();
        self.summary.data_streams = batch.next.data_streams;
        for r in self.loader.take_reports() {
            if o.progress {
                eprintln!("{r}");
            }
        }
        Ok(StepDone {
            loss,
            grad_norm: scalars[1],
            learning_rate: scalars[2],
            temperature: scalars[3],
            position: batch.next,
        })
    }

    /// Appends the step's metrics line (with a zero-shot evaluation when one is due) and shows
    /// progress.
    fn log(&mut self, d: &StepDone) -> Result<()> {
        let (o, step) = (self.o, self.step);
        let elapsed = self.t0.elapsed().as_secs_f64();
        let mut line = serde_json::json!({
            "step": step, "loss": d.loss, "grad_norm": d.grad_norm,
            "learning_rate": d.learning_rate, "temperature": d.temperature,
            "epoch": d.position.epoch, "seconds": elapsed,
            "input_seconds": self.loader.waited.as_secs_f64(),
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
        writeln!(self.metrics, "{line}").map_err(|e| Error::io(&self.metrics_path, e))?;
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

    /// Zero-shot top-1 of the current parameters on the data folder's test images.
    fn zero_shot(&self) -> Result<Option<f64>> {
        let params = (0..self.pnames.len())
            .map(|i| {
                let p = self.prog.gather(i, &self.values[i])?;
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

    /// Writes a checkpoint of the parameters, state and data `position`, keeping the newest
    /// `keep`.
    fn checkpoint(&mut self, position: Position) -> Result<()> {
        let np = self.pnames.len();
        let mut values = gather_named(&self.prog, &self.pnames, &self.values[..np], 0)?;
        values.extend(gather_named(
            &self.prog,
            &self.snames,
            &self.values[np..],
            np,
        )?);
        let ck = Ckpt {
            step: self.step,
            position,
            values,
        };
        self.last_good = Some(save_checkpoint(&self.o.out, self.o.keep, &ck, self.o.seed)?);
        Ok(())
    }

    /// Ends the run: the summary, and plots from the whole metrics file (resumed runs included).
    fn finish(mut self) -> Result<Summary> {
        let o = self.o;
        if o.progress && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            eprintln!();
        }
        self.summary.steps = self.step;
        self.summary.seconds = self.t0.elapsed().as_secs_f64();
        self.summary.input_fraction =
            self.loader.waited.as_secs_f64() / self.summary.seconds.max(1e-9);
        let text = std::fs::read_to_string(&self.metrics_path).unwrap_or_default();
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

/// The step, data position and host values (parameters and optimizer state by name) a run
/// starts from: the newest checkpoint with `--resume`, else fresh or `--init-from` weights and
/// zero state.
fn initial_state(
    o: &RunOptions,
    sp: &StepProgram,
) -> Result<(u64, Position, BTreeMap<String, HostArray>)> {
    let dtype = o.setup.options.param_dtype;
    let (specs, sspecs) = (&sp.params, &sp.state);
    let (step, start, mut host) =
        match checkpoints(&o.out).last() {
            Some((_, p)) if o.resume => {
                let ck = load_checkpoint(p)?;
                if o.progress {
                    eprintln!("resuming from {} (step {})", p.display(), ck.step);
                }
                (ck.step, ck.position, ck.values)
            }
            Some(_) => return Err(Error::invalid(
                format!("run folder `{}`", o.out.display()),
                "it already has checkpoints: pass --resume to continue it, or choose another --out",
            )),
            None => {
                if o.resume {
                    // Said even with --quiet: a restart loop that always passes --resume must not
                    // mistake a fresh start for a continued run.
                    eprintln!(
                        "--resume: `{}` has no checkpoint yet; starting from step 0",
                        o.out.display()
                    );
                }
                let mut m = BTreeMap::new();
                let fresh = init::init_params(specs, o.seed, dtype)?;
                for (s, a) in specs.iter().zip(fresh) {
                    m.insert(s.name.clone(), a);
                }
                if let Some(p) = &o.init_from {
                    init_from(o, p, specs, &mut m)?;
                }
                for s in sspecs {
                    m.insert(s.name.clone(), HostArray::zeros(dtype, &s.shape)?);
                }
                (0, Position::default(), m)
            }
        };
    // A tower locked when the checkpoint was written and unlocked now has no optimizer state
    // yet: it starts from zeros, as on the first step.
    for s in sspecs {
        let param = names::slot_param(&s.name).unwrap_or("");
        if !host.contains_key(&s.name) && host.contains_key(param) {
            if o.progress {
                eprintln!(
                    "starting optimizer state `{}` from zeros (the tower was locked before)",
                    s.name
                );
            }
            host.insert(s.name.clone(), HostArray::zeros(dtype, &s.shape)?);
        }
    }
    let missing: Vec<&String> = specs
        .iter()
        .chain(sspecs)
        .map(|s| &s.name)
        .filter(|n| !host.contains_key(*n))
        .collect();
    if !missing.is_empty() {
        let fix = crate::model::coatnet::layout_hint(missing.iter().map(|n| n.as_str()), [])
            .unwrap_or("was it written for another model or optimizer?");
        return Err(Error::invalid(
            "checkpoint",
            format!(
                "it lacks {} entries the step needs (first: {}); {fix}",
                missing.len(),
                missing[0]
            ),
        ));
    }
    Ok((step, start, host))
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

/// The parameters of a run's newest checkpoint, by name, as f32.
pub fn load_run_params(run: &Path, c: &ModelConfig) -> Result<Vec<HostArray>> {
    let (_, path) = checkpoints(run).pop().ok_or_else(|| {
        Error::invalid(
            format!("run `{}`", run.display()),
            "it has no checkpoints; train it first with `basic train`",
        )
    })?;
    let file = safetensors::read(&path)?;
    let specs = dual::specs(c)?;
    specs
        .iter()
        .map(|s| {
            let a = file.get(&s.name).ok_or_else(|| {
                let hint = crate::model::coatnet::layout_hint([s.name.as_str()], [])
                    .map_or(String::new(), |h| format!("; {h}"));
                Error::invalid(
                    format!("checkpoint `{}`", path.display()),
                    format!("it has no parameter `{}`{hint}", s.name),
                )
            })?;
            safetensors::convert(a, DType::F32)
        })
        .collect()
}
