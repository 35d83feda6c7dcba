//! BASIC's step: gradient accumulation gives the full-batch gradient, the gradient agrees with
//! finite differences, and the embedding program agrees with the loss.

mod common;

use basic::dtype::DType;
use basic::model::inference::embed_graph;
use basic::model::{dual, Modality, ModelConfig, Scope, Tower};
use basic::runtime::HostArray;
use basic::train::{grad_graph, init, StepOptions};
use common::{assert_close, check_directional, compile_graph, f64_step, random_batch};

fn tiny() -> ModelConfig {
    common::tiny_for_parity()
}

fn run_grads(
    c: &ModelConfig,
    o: &StepOptions,
    params: &[HostArray],
    images: &HostArray,
    tokens: &HostArray,
) -> Vec<HostArray> {
    let (g, _) = grad_graph(c, o).unwrap();
    let exe = compile_graph(&g);
    let mut args = params.to_vec();
    args.push(images.clone());
    args.push(tokens.clone());
    exe.run(&args).unwrap()
}

#[test]
fn microbatching_gives_the_full_batch_gradient() {
    let c = tiny();
    let n = 8;
    let specs = dual::specs(&c).unwrap();
    let params = init::init_params(&specs, 3, DType::F64).unwrap();
    let (images, tokens) = random_batch(&c, n, 11);
    let full = run_grads(&c, &f64_step(n, 1), &params, &images, &tokens);
    for m in [4, n] {
        let acc = run_grads(&c, &f64_step(n, m), &params, &images, &tokens);
        assert_eq!(acc.len(), full.len());
        for (i, (a, b)) in acc.iter().zip(&full).enumerate() {
            let (a, b) = (a.to_f64_vec(), b.to_f64_vec());
            let scale = b.iter().fold(0f64, |s, x| s.max(x.abs())).max(1e-30);
            for (x, y) in a.iter().zip(&b) {
                assert!(
                    (x - y).abs() <= 1e-10 * scale.max(1.0),
                    "M = {m}, output {i}: {x} vs {y}"
                );
            }
        }
    }
}

#[test]
fn step_gradient_matches_a_directional_finite_difference() {
    let c = tiny();
    let n = 4;
    let o = f64_step(n, 2);
    let specs = dual::specs(&c).unwrap();
    let params = init::init_params(&specs, 5, DType::F64).unwrap();
    let (images, tokens) = random_batch(&c, n, 13);
    let grads = run_grads(&c, &o, &params, &images, &tokens);
    let (g, _) = grad_graph(&c, &o).unwrap();
    let exe = compile_graph(&g);
    check_directional(&params, &grads[1..], 99, |ps| {
        let mut args = ps.to_vec();
        args.push(images.clone());
        args.push(tokens.clone());
        exe.run(&args).unwrap()[0].to_f64_vec()[0]
    });
}

#[test]
fn loss_from_embeddings_equals_the_step_loss() {
    let c = tiny();
    let n = 6;
    let specs = dual::specs(&c).unwrap();
    let params = init::init_params(&specs, 8, DType::F64).unwrap();
    let (images, tokens) = random_batch(&c, n, 17);
    let loss = run_grads(&c, &f64_step(n, 1), &params, &images, &tokens)[0].to_f64_vec()[0];
    let g = embed_graph(&c, n, DType::F64, DType::F64).unwrap();
    let mut args = params.clone();
    args.push(images);
    args.push(tokens);
    let out = compile_graph(&g).run(&args).unwrap();
    let (x, y, s) = (
        out[0].to_f64_vec(),
        out[1].to_f64_vec(),
        out[2].to_f64_vec()[0],
    );
    let e = c.embed_dim as usize;
    let nn = n as usize;
    // Embeddings are unit vectors.
    for i in 0..nn {
        let norm: f64 = x[i * e..(i + 1) * e].iter().map(|v| v * v).sum();
        assert!((norm - 1.0).abs() < 1e-12);
    }
    // L = ½ (CE(S, I) + CE(Sᵀ, I)), S_ij = s · x_i · y_j, computed here by the formula.
    let sim = |i: usize, j: usize| s * (0..e).map(|k| x[i * e + k] * y[j * e + k]).sum::<f64>();
    let mut total = 0.0;
    for i in 0..nn {
        let row: Vec<f64> = (0..nn).map(|j| sim(i, j)).collect();
        let col: Vec<f64> = (0..nn).map(|j| sim(j, i)).collect();
        let lse = |v: &[f64]| {
            let m = v.iter().cloned().fold(f64::MIN, f64::max);
            m + v.iter().map(|a| (a - m).exp()).sum::<f64>().ln()
        };
        total += (lse(&row) - row[i]) + (lse(&col) - col[i]);
    }
    let want = total / (2.0 * nn as f64);
    assert_close(&[loss], &[want], 1e-12);
    assert_close(&[s], &[1.0 / c.temperature.init], 1e-12);
}

#[test]
fn sigmoid_loss_matches_its_formula_and_finite_differences() {
    let mut c = tiny();
    c.loss = basic::model::config::LossKind::Sigmoid;
    let n = 6;
    let specs = dual::specs(&c).unwrap();
    let mut params = init::init_params(&specs, 8, DType::F64).unwrap();
    // A bias near the logits' range, so that both label signs matter.
    let bi = specs.iter().position(|s| s.name == "logit_bias").unwrap();
    params[bi] = HostArray::scalar(-1.5f64);
    let (images, tokens) = random_batch(&c, n, 17);
    let grads = run_grads(&c, &f64_step(n, 2), &params, &images, &tokens);
    let loss = grads[0].to_f64_vec()[0];
    let g = embed_graph(&c, n, DType::F64, DType::F64).unwrap();
    let mut args = params.clone();
    args.push(images.clone());
    args.push(tokens.clone());
    let out = compile_graph(&g).run(&args).unwrap();
    let (x, y, s) = (
        out[0].to_f64_vec(),
        out[1].to_f64_vec(),
        out[2].to_f64_vec()[0],
    );
    let (e, nn) = (c.embed_dim as usize, n as usize);
    // L = -1/N Σ_ij log σ(z_ij (s · x_i · y_j + b)), z = +1 on the diagonal, -1 elsewhere.
    let mut total = 0.0;
    for i in 0..nn {
        for j in 0..nn {
            let l = s * (0..e).map(|k| x[i * e + k] * y[j * e + k]).sum::<f64>() - 1.5;
            let z = if i == j { 1.0 } else { -1.0 };
            total -= (1.0 / (1.0 + (-z * l).exp())).ln();
        }
    }
    assert_close(&[loss], &[total / nn as f64], 1e-12);
    check_directional(&params, &grads[1..], 31, |ps| {
        run_grads(&c, &f64_step(n, 2), ps, &images, &tokens)[0].to_f64_vec()[0]
    });
}

#[test]
fn remat_policies_give_the_same_step_gradients_and_less_temporary_memory() {
    let c = tiny();
    let n = 6;
    let specs = dual::specs(&c).unwrap();
    let params = init::init_params(&specs, 12, DType::F64).unwrap();
    let (images, tokens) = random_batch(&c, n, 19);
    let base = run_grads(&c, &f64_step(n, 2), &params, &images, &tokens);
    for policy in [
        basic::ir::RematPolicy::NothingSaveable,
        basic::ir::RematPolicy::DotsSaveable,
    ] {
        let o = StepOptions {
            remat: policy.clone(),
            ..f64_step(n, 2)
        };
        let got = run_grads(&c, &o, &params, &images, &tokens);
        // Equal to the last bits or so: inside the accumulation loops XLA may fuse the replayed
        // block differently from the original (the 12-layer stack test checks bitwise equality).
        for (i, (a, b)) in got.iter().zip(&base).enumerate() {
            for (x, y) in a.to_f64_vec().iter().zip(b.to_f64_vec()) {
                assert!(
                    (x - y).abs() <= 1e-12 * (1.0 + y.abs()),
                    "{policy:?}: output {i}: {x} vs {y}"
                );
            }
        }
    }
    // Temporary memory of the f32 step at a larger batch, from XLA's statistics.
    let temp = |remat: basic::ir::RematPolicy| {
        let mut c = ModelConfig::load("tiny").unwrap();
        c.text.depth = 4;
        if let basic::model::config::ImageConfig::Vit(v) = &mut c.image {
            v.depth = 4;
        }
        let o = StepOptions {
            batch: 64,
            microbatches: 1,
            remat,
            param_dtype: DType::F32,
            compute_dtype: DType::F32,
            frozen: vec![],
            loss_block: 0,
            ring: None,
            image_bytes: false,
        };
        let (g, _) = grad_graph(&c, &o).unwrap();
        compile_graph(&g).memory_stats().unwrap().temp_bytes
    };
    let (none, nothing) = (
        temp(basic::ir::RematPolicy::None),
        temp(basic::ir::RematPolicy::NothingSaveable),
    );
    assert!(
        (nothing as f64) < 0.6 * none as f64,
        "nothing_saveable {nothing} vs none {none}"
    );
}

#[test]
fn dropout_and_stochastic_depth_draw_the_same_masks_in_both_passes() {
    let mut c = tiny();
    c.train.dropout = 0.2;
    c.train.drop_path = 0.2;
    let n = 4;
    let o = f64_step(n, 2);
    let specs = dual::specs(&c).unwrap();
    let params = init::init_params(&specs, 21, DType::F64).unwrap();
    let (images, tokens) = random_batch(&c, n, 23);
    let (g, _) = grad_graph(&c, &o).unwrap();
    assert_eq!(g.params.last().unwrap().0, "rng");
    let exe = compile_graph(&g);
    let run = |ps: &[HostArray], key: [u64; 2]| {
        let mut args = ps.to_vec();
        args.push(images.clone());
        args.push(tokens.clone());
        args.push(HostArray::new(&[2], &key).unwrap());
        exe.run(&args).unwrap()
    };
    let key = [7u64, 3];
    let grads = run(&params, key);
    // The noise is live: another key gives another loss.
    let other = run(&params, [8, 3])[0].to_f64_vec()[0];
    assert!((other - grads[0].to_f64_vec()[0]).abs() > 1e-6);
    // The gradient of pass 3 is that of the loss computed from pass 1's embeddings only if both
    // passes drew the same masks: check it against a directional finite difference.
    check_directional(&params, &grads[1..], 77, |ps| {
        run(ps, key)[0].to_f64_vec()[0]
    });
}

#[test]
fn a_bert_text_tower_draws_the_same_dropout_masks_in_both_passes() {
    let mut c = tiny();
    c.text.kind = basic::model::config::TextKind::Bert;
    c.text.max_positions = 8;
    c.train.dropout = 0.2;
    c.train.drop_path = 0.1;
    c.validate("bert test config").unwrap();
    let n = 4;
    let specs = dual::specs(&c).unwrap();
    assert!(specs
        .iter()
        .any(|s| s.name.starts_with("text/bert/encoder.layer.1.")));
    let params = init::init_params(&specs, 41, DType::F64).unwrap();
    let (images, tokens) = random_batch(&c, n, 43);
    let (g, _) = grad_graph(&c, &f64_step(n, 2)).unwrap();
    let exe = compile_graph(&g);
    let run = |ps: &[HostArray], key: [u64; 2]| {
        let mut args = ps.to_vec();
        args.push(images.clone());
        args.push(tokens.clone());
        args.push(HostArray::new(&[2], &key).unwrap());
        exe.run(&args).unwrap()
    };
    // The BERT tower itself draws masks: its features depend on the key.
    let features = |noisy: bool, key: [u64; 2]| {
        let b = basic::trace::Builder::new("bert_features");
        let p = basic::model::Params::declare(&b, &specs, DType::F64).unwrap();
        let t = b
            .parameter("tokens", DType::S32, &[n, c.text.length])
            .unwrap();
        let k = b.parameter("key", DType::U64, &[2]).unwrap();
        let noise = basic::model::noise::Noise {
            key: k,
            dropout: 0.2,
            drop_path: 0.1,
        };
        let tower = Tower::of(&c, DType::F64).with_noise(noisy.then_some(&noise));
        let f = dual::text_features(&t, &Scope::bound(&p), &c, &tower).unwrap();
        b.output("f", &f).unwrap();
        let mut args = params.clone();
        args.push(tokens.clone());
        args.push(HostArray::new(&[2], &key).unwrap());
        compile_graph(&b.finish()).run(&args).unwrap()[0].to_f64_vec()
    };
    assert_ne!(features(true, [1, 2]), features(true, [5, 2]));
    assert_eq!(features(false, [1, 2]), features(false, [5, 2]));
    let grads = run(&params, [3, 9]);
    let other = run(&params, [4, 9])[0].to_f64_vec()[0];
    assert!(
        (other - grads[0].to_f64_vec()[0]).abs() > 1e-6,
        "the noise is live"
    );
    check_directional(&params, &grads[1..], 47, |ps| {
        run(ps, [3, 9])[0].to_f64_vec()[0]
    });
}

#[test]
fn locked_towers_run_without_dropout() {
    let loss = |lock: &[Modality], key: [u64; 2]| {
        let mut c = tiny();
        c.train.dropout = 0.3;
        c.train.drop_path = 0.2;
        c.train.lock = lock.to_vec();
        let o = StepOptions {
            frozen: dual::locked(&dual::specs(&c).unwrap(), &c.train.lock),
            ..f64_step(4, 2)
        };
        let specs = dual::specs(&c).unwrap();
        let params = init::init_params(&specs, 51, DType::F64).unwrap();
        let (images, tokens) = random_batch(&c, 4, 53);
        let (g, _) = grad_graph(&c, &o).unwrap();
        let mut args = params;
        args.push(images);
        args.push(tokens);
        args.push(HostArray::new(&[2], &key).unwrap());
        compile_graph(&g).run(&args).unwrap()[0].to_f64_vec()[0]
    };
    // Both towers locked (LiT's frozen feature extractors): the key changes nothing.
    assert_eq!(
        loss(&[Modality::Image, Modality::Text], [1, 1]),
        loss(&[Modality::Image, Modality::Text], [2, 1])
    );
    // One tower learning: its dropout is live.
    assert_ne!(
        loss(&[Modality::Text], [1, 1]),
        loss(&[Modality::Text], [2, 1])
    );
    assert_ne!(
        loss(&[Modality::Image], [1, 1]),
        loss(&[Modality::Image], [2, 1])
    );
}

#[test]
fn byte_images_normalised_on_the_device_give_the_float_images_gradient() {
    // f64 throughout: u8 pixels normalised in the step equal the same pixels normalised on the
    // host, (x / 255 − mean) / std per channel, to the last bits.
    let mut c = tiny();
    c.train.mean = vec![0.48, 0.46, 0.41];
    c.train.std = vec![0.27, 0.26, 0.28];
    let n = 4;
    let specs = dual::specs(&c).unwrap();
    let params = init::init_params(&specs, 3, DType::F64).unwrap();
    let (images, tokens) = random_batch(&c, n, 19);
    let px: Vec<u8> = images
        .to_f64_vec()
        .iter()
        .map(|x| ((x + 1.0) * 127.5).round() as u8)
        .collect();
    let bytes = HostArray::from_bytes(DType::U8, images.shape(), px.clone()).unwrap();
    let ch = c.image.channels() as usize;
    let floats: Vec<f64> = px
        .iter()
        .enumerate()
        .map(|(i, &p)| {
            let k = i % ch;
            let (m, s) = (c.train.mean[k] as f32 as f64, c.train.std[k] as f32 as f64);
            (f64::from(p) / 255.0 - m) / s
        })
        .collect();
    let floats = HostArray::new(images.shape(), &floats).unwrap();
    let want = run_grads(&c, &f64_step(n, 2), &params, &floats, &tokens);
    let o = StepOptions {
        image_bytes: true,
        ..f64_step(n, 2)
    };
    let got = run_grads(&c, &o, &params, &bytes, &tokens);
    assert_eq!(got.len(), want.len());
    for (a, b) in got.iter().zip(&want) {
        assert_close(&a.to_f64_vec(), &b.to_f64_vec(), 1e-12);
    }
    // The program takes u8: a quarter of the bytes of f32 images, an eighth of f64.
    let (g, _) = grad_graph(&c, &o).unwrap();
    let at = g.params.iter().position(|(n, _)| n == "images").unwrap();
    assert_eq!(g.ty(g.params[at].1).dtype, DType::U8);
}
