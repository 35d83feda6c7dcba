//! Model code: parameters by name and the building blocks of BASIC's towers.

pub mod params;
pub mod transformer;

pub use params::{Init, ParamSpec, Params};
