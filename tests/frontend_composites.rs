//! Composite functions against independent references: JAX in float64 (fixtures made by
//! `tests/fixtures/make_fixtures.py`) and small cases worked by hand.

mod common;

use basic::runtime::HostArray;
use basic::trace::Tensor;
use basic::DType;
use common::{assert_close, run_fn};
use serde_json::Value as Json;

fn array(j: &Json) -> HostArray {
    let shape: Vec<i64> = j["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let data: Vec<f64> = j["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    HostArray::new(&shape, &data).unwrap()
}

fn apply(name: &str, x: &Tensor, labels: Option<&Tensor>) -> basic::Result<Tensor> {
    match name {
        "softmax" => x.softmax(-1),
        "log_softmax" => x.log_softmax(-1),
        "logsumexp" => x.logsumexp(&[1]),
        "layer_norm" => x.layer_norm(1e-6),
        "gelu" => x.gelu(),
        "gelu_exact" => x.gelu_exact(),
        "quick_gelu" => x.quick_gelu(),
        "l2_normalize" => x.l2_normalize(-1, 1e-12),
        "mean" => x.mean(&[0, 2]),
        "variance" => x.variance(&[1]),
        "cross_entropy" => x.cross_entropy(labels.unwrap()),
        other => panic!("no composite named {other}"),
    }
}

#[test]
fn composites_match_jax_float64() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/composites.json"
    ))
    .unwrap();
    let fixtures: Json = serde_json::from_str(&text).unwrap();
    let cases = fixtures["cases"].as_object().unwrap();
    assert!(cases.len() >= 10);
    for (name, c) in cases {
        let x = array(&c["inputs"][0]);
        let w = array(&c["weight"]);
        let mut inputs = vec![x, w];
        if let Some(l) = c.get("labels") {
            let l: Vec<i32> = l
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap() as i32)
                .collect();
            inputs.push(HostArray::new(&[l.len() as i64], &l).unwrap());
        }
        let out = run_fn(&inputs, |_, p| {
            let y = apply(name, &p[0], p.get(2))?;
            let s = y.mul(&p[1])?.sum_all()?;
            let g = basic::autodiff::grad(&s, &[p[0].clone()])?;
            Ok(vec![y, g[0].clone()])
        });
        let want_y = array(&c["output"]);
        assert_eq!(out[0].shape(), want_y.shape(), "{name}");
        assert_close(&out[0].to_f64_vec(), &want_y.to_f64_vec(), 1e-12);
        assert_close(
            &out[1].to_f64_vec(),
            &array(&c["grads"][0]).to_f64_vec(),
            1e-10,
        );
    }
}

#[test]
fn hand_worked_cases() {
    let ln = f64::ln;
    let out = run_fn(
        &[
            HostArray::new(&[3], &[0.0, ln(2.0), ln(3.0)]).unwrap(),
            HostArray::new(&[3], &[1.0f64, 2., 3.]).unwrap(),
            HostArray::new(&[2], &[3.0f64, 4.0]).unwrap(),
            HostArray::new(&[1, 2], &[0.0f64, 0.0]).unwrap(),
            HostArray::new(&[1], &[0i32]).unwrap(),
        ],
        |_, p| {
            Ok(vec![
                // softmax(0, ln 2, ln 3) = (1, 2, 3) / 6
                p[0].softmax(-1)?,
                // log(1 + 2 + 3) = ln 6
                p[0].logsumexp(&[0])?,
                // mean 2, variance 2/3: (x - 2) / √(2/3) = (-√1.5, 0, √1.5)
                p[1].layer_norm(0.0)?,
                // (3, 4) / 5
                p[2].l2_normalize(-1, 1e-12)?,
                // two equal logits: -log ½ = ln 2
                p[3].cross_entropy(&p[4])?,
                // GELU(1) = ½(1 + erf(1/√2)) = Φ(1) = 0.8413447460685429
                p[1].slice_axis(0, 0, 1)?.gelu_exact()?,
            ])
        },
    );
    assert_close(&out[0].to_f64_vec(), &[1. / 6., 2. / 6., 3. / 6.], 1e-15);
    assert_close(&out[1].to_f64_vec(), &[ln(6.0)], 1e-15);
    let s = 1.5f64.sqrt();
    assert_close(&out[2].to_f64_vec(), &[-s, 0.0, s], 1e-14);
    assert_close(&out[3].to_f64_vec(), &[0.6, 0.8], 1e-15);
    assert_close(&out[4].to_f64_vec(), &[ln(2.0)], 1e-15);
    assert_close(&out[5].to_f64_vec(), &[0.8413447460685429], 1e-14);
}

#[test]
fn random_streams_are_deterministic_and_have_the_right_moments() {
    let key = HostArray::new(&[2], &[7u64, 11]).unwrap();
    let other = HostArray::new(&[2], &[7u64, 12]).unwrap();
    let n = 20_000;
    let out = run_fn(&[key.clone(), key, other], |_, p| {
        let (k1, u) = p[0].random_uniform(&[n], DType::F32)?;
        let (_, u_again) = p[1].random_uniform(&[n], DType::F32)?;
        let (_, u_other) = p[2].random_uniform(&[n], DType::F32)?;
        let (_, z) = k1.random_normal(&[n], DType::F64)?;
        let (_, m) = p[0].random_bernoulli(0.25, &[n])?;
        Ok(vec![u, u_again, u_other, z, m.convert(DType::F32)?])
    });
    let u = out[0].to_f64_vec();
    assert_eq!(out[0], out[1], "the same key gives the same numbers");
    assert_ne!(out[0], out[2], "another key gives other numbers");
    assert!(u.iter().all(|&x| (0.0..1.0).contains(&x)));
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let var = |v: &[f64]| {
        let m = mean(v);
        v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / v.len() as f64
    };
    // Standard errors at n = 20000: uniform mean 0.002, normal mean 0.007.
    assert!((mean(&u) - 0.5).abs() < 0.01, "uniform mean {}", mean(&u));
    assert!(
        (var(&u) - 1.0 / 12.0).abs() < 0.005,
        "uniform variance {}",
        var(&u)
    );
    let z = out[3].to_f64_vec();
    assert!(mean(&z).abs() < 0.03, "normal mean {}", mean(&z));
    assert!((var(&z) - 1.0).abs() < 0.05, "normal variance {}", var(&z));
    let m = mean(&out[4].to_f64_vec());
    assert!((m - 0.25).abs() < 0.015, "bernoulli(0.25) frequency {m}");
}

#[test]
fn shape_errors_name_the_op_and_shapes() {
    let b = basic::trace::Builder::new("bad");
    let x = b.parameter("x", DType::F32, &[2, 3]).unwrap();
    let y = b.parameter("y", DType::F32, &[4, 5]).unwrap();
    let e = x.matmul(&y).unwrap_err().to_string();
    assert!(
        e.contains("dot_general") && e.contains("tensor<2x3xf32>") && e.contains("tensor<4x5xf32>"),
        "{e}"
    );
    let e = x.add(&y).unwrap_err().to_string();
    assert!(
        e.contains("add") && e.contains("[2, 3]") && e.contains("[4, 5]"),
        "{e}"
    );
    let i = b.parameter("i", DType::S32, &[2, 3]).unwrap();
    let e = x.add(&i).unwrap_err().to_string();
    assert!(e.contains("same type"), "{e}");
    let e = x.reshape(&[7]).unwrap_err().to_string();
    assert!(e.contains("reshape") && e.contains("[7]"), "{e}");
    let e = i.exp().unwrap_err().to_string();
    assert!(e.contains("exp") && e.contains("not defined"), "{e}");
    let e = b.parameter("x", DType::F32, &[1]).unwrap_err().to_string();
    assert!(e.contains("already exists"), "{e}");
    let other = basic::trace::Builder::new("other");
    let z = other.parameter("z", DType::F32, &[2, 3]).unwrap();
    let e = x.add(&z).unwrap_err().to_string();
    assert!(e.contains("different graphs"), "{e}");
}

#[test]
fn missing_derivative_names_the_op() {
    let b = basic::trace::Builder::new("noderiv");
    let x = b.parameter("x", DType::F64, &[1, 4, 4, 1]).unwrap();
    let y = x
        .max_pool2d([2, 2], [2, 2], [(0, 0), (0, 0)])
        .unwrap()
        .sum_all()
        .unwrap();
    let g = basic::autodiff::grad(&y, std::slice::from_ref(&x)).unwrap();
    // The gradient of max pooling is a select_and_scatter, which has no derivative of its own.
    let e = basic::autodiff::grad(&g[0].sum_all().unwrap().mul(&y).unwrap(), &[x])
        .unwrap_err()
        .to_string();
    assert!(e.contains("select_and_scatter_add"), "{e}");
}
