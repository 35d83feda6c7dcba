//! Training end to end on real data (Fashion-MNIST from Debian's `dataset-fashion-mnist`, which
//! `scripts/test` installs): the loss falls and zero-shot accuracy beats chance; a run killed
//! with SIGKILL (also in the middle of a checkpoint write) resumes to the same loss sequence as an
//! uninterrupted run; bad inputs give one clear error naming the file.

mod common;

use common::{basic_cmd, tmp};

use std::path::Path;
use std::process::Stdio;

fn data() -> &'static Path {
    common::fashion_data()
}

fn sharded() -> &'static Path {
    common::fashion_shards()
}

fn losses(run: &Path) -> Vec<(u64, String)> {
    common::run_losses(run)
}

#[test]
fn a_short_run_learns_and_beats_chance_zero_shot() {
    let run = tmp("learn");
    let d = data().to_str().unwrap().to_string();
    let r = run.to_str().unwrap().to_string();
    let out = basic_cmd(&[
        "train",
        "--model",
        "tiny",
        "--data",
        &d,
        "--out",
        &r,
        "--steps",
        "150",
        "--batch",
        "32",
        "--eval-every",
        "150",
        "--eval-images",
        "600",
        "--quiet",
    ])
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let l: Vec<f64> = losses(&run)
        .iter()
        .map(|(_, v)| v.parse().unwrap())
        .collect();
    let first: f64 = l[..15].iter().sum::<f64>() / 15.0;
    let last: f64 = l[l.len() - 15..].iter().sum::<f64>() / 15.0;
    assert!(last < first - 0.3, "loss did not fall: {first} → {last}");
    let z = basic_cmd(&[
        "eval",
        "zero-shot",
        "--run",
        &r,
        "--data",
        &d,
        "--classes",
        &format!("{d}/classes.txt"),
        "--templates",
        &format!("{d}/templates.txt"),
        "--json",
    ])
    .output()
    .unwrap();
    assert!(z.status.success(), "{}", String::from_utf8_lossy(&z.stderr));
    let v: serde_json::Value = serde_json::from_slice(&z.stdout).unwrap();
    let top1 = v["top1"].as_f64().unwrap();
    assert!(
        top1 > 0.35,
        "zero-shot top-1 {top1} is not far above chance (0.1)"
    );
    assert!(v["top5"].as_f64().unwrap() >= top1);
    assert!(run.join("loss.png").is_file() && run.join("accuracy.png").is_file());
    let rv = basic_cmd(&[
        "eval",
        "retrieval",
        "--run",
        &r,
        "--data",
        &d,
        "--limit",
        "200",
        "--json",
    ])
    .output()
    .unwrap();
    assert!(
        rv.status.success(),
        "{}",
        String::from_utf8_lossy(&rv.stderr)
    );
    let rv: serde_json::Value = serde_json::from_slice(&rv.stdout).unwrap();
    assert!(
        rv["image_to_text_recall@10"].as_f64().unwrap()
            >= rv["image_to_text_recall@1"].as_f64().unwrap()
    );
}

fn train_args<'a>(d: &'a str, r: &'a str, steps: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--model",
        "tiny",
        "--data",
        d,
        "--out",
        r,
        "--steps",
        steps,
        "--batch",
        "16",
        "--checkpoint-every",
        "5",
        "--eval-every",
        "0",
        "--quiet",
    ]
}

/// `train_args` over the 12 shards, streamed through 4 data streams shuffled in windows of 24:
/// the checkpoint of step 10 (40 samples a stream) lies inside a window that starts inside a
/// shard, so a resume rebuilds the window from the middle of the shard.
fn streamed_args<'a>(d: &'a str, r: &'a str, steps: &'a str) -> Vec<&'a str> {
    let mut a = train_args(d, r, steps);
    a.extend(["--data-streams", "4", "--shuffle-buffer", "24"]);
    a
}

/// Runs `basic args` (a training run into `run`), kills it with SIGKILL once it has logged
/// `steps` steps, then runs it again with `--resume`, which must succeed.
fn kill_and_resume(args: Vec<&str>, run: &Path, steps: usize) {
    let mut child = basic_cmd(&args).stderr(Stdio::null()).spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    loop {
        let logged = std::fs::read_to_string(run.join("metrics.jsonl"))
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if logged >= steps {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("training ended before it could be killed: {status}");
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the run logged no {steps} steps within 600 s");
        }
        std::thread::yield_now();
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let mut resume = args;
    resume.push("--resume");
    let out = basic_cmd(&resume).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn killed_runs_resume_to_the_same_losses() {
    let d = sharded().to_str().unwrap().to_string();
    let steps = "30";
    // The uninterrupted run.
    let full = tmp("full");
    let f = full.to_str().unwrap().to_string();
    assert!(basic_cmd(&streamed_args(&d, &f, steps))
        .status()
        .unwrap()
        .success());
    let want = losses(&full);
    assert_eq!(want.len(), 30);

    // Killed with SIGKILL once it has logged step 12, then resumed.
    let killed = tmp("killed");
    let k = killed.to_str().unwrap().to_string();
    kill_and_resume(streamed_args(&d, &k, steps), &killed, 12);
    assert_eq!(losses(&killed), want, "SIGKILL + resume");

    // A crash in the middle of the step-15 checkpoint write: the partial file never replaces a
    // checkpoint, the run resumes from step 10. This run donates its parameters and optimizer
    // state to the step (written in place), which must not change a single bit.
    let crashed = tmp("crashed");
    let c = crashed.to_str().unwrap().to_string();
    let mut donating = streamed_args(&d, &c, steps);
    donating.push("--donate");
    let out = basic_cmd(&donating)
        .env("BASIC_FAULT_CHECKPOINT_STEP", "15")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let ckpts: Vec<u64> = basic::train::run::checkpoints(&crashed)
        .iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(
        ckpts,
        vec![5, 10],
        "the interrupted write must leave the earlier checkpoints intact"
    );
    let mut resume = donating.clone();
    resume.push("--resume");
    let out = basic_cmd(&resume).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        losses(&crashed),
        want,
        "crash during checkpoint + resume, donating"
    );
}

/// `streamed_args` with the streamed step: 4 micro-batches of 4, each read (one sample from
/// each of the 4 data streams), uploaded and embedded, then read again for the backward pass.
fn streamed_step_args<'a>(d: &'a str, r: &'a str, steps: &'a str) -> Vec<&'a str> {
    let mut a = streamed_args(d, r, steps);
    a.extend(["--streamed", "--microbatches", "4"]);
    a
}

#[test]
fn the_streamed_step_trains_as_the_one_program_step_and_resumes_after_sigkill() {
    let d = sharded().to_str().unwrap().to_string();
    let steps = "20";
    // The one-program step reads each stream's next 4 samples as its rows; the streamed step
    // reads them one per micro-batch: the same pairs, so the same loss and gradient (up to f32
    // rounding of sums taken in another order).
    let one = tmp("one-program");
    let o = one.to_str().unwrap().to_string();
    assert!(basic_cmd(&streamed_args(&d, &o, steps))
        .status()
        .unwrap()
        .success());
    let full = tmp("streamed-full");
    let f = full.to_str().unwrap().to_string();
    let out = basic_cmd(&streamed_step_args(&d, &f, steps))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = losses(&full);
    assert_eq!(want.len(), 20);
    let mut worst = 0f64;
    for ((s, a), (_, b)) in want.iter().zip(losses(&one)) {
        let (a, b): (f64, f64) = (a.parse().unwrap(), b.parse().unwrap());
        worst = worst.max((a - b).abs() / b.abs());
        assert!(
            (a - b).abs() <= 1e-5 * b.abs(),
            "step {s}: streamed {a}, one program {b}"
        );
    }
    println!("largest relative difference of the losses: {worst:e}");

    // Killed with SIGKILL once it has logged step 7, then resumed from step 5's checkpoint: the
    // same losses, bit for bit.
    let killed = tmp("streamed-killed");
    let k = killed.to_str().unwrap().to_string();
    kill_and_resume(streamed_step_args(&d, &k, steps), &killed, 7);
    assert_eq!(losses(&killed), want, "SIGKILL + resume, streamed");

    // Its checkpoints count micro-batches: the one-program step refuses to resume them.
    let mut other = streamed_args(&d, &k, "14");
    other.push("--resume");
    let out = basic_cmd(&other).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("batches of 4 pairs") && err.contains("--streamed"),
        "{err}"
    );
}

#[test]
fn bad_inputs_give_one_clear_error_naming_the_file() {
    let dir = tmp("bad");
    let d = data();
    // A corrupt image inside a shard.
    let corrupt = dir.join("corrupt");
    let samples: Vec<basic::data::Sample> = (0..40)
        .map(|i| basic::data::Sample {
            key: format!("broken{i:02}"),
            image: std::sync::Arc::new(b"\x89PNG not really".to_vec()),
            caption: "a bag.".into(),
            label: Some(8),
        })
        .collect();
    basic::data::shards::write_shards(&corrupt, "train", &samples, 100).unwrap();
    std::fs::copy(d.join("captions.txt"), corrupt.join("captions.txt")).unwrap();
    let run = dir.join("run");
    let out = basic_cmd(&[
        "train",
        "--model",
        "tiny",
        "--data",
        corrupt.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--steps",
        "2",
        "--batch",
        "8",
        "--quiet",
    ])
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("image `broken") && !err.contains("panicked"),
        "{err}"
    );

    // A truncated tar shard.
    let trunc = dir.join("trunc");
    std::fs::create_dir_all(&trunc).unwrap();
    let bytes = std::fs::read(d.join("train-00000.tar")).unwrap();
    std::fs::write(
        trunc.join("train-00000.tar"),
        &bytes[..bytes.len() / 3 + 100],
    )
    .unwrap();
    let truncated = basic::data::source::parse(trunc.to_str().unwrap(), "train", None).unwrap();
    let e = basic::data::stream::for_each_sample(&truncated, false, &mut |_| Ok(true))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("train-00000.tar") && e.contains("truncated") && e.contains("at byte"),
        "{e}"
    );

    // A manifest line whose image is missing: an error, or skipped and counted on request.
    let manifest = dir.join("m.jsonl");
    std::fs::write(
        &manifest,
        "{\"image\": \"nope.png\", \"caption\": \"a dress.\"}\n",
    )
    .unwrap();
    let e = basic::data::shards::read_manifest(&manifest, false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("m.jsonl") && e.contains("line 1") && e.contains("nope.png"),
        "{e}"
    );
    let (ok, skipped) = basic::data::shards::read_manifest(&manifest, true).unwrap();
    assert!(ok.is_empty() && skipped.samples == 1);

    // Truncated and hostile safetensors headers.
    let good = dir.join("good.safetensors");
    let a = basic::runtime::HostArray::new(&[2], &[1f32, 2.]).unwrap();
    basic::io::safetensors::write(&good, &[("x".into(), &a)], &Default::default()).unwrap();
    let gb = std::fs::read(&good).unwrap();
    let truncated = dir.join("truncated.safetensors");
    std::fs::write(&truncated, &gb[..gb.len() - 3]).unwrap();
    let e = basic::io::safetensors::read(&truncated)
        .unwrap_err()
        .to_string();
    assert!(e.contains("truncated.safetensors"), "{e}");
    let hostile = dir.join("hostile.safetensors");
    let mut h = u64::MAX.to_le_bytes().to_vec();
    h.extend_from_slice(b"{}");
    std::fs::write(&hostile, &h).unwrap();
    let e = basic::io::safetensors::read(&hostile)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("hostile.safetensors") && e.contains("claims"),
        "{e}"
    );
    let lying = dir.join("lying.safetensors");
    let header = br#"{"x":{"dtype":"F32","shape":[1000000],"data_offsets":[0,4000000]}}"#;
    let mut l = (header.len() as u64).to_le_bytes().to_vec();
    l.extend_from_slice(header);
    std::fs::write(&lying, &l).unwrap();
    let e = basic::io::safetensors::read(&lying)
        .unwrap_err()
        .to_string();
    assert!(e.contains("lying.safetensors"), "{e}");

    // A tokenizer file that is not JSON.
    let tok = dir.join("tokenizer.json");
    std::fs::write(&tok, "this is not json").unwrap();
    let e = basic::data::Tokenizer::load(&tok)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("tokenizer.json") && e.contains("not JSON"),
        "{e}"
    );
}

#[test]
fn a_failed_run_leaves_the_checkpoints_intact() {
    let d = data().to_str().unwrap().to_string();
    let run = tmp("intact");
    let r = run.to_str().unwrap().to_string();
    assert!(basic_cmd(&train_args(&d, &r, "5"))
        .status()
        .unwrap()
        .success());
    let (_, ck) = basic::train::run::checkpoints(&run).pop().unwrap();
    let before = common::checkpoint_bytes(&ck);
    // Resuming against data that fails (no shards) must not touch the checkpoint.
    let empty = tmp("empty");
    let mut args = train_args(empty.to_str().unwrap(), &r, "10");
    args.push("--resume");
    let out = basic_cmd(&args).output().unwrap();
    assert!(!out.status.success());
    assert_eq!(common::checkpoint_bytes(&ck), before);
}

#[test]
fn zero_shot_on_a_hand_built_case() {
    // Three classes along the axes; images near one axis each. Image 3 lies closest to class 2
    // but is labelled 0: top-1 = 3/4, and class 0 is in its top-2.
    let classes = vec![
        vec![1.0f32, 0.0, 0.0],
        vec![0.0, 1.0, 0.0],
        vec![0.0, 0.0, 1.0],
    ];
    let images = vec![
        vec![0.9f32, 0.1, 0.0],
        vec![0.0, 1.0, 0.1],
        vec![0.1, 0.0, 0.9],
        vec![0.3, 0.0, 0.9],
    ];
    let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    let z = basic::eval::zero_shot_scores(&images, &[0, 1, 2, 0], &classes, &names).unwrap();
    assert_eq!(z.top1, 0.75);
    assert_eq!(z.top5, 1.0);
    assert_eq!(z.per_class[0].1, 0.5);
    // Retrieval with matching pairs: perfect recall.
    let r = basic::eval::retrieval(&classes, &classes, &[1]);
    assert!(r.iter().all(|(_, v)| *v == 1.0));
}

#[test]
fn a_diverging_run_stops_naming_the_step_and_keeps_the_last_good_checkpoint() {
    let d = data().to_str().unwrap().to_string();
    let dir = tmp("nan");
    // A learning rate no model survives: the loss turns non-finite within a few steps.
    let cfg = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/graphs/tiny.toml"))
        .unwrap()
        .replace("learning_rate = 1e-3", "learning_rate = 1e30")
        .replace("clip_norm = 1.0", "clip_norm = 0.0")
        .replace("warmup_steps = 20", "warmup_steps = 0");
    let model = dir.join("unstable.toml");
    std::fs::write(&model, cfg).unwrap();
    let run = dir.join("run");
    let out = basic_cmd(&[
        "train",
        "--model",
        model.to_str().unwrap(),
        "--data",
        &d,
        "--out",
        run.to_str().unwrap(),
        "--steps",
        "30",
        "--batch",
        "16",
        "--checkpoint-every",
        "1",
        "--eval-every",
        "0",
        "--quiet",
    ])
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("at step") && err.contains("last good checkpoint"),
        "{err}"
    );
    // Every checkpoint left behind is complete and finite.
    for (_, p) in basic::train::run::checkpoints(&run) {
        let f = common::read_checkpoint(&p);
        assert!(
            f.values()
                .all(|a| a.to_f64_vec().iter().all(|v| v.is_finite())),
            "{}",
            p.display()
        );
    }
}

/// Failures that used to pass silently: each is now an error or a message, and fails without its
/// fix.
#[test]
fn silent_failures_are_said() {
    let d = data().to_str().unwrap().to_string();
    let dir = tmp("silent");
    // --init-from a file none of whose names match: refused (it trained from random weights).
    let foreign = dir.join("foreign.safetensors");
    let a = basic::runtime::HostArray::new(&[2], &[1.0f32, 2.0]).unwrap();
    basic::io::safetensors::write(
        &foreign,
        &[("vision_model.embeddings.weight".into(), &a)],
        &Default::default(),
    )
    .unwrap();
    let run = dir.join("r1");
    let mut args = train_args(&d, run.to_str().unwrap(), "2");
    args.extend(["--init-from", foreign.to_str().unwrap()]);
    let o = basic_cmd(&args).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("none of its 1 tensors") && err.contains("vision_model.embeddings.weight"),
        "{err}"
    );

    // --resume with no checkpoint: starts, and says so even with --quiet.
    let run = dir.join("r2");
    let mut args = train_args(&d, run.to_str().unwrap(), "1");
    args.push("--resume");
    let o = basic_cmd(&args).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("has no checkpoint yet"), "{err}");

    // A mesh axis that no rule uses would replicate everything over it.
    let o = basic_cmd(&["compile", "--model", "tiny", "--mesh", "data=1,model=8"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("`model`") && err.contains("model_parallel") && err.contains("data_model"),
        "{err}"
    );
}

/// `keep = 0` in the library used to delete the checkpoint it had just written.
#[test]
fn keep_zero_keeps_the_newest_checkpoint() {
    use basic::train::run::{checkpoints, train, RunOptions};
    let base = basic::model::ModelConfig::load("tiny").unwrap();
    let choices = basic::train::StepChoices {
        batch: Some(16),
        steps: Some(2),
        ..Default::default()
    };
    let setup = basic::train::StepSetup::new(&base, &choices, &Default::default(), false).unwrap();
    let out = tmp("keep0");
    let opts = RunOptions {
        setup,
        data: data().to_str().unwrap().to_string(),
        stream: Default::default(),
        out: out.clone(),
        steps: 2,
        resume: false,
        seed: 0,
        checkpoint_every: 1,
        keep: 0,
        eval_every: 0,
        eval_images: 0,
        workers: 1,
        skip_bad: false,
        progress: false,
        init_from: None,
        tokenizer: None,
        executable: None,
        streamed: false,
        checkpoint_dir: None,
        job: None,
        simulated_processes: 1,
    };
    let rt = common::cpu_runtime(1);
    train(&rt, &opts).unwrap();
    let kept = checkpoints(&out);
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0].0, 2);
}
