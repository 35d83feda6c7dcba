//! CoAtNet as the papers build it: the tower, with and without the normalisation inside its
//! convolutions (`conv_norm`) and with a stage of mixed block types, equals an independent f64
//! reference written from the paper's block equations and MBConv's layer order; its step's
//! gradient agrees with finite differences; micro-batches stay independent; the presets have the
//! papers' parameter counts; and a checkpoint of the layout without the inner norms loads with
//! `conv_norm = "none"` and is refused, naming that option, without it.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use basic::dtype::DType;
use basic::io::safetensors;
use basic::model::config::{
    CoatnetConfig, CoatnetStage, ConvNorm, ImageConfig, ModelConfig, StageKind,
};
use basic::model::{coatnet, dual, trace_specs, ParamSpec, Params, Scope, Tower};
use basic::runtime::HostArray;
use basic::trace::Builder;
use basic::train::{grad_graph, init};
use common::{check_directional, compile_graph, f64_step, random_batch, tmp, Rng};

fn stage(kind: StageKind, depth: i64, width: i64, heads: i64, downsample: bool) -> CoatnetStage {
    CoatnetStage {
        kind,
        depth,
        width,
        heads,
        downsample,
    }
}

/// Every entry a block can have, on 8×8 images: the stem (4×4), an MBConv stage that
/// downsamples (2×2), an MBConv and a transformer stage that keep the resolution and widen (as
/// CoAtNet-6/7's S3), and a transformer stage that downsamples (1×1).
fn tower(conv_norm: ConvNorm) -> CoatnetConfig {
    use StageKind::{Mbconv, Transformer};
    CoatnetConfig {
        image_size: 8,
        channels: 3,
        stem_width: 4,
        expansion: 2,
        conv_norm,
        stages: vec![
            stage(Mbconv, 2, 6, 0, true),
            stage(Mbconv, 1, 8, 0, false),
            stage(Transformer, 2, 12, 2, false),
            stage(Transformer, 1, 16, 2, true),
        ],
    }
}

/// The tiny preset with [`tower`] as its image tower and a small text tower.
fn model(conv_norm: ConvNorm) -> ModelConfig {
    let mut c = ModelConfig::load("tiny").unwrap();
    c.image = ImageConfig::Coatnet(tower(conv_norm));
    c.text.width = 8;
    c.text.mlp = 16;
    c.text.heads = 2;
    c.text.vocab = 30;
    c.text.length = 5;
    c.text.depth = 1;
    c.embed_dim = 6;
    c.validate("coatnet test config").unwrap();
    c
}

/// The tower's parameters (under `image/`) and random values for them: norm scales near 1,
/// everything else (biases and relative-bias tables included) uniform in ±0.5.
fn tower_params(c: &CoatnetConfig, seed: u64) -> (Vec<ParamSpec>, Vec<HostArray>) {
    let n = c.image_size;
    let specs = trace_specs("tower", DType::F64, |b, s| {
        let images = b.parameter("images", DType::F64, &[1, n, n, c.channels])?;
        coatnet::apply(&images, &s.sub("image"), c, &Tower::new(DType::F64))?;
        Ok(())
    })
    .unwrap();
    let mut r = Rng(seed);
    let values = specs
        .iter()
        .map(|s| {
            let a = r.array(&s.shape, -0.5, 0.5);
            if s.name.ends_with("/scale") {
                let v: Vec<f64> = a.to_f64_vec().iter().map(|x| 1.0 + 0.6 * x).collect();
                HostArray::new(&s.shape, &v).unwrap()
            } else {
                a
            }
        })
        .collect();
    (specs, values)
}

/// basic's tower features `[B, width]` of `images`.
fn features(
    c: &CoatnetConfig,
    specs: &[ParamSpec],
    values: &[HostArray],
    images: &HostArray,
) -> Vec<f64> {
    let b = Builder::new("features");
    let p = Params::declare(&b, specs, DType::F64).unwrap();
    let x = b.parameter("images", DType::F64, images.shape()).unwrap();
    let f = coatnet::apply(
        &x,
        &Scope::bound(&p).sub("image"),
        c,
        &Tower::new(DType::F64),
    )
    .unwrap();
    b.output("features", &f).unwrap();
    let mut args = values.to_vec();
    args.push(images.clone());
    compile_graph(&b.finish()).run(&args).unwrap()[0].to_f64_vec()
}

/// An independent host implementation of the tower in f64, one example at a time, from the
/// paper's equations (pre-norm blocks, Eq. 4's pooled attention, relative bias
/// `P[i−i', j−j']` per head) and MBConv's order (1×1 expand, norm, GELU, 3×3 depthwise, norm,
/// GELU, squeeze-excitation, 1×1 project).
mod reference {
    use super::*;

    /// One example's feature map, `[h, w, c]` row-major.
    #[derive(Clone)]
    pub struct Map {
        pub h: usize,
        pub w: usize,
        pub c: usize,
        pub v: Vec<f64>,
    }

    impl Map {
        fn at(&self, y: usize, x: usize, k: usize) -> f64 {
            self.v[(y * self.w + x) * self.c + k]
        }
        fn map_positions(&self, c: usize, f: impl Fn(&[f64]) -> Vec<f64>) -> Map {
            let v = self.v.chunks(self.c).flat_map(f).collect();
            Map { c, v, ..*self }
        }
    }

    pub struct Weights<'a>(pub &'a BTreeMap<String, Vec<f64>>);

    impl Weights<'_> {
        fn get(&self, n: &str) -> &[f64] {
            self.0.get(n).unwrap_or_else(|| panic!("no parameter {n}"))
        }
    }

    fn gelu(x: f64) -> f64 {
        let k = (2.0 / std::f64::consts::PI).sqrt();
        0.5 * x * (1.0 + (k * (x + 0.044715 * x * x * x)).tanh())
    }

    fn dense(x: &[f64], w: &Weights, s: &str) -> Vec<f64> {
        let (k, b) = (w.get(&format!("{s}/kernel")), w.get(&format!("{s}/bias")));
        let dout = b.len();
        (0..dout)
            .map(|o| {
                b[o] + x
                    .iter()
                    .enumerate()
                    .map(|(i, xi)| xi * k[i * dout + o])
                    .sum::<f64>()
            })
            .collect()
    }

    fn layer_norm(x: &[f64], w: &Weights, s: &str) -> Vec<f64> {
        let (g, b) = (w.get(&format!("{s}/scale")), w.get(&format!("{s}/bias")));
        let n = x.len() as f64;
        let mean = x.iter().sum::<f64>() / n;
        let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        let r = 1.0 / (var + 1e-6).sqrt();
        x.iter()
            .enumerate()
            .map(|(i, v)| (v - mean) * r * g[i] + b[i])
            .collect()
    }

    fn conv(x: &Map, w: &Weights, s: &str, dout: usize, stride: usize, groups: usize) -> Map {
        let (k, b) = (w.get(&format!("{s}/kernel")), w.get(&format!("{s}/bias")));
        let (cin_g, dout_g) = (x.c / groups, dout / groups);
        let (oh, ow) = (x.h.div_ceil(stride), x.w.div_ceil(stride));
        // `same` padding: the excess split with the smaller half first.
        let pad = |n: usize, o: usize| (((o - 1) * stride + 3).saturating_sub(n) / 2) as i64;
        let (py, px) = (pad(x.h, oh), pad(x.w, ow));
        let mut v = vec![0.0; oh * ow * dout];
        for oy in 0..oh {
            for ox in 0..ow {
                for o in 0..dout {
                    let g = o / dout_g;
                    let mut acc = b[o];
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let y = (oy * stride + ky) as i64 - py;
                            let xx = (ox * stride + kx) as i64 - px;
                            if y < 0 || xx < 0 || y >= x.h as i64 || xx >= x.w as i64 {
                                continue;
                            }
                            for i in 0..cin_g {
                                let kw = k[((ky * 3 + kx) * cin_g + i) * dout + o];
                                acc += kw * x.at(y as usize, xx as usize, g * cin_g + i);
                            }
                        }
                    }
                    v[(oy * ow + ox) * dout + o] = acc;
                }
            }
        }
        Map {
            h: oh,
            w: ow,
            c: dout,
            v,
        }
    }

    fn pool(x: &Map) -> Map {
        let (h, w) = (x.h / 2, x.w / 2);
        let mut v = Vec::with_capacity(h * w * x.c);
        for y in 0..h {
            for xx in 0..w {
                for k in 0..x.c {
                    let m = [(0, 0), (0, 1), (1, 0), (1, 1)]
                        .iter()
                        .map(|(dy, dx)| x.at(2 * y + dy, 2 * xx + dx, k))
                        .fold(f64::NEG_INFINITY, f64::max);
                    v.push(m);
                }
            }
        }
        Map { h, w, c: x.c, v }
    }

    fn mean(x: &Map) -> Vec<f64> {
        let n = (x.h * x.w) as f64;
        (0..x.c)
            .map(|k| x.v.chunks(x.c).map(|p| p[k]).sum::<f64>() / n)
            .collect()
    }

    fn add(a: &Map, b: &Map) -> Map {
        let v = a.v.iter().zip(&b.v).map(|(x, y)| x + y).collect();
        Map { v, ..*a }
    }

    /// The shortcut of a stage's first block: pooled and projected when it downsamples,
    /// projected when it widens, else the input.
    fn shortcut(x: &Map, w: &Weights, s: &str, d: usize, first: bool, down: bool) -> Map {
        let s = format!("{s}/shortcut");
        match (first && down, first && x.c != d) {
            (true, _) => pool(x).map_positions(d, |p| dense(p, w, &s)),
            (false, true) => x.map_positions(d, |p| dense(p, w, &s)),
            _ => x.clone(),
        }
    }

    fn mbconv(
        x: &Map,
        w: &Weights,
        s: &str,
        st: &CoatnetStage,
        e: usize,
        norm: bool,
        first: bool,
    ) -> Map {
        let (d, down) = (st.width as usize, first && st.downsample);
        let inner = |m: Map, n: &str| -> Map {
            let c = m.c;
            m.map_positions(c, |p| {
                let p = if norm {
                    layer_norm(p, w, &format!("{s}/{n}"))
                } else {
                    p.to_vec()
                };
                p.into_iter().map(gelu).collect()
            })
        };
        let short = shortcut(x, w, s, d, first, st.downsample);
        let h = x.map_positions(x.c, |p| layer_norm(p, w, &format!("{s}/ln")));
        let h = inner(
            h.map_positions(e, |p| dense(p, w, &format!("{s}/expand"))),
            "expand_norm",
        );
        let h = conv(
            &h,
            w,
            &format!("{s}/depthwise"),
            e,
            if down { 2 } else { 1 },
            e,
        );
        let h = inner(h, "depthwise_norm");
        let g = dense(&mean(&h), w, &format!("{s}/se/reduce"));
        let g: Vec<f64> = g.into_iter().map(gelu).collect();
        let g = dense(&g, w, &format!("{s}/se/expand"));
        let g: Vec<f64> = g.into_iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect();
        let h = h.map_positions(e, |p| p.iter().zip(&g).map(|(a, b)| a * b).collect());
        let h = h.map_positions(d, |p| dense(p, w, &format!("{s}/project")));
        add(&short, &h)
    }

    fn attention(h: &Map, w: &Weights, s: &str, d: usize, heads: usize) -> Map {
        let (side, n, dh) = (h.h, h.h * h.w, d / heads);
        let qkv: Vec<Vec<f64>> =
            h.v.chunks(h.c)
                .map(|p| dense(p, w, &format!("{s}/qkv")))
                .collect();
        let table = w.get(&format!("{s}/rel_bias"));
        // qkv of position i: [3, heads, dh].
        let part = |i: usize, which: usize, hd: usize| &qkv[i][(which * heads + hd) * dh..][..dh];
        let mut merged = vec![0.0; n * d];
        for hd in 0..heads {
            for i in 0..n {
                let scores: Vec<f64> = (0..n)
                    .map(|j| {
                        let dot: f64 = part(i, 0, hd)
                            .iter()
                            .zip(part(j, 1, hd))
                            .map(|(a, b)| a * b)
                            .sum();
                        let (yi, xi, yj, xj) = (i / side, i % side, j / side, j % side);
                        let r = (yi + side - 1 - yj) * (2 * side - 1) + (xi + side - 1 - xj);
                        dot / (dh as f64).sqrt() + table[r * heads + hd]
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|v| (v - m).exp()).sum();
                for (j, sc) in scores.iter().enumerate() {
                    let a = (sc - m).exp() / z;
                    for k in 0..dh {
                        merged[i * d + hd * dh + k] += a * part(j, 2, hd)[k];
                    }
                }
            }
        }
        let out = Map {
            h: h.h,
            w: h.w,
            c: d,
            v: merged,
        };
        out.map_positions(d, |p| dense(p, w, &format!("{s}/out")))
    }

    fn transformer(x: &Map, w: &Weights, s: &str, st: &CoatnetStage, first: bool) -> Map {
        let (d, down) = (st.width as usize, first && st.downsample);
        let short = shortcut(x, w, s, d, first, st.downsample);
        let h = x.map_positions(x.c, |p| layer_norm(p, w, &format!("{s}/ln1")));
        let h = if down { pool(&h) } else { h };
        let x = add(
            &short,
            &attention(&h, w, &format!("{s}/attn"), d, st.heads as usize),
        );
        let h = x.map_positions(d, |p| {
            let h = dense(
                &layer_norm(p, w, &format!("{s}/ln2")),
                w,
                &format!("{s}/mlp/in"),
            );
            let h: Vec<f64> = h.into_iter().map(gelu).collect();
            dense(&h, w, &format!("{s}/mlp/out"))
        });
        add(&x, &h)
    }

    /// The features of one image `[H, W, C]`.
    pub fn features(c: &CoatnetConfig, w: &Weights, image: Map) -> Vec<f64> {
        let sw = c.stem_width as usize;
        let x = conv(&image, w, "image/stem/conv1", sw, 2, 1);
        let x = x.map_positions(sw, |p| {
            let p = match c.conv_norm {
                ConvNorm::Layer => layer_norm(p, w, "image/stem/conv1_norm"),
                ConvNorm::None => p.to_vec(),
            };
            p.into_iter().map(gelu).collect()
        });
        let mut x = conv(&x, w, "image/stem/conv2", sw, 1, 1);
        let norm = c.conv_norm == ConvNorm::Layer;
        for (si, st) in c.stages.iter().enumerate() {
            for bi in 0..st.depth as usize {
                let s = format!("image/stages/{si}/blocks/{bi}");
                let e = (st.width * c.expansion) as usize;
                x = match st.kind {
                    StageKind::Mbconv => mbconv(&x, w, &s, st, e, norm, bi == 0),
                    StageKind::Transformer => transformer(&x, w, &s, st, bi == 0),
                };
            }
        }
        layer_norm(&mean(&x), w, "image/ln")
    }
}

#[test]
fn the_tower_equals_an_independent_reference_with_and_without_inner_norms() {
    for norm in [ConvNorm::Layer, ConvNorm::None] {
        let c = tower(norm);
        let (specs, values) = tower_params(&c, 3);
        let n = c.image_size as usize;
        let images = Rng(5).array(&[2, n as i64, n as i64, 3], -1.0, 1.0);
        let got = features(&c, &specs, &values, &images);
        let named: BTreeMap<String, Vec<f64>> = specs
            .iter()
            .zip(&values)
            .map(|(s, v)| (s.name.clone(), v.to_f64_vec()))
            .collect();
        assert_eq!(
            named
                .keys()
                .filter(|k| basic::model::names::is_conv_norm(k))
                .count(),
            if norm == ConvNorm::Layer {
                2 + 4 * 3
            } else {
                0
            },
            "the stem's norm and two per MBConv block, each a scale and a bias"
        );
        let w = reference::Weights(&named);
        let pixels = images.to_f64_vec();
        let width = got.len() / 2;
        for (i, px) in pixels.chunks(n * n * 3).enumerate() {
            let map = reference::Map {
                h: n,
                w: n,
                c: 3,
                v: px.to_vec(),
            };
            let want = reference::features(&c, &w, map);
            assert_eq!(want.len(), width);
            for (k, (a, b)) in got[i * width..][..width].iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-10 * (1.0 + b.abs()),
                    "{norm:?} image {i} feature {k}: {a} vs {b}"
                );
            }
        }
    }
}

/// The inner norms change the function: the same shared weights give other features without
/// them (so the reference test above could not pass with the norms misplaced or absent).
#[test]
fn the_inner_norms_change_the_function() {
    let with = tower(ConvNorm::Layer);
    let (specs, values) = tower_params(&with, 3);
    let images = Rng(5).array(&[1, 8, 8, 3], -1.0, 1.0);
    let a = features(&with, &specs, &values, &images);
    let without = tower(ConvNorm::None);
    let (specs_n, _) = tower_params(&without, 3);
    let by_name: BTreeMap<&str, &HostArray> =
        specs.iter().map(|s| s.name.as_str()).zip(&values).collect();
    let values_n: Vec<HostArray> = specs_n
        .iter()
        .map(|s| by_name[s.name.as_str()].clone())
        .collect();
    let b = features(&without, &specs_n, &values_n, &images);
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    assert!(diff > 1e-3, "features differ by at most {diff}");
}

/// Each example's features depend on that example alone: changing the other examples of the
/// batch changes none of its features (batch statistics would).
#[test]
fn an_examples_features_do_not_depend_on_its_batch() {
    let c = tower(ConvNorm::Layer);
    let (specs, values) = tower_params(&c, 7);
    let a = Rng(1).array(&[4, 8, 8, 3], -1.0, 1.0);
    let mut v = a.to_f64_vec();
    let half = v.len() / 2;
    for (i, x) in v[half..].iter_mut().enumerate() {
        *x = 2.0 * (i as f64).sin();
    }
    let b = HostArray::new(&[4, 8, 8, 3], &v).unwrap();
    let (fa, fb) = (
        features(&c, &specs, &values, &a),
        features(&c, &specs, &values, &b),
    );
    let half = fa.len() / 2;
    assert_eq!(fa[..half], fb[..half]);
    assert_ne!(fa[half..], fb[half..]);
}

/// BASIC's accumulated step (2, 4 and 8 micro-batches) gives the plain step's loss and gradients
/// in f64 with the inner norms and the mixed stage.
#[test]
fn microbatching_gives_the_full_batch_gradient_with_inner_norms() {
    let c = model(ConvNorm::Layer);
    let n = 8;
    let specs = dual::specs(&c).unwrap();
    let params = init::init_params(&specs, 3, DType::F64).unwrap();
    let (images, tokens) = random_batch(&c, n, 11);
    let run = |m: i64| {
        let (g, _) = grad_graph(&c, &f64_step(n, m)).unwrap();
        let mut args = params.clone();
        args.push(images.clone());
        args.push(tokens.clone());
        compile_graph(&g).run(&args).unwrap()
    };
    let full = run(1);
    for m in [2, 4, n] {
        for (i, (a, b)) in run(m).iter().zip(&full).enumerate() {
            let (a, b) = (a.to_f64_vec(), b.to_f64_vec());
            let scale = b.iter().fold(1f64, |s, x| s.max(x.abs()));
            for (x, y) in a.iter().zip(&b) {
                assert!(
                    (x - y).abs() <= 1e-10 * scale,
                    "M = {m}, output {i}: {x} vs {y}"
                );
            }
        }
    }
}

/// The step's gradient through the tower (inner norms, mixed stage, unrolled and scanned)
/// agrees with a directional finite difference in f64.
#[test]
fn the_step_gradient_through_the_tower_matches_finite_differences() {
    for scan in [false, true] {
        let c = ModelConfig {
            scan_layers: scan,
            ..model(ConvNorm::Layer)
        };
        let n = 4;
        let o = f64_step(n, 2);
        let specs = dual::specs(&c).unwrap();
        let params = init::init_params(&specs, 5, DType::F64).unwrap();
        let (images, tokens) = random_batch(&c, n, 13);
        let (g, _) = grad_graph(&c, &o).unwrap();
        let exe = compile_graph(&g);
        let run = |ps: &[HostArray]| {
            let mut args = ps.to_vec();
            args.push(images.clone());
            args.push(tokens.clone());
            exe.run(&args).unwrap()
        };
        let grads = run(&params);
        // Every inner norm gets a gradient.
        for (s, gr) in specs.iter().zip(&grads[1..]) {
            if basic::model::names::is_conv_norm(&s.name) {
                assert!(
                    gr.to_f64_vec().iter().any(|v| v.abs() > 1e-12),
                    "{} has no gradient",
                    s.name
                );
            }
        }
        check_directional(&params, &grads[1..], 23, |ps| run(ps)[0].to_f64_vec()[0]);
    }
}

/// Weights of the image tower without its projection, plus the 1000-way ImageNet classifier
/// the papers count: a pre-logits layer of the final width, then the logits. With that head
/// the paper's figures of CoAtNet-0, -1, -2, -4 and -7 are matched to the digits they print.
fn paper_count(c: &ModelConfig) -> i64 {
    let tower: i64 = dual::specs(c)
        .unwrap()
        .iter()
        .filter(|s| s.name.starts_with("image/") && !s.name.starts_with("image/proj/"))
        .map(|s| s.element_count())
        .sum();
    let d = dual::image_width(c);
    tower + d * d + d + d * 1000 + 1000
}

#[test]
fn presets_have_the_papers_parameter_counts() {
    let count = |n: &str| ModelConfig::load(n).unwrap();
    // CoAtNet-0 (Table 4: 25M) and CoAtNet-7 (Table 5: 2.44B), to the digits printed.
    let s = paper_count(&count("basic-s"));
    assert!((24_500_000..25_500_000).contains(&s), "basic-s: {s}");
    let l = paper_count(&count("basic-l"));
    assert!((2_435_000_000..2_445_000_000).contains(&l), "basic-l: {l}");
    // CoAtNet-3 (Table 4: 168M) counts 166.8M this way, 0.7% less; CoAtNet-4, of the same
    // widths and deeper, counts 275.3M against the paper's 275M.
    let m = paper_count(&count("basic-m"));
    assert!((m as f64 / 168e6 - 1.0).abs() < 0.01, "basic-m: {m}");
    // BASIC-L has "3B weights" (the BASIC paper's abstract).
    let total: i64 = dual::specs(&count("basic-l"))
        .unwrap()
        .iter()
        .map(|s| s.element_count())
        .sum();
    assert!(
        (2_500_000_000..3_500_000_000).contains(&total),
        "basic-l: {total}"
    );
}

/// Basic-l's S3 is two stages at one resolution: 8 MBConv blocks of 1024, then 42 transformer
/// blocks of 2048 whose first block widens without pooling; scanned, each keeps its first block
/// apart and stacks the rest.
#[test]
fn basic_l_writes_the_mixed_stage_as_two_stages() {
    let c = ModelConfig::load("basic-l").unwrap();
    let ImageConfig::Coatnet(cn) = &c.image else {
        panic!("basic-l has a CoAtNet image tower")
    };
    assert_eq!(cn.downsamplings(), 5);
    assert!(!cn.stages[3].downsample);
    let specs = dual::specs(&c).unwrap();
    let shape = |n: &str| {
        specs
            .iter()
            .find(|s| s.name == n)
            .unwrap_or_else(|| panic!("no {n}"))
            .shape
            .clone()
    };
    // The widening block's shortcut and attention take the MBConv part's 1024 channels.
    assert_eq!(
        shape("image/stages/3/blocks/0/shortcut/kernel"),
        [1024, 2048]
    );
    assert_eq!(
        shape("image/stages/3/blocks/0/attn/qkv/kernel"),
        [1024, 3 * 2048]
    );
    // 14×14 positions at S3 (224 / 16): a (2·14 − 1)² table per head, 16 heads of 128.
    assert_eq!(
        shape("image/stages/3/blocks/0/attn/rel_bias"),
        [27 * 27, 16]
    );
    assert_eq!(
        shape("image/stages/3/layers/attn/qkv/kernel"),
        [41, 2048, 3 * 2048]
    );
    assert_eq!(shape("image/stages/2/layers/expand_norm/scale"), [7, 4096]);
    assert_eq!(
        shape("image/stages/4/layers/attn/rel_bias"),
        [1, 13 * 13, 24]
    );
}

fn write_params(path: &Path, c: &ModelConfig, seed: u64) -> (Vec<ParamSpec>, Vec<HostArray>) {
    let specs = dual::specs(c).unwrap();
    let values = init::init_params(&specs, seed, DType::F32).unwrap();
    let named: Vec<(String, &HostArray)> =
        specs.iter().map(|s| s.name.clone()).zip(&values).collect();
    safetensors::write(path, &named, &BTreeMap::new()).unwrap();
    (specs, values)
}

/// A checkpoint of the layout without inner norms (parameter names and shapes of basic before
/// `conv_norm`) loads with `conv_norm = "none"`, and without it is one error naming the option;
/// the other way round likewise. Scanned layers, so stacked norm parameters are missing too.
#[test]
fn an_old_layout_checkpoint_loads_with_conv_norm_none_and_is_refused_naming_it_without() {
    let dir = tmp("coatnet-old-layout");
    let scanned = |n| ModelConfig {
        scan_layers: true,
        ..model(n)
    };
    let (old, new) = (scanned(ConvNorm::None), scanned(ConvNorm::Layer));
    let path = dir.join("old.safetensors");
    let (old_specs, old_values) = write_params(&path, &old, 1);
    assert!(!old_specs
        .iter()
        .any(|s| basic::model::names::is_conv_norm(&s.name)));
    let load = |c: &ModelConfig| {
        let specs = dual::specs(c).unwrap();
        safetensors::match_params(
            &path,
            &safetensors::read_params(&path, c).unwrap(),
            &specs,
            DType::F32,
        )
    };
    let got = load(&old).unwrap();
    assert_eq!(got.len(), old_values.len());
    for (a, b) in got.iter().zip(&old_values) {
        assert_eq!(a.to_f64_vec(), b.to_f64_vec());
    }
    let e = load(&new).unwrap_err().to_string();
    assert!(
        e.contains("conv_norm = \"none\"") && e.contains("image/stages/0/layers/expand_norm/scale"),
        "{e}"
    );
    // A checkpoint with the inner norms, loaded by a model without them.
    let path2 = dir.join("new.safetensors");
    write_params(&path2, &new, 2);
    let specs = dual::specs(&old).unwrap();
    let e = safetensors::match_params(
        &path2,
        &safetensors::read_params(&path2, &old).unwrap(),
        &specs,
        DType::F32,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("conv_norm = \"layer\""), "{e}");

    // A run folder of the old layout: its config.toml has no `conv_norm` (it did not exist), so
    // it now reads as the default and the checkpoint is refused naming the option; adding
    // `conv_norm = "none"` under [image] loads it.
    let run = dir.join("run");
    std::fs::create_dir_all(run.join("checkpoints")).unwrap();
    write_params(&run.join("checkpoints/step-0000010.safetensors"), &old, 1);
    let text = toml::to_string(&old).unwrap();
    assert!(text.contains("conv_norm = \"none\""), "{text}");
    let without = text.replace("conv_norm = \"none\"\n", "");
    let parsed = ModelConfig::parse(&without, "old config.toml").unwrap();
    let ImageConfig::Coatnet(cn) = &parsed.image else {
        panic!("a CoAtNet config")
    };
    assert_eq!(cn.conv_norm, ConvNorm::Layer, "the default");
    let e = basic::train::run::load_run_params(&run, &parsed)
        .unwrap_err()
        .to_string();
    assert!(e.contains("conv_norm = \"none\""), "{e}");
    let parsed = ModelConfig::parse(&text, "config.toml").unwrap();
    let got = basic::train::run::load_run_params(&run, &parsed).unwrap();
    assert_eq!(got.len(), old_values.len());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Config mistakes of the stage list are one error naming the field.
#[test]
fn stage_list_mistakes_name_the_field() {
    let bad = |f: &dyn Fn(&mut CoatnetConfig)| {
        let mut c = model(ConvNorm::Layer);
        let ImageConfig::Coatnet(cn) = &mut c.image else {
            unreachable!()
        };
        f(cn);
        c.validate("test").unwrap_err().to_string()
    };
    // Three downsampling stages need the size to divide by 16.
    let e = bad(&|c| c.stages[1].downsample = true);
    assert!(
        e.contains("image_size = 8") && e.contains("downsample"),
        "{e}"
    );
    let e = bad(&|c| c.stages[2].depth = 0);
    assert!(e.contains("stages[2]") && e.contains("depth 0"), "{e}");
    let e = bad(&|c| c.stages[2].heads = 5);
    assert!(e.contains("stages[2]") && e.contains("5 heads"), "{e}");
    let text = "name = \"x\"\nembed_dim = 4\n[image]\nkind = \"coatnet\"\nimage_size = 8\nchannels = 3\nstem_width = 4\nconv_norm = \"batch\"\nstages = [{ kind = \"mbconv\", depth = 1, width = 4 }]\n[text]\nvocab = 10\nlength = 4\nwidth = 4\ndepth = 1\nheads = 1\nmlp = 8\n";
    let e = ModelConfig::parse(text, "cfg.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("batch") && e.contains("layer"), "{e}");
}
