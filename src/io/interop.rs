//! Checkpoints of other libraries, read and written by their own names: Hugging Face
//! `transformers` folders of `CLIPModel` and `SiglipModel` (`config.json` + `model.safetensors`
//! [+ `tokenizer.json`]) and open_clip folders (`open_clip_config.json` +
//! `open_clip_model.safetensors`). Each format has one mapping table ([`table`]) from basic's
//! parameter names to its own, with the layout change of each entry; reading and writing both
//! walk it, so the two directions cannot disagree.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::array::HostArray;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::model::config::{
    Activation, ImageConfig, ImagePool, LossKind, ModelConfig, Projection, TemperatureConfig,
    TextConfig, TextKind, TextPool, TrainConfig, VitConfig,
};

use super::safetensors;

/// A foreign checkpoint format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A `transformers` folder (`CLIPModel` or `SiglipModel`).
    Hf,
    /// An open_clip folder.
    OpenClip,
}

impl Format {
    /// `hf` or `open_clip`.
    pub fn parse(s: &str) -> Result<Format> {
        match s {
            "hf" => Ok(Format::Hf),
            "open_clip" | "open-clip" => Ok(Format::OpenClip),
            other => Err(Error::invalid(
                format!("checkpoint format `{other}`"),
                "use hf or open_clip",
            )),
        }
    }
}

/// A checkpoint folder of another library: the architecture built from its config, and where
/// its weights and tokenizer are.
#[derive(Clone, Debug)]
pub struct Foreign {
    pub format: Format,
    pub dir: PathBuf,
    pub config: ModelConfig,
    pub weights: PathBuf,
    /// `tokenizer.json` of the folder, when it has one.
    pub tokenizer: Option<PathBuf>,
}

fn bad(what: impl Into<String>, fix: impl Into<String>) -> Error {
    Error::invalid(what.into(), fix.into())
}

/// `hf:DIR` or `open_clip:DIR` as a foreign checkpoint; `None` for any other model name.
pub fn parse_model(spec: &str) -> Result<Option<Foreign>> {
    let (format, dir) = match spec.split_once(':') {
        Some(("hf", d)) => (Format::Hf, d),
        Some(("open_clip", d)) | Some(("open-clip", d)) => (Format::OpenClip, d),
        _ => return Ok(None),
    };
    open(format, Path::new(dir)).map(Some)
}

/// A foreign checkpoint named as `hf:DIR` / `open_clip:DIR`, or a folder holding one of the
/// two configs; `None` for anything else.
pub fn find(path: &Path) -> Result<Option<Foreign>> {
    if let Some(f) = parse_model(&path.to_string_lossy())? {
        return Ok(Some(f));
    }
    if path.join("open_clip_config.json").is_file() {
        return open(Format::OpenClip, path).map(Some);
    }
    if path.join("config.json").is_file() && path.join("model.safetensors").is_file() {
        return open(Format::Hf, path).map(Some);
    }
    Ok(None)
}

/// Reads the folder `dir` of `format`.
pub fn open(format: Format, dir: &Path) -> Result<Foreign> {
    let (config_file, weights_file) = match format {
        Format::Hf => ("config.json", "model.safetensors"),
        Format::OpenClip => ("open_clip_config.json", "open_clip_model.safetensors"),
    };
    let cfg_path = dir.join(config_file);
    if !cfg_path.is_file() {
        let (prefix, what) = match format {
            Format::Hf => ("hf", "a transformers CLIPModel or SiglipModel folder"),
            Format::OpenClip => ("open_clip", "an open_clip folder"),
        };
        return Err(Error::invalid(
            format!("{prefix}:{}", dir.display()),
            format!("it has no {config_file}; give {what} ({config_file} and {weights_file})"),
        ));
    }
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| {
        bad(
            format!("`{}`", cfg_path.display()),
            format!("it is not JSON: {e}"),
        )
    })?;
    let name = dir
        .file_name()
        .map_or("imported".into(), |n| n.to_string_lossy().into_owned());
    let mut config = match format {
        Format::Hf => hf_config(&v, &name, &cfg_path)?,
        Format::OpenClip => open_clip_config(&v, &name, &cfg_path)?,
    };
    // transformers keeps the image normalisation beside the model.
    let pre = dir.join("preprocessor_config.json");
    if format == Format::Hf && pre.is_file() {
        let text = std::fs::read_to_string(&pre).map_err(|e| Error::io(&pre, e))?;
        let p: Value = serde_json::from_str(&text).map_err(|e| {
            bad(
                format!("`{}`", pre.display()),
                format!("it is not JSON: {e}"),
            )
        })?;
        let list = |k: &str| -> Option<Vec<f64>> {
            p.get(k)?.as_array()?.iter().map(Value::as_f64).collect()
        };
        if let (Some(mean), Some(std)) = (list("image_mean"), list("image_std")) {
            config.train.mean = mean;
            config.train.std = std;
        }
    }
    config.validate(&cfg_path.display().to_string())?;
    let weights = dir.join(weights_file);
    if !weights.is_file() {
        return Err(bad(
            format!("`{}`", dir.display()),
            format!("it has no {weights_file}"),
        ));
    }
    let tok = dir.join("tokenizer.json");
    Ok(Foreign {
        format,
        dir: dir.to_path_buf(),
        config,
        weights,
        tokenizer: tok.is_file().then_some(tok),
    })
}

/// A field of a JSON config, or the error that names it.
fn field<'a>(v: &'a Value, key: &str, file: &Path) -> Result<&'a Value> {
    v.get(key).ok_or_else(|| {
        bad(
            format!("`{}`", file.display()),
            format!("it has no `{key}`"),
        )
    })
}

fn int(v: &Value, key: &str, file: &Path) -> Result<i64> {
    field(v, key, file)?.as_i64().ok_or_else(|| {
        bad(
            format!("`{key}` in `{}`", file.display()),
            "it must be an integer",
        )
    })
}

fn int_or(v: &Value, key: &str, default: i64) -> i64 {
    v.get(key).and_then(Value::as_i64).unwrap_or(default)
}

fn float_or(v: &Value, key: &str, default: f64) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(default)
}

fn activation(name: &str, file: &Path) -> Result<Activation> {
    match name {
        "quick_gelu" => Ok(Activation::QuickGelu),
        "gelu" => Ok(Activation::Gelu),
        "gelu_pytorch_tanh" | "gelu_new" => Ok(Activation::GeluTanh),
        other => Err(bad(
            format!("hidden_act `{other}` in `{}`", file.display()),
            "basic has quick_gelu, gelu and gelu_pytorch_tanh",
        )),
    }
}

/// What joins the two towers: the embedding width, each tower's projection, the loss and the
/// initial logit scale (its log).
struct Head {
    embed_dim: i64,
    projections: (Projection, Projection),
    loss: LossKind,
    logit_scale: f64,
}

/// The model config of two towers and their head, with the image normalisation; the rest (the
/// training defaults) the foreign formats do not carry.
fn model(
    name: &str,
    image: VitConfig,
    text: TextConfig,
    head: Head,
    mean_std: (Vec<f64>, Vec<f64>),
) -> ModelConfig {
    let Head {
        embed_dim,
        projections,
        loss,
        logit_scale,
    } = head;
    ModelConfig {
        name: name.to_string(),
        embed_dim,
        image: ImageConfig::Vit(image),
        text,
        temperature: TemperatureConfig {
            init: (-logit_scale).exp(),
            // CLIP clamps the scale at 100; SigLIP's is free.
            min: if loss == LossKind::Sigmoid {
                1e-6
            } else {
                0.01
            },
            learnable: true,
        },
        loss,
        train: TrainConfig {
            mean: mean_std.0,
            std: mean_std.1,
            ..TrainConfig::default()
        },
        scan_layers: false,
        image_projection: projections.0,
        text_projection: projections.1,
    }
}

const CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
const CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

fn hf_config(v: &Value, name: &str, file: &Path) -> Result<ModelConfig> {
    let kind = field(v, "model_type", file)?.as_str().unwrap_or("");
    let (tv, vv) = (
        field(v, "text_config", file)?,
        field(v, "vision_config", file)?,
    );
    let siglip = match kind {
        "clip" => false,
        "siglip" => true,
        other => {
            return Err(bad(
                format!("model_type `{other}` in `{}`", file.display()),
                "basic reads CLIPModel (clip) and SiglipModel (siglip) folders",
            ))
        }
    };
    let act = |c: &Value| {
        activation(
            c.get("hidden_act")
                .and_then(Value::as_str)
                .unwrap_or(if siglip {
                    "gelu_pytorch_tanh"
                } else {
                    "quick_gelu"
                }),
            file,
        )
    };
    let eps_default = if siglip { 1e-6 } else { 1e-5 };
    let width = int(vv, "hidden_size", file)?;
    let image = VitConfig {
        image_size: int(vv, "image_size", file)?,
        channels: int_or(vv, "num_channels", 3),
        patch: int(vv, "patch_size", file)?,
        width,
        depth: int(vv, "num_hidden_layers", file)?,
        heads: int(vv, "num_attention_heads", file)?,
        mlp: int(vv, "intermediate_size", file)?,
        pool: if siglip {
            ImagePool::Map
        } else {
            ImagePool::Cls
        },
        act: act(vv)?,
        layer_norm_eps: float_or(vv, "layer_norm_eps", eps_default),
        patch_bias: siglip,
        class_token: !siglip,
        ln_pre: !siglip,
    };
    if siglip && vv.get("vision_use_head").and_then(Value::as_bool) == Some(false) {
        return Err(bad(
            format!("`vision_use_head = false` in `{}`", file.display()),
            "basic's SigLIP image tower has the attention-pool head",
        ));
    }
    let twidth = int(tv, "hidden_size", file)?;
    let text = TextConfig {
        kind: TextKind::Transformer,
        vocab: int(tv, "vocab_size", file)?,
        length: int(tv, "max_position_embeddings", file)?,
        width: twidth,
        depth: int(tv, "num_hidden_layers", file)?,
        heads: int(tv, "num_attention_heads", file)?,
        mlp: int(tv, "intermediate_size", file)?,
        causal: !siglip,
        pool: if siglip {
            TextPool::Last
        } else {
            TextPool::Argmax
        },
        pad_id: int_or(tv, "pad_token_id", 0),
        max_positions: 0,
        layer_norm_eps: Some(float_or(tv, "layer_norm_eps", eps_default)),
        act: act(tv)?,
        padding_mask: false,
    };
    if !siglip {
        let eos = int_or(tv, "eos_token_id", 2);
        if eos != 2 && eos != text.vocab - 1 {
            return Err(bad(
                format!("eos_token_id {eos} in `{}`", file.display()),
                format!("basic pools CLIP's text at the largest id, which is the end of text only when it is vocab_size - 1 ({})", text.vocab - 1),
            ));
        }
    }
    let (embed_dim, projections, mean_std) = if siglip {
        let proj = int_or(tv, "projection_size", twidth);
        if proj != width {
            return Err(bad(
                format!("`{}`", file.display()),
                format!("the text head maps to {proj} but the image features are {width} wide"),
            ));
        }
        (
            proj,
            (Projection::None, Projection::LinearBias),
            (vec![0.5; 3], vec![0.5; 3]),
        )
    } else {
        (
            int_or(v, "projection_dim", 512),
            (Projection::Linear, Projection::Linear),
            (CLIP_MEAN.to_vec(), CLIP_STD.to_vec()),
        )
    };
    let head = Head {
        embed_dim,
        projections,
        loss: if siglip {
            LossKind::Sigmoid
        } else {
            LossKind::Softmax
        },
        logit_scale: float_or(v, "logit_scale_init_value", 2.6592),
    };
    Ok(model(name, image, text, head, mean_std))
}

fn open_clip_config(v: &Value, name: &str, file: &Path) -> Result<ModelConfig> {
    let m = field(v, "model_cfg", file)?;
    let (vc, tc) = (field(m, "vision_cfg", file)?, field(m, "text_cfg", file)?);
    // What basic's towers do not build.
    for (c, keys) in [
        (
            vc,
            &[
                "timm_model_name",
                "attentional_pool",
                "no_ln_pre",
                "final_ln_after_pool",
                "pool_type",
                "output_tokens",
                "patch_dropout",
                "attn_pooler_queries",
            ][..],
        ),
        (
            tc,
            &[
                "hf_model_name",
                "proj_bias",
                "pool_type",
                "no_causal_mask",
                "embed_cls",
                "pad_id",
            ][..],
        ),
    ] {
        for k in keys {
            if c.get(*k)
                .is_some_and(|x| !x.is_null() && x != &json!(false))
            {
                return Err(bad(
                    format!("`{k}` in `{}`", file.display()),
                    "basic builds open_clip's standard CLIP towers only (ViT with class token and ln_pre, causal text transformer pooled at the end of text)",
                ));
            }
        }
    }
    let act = if m.get("quick_gelu").and_then(Value::as_bool) == Some(true) {
        Activation::QuickGelu
    } else {
        Activation::Gelu
    };
    let width = int(vc, "width", file)?;
    let head_width = int_or(vc, "head_width", 64);
    let image = VitConfig {
        image_size: int(vc, "image_size", file)?,
        channels: 3,
        patch: int(vc, "patch_size", file)?,
        width,
        depth: int(vc, "layers", file)?,
        heads: width / head_width.max(1),
        mlp: (float_or(vc, "mlp_ratio", 4.0) * width as f64) as i64,
        pool: ImagePool::Cls,
        act,
        layer_norm_eps: 1e-5,
        patch_bias: false,
        class_token: true,
        ln_pre: true,
    };
    let twidth = int(tc, "width", file)?;
    let text = TextConfig {
        kind: TextKind::Transformer,
        vocab: int_or(tc, "vocab_size", 49408),
        length: int_or(tc, "context_length", 77),
        width: twidth,
        depth: int(tc, "layers", file)?,
        heads: int_or(tc, "heads", 8),
        mlp: (float_or(tc, "mlp_ratio", 4.0) * twidth as f64) as i64,
        causal: true,
        pool: TextPool::Argmax,
        pad_id: 0,
        max_positions: 0,
        layer_norm_eps: Some(1e-5),
        act,
        padding_mask: false,
    };
    let pre = v.get("preprocess_cfg").cloned().unwrap_or(json!({}));
    let list = |k: &str, d: [f64; 3]| -> Vec<f64> {
        pre.get(k)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_else(|| d.to_vec())
    };
    let head = Head {
        embed_dim: int(m, "embed_dim", file)?,
        projections: (Projection::Linear, Projection::Linear),
        loss: LossKind::Softmax,
        logit_scale: (1.0f64 / 0.07).ln(),
    };
    Ok(model(
        name,
        image,
        text,
        head,
        (list("mean", CLIP_MEAN), list("std", CLIP_STD)),
    ))
}

/// How one of basic's tensors is laid out in the other library.
#[derive(Clone, Copy, Debug, PartialEq)]
enum How {
    /// The same array.
    Same,
    /// A `Linear` weight: theirs `[out, in]`, ours `[in, out]`.
    Linear,
    /// A patch convolution: theirs `[D, C, P, P]`, ours `[P·P·C, D]` (rows in (y, x, c) order).
    Patch { patch: i64, channels: i64 },
    /// A scalar; theirs `[]`, or `[1]` where `vector` (SigLIP's).
    Scalar { vector: bool },
    /// SigLIP's probe `[1, 1, D]`, ours `[D]`.
    Probe,
}

/// One row of a mapping table: basic's `ours` is the concatenation along `axis` of `theirs`
/// (one name, or q, k and v), each laid out by `how`.
#[derive(Clone, Debug)]
struct Entry {
    ours: String,
    theirs: Vec<String>,
    how: How,
    axis: usize,
}

fn one(ours: impl Into<String>, theirs: impl Into<String>, how: How) -> Entry {
    Entry {
        ours: ours.into(),
        theirs: vec![theirs.into()],
        how,
        axis: 0,
    }
}

/// `weight` and `bias` of a Linear layer.
fn dense(t: &mut Vec<Entry>, ours: &str, theirs: &str) {
    t.push(one(
        format!("{ours}/kernel"),
        format!("{theirs}.weight"),
        How::Linear,
    ));
    t.push(one(
        format!("{ours}/bias"),
        format!("{theirs}.bias"),
        How::Same,
    ));
}

fn ln(t: &mut Vec<Entry>, ours: &str, theirs: &str) {
    t.push(one(
        format!("{ours}/scale"),
        format!("{theirs}.weight"),
        How::Same,
    ));
    t.push(one(
        format!("{ours}/bias"),
        format!("{theirs}.bias"),
        How::Same,
    ));
}

/// The blocks of a tower: basic's `ours/blocks/{i}` against the library's layer `i` prefix.
fn blocks(t: &mut Vec<Entry>, ours: &str, depth: i64, layer: impl Fn(i64) -> String, f: Format) {
    for i in 0..depth {
        let (o, l) = (format!("{ours}/blocks/{i}"), layer(i));
        match f {
            Format::Hf => {
                ln(t, &format!("{o}/ln1"), &format!("{l}.layer_norm1"));
                let qkv = |p: &str| {
                    ["q", "k", "v"]
                        .iter()
                        .map(|x| format!("{l}.self_attn.{x}_proj.{p}"))
                        .collect::<Vec<_>>()
                };
                t.push(Entry {
                    ours: format!("{o}/attn/qkv/kernel"),
                    theirs: qkv("weight"),
                    how: How::Linear,
                    axis: 1,
                });
                t.push(Entry {
                    ours: format!("{o}/attn/qkv/bias"),
                    theirs: qkv("bias"),
                    how: How::Same,
                    axis: 0,
                });
                dense(
                    t,
                    &format!("{o}/attn/out"),
                    &format!("{l}.self_attn.out_proj"),
                );
                ln(t, &format!("{o}/ln2"), &format!("{l}.layer_norm2"));
                dense(t, &format!("{o}/mlp/in"), &format!("{l}.mlp.fc1"));
                dense(t, &format!("{o}/mlp/out"), &format!("{l}.mlp.fc2"));
            }
            Format::OpenClip => {
                ln(t, &format!("{o}/ln1"), &format!("{l}.ln_1"));
                t.push(one(
                    format!("{o}/attn/qkv/kernel"),
                    format!("{l}.attn.in_proj_weight"),
                    How::Linear,
                ));
                t.push(one(
                    format!("{o}/attn/qkv/bias"),
                    format!("{l}.attn.in_proj_bias"),
                    How::Same,
                ));
                dense(t, &format!("{o}/attn/out"), &format!("{l}.attn.out_proj"));
                ln(t, &format!("{o}/ln2"), &format!("{l}.ln_2"));
                dense(t, &format!("{o}/mlp/in"), &format!("{l}.mlp.c_fc"));
                dense(t, &format!("{o}/mlp/out"), &format!("{l}.mlp.c_proj"));
            }
        }
    }
}

/// The CLIP or SigLIP architecture `c` must have for `f` to express it.
fn expressible(c: &ModelConfig, f: Format) -> Result<&VitConfig> {
    let v = match &c.image {
        ImageConfig::Vit(v) => v,
        ImageConfig::Coatnet(_) => return Err(bad(
            format!("model `{}`", c.name),
            "its CoAtNet image tower has no CLIP or SigLIP counterpart; export takes ViT models",
        )),
    };
    let t = &c.text;
    let clip = v.class_token
        && v.ln_pre
        && !v.patch_bias
        && v.pool == ImagePool::Cls
        && t.causal
        && t.pool == TextPool::Argmax
        && c.image_projection == Projection::Linear
        && c.text_projection == Projection::Linear
        && c.loss == LossKind::Softmax;
    let siglip = !v.class_token
        && !v.ln_pre
        && v.patch_bias
        && v.pool == ImagePool::Map
        && !t.causal
        && t.pool == TextPool::Last
        && c.image_projection == Projection::None
        && c.text_projection == Projection::LinearBias
        && c.loss == LossKind::Sigmoid;
    let common = t.kind == TextKind::Transformer && !c.scan_layers && !t.padding_mask;
    if !common || !(clip || (siglip && f == Format::Hf)) {
        return Err(bad(
            format!("model `{}`", c.name),
            match f {
                Format::Hf => "the hf format holds CLIP (ViT with class token, ln_pre and a bias-free patch embedding; causal text pooled at the largest id; linear projections; softmax loss) or SigLIP architectures, unrolled (scan_layers = false) and without a text padding mask",
                Format::OpenClip => "the open_clip format holds the CLIP architecture (ViT with class token, ln_pre and a bias-free patch embedding; causal text pooled at the largest id; linear projections; softmax loss), unrolled and without a text padding mask",
            },
        ));
    }
    if f == Format::OpenClip && (v.channels != 3 || v.layer_norm_eps != 1e-5 || t.eps() != 1e-5) {
        return Err(bad(
            format!("model `{}`", c.name),
            "open_clip's CLIP reads 3 channels and uses LayerNorm eps 1e-5",
        ));
    }
    Ok(v)
}

/// The mapping table of `f` for model `c`: every parameter of basic's, with the name(s) and
/// layout it has in the other library.
fn table(c: &ModelConfig, f: Format) -> Result<Vec<Entry>> {
    let v = expressible(c, f)?;
    let siglip = c.loss == LossKind::Sigmoid;
    let mut t = Vec::new();
    let patch = How::Patch {
        patch: v.patch,
        channels: v.channels,
    };
    match f {
        Format::Hf => {
            let e = "vision_model.embeddings";
            t.push(one(
                "image/patch/kernel",
                format!("{e}.patch_embedding.weight"),
                patch,
            ));
            if siglip {
                t.push(one(
                    "image/patch/bias",
                    format!("{e}.patch_embedding.bias"),
                    How::Same,
                ));
            } else {
                t.push(one("image/cls", format!("{e}.class_embedding"), How::Same));
            }
            t.push(one(
                "image/pos",
                format!("{e}.position_embedding.weight"),
                How::Same,
            ));
            if !siglip {
                ln(&mut t, "image/ln_pre", "vision_model.pre_layrnorm");
            }
            blocks(
                &mut t,
                "image",
                v.depth,
                |i| format!("vision_model.encoder.layers.{i}"),
                f,
            );
            ln(&mut t, "image/ln", "vision_model.post_layernorm");
            if siglip {
                let h = "vision_model.head";
                t.push(one("image/head/probe", format!("{h}.probe"), How::Probe));
                t.push(one(
                    "image/head/attn/qkv/kernel",
                    format!("{h}.attention.in_proj_weight"),
                    How::Linear,
                ));
                t.push(one(
                    "image/head/attn/qkv/bias",
                    format!("{h}.attention.in_proj_bias"),
                    How::Same,
                ));
                dense(
                    &mut t,
                    "image/head/attn/out",
                    &format!("{h}.attention.out_proj"),
                );
                ln(&mut t, "image/head/ln", &format!("{h}.layernorm"));
                dense(&mut t, "image/head/mlp/in", &format!("{h}.mlp.fc1"));
                dense(&mut t, "image/head/mlp/out", &format!("{h}.mlp.fc2"));
            } else {
                t.push(one(
                    "image/proj/kernel",
                    "visual_projection.weight",
                    How::Linear,
                ));
            }
            let e = "text_model.embeddings";
            t.push(one(
                "text/token_embedding",
                format!("{e}.token_embedding.weight"),
                How::Same,
            ));
            t.push(one(
                "text/pos",
                format!("{e}.position_embedding.weight"),
                How::Same,
            ));
            blocks(
                &mut t,
                "text",
                c.text.depth,
                |i| format!("text_model.encoder.layers.{i}"),
                f,
            );
            ln(&mut t, "text/ln", "text_model.final_layer_norm");
            if siglip {
                dense(&mut t, "text/proj", "text_model.head");
                let vector = How::Scalar { vector: true };
                t.push(one("logit_scale", "logit_scale", vector));
                t.push(one("logit_bias", "logit_bias", vector));
            } else {
                t.push(one(
                    "text/proj/kernel",
                    "text_projection.weight",
                    How::Linear,
                ));
                t.push(one(
                    "logit_scale",
                    "logit_scale",
                    How::Scalar { vector: false },
                ));
            }
        }
        Format::OpenClip => {
            t.push(one("image/patch/kernel", "visual.conv1.weight", patch));
            t.push(one("image/cls", "visual.class_embedding", How::Same));
            t.push(one("image/pos", "visual.positional_embedding", How::Same));
            ln(&mut t, "image/ln_pre", "visual.ln_pre");
            blocks(
                &mut t,
                "image",
                v.depth,
                |i| format!("visual.transformer.resblocks.{i}"),
                f,
            );
            ln(&mut t, "image/ln", "visual.ln_post");
            t.push(one("image/proj/kernel", "visual.proj", How::Same));
            t.push(one(
                "text/token_embedding",
                "token_embedding.weight",
                How::Same,
            ));
            t.push(one("text/pos", "positional_embedding", How::Same));
            blocks(
                &mut t,
                "text",
                c.text.depth,
                |i| format!("transformer.resblocks.{i}"),
                f,
            );
            ln(&mut t, "text/ln", "ln_final");
            t.push(one("text/proj/kernel", "text_projection", How::Same));
            t.push(one(
                "logit_scale",
                "logit_scale",
                How::Scalar { vector: false },
            ));
        }
    }
    Ok(t)
}

/// Names a library keeps in its state dict that are not parameters.
fn ignored(name: &str) -> bool {
    name.ends_with("position_ids") || name == "attn_mask" || name.ends_with(".attn_mask")
}

/// Their array as ours (`shape`: what basic's spec says).
fn to_ours(a: &HostArray, how: How) -> Result<HostArray> {
    match how {
        How::Same => Ok(a.clone()),
        How::Linear => a.transpose(&[1, 0]),
        How::Patch { patch, channels } => {
            let d = a.shape()[0];
            a.transpose(&[2, 3, 1, 0])?
                .reshape(&[patch * patch * channels, d])
        }
        How::Scalar { .. } => a.clone().reshape(&[]),
        How::Probe => {
            let d = a.shape().last().copied().unwrap_or(0);
            a.clone().reshape(&[d])
        }
    }
}

/// Our array as theirs.
fn to_theirs(a: &HostArray, how: How) -> Result<HostArray> {
    match how {
        How::Same => Ok(a.clone()),
        How::Linear => a.transpose(&[1, 0]),
        How::Patch { patch, channels } => {
            let d = a.shape()[1];
            a.clone()
                .reshape(&[patch, patch, channels, d])?
                .transpose(&[3, 2, 0, 1])
        }
        How::Scalar { vector: true } => a.clone().reshape(&[1]),
        How::Scalar { vector: false } => a.clone().reshape(&[]),
        How::Probe => {
            let d = a.shape()[0];
            a.clone().reshape(&[1, 1, d])
        }
    }
}

/// The weights of `foreign` under basic's names, as f32, checked against the model's specs:
/// one error lists every tensor missing, misshaped and unexpected.
pub fn read_weights(foreign: &Foreign) -> Result<BTreeMap<String, HostArray>> {
    let c = &foreign.config;
    let file = safetensors::read(&foreign.weights)?;
    let specs = crate::model::dual::specs(c)?;
    let shape_of: BTreeMap<&str, &[i64]> = specs
        .iter()
        .map(|s| (s.name.as_str(), s.shape.as_slice()))
        .collect();
    let table = table(c, foreign.format)?;
    let (mut missing, mut misshaped) = (Vec::new(), Vec::new());
    let mut used = BTreeSet::new();
    let mut out = BTreeMap::new();
    for e in &table {
        let mut parts = Vec::new();
        for n in &e.theirs {
            match file.get(n) {
                None => missing.push(n.clone()),
                Some(a) => {
                    used.insert(n.clone());
                    parts.push(safetensors::convert(a, DType::F32)?);
                }
            }
        }
        if parts.len() != e.theirs.len() {
            continue;
        }
        let want = shape_of.get(e.ours.as_str()).copied().unwrap_or(&[]);
        let converted = parts
            .iter()
            .map(|a| to_ours(a, e.how))
            .collect::<Result<Vec<_>>>()
            .and_then(|mut p| match p.len() {
                1 => p
                    .pop()
                    .ok_or_else(|| Error::Internal("a part vanished".into())),
                _ => HostArray::concat(&p, e.axis),
            });
        match converted {
            Ok(a) if a.shape() == want => {
                out.insert(e.ours.clone(), a);
            }
            _ => misshaped.push(format!(
                "{} is {}, the model needs `{}` of {want:?}",
                e.theirs.join(" + "),
                parts
                    .iter()
                    .map(|p| format!("{:?}", p.shape()))
                    .collect::<Vec<_>>()
                    .join(" + "),
                e.ours
            )),
        }
    }
    let unexpected: Vec<&String> = file
        .keys()
        .filter(|k| !used.contains(*k) && !ignored(k))
        .collect();
    if let Some(s) = specs
        .iter()
        .find(|s| !out.contains_key(&s.name) && missing.is_empty() && misshaped.is_empty())
    {
        return Err(Error::Internal(format!(
            "the {:?} mapping table has no entry for `{}`",
            foreign.format, s.name
        )));
    }
    let Some(msg) = safetensors::mismatch_summary(&missing, &misshaped, &unexpected) else {
        return Ok(out);
    };
    Err(bad(
        format!("checkpoint `{}`", foreign.weights.display()),
        format!(
            "it does not match the architecture of its config ({msg}); is it the folder's own checkpoint?"
        ),
    ))
}

/// Writes model `c`'s parameters (`params`, by basic's names) as a folder of `f` that the other
/// library loads unchanged: its config, its weights by its names, and `tokenizer` when given.
pub fn export(
    c: &ModelConfig,
    params: &BTreeMap<String, HostArray>,
    f: Format,
    out: &Path,
    tokenizer: Option<&Path>,
) -> Result<()> {
    let table = table(c, f)?;
    let mut named: Vec<(String, HostArray)> = Vec::new();
    for e in &table {
        let a = params.get(&e.ours).ok_or_else(|| {
            bad(
                format!("parameter `{}`", e.ours),
                "the run's checkpoint lacks it",
            )
        })?;
        let a = safetensors::convert(a, DType::F32)?;
        let parts = if e.theirs.len() == 1 {
            vec![a]
        } else {
            a.split(e.axis, e.theirs.len())?
        };
        for (n, p) in e.theirs.iter().zip(parts) {
            named.push((n.clone(), to_theirs(&p, e.how)?));
        }
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let (config_file, weights_file, config) = match f {
        Format::Hf => ("config.json", "model.safetensors", hf_config_json(c)?),
        Format::OpenClip => (
            "open_clip_config.json",
            "open_clip_model.safetensors",
            open_clip_config_json(c)?,
        ),
    };
    let refs: Vec<(String, &HostArray)> = named.iter().map(|(n, a)| (n.clone(), a)).collect();
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    safetensors::write(&out.join(weights_file), &refs, &meta)?;
    let text = serde_json::to_string_pretty(&config).map_err(|e| Error::Internal(e.to_string()))?;
    crate::fs::write_atomic(&out.join(config_file), text.as_bytes())?;
    if f == Format::Hf {
        // The image normalisation the model was trained with, where transformers reads it.
        let size = c.image.image_size();
        let processor = if c.loss == LossKind::Sigmoid {
            json!({
                "image_processor_type": "SiglipImageProcessor", "do_resize": true,
                "size": {"height": size, "width": size}, "do_normalize": true,
                "image_mean": c.train.mean, "image_std": c.train.std, "do_rescale": true,
                "rescale_factor": 1.0 / 255.0,
            })
        } else {
            json!({
                "image_processor_type": "CLIPImageProcessor", "do_resize": true,
                "size": {"shortest_edge": size}, "do_center_crop": true,
                "crop_size": {"height": size, "width": size}, "do_normalize": true,
                "image_mean": c.train.mean, "image_std": c.train.std, "do_rescale": true,
                "rescale_factor": 1.0 / 255.0, "do_convert_rgb": true,
            })
        };
        let text =
            serde_json::to_string_pretty(&processor).map_err(|e| Error::Internal(e.to_string()))?;
        crate::fs::write_atomic(&out.join("preprocessor_config.json"), text.as_bytes())?;
    }
    if let Some(t) = tokenizer {
        let dst = out.join("tokenizer.json");
        std::fs::copy(t, &dst).map_err(|e| Error::io(&dst, e))?;
    }
    Ok(())
}

fn act_name(a: Activation) -> &'static str {
    match a {
        Activation::QuickGelu => "quick_gelu",
        Activation::Gelu => "gelu",
        Activation::GeluTanh => "gelu_pytorch_tanh",
    }
}

fn hf_config_json(c: &ModelConfig) -> Result<Value> {
    let v = expressible(c, Format::Hf)?;
    let t = &c.text;
    let siglip = c.loss == LossKind::Sigmoid;
    let vision = json!({
        "hidden_size": v.width, "intermediate_size": v.mlp, "num_hidden_layers": v.depth,
        "num_attention_heads": v.heads, "image_size": v.image_size, "patch_size": v.patch,
        "num_channels": v.channels, "hidden_act": act_name(v.act), "layer_norm_eps": v.layer_norm_eps,
    });
    let mut text = json!({
        "vocab_size": t.vocab, "hidden_size": t.width, "intermediate_size": t.mlp,
        "num_hidden_layers": t.depth, "num_attention_heads": t.heads,
        "max_position_embeddings": t.length, "hidden_act": act_name(t.act),
        "layer_norm_eps": t.eps(), "pad_token_id": t.pad_id,
    });
    if siglip {
        text["projection_size"] = json!(c.embed_dim);
        Ok(json!({
            "architectures": ["SiglipModel"], "model_type": "siglip",
            "text_config": text, "vision_config": vision,
        }))
    } else {
        // CLIP's text is pooled at the largest id, which is the end-of-text id vocab - 1.
        text["eos_token_id"] = json!(t.vocab - 1);
        text["bos_token_id"] = json!(t.vocab - 2);
        text["projection_dim"] = json!(c.embed_dim);
        let mut vision = vision;
        vision["projection_dim"] = json!(c.embed_dim);
        Ok(json!({
            "architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": c.embed_dim,
            "logit_scale_init_value": (1.0 / c.temperature.init).ln(),
            "text_config": text, "vision_config": vision,
        }))
    }
}

fn open_clip_config_json(c: &ModelConfig) -> Result<Value> {
    let v = expressible(c, Format::OpenClip)?;
    let t = &c.text;
    if v.act != t.act || !matches!(v.act, Activation::QuickGelu | Activation::Gelu) {
        return Err(bad(
            format!("model `{}`", c.name),
            "open_clip's CLIP uses one activation for both towers, quick_gelu or gelu",
        ));
    }
    if v.width % v.heads != 0 {
        return Err(bad(
            format!("model `{}`", c.name),
            "the image width must divide by its heads",
        ));
    }
    Ok(json!({
        "model_cfg": {
            "embed_dim": c.embed_dim,
            "quick_gelu": v.act == Activation::QuickGelu,
            "vision_cfg": {
                "image_size": v.image_size, "layers": v.depth, "width": v.width,
                "head_width": v.width / v.heads, "mlp_ratio": v.mlp as f64 / v.width as f64,
                "patch_size": v.patch,
            },
            "text_cfg": {
                "context_length": t.length, "vocab_size": t.vocab, "width": t.width,
                "heads": t.heads, "layers": t.depth, "mlp_ratio": t.mlp as f64 / t.width as f64,
            },
        },
        "preprocess_cfg": {
            "size": v.image_size, "mean": c.train.mean, "std": c.train.std,
            "interpolation": "bicubic", "resize_mode": "shortest",
        },
    }))
}
