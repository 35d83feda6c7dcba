//! Functions built from primitives only. They need no derivative code of their own: the sweep
//! differentiates the primitives they are made of.

use crate::dtype::DType;
use crate::error::{shape_err, Result};
use crate::ir::{ReduceKind, Window};

use super::tensor::keep_dims;
use super::Tensor;

impl Tensor {
    fn axis(&self, axis: isize, op: &str) -> Result<usize> {
        let r = self.rank() as isize;
        let a = if axis < 0 { axis + r } else { axis };
        if a < 0 || a >= r {
            return shape_err(op, format!("axis {axis} out of range for {}", self.ty()));
        }
        Ok(a as usize)
    }

    /// Mean over `axes`.
    pub fn mean(&self, axes: &[usize]) -> Result<Tensor> {
        let n: i64 = axes.iter().map(|&a| self.shape()[a]).product();
        self.sum(axes)?.div_scalar(n as f64)
    }

    pub fn mean_keepdims(&self, axes: &[usize]) -> Result<Tensor> {
        self.mean(axes)?.reshape(&keep_dims(self.shape(), axes))
    }

    /// Population variance over `axes`: mean((x - mean)²).
    pub fn variance(&self, axes: &[usize]) -> Result<Tensor> {
        let mu = self.mean_keepdims(axes)?;
        self.sub(&mu)?.square()?.mean(axes)
    }

    /// log Σ exp(x) over `axes`, stabilised by the (gradient-free) maximum.
    pub fn logsumexp(&self, axes: &[usize]) -> Result<Tensor> {
        let m = self.max_keepdims(axes)?;
        // The shift cancels exactly; holding it constant keeps ties in the max from splitting
        // the gradient.
        let m = stop_gradient(&m)?;
        let s = self.sub(&m)?.exp()?.sum(axes)?.log()?;
        s.add(&m.reshape(s.shape())?)
    }

    /// `x - logsumexp(x)` along `axis` (negative counts from the end).
    pub fn log_softmax(&self, axis: isize) -> Result<Tensor> {
        let a = self.axis(axis, "log_softmax")?;
        let lse = self
            .logsumexp(&[a])?
            .reshape(&keep_dims(self.shape(), &[a]))?;
        self.sub(&lse)
    }

    /// `exp(x) / Σ exp(x)` along `axis`.
    pub fn softmax(&self, axis: isize) -> Result<Tensor> {
        let a = self.axis(axis, "softmax")?;
        let m = stop_gradient(&self.max_keepdims(&[a])?)?;
        let e = self.sub(&m)?.exp()?;
        e.div(&e.sum_keepdims(&[a])?)
    }

    /// Normalises over the last axis to zero mean and unit variance: (x - μ) / √(σ² + ε).
    /// Scale and bias are applied by the caller (the model's parameters).
    pub fn layer_norm(&self, eps: f64) -> Result<Tensor> {
        let a = self.axis(-1, "layer_norm")?;
        let mu = self.mean_keepdims(&[a])?;
        let xc = self.sub(&mu)?;
        let var = xc.square()?.mean_keepdims(&[a])?;
        xc.mul(&var.add_scalar(eps)?.rsqrt()?)
    }

    /// x / max(‖x‖₂, ε) along `axis`.
    pub fn l2_normalize(&self, axis: isize, eps: f64) -> Result<Tensor> {
        let a = self.axis(axis, "l2_normalize")?;
        let ss = self.square()?.sum_keepdims(&[a])?;
        self.mul(&ss.max_scalar(eps * eps)?.rsqrt()?)
    }

    /// Mean cross-entropy of `self` (logits `[N, C]`) against integer `labels` (`[N]`):
    /// mean over rows of `logsumexp(row) - row[label]`.
    pub fn cross_entropy(&self, labels: &Tensor) -> Result<Tensor> {
        if self.rank() != 2 || labels.shape() != [self.shape()[0]] || !labels.dtype().is_integer() {
            return shape_err(
                "cross_entropy",
                format!(
                    "expects logits [N, C] and integer labels [N], got {} and {}",
                    self.ty(),
                    labels.ty()
                ),
            );
        }
        let (n, c) = (self.shape()[0], self.shape()[1]);
        let classes = self.builder().iota(labels.dtype(), &[n, c], 1)?;
        let onehot = classes
            .eq(&labels.reshape(&[n, 1])?)?
            .convert(self.dtype())?;
        let logp = self.log_softmax(-1)?;
        logp.mul(&onehot)?.sum_all()?.div_scalar(-(n as f64))
    }

    /// Max pooling over NHWC images.
    pub fn max_pool2d(
        &self,
        window: [i64; 2],
        strides: [i64; 2],
        padding: [(i64, i64); 2],
    ) -> Result<Tensor> {
        self.reduce_window(ReduceKind::Max, pool_window(window, strides, padding))
    }

    /// Average pooling over NHWC images; padded positions are not counted.
    pub fn avg_pool2d(
        &self,
        window: [i64; 2],
        strides: [i64; 2],
        padding: [(i64, i64); 2],
    ) -> Result<Tensor> {
        let w = pool_window(window, strides, padding);
        let s = self.reduce_window(ReduceKind::Sum, w.clone())?;
        let ones = self.ones_like()?;
        let count = ones.reduce_window(ReduceKind::Sum, w)?;
        s.div(&stop_gradient(&count)?)
    }

    /// Uniform floats in [0, 1) of `shape` from a `u64[2]` key; returns (next key, values).
    pub fn random_uniform(&self, shape: &[i64], dtype: DType) -> Result<(Tensor, Tensor)> {
        let (key, bits) = self.random_bits(shape)?;
        // Keep 23 random mantissa bits under the exponent of 1.0: a float in [1, 2), minus 1.
        let b = self.builder();
        let mantissa = bits.shift_right_logical(&b.full(9.0, DType::U32, shape)?)?;
        let one_bits = b.full(f64::from(0x3F80_0000u32), DType::U32, shape)?;
        let f = mantissa
            .or(&one_bits)?
            .bitcast(DType::F32)?
            .sub_scalar(1.0)?;
        Ok((key, f.convert(dtype)?))
    }

    /// Standard normal floats (Box–Muller) of `shape`; returns (next key, values).
    pub fn random_normal(&self, shape: &[i64], dtype: DType) -> Result<(Tensor, Tensor)> {
        let (k1, u1) = self.random_uniform(shape, DType::F32)?;
        let (k2, u2) = k1.random_uniform(shape, DType::F32)?;
        // u1 ∈ [0, 1) → 1 - u1 ∈ (0, 1], so the log is finite.
        let r = u1.neg()?.add_scalar(1.0)?.log()?.mul_scalar(-2.0)?.sqrt()?;
        let z = r.mul(&u2.mul_scalar(2.0 * std::f64::consts::PI)?.cos()?)?;
        Ok((k2, z.convert(dtype)?))
    }

    /// Booleans that are true with probability `p`; returns (next key, mask).
    pub fn random_bernoulli(&self, p: f64, shape: &[i64]) -> Result<(Tensor, Tensor)> {
        let (k, u) = self.random_uniform(shape, DType::F32)?;
        Ok((k, u.lt(&self.builder().full(p, DType::F32, shape)?)?))
    }
}

fn pool_window(window: [i64; 2], strides: [i64; 2], padding: [(i64, i64); 2]) -> Window {
    Window {
        dims: vec![1, window[0], window[1], 1],
        strides: vec![1, strides[0], strides[1], 1],
        padding: vec![(0, 0), padding[0], padding[1], (0, 0)],
    }
}

/// The value of `x` with no gradient flowing back through it.
pub fn stop_gradient(x: &Tensor) -> Result<Tensor> {
    x.builder().push1(crate::ir::StopGradient, &[x])
}
