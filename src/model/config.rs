//! Model configurations: data in `graphs/NAME.toml`, read with serde. Unknown fields are errors,
//! so a typo never silently falls back to a default.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ir::RematPolicy;

pub use super::names::Modality;

/// The whole dual encoder and its training defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub name: String,
    /// Dimension of the shared image–text embedding space.
    pub embed_dim: i64,
    pub image: ImageConfig,
    pub text: TextConfig,
    #[serde(default)]
    pub temperature: TemperatureConfig,
    #[serde(default)]
    pub loss: LossKind,
    #[serde(default)]
    pub train: TrainConfig,
    /// Run each tower's identical blocks as one loop over parameters stacked on a leading
    /// `layers` axis (`text/layers/...`, `image/stages/S/layers/...`) instead of unrolling them:
    /// compile time and program size stop growing with depth. Changes parameter names.
    #[serde(default)]
    pub scan_layers: bool,
    /// What maps the image tower's features to the embedding space (CLIP: `linear`, SigLIP:
    /// `none`, its attention-pool head being the last layer).
    #[serde(default)]
    pub image_projection: Projection,
    /// What maps the text tower's features to the embedding space (CLIP: `linear`, SigLIP:
    /// `linear_bias`).
    #[serde(default)]
    pub text_projection: Projection,
}

/// A tower's map to the embedding space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Projection {
    /// `x·W`, no bias (CLIP, ALIGN, BASIC).
    #[default]
    Linear,
    /// `x·W + b` (SigLIP's text head).
    LinearBias,
    /// The features are the embedding (their width must be `embed_dim`).
    None,
}

/// The nonlinearity of the transformer MLPs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// GELU in its tanh form (ViT, SigLIP's `gelu_pytorch_tanh`).
    #[default]
    GeluTanh,
    /// The exact GELU, `x·Φ(x)` (open_clip's default `nn.GELU`).
    Gelu,
    /// `x·σ(1.702·x)` (OpenAI CLIP).
    QuickGelu,
}

impl Activation {
    pub fn apply(self, x: &crate::trace::Tensor) -> Result<crate::trace::Tensor> {
        match self {
            Activation::GeluTanh => x.gelu(),
            Activation::Gelu => x.gelu_exact(),
            Activation::QuickGelu => x.quick_gelu(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ImageConfig {
    Vit(VitConfig),
    Coatnet(CoatnetConfig),
}

impl ImageConfig {
    pub fn image_size(&self) -> i64 {
        match self {
            ImageConfig::Vit(v) => v.image_size,
            ImageConfig::Coatnet(c) => c.image_size,
        }
    }
    pub fn channels(&self) -> i64 {
        match self {
            ImageConfig::Vit(v) => v.channels,
            ImageConfig::Coatnet(c) => c.channels,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ImagePool {
    /// The class token's output.
    #[default]
    Cls,
    /// The mean over patch tokens.
    Mean,
    /// Multi-head attention pooling by a learned probe, then an MLP (SigLIP's MAP head).
    Map,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VitConfig {
    pub image_size: i64,
    pub channels: i64,
    pub patch: i64,
    pub width: i64,
    pub depth: i64,
    pub heads: i64,
    pub mlp: i64,
    #[serde(default)]
    pub pool: ImagePool,
    #[serde(default)]
    pub act: Activation,
    #[serde(default = "vit_eps")]
    pub layer_norm_eps: f64,
    /// The patch embedding has a bias (CLIP's has none).
    #[serde(default = "yes")]
    pub patch_bias: bool,
    /// A learned class token leads the patches (SigLIP has none).
    #[serde(default = "yes")]
    pub class_token: bool,
    /// A LayerNorm before the blocks (CLIP's `ln_pre`).
    #[serde(default)]
    pub ln_pre: bool,
}

fn vit_eps() -> f64 {
    1e-6
}

/// One stage of a CoAtNet tower: `depth` blocks of one kind and width.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoatnetStage {
    /// `mbconv` or `transformer`.
    pub kind: StageKind,
    pub depth: i64,
    pub width: i64,
    /// Attention heads (transformer stages).
    #[serde(default)]
    pub heads: i64,
    /// The stage's first block halves the resolution (the default). `false` keeps the previous
    /// stage's resolution, which is how a paper stage of mixed block types is written: CoAtNet-6/7's
    /// S3 is an MBConv stage followed by a transformer stage with `downsample = false`. Its first
    /// block then projects its shortcut only when the width changes.
    #[serde(default = "yes")]
    pub downsample: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageKind {
    Mbconv,
    Transformer,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoatnetConfig {
    pub image_size: i64,
    pub channels: i64,
    /// Width of the two-convolution stem (stage 0), which halves the resolution.
    pub stem_width: i64,
    /// Stages 1..4; each starts by halving the resolution.
    pub stages: Vec<CoatnetStage>,
    /// MBConv expansion ratio (4 in the paper) and MLP ratio of transformer stages.
    #[serde(default = "four")]
    pub expansion: i64,
    /// The normalisation after the stem's first convolution and after each MBConv block's
    /// expansion and depthwise convolutions: `layer` (the default) or `none` (the layout of
    /// checkpoints written before basic had it).
    #[serde(default)]
    pub conv_norm: ConvNorm,
}

/// The normalisation inside CoAtNet's convolutions (the stem and MBConv blocks), besides each
/// block's pre-norm. The paper uses BatchNorm there; basic uses no batch statistics (they would
/// couple the micro-batches of BASIC's gradient accumulation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ConvNorm {
    /// LayerNorm over the channels at each position, with a learned scale and bias (timm's
    /// `layernorm2d`, ConvNeXt's choice): each example is normalised on its own.
    #[default]
    Layer,
    /// None: the convolutions feed their activations directly. Parameter names and shapes are
    /// those of basic's CoAtNet before `conv_norm` existed, so its checkpoints load.
    None,
}

fn four() -> i64 {
    4
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TextPool {
    /// The last non-padding token (CLIP's end-of-text token).
    #[default]
    Eot,
    /// The first token (BERT's [CLS]).
    First,
    /// The mean over non-padding tokens.
    Mean,
    /// The first position of the largest token id (CLIP's end-of-text token, which has the
    /// largest id of its vocabulary).
    Argmax,
    /// The last position, padding or not (SigLIP).
    Last,
}

/// The text encoder's architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TextKind {
    /// Pre-LN transformer (CLIP-style), parameters named `text/blocks/N/...`.
    #[default]
    Transformer,
    /// BERT (post-LN, exact GELU, token types, mean pooling), parameters named as in HF
    /// checkpoints under `text/bert/`.
    Bert,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextConfig {
    #[serde(default)]
    pub kind: TextKind,
    pub vocab: i64,
    /// Tokens per caption (padded / truncated to this).
    pub length: i64,
    pub width: i64,
    pub depth: i64,
    pub heads: i64,
    pub mlp: i64,
    #[serde(default = "yes")]
    pub causal: bool,
    #[serde(default)]
    pub pool: TextPool,
    /// Token id of padding.
    #[serde(default)]
    pub pad_id: i64,
    /// BERT: rows of the position table (512 in BERT checkpoints).
    #[serde(default)]
    pub max_positions: i64,
    /// LayerNorm epsilon [default: 1e-12 for BERT, as its checkpoints, else 1e-6].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_norm_eps: Option<f64>,
    /// The transformer tower's MLP nonlinearity.
    #[serde(default)]
    pub act: Activation,
    /// Padded keys are masked out of attention (CLIP and SigLIP text towers mask none).
    #[serde(default = "yes")]
    pub padding_mask: bool,
}

impl TextConfig {
    /// The LayerNorm epsilon in use.
    pub fn eps(&self) -> f64 {
        self.layer_norm_eps.unwrap_or(match self.kind {
            TextKind::Bert => 1e-12,
            TextKind::Transformer => 1e-6,
        })
    }
}

fn yes() -> bool {
    true
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemperatureConfig {
    /// Initial temperature τ (logits are scaled by 1/τ).
    pub init: f64,
    /// Smallest temperature: 1/τ is clamped at 1/min (CLIP: 0.01, i.e. a scale of 100).
    pub min: f64,
    #[serde(default = "yes")]
    pub learnable: bool,
}

impl Default for TemperatureConfig {
    fn default() -> Self {
        TemperatureConfig {
            init: 0.07,
            min: 0.01,
            learnable: true,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LossKind {
    /// Symmetric softmax cross-entropy over the global batch (CLIP, ALIGN, BASIC).
    #[default]
    Softmax,
    /// Pairwise sigmoid loss with a learnable bias (SigLIP).
    Sigmoid,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    #[default]
    Adamw,
    Adafactorw,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    #[default]
    Cosine,
    Linear,
    InverseSqrt,
    Constant,
}

/// The precision a step computes in. Parameters and optimizer state stay f32 either way (the
/// master weights); `f64` is not a training precision (`basic grad --dtype f64` builds its
/// parity program in f64 directly).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    /// bf16 compute with f32 master weights.
    Bf16,
}

impl Precision {
    pub const NAMES: [&'static str; 2] = ["f32", "bf16"];

    /// The dtype the towers compute in.
    pub fn compute_dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

impl std::str::FromStr for Precision {
    type Err = Error;

    fn from_str(s: &str) -> Result<Precision> {
        match s.trim() {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(Error::invalid(
                format!("precision `{s}`"),
                "use f32, or bf16 (bf16 compute with f32 master weights)",
            )),
        }
    }
}

/// Training defaults of a preset (flags override them).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub batch: i64,
    pub microbatches: i64,
    /// What each tower block keeps for the backward pass: `none`, `dots_saveable`,
    /// `nothing_saveable`, `save_names(a,b)`.
    pub remat: RematPolicy,
    /// `f32`, or `bf16` (bf16 compute, f32 master weights).
    pub dtype: Precision,
    pub optimizer: OptimizerKind,
    pub learning_rate: f64,
    pub warmup_steps: i64,
    pub total_steps: i64,
    pub schedule: Schedule,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Global-norm gradient clipping (0: off).
    pub clip_norm: f64,
    /// AdaFactor: keep a first moment.
    pub momentum: bool,
    /// AdaFactor: clip each update to this RMS (0: off).
    pub update_clip: f64,
    /// Towers that get no gradient and no optimizer state (`image`, `text`): LiT-style locking.
    pub lock: Vec<Modality>,
    /// Random-resized-crop augmentation of training images.
    pub random_resized_crop: bool,
    /// Dropout on the transformer blocks' residual branches (ViT and text transformer).
    pub dropout: f64,
    /// Stochastic depth: probability of dropping a block's residual branch per example.
    pub drop_path: f64,
    /// Rows and columns of one tile of the tiled contrastive loss, which never builds the
    /// `N × N` logits; 0 keeps the whole-batch loss (right for small batches).
    pub loss_block: i64,
    /// Image normalisation.
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

impl TrainConfig {
    /// Whether tower `m` is locked (no gradient, no optimizer state, no dropout).
    pub fn locks(&self, m: Modality) -> bool {
        self.lock.contains(&m)
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            batch: 64,
            microbatches: 1,
            remat: RematPolicy::None,
            dtype: Precision::F32,
            optimizer: OptimizerKind::Adamw,
            learning_rate: 1e-3,
            warmup_steps: 10,
            total_steps: 1000,
            schedule: Schedule::Cosine,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            clip_norm: 1.0,
            momentum: true,
            update_clip: 1.0,
            lock: vec![],
            random_resized_crop: false,
            dropout: 0.0,
            drop_path: 0.0,
            loss_block: 0,
            mean: vec![0.5],
            std: vec![0.5],
        }
    }
}

/// The model presets of `graphs/`, built into the binary, by name.
pub const PRESETS: [(&str, &str); 13] = [
    ("tiny", include_str!("../../graphs/tiny.toml")),
    (
        "tiny-coatnet",
        include_str!("../../graphs/tiny-coatnet.toml"),
    ),
    ("small", include_str!("../../graphs/small.toml")),
    ("tiny-minilm", include_str!("../../graphs/tiny-minilm.toml")),
    ("tiny-clip", include_str!("../../graphs/tiny-clip.toml")),
    ("vit-b16", include_str!("../../graphs/vit-b16.toml")),
    ("basic-s", include_str!("../../graphs/basic-s.toml")),
    ("basic-m", include_str!("../../graphs/basic-m.toml")),
    ("basic-l", include_str!("../../graphs/basic-l.toml")),
    (
        "clip-vit-b32",
        include_str!("../../graphs/clip-vit-b32.toml"),
    ),
    (
        "clip-vit-b16",
        include_str!("../../graphs/clip-vit-b16.toml"),
    ),
    (
        "clip-vit-l14",
        include_str!("../../graphs/clip-vit-l14.toml"),
    ),
    ("siglip-b16", include_str!("../../graphs/siglip-b16.toml")),
];

impl ModelConfig {
    /// Parses TOML text; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<ModelConfig> {
        let c: ModelConfig = toml::from_str(text)
            .map_err(|e| Error::invalid(format!("model config `{source}`"), e.to_string()))?;
        c.validate(source)?;
        Ok(c)
    }

    /// Reads a config file by path, else a preset built into the binary by name (`tiny`, or
    /// `tiny.toml`): an installed `basic` needs no source tree.
    pub fn load(name_or_path: &str) -> Result<ModelConfig> {
        let p = Path::new(name_or_path);
        if !p.is_file() {
            let name = name_or_path.strip_suffix(".toml").unwrap_or(name_or_path);
            let Some((n, text)) = PRESETS.iter().find(|(n, _)| *n == name) else {
                let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
                return Err(Error::invalid(
                    format!("model `{name_or_path}`"),
                    format!("give a config file path or a preset: {}", names.join(", ")),
                ));
            };
            return ModelConfig::parse(text, &format!("graphs/{n}.toml (built in)"));
        }
        let path = p.to_path_buf();
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        ModelConfig::parse(&text, &path.display().to_string())
    }

    /// Checks sizes that the shape rules would only reject deep inside the model; the error
    /// names the field, its value and `source`.
    pub fn validate(&self, source: &str) -> Result<()> {
        let problem = if self.embed_dim < 1 {
            Some((
                format!("embed_dim = {}", self.embed_dim),
                "must be positive",
            ))
        } else {
            self.image
                .problem()
                .or_else(|| self.text_problem())
                .or_else(|| self.train.problem())
                .or_else(|| self.out_of_bounds())
        };
        match problem {
            Some((what, fix)) => Err(Error::invalid(format!("{what} in `{source}`"), fix)),
            None => Ok(()),
        }
    }

    /// The first problem of the text tower or the temperature, as (field and value, fix).
    fn text_problem(&self) -> Option<(String, &'static str)> {
        let t = &self.text;
        let (init, min) = (self.temperature.init, self.temperature.min);
        if self.scan_layers && t.kind == TextKind::Bert {
            Some((
                "scan_layers = true with a BERT text tower".into(),
                "BERT towers keep per-layer Hugging Face names for loading weights: set scan_layers = false",
            ))
        } else if t.heads < 1 || t.width % t.heads != 0 {
            Some((
                format!("text.width = {} with {} heads", t.width, t.heads),
                "the width must divide by the heads",
            ))
        } else if t.vocab < 2 || t.length < 1 {
            Some((
                format!("text.vocab = {}, text.length = {}", t.vocab, t.length),
                "need a vocabulary and a length",
            ))
        } else if !(init > 0.0 && min > 0.0 && min <= init) {
            Some((
                format!("temperature init {init} / min {min}"),
                "need 0 < min ≤ init",
            ))
        } else {
            None
        }
    }
}

/// Bounds on a config's sizes, far above any real model's, so that a damaged or mistyped file is
/// refused before anything is traced or allocated for it.
const MAX_WIDTH: i64 = 1 << 20;
const MAX_DEPTH: i64 = 1 << 10;
const MAX_STAGES: usize = 16;
const MAX_IMAGE: i64 = 1 << 14;
const MAX_CHANNELS: i64 = 16;
const MAX_VOCAB: i64 = 1 << 24;
const MAX_LENGTH: i64 = 1 << 20;
/// A billion pairs: the streamed step's batch is bounded by its embeddings, not its images.
const MAX_BATCH: i64 = 1 << 30;

/// `(field, value)` of the first size outside `lo..=hi`.
fn first_outside(fields: &[(&str, i64, i64, i64)]) -> Option<(String, i64, i64, i64)> {
    fields
        .iter()
        .find(|(_, v, lo, hi)| !(lo..=hi).contains(&v))
        .map(|&(f, v, lo, hi)| (f.to_string(), v, lo, hi))
}

/// The first float that is not finite or is below `lo` (or not above it, when `open`).
fn first_bad_float(fields: &[(&str, f64, f64, bool)]) -> Option<String> {
    fields
        .iter()
        .find(|(_, v, lo, open)| !v.is_finite() || *v < *lo || (*open && *v <= *lo))
        .map(|(f, v, lo, open)| {
            let need = if *open { "above" } else { "at least" };
            format!("{f} = {v} (it must be finite and {need} {lo})")
        })
}

impl ModelConfig {
    /// The first size or number out of its bounds, as (field and value, fix).
    fn out_of_bounds(&self) -> Option<(String, &'static str)> {
        let (t, tr) = (&self.text, &self.train);
        let mut sizes = vec![
            ("embed_dim", self.embed_dim, 1, MAX_WIDTH),
            ("text.vocab", t.vocab, 2, MAX_VOCAB),
            ("text.length", t.length, 1, MAX_LENGTH),
            ("text.max_positions", t.max_positions, 0, MAX_LENGTH),
            ("text.width", t.width, 1, MAX_WIDTH),
            ("text.depth", t.depth, 0, MAX_DEPTH),
            ("text.heads", t.heads, 1, MAX_WIDTH),
            ("text.mlp", t.mlp, 1, MAX_WIDTH),
            ("text.pad_id", t.pad_id, 0, t.vocab - 1),
            ("train.batch", tr.batch, 1, MAX_BATCH),
            ("train.microbatches", tr.microbatches, 1, MAX_BATCH),
            ("train.loss_block", tr.loss_block, 0, MAX_BATCH),
            ("train.warmup_steps", tr.warmup_steps, 0, i64::MAX),
            ("train.total_steps", tr.total_steps, 0, i64::MAX),
        ];
        let mut floats = vec![
            ("temperature.init", self.temperature.init, 0.0, true),
            ("temperature.min", self.temperature.min, 0.0, true),
            ("text.layer_norm_eps", t.eps(), 0.0, true),
            ("train.learning_rate", tr.learning_rate, 0.0, false),
            ("train.weight_decay", tr.weight_decay, 0.0, false),
            ("train.beta1", tr.beta1, 0.0, false),
            ("train.beta2", tr.beta2, 0.0, false),
            ("train.eps", tr.eps, 0.0, false),
            ("train.clip_norm", tr.clip_norm, 0.0, false),
            ("train.update_clip", tr.update_clip, 0.0, false),
        ];
        match &self.image {
            ImageConfig::Vit(v) => {
                sizes.extend([
                    ("image.image_size", v.image_size, 1, MAX_IMAGE),
                    ("image.channels", v.channels, 1, MAX_CHANNELS),
                    ("image.width", v.width, 1, MAX_WIDTH),
                    ("image.depth", v.depth, 0, MAX_DEPTH),
                    ("image.mlp", v.mlp, 1, MAX_WIDTH),
                ]);
                floats.push(("image.layer_norm_eps", v.layer_norm_eps, 0.0, true));
            }
            ImageConfig::Coatnet(c) => {
                sizes.extend([
                    ("image.image_size", c.image_size, 1, MAX_IMAGE),
                    ("image.channels", c.channels, 1, MAX_CHANNELS),
                    ("image.stem_width", c.stem_width, 1, MAX_WIDTH),
                    ("image.expansion", c.expansion, 1, 64),
                ]);
                for s in &c.stages {
                    sizes.extend([
                        ("image.stages[].depth", s.depth, 1, MAX_DEPTH),
                        ("image.stages[].width", s.width, 1, MAX_WIDTH),
                    ]);
                }
            }
        }
        if let Some((field, v, lo, hi)) = first_outside(&sizes) {
            return Some((
                format!("{field} = {v} (allowed: {lo} to {hi})"),
                "sizes are bounded far above any real model's: is the file damaged or mistyped?",
            ));
        }
        let norm = tr.mean.iter().map(|&m| ("train.mean", m, f64::MIN, false));
        let std = tr.std.iter().map(|&s| ("train.std", s, 0.0, true));
        floats.extend(norm.chain(std));
        first_bad_float(&floats).map(|f| {
            (
                f,
                "give finite numbers: rates, decays, betas, epsilons and norms are not negative; \
                 temperatures, layer-norm epsilons and standard deviations are positive",
            )
        })
    }
}

impl ImageConfig {
    /// The first problem of the image tower, as (field and value, fix).
    fn problem(&self) -> Option<(String, &'static str)> {
        match self {
            ImageConfig::Vit(v) => {
                if v.patch < 1 || v.image_size % v.patch != 0 {
                    return Some((
                        format!("image.patch = {} for image_size {}", v.patch, v.image_size),
                        "the patch size must divide the image size",
                    ));
                }
                if v.heads < 1 || v.width % v.heads != 0 {
                    return Some((
                        format!("image.width = {} with {} heads", v.width, v.heads),
                        "the width must divide by the heads",
                    ));
                }
            }
            ImageConfig::Coatnet(c) => return c.problem(),
        }
        None
    }
}

impl CoatnetConfig {
    /// How many times the tower halves the resolution: the stem and each downsampling stage.
    pub fn downsamplings(&self) -> usize {
        1 + self.stages.iter().filter(|s| s.downsample).count()
    }

    /// The first problem of a CoAtNet tower, as (field and value, fix).
    fn problem(&self) -> Option<(String, &'static str)> {
        if self.stages.len() > MAX_STAGES {
            return Some((
                format!("image.stages: {} stages", self.stages.len()),
                "a CoAtNet has at most 16 stages (the paper's have 4)",
            ));
        }
        let downs = self.downsamplings();
        if self.stages.is_empty() || downs > 30 || self.image_size % (1 << downs) != 0 {
            return Some((
                format!(
                    "image.image_size = {} with {} downsampling stages",
                    self.image_size,
                    downs - 1
                ),
                "the stem and each stage with downsample = true halve the resolution: the size must divide by 2^(downsampling stages + 1)",
            ));
        }
        if self.stem_width < 1 || self.expansion < 1 {
            return Some((
                format!(
                    "image.stem_width = {}, image.expansion = {}",
                    self.stem_width, self.expansion
                ),
                "widths and the expansion ratio must be positive",
            ));
        }
        for (i, s) in self.stages.iter().enumerate() {
            if s.depth < 1 || s.width < 1 {
                return Some((
                    format!("image.stages[{i}] depth {} width {}", s.depth, s.width),
                    "every stage needs at least one block and a positive width",
                ));
            }
            if s.kind == StageKind::Transformer && (s.heads < 1 || s.width % s.heads != 0) {
                return Some((
                    format!("image.stages[{i}] width {} with {} heads", s.width, s.heads),
                    "transformer stages need heads dividing the width",
                ));
            }
        }
        None
    }
}

impl TrainConfig {
    /// The first problem of the training defaults, as (field and value, fix).
    fn problem(&self) -> Option<(String, &'static str)> {
        if self.microbatches < 1 || self.batch < 1 || self.batch % self.microbatches != 0 {
            return Some((
                format!(
                    "train.batch = {} with {} microbatches",
                    self.batch, self.microbatches
                ),
                "the batch must divide into the micro-batches",
            ));
        }
        if self.loss_block < 0 {
            return Some((
                format!("train.loss_block = {}", self.loss_block),
                "a block of rows and columns is positive; 0 keeps the whole-batch loss",
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) || !(0.0..1.0).contains(&self.drop_path) {
            return Some((
                format!(
                    "train.dropout = {}, train.drop_path = {}",
                    self.dropout, self.drop_path
                ),
                "rates are in [0, 1)",
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every preset file of `graphs/` is built in, and every built-in preset parses: an
    /// installed binary finds its models without the source tree.
    #[test]
    fn every_preset_of_graphs_is_built_in_and_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("graphs");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.strip_suffix(".toml").map(str::to_string)
            })
            .collect();
        files.sort();
        let mut built_in: Vec<String> = PRESETS.iter().map(|(n, _)| n.to_string()).collect();
        built_in.sort();
        assert_eq!(files, built_in);
        for (n, _) in PRESETS {
            let c = ModelConfig::load(n).unwrap();
            assert_eq!(ModelConfig::load(&format!("{n}.toml")).unwrap(), c);
        }
        let e = ModelConfig::load("no-such-model").unwrap_err().to_string();
        assert!(e.contains("no-such-model") && e.contains("basic-l"), "{e}");
    }
}
