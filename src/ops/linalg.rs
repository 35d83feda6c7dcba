//! `dot_general` and `convolution`: their shape arithmetic, the two rules, then the index
//! bookkeeping of their derivatives.

use crate::dtype::TensorType;
use crate::error::{shape_err, Error, Result};
use crate::ir::{ConvAttrs, ConvDims, DotDims};
use crate::lower::{i64_array, list, padding_attr, Emitter};
use crate::trace::Tensor;

use super::{arity, cot0, show, Lowering, Rule, Vjp};

/// Output shape of `dot_general`: batch dimensions, then lhs free, then rhs free dimensions.
pub fn dot_output_shape(lhs: &TensorType, rhs: &TensorType, d: &DotDims) -> Result<Vec<i64>> {
    let name = "dot_general";
    let bad = |m: String| {
        shape_err::<Vec<i64>>(name, format!("{m} (operands {lhs} and {rhs}, dims {d:?})"))
    };
    if d.lhs_batch.len() != d.rhs_batch.len() || d.lhs_contract.len() != d.rhs_contract.len() {
        return bad("batch and contracting dimension lists must pair up".into());
    }
    let all_l: Vec<usize> = d.lhs_batch.iter().chain(&d.lhs_contract).copied().collect();
    let all_r: Vec<usize> = d.rhs_batch.iter().chain(&d.rhs_contract).copied().collect();
    for (dims, t) in [(&all_l, lhs), (&all_r, rhs)] {
        let mut seen = vec![false; t.rank()];
        for &x in dims {
            if x >= t.rank() || seen[x] {
                return bad(format!("dimension {x} is out of range or repeated"));
            }
            seen[x] = true;
        }
    }
    for (a, b) in d
        .lhs_batch
        .iter()
        .zip(&d.rhs_batch)
        .chain(d.lhs_contract.iter().zip(&d.rhs_contract))
    {
        if lhs.shape[*a] != rhs.shape[*b] {
            return bad(format!(
                "lhs dimension {a} ({}) ≠ rhs dimension {b} ({})",
                lhs.shape[*a], rhs.shape[*b]
            ));
        }
    }
    let mut out: Vec<i64> = d.lhs_batch.iter().map(|&i| lhs.shape[i]).collect();
    out.extend(
        (0..lhs.rank())
            .filter(|i| !all_l.contains(i))
            .map(|i| lhs.shape[i]),
    );
    out.extend(
        (0..rhs.rank())
            .filter(|i| !all_r.contains(i))
            .map(|i| rhs.shape[i]),
    );
    Ok(out)
}

fn dilate(size: i64, d: i64) -> i64 {
    if size == 0 {
        0
    } else {
        1 + d * (size - 1)
    }
}

/// The extents of one spatial dimension of a convolution, each dilated: input, window, output.
pub struct Extents {
    input: i64,
    window: i64,
    output: i64,
}

/// The dilated extents of every spatial dimension of a convolution of `in_shape` by `window`
/// with `strides` giving `out_shape`.
pub fn extents(
    in_shape: &[i64],
    window: &[i64],
    strides: &[i64],
    out_shape: &[i64],
    lhs_dilation: &[i64],
    rhs_dilation: &[i64],
) -> Vec<Extents> {
    (0..in_shape.len())
        .map(|i| Extents {
            input: dilate(in_shape[i], lhs_dilation[i]),
            window: dilate(window[i], rhs_dilation[i]),
            output: dilate(out_shape[i], strides[i]),
        })
        .collect()
}

/// Padding of the input-gradient convolution (XLA/JAX's transpose rule, worked per dimension).
pub fn conv_lhs_vjp_padding(ext: &[Extents], padding: &[(i64, i64)]) -> Vec<(i64, i64)> {
    ext.iter()
        .zip(padding)
        .map(|(d, p)| {
            let before = d.window - p.0 - 1;
            (before, d.input + d.window - 1 - d.output - before)
        })
        .collect()
}

/// Padding of the kernel-gradient convolution.
fn conv_rhs_vjp_padding(ext: &[Extents], padding: &[(i64, i64)]) -> Vec<(i64, i64)> {
    ext.iter()
        .zip(padding)
        .map(|(d, p)| (p.0, (d.output - d.input) + (d.window - p.0 - 1)))
        .collect()
}

fn conv_shape(x: &TensorType, k: &TensorType, a: &ConvAttrs) -> Result<Vec<i64>> {
    let name = "convolution";
    let n = a.dims.lhs.2.len();
    let bad = |m: String| shape_err::<Vec<i64>>(name, format!("{m} (input {x}, kernel {k})"));
    let r = n + 2;
    if x.rank() != r || k.rank() != r || a.dims.rhs.2.len() != n || a.dims.out.2.len() != n {
        return bad(format!("{n} spatial dimensions need rank-{r} operands"));
    }
    if a.strides.len() != n
        || a.padding.len() != n
        || a.lhs_dilation.len() != n
        || a.rhs_dilation.len() != n
    {
        return bad(format!(
            "strides, padding and dilations need {n} entries each"
        ));
    }
    if a.feature_groups < 1 || a.batch_groups < 1 || (a.feature_groups > 1 && a.batch_groups > 1) {
        return bad("feature_groups and batch_groups must be ≥ 1, and not both > 1".into());
    }
    let (lb, lf, ls) = &a.dims.lhs;
    let (ro, ri, rs) = &a.dims.rhs;
    let in_f = x.shape[*lf];
    if k.shape[*ri] * a.feature_groups != in_f {
        return bad(format!(
            "input features {in_f} ≠ kernel input features {} × feature groups {}",
            k.shape[*ri], a.feature_groups
        ));
    }
    let out_f = k.shape[*ro];
    if out_f % a.feature_groups != 0
        || out_f % a.batch_groups != 0
        || x.shape[*lb] % a.batch_groups != 0
    {
        return bad("output features / batch must divide by the group counts".into());
    }
    let mut out = vec![0; r];
    let (ob, of, os) = &a.dims.out;
    out[*ob] = x.shape[*lb] / a.batch_groups;
    out[*of] = out_f;
    for i in 0..n {
        let in_d = dilate(x.shape[ls[i]], a.lhs_dilation[i]) + a.padding[i].0 + a.padding[i].1;
        let w_d = dilate(k.shape[rs[i]], a.rhs_dilation[i]);
        if a.strides[i] < 1 {
            return bad("strides must be ≥ 1".into());
        }
        out[os[i]] = if in_d >= w_d {
            (in_d - w_d) / a.strides[i] + 1
        } else {
            0
        };
    }
    Ok(out)
}

/// The checks both ops share: two operands of one numeric dtype.
fn numeric_pair(name: &str, ins: &[TensorType]) -> Result<()> {
    arity(name, ins, 2)?;
    if ins[0].dtype != ins[1].dtype || !(ins[0].dtype.is_float() || ins[0].dtype.is_integer()) {
        return shape_err(
            name,
            format!("operands must share a numeric dtype, got {}", show(ins)),
        );
    }
    Ok(())
}

impl Rule for DotDims {
    fn name(&self) -> String {
        "dot_general".into()
    }

    /// Two per output element and contracted element.
    fn flops(&self, ins: &[TensorType], outs: &[TensorType]) -> f64 {
        let k: i64 = self.lhs_contract.iter().map(|&i| ins[0].shape[i]).product();
        2.0 * outs[0].element_count() as f64 * k as f64
    }

    fn infer(&self, ins: &[TensorType]) -> Result<Vec<TensorType>> {
        numeric_pair("dot_general", ins)?;
        let shape = dot_output_shape(&ins[0], &ins[1], self)?;
        Ok(vec![TensorType::new(ins[0].dtype, &shape)])
    }

    fn vjp(&self, v: &Vjp) -> Result<Vec<Option<Tensor>>> {
        let (g, x, y, d) = (cot0("dot_general", v.cots)?, &v.ins[0], &v.ins[1], self);
        let dx = dot_transpose_lhs(&g, x, y, d)?;
        let dy = dot_rhs_cotangent(&g, x, y, d)?;
        Ok(vec![Some(dx), Some(dy)])
    }

    fn lower(&self, e: &mut Emitter, l: &Lowering) -> Result<Vec<String>> {
        let i64s = |v: &[usize]| v.iter().map(|&x| x as i64).collect::<Vec<_>>();
        let mut parts = Vec::new();
        for (k, v) in [
            ("lhs_batching_dimensions", &self.lhs_batch),
            ("rhs_batching_dimensions", &self.rhs_batch),
            ("lhs_contracting_dimensions", &self.lhs_contract),
            ("rhs_contracting_dimensions", &self.rhs_contract),
        ] {
            if !v.is_empty() {
                parts.push(format!("{k} = {}", list(&i64s(v))));
            }
        }
        let attr = format!(
            "dot_dimension_numbers = #stablehlo.dot<{}>",
            parts.join(", ")
        );
        Ok(l.op(e, "stablehlo.dot_general", &attr))
    }
}

impl Rule for ConvAttrs {
    fn name(&self) -> String {
        "convolution".into()
    }

    /// Two per output element and kernel element it reads (the window times the input features
    /// of its group).
    fn flops(&self, ins: &[TensorType], outs: &[TensorType]) -> f64 {
        let k = &ins[1];
        let window: i64 = self.dims.rhs.2.iter().map(|&i| k.shape[i]).product();
        let per_out = window * k.shape[self.dims.rhs.1];
        2.0 * outs[0].element_count() as f64 * per_out as f64
    }

    fn infer(&self, ins: &[TensorType]) -> Result<Vec<TensorType>> {
        numeric_pair("convolution", ins)?;
        let shape = conv_shape(&ins[0], &ins[1], self)?;
        Ok(vec![TensorType::new(ins[0].dtype, &shape)])
    }

    fn vjp(&self, v: &Vjp) -> Result<Vec<Option<Tensor>>> {
        let (dx, dk) = conv_vjp(self, &v.ins[0], &v.ins[1], &cot0("convolution", v.cots)?)?;
        Ok(vec![Some(dx), Some(dk)])
    }

    fn lower(&self, e: &mut Emitter, l: &Lowering) -> Result<Vec<String>> {
        let a = self;
        let attr = format!(
            "batch_group_count = {} : i64, dimension_numbers = #stablehlo.conv<{}x{}->{}>, feature_group_count = {} : i64, lhs_dilation = {}, padding = {}, rhs_dilation = {}, window_strides = {}",
            a.batch_groups,
            layout(&a.dims.lhs, "b", "f"),
            layout(&a.dims.rhs, "o", "i"),
            layout(&a.dims.out, "b", "f"),
            a.feature_groups,
            i64_array(&a.lhs_dilation),
            padding_attr(&a.padding),
            i64_array(&a.rhs_dilation),
            i64_array(&a.strides),
        );
        Ok(l.op(e, "stablehlo.convolution", &attr))
    }
}

fn remaining(n: usize, a: &[usize], b: &[usize]) -> Vec<usize> {
    (0..n)
        .filter(|i| !a.contains(i) && !b.contains(i))
        .collect()
}

fn argsort(v: &[usize]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by_key(|&i| v[i]);
    idx
}

/// Cotangent of the lhs of `dot_general`: contract g with y over y's free dimensions, then put
/// the dimensions back in x's order.
fn dot_transpose_lhs(g: &Tensor, x: &Tensor, y: &Tensor, d: &DotDims) -> Result<Tensor> {
    let x_kept = remaining(x.rank(), &d.lhs_contract, &d.lhs_batch);
    let y_kept = remaining(y.rank(), &d.rhs_contract, &d.rhs_batch);
    let nb = d.lhs_batch.len();
    let ans_batch: Vec<usize> = (0..nb).collect();
    let ans_y: Vec<usize> = (nb + x_kept.len()..nb + x_kept.len() + y_kept.len()).collect();
    let dims = DotDims {
        lhs_batch: ans_batch,
        rhs_batch: d.rhs_batch.clone(),
        lhs_contract: ans_y,
        rhs_contract: y_kept,
    };
    let order = argsort(&d.rhs_contract);
    let x_contract_by_y: Vec<usize> = order.iter().map(|&i| d.lhs_contract[i]).collect();
    let mut pre: Vec<usize> = d.lhs_batch.clone();
    pre.extend(&x_kept);
    pre.extend(&x_contract_by_y);
    g.dot_general(y, dims)?.transpose(&argsort(&pre))
}

/// Cotangent of the rhs of `dot_general`: contract x with g over x's free dimensions, x first,
/// so that the product comes out in y's order (for `x · W`, `dW = xᵀ · g` with no transpose of
/// the result). When x's free dimensions lead (activations `[batch, seq, d]` times a weight),
/// both operands are first flattened to matrices, so the product is one matrix product over
/// their leading dimension. XLA's CPU compiler reads such an operand in place, but it copies an
/// operand contracted over several leading dimensions into a transposed buffer first, and fuses
/// into that copy whatever elementwise work produced the operand: for a cotangent, the whole
/// chain of residual-stream sums above the layer, recomputed once per layer in strided order
/// (the largest ops of the `small` step, BENCHMARKS.md).
fn dot_rhs_cotangent(g: &Tensor, x: &Tensor, y: &Tensor, d: &DotDims) -> Result<Tensor> {
    let x_kept = remaining(x.rank(), &d.lhs_contract, &d.lhs_batch);
    let y_kept = remaining(y.rank(), &d.rhs_contract, &d.rhs_batch);
    let nb = d.lhs_batch.len();
    // The product's dimensions: batch, x's contracted dimensions in x's order, y's free ones.
    let mut pre: Vec<usize> = d.rhs_batch.clone();
    pre.extend(argsort(&d.lhs_contract).iter().map(|&i| d.rhs_contract[i]));
    pre.extend(&y_kept);
    let k = x_kept.len();
    let leading = nb == 0 && k > 0 && x_kept.iter().enumerate().all(|(i, &a)| i == a);
    let p = if leading && (k > 1 || x.rank() > 2 || g.rank() > 2) {
        let (xs, gs) = (x.shape(), g.shape());
        let rows: i64 = xs[..k].iter().product();
        let x2 = x.reshape(&[rows, xs[k..].iter().product()])?;
        let g2 = g.reshape(&[rows, gs[k..].iter().product()])?;
        let dims = DotDims {
            lhs_batch: vec![],
            rhs_batch: vec![],
            lhs_contract: vec![0],
            rhs_contract: vec![0],
        };
        let out: Vec<i64> = xs[k..].iter().chain(&gs[k..]).copied().collect();
        x2.dot_general(&g2, dims)?.reshape(&out)?
    } else {
        let dims = DotDims {
            lhs_batch: d.lhs_batch.clone(),
            rhs_batch: (0..nb).collect(),
            lhs_contract: x_kept.clone(),
            rhs_contract: (nb..nb + k).collect(),
        };
        x.dot_general(g, dims)?
    };
    if pre.iter().enumerate().all(|(i, &a)| i == a) {
        Ok(p)
    } else {
        p.transpose(&argsort(&pre))
    }
}

/// Swaps the first two roles of a dimension spec (batch↔feature, out↔in).
fn swap_roles(s: &(usize, usize, Vec<usize>)) -> (usize, usize, Vec<usize>) {
    (s.1, s.0, s.2.clone())
}

/// Splits axis `src` into `(size1, rest)`.
fn reshape_axis_out_of(src: usize, size1: i64, x: &Tensor) -> Result<Tensor> {
    let mut shape = x.shape().to_vec();
    let size2 = shape[src] / size1;
    shape.splice(src..=src, [size1, size2]);
    x.reshape(&shape)
}

/// Merges axis `src` into axis `dst` (indexed without `src`), `src` becoming the major part.
fn reshape_axis_into(src: usize, dst: usize, x: &Tensor) -> Result<Tensor> {
    let mut perm: Vec<usize> = (0..x.rank()).filter(|&i| i != src).collect();
    perm.insert(dst, src);
    let moved = x.transpose(&perm)?;
    let mut shape: Vec<i64> = (0..x.rank())
        .filter(|&i| i != src)
        .map(|i| x.shape()[i])
        .collect();
    shape[dst] *= x.shape()[src];
    moved.reshape(&shape)
}

fn conv_vjp(a: &ConvAttrs, x: &Tensor, k: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor)> {
    let take =
        |t: &Tensor, dims: &[usize]| dims.iter().map(|&i| t.shape()[i]).collect::<Vec<i64>>();
    let (ls, rs, os) = (&a.dims.lhs.2, &a.dims.rhs.2, &a.dims.out.2);
    let in_s = take(x, ls);
    let win = take(k, rs);
    let out_s = take(g, os);

    // Input gradient: a convolution of g with the spatially reversed kernel, roles transposed.
    if a.batch_groups != 1 {
        return Err(Error::NoDerivative {
            op: "convolution".into(),
            detail: " with batch_groups > 1 with respect to its input".into(),
        });
    }
    let mut kk = k.clone();
    if a.feature_groups > 1 {
        kk = reshape_axis_out_of(a.dims.rhs.0, a.feature_groups, &kk)?;
        kk = reshape_axis_into(a.dims.rhs.0, a.dims.rhs.1, &kk)?;
    }
    let ext = extents(
        &in_s,
        &win,
        &a.strides,
        &out_s,
        &a.lhs_dilation,
        &a.rhs_dilation,
    );
    let lhs_pad = conv_lhs_vjp_padding(&ext, &a.padding);
    let dx = g.conv(
        &kk.reverse(rs)?,
        ConvAttrs {
            strides: a.lhs_dilation.clone(),
            padding: lhs_pad,
            lhs_dilation: a.strides.clone(),
            rhs_dilation: a.rhs_dilation.clone(),
            feature_groups: a.feature_groups,
            batch_groups: 1,
            dims: ConvDims {
                lhs: a.dims.out.clone(),
                rhs: swap_roles(&a.dims.rhs),
                out: a.dims.lhs.clone(),
            },
        },
    )?;

    // Kernel gradient: a convolution of x with g, batch acting as the contracted feature.
    let (fg, bg) = if a.feature_groups > 1 {
        (1, a.feature_groups)
    } else {
        (1, 1)
    };
    let rhs_pad = conv_rhs_vjp_padding(&ext, &a.padding);
    let dk = x.conv(
        g,
        ConvAttrs {
            strides: a.rhs_dilation.clone(),
            padding: rhs_pad,
            lhs_dilation: a.lhs_dilation.clone(),
            rhs_dilation: a.strides.clone(),
            feature_groups: fg,
            batch_groups: bg,
            dims: ConvDims {
                lhs: swap_roles(&a.dims.lhs),
                rhs: swap_roles(&a.dims.out),
                out: swap_roles(&a.dims.rhs),
            },
        },
    )?;
    Ok((dx, dk))
}

/// `[b, 0, 1, f]`-style layout string of one operand.
fn layout(spec: &(usize, usize, Vec<usize>), a: &str, b: &str) -> String {
    let rank = spec.2.len() + 2;
    let mut v = vec![String::new(); rank];
    v[spec.0] = a.into();
    v[spec.1] = b.into();
    for (i, &s) in spec.2.iter().enumerate() {
        v[s] = i.to_string();
    }
    format!("[{}]", v.join(", "))
}
