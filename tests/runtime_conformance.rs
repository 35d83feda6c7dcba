//! Runtime conformance: the same programs on every CPU plugin found (at least `xla-cpu-pjrt`,
//! StableHLO 1.13, and `lammps-jax-pjrt-cpu`, StableHLO 1.20, when installed). Expected values are
//! worked by hand in the comments.

mod common;

use basic::runtime::{CompileOptions, HostArray, Partitioner, Runtime};
use basic::{DType, Error};
use common::{assert_close, cpu_plugins};
use half::bf16;

const MATMUL: &str = include_str!("../graphs/examples/matmul.mlir");

const REDUCE_MAX: &str = include_str!("../graphs/examples/reduce_max.mlir");

const WHILE_SUM: &str = include_str!("../graphs/examples/while_sum.mlir");

const BF16_FMA: &str = include_str!("../graphs/examples/bf16_fma.mlir");

const F64_SQRT: &str = include_str!("../graphs/examples/f64_sqrt.mlir");

const CONV: &str = include_str!("../graphs/examples/conv.mlir");

/// Unsharded reference of the SPMD programs: y = x·w and the sum of all of y.
const DENSE: &str = include_str!("../graphs/examples/dense.mlir");

/// GSPMD: rows of x split over 8 devices, w replicated; the scalar needs a cross-device sum.
const GSPMD: &str = include_str!("../graphs/examples/gspmd.mlir");

/// Shardy on a 2×4 mesh: x split by rows over `data` and by columns over `model`, w's rows over
/// `model`, so the contraction itself crosses devices.
const SHARDY: &str = include_str!("../graphs/examples/shardy.mlir");

fn runtimes(devices: usize) -> Vec<(&'static str, Runtime)> {
    cpu_plugins()
        .into_iter()
        .map(|(name, path)| {
            let rt =
                Runtime::open_path(&path, Some(devices)).unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, rt)
        })
        .collect()
}

fn f32s(a: &HostArray) -> Vec<f64> {
    a.to_f64_vec()
}

#[test]
fn both_plugins_are_installed_by_the_test_setup() {
    let names: Vec<_> = cpu_plugins().into_iter().map(|(n, _)| n).collect();
    assert!(
        names.contains(&"lammps-jax-pjrt-cpu"),
        "scripts/test installs lammps-jax-pjrt-cpu too, so that two XLA versions are proven; found only {names:?}"
    );
}

#[test]
fn plugin_reports_versions_and_devices() {
    for (name, rt) in runtimes(3) {
        let (major, minor) = rt.plugin().api_version();
        assert_eq!(major, 0, "{name}");
        assert!(minor >= 81, "{name}: PJRT {major}.{minor}");
        let v = rt.plugin().stablehlo_current_version().unwrap();
        assert!(v.starts_with("1."), "{name}: StableHLO {v}");
        assert_eq!(rt.client().platform(), "cpu");
        assert_eq!(
            rt.client().devices().len(),
            3,
            "{name}: cpu_device_count = 3"
        );
        let ids: Vec<i32> = rt.client().devices().iter().map(|d| d.id).collect();
        assert_eq!(ids, vec![0, 1, 2]);
    }
}

#[test]
fn matmul() {
    for (name, rt) in runtimes(1) {
        let exe = rt
            .client()
            .compile(MATMUL, &CompileOptions::single())
            .unwrap();
        // [[1,2,3],[4,5,6]] · [[1,0],[0,1],[1,1]] = [[1+3, 2+3], [4+6, 5+6]] = [[4,5],[10,11]]
        let a = HostArray::new(&[2, 3], &[1f32, 2., 3., 4., 5., 6.]).unwrap();
        let b = HostArray::new(&[3, 2], &[1f32, 0., 0., 1., 1., 1.]).unwrap();
        let out = exe.run(&[a, b]).unwrap();
        assert_eq!(out[0].shape(), &[2, 2], "{name}");
        assert_eq!(
            out[0].to_vec::<f32>().unwrap(),
            vec![4., 5., 10., 11.],
            "{name}"
        );
    }
}

#[test]
fn reduce_with_a_region() {
    for (name, rt) in runtimes(1) {
        let exe = rt
            .client()
            .compile(REDUCE_MAX, &CompileOptions::single())
            .unwrap();
        // Row maxima of [[1,-7,3],[-4,-5,-6]] from an init of -inf: [3, -4].
        let a = HostArray::new(&[2, 3], &[1f32, -7., 3., -4., -5., -6.]).unwrap();
        let out = exe.run(&[a]).unwrap();
        assert_eq!(out[0].to_vec::<f32>().unwrap(), vec![3., -4.], "{name}");
    }
}

#[test]
fn while_loop() {
    for (name, rt) in runtimes(1) {
        let exe = rt
            .client()
            .compile(WHILE_SUM, &CompileOptions::single())
            .unwrap();
        // 100 + (0 + 1 + ... + 9) = 145
        let out = exe.run(&[HostArray::scalar(100f32)]).unwrap();
        assert_eq!(out[0].to_vec::<f32>().unwrap(), vec![145.], "{name}");
    }
}

#[test]
fn bf16_arithmetic() {
    for (name, rt) in runtimes(1) {
        let exe = rt
            .client()
            .compile(BF16_FMA, &CompileOptions::single())
            .unwrap();
        let v = |x: &[f32]| {
            HostArray::new(
                &[4],
                &x.iter().map(|&f| bf16::from_f32(f)).collect::<Vec<_>>(),
            )
            .unwrap()
        };
        // bf16 has 8 significant bits: 1.5*3 + 0.25 = 4.75 is exact; 257 rounds to 256 (ties to
        // even) so 1*257 + 0 = 256; 3*(-2) + 1 = -5; 0.1 is 0.10009765625 in bf16, times 10 = 1.0009765625,
        // rounded to bf16 = 1.0 (next bf16 above 1 is 1.0078125).
        let a = v(&[1.5, 1.0, 3.0, 0.1]);
        let b = v(&[3.0, 257.0, -2.0, 10.0]);
        let c = v(&[0.25, 0.0, 1.0, 0.0]);
        let out = exe.run(&[a, b, c]).unwrap();
        assert_eq!(out[0].dtype(), DType::BF16);
        let got: Vec<f32> = out[0]
            .to_vec::<bf16>()
            .unwrap()
            .iter()
            .map(|x| x.to_f32())
            .collect();
        assert_eq!(got, vec![4.75, 256.0, -5.0, 1.0], "{name}");
    }
}

#[test]
fn f64_arithmetic() {
    for (name, rt) in runtimes(1) {
        let exe = rt
            .client()
            .compile(F64_SQRT, &CompileOptions::single())
            .unwrap();
        let x = [2.0f64, 1e-300, 12345.678];
        let out = exe.run(&[HostArray::new(&[3], &x).unwrap()]).unwrap();
        // IEEE sqrt and multiply are correctly rounded: the results equal Rust's f64 bit for bit,
        // which an f32 computation could not (sqrt(1e-300) underflows in f32).
        let want_sqrt: Vec<f64> = x.iter().map(|v| v.sqrt()).collect();
        let want_sq: Vec<f64> = want_sqrt.iter().map(|v| v * v).collect();
        assert_eq!(out[0].to_vec::<f64>().unwrap(), want_sqrt, "{name}");
        assert_eq!(out[1].to_vec::<f64>().unwrap(), want_sq, "{name}");
        assert_eq!(out[0].to_vec::<f64>().unwrap()[1], 1e-150, "{name}");
    }
}

#[test]
fn convolution() {
    for (name, rt) in runtimes(1) {
        let exe = rt
            .client()
            .compile(CONV, &CompileOptions::single())
            .unwrap();
        // x = [[1,2,3],[4,5,6],[7,8,9]], w = [[1,0],[0,1]] (NHWC / HWIO):
        // y[i,j] = x[i,j] + x[i+1,j+1] = [[1+5, 2+6], [4+8, 5+9]].
        let x = HostArray::new(
            &[1, 3, 3, 1],
            &(1..=9).map(|i| i as f32).collect::<Vec<_>>(),
        )
        .unwrap();
        let w = HostArray::new(&[2, 2, 1, 1], &[1f32, 0., 0., 1.]).unwrap();
        let out = exe.run(&[x, w]).unwrap();
        assert_eq!(
            out[0].to_vec::<f32>().unwrap(),
            vec![6., 8., 12., 14.],
            "{name}"
        );
    }
}

fn spmd_inputs() -> (HostArray, HostArray) {
    let x = HostArray::new(
        &[8, 4],
        &(0..32)
            .map(|i| (i as f32 - 10.0) * 0.25)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let w = HostArray::new(&[4, 2], &[1f32, -1., 0.5, 2., -3., 0.25, 4., 1.]).unwrap();
    (x, w)
}

fn dense_reference(rt: &Runtime) -> (Vec<f64>, f64) {
    let (x, w) = spmd_inputs();
    let exe = rt
        .client()
        .compile(DENSE, &CompileOptions::single())
        .unwrap();
    let out = exe.run(&[x, w]).unwrap();
    (f32s(&out[0]), f32s(&out[1])[0])
}

#[test]
fn spmd_with_gspmd_shardings_equals_unsharded() {
    for (name, rt) in runtimes(8) {
        let (want_y, want_s) = dense_reference(&rt);
        let exe = rt
            .client()
            .compile(GSPMD, &CompileOptions::spmd(8, Partitioner::Gspmd))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let (x, w) = spmd_inputs();
        let xs = x.split(0, 8).unwrap();
        let args: Vec<Vec<HostArray>> = xs.into_iter().map(|xi| vec![xi, w.clone()]).collect();
        let out = exe.run_on_devices(&args).unwrap();
        assert_eq!(out.len(), 8);
        let ys: Vec<HostArray> = out.iter().map(|o| o[0].clone()).collect();
        let y = HostArray::concat(&ys, 0).unwrap();
        assert_close(&f32s(&y), &want_y, 1e-6);
        for (d, o) in out.iter().enumerate() {
            assert_close(&f32s(&o[1]), &[want_s], 1e-6);
            assert_eq!(o[1].shape(), &[] as &[i64], "{name}: device {d}");
        }
    }
}

#[test]
fn spmd_with_shardy_shardings_equals_unsharded() {
    for (name, rt) in runtimes(8) {
        let (want_y, want_s) = dense_reference(&rt);
        let exe = rt
            .client()
            .compile(SHARDY, &CompileOptions::spmd(8, Partitioner::Shardy))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let (x, w) = spmd_inputs();
        // Device d = data * 4 + model (row-major mesh order).
        let x_rows = x.split(0, 2).unwrap();
        let w_rows = w.split(0, 4).unwrap();
        let mut args = Vec::new();
        for rows in &x_rows {
            for (m, cols) in rows.split(1, 4).unwrap().into_iter().enumerate() {
                args.push(vec![cols, w_rows[m].clone()]);
            }
        }
        let out = exe.run_on_devices(&args).unwrap();
        // Output rows are split over `data` and replicated over `model`.
        let y = HostArray::concat(&[out[0][0].clone(), out[4][0].clone()], 0).unwrap();
        assert_close(&f32s(&y), &want_y, 1e-6);
        for d in 0..8 {
            assert_eq!(
                out[d][0],
                out[(d / 4) * 4][0],
                "{name}: model replicas of device {d}"
            );
            assert_close(&f32s(&out[d][1]), &[want_s], 1e-6);
        }
    }
}

#[test]
fn memory_statistics_agree_with_shapes() {
    for (name, rt) in runtimes(8) {
        let exe = rt
            .client()
            .compile(MATMUL, &CompileOptions::single())
            .unwrap();
        let m = exe.memory_stats().unwrap();
        // Arguments 2·3 + 3·2 f32 = 48 bytes; output 2·2 f32 = 16 bytes.
        assert_eq!(m.argument_bytes, 48, "{name}: {m:?}");
        assert_eq!(m.output_bytes, 16, "{name}: {m:?}");
        assert!(m.peak_bytes >= 48, "{name}: {m:?}");

        // Sharded: each of 8 devices holds one row of x (4 f32) and all of w (8 f32).
        let exe = rt
            .client()
            .compile(GSPMD, &CompileOptions::spmd(8, Partitioner::Gspmd))
            .unwrap();
        let m = exe.memory_stats().unwrap();
        assert_eq!(m.argument_bytes, (4 + 8) * 4, "{name}: {m:?}");
        // Outputs: one row of y (2 f32) and the scalar, plus the 8-byte pointer of each element in
        // the result tuple's index table (XLA returns several results as one tuple).
        assert_eq!(m.output_bytes, (2 + 1) * 4 + 2 * 8, "{name}: {m:?}");
    }
}

#[test]
fn device_buffers_stay_on_device_between_executions() {
    let rt = common::cpu_runtime(2);
    let exe = rt
        .client()
        .compile(F64_SQRT, &CompileOptions::single())
        .unwrap();
    let x = exe
        .upload(&HostArray::new(&[3], &[16f64, 81., 256.]).unwrap(), 0)
        .unwrap();
    // sqrt twice, feeding the first output straight back: 16 → 4 → 2.
    let first = exe.execute(&[vec![&x]]).unwrap();
    let second = exe.execute(&[vec![&first[0][0]]]).unwrap();
    assert_eq!(
        second[0][0].to_host().unwrap().to_vec::<f64>().unwrap(),
        vec![2., 3., 4.]
    );

    // A buffer on device 1 given to a program that runs on device 0 is refused.
    let elsewhere = rt
        .client()
        .upload(&HostArray::new(&[3], &[1f64, 1., 1.]).unwrap(), 1)
        .unwrap();
    let e = exe.execute(&[vec![&elsewhere]]).unwrap_err();
    assert!(e.to_string().contains("another device"), "{e}");
}

/// `acc + x`, donating `acc` to the result (as a training step donates its parameters).
const DONATING: &str = include_str!("../graphs/examples/donate.mlir");

#[test]
fn donated_arguments_must_be_given_up() {
    use basic::runtime::ArgBuffer;
    for (name, rt) in runtimes(1) {
        let exe = rt
            .client()
            .compile(DONATING, &CompileOptions::single())
            .unwrap();
        assert_eq!(exe.donations(), vec![(0, 0)], "{name}");
        let stats = exe.memory_stats().unwrap();
        assert_eq!(
            stats.alias_bytes, 24,
            "{name}: the result lives in the argument"
        );
        let up = |v: [f64; 3]| exe.upload(&HostArray::new(&[3], &v).unwrap(), 0).unwrap();
        let (acc, x) = (up([1., 2., 3.]), up([10., 20., 30.]));
        // Borrowing a donated argument is refused before anything runs.
        let e = exe.execute(&[vec![&acc, &x]]).unwrap_err();
        assert!(e.to_string().contains("donates"), "{name}: {e}");
        let e = exe
            .execute_owned(vec![vec![
                ArgBuffer::Borrowed(&acc),
                ArgBuffer::Borrowed(&x),
            ]])
            .unwrap_err();
        assert!(e.to_string().contains("borrowed"), "{name}: {e}");
        // Given up, it is consumed; the borrowed `x` stays usable for the next step.
        let mut acc = acc;
        for _ in 0..2 {
            let mut out = exe
                .execute_owned(vec![vec![ArgBuffer::Owned(acc), ArgBuffer::Borrowed(&x)]])
                .unwrap();
            acc = out.remove(0).remove(0);
        }
        assert_eq!(
            acc.to_host().unwrap().to_vec::<f64>().unwrap(),
            vec![21., 42., 63.],
            "{name}"
        );
        // Host arrays are uploaded, owned and consumed.
        let out = exe
            .run(&[
                HostArray::new(&[3], &[1f64, 1., 1.]).unwrap(),
                HostArray::new(&[3], &[2f64, 2., 2.]).unwrap(),
            ])
            .unwrap();
        assert_eq!(out[0].to_vec::<f64>().unwrap(), vec![3., 3., 3.], "{name}");
    }
}

/// Every bad input in one process, each an error naming the problem, then a good run.
#[test]
fn bad_inputs_are_errors_and_the_process_survives() {
    let missing =
        Runtime::open_path(std::path::Path::new("/nonexistent/plugin.so"), None).unwrap_err();
    assert!(
        missing.to_string().contains("/nonexistent/plugin.so"),
        "{missing}"
    );

    let dir = std::env::temp_dir().join(format!("basic-conformance-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fake = dir.join("not-a-plugin.so");
    std::fs::write(&fake, b"this is not a shared library").unwrap();
    let e = Runtime::open_path(&fake, None).unwrap_err();
    assert!(matches!(e, Error::PluginLoad { .. }), "{e}");
    assert!(e.to_string().contains("not-a-plugin.so"), "{e}");
    std::fs::remove_dir_all(&dir).ok();

    for (name, rt) in runtimes(8) {
        let c = rt.client();
        let malformed = "func.func @main(%a: tensor<2xf32>) -> tensor<2xf32> {\n  %0 = stablehlo.add %a : tensor<2xf32>\n  return %0 : tensor<2xf32>\n}";
        let e = c.compile(malformed, &CompileOptions::single()).unwrap_err();
        assert!(matches!(e, Error::Pjrt { .. }), "{name}: {e}");

        let unknown = "func.func @main(%a: tensor<2xf32>) -> tensor<2xf32> {\n  %0 = stablehlo.frobnicate %a : tensor<2xf32>\n  return %0 : tensor<2xf32>\n}";
        let e = c.compile(unknown, &CompileOptions::single()).unwrap_err();
        assert!(e.to_string().contains("frobnicate"), "{name}: {e}");

        let e = c
            .compile(
                "func.func @other() {\n return\n}",
                &CompileOptions::single(),
            )
            .unwrap_err();
        assert!(e.to_string().contains("@main"), "{name}: {e}");

        let exe = c.compile(MATMUL, &CompileOptions::single()).unwrap();
        let a = HostArray::new(&[2, 3], &[1f32; 6]).unwrap();
        let b = HostArray::new(&[3, 2], &[1f32; 6]).unwrap();

        let e = exe.run(std::slice::from_ref(&a)).unwrap_err();
        assert!(
            e.to_string()
                .contains("got 1 arguments but the program takes 2"),
            "{name}: {e}"
        );

        let b_int = HostArray::new(&[3, 2], &[1i32; 6]).unwrap();
        let e = exe.run(&[a.clone(), b_int]).unwrap_err();
        assert!(
            e.to_string().contains("argument 1")
                && e.to_string().contains("expected dtype f32 but got s32"),
            "{name}: {e}"
        );

        let b_transposed = HostArray::new(&[2, 3], &[1f32; 6]).unwrap();
        let e = exe.run(&[a.clone(), b_transposed]).unwrap_err();
        assert!(
            e.to_string()
                .contains("expected shape [3, 2] but got [2, 3]"),
            "{name}: {e}"
        );

        let e = c
            .compile(GSPMD, &CompileOptions::spmd(16, Partitioner::Gspmd))
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::NotEnoughDevices {
                    needed: 16,
                    available: 8,
                    ..
                }
            ),
            "{name}: {e}"
        );

        // Zero partitions would abort the plugin: refused before it gets there.
        let e = c
            .compile(MATMUL, &CompileOptions::spmd(0, Partitioner::Gspmd))
            .unwrap_err();
        assert!(e.to_string().contains("num_partitions = 0"), "{name}: {e}");

        // Sharded program, wrong shard shape: the message says it is a shard.
        let sharded = c
            .compile(GSPMD, &CompileOptions::spmd(8, Partitioner::Gspmd))
            .unwrap();
        let (x, w) = spmd_inputs();
        let args: Vec<Vec<HostArray>> = (0..8).map(|_| vec![x.clone(), w.clone()]).collect();
        let e = sharded.run_on_devices(&args).unwrap_err();
        assert!(e.to_string().contains("shard"), "{name}: {e}");

        // And after all that, a good run still succeeds.
        let out = exe.run(&[a, b]).unwrap();
        assert_eq!(out[0].to_vec::<f32>().unwrap(), vec![3.; 4], "{name}");
    }
}

#[test]
fn zero_cpu_devices_is_refused() {
    let (_, path) = cpu_plugins().remove(0);
    let e = Runtime::open_path(&path, Some(0)).unwrap_err();
    assert!(e.to_string().contains("CPU device count 0"), "{e}");
}

#[test]
fn both_copy_back_paths_agree() {
    for (name, rt) in runtimes(1) {
        let exe = rt
            .client()
            .compile(F64_SQRT, &CompileOptions::single())
            .unwrap();
        let x = exe
            .upload(&HostArray::new(&[3], &[4f64, 9., 2.]).unwrap(), 0)
            .unwrap();
        let out = exe.execute(&[vec![&x]]).unwrap();
        for b in &out[0] {
            assert_eq!(
                b.to_host().unwrap(),
                b.to_host_by_transfer().unwrap(),
                "{name}"
            );
        }
        let exe = rt
            .client()
            .compile(BF16_FMA, &CompileOptions::single())
            .unwrap();
        let v = HostArray::new(&[4], &[bf16::from_f32(1.5); 4]).unwrap();
        let bufs: Vec<_> = (0..3).map(|_| exe.upload(&v, 0).unwrap()).collect();
        let out = exe.execute(&[bufs.iter().collect()]).unwrap();
        let host = out[0][0].to_host().unwrap();
        assert_eq!(host, out[0][0].to_host_by_transfer().unwrap(), "{name}");
        // 1.5 * 1.5 + 1.5 = 3.75, exact in bf16.
        assert_eq!(host.to_f64_vec(), vec![3.75; 4], "{name}");
    }
}
