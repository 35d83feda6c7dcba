//! `basic compile`, `basic grad`, `basic embed`: the training step and its parts, from a model
//! preset, on any mesh.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};

use basic::dtype::DType;
use basic::exec::ShardedProgram;
use basic::io::safetensors;
use basic::ir::RematPolicy;
use basic::model::config::{Modality, Precision};
use basic::model::inference::{embed_graph, text_features_graph};
use basic::model::names::io;
use basic::model::{dual, ModelConfig};
use basic::runtime::{HostArray, Partitioner};
use basic::target::Target;
use basic::train::aot::{compile_step, CompileOn, CompileOutputs, StepReport};
use basic::train::{grad_graph, init, Layout, LayoutChoices, StepChoices, StepOptions, StepSetup};

use super::BackendArgs;

/// Flags shared by every command that builds the model's programs.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model preset name (graphs/NAME.toml), config path, or a checkpoint folder of another
    /// library: `hf:DIR` (transformers CLIPModel / SiglipModel) or `open_clip:DIR`
    #[arg(long, value_name = "NAME|FILE|hf:DIR|open_clip:DIR")]
    pub model: String,

    /// Micro-batches per step (BASIC's gradient accumulation)
    #[arg(long, value_name = "M", value_parser = clap::value_parser!(i64).range(1..))]
    pub microbatches: Option<i64>,

    /// Rematerialisation policy: none, dots_saveable, nothing_saveable, save_names(a,b)
    #[arg(long, value_name = "POLICY")]
    pub remat: Option<RematPolicy>,

    /// Mesh axis sizes, e.g. data=2,model=4 [default: the rule file's mesh, else one device]
    #[arg(long, value_name = "AXES")]
    pub mesh: Option<String>,

    /// Sharding rule file or preset of partitioning/ (data_parallel, fsdp, model_parallel, data_model)
    #[arg(long, value_name = "FILE|NAME")]
    pub partitioning: Option<String>,

    /// SPMD partitioner: shardy or gspmd
    #[arg(long, value_name = "shardy|gspmd", default_value = "shardy")]
    pub partitioner: Partitioner,

    /// Run each tower's identical blocks as one loop over stacked `layers/` parameters
    /// (compile time independent of depth; parameter names change)
    #[arg(long)]
    pub scan_layers: bool,

    /// Donate parameters and optimizer state to the training step's outputs, so XLA may write
    /// them in place (compile, train)
    #[arg(long)]
    pub donate: bool,

    /// Rows and columns of one tile of the contrastive loss, which then never builds the N × N
    /// logits (0: the whole-batch loss) [default: the preset's]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(0..))]
    pub loss_block: Option<i64>,

    /// Lock the image tower: no gradient, no optimizer state (LiT)
    #[arg(long)]
    pub lock_image: bool,

    /// Lock the text tower
    #[arg(long)]
    pub lock_text: bool,

    #[command(flatten)]
    pub backend: BackendArgs,
}

/// A preset, a config file, or a checkpoint folder of another library (`hf:DIR`,
/// `open_clip:DIR`), whose architecture comes from its own config.
pub fn load_config(model: &str) -> anyhow::Result<ModelConfig> {
    match basic::io::interop::parse_model(model)? {
        Some(f) => Ok(f.config),
        None => Ok(ModelConfig::load(model)?),
    }
}

/// The parameters file to use: `--params`, else the checkpoint of a `hf:` / `open_clip:` model.
pub fn params_or_folder(model: &str, params: &Option<PathBuf>) -> Option<PathBuf> {
    params.clone().or_else(|| {
        (model.starts_with("hf:") || model.starts_with("open_clip:")).then(|| PathBuf::from(model))
    })
}

impl ModelArgs {
    /// The step choices of these flags, with the command's own batch, precision and schedule.
    pub fn choices(
        &self,
        batch: Option<i64>,
        precision: Option<Precision>,
        steps: Option<i64>,
    ) -> StepChoices {
        let lock = [
            (self.lock_image, Modality::Image),
            (self.lock_text, Modality::Text),
        ];
        StepChoices {
            batch,
            microbatches: self.microbatches,
            remat: self.remat.clone(),
            precision,
            scan_layers: self.scan_layers,
            lock: lock
                .into_iter()
                .filter(|(f, _)| *f)
                .map(|(_, m)| m)
                .collect(),
            steps,
            loss_block: self.loss_block,
        }
    }

    pub fn layout_choices(&self) -> LayoutChoices {
        LayoutChoices {
            mesh: self.mesh.clone(),
            partitioning: self.partitioning.clone(),
            partitioner: self.partitioner,
        }
    }

    /// The model's step with these flags applied, laid out by them.
    pub fn setup(&self, choices: &StepChoices) -> anyhow::Result<StepSetup> {
        let base = load_config(&self.model)?;
        Ok(StepSetup::new(
            &base,
            choices,
            &self.layout_choices(),
            self.donate,
        )?)
    }

    /// Lays `g` out by the flags' mesh and rules, opens the backend and compiles.
    pub fn compile_sharded(
        &self,
        g: &basic::ir::Graph,
        specs: &[basic::model::ParamSpec],
    ) -> anyhow::Result<ShardedProgram> {
        let layout = self.layout_choices().layout()?;
        let (sa, sr) = layout.specs(g, specs)?;
        let rt = self.open(&layout)?;
        Ok(ShardedProgram::compile(
            rt.client(),
            g,
            &layout.context(),
            sa,
            sr,
        )?)
    }

    /// Opens the backend with at least as many CPU devices as the mesh needs.
    pub fn open(&self, layout: &Layout) -> anyhow::Result<basic::runtime::Runtime> {
        let mut b = self.backend.clone();
        // On CPU, exactly as many virtual devices as the mesh: the plugin's default of 4 would
        // split its threads over devices the run does not use.
        let cpu = basic::runtime::Backend::from_flag_or_env(b.backend.as_deref())
            == basic::runtime::Backend::Cpu;
        if b.cpu_devices.is_none() && (cpu || layout.mesh.size() > 1) {
            b.cpu_devices = Some(layout.mesh.size() as u32);
        }
        b.open()
    }
}

#[derive(Args, Debug)]
pub struct CompileArgs {
    #[command(flatten)]
    model: ModelArgs,

    /// Global batch size [default: the preset's]
    #[arg(long, value_name = "B", value_parser = clap::value_parser!(i64).range(1..))]
    batch: Option<i64>,

    /// Compute dtype: f32, or bf16 (bf16 compute, f32 master weights)
    #[arg(long, value_name = "f32|bf16")]
    dtype: Option<Precision>,

    /// Length of the learning-rate schedule, as `basic train --steps` sets it (the schedule is
    /// part of the program, so a saved executable needs the same) [default: the preset's]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(1..))]
    steps: Option<i64>,

    /// Compile for a described TPU slice or GPU host with its own compiler, no device attached:
    /// tpu-v4:2x2x1, tpu-v5e:2x2, tpu-v5p:2x2x1, tpu-v6e:2x2, a100:8, h100:8, h200:8
    #[arg(long, value_name = "NAME:TOPOLOGY", conflicts_with_all = ["backend", "cpu_devices"])]
    target: Option<String>,

    /// Also write the StableHLO text of the step here
    #[arg(long, value_name = "FILE.mlir")]
    emit: Option<PathBuf>,

    /// Write the compiled step and its manifest here, for `basic train --executable`
    #[arg(long, value_name = "FILE")]
    save_executable: Option<PathBuf>,

    /// Print one JSON object
    #[arg(long)]
    json: bool,

    /// Compile the streamed step (four programs driven over micro-batches from the host, one
    /// micro-batch's images on the devices at a time) and report each program, the step's peak
    /// and its host traffic
    #[arg(long, conflicts_with_all = ["emit", "save_executable"])]
    streamed: bool,

    #[command(flatten)]
    processes: super::ProcessArgs,
}

pub fn compile(a: &CompileArgs) -> anyhow::Result<()> {
    let target = a.target.as_deref().map(Target::parse).transpose()?;
    let setup = a.model.setup(&a.model.choices(a.batch, a.dtype, a.steps))?;
    if let Some(t) = &target {
        return compile_on(a, &setup, CompileOn::Target(t));
    }
    let mut backend = a.model.backend.clone();
    if backend.cpu_devices.is_none() && backend.kind() == basic::runtime::Backend::Cpu {
        backend.cpu_devices = Some(setup.layout.mesh.size() as u32);
    }
    let (rt, job) = backend.open_in_job(&a.processes)?;
    let r = compile_on(a, &setup, CompileOn::Client(rt.client()));
    drop(rt);
    super::end_job(job)?;
    r
}

/// Compiles the step on a target or a client and reports.
fn compile_on(a: &CompileArgs, setup: &StepSetup, on: CompileOn<'_>) -> anyhow::Result<()> {
    let outputs = CompileOutputs {
        emit: a.emit.as_deref(),
        save_executable: a.save_executable.as_deref(),
    };
    if a.streamed {
        let r = basic::train::streamed::compile_streamed(setup, on)?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&r.to_json(setup))?);
        } else {
            print_streamed(setup, &r);
        }
        return Ok(());
    }
    let report = compile_step(setup, on, outputs)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json(setup))?);
        return Ok(());
    }
    print_report(setup, &report);
    if let Some(p) = &a.save_executable {
        println!("executable        {}", p.display());
    }
    Ok(())
}

/// The text form of `basic compile --streamed`'s report.
fn print_streamed(setup: &StepSetup, r: &basic::train::streamed::StreamedReport) {
    let o = &setup.options;
    println!(
        "streamed step     {} · batch {} in {} micro-batches of {} · mesh {}",
        setup.config.name,
        o.batch,
        o.microbatches,
        o.batch / o.microbatches,
        setup.layout.mesh
    );
    println!("program    runs        peak      beside   step peak");
    for p in &r.parts {
        println!(
            "{:<9} {:>5}  {:>10}  {:>10}  {:>10}{}",
            p.part.name(),
            p.runs_per_step,
            human(p.memory.peak_bytes),
            human(p.resident_beside_bytes),
            human(p.step_peak_bytes()),
            p.refused
                .as_ref()
                .map(|m| format!("  refused: {m}"))
                .unwrap_or_default()
        );
    }
    print!("peak per device   {}", human(r.peak_bytes()));
    match (&r.target, r.fits()) {
        (Some(t), Some(f)) => println!(
            " of {}: {}",
            human(t.spec.hbm_bytes),
            if f { "fits" } else { "does not fit" }
        ),
        _ => println!(),
    }
    println!(
        "host              {} per micro-batch per process; {} host→device per step ({} for the one-program step)",
        human(r.host_bytes_per_micro_batch),
        human(r.host_to_device_bytes_per_step),
        human(r.one_program_host_to_device_bytes)
    );
}

/// The text form of `basic compile`'s report.
fn print_report(setup: &StepSetup, r: &StepReport) {
    let (c, o, layout, mem) = (&setup.config, &setup.options, &setup.layout, &r.mem);
    let n = setup.devices();
    if let Some(t) = &r.target {
        println!(
            "target            {} ({}; {n} device(s) over {} host(s) in this program)",
            t.name(),
            t.spec.description,
            r.hosts()
        );
    }
    println!(
        "model             {} ({} parameters, {:.3} GFLOP per step)",
        c.name,
        r.params,
        r.flops / 1e9
    );
    println!(
        "step              batch {} in {} micro-batch(es), remat {}, {}",
        o.batch, o.microbatches, c.train.remat, c.train.dtype
    );
    println!(
        "mesh              {} ({n} device(s), {})",
        layout.mesh, layout.partitioner
    );
    println!("build + emit      {:.3} s", r.build_seconds);
    println!("compile           {:.3} s", r.compile_seconds);
    println!(
        "memory per device arguments {}, outputs {}, temporaries {}, peak {}",
        human(mem.argument_bytes),
        human(mem.output_bytes),
        human(mem.temp_bytes),
        human(mem.peak_bytes)
    );
    println!("generated code    {}", human(mem.generated_code_bytes));
    if let Some(t) = &r.target {
        print_fit(t, r);
    }
    if r.shares.len() > 1 {
        println!("per process       the devices it drives and the rows of each batch it loads");
        for s in &r.shares {
            let ids: Vec<String> = s.devices.iter().map(i64::to_string).collect();
            println!(
                "  process {:<5}   devices {}; rows {}..{}",
                s.process,
                ids.join(","),
                s.rows.0,
                s.rows.1
            );
        }
    }
}

/// Whether a target compile fits, and its step-time bound.
fn print_fit(t: &Target, r: &StepReport) {
    let (peak, hbm) = (r.mem.peak_bytes, t.spec.hbm_bytes);
    match (r.fits(), &r.refused) {
        (Some(true), _) => println!(
            "fits              yes: peak {} of {} HBM per device ({} free)",
            human(peak),
            human(hbm),
            human(hbm - peak)
        ),
        (_, Some(m)) => println!(
            "fits              NO: the compiler refused it: {m} (needs at least {}, {} more than the {} HBM per device)",
            human(peak),
            human(peak - hbm),
            human(hbm)
        ),
        _ => println!(
            "fits              NO: peak {} exceeds {} HBM per device by {}",
            human(peak),
            human(hbm),
            human(peak - hbm)
        ),
    }
    if let Some(b) = r.step_time_bound() {
        println!(
            "step time         ≥ {b:.3e} s (a lower bound: analytic FLOPs at {:.0} TFLOP/s bf16 per device)",
            t.spec.peak_bf16_flops / 1e12
        );
    }
}

/// `1.50 MiB`.
pub fn human(b: i64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", units[u])
    }
}

#[derive(Args, Debug)]
pub struct GradArgs {
    #[command(flatten)]
    model: ModelArgs,

    /// Parameters to differentiate at (safetensors, the model's names)
    #[arg(long, value_name = "P.safetensors", conflicts_with = "seed")]
    params: Option<PathBuf>,

    /// Initialise the parameters from this seed instead
    #[arg(long, value_name = "S")]
    seed: Option<u64>,

    /// Write the initialised parameters here
    #[arg(long, value_name = "P.safetensors", requires = "seed")]
    save_params: Option<PathBuf>,

    /// The batch: `images` (f32 [N, H, W, C]) and `tokens` (s32 [N, L])
    #[arg(long, value_name = "B.safetensors", conflicts_with = "random_batch")]
    batch: Option<PathBuf>,

    /// Use N random pairs instead
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(2..))]
    random_batch: Option<i64>,

    /// Write the random batch here
    #[arg(long, value_name = "B.safetensors", requires = "random_batch")]
    save_batch: Option<PathBuf>,

    /// f32, or f64 for parity checks (parameters, batch and computation all in it)
    #[arg(long, value_enum, default_value = "f32")]
    dtype: GradDtype,

    /// Where to write `loss` and the gradient of every parameter
    #[arg(long, value_name = "G.safetensors")]
    out: PathBuf,
}

/// `basic grad`'s dtype: the whole program in it, for parity checks against other frameworks.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum GradDtype {
    F32,
    F64,
}

impl GradDtype {
    fn dtype(self) -> DType {
        match self {
            GradDtype::F32 => DType::F32,
            GradDtype::F64 => DType::F64,
        }
    }
}

fn load_or_init_params(
    c: &ModelConfig,
    path: &Option<PathBuf>,
    seed: Option<u64>,
    save: &Option<PathBuf>,
    dtype: DType,
) -> anyhow::Result<Vec<HostArray>> {
    let specs = dual::specs(c)?;
    match (path, seed) {
        (Some(p), _) => Ok(safetensors::match_params(
            p,
            &safetensors::read_params(p, c)?,
            &specs,
            dtype,
        )?),
        (None, Some(s)) => {
            let v = init::init_params(&specs, s, dtype)?;
            if let Some(out) = save {
                let named: Vec<(String, &HostArray)> =
                    specs.iter().map(|s| s.name.clone()).zip(v.iter()).collect();
                safetensors::write(out, &named, &BTreeMap::new())?;
            }
            Ok(v)
        }
        (None, None) => {
            bail!("give --params P.safetensors, or --seed S to initialise the parameters")
        }
    }
}

fn load_or_random_batch(
    c: &ModelConfig,
    path: &Option<PathBuf>,
    n: Option<i64>,
    save: &Option<PathBuf>,
    dtype: DType,
) -> anyhow::Result<(HostArray, HostArray)> {
    let (images, tokens) = match (path, n) {
        (Some(p), _) => {
            let mut f = safetensors::read(p)?;
            let images = f
                .remove(io::IMAGES)
                .with_context(|| format!("`{}` has no tensor `{}`", p.display(), io::IMAGES))?;
            let tokens = f
                .remove(io::TOKENS)
                .with_context(|| format!("`{}` has no tensor `{}`", p.display(), io::TOKENS))?;
            (safetensors::convert(&images, dtype)?, tokens)
        }
        (None, Some(n)) => {
            let mut r = init::SplitMix(0x5eed);
            let (is, ts) = basic::train::step::batch_shapes(c, n);
            let img: Vec<f64> = (0..is.iter().product::<i64>())
                .map(|_| r.normal())
                .collect();
            let len = c.text.length;
            let toks: Vec<i32> = (0..n * len)
                .map(|i| {
                    let real = 1 + (i / len) % len.max(1);
                    if i % len < real {
                        1 + (r.next_u64() % (c.text.vocab as u64 - 1)) as i32
                    } else {
                        c.text.pad_id as i32
                    }
                })
                .collect();
            // Batch files hold f32 images: round first, so that the saved batch is the one used.
            let img: Vec<f64> = img.iter().map(|&v| f64::from(v as f32)).collect();
            let images = init::to_dtype(&is, &img, dtype)?;
            let tokens = HostArray::new(&ts, &toks)?;
            if let Some(out) = save {
                let f32_images = safetensors::convert(&images, DType::F32)?;
                safetensors::write(
                    out,
                    &[
                        (io::IMAGES.into(), &f32_images),
                        (io::TOKENS.into(), &tokens),
                    ],
                    &BTreeMap::new(),
                )?;
            }
            (images, tokens)
        }
        (None, None) => bail!("give --batch B.safetensors, or --random-batch N"),
    };
    let (is, ts) = basic::train::step::batch_shapes(c, images.shape()[0]);
    if images.shape() != is || tokens.shape() != ts || tokens.dtype() != DType::S32 {
        bail!(
            "the batch does not fit model `{}`: images must be f32 {:?}, tokens s32 {:?}; got images {} {:?}, tokens {} {:?}",
            c.name, is, ts, images.dtype(), images.shape(), tokens.dtype(), tokens.shape()
        );
    }
    Ok((images, tokens))
}

pub fn grad(a: &GradArgs) -> anyhow::Result<()> {
    let dtype = a.dtype.dtype();
    let mut c = a.model.setup(&a.model.choices(None, None, None))?.config;
    let params = load_or_init_params(
        &c,
        &match a.seed {
            Some(_) => a.params.clone(),
            None => params_or_folder(&a.model.model, &a.params),
        },
        a.seed,
        &a.save_params,
        dtype,
    )?;
    let (images, tokens) =
        load_or_random_batch(&c, &a.batch, a.random_batch, &a.save_batch, dtype)?;
    c.train.batch = images.shape()[0];
    let mut o = StepOptions {
        param_dtype: dtype,
        compute_dtype: dtype,
        // The batch given is normalised floats of the parity dtype.
        image_bytes: false,
        ..StepOptions::from_config(&c)?
    };
    if o.loss_block > 0 {
        o.ring = a.model.layout_choices().layout()?.ring()?;
    }
    let (g, specs) = grad_graph(&c, &o)?;
    let prog = a.model.compile_sharded(&g, &specs)?;
    let mut args = params;
    args.push(images);
    args.push(tokens);
    if basic::train::step::has_rng(&c) {
        // The dropout key: the seed (0 without --seed) and step 0.
        args.push(HostArray::new(&[2], &[a.seed.unwrap_or(0), 0u64])?);
    }
    let out = prog.run_host(&args)?;
    let names: Vec<String> = g.outputs.iter().map(|(n, _)| n.clone()).collect();
    let named: Vec<(String, &HostArray)> = names.into_iter().zip(out.iter()).collect();
    let mut meta = BTreeMap::new();
    meta.insert("model".to_string(), c.name.clone());
    meta.insert("microbatches".to_string(), o.microbatches.to_string());
    safetensors::write(&a.out, &named, &meta)?;
    println!(
        "loss {:.8}; wrote {} gradients to {}",
        out[0].to_f64_vec()[0],
        named.len() - 1,
        a.out.display()
    );
    Ok(())
}

#[derive(Args, Debug)]
pub struct EmbedArgs {
    #[command(flatten)]
    model: ModelArgs,

    /// Parameters (safetensors, the model's names; HF BERT names for a BERT text tower; a
    /// `hf:DIR` / `open_clip:DIR` folder) [default: the checkpoint of a `hf:` / `open_clip:`
    /// model]
    #[arg(long, value_name = "P.safetensors")]
    params: Option<PathBuf>,

    /// The batch: `images` (f32 [N, H, W, C]) and `tokens` (s32 [N, L])
    #[arg(long, value_name = "B.safetensors", required_unless_present = "texts")]
    batch: Option<PathBuf>,

    /// Text-only: one text per line; writes the text tower's pooled, unprojected embeddings
    #[arg(long, value_name = "FILE", conflicts_with = "batch")]
    texts: Option<PathBuf>,

    /// The tokenizer.json of --texts [default: the `hf:` / `open_clip:` folder's]
    #[arg(long, value_name = "tokenizer.json")]
    tokenizer: Option<PathBuf>,

    /// Where to write `image_embeddings`, `text_embeddings` and `logit_scale` (or, with
    /// --texts, `text_embeddings`)
    #[arg(long, value_name = "E.safetensors")]
    out: PathBuf,

    #[command(flatten)]
    compute: ComputeDtype,
}

/// `--dtype` of the inference commands (`embed`, `eval`).
#[derive(Args, Debug)]
pub struct ComputeDtype {
    /// Compute dtype of the towers: f32, or bf16 (from the f32 parameters; the embeddings come
    /// out in f32 either way; faster where the CPU multiplies bf16 matrices natively, as on AMX)
    #[arg(long, value_name = "f32|bf16", default_value = "f32")]
    dtype: Precision,
}

impl ComputeDtype {
    pub fn get(&self) -> DType {
        self.dtype.compute_dtype()
    }
}

fn embed_texts(a: &EmbedArgs, texts: &std::path::Path) -> anyhow::Result<()> {
    let c = a.model.setup(&a.model.choices(None, None, None))?.config;
    let compute = a.compute.get();
    let folder_tok = basic::io::interop::parse_model(&a.model.model)?.and_then(|f| f.tokenizer);
    let tok_path = a
        .tokenizer
        .as_ref()
        .or(folder_tok.as_ref())
        .context("--texts needs --tokenizer (the model's folder has no tokenizer.json)")?;
    let tok = basic::data::Tokenizer::load(tok_path)?;
    let params = embed_params(a)?;
    let lines = basic::eval::read_lines(texts)?;
    let n = lines.len() as i64;
    let (g, specs) = text_features_graph(&c, n, compute)?;
    let file = safetensors::read_params(&params, &c)?;
    let text_only: BTreeMap<String, HostArray> = file
        .into_iter()
        .filter(|(k, _)| specs.iter().any(|s| &s.name == k))
        .collect();
    let mut args = safetensors::match_params(&params, &text_only, &specs, DType::F32)?;
    let len = c.text.length as usize;
    let mut ids = Vec::with_capacity(lines.len() * len);
    let mut truncated = 0;
    for l in &lines {
        let e = tok.encode(l, len)?;
        ids.extend(e.ids);
        truncated += usize::from(e.truncated);
    }
    if truncated > 0 {
        eprintln!("{truncated} of {} texts were longer than the model's {len} tokens and were cut (the end token kept)", lines.len());
    }
    args.push(HostArray::new(&[n, c.text.length], &ids)?);
    let rt = a.model.backend.open()?;
    let text = basic::lower::module(&g, &Default::default())?;
    let exe = rt
        .client()
        .compile(&text, &basic::runtime::CompileOptions::single())?;
    let out = exe.run(&args)?;
    safetensors::write(
        &a.out,
        &[("text_embeddings".into(), &out[0])],
        &BTreeMap::new(),
    )?;
    println!(
        "wrote {} text embeddings of width {} to {}",
        n,
        out[0].shape()[1],
        a.out.display()
    );
    Ok(())
}

fn embed_params(a: &EmbedArgs) -> anyhow::Result<PathBuf> {
    params_or_folder(&a.model.model, &a.params).context(
        "give --params P.safetensors (or a hf:DIR / open_clip:DIR model, whose checkpoint is used)",
    )
}

pub fn embed(a: &EmbedArgs) -> anyhow::Result<()> {
    if let Some(t) = &a.texts {
        return embed_texts(a, t);
    }
    let mut c = a
        .model
        .setup(&a.model.choices(None, Some(a.compute.dtype), None))?
        .config;
    let params = load_or_init_params(&c, &Some(embed_params(a)?), None, &None, DType::F32)?;
    let (images, tokens) = load_or_random_batch(&c, &a.batch, None, &None, DType::F32)?;
    c.train.batch = images.shape()[0];
    let o = StepOptions::from_config(&c)?;
    let g = embed_graph(&c, o.batch, o.param_dtype, o.compute_dtype)?;
    let prog = a.model.compile_sharded(&g, &dual::specs(&c)?)?;
    let mut args = params;
    args.push(images);
    args.push(tokens);
    let out = prog.run_host(&args)?;
    let named: Vec<(String, &HostArray)> = g
        .outputs
        .iter()
        .map(|(n, _)| n.clone())
        .zip(out.iter())
        .collect();
    safetensors::write(&a.out, &named, &BTreeMap::new())?;
    println!(
        "wrote {} image and text embeddings to {}",
        out[0].shape()[0],
        a.out.display()
    );
    Ok(())
}
