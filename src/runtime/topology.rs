//! Topology descriptions: the devices of a TPU slice or a GPU host described without the hardware,
//! and compiling for them with no client (PJRT's compile-only path).
//!
//! `PJRT_TopologyDescription_Create` builds the description from a name and typed options,
//! `PJRT_Compile` compiles a program for it, and the result is a [`CompiledProgram`]: memory
//! statistics, the optimized program and the serialized executable, but no way to run it — the
//! type has no execute method. A machine of the target loads the serialized bytes with
//! [`Client::load_serialized`](super::Client::load_serialized).

use std::ptr::{null, null_mut};
use std::sync::Arc;

use super::executable::{program_name, CompiledProgram, RawExecutable};
use super::ffi;
use super::named::{NamedOptions, OptionValue};
use super::options::CompileOptions;
use super::plugin::{plugin_str, Plugin};
use super::program::Signature;
use crate::error::{Error, Result};

/// What a `PJRT_DeviceDescription` says of one device.
#[derive(Clone, Debug, PartialEq)]
pub struct Description {
    /// The device id (used in device assignments).
    pub id: i32,
    /// The process (host) that drives the device.
    pub process_index: i32,
    /// The device kind, e.g. `cpu`, `TPU v4`, `NVIDIA H100 80GB HBM3`.
    pub kind: String,
    /// The plugin's short description, e.g. `TFRT_CPU_0`.
    pub text: String,
    /// The plugin's own attributes (a TPU's `coords` and `core_on_chip`, ...).
    pub attributes: Vec<(String, OptionValue)>,
}

/// Reads a device description. Entries the plugin lacks (process index, attributes) read as 0 and
/// none.
pub(crate) fn read_description(
    plugin: &Plugin,
    desc: *mut ffi::PJRT_DeviceDescription,
) -> Result<Description> {
    let mut id = args!(PJRT_DeviceDescription_Id_Args {
        device_description: desc,
        id: 0,
    });
    pjrt!(
        plugin,
        device_description_id,
        "PJRT_DeviceDescription_Id",
        &mut id
    )?;
    let mut kind = args!(PJRT_DeviceDescription_String_Args {
        device_description: desc,
        value: null(),
        value_size: 0,
    });
    pjrt!(
        plugin,
        device_description_kind,
        "PJRT_DeviceDescription_Kind",
        &mut kind
    )?;
    let mut text = args!(PJRT_DeviceDescription_String_Args {
        device_description: desc,
        value: null(),
        value_size: 0,
    });
    pjrt!(
        plugin,
        device_description_to_string,
        "PJRT_DeviceDescription_ToString",
        &mut text
    )?;
    let mut process = args!(PJRT_DeviceDescription_ProcessIndex_Args {
        device_description: desc,
        process_index: 0,
    });
    let process_index = match pjrt!(
        plugin,
        device_description_process_index,
        "PJRT_DeviceDescription_ProcessIndex",
        &mut process
    ) {
        Ok(()) => process.process_index,
        Err(Error::MissingEntry { .. }) => 0,
        Err(e) => return Err(e),
    };
    let mut attrs = args!(PJRT_DeviceDescription_Attributes_Args {
        device_description: desc,
        num_attributes: 0,
        attributes: null(),
    });
    let attributes = match pjrt!(
        plugin,
        device_description_attributes,
        "PJRT_DeviceDescription_Attributes",
        &mut attrs
    ) {
        // SAFETY: the description owns `num_attributes` values.
        Ok(()) => unsafe { read_named(attrs.attributes, attrs.num_attributes) },
        Err(Error::MissingEntry { .. }) => Vec::new(),
        Err(e) => return Err(e),
    };
    Ok(Description {
        id: id.id,
        process_index,
        // SAFETY: the description owns both strings.
        kind: unsafe { plugin_str(kind.value, kind.value_size) },
        text: unsafe { plugin_str(text.value, text.value_size) },
        attributes,
    })
}

/// Copies a plugin-owned `PJRT_NamedValue` array.
///
/// # Safety
/// `values` must be null or point to `n` valid named values.
pub(crate) unsafe fn read_named(
    values: *const ffi::PJRT_NamedValue,
    n: usize,
) -> Vec<(String, OptionValue)> {
    if values.is_null() {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let nv = &*values.add(i);
        let name = plugin_str(nv.name, nv.name_size);
        let value = match nv.type_ {
            ffi::NAMED_VALUE_STRING => {
                OptionValue::String(plugin_str(nv.value.string_value, nv.value_size))
            }
            ffi::NAMED_VALUE_INT64 => OptionValue::Int64(nv.value.int64_value),
            ffi::NAMED_VALUE_INT64_LIST => OptionValue::Int64List(if nv.value_size == 0 {
                Vec::new()
            } else {
                std::slice::from_raw_parts(nv.value.int64_array_value, nv.value_size).to_vec()
            }),
            ffi::NAMED_VALUE_FLOAT => OptionValue::Float(nv.value.float_value),
            ffi::NAMED_VALUE_BOOL => OptionValue::Bool(nv.value.bool_value),
            _ => continue,
        };
        out.push((name, value));
    }
    out
}

struct TopologyInner {
    plugin: Arc<Plugin>,
    raw: *mut ffi::PJRT_TopologyDescription,
}

// SAFETY: a topology description is immutable after creation; the plugin owns it.
unsafe impl Send for TopologyInner {}
unsafe impl Sync for TopologyInner {}

impl Drop for TopologyInner {
    fn drop(&mut self) {
        destroy!(
            self.plugin,
            topology_description_destroy,
            "PJRT_TopologyDescription_Destroy",
            PJRT_TopologyDescription_Destroy_Args { topology: self.raw }
        );
    }
}

/// A described target: a plugin's topology, with its devices, and nothing attached.
#[derive(Clone)]
pub struct Topology {
    inner: Arc<TopologyInner>,
    name: String,
    platform: String,
    platform_version: String,
    devices: Vec<Description>,
}

impl Topology {
    /// `PJRT_TopologyDescription_Create` with a topology name (libtpu's `v5e:2x2`; empty for the
    /// CUDA plugin, which takes its topology as an option) and checked options.
    pub fn new(plugin: Arc<Plugin>, name: &str, options: &NamedOptions) -> Result<Topology> {
        let raw_opts = options.raw()?;
        let mut a = args!(PJRT_TopologyDescription_Create_Args {
            topology_name: name.as_ptr().cast(),
            topology_name_size: name.len(),
            create_options: raw_opts.values.as_ptr(),
            num_options: raw_opts.values.len(),
            topology: null_mut(),
        });
        pjrt!(
            plugin,
            topology_description_create,
            "PJRT_TopologyDescription_Create",
            &mut a
        )?;
        if a.topology.is_null() {
            return Err(Error::Pjrt {
                call: "PJRT_TopologyDescription_Create",
                code: "INTERNAL",
                message: format!("the plugin returned no topology for `{name}`"),
            });
        }
        // Owned from here on: destroyed on any error below.
        let inner = Arc::new(TopologyInner {
            plugin: plugin.clone(),
            raw: a.topology,
        });
        let string = |version: bool| -> Result<String> {
            let mut s = args!(PJRT_TopologyDescription_String_Args {
                topology: inner.raw,
                value: null(),
                value_size: 0,
            });
            if version {
                pjrt!(
                    plugin,
                    topology_description_platform_version,
                    "PJRT_TopologyDescription_PlatformVersion",
                    &mut s
                )?;
            } else {
                pjrt!(
                    plugin,
                    topology_description_platform_name,
                    "PJRT_TopologyDescription_PlatformName",
                    &mut s
                )?;
            }
            // SAFETY: the topology owns the string.
            Ok(unsafe { plugin_str(s.value, s.value_size) })
        };
        let platform = string(false)?;
        let platform_version = string(true).unwrap_or_default();
        let mut d = args!(PJRT_TopologyDescription_GetDeviceDescriptions_Args {
            topology: inner.raw,
            descriptions: null(),
            num_descriptions: 0,
        });
        pjrt!(
            plugin,
            topology_description_get_device_descriptions,
            "PJRT_TopologyDescription_GetDeviceDescriptions",
            &mut d
        )?;
        let raw_descs = if d.num_descriptions == 0 {
            Vec::new()
        } else {
            // SAFETY: the topology owns `num_descriptions` description pointers.
            unsafe { std::slice::from_raw_parts(d.descriptions, d.num_descriptions) }.to_vec()
        };
        let devices = raw_descs
            .into_iter()
            .map(|p| read_description(&plugin, p))
            .collect::<Result<Vec<_>>>()?;
        Ok(Topology {
            inner,
            name: name.to_string(),
            platform,
            platform_version,
            devices,
        })
    }

    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.inner.plugin
    }

    /// The name it was created with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `tpu`, `cuda`, ...
    pub fn platform(&self) -> &str {
        &self.platform
    }

    pub fn platform_version(&self) -> &str {
        &self.platform_version
    }

    /// Every device of the target, in the plugin's order.
    pub fn devices(&self) -> &[Description] {
        &self.devices
    }

    /// How many processes (hosts) drive the devices.
    pub fn num_processes(&self) -> usize {
        let mut p: Vec<i32> = self.devices.iter().map(|d| d.process_index).collect();
        p.sort_unstable();
        p.dedup();
        p.len()
    }

    /// The first `n` devices in the order a job's mesh takes them: by process, then id (as a
    /// running job orders its global devices), so that each host's devices are consecutive
    /// mesh positions.
    pub fn job_order(&self, n: usize) -> Vec<&Description> {
        let mut all: Vec<&Description> = self.devices.iter().collect();
        all.sort_by_key(|d| (d.process_index, d.id));
        all.truncate(n);
        all
    }

    /// Compiles StableHLO text for this target. The device assignment must name the target's
    /// devices (by default, the first `num_devices` of them in [`Topology::job_order`]).
    pub fn compile(&self, program: &str, options: &CompileOptions) -> Result<CompiledProgram> {
        let mut options = options.clone();
        options.validate()?;
        if options.num_devices() > self.devices.len() {
            return Err(Error::NotEnoughDevices {
                what: format!(
                    "a program over {} replica(s) × {} partition(s) for target `{}`",
                    options.num_replicas, options.num_partitions, self.name
                ),
                needed: options.num_devices(),
                available: self.devices.len(),
                platform: format!("target `{}`", self.name),
                fix: "use a mesh no larger than the target's devices, or a larger topology".into(),
            });
        }
        if options.device_assignment.is_none() {
            options.device_assignment = Some(
                self.job_order(options.num_devices())
                    .iter()
                    .map(|d| i64::from(d.id))
                    .collect(),
            );
        }
        for id in options.devices() {
            if !self.devices.iter().any(|d| i64::from(d.id) == id) {
                return Err(Error::invalid(
                    format!(
                        "device assignment: device id {id} of target `{}`",
                        self.name
                    ),
                    "use ids that `basic devices --target` lists",
                ));
            }
        }
        let signature = Signature::from_program(program)?;
        let format = "mlir";
        let prog = args!(PJRT_Program {
            code: program.as_ptr() as *mut _,
            code_size: program.len(),
            format: format.as_ptr().cast(),
            format_size: format.len(),
        });
        let opts = options.encode();
        let plugin = &self.inner.plugin;
        let mut a = args!(PJRT_Compile_Args {
            topology: self.inner.raw,
            program: &prog,
            compile_options: opts.as_ptr().cast(),
            compile_options_size: opts.len(),
            client: null_mut(),
            executable: null_mut(),
        });
        pjrt!(plugin, compile, "PJRT_Compile", &mut a)?;
        Ok(CompiledProgram {
            raw: RawExecutable::own(plugin.clone(), a.executable),
            name: program_name(program),
            signature,
            options,
            platform: self.platform.clone(),
        })
    }
}

impl std::fmt::Debug for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topology")
            .field("name", &self.name)
            .field("platform", &self.platform)
            .field("devices", &self.devices.len())
            .finish()
    }
}
