//! `basic data`, `basic tokenizer`, `basic train`, `basic eval`.

use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use basic::data::tokenizer::Kind;
use basic::data::Tokenizer;
use basic::eval::{class_embeddings, retrieval, zero_shot_scores, Embedder};
use basic::model::config::Precision;
use basic::model::ModelConfig;
use basic::train::run::{load_run_params, train, RunOptions};

use super::model::{ComputeDtype, ModelArgs};
use super::{BackendArgs, ProcessArgs};

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Fashion-MNIST (Debian's dataset-fashion-mnist) as captioned train/test shards
    FashionMnist {
        /// Folder for the shards
        #[arg(long)]
        out: PathBuf,
        /// Folder with the IDX files
        #[arg(long, default_value = basic::data::import::FASHION_DIR)]
        source: PathBuf,
        /// At most this many pairs per split
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Emoji images and their names (the npm package emoji-datasource-google) as shards
    Emoji {
        /// Folder for the shards
        #[arg(long)]
        out: PathBuf,
        /// The extracted package folder (with emoji.json and img/google/64/)
        #[arg(long)]
        source: PathBuf,
    },
}

pub fn data(c: &DataCommand) -> anyhow::Result<()> {
    match c {
        DataCommand::FashionMnist { out, source, limit } => {
            let files = basic::data::import::fashion_mnist(source, out, *limit)?;
            println!("wrote {} files to {}", files.len(), out.display());
        }
        DataCommand::Emoji { out, source } => {
            let files = basic::data::import::emoji(source, out)?;
            println!("wrote {} files to {}", files.len(), out.display());
        }
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum KindArg {
    Bpe,
    Wordpiece,
    Wordlevel,
}

#[derive(Subcommand, Debug)]
pub enum TokenizerCommand {
    /// Train a tokenizer on a caption corpus (one caption per line)
    Train {
        #[arg(long)]
        corpus: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_enum, default_value = "bpe")]
        kind: KindArg,
        #[arg(long, default_value_t = 8000)]
        vocab: usize,
    },
}

pub fn tokenizer(c: &TokenizerCommand) -> anyhow::Result<()> {
    match c {
        TokenizerCommand::Train {
            corpus,
            out,
            kind,
            vocab,
        } => {
            let k = match kind {
                KindArg::Bpe => Kind::Bpe,
                KindArg::Wordpiece => Kind::WordPiece,
                KindArg::Wordlevel => Kind::WordLevel,
            };
            let t = Tokenizer::train(corpus, k, *vocab, out)?;
            println!("wrote {} ({} tokens)", out.display(), t.vocab_size());
        }
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    model: ModelArgs,

    /// Data: a folder of train-*.tar / test-*.tar shards (local, or gs://B/DIR/, s3://B/DIR/);
    /// shards with brace ranges (`d/train-{000000..004095}.tar`, gs://, s3://, https://); a
    /// text file of shard URLs; `pipe:COMMAND` (its output is one shard); a JSONL manifest;
    /// several joined by `::`
    #[arg(long)]
    data: String,

    /// One weight per `::`-joined source, e.g. 1,3 (open_clip's upsampling factors; needs
    /// --dataset-resampled)
    #[arg(long, value_delimiter = ',')]
    data_weights: Option<Vec<f64>>,

    /// Deterministic data streams S: each global batch takes batch/S rows from each (must
    /// divide the batch, and each stream needs a shard) [default: a divisor of the batch up to
    /// 8 that the shards fill, preferring one that divides the shard count; a resumed run
    /// keeps its own]
    #[arg(long)]
    data_streams: Option<usize>,

    /// Samples each data stream shuffles together (memory: S windows of encoded samples)
    #[arg(long, default_value_t = 1000)]
    shuffle_buffer: usize,

    /// Samples an epoch: required where the data's size is unknown up front (pipe:, remote
    /// shards without sizes.json or img2dataset *_stats.json)
    #[arg(long)]
    samples_per_epoch: Option<u64>,

    /// Draw shards with replacement every epoch (weighted by --data-weights)
    #[arg(long)]
    dataset_resampled: bool,

    /// Run folder (checkpoints, metrics.jsonl, plots, tokenizer, config)
    #[arg(long)]
    out: PathBuf,

    /// Train until this step
    #[arg(long)]
    steps: Option<u64>,

    /// Global batch size [default: the preset's]
    #[arg(long, value_name = "B", value_parser = clap::value_parser!(i64).range(1..))]
    batch: Option<i64>,

    /// Compute dtype: f32, or bf16 (bf16 compute, f32 master weights)
    #[arg(long, value_name = "f32|bf16")]
    dtype: Option<Precision>,

    /// Continue from the newest checkpoint of --out
    #[arg(long)]
    resume: bool,

    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Steps between checkpoints
    #[arg(long, default_value_t = 100)]
    checkpoint_every: u64,

    /// Checkpoints kept
    #[arg(long, default_value_t = 3)]
    keep: usize,

    /// Steps between zero-shot evaluations (0: off)
    #[arg(long, default_value_t = 200)]
    eval_every: u64,

    /// Test images of each evaluation
    #[arg(long, default_value_t = 1000)]
    eval_images: usize,

    /// Decoding threads
    #[arg(long, default_value_t = 2)]
    workers: usize,

    /// Skip (and count) the rest of a truncated or corrupt shard instead of stopping
    /// (samples without an image or caption are always skipped and counted)
    #[arg(long)]
    skip_bad: bool,

    /// Start from these parameters (safetensors by name) instead of a random initialisation
    #[arg(long)]
    init_from: Option<PathBuf>,

    /// Tokenizer to use instead of the data folder's (e.g. a pretrained text tower's tokenizer.json)
    #[arg(long)]
    tokenizer: Option<PathBuf>,

    /// No progress line
    #[arg(long)]
    quiet: bool,

    /// Load the step from an executable saved by `basic compile --save-executable` for this
    /// machine and these flags, instead of compiling it (a mismatch is refused)
    #[arg(long, value_name = "FILE", conflicts_with = "streamed")]
    executable: Option<PathBuf>,

    /// Run the streamed step: the micro-batches (--microbatches) loaded, uploaded and embedded
    /// one at a time, then replayed from the data for the backward pass, so that only one
    /// micro-batch's images are on the devices and in host memory (for batches whose images do
    /// not fit); the same gradient as the one-program step
    #[arg(long)]
    streamed: bool,

    /// Where checkpoints go: a folder, or a bucket prefix (gs://B/run/ckpt, s3://...)
    /// [default: RUN/checkpoints]
    #[arg(long, value_name = "DIR|URL")]
    checkpoint_dir: Option<String>,

    #[command(flatten)]
    processes: ProcessArgs,

    /// Treat the devices as this many processes in one (each its own loader, uploads and
    /// checkpoint file): the multi-process code paths on one CPU client, for tests
    #[arg(long, value_name = "P", hide = true, default_value_t = 1)]
    simulate_processes: usize,
}

pub fn run_train(a: &TrainArgs) -> anyhow::Result<()> {
    // The schedule spans the requested run.
    let steps = a.steps.map(|s| s as i64);
    let setup = a.model.setup(&a.model.choices(a.batch, a.dtype, steps))?;
    // On CPU, exactly as many virtual devices as the mesh (as `ModelArgs::open`).
    let mut backend = a.model.backend.clone();
    if backend.cpu_devices.is_none() && backend.kind() == basic::runtime::Backend::Cpu {
        backend.cpu_devices = Some(setup.layout.mesh.size() as u32);
    }
    let (rt, job) = backend.open_in_job(&a.processes)?;
    let steps = setup.config.train.total_steps as u64;
    let opts = RunOptions {
        setup,
        data: a.data.clone(),
        stream: basic::train::run::StreamOptions {
            weights: a.data_weights.clone(),
            data_streams: a.data_streams.unwrap_or(0),
            shuffle_buffer: a.shuffle_buffer.max(1),
            samples_per_epoch: a.samples_per_epoch,
            resampled: a.dataset_resampled,
        },
        out: a.out.clone(),
        steps,
        resume: a.resume,
        seed: a.seed,
        checkpoint_every: a.checkpoint_every,
        keep: a.keep.max(1),
        eval_every: a.eval_every,
        eval_images: a.eval_images,
        workers: a.workers.max(1),
        skip_bad: a.skip_bad,
        progress: !a.quiet,
        init_from: a.init_from.clone(),
        tokenizer: a.tokenizer.clone(),
        executable: a.executable.clone(),
        streamed: a.streamed,
        checkpoint_dir: a.checkpoint_dir.clone(),
        job: job.as_ref().map(|j| j.client.clone()),
        simulated_processes: a.simulate_processes,
    };
    let s = match train(&rt, &opts) {
        Ok(s) => s,
        Err(e) => {
            // Fail the whole job at once instead of leaving the others to time out.
            if let Some(j) = &job {
                let _ = j.client.abort(&e.to_string());
            }
            return Err(e.into());
        }
    };
    drop(rt);
    super::end_job(job)?;
    let last = s.losses.last().map_or(f64::NAN, |l| l.1);
    println!(
        "trained to step {} in {:.1} s; last loss {last:.4}; input pipeline {:.1}% of the time{}{}",
        s.steps,
        s.seconds,
        100.0 * s.input_fraction,
        s.last_zero_shot.map_or(String::new(), |z| format!(
            "; zero-shot top-1 {:.2}%",
            100.0 * z
        )),
        if s.truncated_captions > 0 {
            format!(
                "; {} captions were cut to the text length",
                s.truncated_captions
            )
        } else {
            String::new()
        }
    );
    if let Some(at) = s.preempted {
        println!(
            "stopped at step {at} on a stop request (SIGTERM): checkpoint written; continue with --resume"
        );
    }
    let d = s.data;
    if d.skipped_samples + d.bad_shards + d.padded_samples > 0 {
        println!(
            "data ({} streams): {} samples skipped (no image or caption), {} damaged shards left, {} samples read again to pad streams",
            s.data_streams, d.skipped_samples, d.bad_shards, d.padded_samples
        );
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum EvalCommand {
    /// Zero-shot classification with a prompt ensemble
    ZeroShot(ZeroShotArgs),
    /// Image→text and text→image recall@1/5/10
    Retrieval(RetrievalArgs),
}

#[derive(Args, Debug)]
pub struct ZeroShotArgs {
    /// Run folder of `basic train`
    #[arg(long, required_unless_present = "model", conflicts_with = "model")]
    run: Option<PathBuf>,
    /// Instead of a run: a checkpoint folder of another library, `hf:DIR` or `open_clip:DIR`
    #[arg(long, value_name = "hf:DIR|open_clip:DIR")]
    model: Option<String>,
    /// The tokenizer.json [default: the run's, or the model folder's]
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Data with labelled test-*.tar shards (a folder, local or gs://B/DIR/; shard lists and
    /// URLs as for `basic train`; a manifest with labels), or an image folder (one sub-folder
    /// of images per class, named by the class)
    #[arg(long)]
    data: String,
    /// Class names in label order: a file (one per line) or imagenet, cifar10, cifar100
    /// [default: an image folder's sub-folder names]
    #[arg(long)]
    classes: Option<String>,
    /// Prompt templates (`{}` is the class, `{a}` its article): a file (one per line) or clip
    /// (the 80 CLIP templates), clip-short, cifar
    #[arg(long)]
    templates: String,
    /// Leave (and count) damaged shards instead of stopping at the first
    #[arg(long)]
    skip_bad: bool,
    /// Use at most this many test images
    #[arg(long)]
    limit: Option<usize>,
    #[command(flatten)]
    compute: ComputeDtype,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    backend: BackendArgs,
}

#[derive(Args, Debug)]
pub struct RetrievalArgs {
    #[arg(long)]
    run: PathBuf,
    /// Captioned test shards: as for `basic eval zero-shot`
    #[arg(long)]
    data: String,
    /// Leave (and count) damaged shards instead of stopping at the first
    #[arg(long)]
    skip_bad: bool,
    #[arg(long)]
    limit: Option<usize>,
    #[command(flatten)]
    compute: ComputeDtype,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    backend: BackendArgs,
}

/// What evaluation needs of a model: its config, tokenizer, parameters in spec order, and a
/// runtime.
type Opened = (
    ModelConfig,
    Tokenizer,
    Vec<basic::runtime::HostArray>,
    basic::runtime::Runtime,
);

fn open_run(
    run: &std::path::Path,
    backend: &BackendArgs,
    tokenizer: Option<&std::path::Path>,
) -> anyhow::Result<Opened> {
    let cfg = run.join("config.toml");
    if !cfg.is_file() {
        bail!(
            "`{}` is not a run folder of `basic train` (no config.toml)",
            run.display()
        );
    }
    let c = ModelConfig::load(&cfg.to_string_lossy())?;
    let tok = Tokenizer::load(tokenizer.unwrap_or(&run.join("tokenizer.json")))?;
    let params = load_run_params(run, &c)?;
    Ok((c, tok, params, backend.open()?))
}

/// A checkpoint folder of another library (`hf:DIR`, `open_clip:DIR`) as a run: its
/// architecture, tokenizer and weights.
fn open_foreign(
    model: &str,
    backend: &BackendArgs,
    tokenizer: Option<&std::path::Path>,
) -> anyhow::Result<Opened> {
    let f = basic::io::interop::parse_model(model)?
        .ok_or_else(|| anyhow::anyhow!("`{model}` is not hf:DIR or open_clip:DIR"))?;
    let tok_path = tokenizer
        .map(std::path::Path::to_path_buf)
        .or(f.tokenizer.clone())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "`{}` has no tokenizer.json: pass --tokenizer",
                f.dir.display()
            )
        })?;
    let tok = Tokenizer::load(&tok_path)?;
    let w = basic::io::interop::read_weights(&f)?;
    let params = basic::model::dual::specs(&f.config)?
        .iter()
        .map(|s| w[&s.name].clone())
        .collect();
    Ok((f.config, tok, params, backend.open()?))
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// `hf` (a transformers CLIPModel / SiglipModel folder) or `open_clip`
    #[arg(long)]
    format: String,
    /// Run folder of `basic train`
    run: PathBuf,
    /// The folder to write
    out: PathBuf,
}

/// Writes a run's newest checkpoint as a folder another library loads unchanged.
pub fn export(a: &ExportArgs) -> anyhow::Result<()> {
    let format = basic::io::interop::Format::parse(&a.format)?;
    let cfg = a.run.join("config.toml");
    if !cfg.is_file() {
        bail!(
            "`{}` is not a run folder of `basic train` (no config.toml)",
            a.run.display()
        );
    }
    let c = ModelConfig::load(&cfg.to_string_lossy())?;
    let values = load_run_params(&a.run, &c)?;
    let named = basic::model::dual::specs(&c)?
        .into_iter()
        .map(|s| s.name)
        .zip(values)
        .collect();
    let tok = a.run.join("tokenizer.json");
    basic::io::interop::export(
        &c,
        &named,
        format,
        &a.out,
        tok.is_file().then_some(tok.as_path()),
    )?;
    println!(
        "wrote {} as a {} folder to {}",
        a.run.display(),
        a.format,
        a.out.display()
    );
    Ok(())
}

/// Says on standard error what the test data's reading left out.
fn report_skipped(c: &basic::data::stream::Counts) {
    if c.skipped_samples > 0 || c.bad_shards > 0 {
        eprintln!(
            "left out: {} samples without an image or caption, {} damaged shards",
            c.skipped_samples, c.bad_shards
        );
    }
}

pub fn eval(e: &EvalCommand) -> anyhow::Result<()> {
    match e {
        EvalCommand::ZeroShot(a) => eval_zero_shot(a),
        EvalCommand::Retrieval(a) => eval_retrieval(a),
    }
}

/// `basic eval zero-shot`: class embeddings from the prompts, then top-1/top-5 over the test data.
fn eval_zero_shot(a: &ZeroShotArgs) -> anyhow::Result<()> {
    let (c, tok, params, rt) = match (&a.run, &a.model) {
        (Some(run), _) => open_run(run, &a.backend, a.tokenizer.as_deref())?,
        (None, Some(m)) => open_foreign(m, &a.backend, a.tokenizer.as_deref())?,
        (None, None) => bail!("give --run RUN or --model hf:DIR|open_clip:DIR"),
    };
    let data = basic::eval::TestData::open(&a.data)?;
    let names = match (&a.classes, &data) {
        (Some(c), _) => basic::eval::named_or_file(c)?,
        (None, basic::eval::TestData::Folder(_, n)) => n.clone(),
        (None, _) => bail!("give --classes (a file, or imagenet, cifar10, cifar100)"),
    };
    let temps = basic::eval::named_or_file(&a.templates)?;
    let emb = Embedder::new(rt.client(), &c, params, 250, a.compute.get())?;
    let ce = class_embeddings(&emb, &tok, &names, &temps)?;
    let limit = a.limit.unwrap_or(usize::MAX);
    let labelled = |s: &basic::data::Sample| s.label.is_some();
    let mut counts = Default::default();
    let test = basic::eval::embed_streamed(&emb, limit, &labelled, &mut |f| {
        counts = data.for_each(a.skip_bad, f)?;
        Ok(())
    })?;
    report_skipped(&counts);
    if test.images.is_empty() {
        bail!("`{}` has no labelled test images", a.data);
    }
    let ie = test.images;
    let labels: Vec<i64> = test.labels.iter().map(|l| l.unwrap_or(0)).collect();
    let z = zero_shot_scores(&ie, &labels, &ce, &names)?;
    if a.json {
        let per: serde_json::Map<String, serde_json::Value> = z
            .per_class
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"top1": z.top1, "top5": z.top5, "images": z.images, "per_class": per, "truncated_prompts": emb.truncated(), "skipped_samples": counts.skipped_samples, "bad_shards": counts.bad_shards})
            )?
        );
    } else {
        println!(
            "zero-shot on {} images: top-1 {:.2}%, top-5 {:.2}%",
            z.images,
            100.0 * z.top1,
            100.0 * z.top5
        );
        if emb.truncated() > 0 {
            println!(
                "  {} of {} prompts were cut to the model's {} tokens",
                emb.truncated(),
                names.len() * temps.len(),
                c.text.length
            );
        }
        for (k, v) in &z.per_class {
            println!("  {k:<16} {:.1}%", 100.0 * v);
        }
    }
    Ok(())
}

/// `basic eval retrieval`: image→text and text→image recall over captioned test shards.
fn eval_retrieval(a: &RetrievalArgs) -> anyhow::Result<()> {
    let (c, tok, params, rt) = open_run(&a.run, &a.backend, None)?;
    let d = basic::data::source::parse(&a.data, "test", None)?;
    let emb = Embedder::new(rt.client(), &c, params, 250, a.compute.get())?;
    let mut counts = Default::default();
    let test =
        basic::eval::embed_streamed(&emb, a.limit.unwrap_or(usize::MAX), &|_| true, &mut |f| {
            counts = basic::data::stream::for_each_sample(&d, a.skip_bad, f)?;
            Ok(())
        })?;
    report_skipped(&counts);
    let (ie, captions) = (test.images, test.captions);
    let te = emb.embed_texts(&captions, &tok)?;
    let r = retrieval(&ie, &te, &[1, 5, 10]);
    if a.json {
        let mut m: serde_json::Map<String, serde_json::Value> =
            r.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        m.insert("truncated_captions".into(), json!(emb.truncated()));
        m.insert("skipped_samples".into(), json!(counts.skipped_samples));
        m.insert("bad_shards".into(), json!(counts.bad_shards));
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::Value::Object(m))?
        );
    } else {
        for (k, v) in r {
            println!("{k:<28} {:.2}%", 100.0 * v);
        }
        if emb.truncated() > 0 {
            println!(
                "{} of {} captions were cut to the model's {} tokens",
                emb.truncated(),
                captions.len(),
                c.text.length
            );
        }
    }
    Ok(())
}
