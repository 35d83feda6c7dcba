//! Saved executables on CPU: serialize → deserialize → run equals a fresh compile bit for bit, and
//! `basic train --executable` loads the step and refuses one saved for other flags.

mod common;

use basic::exec::ShardedProgram;
use basic::model::ModelConfig;
use basic::runtime::HostArray;
use basic::train::{aot::StepProgram, init, Layout, StepOptions};

#[test]
fn a_loaded_executable_gives_the_fresh_compile_s_results_bit_for_bit() {
    let rt = common::cpu_runtime(1);
    let mut c = ModelConfig::load("tiny").unwrap();
    c.train.batch = 8;
    c.train.microbatches = 2;
    let o = StepOptions::from_config(&c).unwrap();
    let layout = Layout::single();
    let sp = StepProgram::build(&c, &o, &layout, false).unwrap();
    let fresh = ShardedProgram::compile_text(
        rt.client(),
        &layout.context(),
        sp.args.clone(),
        sp.results.clone(),
        sp.text.clone(),
    )
    .unwrap();
    let bytes = fresh.exe.serialize().unwrap();
    let loaded = rt
        .client()
        .load_serialized(&bytes, &sp.text, &layout.context().compile_options())
        .unwrap();
    // Inputs: initialised parameters and zero state, a random batch, the step and the key.
    let mut args: Vec<HostArray> = init::init_params(&sp.params, 3, o.param_dtype).unwrap();
    args.extend(init::init_params(&sp.state, 0, o.param_dtype).unwrap());
    let sig = basic::runtime::Signature::from_program(&sp.text).unwrap();
    let mut rng = common::Rng(7);
    for p in &sig.args[args.len()..] {
        let t = &p.ty;
        args.push(match t.dtype {
            basic::dtype::DType::F32 => basic::io::safetensors::convert(
                &rng.array(&t.shape, -1.0, 1.0),
                basic::dtype::DType::F32,
            )
            .unwrap(),
            basic::dtype::DType::S32 => {
                let n: i64 = t.shape.iter().product();
                let v: Vec<i32> = (0..n).map(|i| 1 + (i % 50) as i32).collect();
                HostArray::new(&t.shape, &v).unwrap()
            }
            basic::dtype::DType::U8 => {
                let n: i64 = t.shape.iter().product();
                let v: Vec<u8> = (0..n).map(|i| (i * 37 % 256) as u8).collect();
                HostArray::from_bytes(basic::dtype::DType::U8, &t.shape, v).unwrap()
            }
            basic::dtype::DType::U64 => {
                let n: i64 = t.shape.iter().product();
                HostArray::new(&t.shape, &vec![1u64; n as usize]).unwrap()
            }
            d => panic!("unexpected step input dtype {d}"),
        });
    }
    let want = fresh.run_host(&args).unwrap();
    let got = loaded.run_on_devices(&[args.clone()]).unwrap().remove(0);
    assert_eq!(want.len(), got.len());
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        assert_eq!(w.shape(), g.shape(), "output {i}");
        assert_eq!(w.bytes(), g.bytes(), "output {i} differs");
    }
    // Bytes that are not an executable are an error, not an abort.
    assert!(rt
        .client()
        .load_serialized(
            b"not an executable",
            &sp.text,
            &layout.context().compile_options()
        )
        .is_err());
}

fn metrics(run: &std::path::Path) -> Vec<(u64, f64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["step"].as_u64().unwrap(),
                v["loss"].as_f64().unwrap(),
                v["grad_norm"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn train_with_a_saved_executable_equals_train_and_refuses_a_mismatch() {
    let dir = common::tmp("saved-exe");
    let data = dir.join("data");
    let o = common::basic_cmd(&[
        "data",
        "fashion-mnist",
        "--out",
        data.to_str().unwrap(),
        "--limit",
        "256",
    ])
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let exe = dir.join("step.basicexe");
    let flags = ["--model", "tiny", "--batch", "32", "--microbatches", "2"];
    let mut compile = vec![
        "compile",
        "--steps",
        "3",
        "--save-executable",
        exe.to_str().unwrap(),
    ];
    compile.extend_from_slice(&flags);
    let o = common::basic_cmd(&compile).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let train = |out: &std::path::Path, extra: &[&str]| {
        let mut a = vec![
            "train",
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--steps",
            "3",
            "--eval-every",
            "0",
            "--quiet",
        ];
        a.extend_from_slice(&flags);
        a.extend_from_slice(extra);
        common::basic_cmd(&a).output().unwrap()
    };
    let plain = dir.join("plain");
    let o = train(&plain, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let loaded = dir.join("loaded");
    let o = train(&loaded, &["--executable", exe.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (a, b) = (metrics(&plain), metrics(&loaded));
    assert_eq!(a.len(), 3);
    assert_eq!(
        a, b,
        "the loaded step must train exactly like the compiled one"
    );

    // Other flags: refused, naming what differs.
    let o = common::basic_cmd(&[
        "train",
        "--data",
        data.to_str().unwrap(),
        "--out",
        dir.join("other").to_str().unwrap(),
        "--steps",
        "3",
        "--model",
        "tiny",
        "--batch",
        "16",
        "--microbatches",
        "2",
        "--executable",
        exe.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("batch: saved for 32, here 16"), "{err}");
    // The manifest records the process layout; one saved for another layout (here: its one
    // device driven by process 1 of a two-process job) is refused, naming it.
    let mut saved = basic::io::executable::SavedExecutable::read(&exe).unwrap();
    assert_eq!(saved.manifest.processes, 1);
    assert_eq!(saved.manifest.device_processes, vec![0]);
    assert_eq!(saved.manifest.device_assignment, vec![0]);
    saved.manifest.processes = 2;
    saved.manifest.device_processes = vec![1];
    let moved = dir.join("two-hosts.basicexe");
    saved.write(&moved).unwrap();
    let o = train(
        &dir.join("two-hosts-run"),
        &["--executable", moved.to_str().unwrap()],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("processes: saved for 2, here 1")
            && err.contains("devices' processes: saved for [1], here [0]"),
        "{err}"
    );
    // A file that is not an executable.
    let junk = dir.join("junk");
    std::fs::write(&junk, b"nothing").unwrap();
    let o = train(
        &dir.join("junk-run"),
        &["--executable", junk.to_str().unwrap()],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("BASICEXE"), "{err}");
}
