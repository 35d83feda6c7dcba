//! CoAtNet image tower (Dai et al., 2021), as BASIC uses it: a convolutional stem (S0), MBConv
//! stages with depthwise convolutions and squeeze-excitation (S1, S2), transformer stages with a
//! 2-D relative attention bias (S3, S4), then global average pooling.
//!
//! Each stage halves the resolution in its first block (stride-2 depthwise convolution in
//! MBConv, 2×2 max pooling before attention in transformer stages) with a pooled, projected
//! shortcut. Blocks are pre-norm; LayerNorm over channels stands in for the paper's BatchNorm so
//! that the tower has no batch statistics (which would couple micro-batches in BASIC's gradient
//! accumulation).

use crate::error::Result;
use crate::trace::Tensor;

use super::config::{CoatnetConfig, CoatnetStage, StageKind};
use super::names;
use super::noise::Noise;
use super::params::Init;
use super::scope::{Scope, Tower};
use super::transformer::{linear, norm, scan_layers, Attention};

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

/// An MBConv block under `s` of `d` output channels (`e = d · expansion` inside); `down`: the
/// stage's first block, which halves the resolution and projects its shortcut.
fn mbconv(
    x: &Tensor,
    s: &Scope,
    d: i64,
    expansion: i64,
    down: bool,
    noise: Option<&Noise>,
) -> Result<Tensor> {
    let din = x.shape()[3];
    let e = d * expansion;
    let shortcut = if down {
        fc(&pool2(x)?, &s.sub("shortcut"), d, ["channels", "mlp"])?
    } else {
        x.clone()
    };
    let h = ln(x, &s.sub("ln"))?;
    let h = fc(&h, &s.sub("expand"), e, ["channels", "mlp"])?.gelu()?;
    let h = conv_layer(
        &h,
        &s.sub("depthwise"),
        e,
        if down { 2 } else { 1 },
        e,
        ["kh", "kw", "one", "mlp"],
    )?
    .gelu()?;
    // Squeeze-excitation: per-channel gates from the spatial mean.
    let se = (din / 4).max(1);
    let g = h.mean(&[1, 2])?;
    let g = fc(&g, &s.sub("se/reduce"), se, ["mlp", "channels"])?.gelu()?;
    let g = fc(&g, &s.sub("se/expand"), e, ["channels", "mlp"])?.logistic()?;
    let b = g.shape()[0];
    let h = h.mul(&g.reshape(&[b, 1, 1, e])?)?;
    let h = fc(&h, &s.sub("project"), d, ["mlp", "channels"])?;
    shortcut.add(&branch(h, noise, 1)?)
}

/// Dropout and stochastic depth on a residual branch (identity without noise).
fn branch(h: Tensor, noise: Option<&Noise>, salt: u64) -> Result<Tensor> {
    match noise {
        Some(n) => n.branch(&h, salt),
        None => Ok(h),
    }
}

/// A transformer block under `s` of `d` output channels with a 2-D relative attention bias;
/// `down` as in [`mbconv`].
fn transformer_block(
    x: &Tensor,
    s: &Scope,
    st: &CoatnetStage,
    expansion: i64,
    down: bool,
    noise: Option<&Noise>,
) -> Result<Tensor> {
    let (d, heads) = (st.width, st.heads);
    let (shortcut, h) = if down {
        let px = pool2(x)?;
        let sc = fc(&px, &s.sub("shortcut"), d, ["channels", "mlp"])?;
        (sc, pool2(&ln(x, &s.sub("ln1"))?)?)
    } else {
        (x.clone(), ln(x, &s.sub("ln1"))?)
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
    let x = shortcut.add(&branch(a.reshape(&[b, side, side, d])?, noise, 1)?)?;
    let h = ln(&x, &s.sub("ln2"))?;
    let h = fc(&h, &s.sub("mlp/in"), d * expansion, ["channels", "mlp"])?.gelu()?;
    let h = fc(&h, &s.sub("mlp/out"), d, ["mlp", "channels"])?;
    x.add(&branch(h, noise, 2)?)
}

/// `images [B, H, W, C]` → features `[B, width of the last stage]`; parameters under `s`. With
/// noise, dropout and stochastic depth on every block's residual branches; with `t.scan`, each
/// stage's blocks after the first (the first changes shape) run as one loop over parameters
/// stacked under `s/stages/S/layers/`.
pub fn apply(images: &Tensor, s: &Scope, c: &CoatnetConfig, t: &Tower) -> Result<Tensor> {
    let s0 = c.stem_width;
    let x = images.constrain(&[Some("batch"), None, None, None])?;
    let x = conv_layer(
        &x,
        &s.sub("stem/conv1"),
        s0,
        2,
        1,
        ["kh", "kw", "channels", "mlp"],
    )?
    .gelu()?;
    let mut x = conv_layer(
        &x,
        &s.sub("stem/conv2"),
        s0,
        1,
        1,
        ["kh", "kw", "mlp", "channels"],
    )?;
    for (si, st) in c.stages.iter().enumerate() {
        let run = |x: &Tensor, bs: &Scope, down: bool, t: &Tower| {
            x.builder().checkpoint(t.remat, || match st.kind {
                StageKind::Mbconv => mbconv(x, bs, st.width, c.expansion, down, t.noise),
                StageKind::Transformer => transformer_block(x, bs, st, c.expansion, down, t.noise),
            })
        };
        // Block `bi` of stage `si` draws from the key folded with 100 + 1000·si + bi.
        let salt = |bi: i64| 100 + 1000 * si as u64 + bi as u64;
        let ss = s.sub(&names::stage(si));
        let n = t.fold(salt(0))?;
        x = run(
            &x,
            &ss.sub(&names::block(0)),
            true,
            &t.with_noise(n.as_ref()),
        )?;
        if t.scan {
            if st.depth > 1 {
                let n = t.fold(salt(1))?;
                x = scan_layers(
                    &x,
                    &ss.sub("layers"),
                    st.depth - 1,
                    &[],
                    &t.with_noise(n.as_ref()),
                    |x, bs, _, t| run(x, bs, false, t),
                )?;
            }
        } else {
            for bi in 1..st.depth {
                let n = t.fold(salt(bi))?;
                let bs = ss.sub(&names::block(bi as usize));
                x = run(&x, &bs, false, &t.with_noise(n.as_ref()))?;
            }
        }
    }
    let pooled = x.mean(&[1, 2])?;
    ln(&pooled, &s.sub("ln"))
}
