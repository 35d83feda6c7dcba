//! Sharded checkpoint throughput: P processes (threads here, each doing what one process of a job
//! does: its data file, its manifest pieces, its ranged and checked reads) write and restore a
//! state of `BASIC_CKPT_MB` MiB a process, to and from a local folder, S3 (moto on 127.0.0.1)
//! and GCS (fake-gcs-server on 127.0.0.1: restore only; its bundled version refuses
//! object_store's uploads, so the files are put there through its JSON API). The local disk's
//! own rate (one file of the same bytes, written and synced) is measured beside it. One JSON
//! line a measurement; `benches/checkpoint.sh` runs it beside orbax.

#[path = "../tests/common/emulators.rs"]
mod emulators;

use std::collections::BTreeMap;
use std::time::Instant;

use basic::array::HostArray;
use basic::dtype::DType;
use basic::train::checkpoint::{self, Block, Manifest, Reader, TensorEntry, FORMAT};
use emulators::{Emulator, Kind};

const COLS: usize = 1024;

fn env_usize(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

/// Each process's block of a `[P·rows, COLS]` f32 tensor, of uniform values in [0, 1) (trained
/// weights do not compress; orbax compresses what it writes).
fn blocks(p: usize, rows: usize) -> Vec<HostArray> {
    (0..p)
        .map(|q| {
            let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ q as u64;
            let v: Vec<f32> = (0..rows * COLS)
                .map(|_| {
                    // splitmix64
                    state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    let mut z = state;
                    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                    ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
                })
                .collect();
            HostArray::new(&[rows as i64, COLS as i64], &v).unwrap()
        })
        .collect()
}

/// Writes the step folder from `p` threads at once, then the manifest; seconds.
fn write(dir: &str, parts: &[HostArray], rows: usize) -> f64 {
    // Each process's block as the trainer hands it over (copied out of the device buffers before
    // the clock starts, as those copies are not the checkpoint's).
    let blocks: Vec<Block> = parts
        .iter()
        .enumerate()
        .map(|(q, a)| Block {
            tensor: "w".into(),
            start: vec![(q * rows) as i64, 0],
            value: a.clone(),
        })
        .collect();
    let t = Instant::now();
    let pieces: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = blocks
            .iter()
            .enumerate()
            .map(|(q, b)| {
                s.spawn(move || checkpoint::write_process(dir, q, std::slice::from_ref(b)).unwrap())
            })
            .collect();
        hs.into_iter()
            .flat_map(|h| h.join().unwrap())
            .map(|(_, x)| x)
            .collect()
    });
    let mut tensors = BTreeMap::new();
    tensors.insert(
        "w".to_string(),
        TensorEntry {
            dtype: "f32".into(),
            shape: vec![(parts.len() * rows) as i64, COLS as i64],
            pieces,
        },
    );
    let m = Manifest {
        format: FORMAT,
        step: 1,
        seed: 0,
        processes: parts.len(),
        mesh: format!("data={}", parts.len()),
        tensors,
        data_position: serde_json::Value::Null,
        sha256: String::new(),
    };
    checkpoint::write_manifest(dir, &m).unwrap();
    t.elapsed().as_secs_f64()
}

/// Each of `p` threads reads (and checks) its own rows; seconds.
fn restore(dir: &str, p: usize, rows: usize, want: &[HostArray]) -> f64 {
    let t = Instant::now();
    std::thread::scope(|s| {
        for (q, w) in want.iter().enumerate().take(p) {
            s.spawn(move || {
                let r = Reader::open(dir).unwrap();
                let got = r
                    .read(
                        "w",
                        &[(q * rows) as i64, 0],
                        &[rows as i64, COLS as i64],
                        DType::F32,
                    )
                    .unwrap();
                assert!(
                    got.bytes() == w.bytes(),
                    "process {q} read back what it wrote"
                );
            });
        }
    });
    t.elapsed().as_secs_f64()
}

fn report(store: &str, what: &str, p: usize, mib: usize, seconds: f64) {
    println!(
        "{}",
        serde_json::json!({
            "store": store, "op": what, "processes": p, "mib_per_process": mib,
            "seconds": seconds, "mib_s_per_process": mib as f64 / seconds,
            "mib_s_total": (p * mib) as f64 / seconds,
        })
    );
}

fn main() {
    let p = env_usize("BASIC_CKPT_PROCESSES", 4);
    let mib = env_usize("BASIC_CKPT_MB", 64);
    let rows = mib * 1024 * 1024 / (4 * COLS);
    let parts = blocks(p, rows);
    let tmp = std::env::temp_dir().join(format!("basic-bench-ckpt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();

    // The disk itself: the same bytes as one file, written and synced.
    let raw: Vec<u8> = parts.iter().flat_map(|a| a.bytes().to_vec()).collect();
    let t = Instant::now();
    {
        use std::io::Write;
        let mut f = std::fs::File::create(tmp.join("raw.bin")).unwrap();
        f.write_all(&raw).unwrap();
        f.sync_all().unwrap();
    }
    report("local-raw-file", "write", p, mib, t.elapsed().as_secs_f64());
    drop(raw);

    let local = tmp.join("step").display().to_string();
    report("local", "write", p, mib, write(&local, &parts, rows));
    report("local", "restore", p, mib, restore(&local, p, rows, &parts));

    let s3 = Emulator::start(Kind::S3);
    let gcs = Emulator::start(Kind::Gcs);
    for e in [&s3, &gcs] {
        for (k, v) in e.env() {
            std::env::set_var(k, v);
        }
        e.create_bucket("bench");
    }
    let url = "s3://bench/run/step";
    report("s3-emulator", "write", p, mib, write(url, &parts, rows));
    report(
        "s3-emulator",
        "restore",
        p,
        mib,
        restore(url, p, rows, &parts),
    );

    gcs.upload_folder("bench", "run/step", std::path::Path::new(&local));
    report(
        "gcs-emulator",
        "restore",
        p,
        mib,
        restore("gs://bench/run/step", p, rows, &parts),
    );
    let _ = std::fs::remove_dir_all(&tmp);
}
