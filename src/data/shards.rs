//! Image–text pairs on disk: tar shards in the webdataset layout (`KEY.png|jpg` + `KEY.txt`,
//! optionally `KEY.cls` with a class index) and JSONL manifests (`{"image": PATH, "caption": TEXT}`).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};

/// One pair: the encoded image, its caption, and its class where known.
#[derive(Clone, Debug)]
pub struct Sample {
    pub key: String,
    pub image: Arc<Vec<u8>>,
    pub caption: String,
    pub label: Option<i64>,
}

fn bad(path: &Path, fix: impl Into<String>) -> Error {
    Error::invalid(format!("dataset file `{}`", path.display()), fix.into())
}

/// Writes samples into `dir/PREFIX-00000.tar`, ... with `per_shard` samples each. Each shard is
/// written atomically.
pub fn write_shards(
    dir: &Path,
    prefix: &str,
    samples: &[Sample],
    per_shard: usize,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut paths = Vec::new();
    for (i, chunk) in samples.chunks(per_shard.max(1)).enumerate() {
        let path = dir.join(format!("{prefix}-{i:05}.tar"));
        let mut b = tar::Builder::new(Vec::new());
        for s in chunk {
            let ext = if s.image.starts_with(&[0xFF, 0xD8]) {
                "jpg"
            } else {
                "png"
            };
            let mut files: Vec<(String, Vec<u8>)> = vec![
                (format!("{}.{ext}", s.key), s.image.to_vec()),
                (format!("{}.txt", s.key), s.caption.as_bytes().to_vec()),
            ];
            if let Some(l) = s.label {
                files.push((format!("{}.cls", s.key), l.to_string().into_bytes()));
            }
            for (name, data) in files {
                let mut h = tar::Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                h.set_mtime(0);
                h.set_cksum();
                b.append_data(&mut h, &name, data.as_slice())
                    .map_err(|e| Error::io(&path, e))?;
            }
        }
        let data = b.into_inner().map_err(|e| Error::io(&path, e))?;
        crate::fs::write_atomic(&path, &data)?;
        paths.push(path);
    }
    Ok(paths)
}

/// The files of one sample key inside a shard: image, caption, class.
type Parts = (Option<Vec<u8>>, Option<String>, Option<i64>);

/// Counts of what a reader skipped (only when asked to skip).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Skipped {
    pub samples: usize,
    pub reasons: Vec<String>,
}

/// Reads every `PREFIX-*.tar` of `dir` (sorted). A sample without an image or caption is an error
/// naming the shard and key, or is skipped and counted when `skip_bad`.
pub fn read_shards(dir: &Path, prefix: &str, skip_bad: bool) -> Result<(Vec<Sample>, Skipped)> {
    let mut shards: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            n.starts_with(&format!("{prefix}-")) && n.ends_with(".tar")
        })
        .collect();
    shards.sort();
    if shards.is_empty() {
        return Err(Error::invalid(format!("dataset folder `{}`", dir.display()), format!("it has no `{prefix}-*.tar` shards; make them with `basic data fashion-mnist --out {}`", dir.display())));
    }
    let mut out = Vec::new();
    let mut skipped = Skipped::default();
    for path in &shards {
        let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut archive = tar::Archive::new(f);
        let mut parts: BTreeMap<String, Parts> = BTreeMap::new();
        let entries = archive
            .entries()
            .map_err(|e| bad(path, format!("not a readable tar archive: {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| {
                bad(
                    path,
                    format!("the tar archive is damaged or truncated: {e}"),
                )
            })?;
            let name = entry
                .path()
                .map_err(|e| bad(path, format!("bad entry name: {e}")))?
                .to_string_lossy()
                .into_owned();
            let mut data = Vec::new();
            entry
                .read_to_end(&mut data)
                .map_err(|e| bad(path, format!("entry `{name}` is truncated: {e}")))?;
            let Some((key, ext)) = name.rsplit_once('.') else {
                continue;
            };
            let slot = parts.entry(key.to_string()).or_default();
            match ext.to_ascii_lowercase().as_str() {
                "png" | "jpg" | "jpeg" => slot.0 = Some(data),
                "txt" => slot.1 = Some(String::from_utf8_lossy(&data).trim().to_string()),
                "cls" => {
                    let t = String::from_utf8_lossy(&data);
                    slot.2 = Some(t.trim().parse().map_err(|_| {
                        bad(
                            path,
                            format!("`{name}` is not a class index: `{}`", t.trim()),
                        )
                    })?);
                }
                _ => {}
            }
        }
        for (key, (img, cap, label)) in parts {
            match (img, cap) {
                (Some(image), Some(caption)) => out.push(Sample {
                    key,
                    image: Arc::new(image),
                    caption,
                    label,
                }),
                (img, _) => {
                    let why = format!(
                        "sample `{key}` has no {}",
                        if img.is_none() { "image" } else { "caption" }
                    );
                    if !skip_bad {
                        return Err(bad(
                            path,
                            format!("{why} (pass --skip-bad to skip such samples)"),
                        ));
                    }
                    skipped.samples += 1;
                    skipped.reasons.push(format!("{}: {why}", path.display()));
                }
            }
        }
    }
    Ok((out, skipped))
}

/// Reads a JSONL manifest: one `{"image": PATH, "caption": TEXT[, "label": N]}` per line, paths
/// relative to the manifest's folder.
pub fn read_manifest(path: &Path, skip_bad: bool) -> Result<(Vec<Sample>, Skipped)> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    let mut skipped = Skipped::default();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let r: Result<Sample> = (|| {
            let v: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| bad(path, format!("line {}: not JSON: {e}", i + 1)))?;
            let img = v["image"]
                .as_str()
                .ok_or_else(|| bad(path, format!("line {}: no \"image\" path", i + 1)))?;
            let caption = v["caption"]
                .as_str()
                .ok_or_else(|| bad(path, format!("line {}: no \"caption\"", i + 1)))?
                .to_string();
            let ip = base.join(img);
            let image = std::fs::read(&ip).map_err(|e| {
                bad(
                    path,
                    format!("line {}: image `{}`: {e}", i + 1, ip.display()),
                )
            })?;
            Ok(Sample {
                key: format!("{i:08}"),
                image: Arc::new(image),
                caption,
                label: v["label"].as_i64(),
            })
        })();
        match r {
            Ok(s) => out.push(s),
            Err(e) if skip_bad => {
                skipped.samples += 1;
                skipped.reasons.push(e.to_string());
            }
            Err(e) => return Err(e),
        }
    }
    Ok((out, skipped))
}

/// Reads a dataset: a manifest file, or the `split-*.tar` shards of a folder.
pub fn read_dataset(path: &Path, split: &str, skip_bad: bool) -> Result<(Vec<Sample>, Skipped)> {
    if path.is_file() {
        read_manifest(path, skip_bad)
    } else {
        read_shards(path, split, skip_bad)
    }
}
