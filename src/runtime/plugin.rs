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
///
/// Its API table is held as a raw pointer with the size the plugin declares, never as a
/// `&PjrtApi`: an older plugin's table is shorter than [`PjrtApi`], and a reference would claim
/// bytes that are not there. Every entry is read through [`Plugin::entry`], which checks the
/// entry's offset against the declared size first.
pub struct Plugin {
    path: PathBuf,
    /// The plugin's `PJRT_Api`, valid for the life of the process (the library is never
    /// unloaded), of which only the first `table_size` bytes may be read.
    api: std::ptr::NonNull<PjrtApi>,
    /// `api.struct_size`: the bytes of the table that exist.
    table_size: usize,
    /// `(major, minor)` of the C API it implements.
    version: (i32, i32),
    /// Kept so that the library stays mapped; never dropped before the process ends.
    _lib: &'static libloading::Library,
    attributes: Vec<(String, AttrValue)>,
}

// SAFETY: the PJRT API table is immutable after `GetPjrtApi` (so sharing the pointer is sharing
// read-only data), and the C API is documented as thread-safe for all entries `basic` calls.
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
        // SAFETY: `GetPjrtApi` takes no arguments and returns the plugin's static table.
        let api_ptr = unsafe { get_api() };
        let Some(api) = std::ptr::NonNull::new(api_ptr.cast_mut()) else {
            return Err(fail("GetPjrtApi returned null".into()));
        };
        // SAFETY: the table lives as long as the (leaked) library.
        let mut plugin = unsafe { Plugin::from_table(path, api, lib) }?;
        let mut args = args!(PJRT_Plugin_Initialize_Args {});
        pjrt!(
            plugin,
            plugin_initialize,
            "PJRT_Plugin_Initialize",
            &mut args
        )?;
        plugin.attributes = plugin.read_attributes()?;
        Ok(plugin)
    }

    /// A plugin over the API table at `api`, reading only its header (`struct_size` and the
    /// version, present in every table since the C API's first version).
    ///
    /// # Safety
    /// `api` must point to a `PJRT_Api` whose first `struct_size` bytes stay readable and
    /// unchanged for the life of the process, and whose `struct_size` is at least the header's.
    unsafe fn from_table(
        path: &Path,
        api: std::ptr::NonNull<PjrtApi>,
        lib: &'static libloading::Library,
    ) -> Result<Plugin> {
        let p = api.as_ptr();
        let table_size = std::ptr::addr_of!((*p).struct_size).read();
        let header = std::mem::offset_of!(PjrtApi, error_destroy);
        if table_size < header {
            return Err(Error::PluginLoad {
                path: path.to_path_buf(),
                reason: format!(
                    "its API table is {table_size} bytes, shorter than the table's own header"
                ),
            });
        }
        let v = std::ptr::addr_of!((*p).pjrt_api_version).read();
        Ok(Plugin {
            path: path.to_path_buf(),
            api,
            table_size,
            version: (v.major_version, v.minor_version),
            _lib: lib,
            attributes: Vec::new(),
        })
    }

    /// Whether the table holds a non-null entry at `offset`, read by `read` (see [`has_entry!`]).
    pub(crate) fn has<F>(
        &self,
        offset: usize,
        read: impl FnOnce(*const PjrtApi) -> Option<F>,
    ) -> bool {
        self.fits(offset) && read(self.api.as_ptr()).is_some()
    }

    fn fits(&self, offset: usize) -> bool {
        offset + std::mem::size_of::<usize>() <= self.table_size
    }

    /// Returns entry `name` of the API table, at `offset`: checks that the plugin's table holds
    /// that offset, and only then calls `read` to load it (`read` gets the table's address and
    /// may read the one field at `offset`); a missing or null entry is
    /// [`Error::MissingEntry`], naming the entry and the plugin as too old.
    pub(crate) fn entry<F>(
        &self,
        offset: usize,
        name: &'static str,
        read: impl FnOnce(*const PjrtApi) -> Option<F>,
    ) -> Result<F> {
        let missing = || Error::MissingEntry {
            path: self.path.clone(),
            entry: name,
            table_size: self.table_size,
            version: self.api_version_string(),
        };
        if !self.fits(offset) {
            return Err(missing());
        }
        read(self.api.as_ptr()).ok_or_else(missing)
    }

    /// Turns a PJRT error pointer into a `Result`, destroying the error object.
    pub(crate) fn check(&self, call: &'static str, err: *mut ffi::PJRT_Error) -> Result<()> {
        if err.is_null() {
            return Ok(());
        }
        // The three error entries are in every table (checked in `from_table`: they follow the
        // header directly), so reading them cannot run past it.
        let header = crate::pjrt_api_offset!(error_get_code);
        let entries = if self.fits(header) {
            let p = self.api.as_ptr();
            // SAFETY: the table holds at least `error_get_code` (checked above).
            unsafe {
                (
                    std::ptr::addr_of!((*p).error_message).read(),
                    std::ptr::addr_of!((*p).error_get_code).read(),
                    std::ptr::addr_of!((*p).error_destroy).read(),
                )
            }
        } else {
            (None, None, None)
        };
        let (error_message, error_get_code, error_destroy) = entries;
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
        // before the error is destroyed.
        let message = unsafe {
            if let Some(f) = error_message {
                f(&mut msg);
            }
            if let Some(f) = error_get_code {
                // A failure to read the code leaves UNKNOWN; nothing to report about it.
                let e = f(&mut code);
                if !e.is_null() {
                    code.code = 2;
                }
            }
            let m = plugin_str(msg.message, msg.message_size);
            if let Some(f) = error_destroy {
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

    /// The plugin's attributes; none from a plugin too old to report them.
    fn read_attributes(&self) -> Result<Vec<(String, AttrValue)>> {
        if !has_entry!(self, plugin_attributes) {
            return Ok(Vec::new());
        }
        let mut args = args!(PJRT_Plugin_Attributes_Args {
            attributes: std::ptr::null(),
            num_attributes: 0,
        });
        pjrt!(self, plugin_attributes, "PJRT_Plugin_Attributes", &mut args)?;
        let mut out = Vec::with_capacity(args.num_attributes);
        for i in 0..args.num_attributes {
            // SAFETY: the plugin owns `num_attributes` values that live as long as the plugin.
            let nv = unsafe { &*args.attributes.add(i) };
            // SAFETY: the name and value are the plugin's, of the sizes it gives, and the value's
            // union member is the one its type names.
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

    /// `(major, minor)` of the PJRT C API the plugin implements.
    pub fn api_version(&self) -> (i32, i32) {
        self.version
    }

    /// Bytes of the plugin's API table.
    pub fn table_size(&self) -> usize {
        self.table_size
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A plugin whose table is the first `size` bytes of `real`'s: a copy in its own allocation of
    /// exactly that many bytes (rounded up to whole words), as an older plugin's shorter table
    /// would be. The copy is leaked, as a plugin's table lives for the process.
    fn truncated(real: &Plugin, size: usize) -> Arc<Plugin> {
        let words = size.div_ceil(8);
        let mut copy = vec![0u64; words].into_boxed_slice();
        // SAFETY: `real`'s table holds at least `size` bytes (the test asks for fewer than it
        // has), and `copy` holds `words * 8 >= size`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                real.api.as_ptr().cast::<u8>(),
                copy.as_mut_ptr().cast::<u8>(),
                size,
            );
        }
        copy[0] = size as u64;
        let table = Box::leak(copy);
        let api = std::ptr::NonNull::new(table.as_mut_ptr().cast::<PjrtApi>()).unwrap();
        // SAFETY: the leaked copy is readable for `size` bytes for the life of the process.
        let mut p = unsafe { Plugin::from_table(&real.path, api, real._lib) }.unwrap();
        p.attributes = real.attributes.clone();
        Arc::new(p)
    }

    /// A table that ends before an entry gives an error saying the plugin is too old for it,
    /// never a read past the table's end (the entry would lie outside the copy's allocation).
    #[test]
    fn a_table_that_ends_before_an_entry_is_a_clear_error() {
        let (_, path) = crate::runtime::find_cpu_plugins()
            .into_iter()
            .find(|(k, _)| k.package == "xla-cpu-pjrt")
            .expect("scripts/test installs xla-cpu-pjrt");
        let real = Plugin::load(&path).unwrap();
        let cut = crate::pjrt_api_offset!(client_create);
        assert!(cut < real.table_size());
        let short = truncated(&real, cut);
        assert_eq!(short.table_size(), cut);
        assert!(!has_entry!(short, client_create));
        assert!(has_entry!(short, error_destroy));
        let e = crate::runtime::Client::new(short, &Default::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("too old") && e.contains("PJRT_Client_Create"),
            "{e}"
        );
        // The same plugin with its whole table creates clients.
        crate::runtime::Client::new(real, &Default::default()).unwrap();
    }
}
