//! `basic run`: compile a StableHLO file, report its memory, run it on generated inputs.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde_json::json;

use basic::runtime::{ArgBuffer, CompileOptions, DeviceBuffer, Executable, HostArray, Partitioner};
use basic::DType;

use super::BackendArgs;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Inputs {
    Zeros,
    Ones,
    Random,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// StableHLO text file whose entry function is `@main`
    program: PathBuf,

    #[command(flatten)]
    backend: BackendArgs,

    #[command(flatten)]
    processes: super::ProcessArgs,

    /// Number of SPMD partitions [default: the module's `mhlo.num_partitions`, else 1]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    partitions: Option<u32>,

    /// SPMD partitioner: shardy or gspmd [default: shardy when the program declares an
    /// `sdy.mesh`, else gspmd]
    #[arg(long, value_name = "shardy|gspmd")]
    partitioner: Option<Partitioner>,

    /// Values of the generated arguments (each device gets arrays of its shard's shape)
    #[arg(long, value_enum, default_value = "random")]
    inputs: Inputs,

    /// Seed of the random inputs
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Executions to time (the median is reported)
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    repeat: u32,

    /// Only compile, for a described TPU slice or GPU host (no device attached), and report its
    /// per-device memory and generated code: tpu-v5e:2x2, h100:8, ...
    #[arg(long, value_name = "NAME:TOPOLOGY", conflicts_with_all = ["backend", "cpu_devices"])]
    target: Option<String>,

    /// Print one JSON object
    #[arg(long)]
    json: bool,
}

/// `basic run --target`: the program compiled by the target's compiler; nothing runs.
fn compile_only(
    args: &RunArgs,
    text: &str,
    options: &CompileOptions,
    target: &str,
) -> anyhow::Result<()> {
    let t = basic::target::Target::parse(target)?;
    let topo = t.topology()?;
    let t0 = Instant::now();
    let compiled = topo
        .compile(text, &t.compile_options(options)?)
        .with_context(|| format!("compiling `{}` for {}", args.program.display(), t.name()))?;
    let compile_seconds = t0.elapsed().as_secs_f64();
    let mem = compiled.memory_stats()?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "program": args.program.display().to_string(), "target": t.name(),
                "devices": options.num_devices(), "compile_seconds": compile_seconds,
                "argument_bytes": mem.argument_bytes, "output_bytes": mem.output_bytes,
                "alias_bytes": mem.alias_bytes, "temp_bytes": mem.temp_bytes,
                "peak_bytes": mem.peak_bytes, "generated_code_bytes": mem.generated_code_bytes,
                "hbm_bytes": t.spec.hbm_bytes, "fits": mem.peak_bytes <= t.spec.hbm_bytes,
            }))?
        );
    } else {
        println!(
            "program           {} for {}",
            args.program.display(),
            t.name()
        );
        println!(
            "compile           {compile_seconds:.3} s ({} device(s))",
            options.num_devices()
        );
        println!(
            "memory per device arguments {}, outputs {}, temporaries {}, peak {} of {} HBM",
            super::model::human(mem.argument_bytes),
            super::model::human(mem.output_bytes),
            super::model::human(mem.temp_bytes),
            super::model::human(mem.peak_bytes),
            super::model::human(t.spec.hbm_bytes)
        );
        println!(
            "generated code    {}",
            super::model::human(mem.generated_code_bytes)
        );
    }
    Ok(())
}

fn generate(
    dtype: DType,
    shape: &[i64],
    inputs: Inputs,
    rng: &mut basic::seed::SplitMix,
) -> anyhow::Result<HostArray> {
    let n = basic::runtime::element_count(shape)?;
    let values: Vec<f64> = (0..n)
        .map(|_| match inputs {
            Inputs::Zeros => 0.0,
            Inputs::Ones => 1.0,
            // Uniform in [-1, 1) for floats; small integers otherwise.
            Inputs::Random => rng.uniform() * 2.0 - 1.0,
        })
        .collect();
    let mut bytes = Vec::with_capacity(n * dtype.size_in_bytes());
    for v in values {
        let int = (v * 8.0).round();
        match dtype {
            DType::Pred => bytes.push((v > 0.0) as u8),
            DType::U8 => bytes.push(int.abs() as u8),
            DType::S32 => bytes.extend((int as i32).to_le_bytes()),
            DType::U32 => bytes.extend((int.abs() as u32).to_le_bytes()),
            DType::S64 => bytes.extend((int as i64).to_le_bytes()),
            DType::U64 => bytes.extend((int.abs() as u64).to_le_bytes()),
            DType::BF16 => bytes.extend(half::bf16::from_f64(v).to_bits().to_le_bytes()),
            DType::F32 => bytes.extend((v as f32).to_le_bytes()),
            DType::F64 => bytes.extend(v.to_le_bytes()),
        }
    }
    Ok(HostArray::from_bytes(dtype, shape, bytes)?)
}

/// Generates every device's inputs and runs `exe` `args.repeat` times; returns the median time
/// of one execution (with its outputs brought back) and the last run's outputs on device 0.
fn time_runs(exe: &Executable, args: &RunArgs) -> anyhow::Result<(f64, Vec<HostArray>)> {
    let mut rng = basic::seed::SplitMix(args.seed);
    let mut inputs: Vec<Vec<HostArray>> = Vec::new();
    let mut buffers: Vec<Vec<DeviceBuffer>> = Vec::new();
    for d in 0..exe.num_devices() {
        let mut host = Vec::new();
        let mut list = Vec::new();
        for p in &exe.signature().args {
            let t = p.per_device();
            let a = generate(t.dtype, &t.shape, args.inputs, &mut rng)?;
            list.push(exe.upload(&a, d)?);
            host.push(a);
        }
        inputs.push(host);
        buffers.push(list);
    }
    // Donated arguments (`tf.aliasing_output`) are consumed by each execution: they are uploaded
    // afresh before each one, outside the timed part.
    let donated: Vec<usize> = exe.donations().iter().map(|&(a, _)| a).collect();
    let mut times = Vec::new();
    let mut outputs = Vec::new();
    for _ in 0..args.repeat {
        let mut lists: Vec<Vec<ArgBuffer>> = Vec::new();
        for (d, list) in buffers.iter().enumerate() {
            let mut l = Vec::new();
            for (i, b) in list.iter().enumerate() {
                l.push(if donated.contains(&i) {
                    ArgBuffer::Owned(exe.upload(&inputs[d][i], d)?)
                } else {
                    ArgBuffer::Borrowed(b)
                });
            }
            lists.push(l);
        }
        let t = Instant::now();
        let out = exe.execute_owned(lists)?;
        let host: Vec<HostArray> = out[0]
            .iter()
            .map(DeviceBuffer::to_host)
            .collect::<Result<_, _>>()?;
        times.push(t.elapsed().as_secs_f64());
        outputs = host;
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok((times[times.len() / 2], outputs))
}

pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.program)
        .with_context(|| format!("cannot read program `{}`", args.program.display()))?;
    let mut options = CompileOptions::for_program(&text);
    if let Some(p) = args.partitions {
        options.num_partitions = p as usize;
        options.spmd = p > 1;
    }
    if let Some(p) = args.partitioner {
        options.partitioner = p;
    }
    // The counts come from the file: refused before a backend is opened with that many devices.
    options
        .validate()
        .with_context(|| format!("the module of `{}`", args.program.display()))?;
    if let Some(t) = &args.target {
        return compile_only(args, &text, &options, t);
    }
    let mut backend = args.backend.clone();
    if backend.cpu_devices.is_none() && options.num_devices() > 1 {
        // On CPU, give a partitioned program as many virtual devices as it needs.
        backend.cpu_devices = Some(options.num_devices() as u32);
    }
    let (rt, job) = backend.open_in_job(&args.processes)?;
    let result = run_loaded(args, &rt, &text, &options);
    drop(rt);
    super::end_job(job)?;
    result
}

/// Compiles `text` on `rt`, times it and reports (its addressable devices: all of them, or this
/// process's share of a job's).
fn run_loaded(
    args: &RunArgs,
    rt: &basic::runtime::Runtime,
    text: &str,
    options: &basic::runtime::CompileOptions,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let exe = rt
        .client()
        .compile(text, options)
        .with_context(|| format!("compiling `{}`", args.program.display()))?;
    let compile_seconds = t0.elapsed().as_secs_f64();
    let mem = exe.memory_stats()?;

    let (median, outputs) = time_runs(&exe, args)?;

    let summaries: Vec<_> = outputs
        .iter()
        .map(|o| {
            let v = o.to_f64_vec();
            json!({
                "dtype": o.dtype().name(),
                "shape": o.shape(),
                "sum": v.iter().sum::<f64>(),
                "first": v.iter().take(4).collect::<Vec<_>>(),
            })
        })
        .collect();
    if args.json {
        let out = json!({
            "program": args.program.display().to_string(),
            "platform": rt.client().platform(),
            "devices": exe.num_devices(),
            "compile_seconds": compile_seconds,
            "execute_seconds_median": median,
            "memory": mem,
            "outputs_device0": summaries,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("program           {}", args.program.display());
    println!(
        "devices           {} on {} ({} partitions, {})",
        exe.num_devices(),
        rt.client().platform(),
        options.num_partitions,
        if options.spmd {
            options.partitioner.to_string()
        } else {
            "no SPMD".into()
        }
    );
    println!("compile           {:.3} s", compile_seconds);
    println!(
        "memory per device arguments {} B, outputs {} B, temporaries {} B, peak {} B",
        mem.argument_bytes, mem.output_bytes, mem.temp_bytes, mem.peak_bytes
    );
    println!(
        "execute           {:.1} µs (median of {})",
        median * 1e6,
        args.repeat
    );
    for (i, s) in summaries.iter().enumerate() {
        println!("output {i} (device 0) {s}");
    }
    Ok(())
}
