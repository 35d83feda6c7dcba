//! A few optimizer steps of AdamW and AdaFactorW against a reference written here in plain Rust
//! from the update rules (Loshchilov & Hutter; Shazeer & Stern), in f64.

mod common;

use basic::dtype::DType;
use basic::model::config::{OptimizerKind, Schedule, TrainConfig};
use basic::model::{Init, ParamSpec};
use basic::runtime::{CompileOptions, HostArray};
use basic::trace::{Builder, Tensor};
use basic::train::optim::{state_specs, update};
use common::{assert_close, cpu_runtime, Rng};

fn cfg(kind: OptimizerKind) -> TrainConfig {
    TrainConfig {
        optimizer: kind,
        learning_rate: 0.1,
        warmup_steps: 2,
        total_steps: 10,
        schedule: Schedule::Cosine,
        weight_decay: 0.01,
        clip_norm: 0.5,
        momentum: true,
        update_clip: 1.0,
        ..TrainConfig::default()
    }
}

fn lr(step: f64, t: &TrainConfig) -> f64 {
    let w = t.warmup_steps as f64;
    let warm = ((step + 1.0) / w).min(1.0);
    let frac = ((step - w) / (t.total_steps as f64 - w)).clamp(0.0, 1.0);
    warm * 0.5 * (1.0 + (std::f64::consts::PI * frac).cos()) * t.learning_rate
}

/// The reference: params `[w: 2×3, b: 3]`, states in `state_specs` order, one step.
fn reference(t: &TrainConfig, p: &mut [Vec<f64>], g: &[Vec<f64>], s: &mut [Vec<f64>], step: f64) {
    let norm = g.iter().flatten().map(|x| x * x).sum::<f64>().sqrt();
    let c = (t.clip_norm / norm.max(1e-12)).min(1.0);
    let a = lr(step, t);
    let k = step + 1.0;
    let mut si = 0;
    for (pi, (param, grad)) in p.iter_mut().zip(g).enumerate() {
        let g: Vec<f64> = grad.iter().map(|x| x * c).collect();
        let decay = pi == 0; // the vector is rank 1: no weight decay
        let u: Vec<f64> = match t.optimizer {
            OptimizerKind::Adamw => {
                let (m, v) = (si, si + 1);
                si += 2;
                for i in 0..g.len() {
                    s[m][i] = t.beta1 * s[m][i] + (1.0 - t.beta1) * g[i];
                    s[v][i] = t.beta2 * s[v][i] + (1.0 - t.beta2) * g[i] * g[i];
                }
                (0..g.len())
                    .map(|i| {
                        let mh = s[m][i] / (1.0 - t.beta1.powf(k));
                        let vh = s[v][i] / (1.0 - t.beta2.powf(k));
                        mh / (vh.sqrt() + t.eps)
                    })
                    .collect()
            }
            OptimizerKind::Adafactorw => {
                let m = si;
                si += 1;
                let g2: Vec<f64> = g.iter().map(|x| x * x + 1e-30).collect();
                let raw: Vec<f64> = if pi == 0 {
                    // 2×3 matrix: row and column second moments.
                    let (vr, vc) = (si, si + 1);
                    si += 2;
                    for r in 0..2 {
                        let mean = (0..3).map(|c| g2[r * 3 + c]).sum::<f64>() / 3.0;
                        s[vr][r] = t.beta2 * s[vr][r] + (1.0 - t.beta2) * mean;
                    }
                    for col in 0..3 {
                        let mean = (0..2).map(|r| g2[r * 3 + col]).sum::<f64>() / 2.0;
                        s[vc][col] = t.beta2 * s[vc][col] + (1.0 - t.beta2) * mean;
                    }
                    let rmean = (s[vr][0] + s[vr][1]) / 2.0;
                    (0..6)
                        .map(|i| g[i] / (s[vr][i / 3] * s[vc][i % 3] / rmean).sqrt())
                        .collect()
                } else {
                    let v = si;
                    si += 1;
                    for i in 0..g.len() {
                        s[v][i] = t.beta2 * s[v][i] + (1.0 - t.beta2) * g2[i];
                    }
                    (0..g.len()).map(|i| g[i] / s[v][i].sqrt()).collect()
                };
                let rms = (raw.iter().map(|x| x * x).sum::<f64>() / raw.len() as f64).sqrt();
                let d = (rms / t.update_clip).max(1.0);
                for i in 0..g.len() {
                    s[m][i] = t.beta1 * s[m][i] + (1.0 - t.beta1) * raw[i] / d;
                }
                s[m].clone()
            }
        };
        for i in 0..param.len() {
            let wd = if decay {
                t.weight_decay * param[i]
            } else {
                0.0
            };
            param[i] -= a * (u[i] + wd);
        }
    }
}

fn check(kind: OptimizerKind) {
    let t = cfg(kind);
    let specs = vec![
        ParamSpec::new("w", &[2, 3], Init::Zeros, &[]),
        ParamSpec::new("b", &[3], Init::Zeros, &[]),
    ];
    let ss = state_specs(&specs, &t);
    let b = Builder::new("opt");
    let p: Vec<Tensor> = specs
        .iter()
        .map(|s| b.parameter(&s.name, DType::F64, &s.shape).unwrap())
        .collect();
    let g: Vec<Tensor> = specs
        .iter()
        .map(|s| {
            b.parameter(&format!("g/{}", s.name), DType::F64, &s.shape)
                .unwrap()
        })
        .collect();
    let st: Vec<Tensor> = ss
        .iter()
        .map(|s| b.parameter(&s.name, DType::F64, &s.shape).unwrap())
        .collect();
    let step = b.parameter("step", DType::F32, &[]).unwrap();
    let (np, ns, _, _) = update(&specs, &p, &g, &st, &step, &t).unwrap();
    for (i, x) in np.iter().chain(&ns).enumerate() {
        b.output(&format!("o{i}"), x).unwrap();
    }
    let text = basic::lower::module(&b.finish(), &Default::default()).unwrap();
    let rt = cpu_runtime(1);
    let exe = rt
        .client()
        .compile(&text, &CompileOptions::single())
        .unwrap();

    let mut r = Rng(3);
    let mut params: Vec<Vec<f64>> = vec![
        (0..6).map(|_| r.uniform(-1.0, 1.0)).collect(),
        (0..3).map(|_| r.uniform(-1.0, 1.0)).collect(),
    ];
    let mut state: Vec<Vec<f64>> = ss
        .iter()
        .map(|s| vec![0.0; s.element_count() as usize])
        .collect();
    let mut dev_params: Vec<HostArray> = specs
        .iter()
        .zip(&params)
        .map(|(s, v)| HostArray::new(&s.shape, v).unwrap())
        .collect();
    let mut dev_state: Vec<HostArray> = ss
        .iter()
        .map(|s| HostArray::zeros(DType::F64, &s.shape).unwrap())
        .collect();
    for k in 0..4 {
        let grads: Vec<Vec<f64>> = params
            .iter()
            .map(|p| p.iter().map(|_| r.uniform(-2.0, 2.0)).collect())
            .collect();
        let mut args = dev_params.clone();
        args.extend(
            specs
                .iter()
                .zip(&grads)
                .map(|(s, v)| HostArray::new(&s.shape, v).unwrap()),
        );
        args.extend(dev_state.clone());
        args.push(HostArray::scalar(k as f32));
        let out = exe.run(&args).unwrap();
        reference(&t, &mut params, &grads, &mut state, k as f64);
        dev_params = out[..2].to_vec();
        dev_state = out[2..].to_vec();
        for (a, want) in dev_params.iter().zip(&params) {
            assert_close(&a.to_f64_vec(), want, 1e-12);
        }
        for (a, want) in dev_state.iter().zip(&state) {
            assert_close(&a.to_f64_vec(), want, 1e-12);
        }
    }
}

#[test]
fn adamw_matches_the_reference() {
    check(OptimizerKind::Adamw);
}

#[test]
fn adafactorw_matches_the_reference() {
    check(OptimizerKind::Adafactorw);
}
