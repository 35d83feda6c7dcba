//! CoAtNet image tower (Dai et al., 2021), as BASIC uses it: a convolutional stem (S0), MBConv
//! stages with depthwise convolutions and squeeze-excitation (S1, S2), transformer stages with a
//! 2-D relative attention bias (S3, S4), then global average pooling.
//!
//! Blocks are pre-norm (`x ← x + Module(Norm(x))`, the paper's App. A.1). A stage's first block
//! halves the resolution (a stride-2 depthwise convolution in MBConv, 2×2 max pooling before
//! attention in transformer stages) with a pooled, projected shortcut; a stage written with
//! `downsample = false` keeps the resolution, its first block projecting the shortcut only when
//! the width changes. That is how CoAtNet-6/7's S3, MBConv blocks followed by transformer blocks
//! of twice the width at one resolution (the paper's Table 12), is two consecutive stages.
//!
//! The stem is `conv3×3/2 → Norm → GELU → conv3×3`; an MBConv block's residual branch is
//! `Norm → conv1×1 (×expansion) → Norm → GELU → depthwise3×3 → Norm → GELU → SE → conv1×1`, the
//! placement of MBConv and timm's CoAtNet (its `MbConvBlock` and `Stem`).
//!
//! Where basic departs from the paper, and why:
//! - **No batch statistics.** The paper normalises MBConv blocks with BatchNorm (and recommends
//!   "whichever is faster on your device", having found LayerNorm there to perform the same:
//!   its Table 8 and App. A.1). BatchNorm's statistics would couple the micro-batches of BASIC's
//!   gradient accumulation, whose exact full-batch gradient needs every example's embedding to
//!   depend on that example alone, and make pass 3 differ from pass 1. Every norm here is a
//!   LayerNorm over the channels at each position (ConvNeXt's and timm's `layernorm2d`): the
//!   pre-norms, and, with `conv_norm = "layer"` (the default), the norms inside the stem and
//!   MBConv blocks. `conv_norm = "none"` omits the inner norms: at inference that is the paper's
//!   network with its BatchNorm statistics folded into the convolutions, but in training a
//!   different, harder-to-optimise one; it is kept because it is the layout (parameter names and
//!   shapes) of checkpoints written before the inner norms existed.
//! - **Strided depthwise downsampling.** MBConv downsamples by a stride-2 depthwise
//!   convolution, the standard MBConv and the paper's "Strided DConv" variant (its Table 9: as
//!   accurate or better, slower only for small models), not by the stride-2 first 1×1
//!   convolution of its Eq. 5.
//! - **Squeeze-excitation** reduces to a quarter of the block's input channels (the paper's
//!   shrink rate 0.25) with GELU, the activation the paper uses throughout.
//! - **Pooling**: the features are the global average pool followed by a LayerNorm (the paper's
//!   classifier head pools; basic's projection to the embedding space follows).

use crate::error::Result;
use crate::trace::Tensor;

use super::config::{CoatnetConfig, CoatnetStage, ConvNorm, StageKind};
use super::names;
use super::noise::Noise;
use super::params::Init;
use super::scope::{Scope, Tower};
use super::transformer::{linear, norm, scan_layers, Attention};

/// The fix for a checkpoint that differs from the model in CoAtNet's inner normalisation
/// (`conv_norm`): `missing` are the model's parameters the file lacks, `unexpected` the file's
/// tensors the model lacks. `None` when neither holds an inner-norm parameter
/// ([`names::is_conv_norm`]).
pub fn layout_hint<'a>(
    missing: impl IntoIterator<Item = &'a str>,
    unexpected: impl IntoIterator<Item = &'a str>,
) -> Option<&'static str> {
    if missing.into_iter().any(names::is_conv_norm) {
        Some(
            "it has no normalisation inside the CoAtNet stem and MBConv blocks (`stem/conv1_norm`, \
             `expand_norm`, `depthwise_norm`), the layout before basic had it: load it with \
             `conv_norm = \"none\"` under [image] in the model config (a run's config.toml)",
        )
    } else if unexpected.into_iter().any(names::is_conv_norm) {
        Some(
            "it has normalisation inside the CoAtNet stem and MBConv blocks and the model has none: \
             set `conv_norm = \"layer\"` (the default) under [image] in the model config",
        )
    } else {
        None
    }
}

/// `same` padding of a `k`-wide window at stride `s` over `n` positions.
fn same(n: i64, k: i64, s: i64) -> (i64, i64) {
    let out = (n + s - 1) / s;
    let total = ((out - 1) * s + k - n).max(0);
    (total / 2, total - total / 2)
}

fn conv(x: &Tensor, k: &Tensor, b: &Tensor, stride: i64, groups: i64) -> Result<Tensor> {
    let (h, w) = (x.shape()[1], x.shape()[2]);
    let kh = k.shape()[0];
    x.conv2d(
        k,
        [stride, stride],
        [same(h, kh, stride), same(w, kh, stride)],
        groups,
    )?
    .add(b)
}

fn pool2(x: &Tensor) -> Result<Tensor> {
    x.max_pool2d([2, 2], [2, 2], [(0, 0), (0, 0)])
}

/// Index into the relative-bias table for every (query, key) pair of a `side × side` grid.
fn relative_index(x: &Tensor, side: i64) -> Result<Tensor> {
    let n = side * side;
    let mut idx = Vec::with_capacity((n * n) as usize);
    for i in 0..n {
        for j in 0..n {
            let (yi, xi, yj, xj) = (i / side, i % side, j / side, j % side);
            idx.push(((yi - yj + side - 1) * (2 * side - 1) + (xi - xj + side - 1)) as i32);
        }
    }
    x.builder().constant(&[n * n], &idx)
}

/// The block's LayerNorm over channels, under `s`.
fn ln(x: &Tensor, s: &Scope) -> Result<Tensor> {
    norm(x, s, "channels", 1e-6)
}

/// A dense layer under `s` with LeCun-uniform kernel.
fn fc(x: &Tensor, s: &Scope, dout: i64, axes: [&str; 2]) -> Result<Tensor> {
    linear(x, s, dout, Init::LecunUniform, axes)
}

/// A 3 × 3 convolution to `dout` channels under `s` (`kernel [3, 3, C_in / groups, dout]`,
/// LeCun uniform, `bias [dout]`, zeros), `same`-padded.
fn conv_layer(
    x: &Tensor,
    s: &Scope,
    dout: i64,
    stride: i64,
    groups: i64,
    axes: [&str; 4],
) -> Result<Tensor> {
    let cin = x.shape()[3] / groups;
    let k = s.param("kernel", &[3, 3, cin, dout], Init::LecunUniform, &axes)?;
    let b = s.param("bias", &[dout], Init::Zeros, &[axes[3]])?;
    conv(x, &k, &b, stride, groups)
}

/// How a block enters: the first block of a stage that downsamples, or of one that keeps the
/// resolution but changes the width, or any other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entry {
    /// Halves the resolution; shortcut `Proj(Pool(x))`.
    Down,
    /// Keeps the resolution, changes the width; shortcut `Proj(x)`.
    Widen,
    /// Shortcut `x`.
    Same,
}

impl Entry {
    /// The entry of a stage's first block on input `x`.
    fn first(st: &CoatnetStage, x: &Tensor) -> Entry {
        if st.downsample {
            Entry::Down
        } else if x.shape()[3] != st.width {
            Entry::Widen
        } else {
            Entry::Same
        }
    }
}

/// One block's sizes and choices.
#[derive(Clone, Copy)]
struct Block<'a> {
    st: &'a CoatnetStage,
    /// MBConv expansion, transformer MLP ratio.
    expansion: i64,
    conv_norm: ConvNorm,
    entry: Entry,
}

/// The block's shortcut branch to `d` channels under `s/shortcut`.
fn shortcut(x: &Tensor, s: &Scope, d: i64, entry: Entry) -> Result<Tensor> {
    let s = s.sub("shortcut");
    match entry {
        Entry::Down => fc(&pool2(x)?, &s, d, ["channels", "mlp"]),
        Entry::Widen => fc(x, &s, d, ["channels", "mlp"]),
        Entry::Same => Ok(x.clone()),
    }
}

/// The normalisation of a convolution's output `h` (`conv_norm`): LayerNorm over channels under
/// `s/name`, or nothing.
fn conv_norm(h: &Tensor, s: &Scope, name: &str, c: ConvNorm) -> Result<Tensor> {
    match c {
        ConvNorm::Layer => norm(h, &s.sub(name), "mlp", 1e-6),
        ConvNorm::None => Ok(h.clone()),
    }
}

/// An MBConv block under `s` of `d` output channels (`e = d · expansion` inside).
fn mbconv(x: &Tensor, s: &Scope, k: &Block, noise: Option<&Noise>) -> Result<Tensor> {
    let [_, _, _, din] = x.shape() else {
        return crate::error::shape_err("mbconv", format!("expects [B, H, W, C], got {}", x.ty()));
    };
    let (din, d) = (*din, k.st.width);
    let e = d * k.expansion;
    let short = shortcut(x, s, d, k.entry)?;
    let h = ln(x, &s.sub("ln"))?;
    let h = fc(&h, &s.sub("expand"), e, ["channels", "mlp"])?;
    let h = conv_norm(&h, s, names::CONV_NORMS[1], k.conv_norm)?.gelu()?;
    let stride = if k.entry == Entry::Down { 2 } else { 1 };
    let axes = ["kh", "kw", "one", "mlp"];
    let h = conv_layer(&h, &s.sub("depthwise"), e, stride, e, axes)?;
    let h = conv_norm(&h, s, names::CONV_NORMS[2], k.conv_norm)?.gelu()?;
    // Squeeze-excitation: per-channel gates from the spatial mean.
    let se = (din / 4).max(1);
    let g = h.mean(&[1, 2])?;
    let g = fc(&g, &s.sub("se/reduce"), se, ["mlp", "channels"])?.gelu()?;
    let g = fc(&g, &s.sub("se/expand"), e, ["channels", "mlp"])?.logistic()?;
    let b = g.shape()[0];
    let h = h.mul(&g.reshape(&[b, 1, 1, e])?)?;
    let h = fc(&h, &s.sub("project"), d, ["mlp", "channels"])?;
    short.add(&branch(h, noise, 1)?)
}

/// Dropout and stochastic depth on a residual branch (identity without noise).
fn branch(h: Tensor, noise: Option<&Noise>, salt: u64) -> Result<Tensor> {
    match noise {
        Some(n) => n.branch(&h, salt),
        None => Ok(h),
    }
}

/// A transformer block under `s` of `d` output channels with a 2-D relative attention bias;
/// entering with `Down`, attention runs on the max-pooled normalised input (the paper's Eq. 4).
fn transformer_block(x: &Tensor, s: &Scope, k: &Block, noise: Option<&Noise>) -> Result<Tensor> {
    let (d, heads) = (k.st.width, k.st.heads);
    let short = shortcut(x, s, d, k.entry)?;
    let h = ln(x, &s.sub("ln1"))?;
    let h = if k.entry == Entry::Down {
        pool2(&h)?
    } else {
        h
    };
    let (b, side, c_in) = (h.shape()[0], h.shape()[1], h.shape()[3]);
    let n = side * side;
    let sa = s.sub("attn");
    let attn = Attention::declare(&sa, c_in, d, heads, Init::LecunUniform, "channels")?;
    let table = sa.param(
        "rel_bias",
        &[(2 * side - 1) * (2 * side - 1), heads],
        Init::Zeros,
        &["relpos", "heads"],
    )?;
    let bias = table
        .take_rows(&relative_index(x, side)?)?
        .reshape(&[n, n, heads])?
        .transpose(&[2, 0, 1])?
        .reshape(&[1, heads, n, n])?;
    let a = attn.apply(&h.reshape(&[b, n, c_in])?, Some(&bias))?;
    let x = short.add(&branch(a.reshape(&[b, side, side, d])?, noise, 1)?)?;
    let h = ln(&x, &s.sub("ln2"))?;
    let h = fc(&h, &s.sub("mlp/in"), d * k.expansion, ["channels", "mlp"])?.gelu()?;
    let h = fc(&h, &s.sub("mlp/out"), d, ["mlp", "channels"])?;
    x.add(&branch(h, noise, 2)?)
}

/// The stem (S0) under `s/stem`: `conv3×3/2 → Norm → GELU → conv3×3` to `stem_width` channels.
fn stem(images: &Tensor, s: &Scope, c: &CoatnetConfig) -> Result<Tensor> {
    let (s, w) = (s.sub("stem"), c.stem_width);
    let x = images.constrain(&[Some("batch"), None, None, None])?;
    let axes = ["kh", "kw", "channels", "mlp"];
    let x = conv_layer(&x, &s.sub("conv1"), w, 2, 1, axes)?;
    let x = conv_norm(&x, &s, names::CONV_NORMS[0], c.conv_norm)?.gelu()?;
    conv_layer(
        &x,
        &s.sub("conv2"),
        w,
        1,
        1,
        ["kh", "kw", "mlp", "channels"],
    )
}

/// Stage `si` of `c` under `s/stages/{si}` on `x`; see [`apply`].
fn stage(x: &Tensor, s: &Scope, c: &CoatnetConfig, si: usize, t: &Tower) -> Result<Tensor> {
    let st = &c.stages[si];
    let run = |x: &Tensor, bs: &Scope, entry: Entry, t: &Tower| {
        let k = Block {
            st,
            expansion: c.expansion,
            conv_norm: c.conv_norm,
            entry,
        };
        x.builder().checkpoint(t.remat, || match st.kind {
            StageKind::Mbconv => mbconv(x, bs, &k, t.noise),
            StageKind::Transformer => transformer_block(x, bs, &k, t.noise),
        })
    };
    // Block `bi` of stage `si` draws from the key folded with 100 + 1000·si + bi.
    let salt = |bi: i64| 100 + 1000 * si as u64 + bi as u64;
    let ss = s.sub(&names::stage(si));
    let n = t.fold(salt(0))?;
    let first = Entry::first(st, x);
    let mut x = run(
        x,
        &ss.sub(&names::block(0)),
        first,
        &t.with_noise(n.as_ref()),
    )?;
    if t.scan {
        if st.depth > 1 {
            let n = t.fold(salt(1))?;
            let t = t.with_noise(n.as_ref());
            x = scan_layers(
                &x,
                &ss.sub(names::LAYERS),
                st.depth - 1,
                &[],
                &t,
                |x, bs, _, t| run(x, bs, Entry::Same, t),
            )?;
        }
    } else {
        for bi in 1..st.depth {
            let n = t.fold(salt(bi))?;
            let bs = ss.sub(&names::block(bi as usize));
            x = run(&x, &bs, Entry::Same, &t.with_noise(n.as_ref()))?;
        }
    }
    Ok(x)
}

/// `images [B, H, W, C]` → features `[B, width of the last stage]`; parameters under `s`. With
/// noise, dropout and stochastic depth on every block's residual branches; with `t.scan`, each
/// stage's blocks after the first (which may change the shape) run as one loop over parameters
/// stacked under `s/stages/S/layers/`.
pub fn apply(images: &Tensor, s: &Scope, c: &CoatnetConfig, t: &Tower) -> Result<Tensor> {
    let mut x = stem(images, s, c)?;
    for si in 0..c.stages.len() {
        x = stage(&x, s, c, si, t)?;
    }
    let pooled = x.mean(&[1, 2])?;
    ln(&pooled, &s.sub("ln"))
}
