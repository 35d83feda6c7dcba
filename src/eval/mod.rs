//! Zero-shot classification with prompt ensembles, and image–text retrieval.
//!
//! Zero-shot (CLIP §3.1.4): each class is represented by the mean of the normalised embeddings of
//! its prompts (`a photo of a {}.`, ...), renormalised; an image is assigned the class of largest
//! cosine similarity. Retrieval ranks all texts for each image (and the reverse) by similarity.

use std::path::Path;

use crate::array::HostArray;
use crate::data::image::preprocess_into;
use crate::data::loader::par_each;
use crate::data::{Sample, Tokenizer};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::model::inference::{image_embed_graph, text_embed_graph};
use crate::model::ModelConfig;
use crate::runtime::{Client, CompileOptions, Executable};

/// Compiled embedding programs of a model with fixed parameters.
pub struct Embedder {
    images: Executable,
    texts: Executable,
    params: Vec<HostArray>,
    batch: i64,
    c: ModelConfig,
    /// Texts embedded so far whose tokens were cut to the text length.
    truncated: std::cell::Cell<usize>,
}

fn l2(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
}

impl Embedder {
    /// Compiles the embedding programs for batches of `batch`, the towers computed in `compute`
    /// (f32, or bf16 from the f32 `params`); the embeddings come out in f32 either way.
    pub fn new(
        client: &Client,
        c: &ModelConfig,
        params: Vec<HostArray>,
        batch: i64,
        compute: DType,
    ) -> Result<Embedder> {
        let compile = |g| -> Result<Executable> {
            let text = crate::lower::module(&g, &Default::default())?;
            client.compile(&text, &CompileOptions::single())
        };
        Ok(Embedder {
            images: compile(image_embed_graph(c, batch, DType::F32, compute)?)?,
            texts: compile(text_embed_graph(c, batch, DType::F32, compute)?)?,
            params,
            batch,
            c: c.clone(),
            truncated: std::cell::Cell::new(0),
        })
    }

    /// How many of the texts embedded so far were longer than the text length and cut.
    pub fn truncated(&self) -> usize {
        self.truncated.get()
    }

    /// Runs `exe` over rows of `data` (`row` elements each) in fixed-size batches, padding the last.
    fn batched(
        &self,
        exe: &Executable,
        data: &[f32],
        tokens: &[i32],
        row: usize,
        n: usize,
        shape: &[i64],
    ) -> Result<Vec<Vec<f32>>> {
        let e = self.c.embed_dim as usize;
        let b = self.batch as usize;
        let mut out = Vec::with_capacity(n);
        let mut start = 0;
        while start < n {
            let take = (n - start).min(b);
            let mut args = self.params.clone();
            if data.is_empty() {
                let mut t = tokens[start * row..(start + take) * row].to_vec();
                t.resize(b * row, 0);
                args.push(HostArray::new(shape, &t)?);
            } else {
                let mut d = data[start * row..(start + take) * row].to_vec();
                d.resize(b * row, 0.0);
                args.push(HostArray::new(shape, &d)?);
            }
            let y = exe.run(&args)?.remove(0).to_vec::<f32>()?;
            out.extend(y.chunks_exact(e).take(take).map(|c| c.to_vec()));
            start += take;
        }
        Ok(out)
    }

    /// Normalised embeddings of images (preprocessed as in training).
    pub fn embed_images(&self, samples: &[Sample], workers: usize) -> Result<Vec<Vec<f32>>> {
        let s = self.c.image.image_size() as usize;
        let ch = self.c.image.channels() as usize;
        let (mean, std) = (&self.c.train.mean, &self.c.train.std);
        let px = s * s * ch;
        let mut data = vec![0f32; samples.len() * px];
        let items: Vec<_> = data.chunks_mut(px).zip(samples).collect();
        par_each(items, workers, |(d, smp)| {
            preprocess_into(&smp.image, &smp.key, s, ch, mean, std, d)
        })?;
        let shape = [self.batch, s as i64, s as i64, ch as i64];
        self.batched(&self.images, &data, &[], px, samples.len(), &shape)
    }

    /// Normalised embeddings of texts.
    pub fn embed_texts(&self, texts: &[String], tok: &Tokenizer) -> Result<Vec<Vec<f32>>> {
        let l = self.c.text.length as usize;
        let mut ids = Vec::with_capacity(texts.len() * l);
        for t in texts {
            let e = tok.encode(t, l)?;
            ids.extend(e.ids);
            self.truncated
                .set(self.truncated.get() + usize::from(e.truncated));
        }
        self.batched(
            &self.texts,
            &[],
            &ids,
            l,
            texts.len(),
            &[self.batch, l as i64],
        )
    }
}

/// Reads one entry per non-empty line.
pub fn read_lines(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let v = entries(&text);
    if v.is_empty() {
        return Err(Error::invalid(
            format!("`{}`", path.display()),
            "it has no entries",
        ));
    }
    Ok(v)
}

/// The non-empty lines of `text`, trimmed.
pub fn entries(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Zero-shot results.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ZeroShot {
    pub top1: f64,
    pub top5: f64,
    pub per_class: Vec<(String, f64)>,
    pub images: usize,
}

/// Class embeddings: the renormalised mean of each class's prompt embeddings.
pub fn class_embeddings(
    emb: &Embedder,
    tok: &Tokenizer,
    classes: &[String],
    templates: &[String],
) -> Result<Vec<Vec<f32>>> {
    let mut prompts = Vec::new();
    for c in classes {
        for t in templates {
            prompts.push(crate::data::import::fill(t, c));
        }
    }
    let e = emb.embed_texts(&prompts, tok)?;
    Ok(e.chunks(templates.len())
        .map(|group| {
            let mut m = vec![0f32; group[0].len()];
            for v in group {
                m.iter_mut().zip(v).for_each(|(a, b)| *a += b);
            }
            l2(&mut m);
            m
        })
        .collect())
}

/// Classifies image embeddings against class embeddings; `labels[i]` is image i's class.
pub fn zero_shot_scores(
    images: &[Vec<f32>],
    labels: &[i64],
    classes: &[Vec<f32>],
    names: &[String],
) -> Result<ZeroShot> {
    let mut top1 = 0usize;
    let mut top5 = 0usize;
    let mut per = vec![(0usize, 0usize); classes.len()];
    for (x, &y) in images.iter().zip(labels) {
        let y = y as usize;
        if y >= classes.len() {
            return Err(Error::invalid(
                format!("label {y}"),
                format!("there are {} classes", classes.len()),
            ));
        }
        let sims: Vec<f32> = classes
            .iter()
            .map(|c| c.iter().zip(x).map(|(a, b)| a * b).sum())
            .collect();
        let better = sims.iter().filter(|&&s| s > sims[y]).count();
        top1 += usize::from(better == 0);
        top5 += usize::from(better < 5);
        per[y].1 += 1;
        per[y].0 += usize::from(better == 0);
    }
    let n = images.len().max(1) as f64;
    Ok(ZeroShot {
        top1: top1 as f64 / n,
        top5: top5 as f64 / n,
        per_class: names
            .iter()
            .zip(&per)
            .map(|(c, (h, t))| (c.clone(), *h as f64 / (*t).max(1) as f64))
            .collect(),
        images: images.len(),
    })
}

/// Recall@K in both directions for paired embeddings (`img[i]` matches `txt[i]`).
pub fn retrieval(img: &[Vec<f32>], txt: &[Vec<f32>], ks: &[usize]) -> Vec<(String, f64)> {
    let n = img.len();
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let rank = |q: &[f32], keys: &[Vec<f32>], i: usize| {
        let s = dot(q, &keys[i]);
        keys.iter()
            .enumerate()
            .filter(|(j, k)| *j != i && dot(q, k) > s)
            .count()
    };
    let i2t: Vec<usize> = (0..n).map(|i| rank(&img[i], txt, i)).collect();
    let t2i: Vec<usize> = (0..n).map(|i| rank(&txt[i], img, i)).collect();
    let mut out = Vec::new();
    for (name, ranks) in [("image_to_text", &i2t), ("text_to_image", &t2i)] {
        for &k in ks {
            let r = ranks.iter().filter(|&&r| r < k).count() as f64 / n.max(1) as f64;
            out.push((format!("{name}_recall@{k}"), r));
        }
    }
    out
}

/// Class names and prompt templates built into basic (`src/eval/metadata/`, sources in its
/// README): `imagenet`, `cifar10`, `cifar100` classes; `clip` (the 80 CLIP ImageNet templates),
/// `clip-short` (7 of them), `cifar` templates.
pub fn builtin_list(name: &str) -> Option<&'static str> {
    Some(match name {
        "imagenet" => include_str!("metadata/imagenet-classes.txt"),
        "cifar10" => include_str!("metadata/cifar10-classes.txt"),
        "cifar100" => include_str!("metadata/cifar100-classes.txt"),
        "clip" => include_str!("metadata/clip-templates.txt"),
        "clip-short" => include_str!("metadata/clip-templates-short.txt"),
        "cifar" => include_str!("metadata/cifar-templates.txt"),
        _ => return None,
    })
}

/// A built-in list by name ([`builtin_list`]), or the lines of a file.
pub fn named_or_file(spec: &str) -> Result<Vec<String>> {
    match builtin_list(spec) {
        Some(text) => Ok(entries(text)),
        None if Path::new(spec).is_file() => read_lines(Path::new(spec)),
        None => Err(Error::invalid(format!("class or template list `{spec}`"), "give a file (one per line) or a built-in list: imagenet, cifar10, cifar100 (classes); clip, clip-short, cifar (templates)")),
    }
}

/// An image file and its label.
pub type LabelledFile = (std::path::PathBuf, i64);

/// Hands every sample to its argument until that returns `false`.
pub type SampleSource<'a> = dyn FnMut(&mut dyn FnMut(Sample) -> Result<bool>) -> Result<()> + 'a;

/// The test images of `basic eval zero-shot`: an image folder (class sub-folders, and neither
/// shards nor a manifest beside them) or captioned shards (a folder, a bucket, a pattern).
pub enum TestData {
    /// Each image's path and label, and the class (folder) names.
    Folder(Vec<LabelledFile>, Vec<String>),
    Shards(crate::data::source::Dataset),
}

impl TestData {
    /// Tells an image folder from shards by what `data` holds.
    pub fn open(data: &str) -> Result<TestData> {
        let dir = Path::new(data);
        let listing: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        let is_folder = listing.iter().any(|p| p.is_dir())
            && !listing
                .iter()
                .any(|p| p.extension().is_some_and(|e| e == "tar" || e == "jsonl"));
        if is_folder {
            let (files, names) = image_folder(dir)?;
            Ok(TestData::Folder(files, names))
        } else {
            Ok(TestData::Shards(crate::data::source::parse(
                data, "test", None,
            )?))
        }
    }

    /// Hands every sample to `f` until it returns `false`; the shards' skip counts (`skip_bad`:
    /// damaged shards are left and counted instead of stopping).
    pub fn for_each(
        &self,
        skip_bad: bool,
        f: &mut dyn FnMut(Sample) -> Result<bool>,
    ) -> Result<crate::data::stream::Counts> {
        match self {
            TestData::Folder(files, names) => {
                for (p, l) in files {
                    if !f(folder_sample(p, *l, names)?)? {
                        break;
                    }
                }
                Ok(Default::default())
            }
            TestData::Shards(d) => crate::data::stream::for_each_sample(d, skip_bad, f),
        }
    }
}

/// An image-folder dataset: one sub-folder per class (sorted by name: label order), its PNG, JPEG
/// and WebP files the images. Returns each image's path and label, and the class (folder)
/// names; the images are read as they are used ([`folder_sample`]).
pub fn image_folder(dir: &Path) -> Result<(Vec<LabelledFile>, Vec<String>)> {
    let entries = |d: &Path| -> Result<Vec<std::path::PathBuf>> {
        let mut v: Vec<_> = std::fs::read_dir(d)
            .map_err(|e| Error::io(d, e))?
            .flatten()
            .map(|e| e.path())
            .collect();
        v.sort();
        Ok(v)
    };
    let classes: Vec<std::path::PathBuf> =
        entries(dir)?.into_iter().filter(|p| p.is_dir()).collect();
    if classes.is_empty() {
        return Err(Error::invalid(
            format!("image folder `{}`", dir.display()),
            "it has no class sub-folders; give one folder per class holding its images",
        ));
    }
    let mut files = Vec::new();
    let mut names = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let name = class
            .file_name()
            .map_or(String::new(), |n| n.to_string_lossy().into_owned());
        for f in entries(class)? {
            let ext = f.extension().map(|e| e.to_string_lossy().to_lowercase());
            if matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg" | "webp")) {
                files.push((f, label as i64));
            }
        }
        names.push(name.replace('_', " "));
    }
    Ok((files, names))
}

/// One image of an image folder as a sample, captioned by its class name.
pub fn folder_sample(path: &Path, label: i64, names: &[String]) -> Result<Sample> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(Sample {
        key: path.display().to_string(),
        image: std::sync::Arc::new(bytes),
        caption: names.get(label as usize).cloned().unwrap_or_default(),
        label: Some(label),
    })
}

/// Embeddings of streamed samples, with their labels and captions.
#[derive(Default)]
pub struct Embedded {
    pub images: Vec<Vec<f32>>,
    pub labels: Vec<Option<i64>>,
    pub captions: Vec<String>,
}

/// Embeds the images of the samples `each` produces (it calls its argument with every sample
/// until that returns `false`), keeping at most `limit` of those `keep` accepts; only one
/// batch of encoded images is held at a time.
pub fn embed_streamed(
    emb: &Embedder,
    limit: usize,
    keep: &dyn Fn(&Sample) -> bool,
    each: &mut SampleSource,
) -> Result<Embedded> {
    let mut out = Embedded::default();
    let mut chunk: Vec<Sample> = Vec::new();
    let mut kept = 0usize;
    let chunk_size = emb.batch.max(1) as usize;
    let flush = |chunk: &mut Vec<Sample>, out: &mut Embedded| -> Result<()> {
        if !chunk.is_empty() {
            out.images.extend(emb.embed_images(chunk, 2)?);
            for s in chunk.drain(..) {
                out.labels.push(s.label);
                out.captions.push(s.caption);
            }
        }
        Ok(())
    };
    let mut err = None;
    each(&mut |s| {
        if kept >= limit {
            return Ok(false);
        }
        if keep(&s) {
            chunk.push(s);
            kept += 1;
            if chunk.len() == chunk_size {
                if let Err(e) = flush(&mut chunk, &mut out) {
                    err = Some(e);
                    return Ok(false);
                }
            }
        }
        Ok(kept < limit)
    })?;
    if let Some(e) = err {
        return Err(e);
    }
    flush(&mut chunk, &mut out)?;
    Ok(out)
}
