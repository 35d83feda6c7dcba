//! Scanned layers (`scan_layers = true`): a tower's identical blocks as one loop over stacked
//! parameters give the same loss, gradients and optimizer steps as the unrolled blocks, for the
//! ViT + text model and for CoAtNet; and the CoAtNet step's gradient (with dropout and
//! stochastic depth drawn inside the loops) agrees with finite differences.

mod common;

use std::collections::BTreeMap;

use basic::dtype::DType;
use basic::model::config::{
    CoatnetConfig, CoatnetStage, ConvNorm, ImageConfig, OptimizerKind, StageKind,
};
use basic::model::inference::batch_shapes;
use basic::model::params::{layer_name, stack_layers, unstack_layers};
use basic::model::{dual, ModelConfig, ParamSpec, Params, Scope, Tower};
use basic::runtime::HostArray;
use basic::trace::Builder;
use basic::train::{grad_graph, init, train_graph};
use common::{check_directional, compile_graph, f64_step, random_batch, Rng};

/// The tiny preset, smaller still, with 3-layer towers.
fn vit() -> ModelConfig {
    let mut c = ModelConfig::load("tiny").unwrap();
    if let ImageConfig::Vit(v) = &mut c.image {
        v.width = 16;
        v.mlp = 32;
        v.heads = 2;
        v.depth = 3;
    }
    c.text.width = 16;
    c.text.mlp = 32;
    c.text.heads = 2;
    c.text.vocab = 50;
    c.text.length = 6;
    c.text.depth = 3;
    c.embed_dim = 8;
    c
}

/// A CoAtNet of every stage kind on 16×16 images: stem 8×8, an MBConv stage of 2 blocks (4×4),
/// a transformer stage of 3 blocks (2×2), and one of 2 blocks that keeps the resolution and
/// widens (a stage of mixed block types, as CoAtNet-6/7's S3), with the inner norms.
fn coatnet() -> ModelConfig {
    let mut c = vit();
    let stage = |kind, depth, width, heads, downsample| CoatnetStage {
        kind,
        depth,
        width,
        heads,
        downsample,
    };
    c.image = ImageConfig::Coatnet(CoatnetConfig {
        image_size: 16,
        channels: 3,
        stem_width: 4,
        expansion: 2,
        conv_norm: ConvNorm::Layer,
        stages: vec![
            stage(StageKind::Mbconv, 2, 8, 0, true),
            stage(StageKind::Transformer, 3, 8, 2, true),
            stage(StageKind::Transformer, 2, 12, 2, false),
        ],
    });
    c.validate("coatnet test config").unwrap();
    c
}

fn scanned(c: &ModelConfig) -> ModelConfig {
    ModelConfig {
        scan_layers: true,
        ..c.clone()
    }
}

fn by_name(specs: &[ParamSpec], values: &[HostArray]) -> BTreeMap<String, HostArray> {
    specs
        .iter()
        .map(|s| s.name.clone())
        .zip(values.iter().cloned())
        .collect()
}

fn assert_same(what: &str, got: &HostArray, want: &HostArray) {
    assert_eq!(got.shape(), want.shape(), "{what}");
    let (a, b) = (got.to_f64_vec(), want.to_f64_vec());
    let scale = b.iter().fold(1f64, |s, x| s.max(x.abs()));
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-10 * scale, "{what}: {x} vs {y}");
    }
}

#[test]
fn stacked_names_map_to_their_layers() {
    assert_eq!(
        layer_name("text/layers/attn/qkv/kernel", 2).as_deref(),
        Some("text/blocks/2/attn/qkv/kernel")
    );
    assert_eq!(
        layer_name("image/stages/3/layers/mlp/in/bias", 0).as_deref(),
        Some("image/stages/3/blocks/1/mlp/in/bias")
    );
    assert_eq!(layer_name("text/pos", 0), None);
    // Stacked specs: a leading layers axis, per-layer weight decay.
    let c = scanned(&coatnet());
    let specs = dual::specs(&c).unwrap();
    let qkv = specs
        .iter()
        .find(|s| s.name == "image/stages/1/layers/attn/qkv/kernel")
        .unwrap();
    assert_eq!(qkv.shape, vec![2, 8, 24]);
    assert!(qkv.is_stacked() && !qkv.no_decay);
    // The widening stage keeps its first block apart ([8, 36]: from the previous width) and
    // stacks the second; the inner norms stack with their MBConv blocks and are not decayed.
    let shape = |n: &str| specs.iter().find(|s| s.name == n).unwrap().clone();
    assert_eq!(
        shape("image/stages/2/blocks/0/attn/qkv/kernel").shape,
        vec![8, 36]
    );
    assert_eq!(
        shape("image/stages/2/layers/attn/qkv/kernel").shape,
        vec![1, 12, 36]
    );
    let n = shape("image/stages/0/layers/depthwise_norm/scale");
    assert_eq!(n.shape, vec![1, 16]);
    assert!(n.no_decay);
    assert_eq!(
        layer_name(&n.name, 0).as_deref(),
        Some("image/stages/0/blocks/1/depthwise_norm/scale")
    );
    let bias = specs
        .iter()
        .find(|s| s.name == "text/layers/mlp/in/bias")
        .unwrap();
    assert_eq!(bias.shape, vec![3, 32]);
    assert!(bias.no_decay, "a stacked bias is still a bias");
    // The same number of weights either way.
    let count = |c: &ModelConfig| -> i64 {
        dual::specs(c)
            .unwrap()
            .iter()
            .map(|s| s.element_count())
            .sum()
    };
    assert_eq!(count(&c), count(&coatnet()));
    assert_eq!(count(&scanned(&vit())), count(&vit()));
}

/// Runs the whole model (both embeddings, the logit scale) on parameters declared from `specs`.
fn trace_model(c: &ModelConfig, specs: &[ParamSpec]) -> basic::Result<()> {
    let b = Builder::new("bound");
    let p = Params::declare(&b, specs, DType::F32)?;
    let (is, ts) = batch_shapes(c, 2);
    let images = b.parameter("images", DType::F32, &is)?;
    let tokens = b.parameter("tokens", DType::S32, &ts)?;
    let (s, t) = (Scope::bound(&p), Tower::of(c, DType::F32));
    dual::embed_images(&images, &s, c, &t)?;
    dual::embed_texts(&tokens, &s, c, &t)?;
    dual::logit_scale(&s, c)?;
    Ok(())
}

/// The towers use every traced spec, each with its traced shape: a graph whose parameters lack
/// one, or give one another shape, is an error naming it, unrolled and scanned alike.
#[test]
fn a_parameter_missing_from_the_specs_or_misshaped_is_an_error_naming_it() {
    for c in [vit(), scanned(&vit()), coatnet(), scanned(&coatnet())] {
        let specs = dual::specs(&c).unwrap();
        trace_model(&c, &specs).unwrap();
        for i in 0..specs.len() {
            let name = format!("`{}`", specs[i].name);
            let mut missing = specs.clone();
            missing.remove(i);
            let e = trace_model(&c, &missing).unwrap_err().to_string();
            assert!(e.contains(&name), "without {name}: {e}");
            let mut misshaped = specs.clone();
            misshaped[i].shape.push(1);
            let e = trace_model(&c, &misshaped).unwrap_err().to_string();
            assert!(
                e.contains(&name) && e.contains("shape"),
                "misshaped {name}: {e}"
            );
        }
    }
}

/// Loss and every gradient, unrolled vs scanned, with two micro-batches (so the scans run
/// inside BASIC's accumulation loops).
fn check_grads_match(c: &ModelConfig) {
    let s = scanned(c);
    let (n, o) = (4, f64_step(4, 2));
    let specs = dual::specs(c).unwrap();
    let sspecs = dual::specs(&s).unwrap();
    assert_ne!(
        specs.len(),
        sspecs.len(),
        "the scanned model stacks its layers"
    );
    let params = init::init_params(&specs, 5, DType::F64).unwrap();
    let sparams = stack_layers(&sspecs, &by_name(&specs, &params)).unwrap();
    let (images, tokens) = random_batch(c, n, 9);
    let run = |c: &ModelConfig, ps: &[HostArray]| {
        let (g, _) = grad_graph(c, &o).unwrap();
        let mut args = ps.to_vec();
        args.push(images.clone());
        args.push(tokens.clone());
        compile_graph(&g).run(&args).unwrap()
    };
    let want = run(c, &params);
    let got = run(&s, &sparams);
    assert_same("loss", &got[0], &want[0]);
    let got = unstack_layers(&sspecs, &got[1..]).unwrap();
    assert_eq!(got.len(), specs.len());
    for (spec, w) in specs.iter().zip(&want[1..]) {
        assert_same(&spec.name, &got[&spec.name], w);
    }
}

#[test]
fn scanned_vit_and_text_towers_give_the_unrolled_gradients() {
    check_grads_match(&vit());
}

#[test]
fn scanned_coatnet_stages_give_the_unrolled_gradients() {
    check_grads_match(&coatnet());
}

#[test]
fn a_scanned_adafactor_step_equals_the_unrolled_one() {
    // AdaFactorW factors, clips and decays each layer of a stacked parameter on its own.
    let mut c = coatnet();
    c.train.optimizer = OptimizerKind::Adafactorw;
    c.train.momentum = true;
    c.train.update_clip = 1.0;
    c.train.weight_decay = 0.1;
    c.train.learning_rate = 0.05;
    c.train.warmup_steps = 1;
    let s = scanned(&c);
    let o = f64_step(4, 2);
    let (images, tokens) = random_batch(&c, 4, 13);
    let step = |c: &ModelConfig, ps: &[HostArray], state: &[HostArray]| {
        let (g, specs, sspecs) = train_graph(c, &o).unwrap();
        assert_eq!(ps.len(), specs.len());
        assert_eq!(state.len(), sspecs.len());
        let mut args = ps.to_vec();
        args.extend(state.iter().cloned());
        args.push(HostArray::scalar(0i32));
        args.push(images.clone());
        args.push(tokens.clone());
        compile_graph(&g).run(&args).unwrap()
    };
    let (_, specs, sspecs) = train_graph(&c, &o).unwrap();
    let (_, specs_s, sspecs_s) = train_graph(&s, &o).unwrap();
    let params = init::init_params(&specs, 7, DType::F64).unwrap();
    // A non-zero state so that the factored moments matter.
    let mut r = Rng(3);
    let state: Vec<HostArray> = sspecs
        .iter()
        .map(|s| r.array(&s.shape, 0.0, 1e-3))
        .collect();
    let want = step(&c, &params, &state);
    let got = step(
        &s,
        &stack_layers(&specs_s, &by_name(&specs, &params)).unwrap(),
        &stack_layers(&sspecs_s, &by_name(&sspecs, &state)).unwrap(),
    );
    let np = specs.len();
    let (nps, nss) = (specs_s.len(), sspecs_s.len());
    let got_p = unstack_layers(&specs_s, &got[..nps]).unwrap();
    for (spec, w) in specs.iter().zip(&want[..np]) {
        assert_same(&spec.name, &got_p[&spec.name], w);
    }
    let got_s = unstack_layers(&sspecs_s, &got[nps..nps + nss]).unwrap();
    for (spec, w) in sspecs.iter().zip(&want[np..np + sspecs.len()]) {
        assert_same(&spec.name, &got_s[&spec.name], w);
    }
    // Loss, grad norm, learning rate, temperature.
    for k in 0..4 {
        assert_same(
            "scalar output",
            &got[nps + nss + k],
            &want[np + sspecs.len() + k],
        );
    }
}

#[test]
fn scanned_coatnet_step_with_noise_matches_a_directional_finite_difference() {
    let mut c = scanned(&coatnet());
    c.train.dropout = 0.2;
    c.train.drop_path = 0.2;
    let n = 4;
    let specs = dual::specs(&c).unwrap();
    let params = init::init_params(&specs, 17, DType::F64).unwrap();
    let (images, tokens) = random_batch(&c, n, 19);
    let (g, _) = grad_graph(&c, &f64_step(n, 2)).unwrap();
    let exe = compile_graph(&g);
    let run = |ps: &[HostArray], key: [u64; 2]| {
        let mut args = ps.to_vec();
        args.push(images.clone());
        args.push(tokens.clone());
        args.push(HostArray::new(&[2], &key).unwrap());
        exe.run(&args).unwrap()
    };
    let grads = run(&params, [5, 1]);
    // The noise is live inside the loops: another key gives another loss.
    let other = run(&params, [6, 1])[0].to_f64_vec()[0];
    assert!((other - grads[0].to_f64_vec()[0]).abs() > 1e-6);
    // Passes 1 and 3 drew the same masks in every layer, or this would fail.
    check_directional(&params, &grads[1..], 29, |ps| {
        run(ps, [5, 1])[0].to_f64_vec()[0]
    });
}
