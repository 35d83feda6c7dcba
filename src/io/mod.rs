//! Files: safetensors reading and atomic writing.

pub mod safetensors;
