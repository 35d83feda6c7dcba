//! Rematerialisation and scan: the same gradients whatever the policy, less temporary memory
//! when activations are recomputed, and a scan over stacked layers equal to the unrolled stack.

mod common;

use basic::ir::RematPolicy;
use basic::model::transformer::{scanned_stack, stack, TransformerConfig};
use basic::model::{trace_specs, ParamSpec, Params, Scope, Tower};
use basic::runtime::{CompileOptions, HostArray};
use basic::trace::{Builder, Tensor};
use basic::DType;
use common::{cpu_runtime, Rng};

/// The specs of a stack under `s` on inputs of `shape`, traced.
fn stack_specs(c: &TransformerConfig, shape: [i64; 3], dtype: DType) -> Vec<ParamSpec> {
    trace_specs("stack", dtype, |b, s| {
        let x = b.parameter("x", dtype, &shape)?;
        stack(&x, &s.sub("s"), c, None, &Tower::new(dtype))?;
        Ok(())
    })
    .unwrap()
}

fn config(width: i64, depth: i64) -> TransformerConfig {
    TransformerConfig {
        width,
        depth,
        heads: 4,
        mlp: 4 * width,
        act: basic::model::config::Activation::GeluTanh,
        eps: 1e-6,
    }
}

/// loss = mean(stack(x)²) and its gradient with respect to x and every parameter.
fn grad_program(
    c: &TransformerConfig,
    shape: [i64; 3],
    dtype: DType,
    remat: RematPolicy,
) -> String {
    let b = Builder::new("stack");
    let x = b.parameter("x", dtype, &shape).unwrap();
    let specs = stack_specs(c, shape, dtype);
    let p = Params::declare(&b, &specs, dtype).unwrap();
    let t = Tower::new(dtype).with_remat(&remat);
    let y = stack(&x, &Scope::bound(&p).sub("s"), c, None, &t).unwrap();
    let loss = y.square().unwrap().mean(&[0, 1, 2]).unwrap();
    let mut wrt = vec![x.clone()];
    wrt.extend(specs.iter().map(|s| p.get(&s.name).unwrap().clone()));
    let grads = basic::autodiff::grad(&loss, &wrt).unwrap();
    b.output("loss", &loss).unwrap();
    for (i, g) in grads.iter().enumerate() {
        b.output(&format!("g{i}"), g).unwrap();
    }
    basic::lower::module(&b.finish(), &Default::default()).unwrap()
}

fn inputs(c: &TransformerConfig, shape: [i64; 3]) -> Vec<HostArray> {
    let mut r = Rng(5);
    let mut v = vec![r.array(&shape, -1.0, 1.0)];
    for s in stack_specs(c, shape, DType::F64) {
        let scale = if s.name.ends_with("scale") { 0.0 } else { 0.2 };
        let a = r.array(&s.shape, -scale, scale);
        let a = if s.name.ends_with("scale") {
            HostArray::new(&s.shape, &vec![1.0f64; a.element_count()]).unwrap()
        } else {
            a
        };
        v.push(a);
    }
    v
}

#[test]
fn remat_policies_give_bitwise_identical_gradients_in_f64() {
    let c = config(16, 3);
    let shape = [2, 5, 16];
    let rt = cpu_runtime(1);
    let args = inputs(&c, shape);
    let run = |policy: RematPolicy| {
        let text = grad_program(&c, shape, DType::F64, policy);
        rt.client()
            .compile(&text, &CompileOptions::single())
            .unwrap()
            .run(&args)
            .unwrap()
    };
    let reference = run(RematPolicy::None);
    for policy in [
        RematPolicy::NothingSaveable,
        RematPolicy::DotsSaveable,
        RematPolicy::SaveNames(vec!["mlp_hidden".into()]),
        // JAX's name for keeping everything is this crate's `none`.
        "everything_saveable".parse().unwrap(),
    ] {
        let got = run(policy.clone());
        assert_eq!(got.len(), reference.len());
        for (i, (a, b)) in got.iter().zip(&reference).enumerate() {
            assert_eq!(
                a.to_vec::<f64>().unwrap(),
                b.to_vec::<f64>().unwrap(),
                "{policy:?}: output {i}"
            );
        }
    }
}

#[test]
fn recomputing_a_12_layer_stack_lowers_temporary_memory() {
    let c = config(128, 12);
    let shape = [8, 64, 128];
    let rt = cpu_runtime(1);
    let temp = |policy: RematPolicy| {
        let text = grad_program(&c, shape, DType::F32, policy);
        rt.client()
            .compile(&text, &CompileOptions::single())
            .unwrap()
            .memory_stats()
            .unwrap()
            .temp_bytes
    };
    let none = temp(RematPolicy::None);
    let nothing = temp(RematPolicy::NothingSaveable);
    let dots = temp(RematPolicy::DotsSaveable);
    eprintln!("temp bytes: no remat {none}, dots_saveable {dots}, nothing_saveable {nothing}");
    assert!(
        nothing < none,
        "nothing_saveable {nothing} ≥ no remat {none}"
    );
    assert!(
        nothing <= dots && dots <= none,
        "dots_saveable {dots} should sit between {nothing} and {none}"
    );
}

/// Stacks per-layer parameters `[depth, ...]` in the order a block uses them (that of block 0's
/// parameters in the stack's traced specs).
fn stacked_params(p: &Params, specs: &[ParamSpec], depth: i64) -> Vec<Tensor> {
    specs
        .iter()
        .filter_map(|s| s.name.strip_prefix("s/blocks/0/"))
        .map(|n| {
            let layers: Vec<Tensor> = (0..depth)
                .map(|i| {
                    let t = p.get(&format!("s/blocks/{i}/{n}")).unwrap();
                    let mut shape = vec![1];
                    shape.extend_from_slice(t.shape());
                    t.reshape(&shape).unwrap()
                })
                .collect();
            Tensor::concat(&layers, 0).unwrap()
        })
        .collect()
}

#[test]
fn scan_over_layers_equals_the_unrolled_stack() {
    let c = config(16, 4);
    let shape = [2, 5, 16];
    let specs = stack_specs(&c, shape, DType::F64);
    let build = |scanned: bool, remat: RematPolicy| {
        let b = Builder::new("s");
        let x = b.parameter("x", DType::F64, &shape).unwrap();
        let p = Params::declare(&b, &specs, DType::F64).unwrap();
        let y = if scanned {
            let stacked = stacked_params(&p, &specs, c.depth);
            scanned_stack(&x, &stacked, &c, None, &remat).unwrap()
        } else {
            let t = Tower::new(DType::F64);
            stack(&x, &Scope::bound(&p).sub("s"), &c, None, &t).unwrap()
        };
        let loss = y.square().unwrap().mean(&[0, 1, 2]).unwrap();
        let mut wrt = vec![x.clone()];
        wrt.extend(specs.iter().map(|s| p.get(&s.name).unwrap().clone()));
        let grads = basic::autodiff::grad(&loss, &wrt).unwrap();
        b.output("loss", &loss).unwrap();
        for (i, g) in grads.iter().enumerate() {
            b.output(&format!("g{i}"), g).unwrap();
        }
        basic::lower::module(&b.finish(), &Default::default()).unwrap()
    };
    let rt = cpu_runtime(1);
    let args = inputs(&c, shape);
    let run = |t: String| {
        rt.client()
            .compile(&t, &CompileOptions::single())
            .unwrap()
            .run(&args)
            .unwrap()
    };
    let unrolled = run(build(false, RematPolicy::None));
    for remat in [RematPolicy::None, RematPolicy::NothingSaveable] {
        let scanned = run(build(true, remat.clone()));
        for (i, (a, b)) in scanned.iter().zip(&unrolled).enumerate() {
            common::assert_close(&a.to_f64_vec(), &b.to_f64_vec(), 1e-12);
            assert_eq!(a.shape(), b.shape(), "output {i} ({remat:?})");
        }
    }
}

/// An infinite cotangent arriving at a rematerialised block stays where it is: the replay's
/// dependency on the cotangent must not change any value (it was `x + 0·g`, which turned one
/// infinite `g` into NaN over every gradient of the block).
#[test]
fn an_infinite_cotangent_does_not_poison_the_rematerialised_block() {
    let b = Builder::new("inf");
    let x = b.parameter("x", DType::F64, &[3]).unwrap();
    let w = b.parameter("w", DType::F64, &[3]).unwrap();
    let y = b
        .checkpoint(&RematPolicy::NothingSaveable, || x.mul(&x))
        .unwrap();
    let loss = y.mul(&w).unwrap().sum_all().unwrap();
    let g = basic::autodiff::grad(&loss, std::slice::from_ref(&x)).unwrap();
    b.output("dx", &g[0]).unwrap();
    let text = basic::lower::module(&b.finish(), &Default::default()).unwrap();
    let exe = cpu_runtime(1)
        .client()
        .compile(&text, &CompileOptions::single())
        .unwrap();
    // dL/dx = 2·x·w, with w₀ = ∞ arriving first at the block.
    let out = exe
        .run(&[
            HostArray::new(&[3], &[1.0f64, 2.0, 3.0]).unwrap(),
            HostArray::new(&[3], &[f64::INFINITY, 1.0, 2.0]).unwrap(),
        ])
        .unwrap();
    let dx = out[0].to_vec::<f64>().unwrap();
    assert_eq!(dx[0], f64::INFINITY);
    assert_eq!(&dx[1..], &[4.0, 12.0], "{dx:?}");
}
