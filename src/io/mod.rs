//! Files: safetensors reading and atomic writing.

pub mod executable;
pub mod interop;
pub mod safetensors;
