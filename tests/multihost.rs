//! Multi-process training on this CPU machine. One CPU client with 8 devices is treated as P
//! processes of 8/P devices (each with its own loader, its own uploads, its own checkpoint data
//! file: the code paths of real processes): P = 1, 2, 4 give the same losses; a checkpoint
//! written by 4 processes on `data=8` restores onto 1 and 2 processes on `data=2,model=4` and
//! continues with the uninterrupted run's losses; a flipped byte is named at restore. SIGTERM
//! checkpoints at an agreed step and exits 0, alone and as a job of one process with its
//! coordinator; a job of several processes on `cpu` is refused before anything starts.

mod common;

use common::{basic_cmd, fashion_shards, run_losses, tmp, KillOnDrop};

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// A run of the tiny model over the 12 shards: batch 32 from 8 data streams (their number
/// fixed, so that the global batch is the same for every process count), checkpoints every 10.
fn args(run: &Path, steps: u64, mesh: &str, rules: &str, processes: usize) -> Vec<String> {
    [
        "train",
        "--model",
        "tiny",
        "--data",
        fashion_shards().to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--steps",
        &steps.to_string(),
        "--batch",
        "32",
        "--data-streams",
        "8",
        "--shuffle-buffer",
        "24",
        "--checkpoint-every",
        "10",
        "--keep",
        "5",
        "--eval-every",
        "0",
        "--quiet",
        "--mesh",
        mesh,
        "--partitioning",
        rules,
        "--simulate-processes",
        &processes.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn basic(args: &[String]) -> std::process::Output {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = basic_cmd(&a)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    KillOnDrop(child).wait_with_deadline(Duration::from_secs(600))
}

fn ok(args: &[String]) -> String {
    let out = basic(args);
    assert!(
        out.status.success(),
        "basic {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn numbers(l: &[(u64, String)]) -> Vec<(u64, f64)> {
    l.iter().map(|(s, v)| (*s, v.parse().unwrap())).collect()
}

/// A new run folder holding only checkpoint `step` of `from`.
fn seeded(name: &str, from: &Path, step: u64) -> std::path::PathBuf {
    let run = tmp(name);
    let folder = format!("step-{step:07}");
    let (src, dst) = (
        from.join("checkpoints").join(&folder),
        run.join("checkpoints").join(&folder),
    );
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    run
}

#[test]
fn simulated_processes_give_the_same_losses_and_checkpoints_restore_onto_any_layout() {
    let steps = 30;
    let mut runs = Vec::new();
    for p in [1, 2, 4] {
        let run = tmp(&format!("p{p}"));
        ok(&args(&run, steps, "data=8", "data_parallel", p));
        runs.push(run);
    }
    let want = run_losses(&runs[0]);
    assert_eq!(want.len(), steps as usize);
    for (p, run) in [2, 4].iter().zip(&runs[1..]) {
        assert_eq!(run_losses(run), want, "{p} processes against 1");
    }
    // Every process wrote its own data file, a share of the replicated tensors each (not all
    // to process 0); process 0 the manifest.
    let four = &runs[2];
    let ck = four.join("checkpoints/step-0000010");
    let sizes: Vec<u64> = (0..4)
        .map(|p| {
            let f = ck.join(format!("process-{p:05}.bin"));
            std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0)
        })
        .collect();
    let total: u64 = sizes.iter().sum();
    assert!(
        sizes.iter().all(|&n| n > total / 8),
        "each process writes a share: {sizes:?}"
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ck.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["processes"], 4);

    // Restored at step 10 onto another mesh and process count: the sum over the batch runs in
    // another order, so f32 rounding differs; the losses agree to f32's reduction tolerance.
    let tail: Vec<(u64, f64)> = numbers(&want).into_iter().filter(|l| l.0 > 10).collect();
    for p in [1, 2] {
        let run = seeded(&format!("restored-{p}"), four, 10);
        let mut a = args(&run, steps, "data=2,model=4", "data_model", p);
        a.push("--resume".into());
        ok(&a);
        let got = numbers(&run_losses(&run));
        assert_eq!(got.len(), tail.len(), "{p} processes: steps 11..30");
        for ((s, g), (_, w)) in got.iter().zip(&tail) {
            assert!(
                (g - w).abs() <= 1e-4 * w.abs(),
                "{p} processes on data=2,model=4, step {s}: loss {g} against {w}"
            );
        }
    }

    // Four processes on data=2,model=4: two processes' devices would hold the same rows, and
    // each loads only its quarter of the batch. Refused, naming the layout to use.
    let run = seeded("mislaid", four, 10);
    let mut a = args(&run, steps, "data=2,model=4", "data_model", 4);
    a.push("--resume".into());
    let out = basic(&a);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        e.contains("process 0 of 4: its devices hold rows 0..16") && e.contains("data axis first"),
        "{e}"
    );

    // One flipped byte in process 2's data file: named at restore, nothing trained.
    let run = seeded("flipped", four, 10);
    let file = run.join("checkpoints/step-0000010/process-00002.bin");
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&file, bytes).unwrap();
    let mut a = args(&run, steps, "data=8", "data_parallel", 1);
    a.push("--resume".into());
    let out = basic(&a);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        e.contains("process-00002.bin") && e.contains("SHA-256"),
        "{e}"
    );
    assert!(!run.join("metrics.jsonl").exists() || run_losses(&run).is_empty());
    for r in runs {
        let _ = std::fs::remove_dir_all(r);
    }
}

/// A free port on 127.0.0.1 (bound, then let go).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// SIGTERM to a run in progress: it checkpoints the step it reached, says so and exits 0, and
/// `--resume` continues with the uninterrupted run's losses. Alone, and as a job of one process
/// (the stop agreed on through the coordinator).
#[test]
fn sigterm_checkpoints_the_agreed_step_and_exits_zero() {
    let steps = 150;
    let full = tmp("term-full");
    let plain = |run: &Path| {
        let mut a = args(run, steps, "data=2", "data_parallel", 1);
        // Checkpoints only when stopped.
        let i = a.iter().position(|s| s == "--checkpoint-every").unwrap();
        a[i + 1] = "1000".into();
        a
    };
    ok(&plain(&full));
    let want = run_losses(&full);
    assert_eq!(want.len(), steps as usize);
    for job in [false, true] {
        let run = tmp(if job { "term-job" } else { "term-alone" });
        let mut a = plain(&run);
        if job {
            let port = free_port();
            a.extend(
                [
                    "--coordinator",
                    &format!("127.0.0.1:{port}"),
                    "--num-processes",
                    "1",
                    "--process-id",
                    "0",
                ]
                .map(String::from),
            );
        }
        let argv: Vec<&str> = a.iter().map(String::as_str).collect();
        let child = basic_cmd(&argv)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let child = KillOnDrop(child);
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let logged = std::fs::read_to_string(run.join("metrics.jsonl"))
                .map(|t| t.lines().count())
                .unwrap_or(0);
            if logged >= 20 {
                break;
            }
            assert!(Instant::now() < deadline, "no step 20 within 300 s");
            std::thread::sleep(Duration::from_millis(5));
        }
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let out = child.wait_with_deadline(Duration::from_secs(120));
        let (so, se) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "job {job}: {se}");
        let at: Vec<u64> = basic::train::run::checkpoints(&run)
            .iter()
            .map(|c| c.0)
            .collect();
        assert_eq!(
            at.len(),
            1,
            "job {job}: one checkpoint, at the stop: {at:?}"
        );
        assert!(
            at[0] >= 20 && at[0] < steps,
            "job {job}: stopped at {}",
            at[0]
        );
        assert!(
            so.contains(&format!("stopped at step {}", at[0])) && so.contains("--resume"),
            "job {job}: {so}"
        );
        let mut resume = a.clone();
        resume.push("--resume".into());
        ok(&resume);
        assert_eq!(run_losses(&run), want, "job {job}: stopped and resumed");
    }
}

/// The CPU plugins have no collectives across processes: two processes on `cpu` are one clear
/// error, before the coordinator waits for anyone.
#[test]
fn several_processes_on_cpu_are_refused_before_starting() {
    let run = tmp("cpu-two");
    let mut a = args(&run, 5, "data=2", "data_parallel", 1);
    a.truncate(a.len() - 2);
    let port = free_port();
    a.extend(
        [
            "--backend",
            "cpu",
            "--coordinator",
            &format!("127.0.0.1:{port}"),
            "--num-processes",
            "2",
            "--process-id",
            "0",
        ]
        .map(String::from),
    );
    let t = Instant::now();
    let out = basic(&a);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        e.contains("2 processes on the `cpu` backend") && e.contains("--cpu-devices"),
        "{e}"
    );
    assert!(t.elapsed() < Duration::from_secs(30), "refused at once");
}
