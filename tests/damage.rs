//! The damage sweep: files that basic wrote, damaged at random (a flipped bit in the header, in
//! the data or in the length prefix, a truncation, bytes appended), must each be refused with an
//! error naming the file — or, where the damage left every value the same (a padding space turned
//! into another space character), read back unchanged. Nothing damaged is accepted with other
//! values, and nothing panics.
//!
//! Printed: accepted / refused / crashed for basic's reader, and for the safetensors library alone
//! (what basic's reader was before it checked headers strictly and files carried a checksum).

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use basic::io::safetensors::{read_with_metadata, write};
use basic::runtime::HostArray;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

type Contents = (BTreeMap<String, HostArray>, BTreeMap<String, String>);

/// A checkpoint-like file: float weights of a few shapes, a step counter, a mask, metadata.
fn original(dir: &Path) -> (std::path::PathBuf, Contents) {
    let mut r = Rng(1);
    let mut t = BTreeMap::new();
    for (name, shape) in [
        ("image/patch/kernel", vec![7, 7, 1, 16]),
        ("image/blocks/0/mlp/bias", vec![64]),
        ("text/embed", vec![32, 16]),
        ("temperature", vec![]),
    ] {
        let n: i64 = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| (r.next() % 2000) as f32 / 1000.0 - 1.0)
            .collect();
        t.insert(name.to_string(), HostArray::new(&shape, &v).unwrap());
    }
    t.insert("step".into(), HostArray::new(&[], &[1234i64]).unwrap());
    t.insert(
        "mask".into(),
        HostArray::from_bytes(basic::DType::Pred, &[5], vec![1, 0, 1, 1, 0]).unwrap(),
    );
    let meta: BTreeMap<String, String> = [("format", "pt"), ("run", "sweep")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let path = dir.join("ckpt.safetensors");
    let list: Vec<(String, &HostArray)> = t.iter().map(|(n, a)| (n.clone(), a)).collect();
    write(&path, &list, &meta).unwrap();
    (path, (t, meta))
}

/// What the safetensors library alone makes of the bytes (basic's reader before this sweep):
/// accepted when it parses and every dtype is one basic reads.
fn library_accepts(bytes: &[u8]) -> bool {
    use safetensors::tensor::Dtype;
    match safetensors::SafeTensors::deserialize(bytes) {
        Err(_) => false,
        Ok(st) => st.tensors().iter().all(|(_, v)| {
            matches!(
                v.dtype(),
                Dtype::BOOL
                    | Dtype::U8
                    | Dtype::I32
                    | Dtype::U32
                    | Dtype::I64
                    | Dtype::U64
                    | Dtype::BF16
                    | Dtype::F32
                    | Dtype::F64
            )
        }),
    }
}

#[test]
fn every_damaged_file_that_basic_wrote_is_refused_naming_it() {
    let dir = std::env::temp_dir().join(format!("basic-damage-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (path, want) = original(&dir);
    let good = std::fs::read(&path).unwrap();
    let header = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let kinds = [
        "header bit",
        "data bit",
        "length bit",
        "truncated",
        "appended",
    ];
    let mut r = Rng(20261206);
    let bad = dir.join("damaged.safetensors");
    // Per kind: (cases, accepted with other values, accepted unchanged, refused, crashed,
    // accepted by the library alone).
    let mut table = vec![[0usize; 6]; kinds.len()];
    let mut failures = Vec::new();
    for case in 0..150 {
        let k = case % kinds.len();
        let mut b = good.clone();
        match k {
            0 => b[8 + r.below(header)] ^= 1 << r.below(8),
            1 => b[8 + header + r.below(good.len() - 8 - header)] ^= 1 << r.below(8),
            2 => b[r.below(8)] ^= 1 << r.below(8),
            3 => b.truncate(r.below(good.len())),
            _ => b.extend((0..1 + r.below(16)).map(|_| r.next() as u8)),
        }
        std::fs::write(&bad, &b).unwrap();
        let row = &mut table[k];
        row[0] += 1;
        row[5] += usize::from(library_accepts(&b));
        match catch_unwind(AssertUnwindSafe(|| read_with_metadata(&bad))) {
            Err(_) => {
                row[4] += 1;
                failures.push(format!("case {case} ({}): a panic", kinds[k]));
            }
            Ok(Ok(got)) if got == want => row[2] += 1,
            Ok(Ok(_)) => {
                row[1] += 1;
                let at = b.iter().zip(&good).position(|(x, y)| x != y).unwrap_or(0);
                let near =
                    String::from_utf8_lossy(&b[at.saturating_sub(12)..(at + 12).min(b.len())])
                        .into_owned();
                failures.push(format!(
                    "case {case} ({}): accepted with other values (byte {at}: {near:?})",
                    kinds[k]
                ));
            }
            Ok(Err(e)) => {
                row[3] += 1;
                if !e.to_string().contains("damaged.safetensors") {
                    failures.push(format!(
                        "case {case}: the error does not name the file: {e}"
                    ));
                }
            }
        }
    }
    println!("damage          cases  accepted-changed  accepted-same  refused  crashed  library-alone-accepted");
    for (k, row) in kinds.iter().zip(&table) {
        println!(
            "{k:<15} {:>5}  {:>16}  {:>13}  {:>7}  {:>7}  {:>22}",
            row[0], row[1], row[2], row[3], row[4], row[5]
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The sweep means something: most damage is refused, and the library alone let some through.
    let refused: usize = table.iter().map(|r| r[3]).sum();
    let library: usize = table.iter().map(|r| r[5]).sum();
    assert!(refused >= 140, "only {refused} of 150 refused");
    assert!(library > 20, "the library alone accepted only {library}");
}

#[test]
fn a_file_of_another_library_has_no_checksum_and_is_still_read() {
    let dir = std::env::temp_dir().join(format!("basic-foreign-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Written by the safetensors library itself, as torch or transformers would.
    let data: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::tensor::Dtype::F32, vec![2], &data)
            .unwrap();
    let bytes = safetensors::serialize([("w", view)], &None).unwrap();
    let path = dir.join("foreign.safetensors");
    std::fs::write(&path, &bytes).unwrap();
    let (t, meta) = read_with_metadata(&path).unwrap();
    assert_eq!(t["w"].to_vec::<f32>().unwrap(), [1.0, 2.0]);
    assert!(meta.is_empty());
    // The checksum basic writes is removed on reading and covers the metadata too.
    let ours = dir.join("ours.safetensors");
    let m: BTreeMap<String, String> = [("step".to_string(), "10".to_string())].into();
    write(&ours, &[("w".to_string(), &t["w"])], &m).unwrap();
    assert_eq!(read_with_metadata(&ours).unwrap().1, m);
    let mut b = std::fs::read(&ours).unwrap();
    let at = b.windows(4).position(|w| w == b"\"10\"").unwrap();
    b[at + 2] = b'1';
    std::fs::write(&ours, &b).unwrap();
    let e = read_with_metadata(&ours).unwrap_err().to_string();
    assert!(
        e.contains("checksum") && e.contains("ours.safetensors"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A sharded checkpoint as four processes of a job write it: two tensors split by rows, a
/// scalar held by process 0, a data position.
fn write_checkpoint(dir: &str, seed: u64) -> Vec<(String, HostArray)> {
    use basic::train::checkpoint::{write_manifest, write_process, Block, Manifest, TensorEntry};
    let mut r = Rng(seed);
    let mut values = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| (r.next() % 2000) as f32 / 1000.0 - 1.0)
            .collect()
    };
    let tensors = vec![
        (
            "image/kernel".to_string(),
            HostArray::new(&[8, 12], &values(96)).unwrap(),
        ),
        (
            "text/embed".to_string(),
            HostArray::new(&[16, 6], &values(96)).unwrap(),
        ),
        (
            "temperature".to_string(),
            HostArray::new(&[], &values(1)).unwrap(),
        ),
    ];
    let mut entries: BTreeMap<String, TensorEntry> = BTreeMap::new();
    for (name, t) in &tensors {
        entries.insert(
            name.clone(),
            TensorEntry {
                dtype: "f32".into(),
                shape: t.shape().to_vec(),
                pieces: vec![],
            },
        );
    }
    for p in 0..4usize {
        let mut blocks = Vec::new();
        for (name, t) in &tensors {
            if t.shape().is_empty() {
                if p == 0 {
                    blocks.push(Block {
                        tensor: name.clone(),
                        start: vec![],
                        value: t.clone(),
                    });
                }
                continue;
            }
            let rows = t.shape()[0] / 4;
            let part = t.split(0, 4).unwrap().swap_remove(p);
            blocks.push(Block {
                tensor: name.clone(),
                start: vec![p as i64 * rows, 0],
                value: part,
            });
        }
        for (name, piece) in write_process(dir, p, &blocks).unwrap() {
            entries.get_mut(&name).unwrap().pieces.push(piece);
        }
    }
    let m = Manifest {
        format: basic::train::checkpoint::FORMAT,
        step: 1200 + seed,
        seed,
        processes: 4,
        mesh: "data=4".into(),
        tensors: entries,
        data_position: serde_json::json!({"epoch": 3, "streams": [{"shard": 17, "sample": 250}]}),
        sha256: String::new(),
    };
    write_manifest(dir, &m).unwrap();
    tensors
}

/// What a restore reads back: every tensor whole, the step, the seed and the data position.
fn restore(dir: &str) -> basic::Result<(Vec<Vec<u8>>, u64, u64, serde_json::Value)> {
    let r = basic::train::checkpoint::Reader::open(dir)?;
    let mut out = Vec::new();
    for (name, t) in &r.manifest.tensors {
        let zeros = vec![0; t.shape.len()];
        out.push(
            r.read(name, &zeros, &t.shape, basic::DType::F32)?
                .bytes()
                .to_vec(),
        );
    }
    let m = &r.manifest;
    Ok((out, m.step, m.seed, m.data_position.clone()))
}

#[test]
fn every_damaged_sharded_checkpoint_is_refused_naming_the_file() {
    let root = std::env::temp_dir().join(format!("basic-ckpt-damage-{}", std::process::id()));
    let good = root.join("good");
    let other = root.join("other");
    for d in [&good, &other] {
        std::fs::create_dir_all(d).unwrap();
    }
    write_checkpoint(good.to_str().unwrap(), 1);
    write_checkpoint(other.to_str().unwrap(), 2);
    let want = restore(good.to_str().unwrap()).unwrap();
    let files: Vec<String> = (0..4).map(|p| format!("process-{p:05}.bin")).collect();
    let read = |name: &str| std::fs::read(good.join(name)).unwrap();
    let kinds = [
        "manifest bit",
        "manifest digit",
        "manifest cut",
        "data bit",
        "data cut",
        "shuffled shards",
        "missing shard",
        "other run's manifest",
        "data appended",
    ];
    let mut r = Rng(20261206);
    let bad = root.join("bad");
    // Per kind: cases, accepted with other values, accepted unchanged, refused, crashed.
    let mut table = vec![[0usize; 5]; kinds.len()];
    let mut failures = Vec::new();
    for case in 0..180 {
        let k = case % kinds.len();
        let _ = std::fs::remove_dir_all(&bad);
        std::fs::create_dir_all(&bad).unwrap();
        for f in files.iter().map(String::as_str).chain(["manifest.json"]) {
            std::fs::write(bad.join(f), read(f)).unwrap();
        }
        let victim = files[r.below(4)].clone();
        let damaged: Vec<String> = match k {
            0..=2 => {
                let mut b = read("manifest.json");
                match k {
                    0 => {
                        let at = r.below(b.len());
                        b[at] ^= 1 << r.below(8);
                    }
                    // A digit of a number (a step, a shape, an offset, a position) made another.
                    1 => {
                        let digits: Vec<usize> = (1..b.len())
                            .filter(|&i| b[i].is_ascii_digit() && b[i - 1] != b'"')
                            .filter(|&i| !b[i - 1].is_ascii_hexdigit() || b[i - 1] == b' ')
                            .collect();
                        let at = digits[r.below(digits.len())];
                        b[at] = b'0' + ((b[at] - b'0' + 1 + r.below(9) as u8) % 10);
                    }
                    _ => b.truncate(r.below(b.len())),
                }
                std::fs::write(bad.join("manifest.json"), b).unwrap();
                vec!["manifest.json".into()]
            }
            3 | 4 | 8 => {
                let mut b = read(&victim);
                match k {
                    3 => {
                        let at = r.below(b.len());
                        b[at] ^= 1 << r.below(8);
                    }
                    4 => b.truncate(r.below(b.len())),
                    _ => b.extend((0..1 + r.below(64)).map(|_| r.next() as u8)),
                }
                std::fs::write(bad.join(&victim), b).unwrap();
                vec![victim]
            }
            5 => {
                let a = r.below(4);
                let b = (a + 1 + r.below(3)) % 4;
                std::fs::write(bad.join(&files[a]), read(&files[b])).unwrap();
                std::fs::write(bad.join(&files[b]), read(&files[a])).unwrap();
                vec![files[a].clone(), files[b].clone()]
            }
            6 => {
                std::fs::remove_file(bad.join(&victim)).unwrap();
                vec![victim]
            }
            _ => {
                std::fs::copy(other.join("manifest.json"), bad.join("manifest.json")).unwrap();
                let mut all = files.clone();
                all.push("manifest.json".into());
                all
            }
        };
        let row = &mut table[k];
        row[0] += 1;
        match catch_unwind(AssertUnwindSafe(|| restore(bad.to_str().unwrap()))) {
            Err(_) => {
                row[4] += 1;
                failures.push(format!("case {case} ({}): a panic", kinds[k]));
            }
            Ok(Ok(got)) if got == want => row[2] += 1,
            Ok(Ok(_)) => {
                row[1] += 1;
                failures.push(format!(
                    "case {case} ({}): accepted with other values",
                    kinds[k]
                ));
            }
            Ok(Err(e)) => {
                row[3] += 1;
                let e = e.to_string();
                if !damaged.iter().any(|f| e.contains(f.as_str())) {
                    failures.push(format!(
                        "case {case} ({}): the error names none of {damaged:?}: {e}",
                        kinds[k]
                    ));
                }
            }
        }
    }
    println!("damage                 cases  accepted-changed  accepted-same  refused  crashed");
    for (k, row) in kinds.iter().zip(&table) {
        println!(
            "{k:<22} {:>5}  {:>16}  {:>13}  {:>7}  {:>7}",
            row[0], row[1], row[2], row[3], row[4]
        );
    }
    let _ = std::fs::remove_dir_all(&root);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Only appended bytes (outside every piece) may be read back unchanged; all else is refused.
    for (k, row) in kinds.iter().zip(&table) {
        if *k != "data appended" {
            assert_eq!(row[3], row[0], "{k}: {row:?}");
        }
    }
}
