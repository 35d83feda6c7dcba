//! Named arrays in the safetensors format (an 8-byte header length, a JSON header, raw data).
//!
//! Reading checks everything before trusting it (the header length against the file size, the
//! header as JSON, every offset and byte count) and names the file in every error. Writing goes
//! to a temporary file in the same folder, is flushed to disk, then renamed over the target, so a
//! crash never leaves a half-written file under the real name.

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};

use crate::array::HostArray;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::model::ParamSpec;

fn bad(path: &Path, problem: impl Into<String>) -> Error {
    Error::invalid(
        format!("safetensors file `{}`", path.display()),
        problem.into(),
    )
}

fn to_dtype(d: Dtype) -> Option<DType> {
    Some(match d {
        Dtype::BOOL => DType::Pred,
        Dtype::U8 => DType::U8,
        Dtype::I32 => DType::S32,
        Dtype::U32 => DType::U32,
        Dtype::I64 => DType::S64,
        Dtype::U64 => DType::U64,
        Dtype::BF16 => DType::BF16,
        Dtype::F32 => DType::F32,
        Dtype::F64 => DType::F64,
        _ => return None,
    })
}

fn from_dtype(d: DType) -> Dtype {
    match d {
        DType::Pred => Dtype::BOOL,
        DType::U8 => Dtype::U8,
        DType::S32 => Dtype::I32,
        DType::U32 => Dtype::U32,
        DType::S64 => Dtype::I64,
        DType::U64 => Dtype::U64,
        DType::BF16 => Dtype::BF16,
        DType::F32 => Dtype::F32,
        DType::F64 => Dtype::F64,
    }
}

/// Every tensor of a safetensors file, by name, with the file's metadata.
pub fn read_with_metadata(
    path: &Path,
) -> Result<(BTreeMap<String, HostArray>, BTreeMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if bytes.len() < 8 {
        return Err(bad(
            path,
            format!(
                "it is {} bytes long, shorter than the 8-byte header length: the file is truncated",
                bytes.len()
            ),
        ));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap_or_default());
    if n > (bytes.len() - 8) as u64 {
        return Err(bad(path, format!("its header claims {n} bytes but only {} follow: the file is truncated or not safetensors", bytes.len() - 8)));
    }
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| bad(path, format!("invalid header: {e}")))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(path, format!("invalid contents: {e}")))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let dtype = to_dtype(view.dtype()).ok_or_else(|| {
            bad(
                path,
                format!(
                    "tensor `{name}` has dtype {:?}, which basic does not read",
                    view.dtype()
                ),
            )
        })?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let a = HostArray::from_bytes(dtype, &shape, view.data().to_vec())
            .map_err(|e| bad(path, format!("tensor `{name}`: {e}")))?;
        out.insert(name, a);
    }
    let metadata = meta
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    Ok((out, metadata))
}

/// Every tensor of a safetensors file, by name.
pub fn read(path: &Path) -> Result<BTreeMap<String, HostArray>> {
    Ok(read_with_metadata(path)?.0)
}

/// Writes named arrays atomically (temporary file, fsync, rename).
pub fn write(
    path: &Path,
    tensors: &[(String, &HostArray)],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let views = tensors
        .iter()
        .map(|(n, a)| {
            let shape: Vec<usize> = a.shape().iter().map(|&d| d as usize).collect();
            TensorView::new(from_dtype(a.dtype()), shape, a.bytes())
                .map(|v| (n.clone(), v))
                .map_err(|e| bad(path, format!("tensor `{n}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta: std::collections::HashMap<String, String> = metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let data = safetensors::serialize(views, &Some(meta))
        .map_err(|e| bad(path, format!("cannot serialize: {e}")))?;
    crate::fs::write_atomic(path, &data)
}

/// A parameter file by the model's names: HF BERT checkpoints (`embeddings.*`, `encoder.*`) are
/// mapped under `text/bert/` when the model has a BERT text tower.
pub fn read_params(
    path: &Path,
    c: &crate::model::ModelConfig,
) -> Result<BTreeMap<String, HostArray>> {
    if let Some(f) = super::interop::find(path)? {
        // The architecture the folder's config describes must be the model's.
        let (a, b) = (&f.config, c);
        if a.image != b.image || a.text != b.text || a.embed_dim != b.embed_dim {
            return Err(Error::invalid(
                format!("checkpoint `{}`", path.display()),
                format!(
                    "its config describes another architecture than model `{}`: pass --model {}",
                    c.name,
                    path.display()
                ),
            ));
        }
        return super::interop::read_weights(&f);
    }
    let mut file = read(path)?;
    let hf = file.keys().any(|k| {
        k.starts_with("embeddings.") || k.starts_with("encoder.") || k.starts_with("bert.")
    });
    if hf && c.text.kind == crate::model::config::TextKind::Bert {
        return Ok(crate::model::bert::from_checkpoint("text/bert", file));
    }
    if c.scan_layers {
        // A checkpoint of the unrolled model (`.../blocks/{i}/...`) fits the model with scanned
        // layers: each stacked parameter whose layers are all in the file is built from them.
        let specs = crate::model::dual::specs(c)?;
        for s in specs.iter().filter(|s| s.is_stacked()) {
            if file.contains_key(&s.name) {
                continue;
            }
            let names: Vec<String> = (0..s.shape[0])
                .filter_map(|j| crate::model::params::layer_name(&s.name, j))
                .collect();
            if names.is_empty() || !names.iter().all(|n| file.contains_key(n)) {
                continue;
            }
            let stacked = crate::model::params::stack_layers(std::slice::from_ref(s), &file)
                .map_err(|e| {
                    Error::invalid(
                        format!(
                            "`{}`: stacking its layers into `{}`",
                            path.display(),
                            s.name
                        ),
                        e.to_string(),
                    )
                })?;
            for n in &names {
                file.remove(n);
            }
            file.extend(std::iter::once(s.name.clone()).zip(stacked));
        }
    }
    Ok(file)
}

/// Picks the model's parameters out of a file, checking names, shapes and dtypes; one error lists
/// everything missing, unexpected or misshaped.
pub fn match_params(
    path: &Path,
    file: &BTreeMap<String, HostArray>,
    specs: &[ParamSpec],
    dtype: DType,
) -> Result<Vec<HostArray>> {
    let mut missing = Vec::new();
    let mut misshaped = Vec::new();
    let mut out = Vec::with_capacity(specs.len());
    for s in specs {
        match file.get(&s.name) {
            None => missing.push(s.name.clone()),
            Some(a) if a.shape() != s.shape.as_slice() => misshaped.push(format!(
                "{} is {:?}, the model needs {:?}",
                s.name,
                a.shape(),
                s.shape
            )),
            Some(a) => out.push(convert(a, dtype)?),
        }
    }
    let known: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    let unexpected: Vec<&String> = file
        .keys()
        .filter(|k| !known.contains(&k.as_str()))
        .collect();
    let Some(msg) = mismatch_summary(&missing, &misshaped, &unexpected) else {
        return Ok(out);
    };
    let hint = crate::model::coatnet::layout_hint(
        missing.iter().map(String::as_str),
        unexpected.iter().map(|s| s.as_str()),
    );
    Err(bad(
        path,
        match hint {
            Some(h) => format!("it does not match the model's parameters ({msg}); {h}"),
            None => format!("it does not match the model's parameters ({msg})"),
        },
    ))
}

/// `missing N: a, b; misshaped N: …; unexpected N: …` for the lists that are not empty; `None`
/// when all three are.
pub fn mismatch_summary(
    missing: &[String],
    misshaped: &[String],
    unexpected: &[&String],
) -> Option<String> {
    let mut msg = Vec::new();
    if !missing.is_empty() {
        msg.push(format!("missing {}: {}", missing.len(), missing.join(", ")));
    }
    if !misshaped.is_empty() {
        msg.push(format!(
            "misshaped {}: {}",
            misshaped.len(),
            misshaped.join("; ")
        ));
    }
    if !unexpected.is_empty() {
        let names: Vec<&str> = unexpected.iter().map(|s| s.as_str()).collect();
        msg.push(format!("unexpected {}: {}", names.len(), names.join(", ")));
    }
    (!msg.is_empty()).then(|| msg.join("; "))
}

/// Converts a float array to `dtype` (exactly for widening).
pub fn convert(a: &HostArray, dtype: DType) -> Result<HostArray> {
    if a.dtype() == dtype {
        return Ok(a.clone());
    }
    if !a.dtype().is_float() || !dtype.is_float() {
        return Err(Error::Array(format!(
            "cannot convert {} to {dtype}",
            a.dtype()
        )));
    }
    crate::array::to_dtype(a.shape(), &a.to_f64_vec(), dtype)
}
