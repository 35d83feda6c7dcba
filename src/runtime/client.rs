//! Clients, devices, device buffers and executables: safe, RAII types over the PJRT C API.
//!
//! Ownership: a [`Client`] owns the `PJRT_Client`; every [`DeviceBuffer`] and [`Executable`] holds
//! an `Arc` of the client's inner state, so the client is destroyed after the last object made
//! from it. Each PJRT object is destroyed exactly once, in `Drop`.

use std::ffi::c_int;
use std::ptr::{null, null_mut};
use std::sync::Arc;

use super::array::HostArray;
use super::ffi;
use super::options::CompileOptions;
use super::plugin::{plugin_str, Plugin};
use super::program::Signature;
use crate::dtype::{DType, TensorType};
use crate::error::{Error, Result};

/// Calls a PJRT entry by its `PjrtApi` field, turning the returned error into a `Result`.
macro_rules! pjrt {
    ($plugin:expr, $field:ident, $name:literal, $args:expr) => {{
        let plugin: &Plugin = &$plugin;
        let f = plugin.entry(crate::pjrt_api_offset!($field), $name, plugin.api().$field)?;
        // SAFETY: `$args` is a correctly laid out args struct whose pointers are valid for the
        // duration of the call, as the C API requires.
        plugin.check($name, unsafe { f($args) })
    }};
}

/// Fills in `struct_size` and a null `extension_start` for an args struct.
macro_rules! args {
    ($ty:ident { $($field:ident : $value:expr),* $(,)? }) => {
        ffi::$ty {
            struct_size: std::mem::size_of::<ffi::$ty>(),
            extension_start: null_mut(),
            $($field: $value),*
        }
    };
}

/// Typed client-creation options. `cpu_device_count` is always sent as an int64: the CPU plugin
/// aborts the process when it arrives with any other type.
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    /// Number of virtual CPU devices (CPU plugins only).
    pub cpu_device_count: Option<i64>,
}

struct ClientInner {
    plugin: Arc<Plugin>,
    raw: *mut ffi::PJRT_Client,
    platform: String,
    platform_version: String,
    devices: Vec<DeviceInfo>,
}

// SAFETY: PJRT clients, buffers and executables are thread-safe per the C API's contract; the raw
// pointers are only dereferenced by the plugin.
unsafe impl Send for ClientInner {}
unsafe impl Sync for ClientInner {}

impl Drop for ClientInner {
    fn drop(&mut self) {
        let mut a = args!(PJRT_Client_Destroy_Args { client: self.raw });
        let r: Result<()> =
            (|| pjrt!(self.plugin, client_destroy, "PJRT_Client_Destroy", &mut a))();
        if let Err(e) = r {
            eprintln!("warning: {e}");
        }
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
    /// Whether this process can place buffers on it.
    pub addressable: bool,
    raw: RawDevice,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RawDevice(*mut ffi::PJRT_Device);
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
        const CPU_DEVICE_COUNT: &str = "cpu_device_count";
        let mut named = Vec::new();
        if let Some(n) = options.cpu_device_count {
            if n < 1 {
                return Err(Error::InvalidArgument {
                    what: format!("CPU device count {n}"),
                    fix: "ask for at least 1 device".into(),
                });
            }
            named.push(ffi::PJRT_NamedValue {
                struct_size: std::mem::size_of::<ffi::PJRT_NamedValue>(),
                extension_start: null_mut(),
                name: CPU_DEVICE_COUNT.as_ptr().cast(),
                name_size: CPU_DEVICE_COUNT.len(),
                type_: ffi::NAMED_VALUE_INT64,
                value: ffi::NamedValueUnion { int64_value: n },
                value_size: 1,
            });
        }
        let mut a = args!(PJRT_Client_Create_Args {
            create_options: named.as_ptr(),
            num_options: named.len(),
            kv_get_callback: null_mut(),
            kv_get_user_arg: null_mut(),
            kv_put_callback: null_mut(),
            kv_put_user_arg: null_mut(),
            client: null_mut(),
            kv_try_get_callback: null_mut(),
            kv_try_get_user_arg: null_mut(),
        });
        pjrt!(plugin, client_create, "PJRT_Client_Create", &mut a)?;
        let mut inner = ClientInner {
            plugin,
            raw: a.client,
            platform: String::new(),
            platform_version: String::new(),
            devices: Vec::new(),
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
            platform: self.platform().to_string(),
            fix: "pick an existing device (see `basic devices`)".into(),
        })?;
        upload_to(&self.inner, array, d.raw)
    }

    /// Compiles StableHLO text. Checks the options and the device count first, and reads the
    /// signature of `@main` so that every later execute can be checked against it.
    pub fn compile(&self, program: &str, options: &CompileOptions) -> Result<Executable> {
        options.validate()?;
        let available = self.inner.devices.len();
        if options.num_devices() > available {
            return Err(Error::NotEnoughDevices {
                what: format!(
                    "a program over {} replica(s) × {} partition(s)",
                    options.num_replicas, options.num_partitions
                ),
                needed: options.num_devices(),
                available,
                platform: self.platform().to_string(),
                fix: "use a smaller mesh, or more devices (`--cpu-devices N` on CPU)".into(),
            });
        }
        for id in options.devices() {
            if !self.inner.devices.iter().any(|d| i64::from(d.id) == id) {
                return Err(Error::InvalidArgument {
                    what: format!("device assignment: device id {id}"),
                    fix: "use ids that `basic devices` lists".into(),
                });
            }
        }
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
        let mut exe = Executable {
            client: self.inner.clone(),
            raw: a.executable,
            name,
            signature,
            options: options.clone(),
            devices: Vec::new(),
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
        exe.devices =
            unsafe { std::slice::from_raw_parts(d.addressable_devices, d.num_addressable_devices) }
                .iter()
                .map(|&p| RawDevice(p))
                .collect();
        Ok(exe)
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
            let desc = g.device_description;
            let mut id = args!(PJRT_DeviceDescription_Id_Args {
                device_description: desc,
                id: 0,
            });
            pjrt!(
                inner.plugin,
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
                inner.plugin,
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
                inner.plugin,
                device_description_to_string,
                "PJRT_DeviceDescription_ToString",
                &mut text
            )?;
            Ok(DeviceInfo {
                id: id.id,
                // SAFETY: the description owns both strings.
                kind: unsafe { plugin_str(kind.value, kind.value_size) },
                description: unsafe { plugin_str(text.value, text.value_size) },
                addressable: addressable.contains(&raw),
                raw: RawDevice(raw),
            })
        })
        .collect()
}

fn await_event(plugin: &Plugin, event: *mut ffi::PJRT_Event, call: &'static str) -> Result<()> {
    if event.is_null() {
        return Ok(());
    }
    let mut a = args!(PJRT_Event_Await_Args { event: event });
    let waited = pjrt!(plugin, event_await, "PJRT_Event_Await", &mut a);
    let mut d = args!(PJRT_Event_Destroy_Args { event: event });
    let destroyed = pjrt!(plugin, event_destroy, "PJRT_Event_Destroy", &mut d);
    waited.map_err(|e| match e {
        Error::Pjrt { code, message, .. } => Error::Pjrt {
            call,
            code,
            message,
        },
        other => other,
    })?;
    destroyed
}

fn buffer_type(d: DType) -> c_int {
    match d {
        DType::Pred => ffi::BUFFER_TYPE_PRED,
        DType::U8 => ffi::BUFFER_TYPE_U8,
        DType::S32 => ffi::BUFFER_TYPE_S32,
        DType::U32 => ffi::BUFFER_TYPE_U32,
        DType::S64 => ffi::BUFFER_TYPE_S64,
        DType::U64 => ffi::BUFFER_TYPE_U64,
        DType::BF16 => ffi::BUFFER_TYPE_BF16,
        DType::F32 => ffi::BUFFER_TYPE_F32,
        DType::F64 => ffi::BUFFER_TYPE_F64,
    }
}

fn dtype_of_buffer_type(t: c_int) -> Result<DType> {
    DType::ALL
        .into_iter()
        .find(|&d| buffer_type(d) == t)
        .ok_or_else(|| {
            Error::Array(format!(
                "the device returned a buffer of PJRT type {t}, which basic does not read"
            ))
        })
}

fn upload_to(
    inner: &Arc<ClientInner>,
    array: &HostArray,
    device: RawDevice,
) -> Result<DeviceBuffer> {
    let dims = array.shape();
    let mut a = args!(PJRT_Client_BufferFromHostBuffer_Args {
        client: inner.raw,
        data: array.bytes().as_ptr().cast(),
        type_: buffer_type(array.dtype()),
        dims: dims.as_ptr(),
        num_dims: dims.len(),
        byte_strides: null(),
        num_byte_strides: 0,
        host_buffer_semantics: ffi::HOST_BUFFER_IMMUTABLE_ONLY_DURING_CALL,
        device: device.0,
        memory: null_mut(),
        device_layout: null_mut(),
        done_with_host_buffer: null_mut(),
        buffer: null_mut(),
    });
    pjrt!(
        inner.plugin,
        client_buffer_from_host_buffer,
        "PJRT_Client_BufferFromHostBuffer",
        &mut a
    )?;
    let buffer = DeviceBuffer {
        client: inner.clone(),
        raw: a.buffer,
        device,
        ty: TensorType {
            dtype: array.dtype(),
            shape: dims.to_vec(),
        },
    };
    // The host data must stay untouched until the transfer is done: wait here, while `array` is
    // still borrowed.
    await_event(
        &inner.plugin,
        a.done_with_host_buffer,
        "PJRT_Client_BufferFromHostBuffer",
    )?;
    Ok(buffer)
}

/// An array on a device. Dropping it frees the device memory.
pub struct DeviceBuffer {
    client: Arc<ClientInner>,
    raw: *mut ffi::PJRT_Buffer,
    device: RawDevice,
    ty: TensorType,
}

// SAFETY: see `ClientInner`.
unsafe impl Send for DeviceBuffer {}
unsafe impl Sync for DeviceBuffer {}

impl DeviceBuffer {
    pub fn dtype(&self) -> DType {
        self.ty.dtype
    }

    pub fn shape(&self) -> &[i64] {
        &self.ty.shape
    }

    /// Copies the buffer back to the host.
    pub fn to_host(&self) -> Result<HostArray> {
        let n = super::array::element_count(&self.ty.shape)? * self.ty.dtype.size_in_bytes();
        if let Some(data) = self.copy_from_cpu_memory(n)? {
            return HostArray::from_bytes(self.ty.dtype, &self.ty.shape, data);
        }
        self.to_host_by_transfer()
    }

    /// Copies the buffer back with `PJRT_Buffer_ToHostBuffer`, the path every plugin supports
    /// ([`to_host`](Self::to_host) takes a faster one for host memory where it can).
    pub fn to_host_by_transfer(&self) -> Result<HostArray> {
        let n = super::array::element_count(&self.ty.shape)? * self.ty.dtype.size_in_bytes();
        let mut data = vec![0u8; n];
        // With no host layout the plugin writes the dense row-major array, whose size is known:
        // one call, and a plugin that disagrees about the size fails it with an error.
        let mut a = args!(PJRT_Buffer_ToHostBuffer_Args {
            src: self.raw,
            host_layout: null_mut(),
            dst: data.as_mut_ptr().cast(),
            dst_size: n,
            event: null_mut(),
        });
        pjrt!(
            self.client.plugin,
            buffer_to_host_buffer,
            "PJRT_Buffer_ToHostBuffer",
            &mut a
        )?;
        await_event(&self.client.plugin, a.event, "PJRT_Buffer_ToHostBuffer")?;
        HostArray::from_bytes(self.ty.dtype, &self.ty.shape, data)
    }

    /// The fast path for buffers in host memory (CPU plugins): wait until the buffer is ready and
    /// copy its bytes directly, instead of `ToHostBuffer`, which hands the copy to a worker thread
    /// and costs two thread switches. Taken only for a dense row-major layout (minor-to-major
    /// `rank-1, ..., 0`, no tiles) while an external reference pins the memory; `None` otherwise.
    fn copy_from_cpu_memory(&self, n: usize) -> Result<Option<Vec<u8>>> {
        let plugin = &self.client.plugin;
        let api = plugin.api();
        let available = |offset: usize, present: bool| present && offset + 8 <= api.struct_size;
        if !available(
            crate::pjrt_api_offset!(buffer_opaque_device_memory_data_pointer),
            api.buffer_opaque_device_memory_data_pointer.is_some(),
        ) || !available(
            crate::pjrt_api_offset!(buffer_is_on_cpu),
            api.buffer_is_on_cpu.is_some(),
        ) || !available(
            crate::pjrt_api_offset!(buffer_get_memory_layout),
            api.buffer_get_memory_layout.is_some(),
        ) || !available(
            crate::pjrt_api_offset!(buffer_ready_event),
            api.buffer_ready_event.is_some(),
        ) {
            return Ok(None);
        }
        let mut on_cpu = args!(PJRT_Buffer_IsOnCpu_Args {
            buffer: self.raw,
            is_on_cpu: false
        });
        pjrt!(plugin, buffer_is_on_cpu, "PJRT_Buffer_IsOnCpu", &mut on_cpu)?;
        if !on_cpu.is_on_cpu {
            return Ok(None);
        }
        let mut ready = args!(PJRT_Buffer_ReadyEvent_Args {
            buffer: self.raw,
            event: null_mut()
        });
        pjrt!(
            plugin,
            buffer_ready_event,
            "PJRT_Buffer_ReadyEvent",
            &mut ready
        )?;
        await_event(plugin, ready.event, "PJRT_Buffer_ReadyEvent")?;

        // SAFETY: an all-zero layout is a valid "out" value for the plugin to overwrite.
        let mut layout = args!(PJRT_Buffer_GetMemoryLayout_Args {
            buffer: self.raw,
            layout: unsafe { std::mem::zeroed() },
        });
        if pjrt!(
            plugin,
            buffer_get_memory_layout,
            "PJRT_Buffer_GetMemoryLayout",
            &mut layout
        )
        .is_err()
        {
            return Ok(None);
        }
        let l = &layout.layout;
        let rank = self.ty.shape.len();
        let dense = l.type_ == ffi::MEMORY_LAYOUT_TILED
            && l.tiled.num_tiles == 0
            && l.tiled.minor_to_major_size == rank
            && (rank == 0
                // SAFETY: the plugin owns `minor_to_major_size` entries.
                || unsafe { std::slice::from_raw_parts(l.tiled.minor_to_major, rank) }
                    .iter()
                    .rev()
                    .enumerate()
                    .all(|(i, &d)| d == i as i64));
        if !dense {
            return Ok(None);
        }
        let mut pin = args!(PJRT_Buffer_ExternalReference_Args { buffer: self.raw });
        pjrt!(
            plugin,
            buffer_increase_external_reference_count,
            "PJRT_Buffer_IncreaseExternalReferenceCount",
            &mut pin
        )?;
        let mut ptr = args!(PJRT_Buffer_OpaqueDeviceMemoryDataPointer_Args {
            buffer: self.raw,
            device_memory_ptr: null_mut(),
        });
        let got = pjrt!(
            plugin,
            buffer_opaque_device_memory_data_pointer,
            "PJRT_Buffer_OpaqueDeviceMemoryDataPointer",
            &mut ptr
        );
        let data = match got {
            Ok(()) if !ptr.device_memory_ptr.is_null() || n == 0 => {
                // SAFETY: the buffer is ready, dense, `n` bytes long, in host memory, and pinned
                // by the external reference until the copy is done.
                Some(if n == 0 {
                    Vec::new()
                } else {
                    unsafe { std::slice::from_raw_parts(ptr.device_memory_ptr as *const u8, n) }
                        .to_vec()
                })
            }
            _ => None,
        };
        let mut unpin = args!(PJRT_Buffer_ExternalReference_Args { buffer: self.raw });
        pjrt!(
            plugin,
            buffer_decrease_external_reference_count,
            "PJRT_Buffer_DecreaseExternalReferenceCount",
            &mut unpin
        )?;
        Ok(data)
    }

    fn from_output(
        client: &Arc<ClientInner>,
        raw: *mut ffi::PJRT_Buffer,
        device: RawDevice,
    ) -> Result<DeviceBuffer> {
        // Owned from here on, so it is freed even if a query below fails.
        let mut buf = DeviceBuffer {
            client: client.clone(),
            raw,
            device,
            ty: TensorType {
                dtype: DType::F32,
                shape: vec![],
            },
        };
        let mut t = args!(PJRT_Buffer_ElementType_Args {
            buffer: raw,
            type_: 0
        });
        pjrt!(
            client.plugin,
            buffer_element_type,
            "PJRT_Buffer_ElementType",
            &mut t
        )?;
        let mut d = args!(PJRT_Buffer_Dimensions_Args {
            buffer: raw,
            dims: null(),
            num_dims: 0,
        });
        pjrt!(
            client.plugin,
            buffer_dimensions,
            "PJRT_Buffer_Dimensions",
            &mut d
        )?;
        buf.ty = TensorType {
            dtype: dtype_of_buffer_type(t.type_)?,
            shape: if d.num_dims == 0 {
                vec![]
            } else {
                // SAFETY: the buffer owns `num_dims` dimensions.
                unsafe { std::slice::from_raw_parts(d.dims, d.num_dims) }.to_vec()
            },
        };
        Ok(buf)
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        let mut a = args!(PJRT_Buffer_Destroy_Args { buffer: self.raw });
        let r: Result<()> = (|| {
            pjrt!(
                self.client.plugin,
                buffer_destroy,
                "PJRT_Buffer_Destroy",
                &mut a
            )
        })();
        if let Err(e) = r {
            eprintln!("warning: {e}");
        }
    }
}

impl std::fmt::Debug for DeviceBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceBuffer<{}>", self.ty)
    }
}

/// Compiled memory figures of one device's program, from XLA, before anything runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MemoryStats {
    pub argument_bytes: i64,
    pub output_bytes: i64,
    /// Bytes of outputs that reuse (alias) argument buffers.
    pub alias_bytes: i64,
    pub temp_bytes: i64,
    pub generated_code_bytes: i64,
    /// The larger of the plugin's peak figure and `argument + output - alias + temp`.
    pub peak_bytes: i64,
}

/// An argument buffer for [`Executable::execute_owned`]: owned (consumed by the call, as a
/// donated argument must be) or borrowed.
pub enum ArgBuffer<'a> {
    Owned(DeviceBuffer),
    Borrowed(&'a DeviceBuffer),
}

impl ArgBuffer<'_> {
    pub fn buffer(&self) -> &DeviceBuffer {
        match self {
            ArgBuffer::Owned(b) => b,
            ArgBuffer::Borrowed(b) => b,
        }
    }
}

/// A compiled program, loaded on its devices.
pub struct Executable {
    client: Arc<ClientInner>,
    raw: *mut ffi::PJRT_LoadedExecutable,
    name: String,
    signature: Signature,
    options: CompileOptions,
    /// `devices[i]` runs argument list `i`.
    devices: Vec<RawDevice>,
}

// SAFETY: see `ClientInner`.
unsafe impl Send for Executable {}
unsafe impl Sync for Executable {}

impl Drop for Executable {
    fn drop(&mut self) {
        let mut a = args!(PJRT_LoadedExecutable_Destroy_Args {
            executable: self.raw
        });
        let r: Result<()> = (|| {
            pjrt!(
                self.client.plugin,
                loaded_executable_destroy,
                "PJRT_LoadedExecutable_Destroy",
                &mut a
            )
        })();
        if let Err(e) = r {
            eprintln!("warning: {e}");
        }
    }
}

impl Executable {
    /// The module name of the program (`module @NAME`), for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    pub fn options(&self) -> &CompileOptions {
        &self.options
    }

    /// Number of devices one execution runs on (argument lists it takes).
    pub fn num_devices(&self) -> usize {
        self.devices.len()
    }

    /// Copies `array` to the device that runs argument list `device`.
    pub fn upload(&self, array: &HostArray, device: usize) -> Result<DeviceBuffer> {
        let d = *self
            .devices
            .get(device)
            .ok_or_else(|| Error::NotEnoughDevices {
                what: format!("uploading to device {device} of `{}`", self.name),
                needed: device + 1,
                available: self.devices.len(),
                platform: self.client.platform.clone(),
                fix: "the executable runs on fewer devices".into(),
            })?;
        upload_to(&self.client, array, d)
    }

    fn arg_error(&self, index: usize, problem: String) -> Error {
        Error::Argument {
            program: self.name.clone(),
            index,
            problem,
        }
    }

    /// Checks one device's arguments against `@main`'s per-device parameter types.
    fn check_args<'a>(
        &self,
        device: usize,
        args: impl ExactSizeIterator<Item = (DType, &'a [i64])>,
    ) -> Result<()> {
        let params = &self.signature.args;
        if args.len() != params.len() {
            return Err(Error::Argument {
                program: self.name.clone(),
                index: args.len().min(params.len()),
                problem: format!(
                    "device {device} got {} arguments but the program takes {}",
                    args.len(),
                    params.len()
                ),
            });
        }
        for (i, ((dtype, shape), p)) in args.zip(params).enumerate() {
            let want = p.per_device();
            if dtype != want.dtype {
                return Err(self.arg_error(
                    i,
                    format!(
                        "expected dtype {} but got {dtype} (shape {shape:?})",
                        want.dtype
                    ),
                ));
            }
            if shape != want.shape.as_slice() {
                return Err(self.arg_error(
                    i,
                    format!(
                        "expected shape {:?} but got {shape:?} (dtype {dtype}){}",
                        want.shape,
                        if p.tiling.is_some() {
                            format!("; this is device {device}'s shard of {}", p.ty)
                        } else {
                            String::new()
                        }
                    ),
                ));
            }
        }
        Ok(())
    }

    fn check_device_count(&self, got: usize) -> Result<()> {
        if got != self.devices.len() {
            return Err(Error::Argument {
                program: self.name.clone(),
                index: 0,
                problem: format!(
                    "got argument lists for {got} device(s) but the program runs on {}",
                    self.devices.len()
                ),
            });
        }
        Ok(())
    }

    /// The arguments the program donates to its results (`(argument, result)` pairs).
    pub fn donations(&self) -> Vec<(usize, usize)> {
        self.signature
            .args
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.donated_to.map(|r| (i, r)))
            .collect()
    }

    /// Runs the program on device buffers: `args[i]` is the argument list of device `i`.
    /// Returns each device's outputs. Every argument's dtype, shape and device is checked first.
    /// A program that donates arguments refuses borrowed buffers: use [`Executable::execute_owned`].
    pub fn execute(&self, args: &[Vec<&DeviceBuffer>]) -> Result<Vec<Vec<DeviceBuffer>>> {
        if let Some(&(i, r)) = self.donations().first() {
            return Err(self.arg_error(
                i,
                format!("the program donates this argument to result {r}, which consumes its buffer: pass it owned with `execute_owned`"),
            ));
        }
        self.execute_borrowed(args)
    }

    /// Runs the program, consuming the owned arguments. Every argument the program donates
    /// (`tf.aliasing_output`) must be owned: XLA may write a result into its memory, so no
    /// handle to it may survive the call.
    pub fn execute_owned(&self, args: Vec<Vec<ArgBuffer<'_>>>) -> Result<Vec<Vec<DeviceBuffer>>> {
        for (i, _) in self.donations() {
            if let Some(d) = args
                .iter()
                .position(|l| matches!(l.get(i), Some(ArgBuffer::Borrowed(_))))
            {
                return Err(self.arg_error(
                    i,
                    format!("device {d}'s buffer is borrowed, but the program donates this argument (its buffer is consumed): pass it owned"),
                ));
            }
        }
        let refs: Vec<Vec<&DeviceBuffer>> = args
            .iter()
            .map(|l| l.iter().map(ArgBuffer::buffer).collect())
            .collect();
        let out = self.execute_borrowed(&refs);
        drop(refs);
        // Donated buffers are gone on the device; dropping the handles releases them.
        drop(args);
        out
    }

    fn execute_borrowed(&self, args: &[Vec<&DeviceBuffer>]) -> Result<Vec<Vec<DeviceBuffer>>> {
        self.check_device_count(args.len())?;
        for (d, list) in args.iter().enumerate() {
            self.check_args(d, list.iter().map(|b| (b.dtype(), b.shape())))?;
            for (i, b) in list.iter().enumerate() {
                if b.device != self.devices[d] {
                    return Err(self.arg_error(
                        i,
                        format!("the buffer for device {d} lives on another device; upload it with `Executable::upload(.., {d})`"),
                    ));
                }
                if !Arc::ptr_eq(&b.client, &self.client) {
                    return Err(self.arg_error(i, "the buffer belongs to another client".into()));
                }
            }
        }
        let n_dev = args.len();
        let n_out = self.signature.results.len();
        let raw_args: Vec<Vec<*mut ffi::PJRT_Buffer>> = args
            .iter()
            .map(|l| l.iter().map(|b| b.raw).collect())
            .collect();
        let arg_ptrs: Vec<*const *mut ffi::PJRT_Buffer> =
            raw_args.iter().map(|l| l.as_ptr()).collect();
        let mut outs: Vec<Vec<*mut ffi::PJRT_Buffer>> = vec![vec![null_mut(); n_out]; n_dev];
        let out_ptrs: Vec<*mut *mut ffi::PJRT_Buffer> =
            outs.iter_mut().map(|l| l.as_mut_ptr()).collect();
        let mut events: Vec<*mut ffi::PJRT_Event> = vec![null_mut(); n_dev];
        let mut opts = args!(PJRT_ExecuteOptions {
            send_callbacks: null_mut(),
            recv_callbacks: null_mut(),
            num_send_ops: 0,
            num_recv_ops: 0,
            launch_id: 0,
            non_donatable_input_indices: null(),
            num_non_donatable_input_indices: 0,
            context: null_mut(),
            call_location: null(),
            num_tasks: 0,
            task_ids: null_mut(),
            incarnation_ids: null_mut(),
        });
        let mut a = args!(PJRT_LoadedExecutable_Execute_Args {
            executable: self.raw,
            options: &mut opts,
            argument_lists: arg_ptrs.as_ptr(),
            num_devices: n_dev,
            num_args: self.signature.args.len(),
            output_lists: out_ptrs.as_ptr(),
            device_complete_events: events.as_mut_ptr(),
            execute_device: null_mut(),
        });
        pjrt!(
            self.client.plugin,
            loaded_executable_execute,
            "PJRT_LoadedExecutable_Execute",
            &mut a
        )?;
        // Take ownership of every output before anything can fail, so that none leaks.
        let mut wrapped: Vec<Vec<Result<DeviceBuffer>>> = outs
            .iter()
            .enumerate()
            .map(|(d, l)| {
                l.iter()
                    .map(|&raw| DeviceBuffer::from_output(&self.client, raw, self.devices[d]))
                    .collect()
            })
            .collect();
        let mut first_err = None;
        for &e in &events {
            if let Err(err) = await_event(&self.client.plugin, e, "PJRT_LoadedExecutable_Execute") {
                first_err.get_or_insert(err);
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        wrapped
            .drain(..)
            .map(|l| l.into_iter().collect::<Result<Vec<_>>>())
            .collect()
    }

    /// Runs on host arrays: `args[i]` is device `i`'s argument list; returns each device's outputs
    /// on the host. Arguments are checked before anything is uploaded.
    pub fn run_on_devices(&self, args: &[Vec<HostArray>]) -> Result<Vec<Vec<HostArray>>> {
        self.check_device_count(args.len())?;
        for (d, list) in args.iter().enumerate() {
            self.check_args(d, list.iter().map(|a| (a.dtype(), a.shape())))?;
        }
        let bufs = args
            .iter()
            .enumerate()
            .map(|(d, list)| {
                list.iter()
                    .map(|a| self.upload(a, d))
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        let owned = bufs
            .into_iter()
            .map(|l| l.into_iter().map(ArgBuffer::Owned).collect())
            .collect();
        self.execute_owned(owned)?
            .iter()
            .map(|l| l.iter().map(DeviceBuffer::to_host).collect())
            .collect()
    }

    /// Runs a single-device program on host arrays.
    pub fn run(&self, args: &[HostArray]) -> Result<Vec<HostArray>> {
        let mut out = self.run_on_devices(&[args.to_vec()])?;
        Ok(out.remove(0))
    }

    /// XLA's compiled memory figures (the same program runs on each device).
    pub fn memory_stats(&self) -> Result<MemoryStats> {
        let plugin = &self.client.plugin;
        let mut g = args!(PJRT_LoadedExecutable_GetExecutable_Args {
            loaded_executable: self.raw,
            executable: null_mut(),
        });
        pjrt!(
            plugin,
            loaded_executable_get_executable,
            "PJRT_LoadedExecutable_GetExecutable",
            &mut g
        )?;
        let mut s = ffi::PJRT_Executable_GetCompiledMemoryStats_Args {
            struct_size: std::mem::size_of::<ffi::PJRT_Executable_GetCompiledMemoryStats_Args>(),
            executable: g.executable as usize,
            ..Default::default()
        };
        let r = (|| {
            pjrt!(
                plugin,
                executable_get_compiled_memory_stats,
                "PJRT_Executable_GetCompiledMemoryStats",
                &mut s
            )
        })();
        let mut d = args!(PJRT_Executable_Destroy_Args {
            executable: g.executable
        });
        pjrt!(
            plugin,
            executable_destroy,
            "PJRT_Executable_Destroy",
            &mut d
        )?;
        r?;
        let derived = s.argument_size_in_bytes + s.output_size_in_bytes - s.alias_size_in_bytes
            + s.temp_size_in_bytes;
        Ok(MemoryStats {
            argument_bytes: s.argument_size_in_bytes,
            output_bytes: s.output_size_in_bytes,
            alias_bytes: s.alias_size_in_bytes,
            temp_bytes: s.temp_size_in_bytes,
            generated_code_bytes: s.generated_code_size_in_bytes,
            // Some plugins report a peak that leaves out the preallocated temporaries; the sum of
            // what is allocated for the program is a floor.
            peak_bytes: s.peak_memory_in_bytes.max(derived),
        })
    }
}

impl std::fmt::Debug for Executable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executable")
            .field("name", &self.name)
            .field("devices", &self.devices.len())
            .finish()
    }
}

/// `module @NAME` of the program, or `main`.
fn program_name(text: &str) -> String {
    text.lines()
        .map(str::trim_start)
        .find_map(|l| l.strip_prefix("module @"))
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '.')
                .collect()
        })
        .unwrap_or_else(|| "main".to_string())
}
