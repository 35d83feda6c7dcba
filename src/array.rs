//! Typed host arrays: the values that go into and come out of executables.

use std::fmt;

use crate::dtype::{DType, Element};
use crate::error::{Error, Result};

/// A dense, row-major array on the host: element type, shape and little-endian bytes.
///
/// Invariant: `bytes.len() == product(shape) * dtype.size_in_bytes()`, checked by every
/// constructor, so a `HostArray` can always be uploaded as it is.
#[derive(Clone, PartialEq)]
pub struct HostArray {
    dtype: DType,
    shape: Vec<i64>,
    bytes: Vec<u8>,
}

/// Number of elements of a shape; an error for negative dimensions or overflow.
pub fn element_count(shape: &[i64]) -> Result<usize> {
    shape.iter().try_fold(1usize, |acc, &d| {
        if d < 0 {
            return Err(Error::Array(format!(
                "shape {shape:?} has a negative dimension"
            )));
        }
        acc.checked_mul(d as usize)
            .ok_or_else(|| Error::Array(format!("shape {shape:?} has too many elements")))
    })
}

impl HostArray {
    /// Builds an array from raw little-endian bytes.
    pub fn from_bytes(dtype: DType, shape: &[i64], bytes: Vec<u8>) -> Result<HostArray> {
        let n = element_count(shape)?;
        if bytes.len() != n * dtype.size_in_bytes() {
            return Err(Error::Array(format!(
                "{dtype}{shape:?} needs {} bytes but {} were given",
                n * dtype.size_in_bytes(),
                bytes.len()
            )));
        }
        Ok(HostArray {
            dtype,
            shape: shape.to_vec(),
            bytes,
        })
    }

    /// Builds an array from typed values; `values.len()` must equal the element count of `shape`.
    pub fn new<T: Element>(shape: &[i64], values: &[T]) -> Result<HostArray> {
        let n = element_count(shape)?;
        if values.len() != n {
            return Err(Error::Array(format!(
                "{}{shape:?} has {n} elements but {} values were given",
                T::DTYPE,
                values.len()
            )));
        }
        let mut bytes = Vec::with_capacity(n * T::DTYPE.size_in_bytes());
        for &v in values {
            v.write_le(&mut bytes);
        }
        Ok(HostArray {
            dtype: T::DTYPE,
            shape: shape.to_vec(),
            bytes,
        })
    }

    /// A rank-0 array.
    pub fn scalar<T: Element>(value: T) -> HostArray {
        let mut bytes = Vec::new();
        value.write_le(&mut bytes);
        HostArray {
            dtype: T::DTYPE,
            shape: vec![],
            bytes,
        }
    }

    /// An array of zeros.
    pub fn zeros(dtype: DType, shape: &[i64]) -> Result<HostArray> {
        let n = element_count(shape)?;
        Ok(HostArray {
            dtype,
            shape: shape.to_vec(),
            bytes: vec![0; n * dtype.size_in_bytes()],
        })
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn shape(&self) -> &[i64] {
        &self.shape
    }

    pub fn element_count(&self) -> usize {
        self.bytes.len() / self.dtype.size_in_bytes()
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// The elements as `T`; an error naming both dtypes when `T` is not the array's dtype.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        if T::DTYPE != self.dtype {
            return Err(Error::Array(format!(
                "cannot read a {} array as {}",
                self.dtype,
                T::DTYPE
            )));
        }
        Ok(self
            .bytes
            .chunks_exact(self.dtype.size_in_bytes())
            .map(T::read_le)
            .collect())
    }

    /// The elements widened to f64 (any dtype), for comparisons and printing.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        let w = self.dtype.size_in_bytes();
        self.bytes
            .chunks_exact(w)
            .map(|b| match self.dtype {
                DType::Pred => f64::from(b[0] != 0),
                DType::U8 => f64::from(b[0]),
                DType::S32 => f64::from(i32::read_le(b)),
                DType::U32 => f64::from(u32::read_le(b)),
                DType::S64 => i64::read_le(b) as f64,
                DType::U64 => u64::read_le(b) as f64,
                DType::BF16 => half::bf16::read_le(b).to_f64(),
                DType::F32 => f64::from(f32::read_le(b)),
                DType::F64 => f64::read_le(b),
            })
            .collect()
    }

    /// The same data under another shape with the same element count.
    pub fn reshape(mut self, shape: &[i64]) -> Result<HostArray> {
        if element_count(shape)? != self.element_count() {
            return Err(Error::Array(format!(
                "cannot reshape {}{:?} to {shape:?}",
                self.dtype, self.shape
            )));
        }
        self.shape = shape.to_vec();
        Ok(self)
    }

    /// The array with its dimensions permuted: dimension `i` of the result is dimension
    /// `perm[i]` of this one.
    pub fn transpose(&self, perm: &[usize]) -> Result<HostArray> {
        let r = self.shape.len();
        let mut seen = vec![false; r];
        if perm.len() != r
            || perm
                .iter()
                .any(|&p| p >= r || std::mem::replace(&mut seen[p], true))
        {
            return Err(Error::Array(format!(
                "{perm:?} is not a permutation of the {r} dimensions of {}{:?}",
                self.dtype, self.shape
            )));
        }
        let es = self.dtype.size_in_bytes();
        let dims: Vec<usize> = self.shape.iter().map(|&d| d as usize).collect();
        let mut strides = vec![1usize; r];
        for i in (0..r.saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * dims[i + 1];
        }
        let out_dims: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
        let out_strides: Vec<usize> = perm.iter().map(|&p| strides[p]).collect();
        let n = self.element_count();
        let mut bytes = Vec::with_capacity(n * es);
        let mut idx = vec![0usize; r];
        for _ in 0..n {
            let src: usize = idx.iter().zip(&out_strides).map(|(i, s)| i * s).sum();
            bytes.extend_from_slice(&self.bytes[src * es..(src + 1) * es]);
            for d in (0..r).rev() {
                idx[d] += 1;
                if idx[d] < out_dims[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        let shape: Vec<i64> = out_dims.iter().map(|&d| d as i64).collect();
        HostArray::from_bytes(self.dtype, &shape, bytes)
    }

    /// Splits into `parts` equal pieces along `axis` (the per-device shards of a tiled dimension).
    pub fn split(&self, axis: usize, parts: usize) -> Result<Vec<HostArray>> {
        let dim = *self.shape.get(axis).ok_or_else(|| {
            Error::Array(format!(
                "cannot split {}{:?} along axis {axis}: it has rank {}",
                self.dtype,
                self.shape,
                self.shape.len()
            ))
        })?;
        if parts == 0 || !(dim as usize).is_multiple_of(parts) {
            return Err(Error::Array(format!(
                "cannot split dimension {axis} of size {dim} of {}{:?} into {parts} equal parts",
                self.dtype, self.shape
            )));
        }
        let outer: usize = self.shape[..axis].iter().map(|&d| d as usize).product();
        let inner: usize = self.shape[axis + 1..]
            .iter()
            .map(|&d| d as usize)
            .product::<usize>()
            * self.dtype.size_in_bytes();
        let piece = dim as usize / parts;
        let mut shape = self.shape.clone();
        shape[axis] = piece as i64;
        (0..parts)
            .map(|p| {
                let mut bytes = Vec::with_capacity(outer * piece * inner);
                for o in 0..outer {
                    let start = (o * dim as usize + p * piece) * inner;
                    bytes.extend_from_slice(&self.bytes[start..start + piece * inner]);
                }
                HostArray::from_bytes(self.dtype, &shape, bytes)
            })
            .collect()
    }

    /// Joins arrays of equal dtype and shape (but for `axis`) along `axis`; inverse of [`split`](Self::split).
    pub fn concat(parts: &[HostArray], axis: usize) -> Result<HostArray> {
        let first = parts
            .first()
            .ok_or_else(|| Error::Array("cannot concatenate zero arrays".into()))?;
        let rank = first.shape.len();
        if axis >= rank {
            return Err(Error::Array(format!(
                "cannot concatenate rank-{rank} arrays along axis {axis}"
            )));
        }
        for p in parts {
            let same_rest = p.shape.len() == rank
                && (0..rank).all(|i| i == axis || p.shape[i] == first.shape[i]);
            if p.dtype != first.dtype || !same_rest {
                return Err(Error::Array(format!(
                    "cannot concatenate {}{:?} with {}{:?} along axis {axis}",
                    first.dtype, first.shape, p.dtype, p.shape
                )));
            }
        }
        let outer: usize = first.shape[..axis].iter().map(|&d| d as usize).product();
        let inner: usize = first.shape[axis + 1..]
            .iter()
            .map(|&d| d as usize)
            .product::<usize>()
            * first.dtype.size_in_bytes();
        let mut shape = first.shape.clone();
        shape[axis] = parts.iter().map(|p| p.shape[axis]).sum();
        let mut bytes = Vec::with_capacity(parts.iter().map(|p| p.bytes.len()).sum());
        for o in 0..outer {
            for p in parts {
                let chunk = p.shape[axis] as usize * inner;
                bytes.extend_from_slice(&p.bytes[o * chunk..(o + 1) * chunk]);
            }
        }
        HostArray::from_bytes(first.dtype, &shape, bytes)
    }
}

impl fmt::Debug for HostArray {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.to_f64_vec();
        let shown: Vec<f64> = v.iter().copied().take(8).collect();
        write!(
            f,
            "HostArray<{}{:?}>{:?}{}",
            self.dtype,
            self.shape,
            shown,
            if v.len() > 8 { "..." } else { "" }
        )
    }
}

/// An array of `dtype` from f64 values.
pub fn to_dtype(shape: &[i64], v: &[f64], dtype: DType) -> Result<HostArray> {
    match dtype {
        DType::F64 => HostArray::new(shape, v),
        DType::F32 => HostArray::new(shape, &v.iter().map(|&x| x as f32).collect::<Vec<_>>()),
        DType::BF16 => HostArray::new(
            shape,
            &v.iter()
                .map(|&x| half::bf16::from_f64(x))
                .collect::<Vec<_>>(),
        ),
        other => Err(Error::invalid(
            format!("parameter dtype {other}"),
            "parameters are f32, f64 or bf16",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_then_concat_round_trips() {
        let a = HostArray::new(&[2, 4, 3], &(0..24).map(|i| i as f32).collect::<Vec<_>>()).unwrap();
        let parts = a.split(1, 2).unwrap();
        assert_eq!(parts[0].shape(), &[2, 2, 3]);
        // Row 0 of part 1 starts at a[0, 2, 0] = 6.
        assert_eq!(parts[1].to_vec::<f32>().unwrap()[0], 6.0);
        assert_eq!(HostArray::concat(&parts, 1).unwrap(), a);
        assert!(a.split(2, 2).is_err());
    }

    #[test]
    fn transpose_moves_each_element_by_hand() {
        // a[i, j, k] = 100 i + 10 j + k, shape [2, 3, 4]; t = a.transpose([2, 0, 1]).
        let v: Vec<f32> = (0..24)
            .map(|n| (100 * (n / 12) + 10 * (n / 4 % 3) + n % 4) as f32)
            .collect();
        let a = HostArray::new(&[2, 3, 4], &v).unwrap();
        let t = a.transpose(&[2, 0, 1]).unwrap();
        assert_eq!(t.shape(), &[4, 2, 3]);
        let tv = t.to_vec::<f32>().unwrap();
        // t[k, i, j] = a[i, j, k]: t[3, 1, 2] = 123.
        assert_eq!(tv[3 * 6 + 3 + 2], 123.0);
        assert_eq!(t.transpose(&[1, 2, 0]).unwrap(), a);
        assert!(a.transpose(&[0, 0, 1]).is_err());
    }

    #[test]
    fn constructors_check_sizes_and_types() {
        assert!(HostArray::new(&[2, 2], &[1.0f32; 3]).is_err());
        assert!(HostArray::from_bytes(DType::F64, &[2], vec![0; 15]).is_err());
        let a = HostArray::new(&[2], &[1i32, -2]).unwrap();
        assert!(a.to_vec::<f32>().is_err());
        assert_eq!(a.to_f64_vec(), vec![1.0, -2.0]);
        let b = HostArray::new(&[3], &[true, false, true]).unwrap();
        assert_eq!(b.bytes(), &[1, 0, 1]);
    }
}
