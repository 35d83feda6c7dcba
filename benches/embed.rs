//! Image-embedding throughput: the image tower and projection of a model (a preset, or an
//! imported `hf:DIR` / `open_clip:DIR` checkpoint's architecture) at a fixed batch, parameters
//! on the device, median over timed runs. One JSON line; `benches/embed_throughput.py` runs it
//! beside open_clip on PyTorch.
//!
//! Environment: `BASIC_MODEL` (default `vit-b16`), `BASIC_BATCH` (8), `BASIC_RUNS` (5),
//! `BASIC_DTYPE` (`f32` or `bf16`: the parameters', images' and compute dtype),
//! `BASIC_PJRT_PLUGIN` (the CPU plugin).

use std::time::Instant;

use basic::dtype::DType;
use basic::exec::{Sharded, ShardedProgram};
use basic::model::inference::{batch_shapes, image_embed_graph};
use basic::runtime::Runtime;
use basic::train::{init, Layout};

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn main() -> basic::Result<()> {
    // As the `basic` command does: glibc's huge-page tunable for the plugin's buffers.
    basic::runtime::host::use_huge_pages();
    let model = env("BASIC_MODEL", "vit-b16");
    let batch: i64 = env("BASIC_BATCH", "8").parse().unwrap_or(8);
    let runs: usize = env("BASIC_RUNS", "5").parse().unwrap_or(5);
    let dtype = match env("BASIC_DTYPE", "f32").as_str() {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        other => {
            return Err(basic::Error::invalid(
                format!("BASIC_DTYPE={other}"),
                "use f32 or bf16",
            ))
        }
    };
    let c = match basic::io::interop::parse_model(&model)? {
        Some(f) => f.config,
        None => basic::model::ModelConfig::load(&model)?,
    };
    let rt = Runtime::open(&basic::runtime::Backend::from_flag_or_env(None), Some(1))?;
    let t0 = Instant::now();
    let g = image_embed_graph(&c, batch, dtype, dtype)?;
    let specs = basic::model::dual::specs(&c)?;
    let layout = Layout::single();
    let (a, r) = layout.specs(&g, &specs)?;
    let p = ShardedProgram::compile(rt.client(), &g, &layout.context(), a, r)?;
    let compile_s = t0.elapsed().as_secs_f64();
    let values = init::init_params(&specs, 1, dtype)?;
    let vals: Vec<Sharded> = values
        .iter()
        .enumerate()
        .map(|(i, v)| p.upload(i, v))
        .collect::<basic::Result<_>>()?;
    let (is, _) = batch_shapes(&c, batch);
    let mut rng = init::SplitMix(3);
    let img: Vec<f64> = (0..is.iter().product::<i64>())
        .map(|_| rng.normal())
        .collect();
    let images = p.upload(vals.len(), &basic::array::to_dtype(&is, &img, dtype)?)?;
    let mut times = Vec::new();
    for k in 0..runs + 1 {
        let t = Instant::now();
        let mut args: Vec<&Sharded> = vals.iter().collect();
        args.push(&images);
        let out = p.run(&args)?;
        let _ = p.gather(0, &out[0])?;
        if k > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times[times.len() / 2];
    println!(
        "{{\"impl\": \"basic\", \"model\": \"{model}\", \"batch\": {batch}, \"compile_s\": {compile_s:.3}, \"batch_s_median\": {median:.5}, \"images_per_s\": {:.2}}}",
        batch as f64 / median
    );
    Ok(())
}
