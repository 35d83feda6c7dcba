//! Files and objects: safetensors reading and atomic writing, executables, interop, and storage by URL.

pub mod executable;
pub mod interop;
pub mod safetensors;
pub mod storage;
