//! Importers that turn datasets the package registries carry into shards.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};

use super::image::encode_png;
use super::shards::{write_shards, Sample};

/// Fashion-MNIST's classes, as caption words.
pub const FASHION_CLASSES: [&str; 10] = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
];

/// Caption templates; `{a}` is the article, `{}` the class name.
pub const FASHION_TEMPLATES: [&str; 8] = [
    "a photo of {a} {}.",
    "a grayscale photo of {a} {}.",
    "a picture of {a} {}.",
    "a low resolution photo of {a} {}.",
    "a close-up photo of {a} {}.",
    "a product photo of {a} {}.",
    "this is {a} {}.",
    "{a} {} on a black background.",
];

fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// Fills a template with a class name.
pub fn fill(template: &str, class: &str) -> String {
    template.replace("{a}", article(class)).replace("{}", class)
}

/// Where Debian's `dataset-fashion-mnist` puts its files.
pub const FASHION_DIR: &str = "/usr/share/datasets/fashion-mnist";

fn read_idx(path: &Path, magic: u32) -> Result<(Vec<usize>, Vec<u8>)> {
    let f = std::fs::File::open(path).map_err(|e| {
        Error::invalid(
            format!("Fashion-MNIST file `{}`", path.display()),
            format!(
                "{e}; install it with `apt-get install dataset-fashion-mnist` or pass --source DIR"
            ),
        )
    })?;
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(f)
        .read_to_end(&mut bytes)
        .map_err(|e| {
            Error::invalid(
                format!("Fashion-MNIST file `{}`", path.display()),
                format!("not a readable gzip file: {e}"),
            )
        })?;
    let bad = |m: &str| Error::invalid(format!("IDX file `{}`", path.display()), m.to_string());
    if bytes.len() < 8 || u32::from_be_bytes(bytes[..4].try_into().unwrap_or_default()) != magic {
        return Err(bad(
            "wrong magic number: not an IDX file of the expected kind",
        ));
    }
    let ndim = (magic & 0xff) as usize;
    let mut dims = Vec::with_capacity(ndim);
    for i in 0..ndim {
        let at = 4 + 4 * i;
        let d = bytes
            .get(at..at + 4)
            .ok_or_else(|| bad("truncated header"))?;
        dims.push(u32::from_be_bytes(d.try_into().unwrap_or_default()) as usize);
    }
    let start = 4 + 4 * ndim;
    let n: usize = dims.iter().product();
    let data = bytes
        .get(start..start + n)
        .ok_or_else(|| bad("truncated data"))?
        .to_vec();
    Ok((dims, data))
}

/// Imports Fashion-MNIST as `train-*.tar` and `test-*.tar` shards, each image captioned by a
/// template sentence drawn deterministically, plus `classes.txt`, `templates.txt` and
/// `captions.txt` (the training captions, for tokenizer training). `limit` caps the pairs per
/// split.
pub fn fashion_mnist(source: &Path, out: &Path, limit: Option<usize>) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let mut corpus = String::new();
    for (split, prefix) in [("train", "train"), ("t10k", "test")] {
        let (idims, pixels) = read_idx(
            &source.join(format!("{split}-images-idx3-ubyte.gz")),
            0x0803,
        )?;
        let (_, labels) = read_idx(
            &source.join(format!("{split}-labels-idx1-ubyte.gz")),
            0x0801,
        )?;
        let (n, h, w) = (idims[0], idims[1], idims[2]);
        let n = limit.map_or(n, |l| l.min(n)).min(labels.len());
        let mut samples = Vec::with_capacity(n);
        for i in 0..n {
            let label = labels[i] as usize;
            let class = FASHION_CLASSES.get(label).ok_or_else(|| {
                Error::invalid(
                    format!("Fashion-MNIST label {label} of image {i}"),
                    "labels are 0..9; the file is damaged",
                )
            })?;
            // A fixed hash of the index picks the template, so captions are reproducible.
            let t = (i.wrapping_mul(2654435761) >> 7) % FASHION_TEMPLATES.len();
            let caption = fill(FASHION_TEMPLATES[t], class);
            if prefix == "train" {
                corpus.push_str(&caption);
                corpus.push('\n');
            }
            let png = encode_png(w as u32, h as u32, 1, &pixels[i * h * w..(i + 1) * h * w])?;
            samples.push(Sample {
                key: format!("{prefix}{i:06}"),
                image: Arc::new(png),
                caption,
                label: Some(label as i64),
            });
        }
        written.extend(write_shards(out, prefix, &samples, 10_000)?);
    }
    let write = |name: &str, text: String| -> Result<PathBuf> {
        let p = out.join(name);
        crate::fs::write_atomic(&p, text.as_bytes())?;
        Ok(p)
    };
    written.push(write("classes.txt", FASHION_CLASSES.join("\n") + "\n")?);
    written.push(write("templates.txt", FASHION_TEMPLATES.join("\n") + "\n")?);
    written.push(write("captions.txt", corpus)?);
    Ok(written)
}

/// Imports the npm package `emoji-datasource-google` (the extracted `package/` folder: 64×64
/// images and `emoji.json`) as image–text pairs: each emoji captioned by its lower-cased name.
/// A fixed hash of the short name puts one emoji in ten into the test split.
pub fn emoji(source: &Path, out: &Path) -> Result<Vec<PathBuf>> {
    let meta_path = source.join("emoji.json");
    let text = std::fs::read_to_string(&meta_path).map_err(|e| Error::invalid(format!("emoji metadata `{}`", meta_path.display()), format!("{e}; extract the npm package emoji-datasource-google (`npm pack emoji-datasource-google@16.0.0`) and pass its package/ folder as --source")))?;
    let entries: Vec<serde_json::Value> = serde_json::from_str(&text).map_err(|e| {
        Error::invalid(
            format!("emoji metadata `{}`", meta_path.display()),
            format!("not the package's emoji.json: {e}"),
        )
    })?;
    let (mut train, mut test) = (Vec::new(), Vec::new());
    let mut corpus = String::new();
    for e in &entries {
        if e["has_img_google"].as_bool() != Some(true) {
            continue;
        }
        let (Some(name), Some(image), Some(short)) = (
            e["name"].as_str(),
            e["image"].as_str(),
            e["short_name"].as_str(),
        ) else {
            continue;
        };
        let path = source.join("img/google/64").join(image);
        let bytes = std::fs::read(&path).map_err(|err| {
            Error::invalid(
                format!("emoji image `{}`", path.display()),
                format!("{err}; the package folder is incomplete"),
            )
        })?;
        let caption = format!("{}.", name.to_lowercase());
        let key = short.replace(|c: char| !c.is_ascii_alphanumeric(), "_");
        let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        let s = Sample {
            key,
            image: Arc::new(bytes),
            caption: caption.clone(),
            label: None,
        };
        if hash % 10 == 0 {
            test.push(s);
        } else {
            corpus.push_str(&caption);
            corpus.push('\n');
            train.push(s);
        }
    }
    let mut written = write_shards(out, "train", &train, 1000)?;
    written.extend(write_shards(out, "test", &test, 1000)?);
    let p = out.join("captions.txt");
    crate::fs::write_atomic(&p, corpus.as_bytes())?;
    written.push(p);
    Ok(written)
}
