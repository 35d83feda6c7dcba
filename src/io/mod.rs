//! Files: safetensors reading and atomic writing.

pub mod executable;
pub mod safetensors;
