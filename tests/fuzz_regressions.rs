//! Replays the fuzz targets' kept inputs on stable, through the same harness the libFuzzer
//! targets run (`fuzz/harness.rs`), so that CI exercises every parser without the nightly
//! toolchain:
//!
//! - `fuzz/seeds/TARGET/*`: a small minimized corpus per target. Each must run without a panic.
//! - `fuzz/regressions/TARGET/*`: every input that once crashed a target (or was accepted when it
//!   had to be refused). A name starting `refused-` must be refused, `accepted-` accepted.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

#[path = "../fuzz/harness.rs"]
mod harness;

fn dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind)
}

/// `(target, file name, bytes)` of every kept input of `kind`.
fn inputs(kind: &str) -> Vec<(String, String, Vec<u8>)> {
    let mut out = Vec::new();
    for (target, _) in harness::TARGETS {
        let d = dir(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            out.push((target.to_string(), name, std::fs::read(&f).unwrap()));
        }
    }
    out
}

/// Runs one input; the panic message, if it panicked.
fn replay(target: &str, data: &[u8]) -> Result<Result<(), String>, String> {
    catch_unwind(AssertUnwindSafe(|| harness::run(target, data))).map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic".into())
    })
}

#[test]
fn every_fuzz_target_has_seeds_and_its_seeds_run_without_a_panic() {
    let seeds = inputs("seeds");
    let mut failures = Vec::new();
    for (target, _) in harness::TARGETS {
        let n = seeds.iter().filter(|s| s.0 == *target).count();
        assert!(n > 0, "fuzz/seeds/{target} has no inputs");
    }
    for (target, name, data) in &seeds {
        if let Err(p) = replay(target, data) {
            failures.push(format!("seeds/{target}/{name}: {p}"));
        }
    }
    println!("{} seed inputs replayed", seeds.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_kept_crash_is_now_refused_or_accepted_as_its_name_says() {
    let kept = inputs("regressions");
    let mut failures = Vec::new();
    for (target, name, data) in &kept {
        let want_ok = if name.starts_with("accepted-") {
            true
        } else if name.starts_with("refused-") {
            false
        } else {
            failures.push(format!(
                "regressions/{target}/{name}: name it refused-… or accepted-…"
            ));
            continue;
        };
        match replay(target, data) {
            Err(p) => failures.push(format!("regressions/{target}/{name} panics: {p}")),
            Ok(Ok(())) if !want_ok => {
                failures.push(format!("regressions/{target}/{name} was accepted"))
            }
            Ok(Err(e)) if want_ok => {
                failures.push(format!("regressions/{target}/{name} was refused: {e}"))
            }
            Ok(r) => {
                let r: String = format!("{r:?}").chars().take(240).collect();
                println!("regressions/{target}/{name}: {r}")
            }
        }
    }
    println!("{} kept crashes replayed", kept.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
