//! Image–text pairs on disk: tar shards in the webdataset layout (`KEY.png|jpg` + `KEY.txt`,
//! optionally `KEY.cls` with a class index) and JSONL manifests (`{"image": PATH, "caption": TEXT}`).

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

/// Writes samples into `dir/PREFIX-00000.tar`, ... with `per_shard` samples each, and their
/// counts into `dir/sizes.json`. Each file is written atomically.
pub fn write_shards(
    dir: &Path,
    prefix: &str,
    samples: &[Sample],
    per_shard: usize,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut paths = Vec::new();
    // Each shard's sample count, open_clip's `sizes.json`, so that a stream knows the epoch's
    // length without reading the shards (kept: other prefixes' entries stay).
    let mut sizes: serde_json::Map<String, serde_json::Value> =
        std::fs::read(dir.join("sizes.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
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
        sizes.insert(
            format!("{prefix}-{i:05}.tar"),
            serde_json::json!(chunk.len()),
        );
        paths.push(path);
    }
    let sizes_path = dir.join("sizes.json");
    let text = serde_json::to_string_pretty(&sizes).map_err(|e| Error::Internal(e.to_string()))?;
    crate::fs::write_atomic(&sizes_path, text.as_bytes())?;
    Ok(paths)
}

/// Counts of what a reader skipped (only when asked to skip).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Skipped {
    pub samples: usize,
    pub reasons: Vec<String>,
}

/// Line `i` (from 0) of the JSONL manifest `path`: `{"image": PATH, "caption": TEXT[, "label":
/// N]}`, the image path relative to the manifest's folder, its file read.
pub fn manifest_sample(path: &Path, i: usize, line: &str) -> Result<Sample> {
    let base = path.parent().unwrap_or(Path::new("."));
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
}

/// Reads a JSONL manifest whole (see [`manifest_sample`]); a bad line is an error, or, with
/// `skip_bad`, skipped and counted.
pub fn read_manifest(path: &Path, skip_bad: bool) -> Result<(Vec<Sample>, Skipped)> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    let mut skipped = Skipped::default();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match manifest_sample(path, i, line) {
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
