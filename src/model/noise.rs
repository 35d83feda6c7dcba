//! Training-time randomness: dropout and stochastic depth (drop-path), driven by an explicit
//! threefry key. Keys are folded deterministically by static salts (tower, layer, branch) and by
//! the micro-batch index, so BASIC's passes 1 and 3 draw the same masks for a micro-batch.

use crate::dtype::DType;
use crate::error::Result;
use crate::trace::Tensor;

/// A key and the rates it drives.
#[derive(Clone, Debug)]
pub struct Noise {
    /// `u64[2]` threefry key.
    pub key: Tensor,
    pub dropout: f64,
    pub drop_path: f64,
}

impl Noise {
    fn with_key(&self, key: Tensor) -> Noise {
        Noise {
            key,
            ..self.clone()
        }
    }

    /// A key for a static salt: `threefry(key ⊕ [salt, salt·φ])`'s next state.
    pub fn fold(&self, salt: u64) -> Result<Noise> {
        let b = self.key.builder();
        let c = b.constant(&[2], &[salt, salt.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1])?;
        let (k, _) = self.key.xor(&c)?.random_bits(&[1])?;
        Ok(self.with_key(k))
    }

    /// A key for a traced s32 index (a loop counter).
    pub fn fold_index(&self, index: &Tensor) -> Result<Noise> {
        let i = index.convert(DType::U64)?.broadcast_to(&[2])?;
        let (k, _) = self.key.xor(&i)?.random_bits(&[1])?;
        Ok(self.with_key(k))
    }

    /// Inverted dropout of `x` (identity when the rate is 0).
    pub fn dropout(&self, x: &Tensor, salt: u64) -> Result<Tensor> {
        if self.dropout <= 0.0 {
            return Ok(x.clone());
        }
        let keep = 1.0 - self.dropout;
        let (_, m) = self.fold(salt)?.key.random_bernoulli(keep, x.shape())?;
        x.mul(&m.convert(x.dtype())?)?.div_scalar(keep)
    }

    /// Stochastic depth: drops the whole residual branch `x [B, ...]` per example.
    pub fn drop_path(&self, x: &Tensor, salt: u64) -> Result<Tensor> {
        if self.drop_path <= 0.0 {
            return Ok(x.clone());
        }
        let keep = 1.0 - self.drop_path;
        let mut shape = vec![1; x.rank()];
        shape[0] = x.shape()[0];
        let (_, m) = self.fold(salt)?.key.random_bernoulli(keep, &shape)?;
        x.mul(&m.convert(x.dtype())?.broadcast_to(x.shape())?)?
            .div_scalar(keep)
    }

    /// Both, on a residual branch.
    pub fn branch(&self, x: &Tensor, salt: u64) -> Result<Tensor> {
        self.drop_path(&self.dropout(x, 2 * salt)?, 2 * salt + 1)
    }
}
