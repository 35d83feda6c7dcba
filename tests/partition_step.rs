//! The sharded step equals the single-device step, for every preset of `partitioning/` and both
//! partitioners, on 8 virtual CPU devices; weights split 8 ways take an eighth of the memory;
//! every sharding mistake is an error before compiling.

mod common;

use basic::dtype::DType;
use basic::exec::ShardedProgram;
use basic::model::config::ImageConfig;
use basic::model::{dual, ModelConfig};
use basic::partition::{Mesh, Rules};
use basic::runtime::{CompileOptions, HostArray, Partitioner, Runtime};
use basic::train::{grad_graph, init, Layout, StepOptions};
use common::{cpu_runtime, Rng};

fn model() -> ModelConfig {
    let mut c = ModelConfig::load("tiny").unwrap();
    if let ImageConfig::Vit(v) = &mut c.image {
        v.width = 32;
        v.mlp = 64;
    }
    c.text.width = 32;
    c.text.mlp = 64;
    c.text.vocab = 64;
    c.text.length = 8;
    c.embed_dim = 16;
    c
}

fn batch(c: &ModelConfig, n: i64, dtype: DType) -> (HostArray, HostArray) {
    let mut r = Rng(21);
    let s = c.image.image_size();
    let img: Vec<f64> = (0..n * s * s).map(|_| r.uniform(-1.0, 1.0)).collect();
    let images = init::to_dtype(&[n, s, s, 1], &img, dtype).unwrap();
    let toks: Vec<i32> = (0..n * c.text.length)
        .map(|i| {
            if i % c.text.length < 5 {
                1 + (r.next_u64() % 63) as i32
            } else {
                0
            }
        })
        .collect();
    (images, HostArray::new(&[n, c.text.length], &toks).unwrap())
}

fn opts(dtype: DType, m: i64) -> StepOptions {
    StepOptions {
        batch: 16,
        microbatches: m,
        remat: basic::ir::RematPolicy::None,
        param_dtype: dtype,
        compute_dtype: dtype,
        frozen: vec![],
        loss_block: 0,
        ring: None,
        image_bytes: false,
    }
}

fn run(
    rt: &Runtime,
    layout: &Layout,
    c: &ModelConfig,
    o: &StepOptions,
    args: &[HostArray],
) -> Vec<HostArray> {
    let (g, specs) = grad_graph(c, o).unwrap();
    let (a, r) = layout.specs(&g, &specs).unwrap();
    let p = ShardedProgram::compile(rt.client(), &g, &layout.context(), a, r)
        .unwrap_or_else(|e| panic!("{}: {e}", layout.mesh));
    p.run_host(args).unwrap()
}

#[test]
fn sharded_steps_equal_the_single_device_step() {
    let rt = cpu_runtime(8);
    let c = model();
    for (dtype, tol) in [(DType::F64, 1e-10), (DType::F32, 1e-5)] {
        // M = 2 also exercises the accumulation loops under sharding.
        let o = opts(dtype, 2);
        let specs = dual::specs(&c).unwrap();
        let mut args = init::init_params(&specs, 4, dtype).unwrap();
        let (images, tokens) = batch(&c, 16, dtype);
        args.push(images);
        args.push(tokens);
        let want = run(&rt, &Layout::single(), &c, &o, &args);
        for preset in ["data_parallel", "fsdp", "model_parallel", "data_model"] {
            for partitioner in [Partitioner::Shardy, Partitioner::Gspmd] {
                let rules = Rules::find(preset).unwrap();
                let layout = Layout {
                    mesh: rules.default_mesh.clone().unwrap(),
                    rules,
                    partitioner,
                };
                let got = run(&rt, &layout, &c, &o, &args);
                assert_eq!(got.len(), want.len());
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    let (a, b) = (a.to_f64_vec(), b.to_f64_vec());
                    let scale = b.iter().fold(0f64, |s, x| s.max(x.abs()));
                    for (x, y) in a.iter().zip(&b) {
                        assert!(
                            (x - y).abs() <= tol * scale.max(1e-3),
                            "{preset} {partitioner:?} {dtype}: output {i}: {x} vs {y} (scale {scale})"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn weights_split_eight_ways_take_an_eighth_per_device() {
    let rt = cpu_runtime(8);
    let c = model();
    let o = opts(DType::F32, 1);
    let (g, specs) = grad_graph(&c, &o).unwrap();
    let rules = Rules::parse(
        "[[params]]\npattern = \".*\"\nlargest = [\"model\"]\n",
        "test",
    )
    .unwrap();
    let layout = Layout {
        mesh: Mesh::parse("model=8").unwrap(),
        rules,
        partitioner: Partitioner::Shardy,
    };
    let (a, r) = layout.specs(&g, &specs).unwrap();
    let p = ShardedProgram::compile(rt.client(), &g, &layout.context(), a, r).unwrap();
    let m = p.memory_stats().unwrap();
    let total: i64 = specs.iter().map(|s| s.element_count() * 4).sum();
    // The batch is not split here: every device holds all of it.
    let s = c.image.image_size();
    let batch_bytes = 16 * s * s * 4 + 16 * c.text.length * 4;
    let weights = m.argument_bytes - batch_bytes;
    assert!(
        (weights as f64) <= 1.15 * total as f64 / 8.0,
        "weights per device {weights} B vs total {total} B / 8 = {}",
        total / 8
    );
}

#[test]
fn the_global_batch_logits_stay_split_over_the_data_axis() {
    // At a batch of 2,048 in 16 micro-batches the N × N logits (16 MiB in f32) outweigh
    // everything else the step holds; on 8 data-parallel devices each must hold only its rows.
    let rt = cpu_runtime(8);
    let c = model();
    let n = 2048;
    let o = StepOptions {
        batch: n,
        ..opts(DType::F32, 16)
    };
    let (g, specs) = grad_graph(&c, &o).unwrap();
    let temp = |mesh: &str| {
        let layout = Layout {
            mesh: Mesh::parse(mesh).unwrap(),
            rules: Rules::data_parallel(),
            partitioner: Partitioner::Shardy,
        };
        let (a, r) = layout.specs(&g, &specs).unwrap();
        let p = ShardedProgram::compile(rt.client(), &g, &layout.context(), a, r).unwrap();
        p.memory_stats().unwrap().temp_bytes
    };
    let full = n * n * 4;
    let one = temp("data=1");
    assert!(
        one >= full,
        "one device holds the whole logits: {one} B vs {full} B"
    );
    let eight = temp("data=8");
    assert!(
        eight < full,
        "per-device temp {eight} B: a whole {n} × {n} f32 array ({full} B) is replicated"
    );
}

#[test]
fn sharding_mistakes_are_named_before_compiling() {
    let rt = cpu_runtime(8);
    let c = model();
    let o = opts(DType::F32, 1);
    let (g, specs) = grad_graph(&c, &o).unwrap();
    let layout = |mesh: &str, rules: &str| Layout {
        mesh: Mesh::parse(mesh).unwrap(),
        rules: Rules::parse(rules, "test").unwrap(),
        partitioner: Partitioner::Shardy,
    };
    let compile = |l: &Layout| -> basic::Result<ShardedProgram> {
        let (a, r) = l.specs(&g, &specs)?;
        ShardedProgram::compile(rt.client(), &g, &l.context(), a, r)
    };
    // An axis the mesh does not have.
    let e = compile(&layout("data=8", "[logical]\nbatch = [\"dta\"]\n"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("`dta`") && e.contains("logical axis `batch`"),
        "{e}"
    );
    // A dimension that does not divide: 8 pairs over 16... use model=8 on a width-3 dimension.
    let e = compile(&layout(
        "model=8",
        "[[params]]\npattern = \"image/pos\"\nspec = [[\"model\"], []]\n",
    ))
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("image/pos") && e.contains("dimension 0 of size 17") && e.contains("model"),
        "{e}"
    );
    // A mesh larger than the devices.
    let e = compile(&layout("data=16", "[logical]\nbatch = [\"data\"]\n"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("needs 16 devices") && e.contains("has 8"), "{e}");
    // Conflicting rules: two dimensions of one tensor on the same mesh axis.
    let e = compile(&layout(
        "model=8",
        "[logical]\nembed = [\"model\"]\nheads = [\"model\"]\n",
    ))
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("conflicting") && e.contains("qkv/kernel"), "{e}");
    // A bad rule file.
    let e = Rules::parse("[[params]]\npattern = \"(\"\nspec = []\n", "bad.toml")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("bad.toml") && e.contains("regular expression"),
        "{e}"
    );
    // And a good one still compiles afterwards.
    let ok = compile(&layout("data=8", "[logical]\nbatch = [\"data\"]\n"));
    assert!(ok.is_ok());
    let _ = CompileOptions::single();
}
