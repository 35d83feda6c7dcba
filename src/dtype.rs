//! Element types shared by the graph frontend and the runtime.

use std::fmt;
use std::str::FromStr;

use half::bf16;

use crate::error::{Error, Result};

/// The element types `basic` computes with.
///
/// `Pred` is stored as one byte per element (0 or 1), the layout PJRT uses for PRED buffers.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    Pred,
    U8,
    S32,
    U32,
    S64,
    U64,
    BF16,
    F32,
    F64,
}

impl DType {
    pub const ALL: [DType; 9] = [
        DType::Pred,
        DType::U8,
        DType::S32,
        DType::U32,
        DType::S64,
        DType::U64,
        DType::BF16,
        DType::F32,
        DType::F64,
    ];

    /// Bytes per element on the host and in PJRT buffers.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::Pred | DType::U8 => 1,
            DType::BF16 => 2,
            DType::S32 | DType::U32 | DType::F32 => 4,
            DType::S64 | DType::U64 | DType::F64 => 8,
        }
    }

    /// The element type as StableHLO spells it inside `tensor<...>`.
    pub fn mlir_name(self) -> &'static str {
        match self {
            DType::Pred => "i1",
            DType::U8 => "ui8",
            DType::S32 => "i32",
            DType::U32 => "ui32",
            DType::S64 => "i64",
            DType::U64 => "ui64",
            DType::BF16 => "bf16",
            DType::F32 => "f32",
            DType::F64 => "f64",
        }
    }

    /// Parses the StableHLO element type name (`f32`, `i1`, `ui32`, ...).
    pub fn from_mlir_name(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.mlir_name() == name)
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::BF16 | DType::F32 | DType::F64)
    }

    pub fn is_integer(self) -> bool {
        matches!(
            self,
            DType::U8 | DType::S32 | DType::U32 | DType::S64 | DType::U64
        )
    }

    pub fn is_unsigned(self) -> bool {
        matches!(self, DType::U8 | DType::U32 | DType::U64)
    }

    /// The short name users type on the command line and in configs.
    pub fn name(self) -> &'static str {
        match self {
            DType::Pred => "pred",
            DType::U8 => "u8",
            DType::S32 => "s32",
            DType::U32 => "u32",
            DType::S64 => "s64",
            DType::U64 => "u64",
            DType::BF16 => "bf16",
            DType::F32 => "f32",
            DType::F64 => "f64",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DType {
    type Err = Error;
    fn from_str(s: &str) -> Result<DType> {
        DType::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| {
                Error::invalid(
                    format!("dtype `{s}`"),
                    format!("use one of {}", DType::ALL.map(|d| d.name()).join(", ")),
                )
            })
    }
}

/// A Rust scalar type that maps one-to-one onto a [`DType`].
pub trait Element: Copy + Send + Sync + 'static + fmt::Debug {
    const DTYPE: DType;
    /// Appends the little-endian bytes of `self`.
    fn write_le(self, out: &mut Vec<u8>);
    /// Reads one element from exactly `size_in_bytes` little-endian bytes.
    fn read_le(bytes: &[u8]) -> Self;
}

macro_rules! element_le {
    ($t:ty, $d:expr) => {
        impl Element for $t {
            const DTYPE: DType = $d;
            fn write_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn read_le(bytes: &[u8]) -> Self {
                <$t>::from_le_bytes(bytes.try_into().expect("element width"))
            }
        }
    };
}

element_le!(u8, DType::U8);
element_le!(i32, DType::S32);
element_le!(u32, DType::U32);
element_le!(i64, DType::S64);
element_le!(u64, DType::U64);
element_le!(f32, DType::F32);
element_le!(f64, DType::F64);

impl Element for bf16 {
    const DTYPE: DType = DType::BF16;
    fn write_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_bits().to_le_bytes());
    }
    fn read_le(bytes: &[u8]) -> Self {
        bf16::from_bits(u16::from_le_bytes([bytes[0], bytes[1]]))
    }
}

impl Element for bool {
    const DTYPE: DType = DType::Pred;
    fn write_le(self, out: &mut Vec<u8>) {
        out.push(self as u8);
    }
    fn read_le(bytes: &[u8]) -> Self {
        bytes[0] != 0
    }
}

/// A ranked tensor type: element type and static shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorType {
    pub dtype: DType,
    pub shape: Vec<i64>,
}

impl TensorType {
    /// Parses `tensor<2x3xf32>` / `tensor<f32>` (an encoding after a comma is ignored).
    pub fn parse(text: &str) -> Result<TensorType> {
        let inner = text
            .trim()
            .strip_prefix("tensor<")
            .and_then(|s| s.strip_suffix('>'))
            .ok_or_else(|| Error::Program(format!("expected a tensor type, found `{text}`")))?;
        let inner = inner.split(',').next().unwrap_or(inner).trim();
        let parts: Vec<&str> = inner.split('x').collect();
        let (dims, elem) = parts.split_at(parts.len() - 1);
        let dtype = DType::from_mlir_name(elem[0]).ok_or_else(|| {
            Error::Program(format!(
                "element type `{}` in `{text}` is not supported",
                elem[0]
            ))
        })?;
        let shape = dims
            .iter()
            .map(|d| {
                d.parse::<i64>().map_err(|_| {
                    Error::Program(format!(
                        "dimension `{d}` in `{text}` is not static; only static shapes are supported"
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(TensorType { dtype, shape })
    }
}

impl std::fmt::Display for TensorType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "tensor<")?;
        for d in &self.shape {
            write!(f, "{d}x")?;
        }
        write!(f, "{}>", self.dtype.mlir_name())
    }
}

impl TensorType {
    pub fn new(dtype: DType, shape: &[i64]) -> TensorType {
        TensorType {
            dtype,
            shape: shape.to_vec(),
        }
    }

    pub fn scalar(dtype: DType) -> TensorType {
        TensorType {
            dtype,
            shape: vec![],
        }
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Number of elements (1 for a scalar).
    pub fn element_count(&self) -> i64 {
        self.shape.iter().product()
    }

    /// Size in bytes of a dense array of this type.
    pub fn size_in_bytes(&self) -> i64 {
        self.element_count() * self.dtype.size_in_bytes() as i64
    }

    pub fn with_dtype(&self, dtype: DType) -> TensorType {
        TensorType {
            dtype,
            shape: self.shape.clone(),
        }
    }
}
