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
use crate::ir::RematPolicy;
use crate::trace::Tensor;

use super::config::{CoatnetConfig, CoatnetStage, StageKind};
use super::noise::Noise;
use super::params::{Init, ParamSpec, Params};
use super::transformer::{attention, dense, layer_norm, scan_layers};

/// Spatial size after the stem and each stage.
fn sizes(c: &CoatnetConfig) -> Vec<i64> {
    let mut s = vec![c.image_size / 2];
    for _ in &c.stages {
        let last = *s.last().unwrap_or(&c.image_size);
        s.push(last / 2);
    }
    s
}

fn ln_specs(v: &mut Vec<ParamSpec>, prefix: &str, d: i64) {
    v.push(ParamSpec::new(
        format!("{prefix}/scale"),
        &[d],
        Init::Ones,
        &["channels"],
    ));
    v.push(ParamSpec::new(
        format!("{prefix}/bias"),
        &[d],
        Init::Zeros,
        &["channels"],
    ));
}

fn dense_specs(v: &mut Vec<ParamSpec>, prefix: &str, din: i64, dout: i64, axes: [&str; 2]) {
    v.push(ParamSpec::new(
        format!("{prefix}/kernel"),
        &[din, dout],
        Init::LecunUniform,
        &axes,
    ));
    v.push(ParamSpec::new(
        format!("{prefix}/bias"),
        &[dout],
        Init::Zeros,
        &[axes[1]],
    ));
}

/// One block's specs under `p`; `down`: the stage's first block, which halves the resolution and
/// projects its shortcut from `din` channels.
fn block_specs(
    p: &str,
    c: &CoatnetConfig,
    st: &CoatnetStage,
    din: i64,
    side: i64,
    down: bool,
) -> Vec<ParamSpec> {
    let mut v = Vec::new();
    let d = st.width;
    if down {
        dense_specs(
            &mut v,
            &format!("{p}/shortcut"),
            din,
            d,
            ["channels", "mlp"],
        );
    }
    match st.kind {
        StageKind::Mbconv => {
            let e = d * c.expansion;
            let se = (din / 4).max(1);
            ln_specs(&mut v, &format!("{p}/ln"), din);
            dense_specs(&mut v, &format!("{p}/expand"), din, e, ["channels", "mlp"]);
            v.push(ParamSpec::new(
                format!("{p}/depthwise/kernel"),
                &[3, 3, 1, e],
                Init::LecunUniform,
                &["kh", "kw", "one", "mlp"],
            ));
            v.push(ParamSpec::new(
                format!("{p}/depthwise/bias"),
                &[e],
                Init::Zeros,
                &["mlp"],
            ));
            dense_specs(
                &mut v,
                &format!("{p}/se/reduce"),
                e,
                se,
                ["mlp", "channels"],
            );
            dense_specs(
                &mut v,
                &format!("{p}/se/expand"),
                se,
                e,
                ["channels", "mlp"],
            );
            dense_specs(&mut v, &format!("{p}/project"), e, d, ["mlp", "channels"]);
        }
        StageKind::Transformer => {
            ln_specs(&mut v, &format!("{p}/ln1"), din);
            dense_specs(
                &mut v,
                &format!("{p}/attn/qkv"),
                din,
                3 * d,
                ["channels", "heads"],
            );
            dense_specs(
                &mut v,
                &format!("{p}/attn/out"),
                d,
                d,
                ["heads", "channels"],
            );
            v.push(ParamSpec::new(
                format!("{p}/attn/rel_bias"),
                &[(2 * side - 1) * (2 * side - 1), st.heads],
                Init::Zeros,
                &["relpos", "heads"],
            ));
            ln_specs(&mut v, &format!("{p}/ln2"), d);
            dense_specs(
                &mut v,
                &format!("{p}/mlp/in"),
                d,
                d * c.expansion,
                ["channels", "mlp"],
            );
            dense_specs(
                &mut v,
                &format!("{p}/mlp/out"),
                d * c.expansion,
                d,
                ["mlp", "channels"],
            );
        }
    }
    v
}

/// Parameter specs; `scan`: each stage's blocks after the first stacked under
/// `prefix/stages/S/layers/` for one loop (the first block changes shape, so it stays apart).
pub fn specs(prefix: &str, c: &CoatnetConfig, scan: bool) -> Vec<ParamSpec> {
    let mut v = Vec::new();
    let s0 = c.stem_width;
    v.push(ParamSpec::new(
        format!("{prefix}/stem/conv1/kernel"),
        &[3, 3, c.channels, s0],
        Init::LecunUniform,
        &["kh", "kw", "channels", "mlp"],
    ));
    v.push(ParamSpec::new(
        format!("{prefix}/stem/conv1/bias"),
        &[s0],
        Init::Zeros,
        &["mlp"],
    ));
    v.push(ParamSpec::new(
        format!("{prefix}/stem/conv2/kernel"),
        &[3, 3, s0, s0],
        Init::LecunUniform,
        &["kh", "kw", "mlp", "channels"],
    ));
    v.push(ParamSpec::new(
        format!("{prefix}/stem/conv2/bias"),
        &[s0],
        Init::Zeros,
        &["channels"],
    ));
    let hw = sizes(c);
    let mut cin = s0;
    for (si, st) in c.stages.iter().enumerate() {
        let side = hw[si + 1];
        v.extend(block_specs(
            &format!("{prefix}/stages/{si}/blocks/0"),
            c,
            st,
            cin,
            side,
            true,
        ));
        if scan {
            if st.depth > 1 {
                let one = block_specs("", c, st, st.width, side, false);
                v.extend(one.iter().map(|s| {
                    let rel = s.name.trim_start_matches('/');
                    s.stacked(st.depth - 1, format!("{prefix}/stages/{si}/layers/{rel}"))
                }));
            }
        } else {
            for bi in 1..st.depth {
                v.extend(block_specs(
                    &format!("{prefix}/stages/{si}/blocks/{bi}"),
                    c,
                    st,
                    st.width,
                    side,
                    false,
                ));
            }
        }
        cin = st.width;
    }
    ln_specs(&mut v, &format!("{prefix}/ln"), cin);
    v
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

fn mbconv(x: &Tensor, p: &Params, down: bool, noise: Option<&Noise>) -> Result<Tensor> {
    let shortcut = if down {
        dense(
            &pool2(x)?,
            p.get("shortcut/kernel")?,
            p.get("shortcut/bias")?,
        )?
    } else {
        x.clone()
    };
    let h = layer_norm(x, p.get("ln/scale")?, p.get("ln/bias")?, 1e-6)?;
    let h = dense(&h, p.get("expand/kernel")?, p.get("expand/bias")?)?.gelu()?;
    let e = h.shape()[3];
    let h = conv(
        &h,
        p.get("depthwise/kernel")?,
        p.get("depthwise/bias")?,
        if down { 2 } else { 1 },
        e,
    )?
    .gelu()?;
    // Squeeze-excitation: per-channel gates from the spatial mean.
    let s = h.mean(&[1, 2])?;
    let s = dense(&s, p.get("se/reduce/kernel")?, p.get("se/reduce/bias")?)?.gelu()?;
    let s = dense(&s, p.get("se/expand/kernel")?, p.get("se/expand/bias")?)?.logistic()?;
    let b = s.shape()[0];
    let h = h.mul(&s.reshape(&[b, 1, 1, e])?)?;
    let h = dense(&h, p.get("project/kernel")?, p.get("project/bias")?)?;
    shortcut.add(&branch(h, noise, 1)?)
}

/// Dropout and stochastic depth on a residual branch (identity without noise).
fn branch(h: Tensor, noise: Option<&Noise>, salt: u64) -> Result<Tensor> {
    match noise {
        Some(n) => n.branch(&h, salt),
        None => Ok(h),
    }
}

fn transformer_block(
    x: &Tensor,
    p: &Params,
    heads: i64,
    down: bool,
    noise: Option<&Noise>,
) -> Result<Tensor> {
    let (shortcut, h) = if down {
        let px = pool2(x)?;
        let sc = dense(&px, p.get("shortcut/kernel")?, p.get("shortcut/bias")?)?;
        (
            sc,
            pool2(&layer_norm(
                x,
                p.get("ln1/scale")?,
                p.get("ln1/bias")?,
                1e-6,
            )?)?,
        )
    } else {
        (
            x.clone(),
            layer_norm(x, p.get("ln1/scale")?, p.get("ln1/bias")?, 1e-6)?,
        )
    };
    let (b, side, c_in) = (h.shape()[0], h.shape()[1], h.shape()[3]);
    let n = side * side;
    let ap = p.scope("attn");
    let table = ap.get("rel_bias")?;
    let bias = table
        .take_rows(&relative_index(x, side)?)?
        .reshape(&[n, n, heads])?
        .transpose(&[2, 0, 1])?
        .reshape(&[1, heads, n, n])?;
    let a = attention(&h.reshape(&[b, n, c_in])?, &ap, heads, Some(&bias))?;
    let d = a.shape()[2];
    let x = shortcut.add(&branch(a.reshape(&[b, side, side, d])?, noise, 1)?)?;
    let h = layer_norm(&x, p.get("ln2/scale")?, p.get("ln2/bias")?, 1e-6)?;
    let h = dense(&h, p.get("mlp/in/kernel")?, p.get("mlp/in/bias")?)?.gelu()?;
    let h = dense(&h, p.get("mlp/out/kernel")?, p.get("mlp/out/bias")?)?;
    x.add(&branch(h, noise, 2)?)
}

/// `images [B, H, W, C]` → features `[B, width of the last stage]`. `noise` drives dropout and
/// stochastic depth on every block's residual branches; `scan` runs each stage's blocks after
/// the first as one loop (parameters from [`specs`] with the same `scan`).
pub fn apply(
    images: &Tensor,
    p: &Params,
    c: &CoatnetConfig,
    remat: Option<&RematPolicy>,
    noise: Option<&Noise>,
    scan: bool,
) -> Result<Tensor> {
    let x = images.constrain(&[Some("batch"), None, None, None])?;
    let x = conv(
        &x,
        p.get("stem/conv1/kernel")?,
        p.get("stem/conv1/bias")?,
        2,
        1,
    )?
    .gelu()?;
    let mut x = conv(
        &x,
        p.get("stem/conv2/kernel")?,
        p.get("stem/conv2/bias")?,
        1,
        1,
    )?;
    for (si, st) in c.stages.iter().enumerate() {
        let run = |x: &Tensor, bp: &Params, down: bool, n: Option<&Noise>| match st.kind {
            StageKind::Mbconv => mbconv(x, bp, down, n),
            StageKind::Transformer => transformer_block(x, bp, st.heads, down, n),
        };
        let checkpointed = |x: &Tensor, bp: &Params, down: bool, n: Option<&Noise>| {
            x.builder().remat(remat, || run(x, bp, down, n))
        };
        // Block `bi` of stage `si` draws from the key folded with 100 + 1000·si + bi.
        let salt = |bi: i64| 100 + 1000 * si as u64 + bi as u64;
        let n = noise.map(|n| n.fold(salt(0))).transpose()?;
        let bp = p.scope(&format!("stages/{si}/blocks/0"));
        x = checkpointed(&x, &bp, true, n.as_ref())?;
        if scan {
            if st.depth > 1 {
                let n = noise.map(|n| n.fold(salt(1))).transpose()?;
                let lp = p.scope(&format!("stages/{si}/layers"));
                x = scan_layers(&x, &lp, &[], remat, n.as_ref(), |x, bp, _, n| {
                    run(x, bp, false, n)
                })?;
            }
        } else {
            for bi in 1..st.depth {
                let n = noise.map(|n| n.fold(salt(bi))).transpose()?;
                let bp = p.scope(&format!("stages/{si}/blocks/{bi}"));
                x = checkpointed(&x, &bp, false, n.as_ref())?;
            }
        }
    }
    let pooled = x.mean(&[1, 2])?;
    layer_norm(&pooled, p.get("ln/scale")?, p.get("ln/bias")?, 1e-6)
}
