//! The BASIC step, measured: compile and step time of the `tiny` and `small` presets (the JAX
//! peer is `benches/basic_jax.py`, run side by side by `benches/step.sh`), peak memory as the
//! global batch grows 8× at a fixed micro-batch, remat against none on 12-layer towers, and the
//! per-device figures of one model on 1×1, 8×1, 1×8 and 2×4 meshes. One JSON line each.
//!
//! `BASIC_BENCH=jax` runs only the JAX-comparison section; `BASIC_BENCH=mesh`, `memory` likewise.

use std::time::Instant;

use basic::dtype::DType;
use basic::exec::{Sharded, ShardedProgram};
use basic::model::config::ImageConfig;
use basic::model::ModelConfig;
use basic::partition::{Mesh, Rules};
use basic::runtime::{HostArray, Partitioner, Runtime};
use basic::train::{init, train_graph, Layout, StepOptions};

fn compile(
    rt: &Runtime,
    c: &ModelConfig,
    o: &StepOptions,
    layout: &Layout,
) -> basic::Result<(ShardedProgram, f64, Vec<HostArray>)> {
    let t0 = Instant::now();
    let (g, specs, sspecs) = train_graph(c, o)?;
    let mut all = specs.clone();
    all.extend(sspecs.iter().cloned());
    let (a, r) = layout.specs(&g, &all)?;
    let p = ShardedProgram::compile(rt.client(), &g, &layout.context(), a, r)?;
    let secs = t0.elapsed().as_secs_f64();
    let mut values = init::init_params(&specs, 1, DType::F32)?;
    for s in &sspecs {
        values.push(HostArray::zeros(DType::F32, &s.shape)?);
    }
    Ok((p, secs, values))
}

/// Untimed steps before the timed ones, as the peers take (`benches/basic_jax.py`,
/// `benches/basic_torch.py`): the first few steps of a process run slower than the steady state,
/// and a training run is all steady state.
const WARMUP_STEPS: usize = 3;

/// Median seconds per step over `steps`, parameters and state staying on the devices; the
/// batch uploaded once, or (`upload_each`) before every step inside the timed part, as a
/// training run uploads each new batch.
fn time_steps(
    p: &ShardedProgram,
    c: &ModelConfig,
    o: &StepOptions,
    values: &[HostArray],
    steps: usize,
) -> basic::Result<f64> {
    time_steps_uploading(p, c, o, values, steps, false)
}

fn time_steps_uploading(
    p: &ShardedProgram,
    c: &ModelConfig,
    o: &StepOptions,
    values: &[HostArray],
    steps: usize,
    upload_each: bool,
) -> basic::Result<f64> {
    let n = values.len();
    let mut vals: Vec<Sharded> = values
        .iter()
        .enumerate()
        .map(|(i, v)| p.upload(i, v))
        .collect::<basic::Result<_>>()?;
    let mut r = init::SplitMix(9);
    let (is, ts) = basic::train::step::batch_shapes(c, o.batch);
    let count = is.iter().product::<i64>();
    let host_images = if o.image_bytes {
        let px: Vec<u8> = (0..count).map(|_| (r.next_u64() % 256) as u8).collect();
        HostArray::from_bytes(DType::U8, &is, px)?
    } else {
        let img: Vec<f32> = (0..count).map(|_| r.normal() as f32).collect();
        HostArray::new(&is, &img)?
    };
    let tok: Vec<i32> = (0..ts.iter().product::<i64>())
        .map(|i| 1 + (i % 7) as i32)
        .collect();
    let mut images = p.upload(n + 1, &host_images)?;
    let tokens = p.upload(n + 2, &HostArray::new(&ts, &tok)?)?;
    let mut times = Vec::new();
    for k in 0..steps + WARMUP_STEPS {
        let step = p.upload(n, &HostArray::scalar(k as i32))?;
        let t = Instant::now();
        if upload_each {
            images = p.upload(n + 1, &host_images)?;
        }
        let mut args: Vec<&Sharded> = vals.iter().collect();
        args.push(&step);
        args.push(&images);
        args.push(&tokens);
        let mut out = p.run(&args)?;
        // Reading the loss waits for the step to finish.
        let _ = p.gather(n, &out[n])?;
        out.truncate(n);
        vals = out;
        if k >= WARMUP_STEPS {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(times[times.len() / 2])
}

fn opts(c: &ModelConfig, batch: i64, m: i64, remat: basic::ir::RematPolicy) -> StepOptions {
    StepOptions {
        batch,
        microbatches: m,
        remat,
        // The peers take normalised f32 images.
        image_bytes: false,
        ..StepOptions::from_config(c).expect("preset")
    }
}

fn main() -> basic::Result<()> {
    // As the `basic` command does: glibc's huge-page tunable for the plugin's buffers.
    basic::runtime::host::use_huge_pages();
    let only = std::env::var("BASIC_BENCH").unwrap_or_default();
    let want = |s: &str| only.is_empty() || only == s;
    let rt = Runtime::open(&basic::runtime::Backend::from_flag_or_env(None), Some(8))?;
    let single = Layout::single();
    if want("jax") {
        // One device, as the JAX peer runs on one.
        let rt = Runtime::open(&basic::runtime::Backend::from_flag_or_env(None), Some(1))?;
        for (name, steps) in [("tiny", 20), ("small", 15)] {
            let c = ModelConfig::load(name)?;
            let o = opts(&c, 64, 1, basic::ir::RematPolicy::None);
            let (p, secs, values) = compile(&rt, &c, &o, &single)?;
            let t = time_steps(&p, &c, &o, &values, steps)?;
            let m = p.memory_stats()?;
            println!(
                "{{\"impl\": \"basic\", \"model\": \"{name}\", \"batch\": 64, \"compile_s\": {secs:.4}, \"step_s_median\": {t:.6}, \"temp_bytes\": {}, \"argument_bytes\": {}, \"output_bytes\": {}, \"peak_bytes\": {}}}",
                m.temp_bytes, m.argument_bytes, m.output_bytes, m.peak_bytes
            );
        }
    }
    if want("memory") {
        // The global batch grows 8× at a fixed micro-batch of 32: peak memory should stay flat.
        let c = ModelConfig::load("small")?;
        for (batch, m) in [(32, 1), (256, 8)] {
            let o = opts(&c, batch, m, basic::ir::RematPolicy::None);
            let (p, secs, _) = compile(&rt, &c, &o, &single)?;
            let s = p.memory_stats()?;
            println!("{{\"section\": \"batch_growth\", \"model\": \"small\", \"batch\": {batch}, \"microbatches\": {m}, \"compile_s\": {secs:.3}, \"temp_bytes\": {}, \"peak_bytes\": {}}}", s.temp_bytes, s.peak_bytes);
        }
        // Remat on 12-layer towers.
        let mut c = ModelConfig::load("small")?;
        if let ImageConfig::Vit(v) = &mut c.image {
            v.depth = 12;
        }
        c.text.depth = 12;
        for policy in [
            basic::ir::RematPolicy::None,
            basic::ir::RematPolicy::NothingSaveable,
            basic::ir::RematPolicy::DotsSaveable,
        ] {
            let o = opts(&c, 64, 1, policy.clone());
            let (p, secs, _) = compile(&rt, &c, &o, &single)?;
            let s = p.memory_stats()?;
            println!(
                "{{\"section\": \"remat\", \"towers\": \"12+12 layers, width 256\", \"remat\": \"{}\", \"compile_s\": {secs:.3}, \"temp_bytes\": {}, \"peak_bytes\": {}}}",
                policy,
                s.temp_bytes,
                s.peak_bytes
            );
        }
    }
    if want("bytes") {
        // The `small` step fed u8 pixels (normalised on the device) against normalised f32
        // images, each step uploading its batch as a run does; two rounds, alternating.
        let c = ModelConfig::load("small")?;
        for round in 0..2 {
            for bytes in [false, true] {
                let o = StepOptions {
                    image_bytes: bytes,
                    ..opts(&c, 64, 1, basic::ir::RematPolicy::None)
                };
                let (p, secs, values) = compile(&rt, &c, &o, &single)?;
                let t = time_steps_uploading(&p, &c, &o, &values, 15, true)?;
                let s = p.memory_stats()?;
                println!(
                    "{{\"section\": \"image_bytes\", \"round\": {round}, \"model\": \"small\", \"batch\": 64, \"images\": \"{}\", \"compile_s\": {secs:.3}, \"step_s_median\": {t:.5}, \"argument_bytes\": {}, \"peak_bytes\": {}}}",
                    if bytes { "u8" } else { "f32" },
                    s.argument_bytes,
                    s.peak_bytes
                );
            }
        }
    }
    if want("mesh") {
        // The tiny preset: on this 2-core machine the CPU plugin aborts bigger 8-device programs
        // when its collective rendezvous waits more than 40 s for device threads.
        let c = ModelConfig::load("tiny")?;
        let o = opts(&c, 64, 1, basic::ir::RematPolicy::None);
        let rules = Rules::find("data_model")?;
        for mesh in [
            "data=1,model=1",
            "data=8,model=1",
            "data=1,model=8",
            "data=2,model=4",
        ] {
            let layout = Layout {
                mesh: Mesh::parse(mesh)?,
                rules: rules.clone(),
                partitioner: Partitioner::Shardy,
            };
            let (p, secs, values) = compile(&rt, &c, &o, &layout)?;
            let t = time_steps(&p, &c, &o, &values, 3)?;
            let s = p.memory_stats()?;
            println!(
                "{{\"section\": \"mesh\", \"model\": \"tiny\", \"batch\": 64, \"mesh\": \"{mesh}\", \"compile_s\": {secs:.3}, \"step_s_median\": {t:.4}, \"argument_bytes\": {}, \"temp_bytes\": {}, \"peak_bytes\": {}}}",
                s.argument_bytes, s.temp_bytes, s.peak_bytes
            );
        }
    }
    Ok(())
}
