//! Loading a PJRT plugin: `dlopen`, `GetPjrtApi`, `PJRT_Plugin_Initialize`, attributes.
//!
//! A plugin is loaded once per process and never unloaded (XLA plugins register process-wide
//! state that does not survive `dlclose`); [`Plugin::load`] returns the same `Arc` for the same
//! file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use super::ffi::{self, PjrtApi};
use crate::error::{Error, Result};

/// A loaded and initialised PJRT plugin.
pub struct Plugin {
    path: PathBuf,
    api: &'static PjrtApi,
    /// Kept so that the library stays mapped; never dropped before the process ends.
    _lib: &'static libloading::Library,
    attributes: Vec<(String, AttrValue)>,
}

// SAFETY: the PJRT API table is immutable after `GetPjrtApi`, and the C API is documented as
// thread-safe for all entries `basic` calls.
unsafe impl Send for Plugin {}
unsafe impl Sync for Plugin {}

/// A plugin attribute value.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    String(String),
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
    Bool(bool),
}

impl std::fmt::Display for AttrValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttrValue::String(s) => f.write_str(s),
            AttrValue::Int(i) => write!(f, "{i}"),
            AttrValue::Ints(v) => write!(
                f,
                "{}",
                v.iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(".")
            ),
            AttrValue::Float(x) => write!(f, "{x}"),
            AttrValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

fn registry() -> &'static Mutex<HashMap<PathBuf, Arc<Plugin>>> {
    static REG: OnceLock<Mutex<HashMap<PathBuf, Arc<Plugin>>>> = OnceLock::new();
    REG.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Reads a (pointer, length) string from the plugin; empty for null.
///
/// # Safety
/// `ptr` must be null or point to `len` readable bytes.
pub(crate) unsafe fn plugin_str(ptr: *const std::ffi::c_char, len: usize) -> String {
    if ptr.is_null() {
        return String::new();
    }
    let bytes = std::slice::from_raw_parts(ptr as *const u8, len);
    String::from_utf8_lossy(bytes).into_owned()
}

impl Plugin {
    /// Loads the plugin at `path` (once per process) and initialises it.
    pub fn load(path: impl AsRef<Path>) -> Result<Arc<Plugin>> {
        let path = path.as_ref();
        if !path.is_file() {
            return Err(Error::PluginLoad {
                path: path.to_path_buf(),
                reason: "no such file; pass the path of a PJRT plugin `.so` or a backend name (cpu, cuda, tpu)".into(),
            });
        }
        let canonical = path.canonicalize().map_err(|e| Error::io(path, e))?;
        let mut reg = registry().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = reg.get(&canonical) {
            return Ok(p.clone());
        }
        let plugin = Arc::new(Plugin::open(&canonical)?);
        reg.insert(canonical, plugin.clone());
        Ok(plugin)
    }

    fn open(path: &Path) -> Result<Plugin> {
        let fail = |reason: String| Error::PluginLoad {
            path: path.to_path_buf(),
            reason,
        };
        // SAFETY: loading a shared object runs its initialisers; this is the documented way to use
        // a PJRT plugin. The library is leaked below so that it is never unloaded.
        let lib = unsafe { libloading::Library::new(path) }
            .map_err(|e| fail(format!("{e} (is it a PJRT plugin built for this machine?)")))?;
        let lib: &'static libloading::Library = Box::leak(Box::new(lib));
        // SAFETY: `GetPjrtApi` is declared `const PJRT_Api* GetPjrtApi()` by the C API.
        let get_api: libloading::Symbol<unsafe extern "C" fn() -> *const PjrtApi> =
            unsafe { lib.get(b"GetPjrtApi\0") }.map_err(|e| {
                fail(format!(
                    "{e}: the file is a shared library but not a PJRT plugin"
                ))
            })?;
        let api_ptr = unsafe { get_api() };
        if api_ptr.is_null() {
            return Err(fail("GetPjrtApi returned null".into()));
        }
        // SAFETY: the table lives as long as the (leaked) library.
        let api: &'static PjrtApi = unsafe { &*api_ptr };
        let mut plugin = Plugin {
            path: path.to_path_buf(),
            api,
            _lib: lib,
            attributes: Vec::new(),
        };
        let init = plugin.entry(
            crate::pjrt_api_offset!(plugin_initialize),
            "PJRT_Plugin_Initialize",
            api.plugin_initialize,
        )?;
        let mut args = ffi::PJRT_Plugin_Initialize_Args {
            struct_size: std::mem::size_of::<ffi::PJRT_Plugin_Initialize_Args>(),
            extension_start: std::ptr::null_mut(),
        };
        plugin.check("PJRT_Plugin_Initialize", unsafe { init(&mut args) })?;
        plugin.attributes = plugin.read_attributes()?;
        Ok(plugin)
    }

    /// Returns an entry of the API table, refusing entries past the plugin's `struct_size`.
    pub(crate) fn entry<A>(
        &self,
        offset: usize,
        name: &'static str,
        f: ffi::Entry<A>,
    ) -> Result<unsafe extern "C" fn(*mut A) -> *mut ffi::PJRT_Error> {
        let missing = || Error::MissingEntry {
            path: self.path.clone(),
            entry: name,
            table_size: self.api.struct_size,
            version: self.api_version_string(),
        };
        if offset + std::mem::size_of::<usize>() > self.api.struct_size {
            return Err(missing());
        }
        f.ok_or_else(missing)
    }

    /// Turns a PJRT error pointer into a `Result`, destroying the error object.
    pub(crate) fn check(&self, call: &'static str, err: *mut ffi::PJRT_Error) -> Result<()> {
        if err.is_null() {
            return Ok(());
        }
        let api = self.api;
        let mut msg = ffi::PJRT_Error_Message_Args {
            struct_size: std::mem::size_of::<ffi::PJRT_Error_Message_Args>(),
            extension_start: std::ptr::null_mut(),
            error: err,
            message: std::ptr::null(),
            message_size: 0,
        };
        let mut code = ffi::PJRT_Error_GetCode_Args {
            struct_size: std::mem::size_of::<ffi::PJRT_Error_GetCode_Args>(),
            extension_start: std::ptr::null_mut(),
            error: err,
            code: 2,
        };
        // SAFETY: `err` is a live error object returned by this plugin; the message is copied
        // before the error is destroyed. The three error entries are at the start of every table.
        let message = unsafe {
            if let Some(f) = api.error_message {
                f(&mut msg);
            }
            if let Some(f) = api.error_get_code {
                // A failure to read the code leaves UNKNOWN; nothing to report about it.
                let e = f(&mut code);
                if !e.is_null() {
                    code.code = 2;
                }
            }
            let m = plugin_str(msg.message, msg.message_size);
            if let Some(f) = api.error_destroy {
                let mut d = ffi::PJRT_Error_Destroy_Args {
                    struct_size: std::mem::size_of::<ffi::PJRT_Error_Destroy_Args>(),
                    extension_start: std::ptr::null_mut(),
                    error: err,
                };
                f(&mut d);
            }
            m
        };
        Err(Error::Pjrt {
            call,
            code: error_code_name(code.code),
            message,
        })
    }

    fn read_attributes(&self) -> Result<Vec<(String, AttrValue)>> {
        let Ok(f) = self.entry(
            crate::pjrt_api_offset!(plugin_attributes),
            "PJRT_Plugin_Attributes",
            self.api.plugin_attributes,
        ) else {
            return Ok(Vec::new());
        };
        let mut args = ffi::PJRT_Plugin_Attributes_Args {
            struct_size: std::mem::size_of::<ffi::PJRT_Plugin_Attributes_Args>(),
            extension_start: std::ptr::null_mut(),
            attributes: std::ptr::null(),
            num_attributes: 0,
        };
        self.check("PJRT_Plugin_Attributes", unsafe { f(&mut args) })?;
        let mut out = Vec::with_capacity(args.num_attributes);
        for i in 0..args.num_attributes {
            // SAFETY: the plugin owns `num_attributes` values that live as long as the plugin.
            let nv = unsafe { &*args.attributes.add(i) };
            let name = unsafe { plugin_str(nv.name, nv.name_size) };
            let value = unsafe {
                match nv.type_ {
                    ffi::NAMED_VALUE_STRING => {
                        AttrValue::String(plugin_str(nv.value.string_value, nv.value_size))
                    }
                    ffi::NAMED_VALUE_INT64 => AttrValue::Int(nv.value.int64_value),
                    ffi::NAMED_VALUE_INT64_LIST => AttrValue::Ints(
                        std::slice::from_raw_parts(nv.value.int64_array_value, nv.value_size)
                            .to_vec(),
                    ),
                    ffi::NAMED_VALUE_FLOAT => AttrValue::Float(nv.value.float_value),
                    ffi::NAMED_VALUE_BOOL => AttrValue::Bool(nv.value.bool_value),
                    _ => continue,
                }
            };
            out.push((name, value));
        }
        Ok(out)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn api(&self) -> &'static PjrtApi {
        self.api
    }

    /// `(major, minor)` of the PJRT C API the plugin implements.
    pub fn api_version(&self) -> (i32, i32) {
        (
            self.api.pjrt_api_version.major_version,
            self.api.pjrt_api_version.minor_version,
        )
    }

    pub fn api_version_string(&self) -> String {
        let (a, b) = self.api_version();
        format!("{a}.{b}")
    }

    /// All attributes the plugin reports.
    pub fn attributes(&self) -> &[(String, AttrValue)] {
        &self.attributes
    }

    pub fn attribute(&self, name: &str) -> Option<&AttrValue> {
        self.attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    /// The newest StableHLO version the plugin reads (`stablehlo_current_version`), e.g. "1.13.3".
    pub fn stablehlo_current_version(&self) -> Option<String> {
        self.attribute("stablehlo_current_version")
            .map(|v| v.to_string())
    }

    /// The oldest StableHLO version the plugin reads (`stablehlo_minimum_version`).
    pub fn stablehlo_minimum_version(&self) -> Option<String> {
        self.attribute("stablehlo_minimum_version")
            .map(|v| v.to_string())
    }
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("path", &self.path)
            .field("api_version", &self.api_version_string())
            .finish()
    }
}

fn error_code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}
