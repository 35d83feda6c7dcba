//! `basic compile`, `basic grad`, `basic embed`: the training step and its parts, from a model
//! preset, on any mesh.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use serde_json::json;

use basic::dtype::DType;
use basic::exec::ShardedProgram;
use basic::io::safetensors;
use basic::model::inference::{embed_graph, text_features_graph};
use basic::model::{basic as dual, ModelConfig};
use basic::partition::{Mesh, Rules};
use basic::runtime::{HostArray, Partitioner};
use basic::train::aot::{Machine, StepProgram};
use basic::train::{grad_graph, init, Layout, StepOptions};

use super::BackendArgs;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PartitionerArg {
    Shardy,
    Gspmd,
}

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

    /// Rematerialisation policy: none, nothing_saveable, dots_saveable, everything_saveable, save_names(a,b)
    #[arg(long, value_name = "POLICY")]
    pub remat: Option<String>,

    /// Mesh axis sizes, e.g. data=2,model=4 [default: the rule file's mesh, else one device]
    #[arg(long, value_name = "AXES")]
    pub mesh: Option<String>,

    /// Sharding rule file or preset of partitioning/ (data_parallel, fsdp, model_parallel, data_model)
    #[arg(long, value_name = "FILE|NAME")]
    pub partitioning: Option<String>,

    /// SPMD partitioner
    #[arg(long, value_enum, default_value = "shardy")]
    pub partitioner: PartitionerArg,

    /// Run each tower's identical blocks as one loop over stacked `layers/` parameters
    /// (compile time independent of depth; parameter names change)
    #[arg(long)]
    pub scan_layers: bool,

    /// Donate parameters and optimizer state to the training step's outputs, so XLA may write
    /// them in place (compile, train)
    #[arg(long)]
    pub donate: bool,

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
    /// The config with flags applied, and the step options.
    pub fn config(
        &self,
        batch: Option<i64>,
        dtype: Option<&str>,
    ) -> anyhow::Result<(ModelConfig, StepOptions)> {
        let mut c = load_config(&self.model)?;
        if let Some(b) = batch {
            c.train.batch = b;
        }
        if let Some(m) = self.microbatches {
            c.train.microbatches = m;
        }
        if let Some(r) = &self.remat {
            c.train.remat = r.clone();
        }
        if let Some(d) = dtype {
            c.train.dtype = d.to_string();
        }
        if self.scan_layers {
            c.scan_layers = true;
        }
        for (flag, tower) in [(self.lock_image, "image"), (self.lock_text, "text")] {
            if flag && !c.train.lock.iter().any(|t| t == tower) {
                c.train.lock.push(tower.to_string());
            }
        }
        c.validate(&self.model)?;
        let o = StepOptions::from_config(&c)?;
        Ok((c, o))
    }

    /// The partitioning preset or file, as given (`data_parallel` without the flag).
    pub fn partitioning_label(&self) -> String {
        self.partitioning
            .clone()
            .unwrap_or_else(|| "data_parallel".into())
    }

    /// Mesh, rules and partitioner from the flags.
    pub fn layout(&self) -> anyhow::Result<Layout> {
        let rules = match &self.partitioning {
            Some(p) => Rules::find(p)?,
            None => Rules::data_parallel(),
        };
        let mesh = match (&self.mesh, &rules.default_mesh) {
            (Some(m), _) => Mesh::parse(m)?,
            (None, Some(m)) => m.clone(),
            (None, None) => Mesh::single(),
        };
        let partitioner = match self.partitioner {
            PartitionerArg::Shardy => Partitioner::Shardy,
            PartitionerArg::Gspmd => Partitioner::Gspmd,
        };
        Ok(Layout {
            mesh,
            rules,
            partitioner,
        })
    }

    /// Lays `g` out by the flags' mesh and rules, opens the backend and compiles.
    pub fn compile_sharded(
        &self,
        g: &basic::ir::Graph,
        specs: &[basic::model::ParamSpec],
    ) -> anyhow::Result<ShardedProgram> {
        let layout = self.layout()?;
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
    dtype: Option<String>,

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
}

/// What one compile of the step reports.
pub struct StepReport {
    pub target: Option<basic::target::Target>,
    pub params: i64,
    pub flops: f64,
    pub build_seconds: f64,
    pub compile_seconds: f64,
    pub mem: basic::runtime::MemoryStats,
    /// Each device's process (host) index.
    pub process_index: Vec<i32>,
    /// The target's compiler refused the program as too large, with this message; `mem` then
    /// holds only what it said it needs (a lower bound on the peak).
    pub refused: Option<String>,
}

impl StepReport {
    /// Per device: the target's HBM and whether the peak fits in it.
    fn fits(&self) -> Option<bool> {
        self.target
            .as_ref()
            .map(|t| self.refused.is_none() && self.mem.peak_bytes <= t.spec.hbm_bytes)
    }
}

pub fn compile(a: &CompileArgs) -> anyhow::Result<()> {
    if let Some(d) = &a.dtype {
        if d != "f32" && d != "bf16" {
            bail!("invalid --dtype `{d}`: use f32 or bf16");
        }
    }
    let target = a
        .target
        .as_deref()
        .map(basic::target::Target::parse)
        .transpose()?;
    let (mut c, o) = a.model.config(a.batch, a.dtype.as_deref())?;
    if let Some(s) = a.steps {
        c.train.total_steps = s;
    }
    let layout = a.model.layout()?;
    let t0 = Instant::now();
    let sp = StepProgram::build(&c, &o, &layout, a.model.donate)?;
    let build_seconds = t0.elapsed().as_secs_f64();
    let params = sp.param_count();
    let flops = basic::ir::flops(&sp.graph);
    if let Some(p) = &a.emit {
        std::fs::write(p, &sp.text).with_context(|| format!("cannot write `{}`", p.display()))?;
    }
    let n = layout.mesh.size() as usize;
    // Per branch: compile time, memory figures, each device's process, and the compiler's
    // refusal of a program too large for the target.
    let (compile_seconds, mem, process_index, refused) = match &target {
        Some(t) => {
            let topo = t.topology()?;
            // The program runs on the topology's first `n` devices (its default assignment).
            let process_index: Vec<i32> = topo
                .devices()
                .iter()
                .take(n)
                .map(|d| d.process_index)
                .collect();
            let t1 = Instant::now();
            match sp.compile_for(t, &topo, &layout) {
                Ok(compiled) => {
                    let compile_seconds = t1.elapsed().as_secs_f64();
                    if let Some(path) = &a.save_executable {
                        let machine = Machine::of_target(t, &topo, &compiled);
                        save_executable(
                            path,
                            &sp,
                            &c,
                            &o,
                            &layout,
                            &a.model,
                            &machine,
                            compiled.serialize()?,
                        )?;
                    }
                    (
                        compile_seconds,
                        compiled.memory_stats()?,
                        process_index,
                        None,
                    )
                }
                // libtpu refuses a program that does not fit instead of sizing it: report what
                // it said, as a program that does not fit.
                Err(e) => match basic::target::OutOfMemory::from_error(&e) {
                    Some(_) if a.save_executable.is_some() => {
                        bail!("{e}; nothing saved: the program does not fit the target")
                    }
                    Some(oom) => (
                        t1.elapsed().as_secs_f64(),
                        oom.memory_stats(),
                        process_index,
                        Some(oom.message),
                    ),
                    None => return Err(e.into()),
                },
            }
        }
        None => {
            let rt = a.model.open(&layout)?;
            let t1 = Instant::now();
            let prog = ShardedProgram::compile_text(
                rt.client(),
                &layout.context(),
                sp.args.clone(),
                sp.results.clone(),
                sp.text.clone(),
            )?;
            let compile_seconds = t1.elapsed().as_secs_f64();
            if let Some(path) = &a.save_executable {
                let machine = Machine::of_client(rt.client(), n);
                save_executable(
                    path,
                    &sp,
                    &c,
                    &o,
                    &layout,
                    &a.model,
                    &machine,
                    prog.exe.serialize()?,
                )?;
            }
            (compile_seconds, prog.memory_stats()?, vec![0; n], None)
        }
    };
    let report = StepReport {
        target,
        params,
        flops,
        build_seconds,
        compile_seconds,
        mem,
        process_index,
        refused,
    };
    print_report(&c, &o, &layout, &report, a.json)?;
    if let Some(p) = &a.save_executable {
        if !a.json {
            println!("executable        {}", p.display());
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn save_executable(
    path: &std::path::Path,
    sp: &StepProgram,
    c: &ModelConfig,
    o: &StepOptions,
    layout: &basic::train::Layout,
    m: &ModelArgs,
    machine: &Machine,
    bytes: Vec<u8>,
) -> anyhow::Result<()> {
    let manifest = sp.manifest(c, o, layout, &m.partitioning_label(), machine)?;
    basic::io::executable::SavedExecutable {
        manifest,
        program: sp.text.clone(),
        executable: bytes,
    }
    .write(path)?;
    Ok(())
}

fn print_report(
    c: &ModelConfig,
    o: &StepOptions,
    layout: &basic::train::Layout,
    r: &StepReport,
    json_out: bool,
) -> anyhow::Result<()> {
    let n = layout.mesh.size() as usize;
    let mem = &r.mem;
    let hbm = r.target.as_ref().map(|t| t.spec.hbm_bytes);
    let fits = r.fits();
    let bound = r.target.as_ref().map(|t| t.step_time_bound(r.flops, n));
    if json_out {
        let devices: Vec<_> = (0..n)
            .map(|d| {
                let mut v = json!({"id": d, "argument_bytes": mem.argument_bytes, "output_bytes": mem.output_bytes,
                       "temp_bytes": mem.temp_bytes, "alias_bytes": mem.alias_bytes, "peak_bytes": mem.peak_bytes,
                       "generated_code_bytes": mem.generated_code_bytes,
                       "process_index": r.process_index.get(d).copied().unwrap_or(0)});
                if let (Some(h), Some(f)) = (hbm, fits) {
                    v["hbm_bytes"] = json!(h);
                    v["fits"] = json!(f);
                }
                v
            })
            .collect();
        let mut hosts: Vec<i32> = r.process_index.clone();
        hosts.sort_unstable();
        hosts.dedup();
        let mut out = json!({
            "model": c.name, "params": r.params, "flops_per_step": r.flops, "compile_seconds": r.compile_seconds,
            "build_seconds": r.build_seconds, "batch": o.batch, "microbatches": o.microbatches,
            "remat": c.train.remat, "dtype": c.train.dtype, "mesh": layout.mesh.to_string(),
            "partitioner": format!("{:?}", layout.partitioner).to_lowercase(), "devices": devices,
            "generated_code_bytes": mem.generated_code_bytes, "hosts": hosts.len(),
        });
        if let Some(t) = &r.target {
            out["target"] = json!(t.name());
            out["fits"] = json!(fits);
            out["hbm_bytes"] = json!(t.spec.hbm_bytes);
            out["step_time_lower_bound_seconds"] = json!(bound);
            if let Some(m) = &r.refused {
                out["compiler_refused"] = json!(m);
                out["peak_bytes_is_lower_bound"] = json!(true);
            }
            out["step_time_lower_bound_is"] = json!(
                "analytic FLOPs / (devices × peak dense bf16 FLOP/s): a bound, not a prediction"
            );
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if let Some(t) = &r.target {
        let hosts = {
            let mut h = r.process_index.clone();
            h.sort_unstable();
            h.dedup();
            h.len()
        };
        println!(
            "target            {} ({}; {} device(s) over {} host(s) in this program)",
            t.name(),
            t.spec.description,
            n,
            hosts
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
        "mesh              {} ({} device(s), {:?})",
        layout.mesh, n, layout.partitioner
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
    if let (Some(t), Some(f), Some(b)) = (&r.target, fits, bound) {
        if f {
            println!(
                "fits              yes: peak {} of {} HBM per device ({} free)",
                human(mem.peak_bytes),
                human(t.spec.hbm_bytes),
                human(t.spec.hbm_bytes - mem.peak_bytes)
            );
        } else if let Some(m) = &r.refused {
            println!(
                "fits              NO: the compiler refused it: {m} (needs at least {}, {} more than the {} HBM per device)",
                human(mem.peak_bytes),
                human(mem.peak_bytes - t.spec.hbm_bytes),
                human(t.spec.hbm_bytes)
            );
        } else {
            println!(
                "fits              NO: peak {} exceeds {} HBM per device by {}",
                human(mem.peak_bytes),
                human(t.spec.hbm_bytes),
                human(mem.peak_bytes - t.spec.hbm_bytes)
            );
        }
        println!(
            "step time         ≥ {:.3e} s (a lower bound: analytic FLOPs at {:.0} TFLOP/s bf16 per device)",
            b,
            t.spec.peak_bf16_flops / 1e12
        );
    }
    Ok(())
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

    /// f32, or f64 for parity checks
    #[arg(long, value_name = "f32|f64", default_value = "f32")]
    dtype: String,

    /// Where to write `loss` and the gradient of every parameter
    #[arg(long, value_name = "G.safetensors")]
    out: PathBuf,
}

fn dtype_arg(s: &str, allowed: &[&str]) -> anyhow::Result<DType> {
    if !allowed.contains(&s) {
        bail!("invalid --dtype `{s}`: use {}", allowed.join(" or "));
    }
    Ok(s.parse::<DType>()?)
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
                .remove("images")
                .with_context(|| format!("`{}` has no tensor `images`", p.display()))?;
            let tokens = f
                .remove("tokens")
                .with_context(|| format!("`{}` has no tensor `tokens`", p.display()))?;
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
                    &[("images".into(), &f32_images), ("tokens".into(), &tokens)],
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
    let dtype = dtype_arg(&a.dtype, &["f32", "f64"])?;
    let (mut c, _) = a.model.config(None, None)?;
    c.train.dtype = a.dtype.clone();
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
    let o = StepOptions {
        param_dtype: dtype,
        compute_dtype: dtype,
        ..StepOptions::from_config(&c)?
    };
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
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    dtype: String,
}

impl ComputeDtype {
    pub fn get(&self) -> anyhow::Result<DType> {
        dtype_arg(&self.dtype, &["f32", "bf16"])
    }
}

fn embed_texts(a: &EmbedArgs, texts: &std::path::Path) -> anyhow::Result<()> {
    let (c, _) = a.model.config(None, Some("f32"))?;
    let compute = a.compute.get()?;
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
    let (mut c, _) = a.model.config(None, Some(&a.compute.dtype))?;
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
