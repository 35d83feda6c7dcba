//! The command-line contracts users and scripts rely on.

mod common;

use common::tmp;

fn basic_cmd(args: &[&str]) -> std::process::Output {
    common::basic_cmd(args).output().unwrap()
}

/// The command re-executes itself with glibc's huge-page tunable (the plugin's per-step buffers
/// are then not faulted in page by page), keeps any tunables the user set, and leaves it off
/// when `BASIC_HUGE_PAGES=0`.
#[test]
fn devices_run_with_huge_pages_unless_turned_off() {
    let json = |envs: &[(&str, &str)]| {
        let mut c = common::basic_cmd(&["devices", "--json"]);
        c.env_remove("GLIBC_TUNABLES")
            .env_remove("BASIC_HUGE_PAGES");
        for (k, v) in envs {
            c.env(k, v);
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    assert_eq!(json(&[])["host_huge_pages"], true);
    assert_eq!(
        json(&[("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")])["host_huge_pages"],
        true
    );
    assert_eq!(json(&[("BASIC_HUGE_PAGES", "0")])["host_huge_pages"], false);
}

#[test]
fn devices_json_has_the_documented_keys() {
    let o = basic_cmd(&["devices", "--cpu-devices", "3", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["platform"], "cpu");
    assert!(v["plugin"].as_str().unwrap().ends_with(".so"));
    assert!(v["pjrt_api_version"].as_str().unwrap().starts_with("0."));
    let d = v["devices"].as_array().unwrap();
    assert_eq!(d.len(), 3);
    assert_eq!(d[2]["id"], 2);
    assert!(d[0]["kind"].is_string());
}

#[test]
fn compile_json_reports_params_flops_and_memory_per_device() {
    let dir = tmp("compile");
    let emit = dir.join("step.mlir");
    let o = basic_cmd(&[
        "compile",
        "--model",
        "tiny",
        "--batch",
        "16",
        "--microbatches",
        "2",
        "--remat",
        "nothing_saveable",
        "--partitioning",
        "data_parallel",
        "--mesh",
        "data=2",
        "--emit",
        emit.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // The count the model's own parameter specs give.
    let specs =
        basic::model::dual::specs(&basic::model::ModelConfig::load("tiny").unwrap()).unwrap();
    let params: i64 = specs.iter().map(|s| s.element_count()).sum();
    assert_eq!(v["params"], params);
    assert!(v["flops_per_step"].as_f64().unwrap() > 1e8);
    assert!(v["compile_seconds"].as_f64().unwrap() > 0.0);
    let d = v["devices"].as_array().unwrap();
    assert_eq!(d.len(), 2);
    for k in ["argument_bytes", "output_bytes", "temp_bytes", "peak_bytes"] {
        assert!(d[0][k].as_i64().unwrap() > 0, "{k}");
    }
    let text = std::fs::read_to_string(&emit).unwrap();
    assert!(text.contains("sdy.mesh @mesh = <[\"data\"=2]>") && text.contains("stablehlo.while"));
    assert!(!text.contains("tf.aliasing_output"));
    assert_eq!(d[0]["alias_bytes"], 0);

    // --donate: every parameter and optimizer-state slot is written in place, on each device.
    let o = basic_cmd(&[
        "compile",
        "--model",
        "tiny",
        "--batch",
        "16",
        "--mesh",
        "data=2",
        "--donate",
        "--emit",
        emit.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let text = std::fs::read_to_string(&emit).unwrap();
    // tiny's parameters, and AdamW's m and v of each.
    assert_eq!(text.matches("tf.aliasing_output").count(), 3 * specs.len());
    let d = &v["devices"][0];
    // Replicated over `data`, the whole parameters and state are aliased on each device.
    assert!(d["alias_bytes"].as_i64().unwrap() >= 3 * params * 4, "{d}");
}

#[test]
fn grad_writes_the_loss_and_every_parameter_gradient_by_name() {
    let dir = tmp("grad");
    let p = dir.join("p.safetensors");
    let b = dir.join("b.safetensors");
    let g = dir.join("g.safetensors");
    let g4 = dir.join("g4.safetensors");
    let o = basic_cmd(&[
        "grad",
        "--model",
        "tiny",
        "--seed",
        "3",
        "--save-params",
        p.to_str().unwrap(),
        "--random-batch",
        "8",
        "--save-batch",
        b.to_str().unwrap(),
        "--dtype",
        "f64",
        "--out",
        g.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = basic_cmd(&[
        "grad",
        "--model",
        "tiny",
        "--params",
        p.to_str().unwrap(),
        "--batch",
        b.to_str().unwrap(),
        "--microbatches",
        "4",
        "--dtype",
        "f64",
        "--out",
        g4.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let a = basic::io::safetensors::read(&g).unwrap();
    let b4 = basic::io::safetensors::read(&g4).unwrap();
    assert!(
        a.contains_key("loss")
            && a.contains_key("image/blocks/1/attn/qkv/kernel")
            && a.contains_key("logit_scale")
    );
    assert_eq!(a.len(), 62);
    for (k, v) in &a {
        let (x, y) = (v.to_f64_vec(), b4[k].to_f64_vec());
        for (p, q) in x.iter().zip(&y) {
            assert!((p - q).abs() <= 1e-10 * (1.0 + p.abs()), "{k}: {p} vs {q}");
        }
    }
    // The same parameters, unrolled, into the model with scanned layers: the loss is the same
    // and each stacked gradient holds its layers' gradients.
    let gs = dir.join("gs.safetensors");
    let o = basic_cmd(&[
        "grad",
        "--model",
        "tiny",
        "--scan-layers",
        "--params",
        p.to_str().unwrap(),
        "--batch",
        b.to_str().unwrap(),
        "--dtype",
        "f64",
        "--out",
        gs.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = basic::io::safetensors::read(&gs).unwrap();
    let stacked = &s["image/layers/attn/qkv/kernel"];
    assert_eq!(stacked.shape(), &[2, 64, 192]);
    let layers = stacked.split(0, 2).unwrap();
    for (name, want) in [
        ("loss", &s["loss"]),
        ("image/blocks/0/attn/qkv/kernel", &layers[0]),
        ("image/blocks/1/attn/qkv/kernel", &layers[1]),
    ] {
        let (x, y) = (a[name].to_f64_vec(), want.to_f64_vec());
        assert_eq!(x.len(), y.len(), "{name}");
        for (p, q) in x.iter().zip(&y) {
            assert!(
                (p - q).abs() <= 1e-10 * (1.0 + p.abs()),
                "{name}: {p} vs {q}"
            );
        }
    }
    // Embeddings of the batch computed in `dtype`, read back.
    let embed = |dtype: &str| {
        let out = dir.join(format!("e-{dtype}.safetensors"));
        let o = basic_cmd(&[
            "embed",
            "--model",
            "tiny",
            "--params",
            p.to_str().unwrap(),
            "--batch",
            b.to_str().unwrap(),
            "--dtype",
            dtype,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        basic::io::safetensors::read(&out).unwrap()
    };
    let e = embed("f32");
    assert_eq!(e["image_embeddings"].shape(), &[8, 64]);
    assert_eq!(e["logit_scale"].shape(), &[] as &[i64]);
    // bf16 compute from the f32 parameters: f32 embeddings, each close to the f32 one in
    // direction but not equal to it (the towers did run in bf16).
    let e16 = embed("bf16");
    for k in ["image_embeddings", "text_embeddings"] {
        assert_eq!(e16[k].dtype(), basic::DType::F32, "{k}");
        let (x, y) = (e[k].to_f64_vec(), e16[k].to_f64_vec());
        assert_ne!(x, y, "{k}: bf16 gave exactly the f32 embeddings");
        for (u, v) in x.chunks(64).zip(y.chunks(64)) {
            let cos: f64 = u.iter().zip(v).map(|(a, b)| a * b).sum();
            assert!(
                cos > 0.99,
                "{k}: cosine {cos} between f32 and bf16 embeddings"
            );
        }
    }
    let o = basic_cmd(&["embed", "--model", "tiny", "--dtype", "f16", "--out", "x"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("f16") && err.contains("bf16"),
        "{err}"
    );
}

#[test]
fn run_compiles_and_times_any_program_including_donating_ones() {
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/graphs/examples");
    // `acc + x` donating `acc`: every repetition gets a fresh `acc`, so each sees 1 + 1.
    let o = basic_cmd(&[
        "run",
        &format!("{examples}/donate.mlir"),
        "--inputs",
        "ones",
        "--repeat",
        "3",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["memory"]["alias_bytes"], 24);
    assert_eq!(v["outputs_device0"][0]["sum"], 6.0);
    // A program without donation.
    let o = basic_cmd(&[
        "run",
        &format!("{examples}/f64_sqrt.mlir"),
        "--inputs",
        "ones",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["memory"]["alias_bytes"], 0);
    assert!(v["execute_seconds_median"].as_f64().unwrap() > 0.0);
}

#[test]
fn bad_flags_and_files_are_one_clear_error() {
    let o = basic_cmd(&["compile", "--model", "tiny", "--dtype", "f16"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("--dtype") && !e.contains("panicked"),
        "{e}"
    );
    let o = basic_cmd(&["compile", "--model", "tiny", "--mesh", "data=x"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("data=x"), "{e}");
    let o = basic_cmd(&["devices", "--backend", "/nonexistent/plugin.so"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("/nonexistent/plugin.so"),
        "{e}"
    );
    let dir = tmp("badcfg");
    let cfg = dir.join("bad.toml");
    std::fs::write(&cfg, "name = \"x\"\nembed_dim = 8\nimage_sise = 3\n").unwrap();
    let o = basic_cmd(&["compile", "--model", cfg.to_str().unwrap()]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("bad.toml"), "{e}");
}

/// Choices are parsed once, at the flag: a bad value is refused there, naming the flag, before
/// any config is read; `train` takes the same precisions as every other command.
#[test]
fn typed_flags_are_refused_at_the_flag_that_carries_them() {
    let cases: [(&[&str], &str); 5] = [
        (
            &[
                "train", "--model", "tiny", "--data", "x", "--out", "y", "--dtype", "f64",
            ],
            "--dtype",
        ),
        (
            &["compile", "--model", "tiny", "--remat", "most"],
            "--remat",
        ),
        (
            &["compile", "--model", "tiny", "--partitioner", "gspmdd"],
            "--partitioner",
        ),
        (
            &[
                "plan",
                "--model",
                "tiny",
                "--target",
                "tpu-v5e:2x2",
                "--partitioner",
                "x",
            ],
            "--partitioner",
        ),
        (
            &["grad", "--model", "tiny", "--dtype", "bf16", "--out", "g"],
            "--dtype",
        ),
    ];
    for (args, flag) in cases {
        let o = basic_cmd(args);
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(e.contains(flag), "{args:?}: {e}");
        // Refused by the flag's parser, not by a preset's validation.
        assert!(
            !e.contains("`tiny`") && !e.contains("panicked"),
            "{args:?}: {e}"
        );
    }
}

/// Model presets and rule files are built into the binary, as targets are: a run from a folder
/// with no `graphs/` or `partitioning/` finds them.
#[test]
fn presets_and_rule_files_need_no_source_tree() {
    let dir = tmp("elsewhere");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_basic"))
        .args([
            "compile",
            "--model",
            "tiny",
            "--partitioning",
            "fsdp",
            "--mesh",
            "data=2",
            "--json",
        ])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["model"], "tiny");
    assert_eq!(v["devices"].as_array().unwrap().len(), 2);
}

/// A foreign-checkpoint folder without its config is one error that says so, once; an OS error
/// is reported once, not once per level of its cause chain.
#[test]
fn a_missing_foreign_config_and_a_missing_file_are_said_once() {
    let dir = tmp("hf-empty");
    let model = format!("hf:{}", dir.display());
    let o = basic_cmd(&["embed", "--model", &model, "--batch", "b", "--out", "e"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{e}");
    assert_eq!(e.matches("config.json").count(), 2, "{e}");
    assert!(
        e.contains("has no config.json") && !e.contains("os error"),
        "{e}"
    );
    let missing = dir.join("nothing.safetensors");
    let o = basic_cmd(&[
        "grad",
        "--model",
        "tiny",
        "--params",
        missing.to_str().unwrap(),
        "--random-batch",
        "2",
        "--out",
        "g",
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{e}");
    assert_eq!(e.matches("os error 2").count(), 1, "{e}");
}
