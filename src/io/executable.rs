//! Saved executables: a compiled training step with the manifest that says what it was compiled
//! for, so that `basic train --executable F` on a machine of that target loads it instead of
//! compiling, and refuses one built for anything else.
//!
//! Layout of the file: the 8 bytes `BASICEXE`, then three sections, each a little-endian `u64`
//! length and its bytes: the manifest (JSON), the StableHLO program it was compiled from (its
//! `@main` signature checks every execute), and the plugin's serialized executable. Written
//! atomically. The manifest carries the SHA-256 of the program and (since files written after
//! 2026-12) of the executable's bytes, so that a damaged file is refused before the plugin is
//! handed bytes it may not survive.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::ir::RematPolicy;
use crate::model::config::Precision;
use crate::runtime::Partitioner;

const MAGIC: &[u8; 8] = b"BASICEXE";
/// Bumped when the layout or the manifest's meaning changes.
pub const FORMAT: u32 = 1;

/// What an executable was compiled for and from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// `tpu-v5e:2x2`, `h100:8`, or `cpu:N` for the local CPU plugin.
    pub target: String,
    /// The platform (`tpu`, `cuda`, `cpu`) and the kind of its devices (`TPU v5 lite`).
    pub platform: String,
    pub device_kind: String,
    /// Devices the program runs on (the mesh's size).
    pub devices: usize,
    /// The plugin package and version (`libtpu 0.0.42.1`), else its platform version.
    pub plugin_version: String,
    pub model: String,
    /// SHA-256 of the model configuration (TOML, flags applied).
    pub config_sha256: String,
    /// The model configuration itself (TOML), so that a mismatch can name the fields.
    pub config: String,
    pub batch: i64,
    pub microbatches: i64,
    pub remat: RematPolicy,
    pub dtype: Precision,
    pub mesh: String,
    pub partitioning: String,
    pub partitioner: Partitioner,
    pub donate: bool,
    /// SHA-256 of the StableHLO text.
    pub program_sha256: String,
    /// `@main`'s argument and result types (global shapes).
    pub arguments: Vec<String>,
    pub results: Vec<String>,
    /// Device ids, replica-major, that the program was compiled for.
    pub device_assignment: Vec<i64>,
    /// The processes (hosts) of the job it runs in (1: one process; absent in older files).
    #[serde(default = "one")]
    pub processes: usize,
    /// The process that drives each device of `device_assignment`.
    #[serde(default)]
    pub device_processes: Vec<i32>,
}

fn one() -> usize {
    1
}

/// The `section.key` fields whose values differ between two TOML configs, as
/// `train.total_steps saved 1000, here 3`.
fn config_diff(saved: &str, here: &str) -> Vec<String> {
    fn flat(text: &str) -> Vec<(String, String)> {
        let mut section = String::new();
        let mut out = Vec::new();
        for line in text.lines().map(str::trim) {
            if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = format!("{}.", s.trim_matches(['[', ']']));
            } else if let Some((k, v)) = line.split_once('=') {
                out.push((format!("{section}{}", k.trim()), v.trim().to_string()));
            }
        }
        out
    }
    let (a, b) = (flat(saved), flat(here));
    let mut keys: Vec<&String> = a.iter().chain(&b).map(|(k, _)| k).collect();
    keys.sort();
    keys.dedup();
    let get = |m: &[(String, String)], k: &str| {
        m.iter()
            .find(|(x, _)| x == k)
            .map_or("(absent)".to_string(), |(_, v)| v.clone())
    };
    keys.into_iter()
        .filter_map(|k| {
            let (x, y) = (get(&a, k), get(&b, k));
            (x != y).then(|| format!("{k} saved {x}, here {y}"))
        })
        .collect()
}

/// Hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A saved executable: manifest, program text and the plugin's bytes.
#[derive(Clone, Debug)]
pub struct SavedExecutable {
    pub manifest: Manifest,
    pub program: String,
    pub executable: Vec<u8>,
}

/// The manifest as stored: the fields of [`Manifest`] and the executable section's hash (absent
/// in files written before it was added; those are read without the check).
#[derive(Serialize, Deserialize)]
struct Stored {
    #[serde(flatten)]
    manifest: Manifest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    executable_sha256: Option<String>,
}

impl SavedExecutable {
    pub fn write(&self, path: &Path) -> Result<()> {
        let stored = Stored {
            manifest: self.manifest.clone(),
            executable_sha256: Some(sha256_hex(&self.executable)),
        };
        let manifest = serde_json::to_vec_pretty(&stored).map_err(|e| {
            Error::invalid(
                format!("the manifest of `{}`", path.display()),
                format!("cannot serialize it: {e}"),
            )
        })?;
        let mut out = Vec::with_capacity(
            MAGIC.len() + 24 + manifest.len() + self.program.len() + self.executable.len(),
        );
        out.extend_from_slice(MAGIC);
        for section in [&manifest[..], self.program.as_bytes(), &self.executable[..]] {
            out.extend_from_slice(&(section.len() as u64).to_le_bytes());
            out.extend_from_slice(section);
        }
        crate::fs::write_atomic(path, &out)
    }

    pub fn read(path: &Path) -> Result<SavedExecutable> {
        let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let bad = |why: &str| {
            Error::invalid(
                format!("executable file `{}`", path.display()),
                format!("{why}; write it with `basic compile --save-executable`"),
            )
        };
        if data.len() < MAGIC.len() || &data[..MAGIC.len()] != MAGIC {
            return Err(bad("it is not a basic executable (no BASICEXE header)"));
        }
        let mut at = MAGIC.len();
        let mut sections = Vec::new();
        for _ in 0..3 {
            let Some(len) = data.get(at..at + 8) else {
                return Err(bad("it is truncated"));
            };
            let len = u64::from_le_bytes(len.try_into().expect("8 bytes")) as usize;
            at += 8;
            let Some(bytes) = at.checked_add(len).and_then(|end| data.get(at..end)) else {
                return Err(bad("it is truncated"));
            };
            sections.push(bytes);
            at += len;
        }
        if at != data.len() {
            return Err(bad("it has trailing bytes"));
        }
        let Stored {
            manifest,
            executable_sha256,
        } = serde_json::from_slice(sections[0])
            .map_err(|e| bad(&format!("its manifest does not parse ({e})")))?;
        if executable_sha256.is_some_and(|h| h != sha256_hex(sections[2])) {
            return Err(bad(
                "its executable does not match the manifest's hash (corrupt file)",
            ));
        }
        if manifest.format != FORMAT {
            return Err(bad(&format!(
                "it has format {}, this basic reads format {FORMAT}",
                manifest.format
            )));
        }
        let program =
            String::from_utf8(sections[1].to_vec()).map_err(|_| bad("its program is not UTF-8"))?;
        if sha256_hex(program.as_bytes()) != manifest.program_sha256 {
            return Err(bad(
                "its program does not match the manifest's hash (corrupt file)",
            ));
        }
        Ok(SavedExecutable {
            manifest,
            program,
            executable: sections[2].to_vec(),
        })
    }

    /// Refuses an executable made for anything other than `expected`: one error listing every
    /// field that differs (target, plugin version, model, batch, mesh, ...).
    pub fn check(&self, path: &Path, expected: &Manifest) -> Result<()> {
        let (a, b) = (&self.manifest, expected);
        let mut diffs = Vec::new();
        let config = (a.config_sha256 != b.config_sha256).then(|| {
            let fields = config_diff(&a.config, &b.config);
            if fields.is_empty() {
                "model config: differs".to_string()
            } else {
                format!("model config: {}", fields.join(", "))
            }
        });
        let mut cmp = |field: &str, saved: String, here: String| {
            if saved != here {
                diffs.push(format!("{field}: saved for {saved}, here {here}"));
            }
        };
        cmp("platform", a.platform.clone(), b.platform.clone());
        cmp("device kind", a.device_kind.clone(), b.device_kind.clone());
        cmp("devices", a.devices.to_string(), b.devices.to_string());
        cmp("plugin", a.plugin_version.clone(), b.plugin_version.clone());
        cmp("model", a.model.clone(), b.model.clone());
        cmp("batch", a.batch.to_string(), b.batch.to_string());
        cmp(
            "micro-batches",
            a.microbatches.to_string(),
            b.microbatches.to_string(),
        );
        cmp("remat", a.remat.to_string(), b.remat.to_string());
        cmp("dtype", a.dtype.to_string(), b.dtype.to_string());
        cmp("mesh", a.mesh.clone(), b.mesh.clone());
        cmp(
            "partitioning",
            a.partitioning.clone(),
            b.partitioning.clone(),
        );
        cmp(
            "partitioner",
            a.partitioner.to_string(),
            b.partitioner.to_string(),
        );
        cmp("donate", a.donate.to_string(), b.donate.to_string());
        cmp(
            "processes",
            a.processes.to_string(),
            b.processes.to_string(),
        );
        // Older files recorded no layout: their assignment is taken as given.
        if !a.device_processes.is_empty() {
            cmp(
                "global device ids",
                format!("{:?}", a.device_assignment),
                format!("{:?}", b.device_assignment),
            );
            cmp(
                "devices' processes",
                format!("{:?}", a.device_processes),
                format!("{:?}", b.device_processes),
            );
        }
        diffs.extend(config);
        if diffs.is_empty() && a.program_sha256 != b.program_sha256 {
            diffs.push(format!(
                "program: saved {}…, here {}… (another rule file, or another version of basic)",
                &a.program_sha256[..12],
                &b.program_sha256[..12]
            ));
        }
        if diffs.is_empty() {
            return Ok(());
        }
        Err(Error::invalid(format!(
                "executable `{}` (compiled for {}): {}",
                path.display(),
                a.target,
                diffs.join("; ")
            ), "compile it again for this machine and these flags with `basic compile --save-executable`, or drop --executable"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved() -> SavedExecutable {
        let program = "func.func @main() -> () {}".to_string();
        SavedExecutable {
            manifest: Manifest {
                format: FORMAT,
                target: "cpu:1".into(),
                platform: "cpu".into(),
                device_kind: "cpu".into(),
                devices: 1,
                plugin_version: "test 1".into(),
                model: "tiny".into(),
                config_sha256: "00".into(),
                config: String::new(),
                batch: 8,
                microbatches: 1,
                remat: RematPolicy::None,
                dtype: Precision::F32,
                mesh: "data=1".into(),
                partitioning: "data_parallel".into(),
                partitioner: Partitioner::Shardy,
                donate: false,
                program_sha256: sha256_hex(program.as_bytes()),
                arguments: vec![],
                results: vec![],
                device_assignment: vec![0],
                processes: 1,
                device_processes: vec![0],
            },
            program,
            executable: b"the plugin's bytes".to_vec(),
        }
    }

    #[test]
    fn a_damaged_executable_section_is_refused_before_the_plugin_sees_it() {
        let dir = std::env::temp_dir().join(format!("basic-exe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("step.exe");
        let e = saved();
        e.write(&path).unwrap();
        let back = SavedExecutable::read(&path).unwrap();
        assert_eq!(
            (back.manifest, back.executable),
            (e.manifest.clone(), e.executable)
        );
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = SavedExecutable::read(&path).unwrap_err().to_string();
        assert!(
            err.contains("executable does not match") && err.contains("step.exe"),
            "{err}"
        );
        // A file written before the hash was stored still reads.
        let legacy = serde_json::to_vec(&e.manifest).unwrap();
        let mut old = MAGIC.to_vec();
        for s in [&legacy[..], e.program.as_bytes(), b"other bytes"] {
            old.extend_from_slice(&(s.len() as u64).to_le_bytes());
            old.extend_from_slice(s);
        }
        std::fs::write(&path, &old).unwrap();
        assert_eq!(
            SavedExecutable::read(&path).unwrap().executable,
            b"other bytes"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
