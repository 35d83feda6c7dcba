//! `basic`: a compiler frontend and trainer for BASIC-style contrastive image–text models
//! (Pham et al., 2021, "Combined Scaling for Zero-shot Transfer Learning").
//!
//! Programs are StableHLO text, compiled and run through the PJRT C API on any plugin (CPU, GPU,
//! TPU). See [`runtime`] for the layer everything else builds on.

pub mod dtype;
pub mod error;
pub mod runtime;

pub use dtype::{DType, Element};
pub use error::{Error, Result};
