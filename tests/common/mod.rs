//! Shared test helpers: finding the CPU plugins the test setup installs.
#![allow(dead_code)]

use std::path::PathBuf;

pub mod emulators;

use basic::runtime::{find_cpu_plugins, Runtime};

/// Every CPU plugin found, as (package, path). Fails loudly when the main CPU plugin is missing:
/// `scripts/test` installs it, so its absence is a broken setup, not a reason to skip.
pub fn cpu_plugins() -> Vec<(&'static str, PathBuf)> {
    let found: Vec<_> = find_cpu_plugins()
        .into_iter()
        .map(|(k, p)| (k.package, p))
        .collect();
    assert!(
        found.iter().any(|(k, _)| *k == "xla-cpu-pjrt"),
        "the xla-cpu-pjrt plugin is not installed; run scripts/test (it installs it into .pjrt/)"
    );
    found
}

/// A runtime with `n` devices on the tests' reference plugin, `xla-cpu-pjrt` (whose XLA keeps
/// remat's gradients bitwise identical in f64; the newer XLAs `--backend cpu` prefers reassociate
/// a few of them in the last bit). The conformance suite runs every plugin; the CLI tests run
/// the default one.
pub fn cpu_runtime(n: usize) -> Runtime {
    let (_, path) = cpu_plugins()
        .into_iter()
        .find(|(k, _)| *k == "xla-cpu-pjrt")
        .expect("checked by cpu_plugins");
    Runtime::open_path(&path, Some(n)).expect("open CPU runtime")
}

/// `g` emitted and compiled for one device of the reference CPU plugin.
pub fn compile_graph(g: &basic::ir::Graph) -> basic::runtime::Executable {
    let text = basic::lower::module(g, &Default::default()).unwrap();
    cpu_runtime(1)
        .client()
        .compile(&text, &basic::runtime::CompileOptions::single())
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A batch of `n` uniform images and captions of 2 to 5 random tokens, padded with 0.
pub fn random_batch(
    c: &basic::model::ModelConfig,
    n: i64,
    seed: u64,
) -> (basic::runtime::HostArray, basic::runtime::HostArray) {
    let mut r = Rng(seed);
    let s = c.image.image_size();
    let images = r.array(&[n, s, s, c.image.channels()], -1.0, 1.0);
    let toks: Vec<i32> = (0..n * c.text.length)
        .map(|i| {
            if i % c.text.length < 2 + (i / c.text.length) % 4 {
                1 + (r.next_u64() % (c.text.vocab as u64 - 1)) as i32
            } else {
                0
            }
        })
        .collect();
    (
        images,
        basic::runtime::HostArray::new(&[n, c.text.length], &toks).unwrap(),
    )
}

/// Step options for `n` examples in `m` micro-batches, f64 throughout, no remat.
pub fn f64_step(n: i64, m: i64) -> basic::train::StepOptions {
    basic::train::StepOptions {
        batch: n,
        microbatches: m,
        remat: basic::ir::RematPolicy::None,
        param_dtype: basic::dtype::DType::F64,
        compute_dtype: basic::dtype::DType::F64,
        frozen: vec![],
        loss_block: 0,
        ring: None,
        image_bytes: false,
    }
}

/// Asserts two float slices agree within `tol` (absolute + relative).
pub fn assert_close(got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "length: got {got:?}, want {want:?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "element {i}: got {g}, want {w} (tol {tol})\n got {got:?}\nwant {want:?}"
        );
    }
}

use basic::runtime::{CompileOptions, HostArray};
use basic::trace::{Builder, Tensor};
use basic::DType;

/// A small deterministic generator for test inputs: the library's splitmix64.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        let mut g = basic::seed::SplitMix(self.0);
        let v = g.next_u64();
        self.0 = g.0;
        v
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
    }
    pub fn array(&mut self, shape: &[i64], lo: f64, hi: f64) -> HostArray {
        let n: i64 = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| self.uniform(lo, hi)).collect();
        HostArray::new(shape, &v).unwrap()
    }
}

/// Builds `f` over parameters of the inputs' types, emits it and runs it on CPU.
pub fn run_fn(
    inputs: &[HostArray],
    f: impl Fn(&Builder, &[Tensor]) -> basic::Result<Vec<Tensor>>,
) -> Vec<HostArray> {
    let b = Builder::new("f");
    let ps: Vec<Tensor> = inputs
        .iter()
        .enumerate()
        .map(|(i, a)| b.parameter(&format!("x{i}"), a.dtype(), a.shape()).unwrap())
        .collect();
    let outs = f(&b, &ps).unwrap();
    for (i, o) in outs.iter().enumerate() {
        b.output(&format!("y{i}"), o).unwrap();
    }
    let text = basic::lower::module(&b.finish(), &Default::default()).unwrap();
    let rt = cpu_runtime(1);
    let exe = rt
        .client()
        .compile(&text, &CompileOptions::single())
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    exe.run(inputs).unwrap()
}

/// Checks reverse-mode gradients of `f` against central finite differences in f64.
///
/// The scalar checked is `Σ f(x) ⊙ W` for a fixed random `W`, so every output element counts.
/// Every f64 input is differentiated, element by element.
pub fn check_grads(
    name: &str,
    inputs: &[HostArray],
    f: impl Fn(&Builder, &[Tensor]) -> basic::Result<Tensor>,
    tol: f64,
) {
    check_grads_step(name, inputs, f, tol, 1e-6)
}

/// [`check_grads`] with an explicit finite-difference step `h`.
pub fn check_grads_step(
    name: &str,
    inputs: &[HostArray],
    f: impl Fn(&Builder, &[Tensor]) -> basic::Result<Tensor>,
    tol: f64,
    h: f64,
) {
    let weight_seed = 7;
    let scalar = |b: &Builder, ps: &[Tensor]| -> basic::Result<Tensor> {
        let y = f(b, ps)?.convert(DType::F64)?;
        let w = Rng(weight_seed).array(y.shape(), -1.0, 1.0);
        let w = b.constant_array(&w)?;
        y.mul(&w)?.sum_all()
    };
    let diff: Vec<usize> = (0..inputs.len())
        .filter(|&i| inputs[i].dtype() == DType::F64)
        .collect();
    // Analytic gradients.
    let analytic = run_fn(inputs, |b, ps| {
        let loss = scalar(b, ps)?;
        let wrt: Vec<Tensor> = diff.iter().map(|&i| ps[i].clone()).collect();
        let mut out = vec![loss.clone()];
        out.extend(basic::autodiff::grad(&loss, &wrt)?);
        Ok(out)
    });
    // Finite differences: one compiled forward program, run at x ± h·e_k.
    let b = Builder::new("fd");
    let ps: Vec<Tensor> = inputs
        .iter()
        .enumerate()
        .map(|(i, a)| b.parameter(&format!("x{i}"), a.dtype(), a.shape()).unwrap())
        .collect();
    let loss = scalar(&b, &ps).unwrap();
    b.output("loss", &loss).unwrap();
    let text = basic::lower::module(&b.finish(), &Default::default()).unwrap();
    let rt = cpu_runtime(1);
    let exe = rt
        .client()
        .compile(&text, &CompileOptions::single())
        .unwrap();
    let eval = |args: &[HostArray]| exe.run(args).unwrap()[0].to_vec::<f64>().unwrap()[0];
    for (gi, &i) in diff.iter().enumerate() {
        let base = inputs[i].to_vec::<f64>().unwrap();
        let got = analytic[1 + gi].to_vec::<f64>().unwrap();
        for k in 0..base.len() {
            let mut args = inputs.to_vec();
            let mut plus = base.clone();
            plus[k] += h;
            args[i] = HostArray::new(inputs[i].shape(), &plus).unwrap();
            let fp = eval(&args);
            let mut minus = base.clone();
            minus[k] -= h;
            args[i] = HostArray::new(inputs[i].shape(), &minus).unwrap();
            let fm = eval(&args);
            let fd = (fp - fm) / (2.0 * h);
            assert!(
                (got[k] - fd).abs() <= tol * (1.0 + fd.abs()),
                "{name}: d/dx{i}[{k}]: reverse mode {} vs finite difference {fd}",
                got[k]
            );
        }
    }
}

/// Variables by which `basic` finds its place in a multi-process job: the tests' processes run
/// alone unless a test sets them (a test run inside a SLURM allocation or a TPU pod would
/// otherwise join that job).
pub const JOB_VARS: [&str; 11] = [
    "BASIC_COORDINATOR",
    "BASIC_NUM_PROCESSES",
    "BASIC_PROCESS_ID",
    "SLURM_PROCID",
    "SLURM_NTASKS",
    "SLURM_STEP_NODELIST",
    "TPU_WORKER_ID",
    "TPU_WORKER_HOSTNAMES",
    "JOB_COMPLETION_INDEX",
    "JOBSET_NAME",
    "CLOUD_TPU_TASK_ID",
];

/// The `basic` binary with quiet plugin logs, no standard input and no job variables.
pub fn basic_cmd(args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_basic"));
    c.args(args)
        .env("TF_CPP_MIN_LOG_LEVEL", "2")
        .stdin(std::process::Stdio::null());
    for k in JOB_VARS {
        c.env_remove(k);
    }
    c
}

/// A child process killed (by its pid) and reaped when dropped, whatever happened.
pub struct KillOnDrop(pub std::process::Child);

impl KillOnDrop {
    /// Waits at most `limit` for the child to exit by itself (then kills it and fails), and
    /// returns its output (its pipes are drained meanwhile, so a chatty child cannot block).
    pub fn wait_with_deadline(mut self, limit: std::time::Duration) -> std::process::Output {
        fn drain(
            r: Option<impl std::io::Read + Send + 'static>,
        ) -> std::thread::JoinHandle<Vec<u8>> {
            std::thread::spawn(move || {
                let mut v = Vec::new();
                if let Some(mut r) = r {
                    let _ = r.read_to_end(&mut v);
                }
                v
            })
        }
        let out = drain(self.0.stdout.take());
        let err = drain(self.0.stderr.take());
        let deadline = std::time::Instant::now() + limit;
        let status = loop {
            if let Ok(Some(s)) = self.0.try_wait() {
                break s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the child did not exit within {limit:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        std::process::Output {
            status,
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
        }
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `basic ARGS`, asserts it succeeds (showing its stderr when not), and returns its stdout.
pub fn run_ok(args: &[&str]) -> String {
    let out = basic_cmd(args).output().unwrap();
    assert!(
        out.status.success(),
        "basic {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A fresh temporary folder for one test of this process.
pub fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("basic-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Checks the reverse-mode gradient `grads` (one per parameter) along a random direction
/// against central differences of `loss(params)` at h and h/2, Richardson-extrapolated (O(h⁴)).
pub fn check_directional(
    params: &[HostArray],
    grads: &[HostArray],
    seed: u64,
    loss: impl Fn(&[HostArray]) -> f64,
) {
    let mut r = Rng(seed);
    let dirs: Vec<Vec<f64>> = params
        .iter()
        .map(|p| {
            (0..p.element_count())
                .map(|_| r.uniform(-1.0, 1.0))
                .collect()
        })
        .collect();
    let analytic: f64 = grads
        .iter()
        .zip(&dirs)
        .map(|(g, d)| {
            g.to_f64_vec()
                .iter()
                .zip(d)
                .map(|(a, b)| a * b)
                .sum::<f64>()
        })
        .sum();
    let at = |h: f64| {
        let moved: Vec<HostArray> = params
            .iter()
            .zip(&dirs)
            .map(|(p, d)| {
                let v: Vec<f64> = p
                    .to_f64_vec()
                    .iter()
                    .zip(d)
                    .map(|(x, y)| x + h * y)
                    .collect();
                HostArray::new(p.shape(), &v).unwrap()
            })
            .collect();
        loss(&moved)
    };
    let d = |h: f64| (at(h) - at(-h)) / (2.0 * h);
    let h = 1e-4;
    let fd = (4.0 * d(h / 2.0) - d(h)) / 3.0;
    assert!(
        (fd - analytic).abs() <= 1e-6 * (1.0 + fd.abs()),
        "finite difference {fd} vs reverse mode {analytic}"
    );
}

/// Every tensor of a checkpoint (a step folder, or a single file of an earlier version), whole.
pub fn read_checkpoint(
    at: &std::path::Path,
) -> std::collections::BTreeMap<String, basic::runtime::HostArray> {
    basic::train::persist::Opened::open(&at.display().to_string())
        .and_then(|c| c.all())
        .unwrap_or_else(|e| panic!("{}: {e}", at.display()))
}

/// The bytes of a checkpoint (its files, in name order), to see that nothing touched it.
pub fn checkpoint_bytes(at: &std::path::Path) -> Vec<u8> {
    if at.is_file() {
        return std::fs::read(at).unwrap();
    }
    let mut names: Vec<PathBuf> = std::fs::read_dir(at)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    names.sort();
    names
        .iter()
        .flat_map(|p| std::fs::read(p).unwrap())
        .collect()
}

/// 600 training and 600 test Fashion-MNIST pairs, imported once per test process.
pub fn fashion_data() -> &'static std::path::Path {
    use basic::data::import::{fashion_mnist, FASHION_DIR};
    static DATA: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DATA.get_or_init(|| {
        let dir = std::path::Path::new(FASHION_DIR);
        assert!(
            dir.join("train-images-idx3-ubyte.gz").is_file(),
            "Fashion-MNIST is not installed in {FASHION_DIR}; run scripts/test (it installs dataset-fashion-mnist)"
        );
        let d = tmp("data");
        fashion_mnist(dir, &d, Some(600)).unwrap();
        d
    })
}

/// The same 600 training pairs in 12 shards of 50, for shuffled streams.
pub fn fashion_shards() -> &'static std::path::Path {
    static DATA: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DATA.get_or_init(|| {
        let d = tmp("sharded");
        let src = fashion_data().to_str().unwrap();
        let train = basic::data::source::parse(src, "train", None).unwrap();
        let mut samples = Vec::new();
        basic::data::stream::for_each_sample(&train, false, &mut |s| {
            samples.push(s);
            Ok(true)
        })
        .unwrap();
        basic::data::shards::write_shards(&d, "train", &samples, 50).unwrap();
        std::fs::copy(fashion_data().join("captions.txt"), d.join("captions.txt")).unwrap();
        d
    })
}

/// The (step, loss) lines of a run's `metrics.jsonl`, the loss as written (JSON keeps the
/// shortest exact decimal of the f64).
pub fn run_losses(run: &std::path::Path) -> Vec<(u64, String)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["loss"].to_string())
        })
        .collect()
}

/// The tiny preset made smaller still for f64 parity runs.
pub fn tiny_for_parity() -> basic::model::ModelConfig {
    let mut c = basic::model::ModelConfig::load("tiny").unwrap();
    if let basic::model::config::ImageConfig::Vit(v) = &mut c.image {
        v.width = 16;
        v.mlp = 32;
        v.heads = 2;
    }
    c.text.width = 16;
    c.text.mlp = 32;
    c.text.heads = 2;
    c.text.vocab = 50;
    c.text.length = 6;
    c.embed_dim = 8;
    c
}
