//! Training: BASIC's step as one program, optimizers, parameter initialisation.

pub mod aot;
pub mod checkpoint;
pub mod hosts;
pub mod init;
pub mod optim;
pub mod persist;
pub mod plot;
pub mod run;
pub mod setup;
pub mod sharding;
pub mod step;
pub mod streamed;

pub use setup::{LayoutChoices, StepChoices, StepSetup};
pub use sharding::Layout;
pub use step::{grad_graph, train_graph, StepOptions};
