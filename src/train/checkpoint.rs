//! Checkpoints that scale with the job: every process writes the pieces of parameters and
//! optimizer state that its devices hold, and process 0 writes the manifest that makes the step
//! a checkpoint.
//!
//! A checkpoint is a folder `step-NNNNNNN/` (on local disk or in a bucket, through
//! [`crate::io::storage`]) holding one data file per process, `process-PPPPP.bin` (the raw bytes
//! of its pieces, back to back), and `manifest.json`: every tensor's dtype and global shape, and
//! each piece's file, byte range, place in the tensor and SHA-256; the step, the seed, the layout
//! it was written from and the data streams' position. A folder without its manifest is not a
//! checkpoint (an interrupted write). Of the devices holding the same block of a tensor
//! (replicas), only the first writes it, as orbax does.
//!
//! Restoring reads, for each block a device of the new layout needs, the pieces that overlap it
//! (ranged reads, each checked against its SHA-256), onto any number of processes and any mesh.
//! A checksum that does not match is an error naming the file and the piece.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::array::HostArray;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::io::executable::sha256_hex;
use crate::io::storage::Location;

/// Bumped when the layout or the manifest's meaning changes.
pub const FORMAT: u32 = 1;

/// The name of step `step`'s folder.
pub fn step_folder(step: u64) -> String {
    format!("step-{step:07}")
}

/// The step of a checkpoint folder's name (`step-0000100` → 100).
pub fn folder_step(name: &str) -> Option<u64> {
    name.trim_end_matches('/')
        .strip_prefix("step-")?
        .parse()
        .ok()
}

/// One block of a tensor in a process's data file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Piece {
    /// The data file, relative to the step folder.
    pub file: String,
    /// Bytes `[offset, offset + bytes)` of the file.
    pub offset: u64,
    pub bytes: u64,
    /// Where the block starts in the tensor, and its shape.
    pub start: Vec<i64>,
    pub shape: Vec<i64>,
    pub sha256: String,
}

/// A tensor of the checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorEntry {
    pub dtype: String,
    pub shape: Vec<i64>,
    pub pieces: Vec<Piece>,
}

/// What makes a step folder a checkpoint. Its own checksum covers every other field (a flipped
/// digit of the step, a shape or an offset changes what is restored without touching the data
/// files' checksums); unknown fields are refused, so that damage cannot hide a field.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub step: u64,
    pub seed: u64,
    /// The layout it was written from (any layout restores it).
    pub processes: usize,
    pub mesh: String,
    pub tensors: BTreeMap<String, TensorEntry>,
    /// The data streams' position after the step (every process's streams, merged).
    pub data_position: serde_json::Value,
    /// SHA-256 of the manifest's JSON written with this field empty; set by [`write_manifest`].
    #[serde(default)]
    pub sha256: String,
}

impl Manifest {
    /// The manifest's JSON with `sha256` empty, and that JSON's SHA-256.
    fn unsigned(&self) -> Result<(Vec<u8>, String)> {
        let mut m = self.clone();
        m.sha256.clear();
        let text = serde_json::to_vec_pretty(&m)
            .map_err(|e| Error::Internal(format!("cannot write a checkpoint manifest: {e}")))?;
        let sum = sha256_hex(&text);
        Ok((text, sum))
    }
}

/// The most values of one tensor and the most pieces of a checkpoint a manifest may declare: far
/// above any model's, so that a damaged manifest cannot ask for an allocation first.
const MAX_VALUES: i64 = 1 << 40;
const MAX_PIECES: usize = 1 << 24;

/// One block to write: a tensor's name, where the block starts, and its values.
pub struct Block {
    pub tensor: String,
    pub start: Vec<i64>,
    pub value: HostArray,
}

/// Writes one process's blocks as its data file in the step folder `dir`; returns each block's
/// piece (by tensor name) for the manifest.
pub fn write_process(dir: &str, process: usize, blocks: &[Block]) -> Result<Vec<(String, Piece)>> {
    let file = format!("process-{process:05}.bin");
    let mut data = Vec::with_capacity(blocks.iter().map(|b| b.value.bytes().len()).sum());
    let mut pieces = Vec::with_capacity(blocks.len());
    for b in blocks {
        let bytes = b.value.bytes();
        pieces.push((
            b.tensor.clone(),
            Piece {
                file: file.clone(),
                offset: data.len() as u64,
                bytes: bytes.len() as u64,
                start: b.start.clone(),
                shape: b.value.shape().to_vec(),
                sha256: sha256_hex(bytes),
            },
        ));
        data.extend_from_slice(bytes);
    }
    Location::parse(&join(dir, &file))?.put(data)?;
    Ok(pieces)
}

/// Writes the manifest, with its checksum: the step is a checkpoint from here on.
pub fn write_manifest(dir: &str, m: &Manifest) -> Result<()> {
    let mut m = m.clone();
    m.sha256 = m.unsigned()?.1;
    let text = serde_json::to_vec_pretty(&m)
        .map_err(|e| Error::Internal(format!("cannot write a checkpoint manifest: {e}")))?;
    Location::parse(&join(dir, "manifest.json"))?.put(text)
}

/// Whether `name` is a data file's name as [`write_process`] makes them (no folder, no `..`: a
/// manifest cannot send a read outside its step folder).
fn is_data_file(name: &str) -> bool {
    name.strip_prefix("process-")
        .and_then(|r| r.strip_suffix(".bin"))
        .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

/// The first inconsistency of a manifest's tensors and pieces, as text: dtypes basic reads,
/// non-negative shapes of bounded size, pieces inside their tensor with as many bytes as their
/// shape, in data files of the step folder.
fn manifest_problem(m: &Manifest) -> Option<String> {
    let mut pieces = 0usize;
    for (name, t) in &m.tensors {
        let Ok(dtype) = t.dtype.parse::<DType>() else {
            return Some(format!(
                "tensor `{name}` has dtype `{}`, not one basic reads",
                t.dtype
            ));
        };
        let count = |shape: &[i64]| {
            shape.iter().try_fold(1i64, |n, &d| {
                (d >= 0)
                    .then(|| n.checked_mul(d))
                    .flatten()
                    .filter(|&n| n <= MAX_VALUES)
            })
        };
        if count(&t.shape).is_none() {
            return Some(format!("tensor `{name}` has shape {:?}", t.shape));
        }
        pieces += t.pieces.len();
        if pieces > MAX_PIECES {
            return Some(format!("it declares more than {MAX_PIECES} pieces"));
        }
        for p in &t.pieces {
            let inside = p.start.len() == t.shape.len()
                && p.shape.len() == t.shape.len()
                && (0..t.shape.len()).all(|d| {
                    p.start[d] >= 0 && p.shape[d] >= 0 && p.start[d] <= t.shape[d] - p.shape[d]
                });
            let bytes = count(&p.shape).map(|n| n as u64 * dtype.size_in_bytes() as u64);
            if !inside || bytes != Some(p.bytes) || p.offset.checked_add(p.bytes).is_none() {
                return Some(format!(
                    "tensor `{name}` of shape {:?} has a piece at {:?} of shape {:?} with {} bytes",
                    t.shape, p.start, p.shape, p.bytes
                ));
            }
            if !is_data_file(&p.file) {
                return Some(format!(
                    "tensor `{name}` has a piece in `{}`, not a data file of the step folder",
                    p.file
                ));
            }
        }
    }
    None
}

/// `dir/name` for a folder URL or path.
pub fn join(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
}

/// An opened checkpoint.
pub struct Reader {
    pub dir: String,
    pub manifest: Manifest,
}

impl Reader {
    /// Reads the step folder's manifest; an error names the folder when it has none.
    pub fn open(dir: &str) -> Result<Reader> {
        let at = join(dir, "manifest.json");
        let bytes = Location::parse(&at)?.get_if_exists()?.ok_or_else(|| {
            Error::invalid(
                format!("checkpoint `{dir}`"),
                "it has no manifest.json: its write was interrupted, so it is not a checkpoint",
            )
        })?;
        let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
            Error::invalid(
                format!("checkpoint manifest `{at}`"),
                format!("it does not parse ({e}); it was not written by basic train"),
            )
        })?;
        if manifest.format != FORMAT {
            return Err(Error::invalid(
                format!("checkpoint manifest `{at}`"),
                format!(
                    "it has format {}; this basic reads format {FORMAT}",
                    manifest.format
                ),
            ));
        }
        if manifest.unsigned()?.1 != manifest.sha256 {
            return Err(Error::invalid(
                format!("checkpoint manifest `{at}`"),
                "its contents do not match its SHA-256: it is damaged (restore an earlier step, or write the checkpoint again)",
            ));
        }
        if let Some(why) = manifest_problem(&manifest) {
            return Err(Error::invalid(
                format!("checkpoint manifest `{at}`"),
                format!("{why}: it is damaged or was not written by basic train"),
            ));
        }
        Ok(Reader {
            dir: dir.to_string(),
            manifest,
        })
    }

    /// Whether the checkpoint holds `tensor`.
    pub fn has(&self, tensor: &str) -> bool {
        self.manifest.tensors.contains_key(tensor)
    }

    /// The global shape of `tensor`.
    pub fn shape(&self, tensor: &str) -> Option<&[i64]> {
        self.manifest
            .tensors
            .get(tensor)
            .map(|t| t.shape.as_slice())
    }

    /// The block of `tensor` starting at `start` of `shape`, in `dtype`: assembled from the
    /// pieces that overlap it, each read alone and checked against its SHA-256.
    pub fn read(
        &self,
        tensor: &str,
        start: &[i64],
        shape: &[i64],
        dtype: DType,
    ) -> Result<HostArray> {
        let t = self.manifest.tensors.get(tensor).ok_or_else(|| {
            Error::invalid(
                format!("checkpoint `{}`", self.dir),
                format!(
                    "it has no tensor `{tensor}`; was it written for another model or optimizer?"
                ),
            )
        })?;
        let stored: DType = t.dtype.parse().map_err(|_| {
            Error::invalid(
                format!("tensor `{tensor}` of checkpoint `{}`", self.dir),
                format!("its dtype `{}` is not one basic reads", t.dtype),
            )
        })?;
        let w = stored.size_in_bytes();
        let n: i64 = shape.iter().product();
        let mut out = vec![0u8; n as usize * w];
        let mut covered = 0i64;
        for p in &t.pieces {
            let Some(overlap) = intersect(start, shape, &p.start, &p.shape) else {
                continue;
            };
            let bytes = self.piece(tensor, p)?;
            copy_box(
                &bytes, &p.start, &p.shape, &mut out, start, shape, &overlap, w,
            );
            covered += overlap.1.iter().product::<i64>();
        }
        if covered != n {
            return Err(Error::invalid(
                format!("checkpoint `{}`", self.dir),
                format!(
                    "its pieces of `{tensor}` cover {covered} of the {n} values of the block at {start:?} of {shape:?}; a data file or piece is missing"
                ),
            ));
        }
        let a = HostArray::from_bytes(stored, shape, out)?;
        crate::io::safetensors::convert(&a, dtype)
    }

    /// A piece's bytes, read alone and checked.
    fn piece(&self, tensor: &str, p: &Piece) -> Result<Vec<u8>> {
        let url = join(&self.dir, &p.file);
        let bytes = Location::parse(&url)?.get_range(p.offset..p.offset + p.bytes)?;
        if bytes.len() as u64 != p.bytes || sha256_hex(&bytes) != p.sha256 {
            return Err(Error::invalid(
                format!("checkpoint file `{url}`"),
                format!(
                    "its piece of `{tensor}` at {:?} (bytes {}..{}) does not match the manifest's SHA-256: the file is damaged or from another checkpoint",
                    p.start,
                    p.offset,
                    p.offset + p.bytes
                ),
            ));
        }
        Ok(bytes)
    }
}

/// The intersection of two boxes `(start, shape)`, if not empty.
fn intersect(a0: &[i64], an: &[i64], b0: &[i64], bn: &[i64]) -> Option<(Vec<i64>, Vec<i64>)> {
    if a0.len() != b0.len() {
        return None;
    }
    let mut s = Vec::with_capacity(a0.len());
    let mut n = Vec::with_capacity(a0.len());
    for d in 0..a0.len() {
        let lo = a0[d].max(b0[d]);
        let hi = (a0[d] + an[d]).min(b0[d] + bn[d]);
        if hi <= lo {
            return None;
        }
        s.push(lo);
        n.push(hi - lo);
    }
    Some((s, n))
}

/// Copies the box `overlap` (global coordinates) from `src` (a row-major block at `s0` of shape
/// `sn`) into `dst` (a block at `d0` of shape `dn`), `w` bytes an element.
#[allow(clippy::too_many_arguments)]
fn copy_box(
    src: &[u8],
    s0: &[i64],
    sn: &[i64],
    dst: &mut [u8],
    d0: &[i64],
    dn: &[i64],
    overlap: &(Vec<i64>, Vec<i64>),
    w: usize,
) {
    let (o0, on) = overlap;
    let rank = o0.len();
    if rank == 0 {
        dst[..w].copy_from_slice(&src[..w]);
        return;
    }
    let strides = |shape: &[i64]| -> Vec<i64> {
        let mut st = vec![1i64; shape.len()];
        for d in (0..shape.len().saturating_sub(1)).rev() {
            st[d] = st[d + 1] * shape[d + 1];
        }
        st
    };
    let (ss, ds) = (strides(sn), strides(dn));
    let run = on[rank - 1] as usize * w;
    let rows: i64 = on[..rank - 1].iter().product();
    let mut idx = vec![0i64; rank - 1];
    for _ in 0..rows {
        let (mut so, mut dof) = (0i64, 0i64);
        for d in 0..rank {
            let g = o0[d] + if d < rank - 1 { idx[d] } else { 0 };
            so += (g - s0[d]) * ss[d];
            dof += (g - d0[d]) * ds[d];
        }
        let (so, dof) = (so as usize * w, dof as usize * w);
        dst[dof..dof + run].copy_from_slice(&src[so..so + run]);
        for d in (0..rank - 1).rev() {
            idx[d] += 1;
            if idx[d] < on[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

/// The checkpoints under `dir` (a folder or bucket prefix), oldest first: step folders with a
/// manifest, and the single-file checkpoints of earlier versions (`step-NNNNNNN.safetensors`).
pub fn list(dir: &str) -> Result<Vec<(u64, String)>> {
    let prefix = format!("{}/", dir.trim_end_matches('/'));
    let listed = match crate::io::storage::list(&prefix) {
        Ok(l) => l,
        Err(Error::Io { .. }) => Vec::new(),
        Err(e) if !crate::io::storage::is_remote(dir) => {
            if std::path::Path::new(dir).exists() {
                return Err(e);
            }
            Vec::new()
        }
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for (url, _) in listed {
        let rel = url.strip_prefix(&prefix).unwrap_or(&url);
        if let Some(step) = rel.strip_suffix("/manifest.json").and_then(folder_step) {
            out.push((step, join(dir, &step_folder(step))));
        } else if let Some(step) = rel
            .strip_suffix(".safetensors")
            .filter(|r| !r.contains('/'))
            .and_then(folder_step)
        {
            out.push((step, url.clone()));
        }
    }
    // Local folders: the listing holds files of the top level only; find step folders there.
    if !crate::io::storage::is_remote(dir) {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(step) = folder_step(&name) {
                    if e.path().join("manifest.json").is_file() && e.path().is_dir() {
                        out.push((step, join(dir, &name)));
                    }
                }
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Removes a checkpoint (a step folder or a single file).
pub fn remove(at: &str) -> Result<()> {
    if !crate::io::storage::is_remote(at) {
        let p = std::path::Path::new(at);
        let r = if p.is_dir() {
            std::fs::remove_dir_all(p)
        } else {
            std::fs::remove_file(p)
        };
        return match r {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(p, e)),
            _ => Ok(()),
        };
    }
    // The manifest first: a half-removed folder is then no longer a checkpoint.
    Location::parse(&join(at, "manifest.json"))?.delete()?;
    for (url, _) in crate::io::storage::list(&format!("{}/", at.trim_end_matches('/')))? {
        Location::parse(&url)?.delete()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_written_from_one_layout_read_back_in_another() {
        let dir = std::env::temp_dir().join(format!("basic-ckpt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let d = dir.display().to_string();
        let full = HostArray::new(&[4, 6], &(0..24).map(|i| i as f32).collect::<Vec<_>>()).unwrap();
        // Written as two processes: rows 0..2 and rows 2..4.
        let halves = full.split(0, 2).unwrap();
        let mut tensors = BTreeMap::new();
        let mut pieces = Vec::new();
        for (p, h) in halves.into_iter().enumerate() {
            let b = Block {
                tensor: "w".into(),
                start: vec![2 * p as i64, 0],
                value: h,
            };
            pieces.extend(
                write_process(&d, p, &[b])
                    .unwrap()
                    .into_iter()
                    .map(|(_, x)| x),
            );
        }
        tensors.insert(
            "w".to_string(),
            TensorEntry {
                dtype: "f32".into(),
                shape: vec![4, 6],
                pieces,
            },
        );
        let m = Manifest {
            format: FORMAT,
            step: 3,
            seed: 0,
            processes: 2,
            mesh: "data=2".into(),
            tensors,
            data_position: serde_json::Value::Null,
            sha256: String::new(),
        };
        write_manifest(&d, &m).unwrap();
        let r = Reader::open(&d).unwrap();
        // Read as column blocks: columns 2..5 of all rows cross both pieces.
        let got = r.read("w", &[0, 2], &[4, 3], DType::F32).unwrap();
        let want: Vec<f32> = (0..4)
            .flat_map(|r| (2..5).map(move |c| (r * 6 + c) as f32))
            .collect();
        assert_eq!(got.to_vec::<f32>().unwrap(), want);
        // A flipped byte is named.
        let f = dir.join("process-00001.bin");
        let mut bytes = std::fs::read(&f).unwrap();
        bytes[5] ^= 0x40;
        std::fs::write(&f, &bytes).unwrap();
        let e = r
            .read("w", &[0, 0], &[4, 6], DType::F32)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("process-00001.bin") && e.contains("SHA-256"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
