//! Named arrays in the safetensors format (an 8-byte header length, a JSON header, raw data).
//!
//! Reading checks everything before trusting it (the header length against the file size, the
//! header as JSON, every offset and byte count) and names the file in every error. Writing goes
//! to a temporary file in the same folder, is flushed to disk, then renamed over the target, so a
//! crash never leaves a half-written file under the real name.
//!
//! A file basic writes carries a CRC-32 of its contents (names, dtypes, shapes, data, metadata)
//! in its metadata under [`CHECKSUM_KEY`], which reading checks: a flipped byte anywhere, which
//! the format itself cannot see (a tensor's data, a name, a metadata value), is an error naming
//! the file. Files of other libraries have none and are read without it.

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

/// The metadata key of the checksum basic writes: CRC-32 (IEEE), 8 hex digits.
pub const CHECKSUM_KEY: &str = "basic.crc32";

/// CRC-32 of tensors in name order (each: name, dtype, shape, data) and of the metadata in key
/// order: every byte that a reader turns into values, independent of the file's layout.
fn checksum<'a>(
    tensors: impl Iterator<Item = (&'a str, &'a HostArray)>,
    metadata: &BTreeMap<String, String>,
) -> String {
    let mut h = crc32fast::Hasher::new();
    for (name, a) in tensors {
        h.update(name.as_bytes());
        h.update(&[0]);
        h.update(a.dtype().name().as_bytes());
        for d in a.shape() {
            h.update(&d.to_le_bytes());
        }
        h.update(&(a.bytes().len() as u64).to_le_bytes());
        h.update(a.bytes());
    }
    for (k, v) in metadata.iter().filter(|(k, _)| *k != CHECKSUM_KEY) {
        for part in [k, v] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
    }
    format!("{:08x}", h.finalize())
}

/// The largest header safetensors allows (its own limit).
const MAX_HEADER: u64 = 100_000_000;

/// One tensor's entry in a header, as read.
struct Entry {
    name: String,
    dtype: DType,
    shape: Vec<i64>,
    start: usize,
    end: usize,
}

/// Every tensor of a safetensors file, by name, with the file's metadata.
///
/// Beyond the safetensors library's own checks (lengths, offsets, sizes), the header must be
/// exactly what the format describes: one JSON object with no key twice, each tensor's entry
/// exactly `dtype`, `shape` and `data_offsets`, `__metadata__` a map of strings, the tensors'
/// bytes one after another with neither gap nor overlap and nothing after them, booleans 0 or
/// 1. Anything else is an error naming the file and the tensor.
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
    if n > MAX_HEADER {
        return Err(bad(path, format!("its header claims {n} bytes, more than the {MAX_HEADER} safetensors allows: the file is damaged or not safetensors")));
    }
    if n > (bytes.len() - 8) as u64 {
        return Err(bad(path, format!("its header claims {n} bytes but only {} follow: the file is truncated or not safetensors", bytes.len() - 8)));
    }
    let (header, data) = bytes[8..].split_at(n as usize);
    let (entries, metadata) = parse_header(path, header, data.len())?;
    // The library reads it too: a disagreement is an error, never a silent difference.
    safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(path, format!("invalid contents: {e:?}")))?;
    let mut out = BTreeMap::new();
    for e in entries {
        let raw = &data[e.start..e.end];
        if e.dtype == DType::Pred {
            if let Some(i) = raw.iter().position(|&b| b > 1) {
                return Err(bad(
                    path,
                    format!(
                        "tensor `{}` is BOOL but its element {i} is the byte {}: booleans are 0 or 1 (the data is damaged)",
                        e.name, raw[i]
                    ),
                ));
            }
        }
        let a = HostArray::from_bytes(e.dtype, &e.shape, raw.to_vec())
            .map_err(|err| bad(path, format!("tensor `{}`: {err}", e.name)))?;
        out.insert(e.name, a);
    }
    let mut metadata = metadata;
    // A flipped bit in the key's own name would otherwise pass for a file without a checksum.
    let one_off = |k: &str| {
        k.len() == CHECKSUM_KEY.len()
            && k.bytes()
                .zip(CHECKSUM_KEY.bytes())
                .filter(|(a, b)| a != b)
                .count()
                == 1
    };
    if let Some(k) = metadata.keys().find(|k| one_off(k)) {
        return Err(bad(
            path,
            format!("its metadata key `{k}` is basic's `{CHECKSUM_KEY}` damaged: the file is damaged; restore it from another copy or an earlier checkpoint"),
        ));
    }
    if let Some(stored) = metadata.remove(CHECKSUM_KEY) {
        let got = checksum(out.iter().map(|(n, a)| (n.as_str(), a)), &metadata);
        if got != stored {
            return Err(bad(
                path,
                format!(
                    "its contents do not match the checksum basic wrote into it ({CHECKSUM_KEY} \
                     {stored}, the contents give {got}): the file is damaged; restore it from \
                     another copy or an earlier checkpoint"
                ),
            ));
        }
    }
    Ok((out, metadata))
}

/// Checks a header and returns its tensors (in data order) and metadata; `data_len` is the size
/// of the data section that follows it.
fn parse_header(
    path: &Path,
    header: &[u8],
    data_len: usize,
) -> Result<(Vec<Entry>, BTreeMap<String, String>)> {
    use serde_json::Value;
    if header.first() != Some(&b'{') {
        return Err(bad(
            path,
            "its header does not start with `{`: the file is damaged or not safetensors",
        ));
    }
    let fields = strict_object(header)
        .map_err(|e| bad(path, format!("its header is not a valid JSON object: {e}")))?;
    let mut metadata = BTreeMap::new();
    let mut entries = Vec::new();
    for (name, v) in fields {
        if name == "__metadata__" {
            let Value::Object(m) = v else {
                return Err(bad(path, "its `__metadata__` is not a map of strings"));
            };
            for (k, v) in m {
                let Value::String(v) = v else {
                    return Err(bad(
                        path,
                        format!("its `__metadata__` entry `{k}` is not a string"),
                    ));
                };
                metadata.insert(k, v);
            }
            continue;
        }
        entries.push(entry(path, name, v, data_len)?);
    }
    entries.sort_by_key(|e| (e.start, e.end));
    let mut at = 0;
    for e in &entries {
        if e.start != at {
            let what = if e.start < at {
                "overlaps the tensor before it"
            } else {
                "leaves a gap after the tensor before it"
            };
            return Err(bad(path, format!("tensor `{}` starts at byte {} of the data but the tensors before it end at {at}: it {what} (the header is damaged)", e.name, e.start)));
        }
        at = e.end;
    }
    if at != data_len {
        return Err(bad(path, format!("its tensors end at byte {at} of the data but the data section is {data_len} bytes: the file is truncated or has bytes after its tensors")));
    }
    Ok((entries, metadata))
}

/// One tensor's entry: exactly `dtype`, `shape` and `data_offsets`, consistent with each other
/// and inside the data section.
fn entry(path: &Path, name: String, v: serde_json::Value, data_len: usize) -> Result<Entry> {
    let serde_json::Value::Object(mut m) = v else {
        return Err(bad(
            path,
            format!("the entry of tensor `{name}` is not an object"),
        ));
    };
    if let Some(k) = m
        .keys()
        .find(|k| !["dtype", "shape", "data_offsets"].contains(&k.as_str()))
    {
        return Err(bad(path, format!("the entry of tensor `{name}` has an unknown field `{k}`; it has exactly dtype, shape and data_offsets")));
    }
    let field = |m: &mut serde_json::Map<String, serde_json::Value>, k: &str| {
        m.remove(k)
            .ok_or_else(|| bad(path, format!("the entry of tensor `{name}` has no `{k}`")))
    };
    let dtype: Dtype = serde_json::from_value(field(&mut m, "dtype")?)
        .map_err(|e| bad(path, format!("tensor `{name}` has an unknown dtype: {e}")))?;
    let dtype = to_dtype(dtype).ok_or_else(|| {
        bad(
            path,
            format!("tensor `{name}` has dtype {dtype:?}, which basic does not read"),
        )
    })?;
    let shape: Vec<u64> = serde_json::from_value(field(&mut m, "shape")?).map_err(|_| {
        bad(
            path,
            format!("the shape of tensor `{name}` is not a list of non-negative integers"),
        )
    })?;
    let (start, end): (u64, u64) =
        serde_json::from_value(field(&mut m, "data_offsets")?).map_err(|_| {
            bad(
                path,
                format!("the data_offsets of tensor `{name}` are not two non-negative integers"),
            )
        })?;
    let bytes = shape
        .iter()
        .try_fold(dtype.size_in_bytes() as u64, |n, &d| n.checked_mul(d))
        .filter(|&b| b <= data_len as u64 && shape.iter().all(|&d| d <= i64::MAX as u64));
    let Some(bytes) = bytes else {
        return Err(bad(
            path,
            format!("tensor `{name}` has shape {shape:?}: more bytes than the file holds"),
        ));
    };
    if end < start || end - start != bytes || end > data_len as u64 {
        return Err(bad(path, format!(
            "tensor `{name}` ({dtype}, shape {shape:?}: {bytes} bytes) has data_offsets [{start}, {end}] in a data section of {data_len} bytes (the header is damaged)"
        )));
    }
    Ok(Entry {
        name,
        dtype,
        shape: shape.iter().map(|&d| d as i64).collect(),
        start: start as usize,
        end: end as usize,
    })
}

/// The fields of a JSON object in file order, refusing a key that appears twice at any depth
/// (JSON readers keep one of the two, silently).
fn strict_object(text: &[u8]) -> std::result::Result<Vec<(String, serde_json::Value)>, String> {
    let mut de = serde_json::Deserializer::from_slice(text);
    let v: Unique = serde::Deserialize::deserialize(&mut de).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    match v.0 {
        serde_json::Value::Object(m) => Ok(v
            .1
            .into_iter()
            .map(|k| {
                let val = m.get(&k).cloned().unwrap_or_default();
                (k, val)
            })
            .collect()),
        _ => Err("it is not an object".into()),
    }
}

/// A JSON value whose objects have distinct keys, with its top-level keys in order.
struct Unique(serde_json::Value, Vec<String>);

impl<'de> serde::Deserialize<'de> for Unique {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Unique, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Unique;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> std::result::Result<Unique, A::Error> {
                let mut m = serde_json::Map::new();
                let mut keys = Vec::new();
                while let Some(k) = a.next_key::<String>()? {
                    let v: Unique = a.next_value()?;
                    if m.insert(k.clone(), v.0).is_some() {
                        return Err(serde::de::Error::custom(format!("key `{k}` appears twice")));
                    }
                    keys.push(k);
                }
                Ok(Unique(serde_json::Value::Object(m), keys))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> std::result::Result<Unique, A::Error> {
                let mut v = Vec::new();
                while let Some(x) = a.next_element::<Unique>()? {
                    v.push(x.0);
                }
                Ok(Unique(serde_json::Value::Array(v), vec![]))
            }
            fn visit_bool<E>(self, b: bool) -> std::result::Result<Unique, E> {
                Ok(Unique(b.into(), vec![]))
            }
            fn visit_i64<E>(self, n: i64) -> std::result::Result<Unique, E> {
                Ok(Unique(n.into(), vec![]))
            }
            fn visit_u64<E>(self, n: u64) -> std::result::Result<Unique, E> {
                Ok(Unique(n.into(), vec![]))
            }
            fn visit_f64<E>(self, n: f64) -> std::result::Result<Unique, E> {
                Ok(Unique(n.into(), vec![]))
            }
            fn visit_str<E>(self, s: &str) -> std::result::Result<Unique, E> {
                Ok(Unique(s.into(), vec![]))
            }
            fn visit_string<E>(self, s: String) -> std::result::Result<Unique, E> {
                Ok(Unique(s.into(), vec![]))
            }
            fn visit_unit<E>(self) -> std::result::Result<Unique, E> {
                Ok(Unique(serde_json::Value::Null, vec![]))
            }
        }
        d.deserialize_any(V)
    }
}

/// Every tensor of a safetensors file, by name.
pub fn read(path: &Path) -> Result<BTreeMap<String, HostArray>> {
    Ok(read_with_metadata(path)?.0)
}

/// Writes named arrays atomically (temporary file, fsync, rename), with their checksum in the
/// metadata (see [`CHECKSUM_KEY`]; reading removes it).
pub fn write(
    path: &Path,
    tensors: &[(String, &HostArray)],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let mut by_name: BTreeMap<&str, &HostArray> = BTreeMap::new();
    for (n, a) in tensors {
        if by_name.insert(n, a).is_some() {
            return Err(bad(path, format!("tensor `{n}` is given twice")));
        }
    }
    let mut metadata = metadata.clone();
    metadata.remove(CHECKSUM_KEY);
    let sum = checksum(by_name.into_iter(), &metadata);
    metadata.insert(CHECKSUM_KEY.to_string(), sum);
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
    // Never an empty `__metadata__`: safetensors 0.4 sizes its JSON map by the metadata's
    // entries, and with no tensors an empty map closed the object before `__metadata__` was
    // written (`{}"__metadata__":{}}`, a file nothing reads). The checksum is always there.
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
            Some(a) => out.push(convert(a, dtype).map_err(|e| {
                bad(
                    path,
                    format!(
                        "parameter `{}`: {e}; parameters are floating point (is the file \
                         damaged, or not a parameter file?)",
                        s.name
                    ),
                )
            })?),
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
