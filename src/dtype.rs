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
            .ok_or_else(|| Error::InvalidArgument {
                what: format!("dtype `{s}`"),
                fix: format!("use one of {}", DType::ALL.map(|d| d.name()).join(", ")),
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
