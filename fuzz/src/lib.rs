//! The fuzz targets' shared harness (see `harness.rs`).

#[path = "../harness.rs"]
mod harness;

pub use harness::*;
