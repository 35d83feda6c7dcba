//! Clients and their devices: safe, RAII types over the PJRT C API.
//!
//! Ownership: a [`Client`] owns the `PJRT_Client`; every [`DeviceBuffer`](super::DeviceBuffer) and
//! [`Executable`] holds an `Arc` of the client's inner state, so the client is destroyed after the
//! last object made from it. Each PJRT object is destroyed exactly once, in `Drop`.

use std::ffi::c_void;
use std::ptr::{null, null_mut};
use std::sync::Arc;

use super::buffer::{upload_to, DeviceBuffer};
use super::executable::{program_name, Executable};
use super::ffi;
use super::kv::{self, KeyValueStore, KvCallbacks};
use super::named::{NamedOptions, OptionValue};
use super::options::CompileOptions;
use super::plugin::{plugin_str, Plugin};
use super::program::Signature;
use super::topology::{read_description, Description};
use crate::array::HostArray;
use crate::error::{Error, Result};

/// Typed client-creation options. `cpu_device_count` is always sent as an int64: the CPU plugin
/// aborts the process when it arrives with any other type.
#[derive(Clone, Default)]
pub struct ClientOptions {
    /// Number of virtual CPU devices (CPU plugins only).
    pub cpu_device_count: Option<i64>,
    /// The store shared by the job's processes, handed to the plugin as all three key-value
    /// callbacks (see [`super::kv`]). Keys arrive as the plugin writes them: wrap the store in a
    /// [`super::kv::Prefixed`] per platform. The client keeps it until it is destroyed.
    pub kv_store: Option<Arc<dyn KeyValueStore>>,
    /// This host's index and the hosts of a multi-host job (the CUDA plugin's `node_id` and
    /// `num_nodes`; the GPU client refuses more than one node without a store).
    pub node: Option<(i64, i64)>,
    /// The CUDA plugin's mock multi-host mode on one GPU: `enable_mock_nccl` with this
    /// `mock_gpu_topology` (e.g. `"2x1x1"`: two mock hosts).
    pub mock_gpu_topology: Option<String>,
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("cpu_device_count", &self.cpu_device_count)
            .field("kv_store", &self.kv_store.as_ref().map(|_| "set"))
            .field("node", &self.node)
            .field("mock_gpu_topology", &self.mock_gpu_topology)
            .finish()
    }
}

pub(super) struct ClientInner {
    pub(super) plugin: Arc<Plugin>,
    pub(super) raw: *mut ffi::PJRT_Client,
    pub(super) platform: String,
    platform_version: String,
    pub(super) devices: Vec<DeviceInfo>,
    /// The key-value callbacks' user argument. Dropped after `drop` destroys the client (fields
    /// drop after `Drop::drop`), so the plugin never calls into a freed store.
    _kv: Option<KvCallbacks>,
    /// Mixed into the launch ids of this client's executions: 0 for the process's first client
    /// (so the processes of a job, one client each, give the same ids), another value for each
    /// later one (see [`super::executable::Launches`]).
    pub(super) launch_salt: u32,
}

/// The launch-id salt of the next client this process creates.
fn next_launch_salt() -> u32 {
    static CLIENTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    CLIENTS
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        .wrapping_mul(0x9E37_79B9)
}

// SAFETY: PJRT clients, buffers and executables are thread-safe per the C API's contract; the raw
// pointers are only dereferenced by the plugin.
unsafe impl Send for ClientInner {}
unsafe impl Sync for ClientInner {}

impl Drop for ClientInner {
    fn drop(&mut self) {
        destroy!(
            self.plugin,
            client_destroy,
            "PJRT_Client_Destroy",
            PJRT_Client_Destroy_Args { client: self.raw }
        );
    }
}

/// One device of a client.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    /// The device id (used in device assignments).
    pub id: i32,
    /// The device kind, e.g. `cpu` or `NVIDIA H100 80GB HBM3`.
    pub kind: String,
    /// The plugin's description, e.g. `TFRT_CPU_0` or `cpu:0`.
    pub description: String,
    /// The process (host) that drives it.
    pub process_index: i32,
    /// Whether this process can place buffers on it.
    pub addressable: bool,
    pub(super) raw: RawDevice,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct RawDevice(pub(super) *mut ffi::PJRT_Device);
// SAFETY: device handles are immutable and owned by the client.
unsafe impl Send for RawDevice {}
unsafe impl Sync for RawDevice {}

/// A PJRT client on one plugin.
#[derive(Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
}

impl Client {
    /// Creates a client of `plugin` with typed options.
    pub fn new(plugin: Arc<Plugin>, options: &ClientOptions) -> Result<Client> {
        let mut entries = Vec::new();
        if let Some(n) = options.cpu_device_count {
            if n < 1 {
                return Err(Error::invalid(
                    format!("CPU device count {n}"),
                    "ask for at least 1 device",
                ));
            }
            entries.push(("cpu_device_count".to_string(), OptionValue::Int64(n)));
        }
        if let Some((id, n)) = options.node {
            if !(0..n).contains(&id) {
                return Err(Error::invalid(
                    format!("node {id} of {n}"),
                    "node ids run from 0 to the node count less one",
                ));
            }
            entries.push(("node_id".to_string(), OptionValue::Int64(id)));
            entries.push(("num_nodes".to_string(), OptionValue::Int64(n)));
        }
        if let Some(t) = &options.mock_gpu_topology {
            entries.push(("enable_mock_nccl".to_string(), OptionValue::Bool(true)));
            entries.push((
                "mock_gpu_topology".to_string(),
                OptionValue::String(t.clone()),
            ));
        }
        let schema = if entries.iter().any(|(n, _)| n != "cpu_device_count") {
            &super::named::CUDA_CLIENT
        } else {
            &super::named::CPU_CLIENT
        };
        let named = NamedOptions::new(schema, entries)?;
        let raw_opts = named.raw()?;
        let named = &raw_opts.values;
        let kv = options.kv_store.clone().map(KvCallbacks::new);
        // The plugin uses a store only when all three callbacks are set: all or none.
        let (get, try_get, put, user_arg): (*mut c_void, *mut c_void, *mut c_void, *mut c_void) =
            match &kv {
                Some(k) => (
                    kv::kv_get_callback as ffi::PJRT_KeyValueGetCallback as *mut c_void,
                    kv::kv_try_get_callback as ffi::PJRT_KeyValueTryGetCallback as *mut c_void,
                    kv::kv_put_callback as ffi::PJRT_KeyValuePutCallback as *mut c_void,
                    k.user_arg(),
                ),
                None => (null_mut(), null_mut(), null_mut(), null_mut()),
            };
        let mut a = args!(PJRT_Client_Create_Args {
            create_options: named.as_ptr(),
            num_options: named.len(),
            kv_get_callback: get,
            kv_get_user_arg: user_arg,
            kv_put_callback: put,
            kv_put_user_arg: user_arg,
            client: null_mut(),
            kv_try_get_callback: try_get,
            kv_try_get_user_arg: user_arg,
        });
        pjrt!(plugin, client_create, "PJRT_Client_Create", &mut a)?;
        let mut inner = ClientInner {
            plugin,
            raw: a.client,
            platform: String::new(),
            platform_version: String::new(),
            devices: Vec::new(),
            _kv: kv,
            launch_salt: next_launch_salt(),
        };
        // From here on `inner` owns the client and destroys it on any error below.
        inner.platform = client_string(&inner, false)?;
        inner.platform_version = client_string(&inner, true)?;
        inner.devices = list_devices(&inner)?;
        Ok(Client {
            inner: Arc::new(inner),
        })
    }

    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.inner.plugin
    }

    /// The platform name (`cpu`, `cuda`, `tpu`).
    pub fn platform(&self) -> &str {
        &self.inner.platform
    }

    pub fn platform_version(&self) -> &str {
        &self.inner.platform_version
    }

    /// All devices, in the client's order.
    pub fn devices(&self) -> &[DeviceInfo] {
        &self.inner.devices
    }

    /// Devices this process can use.
    pub fn addressable_devices(&self) -> Vec<&DeviceInfo> {
        self.inner
            .devices
            .iter()
            .filter(|d| d.addressable)
            .collect()
    }

    /// Copies a host array to the addressable device at position `device` of
    /// [`addressable_devices`](Self::addressable_devices).
    pub fn upload(&self, array: &HostArray, device: usize) -> Result<DeviceBuffer> {
        let devs = self.addressable_devices();
        let d = devs.get(device).ok_or_else(|| Error::NotEnoughDevices {
            what: format!("uploading to device {device}"),
            needed: device + 1,
            available: devs.len(),
            platform: format!("the `{}` client", self.platform()),
            fix: "pick an existing device (see `basic devices`)".into(),
        })?;
        upload_to(&self.inner, array, d.raw)
    }

    /// Compiles StableHLO text. Checks the options and the device count first, and reads the
    /// signature of `@main` so that every later execute can be checked against it.
    pub fn compile(&self, program: &str, options: &CompileOptions) -> Result<Executable> {
        options.validate()?;
        self.check_devices(options)?;
        let signature = Signature::from_program(program)?;
        let name = program_name(program);
        let format = "mlir";
        let code = program.as_bytes();
        let prog = args!(PJRT_Program {
            code: code.as_ptr() as *mut _,
            code_size: code.len(),
            format: format.as_ptr().cast(),
            format_size: format.len(),
        });
        let opts = options.encode();
        let mut a = args!(PJRT_Client_Compile_Args {
            client: self.inner.raw,
            program: &prog,
            compile_options: opts.as_ptr().cast(),
            compile_options_size: opts.len(),
            executable: null_mut(),
        });
        pjrt!(
            self.inner.plugin,
            client_compile,
            "PJRT_Client_Compile",
            &mut a
        )?;
        self.wrap(a.executable, name, signature, options.clone())
    }

    /// Loads an executable serialized by [`Executable::serialize`] or
    /// [`CompiledProgram::serialize`](super::CompiledProgram::serialize) on a plugin of the same
    /// kind and version. `program` is the StableHLO it was compiled from (its `@main` signature
    /// checks every later execute) and `options` the options it was compiled with.
    pub fn load_serialized(
        &self,
        bytes: &[u8],
        program: &str,
        options: &CompileOptions,
    ) -> Result<Executable> {
        options.validate()?;
        self.check_devices(options)?;
        let signature = Signature::from_program(program)?;
        let mut a = args!(PJRT_Executable_DeserializeAndLoad_Args {
            client: self.inner.raw,
            serialized_executable: bytes.as_ptr().cast(),
            serialized_executable_size: bytes.len(),
            loaded_executable: null_mut(),
            overridden_serialized_compile_options: null(),
            overridden_serialized_compile_options_size: 0,
        });
        pjrt!(
            self.inner.plugin,
            executable_deserialize_and_load,
            "PJRT_Executable_DeserializeAndLoad",
            &mut a
        )?;
        let exe = self.wrap(
            a.loaded_executable,
            program_name(program),
            signature,
            options.clone(),
        )?;
        if exe.num_devices() != options.num_devices() {
            return Err(Error::invalid(
                format!(
                    "serialized executable `{}`: it runs on {} device(s)",
                    exe.name(),
                    exe.num_devices()
                ),
                format!(
                    "it was saved for {} device(s): load it on a machine with that layout",
                    options.num_devices()
                ),
            ));
        }
        Ok(exe)
    }

    /// Takes ownership of a loaded executable and reads the devices it runs on.
    fn wrap(
        &self,
        raw: *mut ffi::PJRT_LoadedExecutable,
        name: String,
        signature: Signature,
        options: CompileOptions,
    ) -> Result<Executable> {
        let launches = super::executable::Launches::new(&name, &signature, self.inner.launch_salt);
        let mut exe = Executable {
            client: self.inner.clone(),
            raw,
            name,
            signature,
            options,
            devices: Vec::new(),
            launches,
        };
        let mut d = args!(PJRT_LoadedExecutable_AddressableDevices_Args {
            executable: exe.raw,
            addressable_devices: null(),
            num_addressable_devices: 0,
        });
        pjrt!(
            self.inner.plugin,
            loaded_executable_addressable_devices,
            "PJRT_LoadedExecutable_AddressableDevices",
            &mut d
        )?;
        // SAFETY: the executable owns the array of `num_addressable_devices` device pointers.
        exe.devices = if d.num_addressable_devices == 0 {
            Vec::new()
        } else {
            unsafe { std::slice::from_raw_parts(d.addressable_devices, d.num_addressable_devices) }
                .iter()
                .map(|&p| RawDevice(p))
                .collect()
        };
        Ok(exe)
    }

    /// Refuses options that need more devices than the client has, or ids it does not know.
    fn check_devices(&self, options: &CompileOptions) -> Result<()> {
        let available = self.inner.devices.len();
        if options.num_devices() > available {
            return Err(Error::NotEnoughDevices {
                what: format!(
                    "a program over {} replica(s) × {} partition(s)",
                    options.num_replicas, options.num_partitions
                ),
                needed: options.num_devices(),
                available,
                platform: format!("the `{}` client", self.platform()),
                fix: "use a smaller mesh, or more devices (`--cpu-devices N` on CPU)".into(),
            });
        }
        for id in options.devices() {
            if !self.inner.devices.iter().any(|d| i64::from(d.id) == id) {
                return Err(Error::invalid(
                    format!("device assignment: device id {id}"),
                    "use ids that `basic devices` lists",
                ));
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("platform", &self.inner.platform)
            .field("devices", &self.inner.devices.len())
            .finish()
    }
}

fn client_string(inner: &ClientInner, version: bool) -> Result<String> {
    let mut a = args!(PJRT_Client_String_Args {
        client: inner.raw,
        value: null(),
        value_size: 0,
    });
    if version {
        pjrt!(
            inner.plugin,
            client_platform_version,
            "PJRT_Client_PlatformVersion",
            &mut a
        )?;
    } else {
        pjrt!(
            inner.plugin,
            client_platform_name,
            "PJRT_Client_PlatformName",
            &mut a
        )?;
    }
    // SAFETY: the client owns the string.
    Ok(unsafe { plugin_str(a.value, a.value_size) })
}

fn device_pointers(inner: &ClientInner, addressable: bool) -> Result<Vec<*mut ffi::PJRT_Device>> {
    let mut a = args!(PJRT_Client_Devices_Args {
        client: inner.raw,
        devices: null(),
        num_devices: 0,
    });
    if addressable {
        pjrt!(
            inner.plugin,
            client_addressable_devices,
            "PJRT_Client_AddressableDevices",
            &mut a
        )?;
    } else {
        pjrt!(inner.plugin, client_devices, "PJRT_Client_Devices", &mut a)?;
    }
    if a.num_devices == 0 {
        return Ok(Vec::new());
    }
    // SAFETY: the client owns the array.
    Ok(unsafe { std::slice::from_raw_parts(a.devices, a.num_devices) }.to_vec())
}

fn list_devices(inner: &ClientInner) -> Result<Vec<DeviceInfo>> {
    let addressable = device_pointers(inner, true)?;
    device_pointers(inner, false)?
        .into_iter()
        .map(|raw| {
            let mut g = args!(PJRT_Device_GetDescription_Args {
                device: raw,
                device_description: null_mut(),
            });
            pjrt!(
                inner.plugin,
                device_get_description,
                "PJRT_Device_GetDescription",
                &mut g
            )?;
            let Description {
                id,
                process_index,
                kind,
                text,
                ..
            } = read_description(&inner.plugin, g.device_description)?;
            Ok(DeviceInfo {
                id,
                kind,
                description: text,
                process_index,
                addressable: addressable.contains(&raw),
                raw: RawDevice(raw),
            })
        })
        .collect()
}
