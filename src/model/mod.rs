//! Model code: parameters by name and BASIC's towers. Files read like the paper; none of them
//! knows about devices or sharding beyond naming logical axes.

pub mod bert;
pub mod coatnet;
pub mod config;
pub mod dual;
pub mod inference;
pub mod names;
pub mod noise;
pub mod params;
pub mod scope;
pub mod text;
pub mod tiled;
pub mod transformer;
pub mod vit;

pub use config::ModelConfig;
pub use names::Modality;
pub use params::{Init, ParamSpec, Params};
pub use scope::{trace_specs, Scope, Tower};
