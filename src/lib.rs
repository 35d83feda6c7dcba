//! `basic`: a compiler frontend and trainer for BASIC-style contrastive image–text models
//! (Pham et al., 2021, "Combined Scaling for Zero-shot Transfer Learning").
//!
//! Models are written against [`trace::Tensor`], recorded as an [`ir::Graph`] with shapes and
//! dtypes checked at every step, differentiated by [`autodiff`], emitted as StableHLO by
//! [`lower`], and compiled and run through the PJRT C API by [`runtime`] on any plugin.
//!
//! ```no_run
//! use basic::{autodiff, lower, runtime, trace::Builder, DType};
//! # fn main() -> basic::Result<()> {
//! let b = Builder::new("quadratic");
//! let x = b.parameter("x", DType::F32, &[3])?;
//! let loss = x.square()?.sum_all()?;
//! let dx = autodiff::grad(&loss, &[x.clone()])?;
//! b.output("loss", &loss)?;
//! b.output("dx", &dx[0])?;
//! let text = lower::module(&b.finish(), &Default::default())?;
//!
//! let rt = runtime::Runtime::open(&runtime::Backend::Cpu, Some(1))?;
//! let exe = rt.client().compile(&text, &runtime::CompileOptions::single())?;
//! let out = exe.run(&[runtime::HostArray::new(&[3], &[1f32, 2., 3.])?])?;
//! assert_eq!(out[1].to_vec::<f32>()?, vec![2., 4., 6.]);
//! # Ok(()) }
//! ```

pub mod array;
pub mod autodiff;
pub mod coord;
pub mod data;
pub mod dtype;
pub mod error;
pub mod eval;
pub mod exec;
pub mod fs;
pub mod io;
pub mod ir;
pub mod lower;
pub mod model;
pub mod ops;
pub mod partition;
pub mod plan;
pub mod runtime;
pub mod seed;
pub mod target;
pub mod trace;
pub mod train;

pub use dtype::{DType, Element, TensorType};
pub use error::{Error, Result, StatusCode};
