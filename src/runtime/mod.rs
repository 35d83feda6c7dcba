//! The PJRT runtime: plugins, clients, devices, buffers, compile options and executables.
//!
//! This module knows nothing of graphs: it takes StableHLO text and typed host arrays.
//!
//! ```no_run
//! use basic::runtime::{Backend, CompileOptions, HostArray, Runtime};
//! # fn main() -> basic::Result<()> {
//! let rt = Runtime::open(&Backend::Cpu, Some(1))?;
//! let exe = rt.client().compile(
//!     "func.func @main(%a: tensor<2xf32>) -> tensor<2xf32> {\n  %0 = stablehlo.add %a, %a : tensor<2xf32>\n  return %0 : tensor<2xf32>\n}",
//!     &CompileOptions::single(),
//! )?;
//! let out = exe.run(&[HostArray::new(&[2], &[1.0f32, 2.0])?])?;
//! assert_eq!(out[0].to_vec::<f32>()?, vec![2.0, 4.0]);
//! # Ok(()) }
//! ```

#[macro_use]
mod call;
mod buffer;
mod client;
mod discovery;
mod executable;
pub mod ffi;
pub mod host;
pub mod kv;
mod named;
mod options;
mod plugin;
mod program;
mod topology;

use std::sync::Arc;

pub use crate::array::{element_count, HostArray};
pub use crate::dtype::TensorType;
pub use buffer::{ArgBuffer, DeviceBuffer};
pub use client::{Client, ClientOptions, DeviceInfo};
pub use discovery::{
    find_cpu_plugins, find_cuda_data_dir, find_plugin, Backend, KnownPlugin, CPU_PLUGINS,
    LOCAL_DIR, PLUGIN_ENV,
};
pub use executable::{CompiledProgram, Costs, Executable, MemoryStats};
pub use kv::{KeyValueStore, LocalStore, Prefixed};
pub use named::{
    NamedOptions, OptionKind, OptionSchema, OptionValue, CPU_CLIENT, CUDA_CLIENT, CUDA_TOPOLOGY,
    TPU_TOPOLOGY,
};
pub use options::{CompileOptions, DebugValue, Partitioner, MAX_DEVICES};
pub use plugin::{AttrValue, Plugin};
pub use program::{parse_hlo_sharding, Param, Signature, Tiling};
pub use topology::{Description, Topology};

use crate::error::Result;

/// A plugin and a client on it: what every command that compiles or runs starts from.
#[derive(Clone, Debug)]
pub struct Runtime {
    plugin: Arc<Plugin>,
    client: Client,
}

impl Runtime {
    /// Finds the backend's plugin, loads it and creates a client. `cpu_devices` sets the number of
    /// virtual CPU devices (sent only when given).
    pub fn open(backend: &Backend, cpu_devices: Option<usize>) -> Result<Runtime> {
        let path = find_plugin(backend)?;
        Runtime::open_path(&path, cpu_devices)
    }

    /// Finds the backend's plugin, loads it and creates a client with `options`.
    pub fn open_with(backend: &Backend, options: &ClientOptions) -> Result<Runtime> {
        let path = find_plugin(backend)?;
        let plugin = Plugin::load(&path)?;
        let client = Client::new(plugin.clone(), options)?;
        Ok(Runtime { plugin, client })
    }

    /// Loads the plugin at `path` and creates a client.
    pub fn open_path(path: &std::path::Path, cpu_devices: Option<usize>) -> Result<Runtime> {
        let plugin = Plugin::load(path)?;
        let client = Client::new(
            plugin.clone(),
            &ClientOptions {
                cpu_device_count: cpu_devices.map(|n| n as i64),
                ..Default::default()
            },
        )?;
        Ok(Runtime { plugin, client })
    }

    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    pub fn client(&self) -> &Client {
        &self.client
    }
}
