//! Checkpoints of other libraries: small random-initialised CLIP (transformers and open_clip) and
//! SigLIP models with the libraries' own embeddings (tests/fixtures/clip, made by
//! scripts/fixtures/make_clip_fixtures.py). basic reads each by its own names, and its image and
//! text embeddings and logits equal the library's within 1e-5; CLIP's tokenizer gives both
//! libraries' ids; exported folders read back to the same parameters; a mismatched checkpoint
//! is listed in full.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use basic::io::interop::{self, Foreign, Format};
use basic::model::inference::embed_graph;
use basic::runtime::HostArray;
use basic::DType;
use common::{assert_close, compile_graph, run_ok, tmp};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/clip")
        .join(name)
}

fn reference(dir: &Path) -> BTreeMap<String, HostArray> {
    basic::io::safetensors::read(&dir.join("reference.safetensors")).unwrap()
}

fn f64s(a: &HostArray) -> Vec<f64> {
    a.to_f64_vec()
}

/// basic's image and text embeddings and logit scale (and bias) of `f` on the reference inputs.
fn embed(f: &Foreign, weights: &BTreeMap<String, HostArray>) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let c = &f.config;
    let r = reference(&f.dir);
    let pixels = basic::io::safetensors::convert(&r["pixels_nhwc"], DType::F32).unwrap();
    let ids: Vec<i32> = f64s(&r["input_ids"]).iter().map(|&v| v as i32).collect();
    let (ni, nt) = (pixels.shape()[0], r["input_ids"].shape()[0]);
    // One batch size for both towers: the images are repeated to the number of captions.
    let n = ni.max(nt);
    let px = pixels.element_count() / ni as usize;
    let pv = pixels.to_vec::<f32>().unwrap();
    let images: Vec<f32> = (0..n as usize)
        .flat_map(|i| pv[(i % ni as usize) * px..(i % ni as usize + 1) * px].to_vec())
        .collect();
    let l = c.text.length as usize;
    let tokens: Vec<i32> = (0..n as usize)
        .flat_map(|i| ids[(i % nt as usize) * l..(i % nt as usize + 1) * l].to_vec())
        .collect();
    let g = embed_graph(c, n, DType::F32, DType::F32).unwrap();
    let specs = basic::model::dual::specs(c).unwrap();
    let mut args: Vec<HostArray> = specs.iter().map(|s| weights[&s.name].clone()).collect();
    let s = c.image.image_size();
    args.push(HostArray::new(&[n, s, s, c.image.channels()], &images).unwrap());
    args.push(HostArray::new(&[n, l as i64], &tokens).unwrap());
    let out = compile_graph(&g).run(&args).unwrap();
    let e = c.embed_dim as usize;
    let img = f64s(&out[0])[..ni as usize * e].to_vec();
    let txt = f64s(&out[1])[..nt as usize * e].to_vec();
    (img, txt, f64s(&out[2]))
}

fn logits(img: &[f64], txt: &[f64], e: usize, scale: f64, bias: f64) -> Vec<f64> {
    let mut out = Vec::new();
    for a in img.chunks(e) {
        for b in txt.chunks(e) {
            out.push(scale * a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>() + bias);
        }
    }
    out
}

fn check_against_library(format: Format, name: &str) {
    let f = interop::open(format, &fixture(name)).unwrap();
    let w = interop::read_weights(&f).unwrap();
    let r = reference(&f.dir);
    let (img, txt, scale) = embed(&f, &w);
    assert_close(&img, &f64s(&r["image_embeds"]), 1e-5);
    assert_close(&txt, &f64s(&r["text_embeds"]), 1e-5);
    let bias = r.get("logit_bias").map_or(0.0, |b| f64s(b)[0]);
    let want = f64s(&r["logits_per_image"]);
    let got = logits(&img, &txt, f.config.embed_dim as usize, scale[0], bias);
    // Logits are scaled by up to e^{logit_scale}: compare relative to that scale.
    let tol = 1e-5 * scale[0].max(1.0);
    assert_close(&got, &want, tol);
}

#[test]
fn hf_clip_embeddings_equal_the_library() {
    check_against_library(Format::Hf, "hf-clip");
}

#[test]
fn open_clip_embeddings_equal_the_library() {
    check_against_library(Format::OpenClip, "open-clip");
}

#[test]
fn hf_siglip_embeddings_equal_the_library() {
    check_against_library(Format::Hf, "hf-siglip");
}

#[test]
fn the_clip_tokenizer_gives_both_libraries_ids() {
    let gz = std::fs::read(fixture("tokenizers/clip-tokenizer.json.gz")).unwrap();
    let mut json = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut json).unwrap();
    let path = tmp("clip-tok").join("tokenizer.json");
    std::fs::write(&path, json).unwrap();
    let tok = basic::data::Tokenizer::load(&path).unwrap();
    let ids: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("tokenizers/clip-ids.json")).unwrap(),
    )
    .unwrap();
    let list = |v: &serde_json::Value| -> Vec<i32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap() as i32)
            .collect()
    };
    let mut checked = 0;
    for (caption, row) in ids["captions"].as_object().unwrap() {
        let (hf, oc) = (list(&row["hf"]), list(&row["open_clip"]));
        let got = tok.encode(caption, hf.len()).unwrap();
        // Up to the end of text both libraries' ids; after it basic pads with 0, as open_clip
        // (HF pads with the end token).
        let end = hf.iter().position(|&i| i == 49407).unwrap() + 1;
        assert_eq!(&got.ids[..end], &hf[..end], "{caption:?}");
        assert!(got.ids[end..].iter().all(|&i| i == 0), "{caption:?}");
        if row["agree"].as_bool().unwrap() {
            assert_eq!(got.ids, oc, "{caption:?}");
        }
        let untruncated = row["untruncated_tokens"].as_u64().unwrap() as usize;
        assert_eq!(got.truncated, untruncated > hf.len(), "{caption:?}");
        checked += 1;
    }
    assert!(checked >= 10);
}

#[test]
fn export_reads_back_to_the_same_parameters_in_both_formats() {
    for (format, name) in [
        (Format::Hf, "hf-clip"),
        (Format::OpenClip, "open-clip"),
        (Format::Hf, "hf-siglip"),
    ] {
        let f = interop::open(format, &fixture(name)).unwrap();
        let w = interop::read_weights(&f).unwrap();
        let out = tmp(&format!("export-{name}"));
        interop::export(&f.config, &w, format, &out, None).unwrap();
        let back = interop::open(format, &out).unwrap();
        assert_eq!(back.config.image, f.config.image, "{name}");
        assert_eq!(back.config.text.width, f.config.text.width);
        let w2 = interop::read_weights(&back).unwrap();
        assert_eq!(w2, w, "{name}: the round trip changed parameters");
        // And the exported file holds the library's own names and layouts, tensor for tensor.
        let theirs = basic::io::safetensors::read(&f.weights).unwrap();
        let ours = basic::io::safetensors::read(&back.weights).unwrap();
        assert_eq!(ours.len(), theirs.len(), "{name}");
        for (k, v) in &ours {
            assert_eq!(v.shape(), theirs[k].shape(), "{name}: {k}");
            assert_eq!(f64s(v), f64s(&theirs[k]), "{name}: {k}");
        }
    }
}

#[test]
fn a_mismatched_checkpoint_is_listed_in_full() {
    let src = fixture("open-clip");
    let dir = tmp("mismatch");
    std::fs::copy(
        src.join("open_clip_config.json"),
        dir.join("open_clip_config.json"),
    )
    .unwrap();
    let mut w = basic::io::safetensors::read(&src.join("open_clip_model.safetensors")).unwrap();
    w.remove("ln_final.weight");
    w.remove("visual.proj");
    w.insert(
        "visual.conv1.weight".into(),
        HostArray::zeros(DType::F32, &[32, 3, 4, 4]).unwrap(),
    );
    w.insert(
        "extra.weight".into(),
        HostArray::zeros(DType::F32, &[2]).unwrap(),
    );
    let named: Vec<(String, &HostArray)> = w.iter().map(|(k, v)| (k.clone(), v)).collect();
    basic::io::safetensors::write(
        &dir.join("open_clip_model.safetensors"),
        &named,
        &BTreeMap::new(),
    )
    .unwrap();
    let f = interop::open(Format::OpenClip, &dir).unwrap();
    let e = interop::read_weights(&f).unwrap_err().to_string();
    for part in [
        "missing 2",
        "ln_final.weight",
        "visual.proj",
        "misshaped 1",
        "visual.conv1.weight",
        "unexpected 1",
        "extra.weight",
    ] {
        assert!(e.contains(part), "`{part}` not in: {e}");
    }
}

#[test]
fn an_architecture_the_format_cannot_express_is_refused() {
    let c = basic::model::ModelConfig::load("tiny").unwrap();
    let specs = basic::model::dual::specs(&c).unwrap();
    let w: BTreeMap<String, HostArray> = specs
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                HostArray::zeros(DType::F32, &s.shape).unwrap(),
            )
        })
        .collect();
    let e = interop::export(&c, &w, Format::OpenClip, &tmp("refuse"), None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("open_clip format holds the CLIP architecture"),
        "{e}"
    );
}

/// LiT from an imported CLIP: `train --model hf:DIR --init-from hf:DIR --lock-text` trains the
/// image tower with the imported text tower locked; the run exports as a transformers folder
/// that reads back to the run's parameters, and `eval zero-shot` runs on that folder directly,
/// on an image folder with built-in templates.
#[test]
fn lit_from_an_imported_clip_then_export_and_zero_shot_on_the_folder() {
    let model = format!("hf:{}", fixture("hf-clip").display());
    let d = tmp("lit-data");
    basic::data::import::fashion_mnist(Path::new(basic::data::import::FASHION_DIR), &d, Some(64))
        .unwrap();
    let run = tmp("lit-run");
    let (ds, rs) = (d.to_str().unwrap(), run.to_str().unwrap());
    run_ok(&[
        "train",
        "--model",
        &model,
        "--init-from",
        &model,
        "--lock-text",
        "--data",
        ds,
        "--out",
        rs,
        "--steps",
        "3",
        "--batch",
        "16",
        "--checkpoint-every",
        "3",
        "--eval-every",
        "0",
        "--quiet",
    ]);
    let f = interop::open(Format::Hf, &fixture("hf-clip")).unwrap();
    let imported = interop::read_weights(&f).unwrap();
    let ck = basic::train::run::checkpoints(&run);
    let last = common::read_checkpoint(&ck[ck.len() - 1].1);
    let mut moved = 0;
    for (k, v) in &imported {
        if k.starts_with("text/") {
            assert_eq!(&last[k], v, "{k}: the locked, imported text tower changed");
        } else if k.starts_with("image/") && &last[k] != v {
            moved += 1;
        }
    }
    assert!(
        moved > 5,
        "the image tower should train from the imported weights"
    );

    let out = tmp("lit-export");
    let os = out.to_str().unwrap();
    run_ok(&["export", "--format", "hf", rs, os]);
    let back = interop::read_weights(&interop::open(Format::Hf, &out).unwrap()).unwrap();
    for (k, v) in &back {
        assert_eq!(f64s(v), f64s(&last[k]), "{k}");
    }

    // Two classes of 4 images each, as PNG files in class folders.
    let folder = tmp("lit-folder");
    for (class, shade) in [("t_shirt", 40u8), ("ankle_boot", 200u8)] {
        let dir = folder.join(class);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..4u8 {
            let px: Vec<u8> = (0..28 * 28)
                .map(|j| shade.wrapping_add(i * 7 + (j % 5) as u8))
                .collect();
            let png = basic::data::image::encode_png(28, 28, 1, &px).unwrap();
            std::fs::write(dir.join(format!("{i}.png")), png).unwrap();
        }
    }
    let json = run_ok(&[
        "eval",
        "zero-shot",
        "--model",
        &format!("hf:{os}"),
        "--data",
        folder.to_str().unwrap(),
        "--templates",
        "clip-short",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["images"], 8);
    let top1 = v["top1"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&top1));
    let classes: Vec<&String> = v["per_class"].as_object().unwrap().keys().collect();
    assert_eq!(classes, ["ankle boot", "t shirt"]);
}
