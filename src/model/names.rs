//! The grammar of names, in one place: parameter paths, stacked layers, optimizer slots and the
//! inputs and outputs of the programs `basic` builds. Everything that builds or matches one of
//! these names goes through this module, so that a name changes in one place.
//!
//! Parameter paths are `/`-separated:
//! - `image/...` and `text/...` belong to a tower, its projection included
//!   (`image/blocks/3/attn/qkv/kernel`, `text/proj/kernel`); a BERT text tower keeps its
//!   checkpoint's own names under `text/bert/`;
//! - `logit_scale` and `logit_bias` belong to neither: they are the loss's head;
//! - unrolled blocks are `X/blocks/{i}/R`; with scanned layers, `X/layers/R` stacks them on a
//!   leading `layers` axis. A CoAtNet stage `X = .../stages/S` keeps its first (downsampling) block
//!   apart as `X/blocks/0/R`, so `X/layers/R` holds blocks `1..` there;
//! - optimizer state is `opt/SLOT/PARAM` (`opt/m/...`, `opt/v/...`, `opt/vr/...`, `opt/vc/...`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One of the two towers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Modality {
    Image,
    Text,
}

impl Modality {
    pub const ALL: [Modality; 2] = [Modality::Image, Modality::Text];

    /// The tower's scope: `image` or `text`.
    pub fn scope(self) -> &'static str {
        match self {
            Modality::Image => "image",
            Modality::Text => "text",
        }
    }

    /// The tower a parameter belongs to; `None` for the loss's head (`logit_scale`, ...).
    pub fn of_param(name: &str) -> Option<Modality> {
        Modality::ALL.into_iter().find(|m| {
            name.strip_prefix(m.scope())
                .is_some_and(|r| r.starts_with('/'))
        })
    }

    /// Whether parameter `name` belongs to this tower.
    pub fn owns(self, name: &str) -> bool {
        Modality::of_param(name) == Some(self)
    }
}

impl fmt::Display for Modality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.scope())
    }
}

impl FromStr for Modality {
    type Err = Error;

    fn from_str(s: &str) -> Result<Modality> {
        Modality::ALL
            .into_iter()
            .find(|m| m.scope() == s.trim())
            .ok_or_else(|| Error::invalid(format!("tower `{s}`"), "name `image` or `text`"))
    }
}

/// `A/B`, or `B` under an empty scope.
pub fn join(scope: &str, name: &str) -> String {
    if scope.is_empty() {
        name.to_string()
    } else {
        format!("{scope}/{name}")
    }
}

/// The parameter of the learnable temperature (`log(1/τ)`).
pub const LOGIT_SCALE: &str = "logit_scale";
/// The sigmoid loss's learnable bias.
pub const LOGIT_BIAS: &str = "logit_bias";
/// A tower's map to the embedding space, under the tower's scope.
pub const PROJECTION: &str = "proj";
/// Where a BERT text tower keeps its checkpoint's own names, under the text scope.
pub const BERT: &str = "bert";

/// The scope of unrolled block `i` of a stack: `blocks/{i}`.
pub fn block(i: usize) -> String {
    format!("blocks/{i}")
}

/// The scope of CoAtNet stage `s`: `stages/{s}`.
pub fn stage(s: usize) -> String {
    format!("stages/{s}")
}

/// The scopes of CoAtNet's normalisation inside its convolutions (`conv_norm = "layer"`), each
/// named after the convolution whose output it normalises: `stem/conv1_norm` and, in MBConv
/// blocks, `.../expand_norm` and `.../depthwise_norm` (each with `scale` and `bias`).
pub const CONV_NORMS: [&str; 3] = ["conv1_norm", "expand_norm", "depthwise_norm"];

/// Whether parameter `name` belongs to CoAtNet's normalisation inside its convolutions (a path
/// segment of [`CONV_NORMS`] in the image tower), stacked or not.
pub fn is_conv_norm(name: &str) -> bool {
    Modality::Image.owns(name) && name.split('/').any(|p| CONV_NORMS.contains(&p))
}

/// The scope that stacks identical blocks for a scan, and the logical axis that stacks them
/// (`image/layers/mlp/in/kernel` is `[depth, width, mlp]`). Sharding rules leave it whole.
pub const LAYERS: &str = "layers";

/// The unrolled name of layer `j` of a stacked parameter: `X/layers/R` holds `X/blocks/{j}/R`
/// for `j` in `0..depth`, except in CoAtNet stages (`.../stages/S/layers/R`), whose first block
/// stands apart, where it holds `X/blocks/{j + 1}/R`. `None` for a name without `/layers/`.
pub fn layer_name(stacked: &str, j: i64) -> Option<String> {
    let (head, rest) = stacked.rsplit_once(&format!("/{LAYERS}/"))?;
    let first = i64::from(head.rsplit('/').nth(1) == Some("stages"));
    Some(format!("{head}/blocks/{}/{rest}", j + first))
}

/// Whether `name` is a parameter stacked over layers.
pub fn is_stacked(name: &str) -> bool {
    name.contains(&format!("/{LAYERS}/"))
}

/// The name of optimizer slot `slot` (`m`, `v`, `vr`, `vc`) of parameter `param`.
pub fn slot(slot: &str, param: &str) -> String {
    format!("opt/{slot}/{param}")
}

/// The parameter an optimizer-state name belongs to (`opt/m/text/proj/kernel` →
/// `text/proj/kernel`); `None` for a name that is not optimizer state.
pub fn slot_param(name: &str) -> Option<&str> {
    let rest = name.strip_prefix("opt/")?;
    rest.split_once('/').map(|(_, p)| p)
}

/// Inputs and outputs of the programs `basic` builds, by name.
pub mod io {
    /// A batch's images, `[N, H, W, C]`.
    pub const IMAGES: &str = "images";
    /// A batch's token ids, `[N, L]`.
    pub const TOKENS: &str = "tokens";
    /// The dropout key, `u64[2]` (only when the step is random).
    pub const RNG: &str = "rng";
    /// The 0-based step number (the learning-rate schedule's input).
    pub const STEP: &str = "step";
    pub const LOSS: &str = "loss";
    pub const GRAD_NORM: &str = "grad_norm";
    pub const LEARNING_RATE: &str = "learning_rate";
    pub const TEMPERATURE: &str = "temperature";
    /// Embeddings of the inference programs, `[N, E]`.
    pub const IMAGE_EMBEDDINGS: &str = "image_embeddings";
    pub const TEXT_EMBEDDINGS: &str = "text_embeddings";
    /// The step's scalar outputs a run reports, in order.
    pub const REPORTED: [&str; 4] = [LOSS, GRAD_NORM, LEARNING_RATE, TEMPERATURE];
    /// The streamed step's micro-batch index, `s32[]`.
    pub const MICRO: &str = "micro";
    /// The streamed step's gradient of the loss with respect to the embeddings.
    pub const IMAGE_EMBEDDING_GRADS: &str = "image_embedding_grads";
    pub const TEXT_EMBEDDING_GRADS: &str = "text_embedding_grads";
    /// The prefix of a parameter's gradient between the streamed step's programs.
    pub const GRAD: &str = "grad/";

    /// The name of parameter `param`'s gradient.
    pub fn grad(param: &str) -> String {
        format!("{GRAD}{param}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn towers_own_their_scopes_only() {
        assert_eq!(
            Modality::of_param("image/blocks/0/ln1/scale"),
            Some(Modality::Image)
        );
        assert_eq!(Modality::of_param("text/proj/kernel"), Some(Modality::Text));
        assert_eq!(Modality::of_param(LOGIT_SCALE), None);
        assert_eq!(Modality::of_param("images"), None);
        assert_eq!("text".parse::<Modality>().unwrap(), Modality::Text);
        assert!("audio".parse::<Modality>().is_err());
    }

    #[test]
    fn stacked_layers_unroll_with_coatnet_stages_offset_by_one() {
        assert_eq!(
            layer_name("text/layers/attn/qkv/kernel", 2).unwrap(),
            "text/blocks/2/attn/qkv/kernel"
        );
        assert_eq!(
            layer_name("image/stages/2/layers/attn/qkv/kernel", 0).unwrap(),
            "image/stages/2/blocks/1/attn/qkv/kernel"
        );
        assert_eq!(layer_name("text/proj/kernel", 0), None);
    }

    #[test]
    fn conv_norms_are_recognised_in_the_image_tower_only() {
        assert!(is_conv_norm("image/stem/conv1_norm/scale"));
        assert!(is_conv_norm("image/stages/0/blocks/1/expand_norm/bias"));
        assert!(is_conv_norm("image/stages/1/layers/depthwise_norm/scale"));
        assert!(!is_conv_norm("image/stages/1/layers/ln/scale"));
        assert!(!is_conv_norm("image/stages/1/blocks/0/depthwise/kernel"));
        assert!(!is_conv_norm("text/expand_norm/scale"));
    }

    #[test]
    fn slots_name_their_parameter() {
        let n = slot("vr", "image/pos");
        assert_eq!(n, "opt/vr/image/pos");
        assert_eq!(slot_param(&n), Some("image/pos"));
        assert_eq!(slot_param("image/pos"), None);
    }
}
