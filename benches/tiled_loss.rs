//! CPU speed of the tiled contrastive loss against the whole-batch loss, at batches where both
//! fit: the loss of `N` normalised embedding pairs (`E` wide) and its gradients with respect to
//! both embeddings and the scale (and the sigmoid loss's bias), one device. The whole-batch loss
//! is differentiated by basic's autodiff; the tiled one is `model::tiled::loss_and_grads` with
//! `BASIC_BLOCK` rows and columns a tile. Both programs take the same inputs; runs alternate
//! between them, and each figure is a median. One JSON line per (loss, N).
//!
//! Environment: `BASIC_SIZES` (default `2048,4096,8192`), `BASIC_WIDTH` (512), `BASIC_BLOCK`
//! (1024), `BASIC_RUNS` (7).

use std::time::Instant;

use basic::dtype::DType;
use basic::model::config::LossKind;
use basic::model::{dual, tiled};
use basic::runtime::{Backend, CompileOptions, Executable, HostArray, Runtime};
use basic::trace::Builder;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// The loss program: `(img, txt, scale[, bias]) → (loss, d_img, d_txt, d_scale[, d_bias])`.
fn program(kind: LossKind, n: i64, e: i64, block: i64) -> basic::Result<String> {
    let b = Builder::new(&format!("loss_{n}_{block}"));
    let img = b.parameter("img", DType::F32, &[n, e])?;
    let txt = b.parameter("txt", DType::F32, &[n, e])?;
    let scale = b.parameter("scale", DType::F32, &[])?;
    let bias = match kind {
        LossKind::Sigmoid => Some(b.parameter("bias", DType::F32, &[])?),
        _ => None,
    };
    if block == 0 {
        let loss = dual::loss(&img, &txt, &scale, bias.as_ref(), kind)?;
        let mut wrt = vec![img.clone(), txt.clone(), scale.clone()];
        wrt.extend(bias.clone());
        let grads = basic::autodiff::grad(&loss, &wrt)?;
        b.output("loss", &loss)?;
        for (i, g) in grads.iter().enumerate() {
            b.output(&format!("d{i}"), g)?;
        }
    } else {
        let g = tiled::loss_and_grads(&img, &txt, &scale, bias.as_ref(), kind, block, None)?;
        b.output("loss", &g.loss)?;
        b.output("d0", &g.d_img)?;
        b.output("d1", &g.d_txt)?;
        b.output("d2", &g.d_scale)?;
        if let Some(d) = &g.d_bias {
            b.output("d3", d)?;
        }
    }
    basic::lower::module(&b.finish(), &Default::default())
}

/// `n` rows of unit length, `e` wide, from a fixed generator.
fn embeddings(n: i64, e: i64, seed: u64) -> HostArray {
    let mut r = basic::train::init::SplitMix(seed);
    let mut v: Vec<f32> = (0..n * e).map(|_| r.normal() as f32).collect();
    for row in v.chunks_mut(e as usize) {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        row.iter_mut().for_each(|x| *x /= norm);
    }
    HostArray::new(&[n, e], &v).expect("embeddings")
}

fn seconds(exe: &Executable, args: &[HostArray]) -> f64 {
    let t = Instant::now();
    exe.run(args).expect("the loss runs");
    t.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> basic::Result<()> {
    basic::runtime::host::use_huge_pages();
    let sizes: Vec<i64> = env("BASIC_SIZES", "2048,4096,8192")
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let e: i64 = env("BASIC_WIDTH", "512").parse().unwrap_or(512);
    let block: i64 = env("BASIC_BLOCK", "1024").parse().unwrap_or(1024);
    let runs: usize = env("BASIC_RUNS", "7").parse().unwrap_or(7);
    let rt = Runtime::open(&Backend::Cpu, Some(1))?;
    for kind in [LossKind::Softmax, LossKind::Sigmoid] {
        for &n in &sizes {
            let compile = |block: i64| -> basic::Result<Executable> {
                rt.client()
                    .compile(&program(kind, n, e, block)?, &CompileOptions::single())
            };
            let (whole, tiles) = (compile(0)?, compile(block.min(n))?);
            let mut args = vec![
                embeddings(n, e, 1),
                embeddings(n, e, 2),
                HostArray::new(&[], &[10.0f32])?,
            ];
            if kind == LossKind::Sigmoid {
                args.push(HostArray::new(&[], &[-10.0f32])?);
            }
            // Warm-up, and the two agree.
            let (a, b) = (whole.run(&args)?, tiles.run(&args)?);
            let (la, lb) = (a[0].to_f64_vec()[0], b[0].to_f64_vec()[0]);
            assert!((la - lb).abs() <= 1e-4 * la.abs().max(1.0), "{la} vs {lb}");
            let (mut tw, mut tt) = (Vec::new(), Vec::new());
            for _ in 0..runs {
                tw.push(seconds(&whole, &args));
                tt.push(seconds(&tiles, &args));
            }
            let (w, t) = (median(tw), median(tt));
            let temp = |x: &Executable| x.memory_stats().map(|m| m.temp_bytes).unwrap_or(-1);
            println!(
                "{}",
                serde_json::json!({
                    "loss": format!("{kind:?}").to_lowercase(), "batch": n, "width": e,
                    "block": block.min(n), "whole_seconds": w, "tiled_seconds": t,
                    "tiled_over_whole": t / w,
                    "whole_temp_bytes": temp(&whole), "tiled_temp_bytes": temp(&tiles),
                })
            );
        }
    }
    Ok(())
}
