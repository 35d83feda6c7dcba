//! The tiled contrastive loss equals the whole-batch loss, loss and every parameter's gradient,
//! in f64 within 1e-12: both losses, blocks that do and do not divide a device's rows, on one
//! device and as a ring over `data=4` (both partitioners), with and without micro-batches.

mod common;

use basic::dtype::DType;
use basic::exec::ShardedProgram;
use basic::model::config::{ImageConfig, LossKind};
use basic::model::{dual, ModelConfig};
use basic::partition::Rules;
use basic::runtime::{HostArray, Partitioner, Runtime};
use basic::train::{grad_graph, init, Layout, StepOptions};
use common::{cpu_runtime, Rng};

const N: i64 = 16;

fn model(loss: LossKind) -> ModelConfig {
    let mut c = ModelConfig::load("tiny").unwrap();
    if let ImageConfig::Vit(v) = &mut c.image {
        v.width = 32;
        v.mlp = 64;
        v.depth = 1;
    }
    c.text.width = 32;
    c.text.mlp = 64;
    c.text.depth = 1;
    c.text.vocab = 64;
    c.text.length = 8;
    c.embed_dim = 16;
    c.loss = loss;
    // A temperature that is not at its clamp, so the scale's gradient is not zero.
    c.temperature.init = 0.5;
    c
}

fn args(c: &ModelConfig) -> Vec<HostArray> {
    let specs = dual::specs(c).unwrap();
    let mut a = init::init_params(&specs, 4, DType::F64).unwrap();
    let mut r = Rng(21);
    let s = c.image.image_size();
    let img: Vec<f64> = (0..N * s * s).map(|_| r.uniform(-1.0, 1.0)).collect();
    a.push(init::to_dtype(&[N, s, s, 1], &img, DType::F64).unwrap());
    let toks: Vec<i32> = (0..N * c.text.length)
        .map(|i| {
            if i % c.text.length < 5 {
                1 + (r.next_u64() % 63) as i32
            } else {
                0
            }
        })
        .collect();
    a.push(HostArray::new(&[N, c.text.length], &toks).unwrap());
    a
}

fn run(rt: &Runtime, layout: &Layout, c: &ModelConfig, m: i64, block: i64) -> Vec<HostArray> {
    let o = StepOptions {
        batch: N,
        microbatches: m,
        remat: basic::ir::RematPolicy::None,
        param_dtype: DType::F64,
        compute_dtype: DType::F64,
        frozen: vec![],
        loss_block: block,
        ring: if block > 0 {
            layout.ring().unwrap()
        } else {
            None
        },
        image_bytes: false,
    };
    let (g, specs) = grad_graph(c, &o).unwrap();
    let (a, r) = layout.specs(&g, &specs).unwrap();
    let p = ShardedProgram::compile(rt.client(), &g, &layout.context(), a, r)
        .unwrap_or_else(|e| panic!("{}: {e}", layout.mesh));
    p.run_host(&args(c)).unwrap()
}

fn layouts() -> Vec<(&'static str, Layout)> {
    let ring = |partitioner| {
        let rules = Rules::find("data_parallel").unwrap();
        Layout {
            mesh: basic::partition::Mesh::parse("data=4").unwrap(),
            rules,
            partitioner,
        }
    };
    vec![
        ("one device", Layout::single()),
        ("ring, shardy", ring(Partitioner::Shardy)),
        ("ring, gspmd", ring(Partitioner::Gspmd)),
    ]
}

#[test]
fn the_tiled_loss_equals_the_whole_batch_loss_and_gradients() {
    let rt = cpu_runtime(4);
    for loss in [LossKind::Softmax, LossKind::Sigmoid] {
        let c = model(loss);
        for (name, layout) in layouts() {
            let devices = layout.mesh.size();
            for m in [1, 2] {
                let want = run(&rt, &layout, &c, m, 0);
                // Rows per device per... a block that divides them and one that does not.
                let rows = N / devices;
                for block in [rows / 2, rows / 2 + 1, rows] {
                    let got = run(&rt, &layout, &c, m, block);
                    assert_eq!(got.len(), want.len());
                    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                        let (a, b) = (a.to_f64_vec(), b.to_f64_vec());
                        for (k, (x, y)) in a.iter().zip(&b).enumerate() {
                            assert!(
                                (x - y).abs() <= 1e-12 * (1.0 + y.abs()),
                                "{loss:?}, {name}, M = {m}, block {block}: output {i}[{k}]: tiled {x} vs whole {y}"
                            );
                        }
                    }
                }
            }
        }
    }
}

/// The tiled step's programs hold no `N × N` array: at a batch where the whole-batch loss's
/// logits dominate, the tiled step's temporaries are a fraction of them.
#[test]
fn the_tiled_step_holds_no_batch_squared_array() {
    let rt = cpu_runtime(1);
    let c = model(LossKind::Softmax);
    let n = 2048;
    let temp = |block: i64| {
        let o = StepOptions {
            batch: n,
            microbatches: 64,
            remat: basic::ir::RematPolicy::NothingSaveable,
            param_dtype: DType::F32,
            compute_dtype: DType::F32,
            frozen: vec![],
            loss_block: block,
            ring: None,
            image_bytes: false,
        };
        let (g, _) = grad_graph(&c, &o).unwrap();
        let text = basic::lower::module(&g, &Default::default()).unwrap();
        rt.client()
            .compile(&text, &basic::runtime::CompileOptions::single())
            .unwrap()
            .memory_stats()
            .unwrap()
            .temp_bytes
    };
    let (whole, tiled) = (temp(0), temp(128));
    let logits = n * n * 4;
    eprintln!("temporaries: whole-batch loss {whole} B, tiled {tiled} B (N×N f32 = {logits} B)");
    assert!(
        whole >= logits,
        "the whole-batch loss holds the logits: {whole} < {logits}"
    );
    assert!(tiled < logits / 4, "the tiled loss holds {tiled} B");
}
