//! The host-driven streamed step (four programs, micro-batches uploaded one at a time) computes
//! what the one-program step computes: f64, within 1e-12, with dropout and stochastic depth,
//! remat, the tiled loss (on one device and on a ring over `data=4`), both losses and a locked
//! tower.

mod common;

use basic::dtype::DType;
use basic::exec::ShardedProgram;
use basic::ir::RematPolicy;
use basic::model::config::LossKind;
use basic::model::{dual, Modality, ModelConfig};
use basic::runtime::{HostArray, Runtime};
use basic::train::aot::StepProgram;
use basic::train::streamed::{Part, StreamedDone, StreamedProgram};
use basic::train::{init, optim, step, Layout, LayoutChoices, StepOptions};
use common::{cpu_runtime, f64_step, random_batch};

/// The parity model with dropout and stochastic depth.
fn tiny() -> ModelConfig {
    let mut c = common::tiny_for_parity();
    c.train.dropout = 0.1;
    c.train.drop_path = 0.1;
    c
}

fn layout(mesh: &str) -> Layout {
    LayoutChoices {
        mesh: Some(mesh.into()),
        ..Default::default()
    }
    .layout()
    .unwrap()
}

/// Rows `j·m + k` (j < n/m) of a batch array: micro-batch `k` of the one-program step.
fn micro_rows(a: &HostArray, m: i64, k: i64) -> HostArray {
    let n = a.shape()[0];
    let per: usize = a.shape()[1..].iter().product::<i64>() as usize;
    let mut shape = a.shape().to_vec();
    shape[0] = n / m;
    let pick = |v: Vec<f64>| -> Vec<f64> {
        (0..n / m)
            .flat_map(|j| {
                let r = (j * m + k) as usize;
                v[r * per..(r + 1) * per].to_vec()
            })
            .collect()
    };
    match a.dtype() {
        DType::U8 => {
            let v: Vec<u8> = pick(a.to_f64_vec()).iter().map(|&x| x as u8).collect();
            HostArray::from_bytes(DType::U8, &shape, v).unwrap()
        }
        DType::S32 => {
            let v: Vec<i32> = pick(a.to_f64_vec()).iter().map(|&x| x as i32).collect();
            HostArray::new(&shape, &v).unwrap()
        }
        _ => HostArray::new(&shape, &pick(a.to_f64_vec())).unwrap(),
    }
}

struct Case {
    c: ModelConfig,
    o: StepOptions,
    mesh: &'static str,
}

/// Parameters and optimizer state to start from: random parameters, and state from one
/// earlier step's worth of made-up gradients so that the update's every term is live.
fn start(c: &ModelConfig, o: &StepOptions) -> Vec<HostArray> {
    let specs = dual::specs(c).unwrap();
    let mut v = init::init_params(&specs, 3, DType::F64).unwrap();
    let sspecs = optim::state_specs(&step::trainable(&specs, o), &c.train);
    v.extend(
        init::init_params(&sspecs, 5, DType::F64)
            .unwrap()
            .into_iter()
            .map(|a| {
                let x: Vec<f64> = a.to_f64_vec().iter().map(|x| x.abs() * 1e-3).collect();
                HostArray::new(a.shape(), &x).unwrap()
            }),
    );
    v
}

/// The one-program step's outputs: values, then loss, grad_norm, learning_rate, temperature.
fn one_program(
    rt: &Runtime,
    k: &Case,
    values: &[HostArray],
    batch: &(HostArray, HostArray),
) -> Vec<HostArray> {
    let l = layout(k.mesh);
    let sp = StepProgram::build(&k.c, &k.o, &l, false).unwrap();
    let prog =
        ShardedProgram::compile_text(rt.client(), &l.context(), sp.args, sp.results, sp.text)
            .unwrap_or_else(|e| panic!("{e}"));
    let mut args = values.to_vec();
    args.push(HostArray::scalar(7i32));
    args.push(batch.0.clone());
    args.push(batch.1.clone());
    args.push(HostArray::new(&[2], &[11u64, 7]).unwrap());
    prog.run_host(&args).unwrap()
}

/// The streamed step's values and report, micro-batch k being rows j·M + k.
fn streamed(
    rt: &Runtime,
    k: &Case,
    values: &[HostArray],
    batch: &(HostArray, HostArray),
) -> (Vec<HostArray>, StreamedDone, usize) {
    let l = layout(k.mesh);
    let step = StreamedProgram::build(&k.c, &k.o, &l, true)
        .unwrap()
        .compile(rt.client(), &l, None)
        .unwrap_or_else(|e| panic!("{e}"));
    let upd = step.program(Part::Update);
    let vals = values
        .iter()
        .enumerate()
        .map(|(i, a)| upd.upload(i, a).unwrap())
        .collect();
    let m = k.o.microbatches;
    let mut fetched = 0;
    let (out, done) = step
        .run(vals, 7, Some([11, 7]), |mb| {
            fetched += 1;
            step.upload_micro(
                &micro_rows(&batch.0, m, mb as i64),
                &micro_rows(&batch.1, m, mb as i64),
            )
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let host = out
        .iter()
        .enumerate()
        .map(|(i, s)| upd.gather(i, s).unwrap())
        .collect();
    (host, done, fetched)
}

fn close(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}");
    let scale = want.iter().fold(0f64, |s, x| s.max(x.abs())).max(1e-30);
    for (i, (x, y)) in got.iter().zip(want).enumerate() {
        assert!(
            (x - y).abs() <= 1e-12 * scale.max(1.0),
            "{what}[{i}]: {x} vs {y}"
        );
    }
}

fn check(k: Case) {
    let rt = cpu_runtime(4);
    let n = k.o.batch;
    let values = start(&k.c, &k.o);
    let mut batch = random_batch(&k.c, n, 21);
    if k.o.image_bytes {
        let px: Vec<u8> = batch
            .0
            .to_f64_vec()
            .iter()
            .map(|x| ((x + 1.0) * 127.5) as u8)
            .collect();
        batch.0 = HostArray::from_bytes(DType::U8, batch.0.shape(), px).unwrap();
    }
    let want = one_program(&rt, &k, &values, &batch);
    let (got, done, fetched) = streamed(&rt, &k, &values, &batch);
    let nv = values.len();
    assert_eq!(
        fetched as i64,
        2 * k.o.microbatches,
        "each micro-batch is fetched for pass 1 and pass 3"
    );
    let specs = dual::specs(&k.c).unwrap();
    let names: Vec<String> = specs
        .iter()
        .map(|s| s.name.clone())
        .chain((0..).map(|i| format!("state {i}")))
        .take(nv)
        .collect();
    for i in 0..nv {
        close(&names[i], &got[i].to_f64_vec(), &want[i].to_f64_vec());
    }
    // Something moved: the step is not the identity.
    assert!(got[0].to_f64_vec() != values[0].to_f64_vec());
    let scalars = [
        done.loss,
        done.grad_norm,
        done.learning_rate,
        done.temperature,
    ];
    for (j, (s, name)) in scalars
        .iter()
        .zip(["loss", "grad_norm", "learning_rate", "temperature"])
        .enumerate()
    {
        close(name, &[*s], &want[nv + j].to_f64_vec());
    }
}

fn case(n: i64, m: i64, block: i64, mesh: &'static str) -> Case {
    let mut o = f64_step(n, m);
    o.loss_block = block;
    o.remat = RematPolicy::NothingSaveable;
    Case { c: tiny(), o, mesh }
}

#[test]
fn the_streamed_step_equals_the_one_program_step_with_dropout_and_remat() {
    check(case(6, 3, 0, "data=1"));
}

#[test]
fn the_streamed_step_equals_the_one_program_step_on_byte_images() {
    let mut k = case(6, 2, 4, "data=1");
    k.o.image_bytes = true;
    check(k);
}

#[test]
fn the_streamed_step_equals_the_one_program_step_with_one_micro_batch() {
    check(case(4, 1, 0, "data=1"));
}

#[test]
fn the_streamed_step_equals_the_one_program_step_with_a_tiled_loss_of_either_kind() {
    // A block of 4 does not divide the batch of 6.
    check(case(6, 2, 4, "data=1"));
    let mut k = case(6, 3, 4, "data=1");
    k.c.loss = LossKind::Sigmoid;
    check(k);
}

#[test]
fn the_streamed_step_equals_the_one_program_step_on_a_ring_of_four_devices() {
    check(case(16, 2, 3, "data=4"));
    check(case(8, 2, 0, "data=4"));
}

#[test]
fn the_streamed_step_equals_the_one_program_step_with_a_locked_tower() {
    let mut k = case(6, 2, 0, "data=1");
    k.c.train.lock = vec![Modality::Text];
    k.o.frozen = dual::locked(&dual::specs(&k.c).unwrap(), &k.c.train.lock);
    check(k);
}
