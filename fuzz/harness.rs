//! What each fuzz target does with its input: the same library functions the commands call, then
//! checks of what they return. Shared by the libFuzzer targets (`fuzz/fuzz_targets/*.rs`, built
//! on nightly by `cargo fuzz`) and by `tests/fuzz_regressions.rs`, which replays the kept inputs
//! on stable with the ordinary `cargo test`.
//!
//! Every function returns `Ok(())` when the library accepted the input and `Err(message)` when it
//! refused it; it panics (the fuzzer's finding) when the library panics, or accepts what it must
//! refuse, or refuses without naming the thing it read.
//!
//! Inputs that plain bytes would never get past a first check are built from the bytes instead
//! (the first byte chooses): a safetensors file with a header that is valid JSON and a fuzzed
//! body, shapes and offsets; a tar archive whose headers have good checksums and fuzzed members;
//! a saved executable whose sections and hash agree.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use basic::model::ModelConfig;

/// What a target does with one input: `Ok` when the library accepted it, else its refusal.
pub type Target = fn(&[u8]) -> Result<(), String>;

/// Every target, by the name of its fuzz target and of its folders under `fuzz/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("safetensors", safetensors),
    ("model_config", model_config),
    ("interop", interop),
    ("rules", rules),
    ("target", target),
    ("stablehlo", stablehlo),
    ("executable", executable),
    ("webdataset", webdataset),
    ("image", image),
    ("tokenizer", tokenizer),
    ("shard_spec", shard_spec),
    ("coord_wire", coord_wire),
    ("discovery", discovery),
    ("checkpoint", checkpoint),
];

/// Runs the target `name` on `data`.
pub fn run(name: &str, data: &[u8]) -> Result<(), String> {
    let f = TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no fuzz target `{name}`"))
        .1;
    f(data)
}

// ------------------------------------------------------------------------------------ helpers

/// Reads structure from the fuzzer's bytes; past their end every read gives zeros.
struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        let mut a = [0u8; 8];
        for b in &mut a {
            *b = self.u8();
        }
        u64::from_le_bytes(a)
    }
    fn below(&mut self, n: usize) -> usize {
        self.u8() as usize % n.max(1)
    }
    fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    fn rest(&mut self) -> &'a [u8] {
        self.take(self.0.len())
    }
}

/// A fresh path in this process's scratch folder (the library reads files by path).
fn scratch(name: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("basic-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("scratch folder");
        d
    });
    let n = N.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("{}-{n}-{name}", thread_tag()))
}

fn thread_tag() -> String {
    format!("{:?}", std::thread::current().id())
        .chars()
        .filter(char::is_ascii_digit)
        .collect()
}

/// Writes `data` to a fresh scratch file, runs `f` on its path, removes it.
fn with_file<T>(name: &str, data: &[u8], f: impl FnOnce(&Path) -> T) -> T {
    let p = scratch(name);
    std::fs::write(&p, data).expect("scratch file");
    let out = f(&p);
    let _ = std::fs::remove_file(&p);
    out
}

/// A refusal must name what it read: `needle` (a path, a name) appears in the message.
fn refused(e: basic::Error, needle: &str) -> String {
    let msg = e.to_string();
    assert!(
        msg.contains(needle),
        "the error does not name `{needle}`: {msg}"
    );
    msg
}

fn tiny() -> &'static ModelConfig {
    static C: OnceLock<ModelConfig> = OnceLock::new();
    C.get_or_init(|| ModelConfig::load("tiny").expect("the tiny preset"))
}

fn tiny_specs() -> &'static [basic::model::ParamSpec] {
    static S: OnceLock<Vec<basic::model::ParamSpec>> = OnceLock::new();
    S.get_or_init(|| basic::model::dual::specs(tiny()).expect("tiny's parameters"))
}

// -------------------------------------------------------------------------------- safetensors

const DTYPES: [&str; 14] = [
    "F32", "F64", "BF16", "I32", "I64", "U8", "U32", "U64", "BOOL", "F16", "I8", "I16", "U16",
    "F8_E4M3",
];

fn dtype_size(d: &str) -> usize {
    match d {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "BF16" | "F16" | "I16" | "U16" => 2,
        _ => 1,
    }
}

/// A safetensors file built from the bytes, and the damage done to it (none: the file is valid
/// and must be read back exactly).
fn build_safetensors(b: &mut Bytes) -> (Vec<u8>, Option<&'static str>) {
    let count = b.below(5);
    let mut entries: Vec<(String, serde_json::Value)> = Vec::new();
    let mut body = Vec::new();
    let mut damage = None;
    for i in 0..count {
        let dtype = DTYPES[b.below(DTYPES.len())];
        let rank = b.below(4);
        let shape: Vec<u64> = (0..rank).map(|_| b.below(5) as u64).collect();
        let bytes = shape.iter().product::<u64>() as usize * dtype_size(dtype);
        let start = body.len();
        if dtype == "BOOL" {
            // Booleans are 0 or 1; another byte is damage.
            body.extend((0..bytes).map(|_| match b.u8() {
                0xff => 2,
                x => x & 1,
            }));
            if body[start..].iter().any(|&x| x > 1) {
                damage = Some("a boolean other than 0 or 1");
            }
        } else {
            body.extend((0..bytes).map(|_| b.u8()));
        }
        let mut offsets = (start as u64, body.len() as u64);
        let mut shape_v = serde_json::json!(shape);
        match b.u8() {
            // A gap or an overlap between tensors.
            1 if start > 0 => {
                offsets.0 -= 1;
                damage = Some("overlapping offsets");
            }
            2 => {
                offsets.1 += 1 + b.below(3) as u64;
                damage = Some("a tensor's bytes do not match its shape");
            }
            3 => {
                shape_v = serde_json::json!([u64::MAX, 2]);
                damage = Some("a shape with too many elements");
            }
            4 => {
                shape_v = serde_json::json!([-1]);
                damage = Some("a negative dimension");
            }
            _ => {}
        }
        let supported = !["F16", "I8", "I16", "U16", "F8_E4M3"].contains(&dtype);
        if !supported {
            damage = damage.or(Some("an unsupported dtype"));
        }
        let mut info = serde_json::json!({
            "dtype": dtype, "shape": shape_v, "data_offsets": [offsets.0, offsets.1]
        });
        if b.u8() == 5 {
            info["extra"] = serde_json::json!(1);
            damage = Some("an unknown field in a tensor's entry");
        }
        let name = match b.u8() {
            6 => String::new(),
            7 if i > 0 => entries[0].0.clone(),
            _ => format!("t{i}"),
        };
        if entries.iter().any(|(n, _)| *n == name) {
            damage = Some("a tensor named twice");
        }
        entries.push((name, info));
    }
    let mut parts: Vec<String> = Vec::new();
    if b.u8() & 1 == 1 {
        parts.push("\"__metadata__\":{\"format\":\"pt\"}".to_string());
    }
    parts.extend(
        entries
            .iter()
            .map(|(n, v)| format!("{}:{}", serde_json::json!(n), v)),
    );
    // (Joined, so that metadata without tensors has no trailing comma.)
    let mut header = format!("{{{}}}", parts.join(","));
    // Padding to 8 bytes with spaces is allowed; anything else after the JSON is not.
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header.as_bytes());
    file.extend_from_slice(&body);
    match b.u8() {
        1 => {
            file.extend_from_slice(&[0; 3]);
            damage = Some("trailing bytes");
        }
        2 if !file.is_empty() => {
            let cut = 1 + b.below(file.len().min(255));
            file.truncate(file.len() - cut);
            damage = Some("a truncated file");
        }
        3 => {
            let at = 8 + b.below(header.len());
            file[at] = b.u8();
            if file[at] != header.as_bytes()[at - 8] {
                // A changed byte of the header may still leave valid JSON (a name, a digit):
                // not necessarily damage that can be seen.
                return (file, damage.or(Some("?")));
            }
        }
        _ => {}
    }
    (file, damage)
}

/// `basic::io::safetensors::read_with_metadata` and `read_params`, as `basic grad`, `embed`,
/// `train --init-from` and the checkpoint reader call them.
pub fn safetensors(data: &[u8]) -> Result<(), String> {
    let mut b = Bytes(data);
    let (file, damage) = if b.u8() & 1 == 0 {
        (b.rest().to_vec(), Some("?"))
    } else {
        build_safetensors(&mut b)
    };
    with_file("f.safetensors", &file, |path| {
        let name = path.display().to_string();
        let read = basic::io::safetensors::read_with_metadata(path);
        // The same file through the parameter reader.
        match basic::io::safetensors::read_params(path, tiny()) {
            Ok(file) => {
                let specs = tiny_specs();
                if let Err(e) =
                    basic::io::safetensors::match_params(path, &file, specs, basic::DType::F32)
                {
                    refused(e, &name);
                }
            }
            Err(e) => {
                refused(e, &name);
            }
        }
        match read {
            Err(e) => {
                assert!(
                    damage.is_some(),
                    "a valid file was refused: {e}\n{}",
                    String::from_utf8_lossy(&file)
                );
                Err(refused(e, &name))
            }
            Ok((tensors, metadata)) => {
                if let Some(d) = damage.filter(|d| *d != "?") {
                    panic!("a file with {d} was accepted");
                }
                for (n, a) in &tensors {
                    assert_eq!(
                        a.bytes().len(),
                        a.element_count() * a.dtype().size_in_bytes(),
                        "{n}"
                    );
                }
                // What was read writes back and reads again unchanged.
                let again = scratch("again.safetensors");
                let list: Vec<(String, &basic::runtime::HostArray)> =
                    tensors.iter().map(|(n, a)| (n.clone(), a)).collect();
                basic::io::safetensors::write(&again, &list, &metadata)
                    .expect("writing back what was read");
                let (t2, m2) =
                    basic::io::safetensors::read_with_metadata(&again).expect("reading it back");
                let _ = std::fs::remove_file(&again);
                assert_eq!(t2, tensors);
                assert_eq!(m2, metadata);
                Ok(())
            }
        }
    })
}

// -------------------------------------------------------------------------------- configs

/// `ModelConfig::parse` (a `--model FILE.toml`), then the parameters of the model it describes.
pub fn model_config(data: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(data);
    let c = ModelConfig::parse(&text, "fuzz.toml").map_err(|e| refused(e, "fuzz.toml"))?;
    basic::model::dual::specs(&c).map_err(|e| e.to_string())?;
    Ok(())
}

/// `io::interop::open` of a folder whose `config.json` (or `open_clip_config.json`) and
/// `preprocessor_config.json` are the input's parts (split at `\n===\n`), as `--model hf:DIR`
/// reads it; then the weight table of the config it describes.
pub fn interop(data: &[u8]) -> Result<(), String> {
    use basic::io::interop::{open, read_weights, Format};
    let Some((&first, rest)) = data.split_first() else {
        return Err("empty input".into());
    };
    let format = if first & 1 == 0 {
        Format::Hf
    } else {
        Format::OpenClip
    };
    let text = String::from_utf8_lossy(rest);
    let mut parts = text.splitn(2, "\n===\n");
    let (config, pre) = (parts.next().unwrap_or(""), parts.next());
    let dir = scratch("folder");
    std::fs::create_dir_all(&dir).expect("scratch folder");
    let (config_file, weights_file) = match format {
        Format::Hf => ("config.json", "model.safetensors"),
        Format::OpenClip => ("open_clip_config.json", "open_clip_model.safetensors"),
    };
    let write = |name: &str, bytes: &[u8]| {
        std::fs::File::create(dir.join(name))
            .and_then(|mut f| f.write_all(bytes))
            .expect("scratch file")
    };
    write(config_file, config.as_bytes());
    if let Some(p) = pre {
        write("preprocessor_config.json", p.as_bytes());
    }
    // An empty safetensors file: the weights are not what is fuzzed here.
    write(weights_file, b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ");
    let out = match open(format, &dir) {
        Ok(f) => {
            basic::model::dual::specs(&f.config).map_err(|e| e.to_string())?;
            // The folder has no weights: reading them names what is missing.
            match read_weights(&f) {
                Ok(w) => assert!(w.is_empty(), "weights read from an empty file"),
                Err(e) => {
                    refused(e, "");
                }
            }
            Ok(())
        }
        Err(e) => Err(refused(e, &dir.display().to_string())),
    };
    let _ = std::fs::remove_dir_all(&dir);
    out
}

/// `partition::Rules::parse` (`--partitioning FILE`), then the specs of the tiny model's
/// parameters on the file's mesh (or `data=2,model=2`).
pub fn rules(data: &[u8]) -> Result<(), String> {
    use basic::partition::{Mesh, Rules, TensorAxes};
    let text = String::from_utf8_lossy(data);
    let r = Rules::parse(&text, "fuzz.toml").map_err(|e| refused(e, ""))?;
    let mesh = match &r.default_mesh {
        Some(m) => m.clone(),
        None => Mesh::parse("data=2,model=2").expect("a mesh"),
    };
    let specs = tiny_specs();
    let axes: Vec<TensorAxes> = specs
        .iter()
        .map(|s| TensorAxes {
            name: &s.name,
            shape: &s.shape,
            axes: &s.axes,
            stacked: s.is_stacked(),
        })
        .collect();
    let out = r.param_specs(&axes, &mesh).map_err(|e| e.to_string())?;
    assert_eq!(out.len(), specs.len());
    Ok(())
}

/// `target::Target::parse` of the first line (`--target NAME:TOPOLOGY`) and
/// `TargetSpec::parse` of the rest (a `targets/*.toml` file).
pub fn target(data: &[u8]) -> Result<(), String> {
    use basic::target::{Target, TargetSpec};
    let text = String::from_utf8_lossy(data);
    let (line, file) = text.split_once('\n').unwrap_or((&text, ""));
    let t = Target::parse(line);
    if let Ok(t) = &t {
        assert!(t.chips() >= 1 && t.devices() >= t.chips());
        let _ = t.name();
        let _ = t.step_time_bound(1e12, t.devices() as usize);
    }
    let spec = TargetSpec::parse("fuzz.toml", file);
    match (t, spec) {
        (Ok(_), Ok(_)) => Ok(()),
        (Err(e), _) => Err(e.to_string()),
        (_, Err(e)) => Err(refused(e, "fuzz.toml")),
    }
}

// -------------------------------------------------------------------------------- programs

/// What `basic run PROGRAM.mlir` reads before the plugin sees the text: the compile options the
/// module declares, `@main`'s signature with its shardings, each argument's per-device shape.
pub fn stablehlo(data: &[u8]) -> Result<(), String> {
    use basic::runtime::{CompileOptions, Signature};
    let text = String::from_utf8_lossy(data);
    let options = CompileOptions::for_program(&text);
    options.validate().map_err(|e| e.to_string())?;
    let n = options.num_devices();
    let encoded = options.encode();
    assert!(encoded.len() >= n, "the options list every device");
    let sig = Signature::from_program(&text).map_err(|e| e.to_string())?;
    for p in sig.args.iter().chain(&sig.results) {
        let t = p.per_device();
        assert_eq!(t.shape.len(), p.ty.shape.len());
        let _ = basic::runtime::element_count(&t.shape);
    }
    Ok(())
}

/// `io::executable::SavedExecutable::read` (`basic train --executable F`), then `check` against
/// its own manifest (accepted) and another one (refused).
pub fn executable(data: &[u8]) -> Result<(), String> {
    use basic::io::executable::{sha256_hex, SavedExecutable};
    let mut b = Bytes(data);
    let file = if b.u8() & 1 == 0 {
        b.rest().to_vec()
    } else {
        // BASICEXE, then the manifest (the input's text up to `\n===\n`, with the program's hash
        // filled in where it says `@SHA@`), the program and the executable's bytes.
        let text = String::from_utf8_lossy(b.rest()).into_owned();
        let mut parts = text.splitn(3, "\n===\n");
        let (m, p, x) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        let m = m
            .replace("@SHA@", &sha256_hex(p.as_bytes()))
            .replace("@XSHA@", &sha256_hex(x.as_bytes()));
        let mut f = b"BASICEXE".to_vec();
        for s in [m.as_bytes(), p.as_bytes(), x.as_bytes()] {
            f.extend_from_slice(&(s.len() as u64).to_le_bytes());
            f.extend_from_slice(s);
        }
        f
    };
    with_file("step.exe", &file, |path| {
        let name = path.display().to_string();
        let e = SavedExecutable::read(path).map_err(|e| refused(e, &name))?;
        assert_eq!(sha256_hex(e.program.as_bytes()), e.manifest.program_sha256);
        e.check(path, &e.manifest)
            .expect("an executable fits its own manifest");
        let mut other = e.manifest.clone();
        other.batch = other.batch.wrapping_add(1);
        other.program_sha256 = sha256_hex(b"another program");
        let err = e.check(path, &other).expect_err("another batch");
        refused(err, &name);
        Ok(())
    })
}

// -------------------------------------------------------------------------------- data

/// One tar header block for `name` of `size` bytes of type `kind`, its checksum right.
fn tar_header(name: &[u8], size: u64, kind: u8, b: &mut Bytes) -> [u8; 512] {
    let mut h = [0u8; 512];
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name[..n]);
    h[100..107].copy_from_slice(b"0000644");
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    let size_field = match b.u8() {
        // GNU base-256 sizes (any value), or a size in octal.
        1 => {
            let mut f = [0u8; 12];
            f[0] = 0x80;
            f[4..12].copy_from_slice(&b.u64().to_be_bytes());
            f
        }
        _ => {
            let s = format!("{size:011o}\0");
            let mut f = [0u8; 12];
            f.copy_from_slice(&s.as_bytes()[..12]);
            f
        }
    };
    h[124..136].copy_from_slice(&size_field);
    h[136..147].copy_from_slice(b"00000000000");
    h[156] = kind;
    if b.u8() & 1 == 1 {
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        let n = b.below(8);
        let prefix = b.take(n);
        h[345..345 + prefix.len()].copy_from_slice(prefix);
    }
    let sum: u64 = h
        .iter()
        .enumerate()
        .map(|(i, &c)| u64::from(if (148..156).contains(&i) { b' ' } else { c }))
        .sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

/// A tar archive of members built from the bytes (names, types, sizes, contents; pax and GNU
/// long-name records), sometimes gzip-compressed, sometimes cut or damaged.
fn build_tar(b: &mut Bytes) -> (Vec<u8>, bool) {
    const EXTS: [&str; 8] = ["jpg", "png", "webp", "txt", "cls", "json", "", "tar.gz"];
    let mut out = Vec::new();
    let mut damaged = false;
    let members = b.below(6);
    for i in 0..members {
        let key = b.below(3);
        let ext = EXTS[b.below(EXTS.len())];
        let name = format!("s{key}.{ext}");
        let kind = [b'0', 0, b'7', b'5', b'x', b'L', b'2', b'g'][b.below(8)];
        let len = b.u16() as usize % 600;
        let mut data = b.take(len).to_vec();
        if kind == b'x' && b.u8() & 1 == 1 {
            data = format!("{} path=p{i}.txt\n", 12 + format!("{i}").len()).into_bytes();
        }
        let mut h = tar_header(name.as_bytes(), data.len() as u64, kind, b);
        if b.u8() == 9 {
            h[b.below(512)] ^= 1 + b.below(255) as u8;
            damaged = true;
        }
        out.extend_from_slice(&h);
        out.extend_from_slice(&data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    match b.u8() % 4 {
        0 => {
            out.resize(out.len() + 1024, 0);
        }
        1 => damaged = true, // no end-of-archive blocks
        2 => {
            out.resize(out.len() + 1024, 0);
            let cut = b.below(out.len().max(1));
            out.truncate(out.len() - cut);
            damaged |= cut > 1024;
        }
        _ => {
            out.resize(out.len() + 1024, 0);
            out.extend_from_slice(b.take(64));
        }
    }
    if b.u8() & 1 == 1 {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&out).expect("in memory");
        out = gz.finish().expect("in memory");
        if b.u8() & 1 == 1 {
            let n = out.len();
            out.truncate(n - b.below(n.max(1)).min(n));
        }
    }
    (out, damaged)
}

/// The streaming shard reader (`data::webdataset::Samples`, as the loader reads each shard) and
/// `count_samples` (as `--samples-per-epoch` counts them) over one tar stream; every image is
/// decoded as the loader decodes it.
pub fn webdataset(data: &[u8]) -> Result<(), String> {
    use basic::data::webdataset::{count_samples, Item, Samples};
    let mut b = Bytes(data);
    let (tar, damaged) = if b.u8() & 1 == 0 {
        (b.rest().to_vec(), false)
    } else {
        build_tar(&mut b)
    };
    let mut samples = Samples::new(Box::new(std::io::Cursor::new(tar.clone())));
    let (mut good, mut bad_label) = (0u64, 0u64);
    let end = loop {
        match samples.next_item() {
            Ok(None) => break Ok(()),
            Ok(Some(Item::Sample(s))) => {
                good += 1;
                let name = format!("{}.img", s.key);
                if let Err(e) = basic::data::image::decode_pixels(&s.image, &name) {
                    refused(e, &name);
                }
            }
            Ok(Some(Item::Skipped(why))) => {
                assert!(why.contains("sample `"), "{why}");
                bad_label += u64::from(why.contains("its .cls is not"));
            }
            Err(d) => break Err(d.to_string()),
        }
    };
    let counted = count_samples(Box::new(std::io::Cursor::new(tar)));
    match (&end, counted) {
        (Ok(()), Ok(n)) => assert_eq!(n, good + bad_label, "count_samples disagrees"),
        (Err(_), Err(_)) => {}
        (a, c) => panic!("the reader says {a:?} and count_samples {c:?}"),
    }
    let _ = damaged;
    end
}

/// `data::image::decode_pixels` (PNG, JPEG, WebP by signature) and the loader's preprocessing
/// (centre crop and random-resized crop, to grey and to RGB).
pub fn image(data: &[u8]) -> Result<(), String> {
    use basic::data::image::{decode_pixels, preprocess_pixels_into};
    let px = decode_pixels(data, "fuzz.img").map_err(|e| refused(e, "fuzz.img"))?;
    assert_eq!(px.data.len(), px.h * px.w * px.c);
    assert!((1..=4).contains(&px.c));
    for (channels, seed) in [(3, None), (1, Some(data.len() as u64))] {
        let size = 8;
        let mut out = vec![0f32; size * size * channels];
        preprocess_pixels_into(
            &px,
            "fuzz.img",
            size,
            channels,
            &[0.5],
            &[0.25],
            seed,
            &mut out,
        )
        .map_err(|e| refused(e, "fuzz.img"))?;
        assert!(out.iter().all(|v| v.is_finite()), "non-finite pixels");
    }
    Ok(())
}

/// `data::Tokenizer::load` of a `tokenizer.json`, then encoding captions to a fixed length.
pub fn tokenizer(data: &[u8]) -> Result<(), String> {
    with_file("tokenizer.json", data, |path| {
        let name = path.display().to_string();
        let t = basic::data::Tokenizer::load(path).map_err(|e| refused(e, &name))?;
        let _ = t.vocab_size();
        for text in [
            "a photo of a cat.",
            "",
            "ünïcödé \u{1F600} text, with punctuation!",
        ] {
            match t.encode(text, 16) {
                Ok(e) => assert_eq!(e.ids.len(), 16),
                Err(e) => {
                    refused(e, "caption");
                }
            }
        }
        Ok(())
    })
}

/// `data::source::parse` of a `--data` spec (first line; with `--data-weights` from the second)
/// and the brace expander it uses. Remote folders (which list a bucket) and absolute or parent
/// paths (which would read this machine's files) are expanded but not opened.
pub fn shard_spec(data: &[u8]) -> Result<(), String> {
    use basic::data::source::{brace_expand, parse};
    let text = String::from_utf8_lossy(data);
    let mut lines = text.lines();
    let spec = lines.next().unwrap_or("");
    let weights: Option<Vec<f64>> = lines
        .next()
        .map(|l| l.split(',').filter_map(|w| w.trim().parse().ok()).collect());
    let local_only = spec
        .split("::")
        .all(|p| !basic::io::storage::is_remote(p) && !p.starts_with('/') && !p.contains(".."));
    if !local_only {
        let list = brace_expand(spec).map_err(|e| e.to_string())?;
        assert!(!list.is_empty());
        return Ok(());
    }
    let d = parse(spec, "train", weights.as_deref()).map_err(|e| e.to_string())?;
    assert_eq!(d.shards.len(), d.weights.len());
    Ok(())
}

// -------------------------------------------------------------------------------- coordinator

/// The coordinator's wire: a stream cut into frames (bounded as before and after registration),
/// each frame decoded as the server and as a client decode it; what decodes encodes back to the
/// same bytes.
pub fn coord_wire(data: &[u8]) -> Result<(), String> {
    use basic::coord::fuzzing::{frames, to_client, to_server};
    let mut b = Bytes(data);
    let chunk = 1 + b.below(64);
    let max = [16 * 1024, 64, 1 << 20][b.below(3)];
    let stream = b.rest();
    let (bodies, end) = frames(stream, max, chunk);
    let mut out = Ok(());
    for body in bodies.iter().chain(std::iter::once(&stream.to_vec())) {
        assert!(body.len() <= max.max(stream.len()));
        for (side, decode) in [
            (
                "to the server",
                to_server as fn(&[u8]) -> Result<Vec<u8>, String>,
            ),
            ("to a client", to_client),
        ] {
            match decode(body) {
                Ok(again) => assert_eq!(&again, body, "a message {side} encodes differently"),
                Err(e) => {
                    assert!(!e.is_empty());
                    out = Err(e);
                }
            }
        }
    }
    end.map_or(out, Err)
}

/// Process discovery from the environment (`coord::discover`, as every multi-process command
/// calls it) with variables from the input (`KEY=VALUE` lines), and the parsers of the metadata
/// server's answers (`worker-network-endpoints`) and of SLURM node lists.
pub fn discovery(data: &[u8]) -> Result<(), String> {
    use basic::coord::fuzzing::{endpoint_ips, first_host, metadata_answer};
    use basic::coord::{discover, Explicit};
    let text = String::from_utf8_lossy(data);
    let env: HashMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let result = discover(&Explicit::default(), &env, false);
    if let Ok(Some(spec)) = &result {
        assert!(spec.num_processes > 1 && spec.process_id < spec.num_processes);
        let _ = spec.listen_addr();
    }
    if let Ok(Some(v)) = metadata_answer(data) {
        if let Some(ips) = endpoint_ips(&v) {
            assert!(ips.iter().all(|ip| !ip.is_empty()));
        }
    }
    let _ = endpoint_ips(&text);
    let _ = first_host(&text);
    result.map(|_| ()).map_err(|e| e.to_string())
}

/// A sharded checkpoint's manifest (`train::checkpoint::Reader`, as `basic train --resume` and
/// `eval` open it) over four data files of known bytes: the input as written (its own SHA-256
/// must match), and, when it parses as a manifest, the same manifest signed again so that the
/// checks behind the checksum (shapes, pieces, byte ranges, file names) and the reads see
/// fuzzed values. Every tensor of at most 2^20 values is read whole.
pub fn checkpoint(data: &[u8]) -> Result<(), String> {
    use basic::train::checkpoint::{write_manifest, Manifest, Reader};
    let dir = scratch("ckpt");
    std::fs::create_dir_all(&dir).expect("scratch folder");
    for p in 0..4u32 {
        let bytes: Vec<u8> = (0..256u32).map(|i| ((p * 31 + i) % 251) as u8).collect();
        std::fs::write(dir.join(format!("process-{p:05}.bin")), bytes).expect("data file");
    }
    let d = dir.to_str().expect("a UTF-8 scratch path").to_string();
    let read_all = |r: &Reader| -> Result<(), String> {
        for (name, t) in &r.manifest.tensors {
            if t.shape.iter().product::<i64>() > 1 << 20 {
                continue;
            }
            let zeros = vec![0; t.shape.len()];
            r.read(name, &zeros, &t.shape, basic::DType::F32)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    };
    std::fs::write(dir.join("manifest.json"), data).expect("manifest");
    let raw = match Reader::open(&d) {
        Ok(r) => read_all(&r),
        Err(e) => Err(refused(e, "manifest.json")),
    };
    let signed = match serde_json::from_slice::<Manifest>(data) {
        Err(e) => Err(e.to_string()),
        Ok(m) => {
            write_manifest(&d, &m).expect("a manifest that parsed writes");
            match Reader::open(&d) {
                Ok(r) => read_all(&r),
                Err(e) => Err(refused(e, "manifest.json")),
            }
        }
    };
    let _ = std::fs::remove_dir_all(&dir);
    raw.and(signed)
}
