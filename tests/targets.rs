//! Compiling for TPUs and GPUs with none attached: libtpu and the CUDA plugin compile the tiny
//! step for described targets. Each compile runs in its own `basic` process (the TPU and GPU
//! plugins are never loaded into one process); the last test drives the library in this one.

mod common;

use serde_json::Value;

fn run(args: &[&str]) -> (bool, Value, String) {
    let o = common::basic_cmd(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    let v = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    (o.status.success(), v, stderr)
}

/// `basic compile --model tiny ... --json` with the layout flags, for `target` or the CPU.
fn compile_json(target: Option<&str>, layout: &[&str]) -> Value {
    compile_batch_json(target, "64", layout)
}

fn compile_batch_json(target: Option<&str>, batch: &str, layout: &[&str]) -> Value {
    let mut args = vec![
        "compile",
        "--model",
        "tiny",
        "--batch",
        batch,
        "--microbatches",
        "4",
        "--json",
    ];
    args.extend_from_slice(layout);
    if let Some(t) = target {
        args.extend_from_slice(&["--target", t]);
    }
    let (ok, v, err) = run(&args);
    assert!(ok, "{args:?}: {err}");
    v
}

fn device_args(v: &Value) -> Vec<i64> {
    v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["argument_bytes"].as_i64().unwrap())
        .collect()
}

/// Per-device argument bytes on the target against the CPU compile of the same layout: the shards
/// are the same arrays. TPU layouts pad each array's two minor dimensions to tiles (8 × 128 for
/// f32), so the tiny model's 64-wide arrays take up to 2× their bytes there, never less; GPU
/// arrays are dense and must agree within 1%.
fn check_against_cpu(target: &str, layout: &[&str], tolerance: (f64, f64)) {
    let t = compile_json(Some(target), layout);
    let cpu = compile_json(None, layout);
    assert_eq!(t["target"], target);
    assert_eq!(t["fits"], true, "{t}");
    assert!(t["step_time_lower_bound_seconds"].as_f64().unwrap() > 0.0);
    let (ta, ca) = (device_args(&t), device_args(&cpu));
    assert_eq!(ta.len(), ca.len());
    for (d, (x, y)) in ta.iter().zip(&ca).enumerate() {
        let r = *x as f64 / *y as f64;
        assert!(
            r >= tolerance.0 && r <= tolerance.1,
            "{target} {layout:?} device {d}: {x} argument bytes vs {y} on CPU (ratio {r:.3})"
        );
        let dev = &t["devices"][d];
        assert!(dev["hbm_bytes"].as_i64().unwrap() > 1 << 30);
        assert_eq!(dev["fits"], true);
        assert!(dev["peak_bytes"].as_i64().unwrap() >= *x);
    }
}

#[test]
fn tiny_step_compiles_for_tpu_v5e_and_v4_meshes_under_shardy_and_gspmd() {
    let tpu = (1.0, 4.0);
    check_against_cpu(
        "tpu-v5e:2x2",
        &["--mesh", "data=4", "--partitioning", "data_parallel"],
        tpu,
    );
    check_against_cpu(
        "tpu-v4:2x2x1",
        &["--mesh", "data=8", "--partitioning", "data_parallel"],
        tpu,
    );
    for partitioner in ["shardy", "gspmd"] {
        check_against_cpu(
            "tpu-v4:2x2x1",
            &[
                "--mesh",
                "data=2,model=4",
                "--partitioning",
                "data_model",
                "--partitioner",
                partitioner,
            ],
            tpu,
        );
    }
}

#[test]
fn tiny_step_compiles_for_h100_1_and_8() {
    check_against_cpu("h100:1", &[], (0.99, 1.01));
    check_against_cpu(
        "h100:8",
        &["--mesh", "data=8", "--partitioning", "data_parallel"],
        (0.99, 1.01),
    );
}

#[test]
fn a_program_too_big_for_the_target_reports_fits_false_with_the_numbers() {
    // One device holds the whole 65,536 × 65,536 logits of the loss: 16 GiB of f32 alone.
    let (ok, v, err) = run(&[
        "compile",
        "--model",
        "tiny",
        "--batch",
        "65536",
        "--microbatches",
        "1",
        "--target",
        "tpu-v5e:2x2",
        "--json",
    ]);
    assert!(ok, "a program that does not fit still exits 0: {err}");
    assert_eq!(v["fits"], false, "{v}");
    let d = &v["devices"][0];
    assert_eq!(d["fits"], false);
    assert!(d["peak_bytes"].as_i64().unwrap() > d["hbm_bytes"].as_i64().unwrap());
    // The text report says by how much.
    let o = common::basic_cmd(&[
        "compile",
        "--model",
        "tiny",
        "--batch",
        "65536",
        "--microbatches",
        "1",
        "--target",
        "tpu-v5e:2x2",
    ])
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("fits              NO") && text.contains("more than"),
        "{text}"
    );
}

/// One clear error line, exit status 1, no panic and no abort.
fn assert_one_error(args: &[&str], envs: &[(&str, &str)], wants: &[&str]) {
    let mut c = common::basic_cmd(args);
    for (k, v) in envs {
        c.env(k, v);
    }
    let o = c.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line: {err}"));
    for w in wants {
        assert!(line.contains(w), "`{w}` missing from: {line}");
    }
}

#[test]
fn bad_targets_missing_plugins_and_large_meshes_are_one_error_each() {
    assert_one_error(
        &["compile", "--model", "tiny", "--target", "tpu-v9:2x2"],
        &[],
        &["tpu-v9", "tpu-v5e", "tpu-v4", "h100", "h200"],
    );
    assert_one_error(
        &["compile", "--model", "tiny", "--target", "tpu-v4:2x2"],
        &[],
        &["2x2", "2x2x1", "4x4x4"],
    );
    assert_one_error(
        &["devices", "--target", "tpu-v5e:2x2"],
        &[("BASIC_TPU_PLUGIN", "/nonexistent/libtpu.so")],
        &["/nonexistent/libtpu.so"],
    );
    assert_one_error(
        &[
            "compile",
            "--model",
            "tiny",
            "--mesh",
            "data=8",
            "--target",
            "tpu-v5e:2x2",
        ],
        &[],
        &["data=8", "tpu-v5e:2x2", "8", "4"],
    );
}

#[test]
fn multi_host_slices_report_hosts_and_process_indices() {
    let (ok, v, err) = run(&["devices", "--target", "tpu-v4:4x4x4", "--json"]);
    assert!(ok, "{err}");
    assert_eq!(v["hosts"], 16);
    let devices = v["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 128);
    let mut per_process = std::collections::BTreeMap::new();
    for d in devices {
        *per_process
            .entry(d["process_index"].as_i64().unwrap())
            .or_insert(0) += 1;
    }
    assert_eq!(per_process.len(), 16);
    assert!(per_process.values().all(|&n| n == 8), "{per_process:?}");
    // A 16-host v5e slice compiles the same way; each device's process comes from the topology.
    let v = compile_batch_json(
        Some("tpu-v5e:8x8"),
        "256",
        &["--mesh", "data=64", "--partitioning", "data_parallel"],
    );
    assert_eq!(v["hosts"], 16, "{v}");
    assert_eq!(v["devices"].as_array().unwrap().len(), 64);
    assert_eq!(v["devices"][63]["process_index"], 15);
}

/// `basic compile --target tpu-v4:4x4x4` (16 hosts of 8 TensorCores) tells each process the
/// devices it drives and the rows of every global batch it loads: the devices of the 16
/// processes partition the mesh, their rows partition the batch, in process order.
#[test]
fn a_pod_slice_compile_reports_each_process_devices_and_rows() {
    let v = compile_batch_json(
        Some("tpu-v4:4x4x4"),
        "256",
        &["--mesh", "data=16,model=8", "--partitioning", "data_model"],
    );
    let shares = v["processes"].as_array().unwrap();
    assert_eq!(shares.len(), 16, "{v}");
    let devices = v["devices"].as_array().unwrap();
    let mut seen = std::collections::BTreeSet::new();
    let mut next_row = 0;
    for (p, s) in shares.iter().enumerate() {
        assert_eq!(s["process"], p as i64);
        let ids = s["devices"].as_array().unwrap();
        assert_eq!(ids.len(), 8, "process {p}: {s}");
        for id in ids {
            assert!(
                seen.insert(id.as_i64().unwrap()),
                "device {id} in two processes"
            );
        }
        let rows: Vec<i64> = s["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_i64().unwrap())
            .collect();
        assert_eq!(rows, vec![next_row, next_row + 16], "process {p}");
        next_row += 16;
        // Mesh positions 8p..8p+8 are the process's devices.
        for d in &devices[8 * p..8 * p + 8] {
            assert_eq!(d["process_index"], p as i64);
        }
    }
    assert_eq!((seen.len(), next_row), (128, 256));
}

#[test]
fn plan_picks_a_fit_that_compile_confirms_and_rejects_the_next_larger_micro_batch() {
    let cache = common::tmp("plan-cache");
    let cache = cache.to_str().unwrap();
    let budget = 12 * 1024 * 1024;
    let args = [
        "plan",
        "--model",
        "tiny",
        "--target",
        "tpu-v5e:2x2",
        "--batch",
        "256",
        "--budget",
        "12MiB",
        "--mesh",
        "data=4",
        "--partitioning",
        "fsdp",
        "--cache",
        cache,
        "--json",
    ];
    let (ok, p, err) = run(&args);
    assert!(ok, "{err}");
    let best = &p["best"];
    assert!(best.is_object(), "{p}");
    for k in [
        "batch",
        "microbatches",
        "remat",
        "mesh",
        "partitioning",
        "scan_layers",
        "donate",
        "peak_bytes",
    ] {
        assert!(!best[k].is_null(), "best has no `{k}`: {best}");
    }
    assert!(p["tried"].as_array().unwrap().len() >= 2);
    assert!(p["compiles"].as_u64().unwrap() < p["space"].as_u64().unwrap());
    let m = best["microbatches"].as_i64().unwrap();
    let flags = |m: i64| -> Vec<String> {
        let mut f: Vec<String> = [
            "compile",
            "--model",
            "tiny",
            "--target",
            "tpu-v5e:2x2",
            "--batch",
            "256",
            "--mesh",
            best["mesh"].as_str().unwrap(),
            "--partitioning",
            best["partitioning"].as_str().unwrap(),
            "--remat",
            best["remat"].as_str().unwrap(),
            "--json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        f.extend(["--microbatches".to_string(), m.to_string()]);
        if best["scan_layers"] == true {
            f.push("--scan-layers".into());
        }
        if best["donate"] == true {
            f.push("--donate".into());
        }
        f
    };
    let peak = |m: i64| {
        let f = flags(m);
        let (ok, v, err) = run(&f.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(ok, "{f:?}: {err}");
        v["devices"][0]["peak_bytes"].as_i64().unwrap()
    };
    assert!(
        peak(m) <= budget,
        "the best does not fit on a direct compile"
    );
    assert!(m > 1, "the budget should force micro-batching: {best}");
    // Half as many micro-batches: each twice as large. The plan rejected it; so does compile.
    assert!(peak(m / 2) > budget, "M = {} fits too", m / 2);
    // Re-planning is served by the cache.
    let (ok, again, err) = run(&args);
    assert!(ok, "{err}");
    assert_eq!(again["compiles"], 0, "{again}");
    assert_eq!(again["best"]["microbatches"], best["microbatches"]);
}

#[test]
fn a_failed_target_compile_leaves_the_next_one_working() {
    use basic::model::ModelConfig;
    use basic::partition::{Mesh, Rules};
    use basic::train::{aot::StepProgram, Layout, StepOptions};
    let target = basic::target::Target::parse("tpu-v5e:2x2").unwrap();
    let topo = target.topology().unwrap();
    // What libtpu wrote into this process's environment without a metadata server is taken
    // back: processes started from here would read it as a GKE worker id.
    for k in ["TPU_WORKER_ID", "CLOUD_TPU_TASK_ID"] {
        assert!(std::env::var_os(k).is_none(), "{k} left set");
    }
    let mut c = ModelConfig::load("tiny").unwrap();
    c.train.batch = 32;
    c.train.microbatches = 2;
    let o = StepOptions::from_config(&c).unwrap();
    let layout = |mesh: &str| Layout {
        mesh: Mesh::parse(mesh).unwrap(),
        rules: Rules::data_parallel(),
        partitioner: basic::runtime::Partitioner::Shardy,
    };
    let big = layout("data=8");
    let sp = StepProgram::build(&c, &o, &big, false).unwrap();
    let e = sp
        .compile_for(&target, &topo, &big)
        .unwrap_err()
        .to_string();
    assert!(e.contains("data=8") && e.contains("4"), "{e}");
    // A program the compiler rejects (a parse error) is an error, not an abort.
    let bad = topo.compile(
        "module @m {\n  func.func @main() -> () {\n  nonsense\n",
        &basic::runtime::CompileOptions::single(),
    );
    assert!(bad.is_err());
    let good = layout("data=4");
    let sp = StepProgram::build(&c, &o, &good, false).unwrap();
    let compiled = sp.compile_for(&target, &topo, &good).unwrap();
    let mem = compiled.memory_stats().unwrap();
    assert!(mem.argument_bytes > 0 && mem.generated_code_bytes > 0);
    assert!(compiled.serialize().unwrap().len() > 1000);
    let (format, program) = compiled.optimized_program().unwrap();
    assert!(format.starts_with("hlo"), "{format}");
    // The serialized module names the program.
    assert!(
        program.windows(5).any(|w| w == b"train"),
        "{} bytes",
        program.len()
    );
}

/// The step is built, compiled and measured by the library (what `basic compile` and `basic plan`
/// both call), here on a CPU client of 2 devices with no binary started: one test of what fits.
#[test]
fn the_library_compiles_and_measures_the_step_without_the_binary() {
    use basic::train::aot::{compile_step, fits_in, CompileOn, CompileOutputs};
    use basic::train::{LayoutChoices, StepChoices, StepSetup};
    let base = basic::model::ModelConfig::load("tiny").unwrap();
    let step = StepChoices {
        batch: Some(16),
        microbatches: Some(2),
        ..Default::default()
    };
    let layout = LayoutChoices {
        mesh: Some("data=2".into()),
        partitioning: Some("data_parallel".into()),
        partitioner: basic::runtime::Partitioner::Shardy,
    };
    let setup = StepSetup::new(&base, &step, &layout, false).unwrap();
    let rt = basic::runtime::Runtime::open(&basic::runtime::Backend::Cpu, Some(2)).unwrap();
    let r = compile_step(
        &setup,
        CompileOn::Client(rt.client()),
        CompileOutputs::default(),
    )
    .unwrap();
    assert!(r.params > 0 && r.flops > 0.0, "{r:?}");
    assert!(
        r.mem.peak_bytes > 0 && r.mem.argument_bytes > 0,
        "{:?}",
        r.mem
    );
    // Without a target there is no HBM to fit; the one test of what fits is exact at the peak.
    assert_eq!(r.fits(), None);
    assert!(fits_in(&r.mem, None, r.mem.peak_bytes));
    assert!(!fits_in(&r.mem, None, r.mem.peak_bytes - 1));
    assert!(!fits_in(&r.mem, Some("RESOURCE_EXHAUSTED"), i64::MAX));
    // One process holding both devices and every row.
    assert_eq!(r.shares.len(), 1);
    assert_eq!(r.shares[0].rows, (0, 16));
    assert_eq!(r.shares[0].devices.len(), 2);
}

/// Without `--batch`, the plan gives the largest batch that fits and the largest whose
/// estimated throughput is within 10% of the best planned; every point carries an estimate made
/// from libtpu's cost analysis, and the points that fit are ranked by it.
#[test]
fn plan_without_a_batch_gives_the_largest_and_the_fast_enough_batch() {
    let cache = common::tmp("plan-largest-cache");
    let (ok, p, err) = run(&[
        "plan",
        "--model",
        "tiny",
        "--target",
        "tpu-v5e:2x2",
        "--budget",
        "12MiB",
        "--mesh",
        "data=4",
        "--partitioning",
        "fsdp",
        "--cache",
        cache.to_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "{err}");
    let (best, fast) = (&p["best"], &p["fast"]);
    assert!(best.is_object() && fast.is_object(), "{p}");
    let batch = |t: &Value| t["batch"].as_i64().unwrap();
    let rate = |t: &Value| batch(t) as f64 / t["estimated_seconds"].as_f64().unwrap();
    assert!(batch(fast) <= batch(best), "{p}");
    assert!(rate(fast) > 0.0 && rate(fast).is_finite(), "{fast}");
    let fits = p["fits"].as_array().unwrap();
    for t in fits {
        let basis = t["estimate_basis"].as_str().unwrap();
        assert!(
            basis.contains("compiler"),
            "libtpu's bytes accessed unused: {basis}"
        );
    }
    // Ranked by the estimate (ties within 0.1% broken by recomputation and micro-batches).
    for w in fits.windows(2) {
        let (a, b) = (
            w[0]["estimated_seconds"].as_f64().unwrap(),
            w[1]["estimated_seconds"].as_f64().unwrap(),
        );
        assert!(a <= b * 1.001, "{a} ranked before {b}");
    }
    // Among the batches planned (the largest and its halves), none is more than 10% faster
    // per example than the answer, and none larger than the answer is within 10%.
    // Halves as the planner takes them: multiples of the data axis (4).
    let halves: Vec<i64> = std::iter::successors(Some(batch(best)), |b| Some(b / 2 / 4 * 4))
        .take(7)
        .collect();
    let planned = |b: i64| halves.contains(&b);
    let top = fits
        .iter()
        .filter(|t| planned(batch(t)))
        .map(rate)
        .fold(0.0, f64::max);
    assert!(
        rate(fast) >= 0.9 * top * (1.0 - 1e-9),
        "{fast} against {top}"
    );
    for t in fits
        .iter()
        .filter(|t| planned(batch(t)) && batch(t) > batch(fast))
    {
        let fastest_of_its_batch = fits
            .iter()
            .filter(|u| batch(u) == batch(t))
            .map(rate)
            .fold(0.0, f64::max);
        assert!(fastest_of_its_batch < 0.9 * top * (1.0 + 1e-9), "{t}");
    }
}

/// `basic compile --streamed --json` of the tiny model at `batch` in micro-batches of 16, with
/// the tiled loss.
fn streamed_json(target: Option<&str>, batch: i64) -> Value {
    let (b, m) = (batch.to_string(), (batch / 16).to_string());
    let mut args = vec![
        "compile",
        "--model",
        "tiny",
        "--batch",
        &b,
        "--microbatches",
        &m,
        "--loss-block",
        "32",
        "--streamed",
        "--json",
    ];
    if let Some(t) = target {
        args.extend_from_slice(&["--target", t, "--mesh", "data=8"]);
    }
    let (ok, v, err) = run(&args);
    assert!(ok, "{args:?}: {err}");
    v
}

#[test]
fn the_streamed_step_reports_its_programs_and_its_peak_grows_by_embeddings_not_images() {
    let small = streamed_json(None, 64);
    let big = streamed_json(None, 1024);
    let progs = small["programs"].as_array().unwrap();
    let names: Vec<&str> = progs.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["embed", "loss", "backprop", "update"]);
    let runs: Vec<i64> = progs
        .iter()
        .map(|p| p["runs_per_step"].as_i64().unwrap())
        .collect();
    assert_eq!(runs, [4, 1, 4, 1]);
    for p in progs {
        assert_eq!(
            p["step_peak_bytes"].as_i64().unwrap(),
            p["peak_bytes"].as_i64().unwrap() + p["resident_beside_bytes"].as_i64().unwrap()
        );
    }
    let max = progs
        .iter()
        .map(|p| p["step_peak_bytes"].as_i64().unwrap())
        .max();
    assert_eq!(small["peak_bytes"].as_i64(), max);
    // Each micro-batch crosses twice (passes 1 and 3), the one-program step's batch once.
    let h2d = |v: &Value| v["host_to_device_bytes_per_step"].as_i64().unwrap();
    let once = |v: &Value| {
        v["one_program_host_to_device_bytes_per_step"]
            .as_i64()
            .unwrap()
    };
    assert_eq!(h2d(&small), 2 * once(&small));
    // The host holds one micro-batch of 16 at any batch.
    assert_eq!(
        small["host_bytes_per_micro_batch"],
        big["host_bytes_per_micro_batch"]
    );
    assert_eq!(once(&big), 16 * once(&small));
    // 16× the batch: the peak grows by the embeddings (N·E, with their gradients), far less than
    // the images the one-program step would hold.
    let c = basic::model::ModelConfig::load("tiny").unwrap();
    let grown = big["peak_bytes"].as_i64().unwrap() - small["peak_bytes"].as_i64().unwrap();
    let embeddings = (1024 - 64) * c.embed_dim * 4;
    assert!(
        grown > 0 && grown <= 8 * embeddings,
        "grew {grown} (N·E: {embeddings})"
    );
    assert!(grown < once(&big) - once(&small), "grew {grown}");
}

#[test]
fn the_streamed_step_compiles_for_a_gpu_host_and_fits() {
    let v = streamed_json(Some("h100:8"), 1024);
    assert_eq!(v["target"], "h100:8");
    assert_eq!(v["fits"], true, "{v}");
    assert!(v["step_time_lower_bound_seconds"].as_f64().unwrap() > 0.0);
    for p in v["programs"].as_array().unwrap() {
        assert!(p["peak_bytes"].as_i64().unwrap() > 0, "{p}");
        assert!(p.get("compiler_refused").is_none(), "{p}");
    }
}
