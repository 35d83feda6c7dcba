//! Executables: compiled programs loaded on a client's devices, and the compiled (not loaded)
//! programs of a compile-only target.

use std::ptr::{null, null_mut};
use std::sync::Arc;

use super::buffer::{upload_to, ArgBuffer, DeviceBuffer};
use super::call::Event;
use super::client::{ClientInner, RawDevice};
use super::ffi;
use super::named::OptionValue;
use super::options::CompileOptions;
use super::plugin::Plugin;
use super::program::Signature;
use crate::array::HostArray;
use crate::dtype::DType;
use crate::error::{Error, Result};

/// Compiled memory figures of one device's program, from XLA, before anything runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

/// A compiler's cost analysis of a compiled program, per device, as the plugin reports it:
/// properties differ between plugins, and none follows loops (a `while` body counts once).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Costs {
    /// `flops`: floating-point operations.
    pub flops: Option<f64>,
    /// `bytes accessed`: bytes read and written from memory.
    pub bytes_accessed: Option<f64>,
    /// `optimal_seconds`: the compiler's own time estimate (libtpu gives one).
    pub optimal_seconds: Option<f64>,
    /// Every numeric property.
    pub all: std::collections::BTreeMap<String, f64>,
}

/// A compiled program, loaded on its devices.
pub struct Executable {
    pub(super) client: Arc<ClientInner>,
    pub(super) raw: *mut ffi::PJRT_LoadedExecutable,
    pub(super) name: String,
    pub(super) signature: Signature,
    pub(super) options: CompileOptions,
    /// `devices[i]` runs argument list `i`.
    pub(super) devices: Vec<RawDevice>,
    pub(super) launches: Launches,
}

/// The launch ids of one executable's executions. XLA's CPU and GPU executables take the launch
/// id as the run id that keys the rendezvous of their collectives among a process's devices:
/// with one id for every execution (0), two programs running at once on devices of the same ids
/// (two clients of one process, or a step enqueued before the last one ended) joined each
/// other's collectives and read each other's data. Each execution takes the next id of a
/// sequence seeded from the program's name and signature (the same on every process of a job,
/// as JAX seeds it from the executable's fingerprint) and the client's salt; never 0.
pub(super) struct Launches {
    next: std::sync::atomic::AtomicU32,
}

impl Launches {
    pub(super) fn new(name: &str, signature: &Signature, salt: u32) -> Launches {
        // FNV-1a over the name and the signature's text.
        let text = format!("{name}\n{signature:?}");
        let seed = text.bytes().fold(0x811c_9dc5u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
        Launches {
            next: std::sync::atomic::AtomicU32::new(seed ^ salt),
        }
    }

    /// The id of the next execution: positive, as PJRT's `int` field holds it.
    fn next(&self) -> std::os::raw::c_int {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) & 0x7fff_ffff;
        id.max(1) as std::os::raw::c_int
    }
}

// SAFETY: see `ClientInner`.
unsafe impl Send for Executable {}
unsafe impl Sync for Executable {}

impl Drop for Executable {
    fn drop(&mut self) {
        destroy!(
            self.client.plugin,
            loaded_executable_destroy,
            "PJRT_LoadedExecutable_Destroy",
            PJRT_LoadedExecutable_Destroy_Args {
                executable: self.raw
            }
        );
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

    /// The id of the device that runs each argument list, in execute order.
    pub fn device_ids(&self) -> Vec<i32> {
        self.devices
            .iter()
            .map(|raw| {
                self.client
                    .devices
                    .iter()
                    .find(|d| d.raw == *raw)
                    .map_or(-1, |d| d.id)
            })
            .collect()
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
                platform: format!("the `{}` client", self.client.platform),
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
            launch_id: self.launches.next(),
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
        // Own every event and output before anything can fail, so that none leaks and no output
        // is released while the program may still write it.
        let call = "PJRT_LoadedExecutable_Execute";
        let events: Vec<Event<'_>> = events
            .iter()
            .map(|&e| Event::new(&self.client.plugin, e, call))
            .collect();
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
        for e in events {
            if let Err(err) = e.wait() {
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

    /// The compiled program behind the loaded one (`PJRT_LoadedExecutable_GetExecutable`).
    fn compiled(&self) -> Result<RawExecutable> {
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
        Ok(RawExecutable::own(plugin.clone(), g.executable))
    }

    /// XLA's compiled memory figures (the same program runs on each device).
    pub fn memory_stats(&self) -> Result<MemoryStats> {
        self.compiled()?.memory_stats()
    }

    /// XLA's cost analysis of the compiled program ([`Costs`]).
    pub fn cost_analysis(&self) -> Result<Costs> {
        self.compiled()?.cost_analysis()
    }

    /// The serialized executable, for [`Client::load_serialized`](super::Client::load_serialized)
    /// on a client of the same plugin.
    pub fn serialize(&self) -> Result<Vec<u8>> {
        self.compiled()?.serialize()
    }

    /// The optimized program XLA compiled: its format name and bytes (see
    /// [`CompiledProgram::optimized_program`]).
    pub fn optimized_program(&self) -> Result<(String, Vec<u8>)> {
        self.compiled()?.optimized_program()
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
pub(crate) fn program_name(text: &str) -> String {
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

/// An owned `PJRT_Executable`: a compiled program that is not loaded on any device. Both a loaded
/// executable's (temporarily, for its figures) and a compile-only one.
pub(crate) struct RawExecutable {
    plugin: Arc<Plugin>,
    raw: *mut ffi::PJRT_Executable,
}

// SAFETY: see `ClientInner`.
unsafe impl Send for RawExecutable {}
unsafe impl Sync for RawExecutable {}

impl Drop for RawExecutable {
    fn drop(&mut self) {
        destroy!(
            self.plugin,
            executable_destroy,
            "PJRT_Executable_Destroy",
            PJRT_Executable_Destroy_Args {
                executable: self.raw
            }
        );
    }
}

impl RawExecutable {
    pub(crate) fn own(plugin: Arc<Plugin>, raw: *mut ffi::PJRT_Executable) -> RawExecutable {
        RawExecutable { plugin, raw }
    }

    fn cost_analysis(&self) -> Result<Costs> {
        let mut a = args!(PJRT_Executable_GetCostAnalysis_Args {
            executable: self.raw,
            num_properties: 0,
            properties: null(),
        });
        pjrt!(
            self.plugin,
            executable_get_cost_analysis,
            "PJRT_Executable_GetCostAnalysis",
            &mut a
        )?;
        // SAFETY: the executable owns `num_properties` named values for its lifetime.
        let named = unsafe { super::topology::read_named(a.properties, a.num_properties) };
        let all: std::collections::BTreeMap<String, f64> = named
            .into_iter()
            .filter_map(|(k, v)| {
                let x = match v {
                    OptionValue::Float(f) => f64::from(f),
                    OptionValue::Int64(i) => i as f64,
                    _ => return None,
                };
                Some((k, x))
            })
            .collect();
        Ok(Costs {
            flops: all.get("flops").copied(),
            bytes_accessed: all.get("bytes accessed").copied(),
            optimal_seconds: all.get("optimal_seconds").copied(),
            all,
        })
    }

    fn memory_stats(&self) -> Result<MemoryStats> {
        let mut s = ffi::PJRT_Executable_GetCompiledMemoryStats_Args {
            struct_size: std::mem::size_of::<ffi::PJRT_Executable_GetCompiledMemoryStats_Args>(),
            executable: self.raw as usize,
            ..Default::default()
        };
        pjrt!(
            self.plugin,
            executable_get_compiled_memory_stats,
            "PJRT_Executable_GetCompiledMemoryStats",
            &mut s
        )?;
        let derived = s.argument_size_in_bytes + s.output_size_in_bytes - s.alias_size_in_bytes
            + s.temp_size_in_bytes;
        let mut code = s.generated_code_size_in_bytes;
        if code <= 0 {
            // Some plugins leave the code size out of the memory statistics.
            let mut c = args!(PJRT_Executable_SizeOfGeneratedCodeInBytes_Args {
                executable: self.raw,
                size_in_bytes: 0,
            });
            if pjrt!(
                self.plugin,
                executable_size_of_generated_code_in_bytes,
                "PJRT_Executable_SizeOfGeneratedCodeInBytes",
                &mut c
            )
            .is_ok()
            {
                code = c.size_in_bytes.max(0);
            }
        }
        Ok(MemoryStats {
            argument_bytes: s.argument_size_in_bytes,
            output_bytes: s.output_size_in_bytes,
            alias_bytes: s.alias_size_in_bytes,
            temp_bytes: s.temp_size_in_bytes,
            generated_code_bytes: code,
            // Some plugins report a peak that leaves out the preallocated temporaries; the sum of
            // what is allocated for the program is a floor.
            peak_bytes: s.peak_memory_in_bytes.max(derived),
        })
    }

    fn serialize(&self) -> Result<Vec<u8>> {
        let mut a = args!(PJRT_Executable_Serialize_Args {
            executable: self.raw,
            serialized_bytes: null(),
            serialized_bytes_size: 0,
            serialized_executable: null_mut(),
            serialized_executable_deleter: None,
        });
        pjrt!(
            self.plugin,
            executable_serialize,
            "PJRT_Executable_Serialize",
            &mut a
        )?;
        let bytes = if a.serialized_bytes.is_null() || a.serialized_bytes_size == 0 {
            Vec::new()
        } else {
            // SAFETY: the bytes live until the deleter runs below.
            unsafe {
                std::slice::from_raw_parts(a.serialized_bytes as *const u8, a.serialized_bytes_size)
            }
            .to_vec()
        };
        if let (Some(del), false) = (
            a.serialized_executable_deleter,
            a.serialized_executable.is_null(),
        ) {
            // SAFETY: called once, on the object the plugin returned.
            unsafe { del(a.serialized_executable) };
        }
        if bytes.is_empty() {
            return Err(Error::Pjrt {
                call: "PJRT_Executable_Serialize",
                code: "UNIMPLEMENTED",
                message: "the plugin returned an empty serialized executable".into(),
            });
        }
        Ok(bytes)
    }

    /// The optimized program and the plugin's name for its format (`hlo`: a serialized
    /// `HloModuleProto`; `hlo_with_config`: one with its config).
    fn optimized_program(&self) -> Result<(String, Vec<u8>)> {
        // First call: the size; second: the bytes into a buffer of that size.
        let mut prog = args!(PJRT_Program {
            code: null_mut(),
            code_size: 0,
            format: null(),
            format_size: 0,
        });
        let mut a = args!(PJRT_Executable_OptimizedProgram_Args {
            executable: self.raw,
            program: &mut prog,
        });
        pjrt!(
            self.plugin,
            executable_optimized_program,
            "PJRT_Executable_OptimizedProgram",
            &mut a
        )?;
        let mut buf = vec![0u8; prog.code_size];
        prog.code = buf.as_mut_ptr().cast();
        let mut a = args!(PJRT_Executable_OptimizedProgram_Args {
            executable: self.raw,
            program: &mut prog,
        });
        pjrt!(
            self.plugin,
            executable_optimized_program,
            "PJRT_Executable_OptimizedProgram",
            &mut a
        )?;
        buf.truncate(prog.code_size);
        // SAFETY: the plugin owns the format string.
        let format = unsafe { super::plugin::plugin_str(prog.format, prog.format_size) };
        Ok((format, buf))
    }

    fn fingerprint(&self) -> Result<String> {
        let mut a = args!(PJRT_Executable_Fingerprint_Args {
            executable: self.raw,
            executable_fingerprint: null(),
            executable_fingerprint_size: 0,
        });
        pjrt!(
            self.plugin,
            executable_fingerprint,
            "PJRT_Executable_Fingerprint",
            &mut a
        )?;
        // SAFETY: the executable owns the string.
        Ok(unsafe {
            super::plugin::plugin_str(a.executable_fingerprint, a.executable_fingerprint_size)
        })
    }
}

/// A program compiled for a described target (no client, no devices attached). It has memory
/// figures, its optimized program and its serialized bytes, and no way to run: a machine of the
/// target loads the bytes with [`Client::load_serialized`](super::Client::load_serialized).
pub struct CompiledProgram {
    pub(crate) raw: RawExecutable,
    pub(crate) name: String,
    pub(crate) signature: Signature,
    pub(crate) options: CompileOptions,
    pub(crate) platform: String,
}

impl CompiledProgram {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// The options it was compiled with, device assignment included.
    pub fn options(&self) -> &CompileOptions {
        &self.options
    }

    /// The platform it was compiled for (`tpu`, `cuda`).
    pub fn platform(&self) -> &str {
        &self.platform
    }

    /// The target compiler's memory figures per device.
    pub fn memory_stats(&self) -> Result<MemoryStats> {
        self.raw.memory_stats()
    }

    /// The target compiler's cost analysis of the program ([`Costs`]).
    pub fn cost_analysis(&self) -> Result<Costs> {
        self.raw.cost_analysis()
    }

    /// The serialized executable.
    pub fn serialize(&self) -> Result<Vec<u8>> {
        self.raw.serialize()
    }

    /// The optimized program the target's compiler produced: the plugin's format name (`hlo` is
    /// a serialized `HloModuleProto`) and its bytes.
    pub fn optimized_program(&self) -> Result<(String, Vec<u8>)> {
        self.raw.optimized_program()
    }

    /// The plugin's fingerprint of the executable, where it has one.
    pub fn fingerprint(&self) -> Result<String> {
        self.raw.fingerprint()
    }
}

impl std::fmt::Debug for CompiledProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledProgram")
            .field("name", &self.name)
            .field("platform", &self.platform)
            .field("devices", &self.options.num_devices())
            .finish()
    }
}
