//! Streaming training data end to end, with real storage servers on 127.0.0.1 (fake-gcs-server
//! and moto, which `scripts/test` installs): training from `gs://`, `s3://` and `pipe:cat`
//! gives the losses of training from the local copy, bit for bit; a server stopped mid-run is
//! retried, then reported in one error naming the URL, and the checkpoints stay intact;
//! damaged shards stop a run naming the URL and the byte, or are skipped and counted.

mod common;

use common::emulators::{Emulator, Kind};
use common::{basic_cmd, tmp};

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use basic::data::import::{fashion_mnist, FASHION_DIR};

/// 600 Fashion-MNIST training pairs in 12 shards of 50 (with `sizes.json`), and the folder's
/// captions, classes and templates.
fn data() -> &'static Path {
    static DATA: OnceLock<PathBuf> = OnceLock::new();
    DATA.get_or_init(|| {
        let whole = tmp("stream-whole");
        fashion_mnist(Path::new(FASHION_DIR), &whole, Some(600)).unwrap();
        let d = tmp("stream-data");
        let mut samples = Vec::new();
        let train = basic::data::source::parse(whole.to_str().unwrap(), "train", None).unwrap();
        basic::data::stream::for_each_sample(&train, false, &mut |s| {
            samples.push(s);
            Ok(true)
        })
        .unwrap();
        basic::data::shards::write_shards(&d, "train", &samples, 50).unwrap();
        for f in ["captions.txt", "classes.txt", "templates.txt"] {
            std::fs::copy(whole.join(f), d.join(f)).unwrap();
        }
        d
    })
}

fn losses(run: &Path) -> Vec<(u64, String)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["loss"].to_string())
        })
        .collect()
}

/// `basic train` on `data` into `run` for `steps`, shuffled over 4 streams.
fn train(
    data: &str,
    run: &Path,
    steps: &str,
    extra: &[&str],
    env: &[(&str, String)],
) -> std::process::Output {
    let mut args = vec![
        "train",
        "--model",
        "tiny",
        "--data",
        data,
        "--out",
        run.to_str().unwrap(),
        "--steps",
        steps,
        "--batch",
        "16",
        "--data-streams",
        "4",
        "--shuffle-buffer",
        "20",
        "--checkpoint-every",
        "4",
        "--eval-every",
        "0",
    ];
    // Quiet, except a resumed run, which says where it resumed from.
    if !extra.contains(&"--resume") {
        args.push("--quiet");
    }
    args.extend_from_slice(extra);
    let mut c = basic_cmd(&args);
    for (k, v) in env {
        c.env(k, v);
    }
    let child = c
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    common::KillOnDrop(child).wait_with_deadline(std::time::Duration::from_secs(600))
}

fn ok(o: &std::process::Output) {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn buckets_and_commands_train_to_the_losses_of_the_local_copy() {
    let d = data();
    let local = tmp("stream-local");
    ok(&train(d.to_str().unwrap(), &local, "12", &[], &[]));
    let want = losses(&local);
    assert_eq!(want.len(), 12);
    let tok = local.join("tokenizer.json");
    let tok = tok.to_str().unwrap();

    for kind in [Kind::Gcs, Kind::S3] {
        let e = Emulator::start(kind);
        e.create_bucket("shards");
        e.upload_folder("shards", "fm", d);
        let s = e.scheme();
        // The bucket folder, like a local one (tokenizer trained from its captions.txt).
        let run = tmp(&format!("stream-{s}-folder"));
        ok(&train(
            &format!("{s}://shards/fm/"),
            &run,
            "12",
            &[],
            &e.env(),
        ));
        assert_eq!(losses(&run), want, "{s}:// folder");
        // A brace range of shards (their size from the sizes.json beside them).
        let run = tmp(&format!("stream-{s}-braces"));
        let spec = format!("{s}://shards/fm/train-{{00000..00011}}.tar");
        ok(&train(&spec, &run, "12", &["--tokenizer", tok], &e.env()));
        assert_eq!(losses(&run), want, "{spec}");
        // Stopped after 6 steps and resumed from the bucket: the stream's position comes back.
        let run = tmp(&format!("stream-{s}-resumed"));
        ok(&train(&spec, &run, "6", &["--tokenizer", tok], &e.env()));
        let o = train(
            &spec,
            &run,
            "12",
            &["--tokenizer", tok, "--resume"],
            &e.env(),
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success() && err.contains("(step 6)"), "{err}");
        assert_eq!(losses(&run), want, "{spec}, resumed");
        if kind == Kind::S3 {
            // The same objects as plain http:// URLs (the emulator serves them without
            // credentials, as a public bucket does), with no storage settings at all.
            e.upload_public_folder("shards", "public", d);
            let run = tmp("stream-http-braces");
            let spec = format!("{}/shards/public/train-{{00000..00011}}.tar", e.endpoint());
            ok(&train(&spec, &run, "12", &["--tokenizer", tok], &[]));
            assert_eq!(losses(&run), want, "{spec}");
        }
    }

    // A command's output as each shard: the size is not known, so it is given.
    let run = tmp("stream-pipe");
    let spec = format!("pipe:cat {}/train-{{00000..00011}}.tar", d.display());
    let o = train(&spec, &run, "12", &["--tokenizer", tok], &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("--samples-per-epoch"),
        "{err}"
    );
    ok(&train(
        &spec,
        &run,
        "12",
        &["--tokenizer", tok, "--samples-per-epoch", "600"],
        &[],
    ));
    assert_eq!(losses(&run), want, "{spec}");

    // A list file of the shards (relative paths), joined by `::` to nothing else.
    let list = tmp("stream-list").join("shards.txt");
    let lines: String = (0..12)
        .map(|i| format!("{}/train-{i:05}.tar\n", d.display()))
        .collect();
    std::fs::write(&list, lines).unwrap();
    let run = tmp("stream-list-run");
    ok(&train(
        list.to_str().unwrap(),
        &run,
        "12",
        &["--tokenizer", tok],
        &[],
    ));
    assert_eq!(losses(&run), want, "shard list");
}

#[test]
fn a_server_stopped_mid_run_is_retried_then_named_and_the_checkpoints_stay_intact() {
    let d = data();
    let e = Emulator::start(Kind::Gcs);
    e.create_bucket("dying");
    e.upload_folder("dying", "fm", d);
    let run = tmp("stream-dying");
    let mut args: Vec<String> = [
        "train",
        "--model",
        "tiny",
        "--data",
        "gs://dying/fm/",
        "--out",
        run.to_str().unwrap(),
        "--steps",
        "200",
        "--batch",
        "16",
        "--data-streams",
        "4",
        "--shuffle-buffer",
        "8",
        "--checkpoint-every",
        "4",
        "--eval-every",
        "0",
        "--quiet",
    ]
    .map(String::from)
    .to_vec();
    args.push("--workers".into());
    args.push("1".into());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut c = basic_cmd(&refs);
    for (k, v) in e.env() {
        c.env(k, v);
    }
    let child = c
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let guard = common::KillOnDrop(child);
    // Once it has written a checkpoint, the server goes away.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while basic::train::run::checkpoints(&run).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint within 300 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    drop(e);
    let out = guard.wait_with_deadline(std::time::Duration::from_secs(300));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the run went on without its server: {err}"
    );
    assert!(
        err.contains("gs://dying/fm/train-")
            && err.contains("kept failing for")
            && !err.contains("panicked"),
        "the error names the shard's URL after retrying: {err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one error: {err}");
    for (_, p) in basic::train::run::checkpoints(&run) {
        common::read_checkpoint(&p);
    }
}

#[test]
fn damaged_shards_are_named_with_their_byte_or_skipped_and_counted() {
    let d = data();
    let dir = tmp("stream-damaged");
    for i in 0..12 {
        let n = format!("train-{i:05}.tar");
        std::fs::copy(d.join(&n), dir.join(&n)).unwrap();
    }
    for f in ["captions.txt", "sizes.json"] {
        std::fs::copy(d.join(f), dir.join(f)).unwrap();
    }
    // Shard 3 cut short; shard 5 gzip-compressed and damaged in the middle; shard 7 has a
    // sample without its caption.
    let t3 = std::fs::read(d.join("train-00003.tar")).unwrap();
    std::fs::write(dir.join("train-00003.tar"), &t3[..t3.len() / 2]).unwrap();
    let t5 = std::fs::read(d.join("train-00005.tar")).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &t5).unwrap();
    let mut z = gz.finish().unwrap();
    let mid = z.len() / 2;
    z[mid..mid + 8].copy_from_slice(&[0xAA; 8]);
    std::fs::write(dir.join("train-00005.tar"), &z).unwrap();
    let mut t7 = tar::Builder::new(Vec::new());
    let mut a = tar::Archive::new(std::fs::File::open(d.join("train-00007.tar")).unwrap());
    for (i, entry) in a.entries().unwrap().enumerate() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        if i == 1 {
            assert!(name.ends_with(".txt"), "{name}");
            continue;
        }
        let mut h = entry.header().clone();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
        t7.append_data(&mut h, &name, data.as_slice()).unwrap();
    }
    std::fs::write(dir.join("train-00007.tar"), t7.into_inner().unwrap()).unwrap();

    let spec = dir.to_str().unwrap();
    // An epoch and a half reads every shard.
    let run = tmp("stream-damaged-stop");
    let o = train(spec, &run, "56", &[], &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        (err.contains("train-00003.tar") || err.contains("train-00005.tar"))
            && err.contains("at byte")
            && err.contains("--skip-bad")
            && !err.contains("panicked"),
        "{err}"
    );
    let run = tmp("stream-damaged-skip");
    let o = train(spec, &run, "56", &["--skip-bad"], &[]);
    ok(&o);
    let last: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    assert!(last["bad_shards"].as_u64().unwrap() >= 2, "{last}");
    assert!(last["skipped_samples"].as_u64().unwrap() >= 1, "{last}");
    let summary = String::from_utf8_lossy(&o.stdout);
    assert!(
        summary.contains("damaged shards left") && summary.contains("samples skipped"),
        "{summary}"
    );
}
