//! The key-value store a PJRT client shares across processes, and the three C callbacks
//! (`PJRT_KeyValueGetCallback`, `PJRT_KeyValueTryGetCallback`, `PJRT_KeyValuePutCallback`) that
//! hand it to a plugin through `PJRT_Client_Create`.
//!
//! Contract of the plugins (XLA's `ToCppKeyValueStore`, `pjrt_c_api_wrapper_impl.cc`):
//! - a store is used only when all three callbacks are set;
//! - the plugin builds the args on its stack, sets key, `timeout_in_ms`, `callback_error` and
//!   `user_arg`, and never fills `struct_size`: a callback must not check it;
//! - after a successful get or try-get it copies the value and calls `value_deleter_callback`
//!   unconditionally, so that is always set;
//! - an error is the `PJRT_Error*` made by `(*callback_error)(code, message, size)`; null is
//!   success. Callers rely on NOT_FOUND (try-get of a missing key), ALREADY_EXISTS (a second put,
//!   seen as "set before a restart" by the topology exchange) and DEADLINE_EXCEEDED;
//! - the store is used for as long as the client lives (the NCCL ids of collectives created
//!   late in a run travel through it): [`super::Client`] keeps it until the client is destroyed.
//!
//! Keys of different plugins must not collide; [`Prefixed`] adds a per-platform prefix the way
//! JAX does (`"<platform>:"`). This module knows nothing of how the store is served: the
//! multi-process one is `coord::Client`, the single-process one [`LocalStore`].

use std::collections::HashMap;
use std::ffi::{c_char, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::null_mut;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::ffi;
use crate::error::{Error, Result, StatusCode};

/// A store shared by every process of a job. Keys are write-once.
///
/// Errors are [`Error::Coordination`] whose code the callbacks pass on to the plugin (any other
/// error becomes INTERNAL).
pub trait KeyValueStore: Send + Sync {
    /// The value of `key`, waiting up to `timeout` for another process to set it
    /// (DEADLINE_EXCEEDED, naming the key, after that).
    fn get(&self, key: &str, timeout: Duration) -> Result<Vec<u8>>;
    /// The value of `key` now, or NOT_FOUND.
    fn try_get(&self, key: &str) -> Result<Vec<u8>>;
    /// Sets `key` once; a second put is ALREADY_EXISTS and keeps the first value.
    fn put(&self, key: &str, value: &[u8]) -> Result<()>;
}

/// A store for one process: enough for a plugin that needs a store but runs alone (a client with
/// `num_nodes = 1`, or a mock multi-host topology on one GPU).
#[derive(Default)]
pub struct LocalStore {
    map: Mutex<HashMap<String, Vec<u8>>>,
    set: Condvar,
}

impl LocalStore {
    pub fn new() -> LocalStore {
        LocalStore::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<u8>>> {
        // A panic while holding the lock cannot leave the map half-written (every update is one
        // insert), so a poisoned lock is still consistent.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl KeyValueStore for LocalStore {
    fn get(&self, key: &str, timeout: Duration) -> Result<Vec<u8>> {
        let now = Instant::now();
        // A deadline past what `Instant` can hold is no deadline.
        let deadline = now.checked_add(timeout);
        let mut map = self.lock();
        loop {
            if let Some(v) = map.get(key) {
                return Ok(v.clone());
            }
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(86_400),
            };
            if left.is_zero() {
                return Err(not_set_within(key, timeout));
            }
            map = self
                .set
                .wait_timeout(map, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn try_get(&self, key: &str) -> Result<Vec<u8>> {
        self.lock().get(key).cloned().ok_or_else(|| not_found(key))
    }

    fn put(&self, key: &str, value: &[u8]) -> Result<()> {
        let mut map = self.lock();
        if map.contains_key(key) {
            return Err(already_set(key));
        }
        map.insert(key.to_string(), value.to_vec());
        self.set.notify_all();
        Ok(())
    }
}

/// The error of a get whose key was not set in time.
pub fn not_set_within(key: &str, timeout: Duration) -> Error {
    Error::coord(
        StatusCode::DeadlineExceeded,
        format!(
            "key `{key}` was not set within {:.1} s; the process that sets it is late, stuck or \
             running a different program",
            timeout.as_secs_f64()
        ),
    )
}

/// The error of a try-get of a key that is not set.
pub fn not_found(key: &str) -> Error {
    Error::coord(StatusCode::NotFound, format!("key `{key}` is not set"))
}

/// The error of a second put of a key.
pub fn already_set(key: &str) -> Error {
    Error::coord(
        StatusCode::AlreadyExists,
        format!("key `{key}` is already set; keys are write-once and keep their first value"),
    )
}

/// A store whose keys all start with `prefix` (JAX uses `"<platform>:"`), so that two plugins of
/// one job never read each other's keys.
pub struct Prefixed {
    prefix: String,
    inner: Arc<dyn KeyValueStore>,
}

impl Prefixed {
    pub fn new(prefix: impl Into<String>, inner: Arc<dyn KeyValueStore>) -> Prefixed {
        Prefixed {
            prefix: prefix.into(),
            inner,
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

impl KeyValueStore for Prefixed {
    fn get(&self, key: &str, timeout: Duration) -> Result<Vec<u8>> {
        self.inner.get(&self.key(key), timeout)
    }
    fn try_get(&self, key: &str) -> Result<Vec<u8>> {
        self.inner.try_get(&self.key(key))
    }
    fn put(&self, key: &str, value: &[u8]) -> Result<()> {
        self.inner.put(&self.key(key), value)
    }
}

/// The user argument of the three callbacks: a store behind a thin pointer. It must outlive every
/// call the plugin makes, i.e. the client it was given to.
pub struct KvCallbacks {
    target: Box<Arc<dyn KeyValueStore>>,
}

impl KvCallbacks {
    pub fn new(store: Arc<dyn KeyValueStore>) -> KvCallbacks {
        KvCallbacks {
            target: Box::new(store),
        }
    }

    /// The `kv_*_user_arg` to pass with each callback; valid while `self` lives.
    pub fn user_arg(&self) -> *mut c_void {
        (&*self.target as *const Arc<dyn KeyValueStore>)
            .cast_mut()
            .cast()
    }

    pub fn store(&self) -> &Arc<dyn KeyValueStore> {
        &self.target
    }
}

/// `PJRT_KeyValueGetCallback`. A negative `timeout_in_ms` (an infinite C++ duration narrowed to
/// `int`) waits `i32::MAX` ms; the coordinator's liveness still ends the wait if the job fails.
///
/// # Safety
/// `args` points to args as the plugin fills them: a valid key of `key_size` bytes, a
/// `user_arg` from [`KvCallbacks::user_arg`] whose owner is alive, and a `callback_error`.
pub unsafe extern "C" fn kv_get_callback(
    args: *mut ffi::PJRT_KeyValueGetCallback_Args,
) -> *mut ffi::PJRT_Error {
    // SAFETY: the caller passes valid args (see above).
    let a = unsafe { &mut *args };
    clear_value(
        &mut a.value,
        &mut a.value_size,
        &mut a.value_deleter_callback,
    );
    let timeout = Duration::from_millis(if a.timeout_in_ms < 0 {
        i32::MAX as u64
    } else {
        a.timeout_in_ms as u64
    });
    // SAFETY: as above.
    let got = unsafe { with_store(a.user_arg, a.key, a.key_size, |s, k| s.get(k, timeout)) };
    // SAFETY: `callback_error` is the plugin's.
    unsafe {
        hand_over(
            got,
            &mut a.value,
            &mut a.value_size,
            &mut a.value_deleter_callback,
            a.callback_error,
        )
    }
}

/// `PJRT_KeyValueTryGetCallback`: NOT_FOUND at once for a missing key.
///
/// # Safety
/// As [`kv_get_callback`].
pub unsafe extern "C" fn kv_try_get_callback(
    args: *mut ffi::PJRT_KeyValueTryGetCallback_Args,
) -> *mut ffi::PJRT_Error {
    // SAFETY: the caller passes valid args.
    let a = unsafe { &mut *args };
    clear_value(
        &mut a.value,
        &mut a.value_size,
        &mut a.value_deleter_callback,
    );
    // SAFETY: as above.
    let got = unsafe { with_store(a.user_arg, a.key, a.key_size, |s, k| s.try_get(k)) };
    // SAFETY: `callback_error` is the plugin's.
    unsafe {
        hand_over(
            got,
            &mut a.value,
            &mut a.value_size,
            &mut a.value_deleter_callback,
            a.callback_error,
        )
    }
}

/// `PJRT_KeyValuePutCallback`: ALREADY_EXISTS for a key set before.
///
/// # Safety
/// As [`kv_get_callback`], plus a valid value of `value_size` bytes.
pub unsafe extern "C" fn kv_put_callback(
    args: *mut ffi::PJRT_KeyValuePutCallback_Args,
) -> *mut ffi::PJRT_Error {
    // SAFETY: the caller passes valid args.
    let a = unsafe { &mut *args };
    // SAFETY: the value is valid for the call.
    let value = unsafe { bytes(a.value, a.value_size) };
    // SAFETY: as above.
    let put = unsafe { with_store(a.user_arg, a.key, a.key_size, |s, k| s.put(k, value)) };
    match put {
        Ok(()) => null_mut(),
        // SAFETY: `callback_error` is the plugin's.
        Err(e) => unsafe { report(a.callback_error, &e) },
    }
}

/// Sets the outputs of a get to an empty value with its deleter before any work, so the plugin
/// never reads its own uninitialized stack whatever path the callback takes.
fn clear_value(
    value: &mut *mut c_char,
    size: &mut usize,
    deleter: &mut ffi::PJRT_KeyValue_ValueDeleter,
) {
    *value = null_mut();
    *size = 0;
    *deleter = Some(free_value);
}

/// Gives a get's result to the plugin: the value with its deleter, or the error.
///
/// # Safety
/// As [`report`].
unsafe fn hand_over(
    got: Result<Vec<u8>>,
    value: &mut *mut c_char,
    size: &mut usize,
    deleter: &mut ffi::PJRT_KeyValue_ValueDeleter,
    make: *mut ffi::PJRT_CallbackError,
) -> *mut ffi::PJRT_Error {
    match got {
        Ok(v) => {
            (*value, *size) = leak_value(&v);
            *deleter = Some(free_value);
            null_mut()
        }
        // SAFETY: the caller's.
        Err(e) => unsafe { report(make, &e) },
    }
}

/// Runs `f` on the store behind `user_arg` with the key as UTF-8, turning a panic into an
/// INTERNAL error (a panic must not unwind into the plugin's C++ frames).
///
/// # Safety
/// `user_arg` is null or the `Arc<dyn KeyValueStore>` a [`KvCallbacks`] handed to the plugin,
/// still alive; `key` is null or points to `key_size` readable bytes for the call.
unsafe fn with_store<T>(
    user_arg: *mut c_void,
    key: *const c_char,
    key_size: usize,
    f: impl FnOnce(&dyn KeyValueStore, &str) -> Result<T>,
) -> Result<T> {
    if user_arg.is_null() {
        return Err(Error::coord(
            StatusCode::Internal,
            "key-value callback called without its user argument",
        ));
    }
    // SAFETY: a non-null user argument is a live `Arc<dyn KeyValueStore>` (KvCallbacks).
    let store: &Arc<dyn KeyValueStore> = unsafe { &*(user_arg as *const Arc<dyn KeyValueStore>) };
    // SAFETY: the key is valid for the call.
    let key = std::str::from_utf8(unsafe { bytes(key, key_size) }).map_err(|_| {
        Error::coord(
            StatusCode::InvalidArgument,
            "key-value store key is not UTF-8; the plugin sent a binary key",
        )
    })?;
    catch_unwind(AssertUnwindSafe(|| f(store.as_ref(), key))).unwrap_or_else(|_| {
        Err(Error::coord(
            StatusCode::Internal,
            format!("key-value store panicked on key `{key}` (a bug in basic)"),
        ))
    })
}

/// The `n` bytes at `p` (none when `p` is null or `n` is 0).
///
/// # Safety
/// A non-null `p` points to `n` readable bytes that outlive `'a`.
unsafe fn bytes<'a>(p: *const c_char, n: usize) -> &'a [u8] {
    if p.is_null() || n == 0 {
        &[]
    } else {
        // SAFETY: the caller guarantees `n` readable bytes at `p`.
        unsafe { std::slice::from_raw_parts(p.cast(), n) }
    }
}

/// Bytes in front of each returned value: its length, so [`free_value`] (which gets only the
/// pointer) can rebuild the allocation's layout.
const HEADER: usize = std::mem::size_of::<usize>();

fn value_layout(len: usize) -> std::alloc::Layout {
    // Cannot fail: values are bounded far below isize::MAX.
    std::alloc::Layout::from_size_align(HEADER + len, HEADER).expect("value layout")
}

/// Copies `value` into an allocation that [`free_value`] releases; returns its data pointer.
fn leak_value(value: &[u8]) -> (*mut c_char, usize) {
    let layout = value_layout(value.len());
    // SAFETY: the layout has a non-zero size (HEADER > 0).
    let base = unsafe { std::alloc::alloc(layout) };
    if base.is_null() {
        std::alloc::handle_alloc_error(layout);
    }
    // SAFETY: `base` has HEADER + len bytes, aligned for usize.
    unsafe {
        base.cast::<usize>().write(value.len());
        let data = base.add(HEADER);
        std::ptr::copy_nonoverlapping(value.as_ptr(), data, value.len());
        (data.cast(), value.len())
    }
}

/// The value deleter handed to the plugin with every value.
unsafe extern "C" fn free_value(value: *mut c_char) {
    if value.is_null() {
        return;
    }
    // SAFETY: `value` came from `leak_value`, so HEADER bytes before it hold its length.
    unsafe {
        let base = value.cast::<u8>().sub(HEADER);
        let len = base.cast::<usize>().read();
        std::alloc::dealloc(base, value_layout(len));
    }
}

/// Turns `e` into the plugin's error object through its `callback_error`.
///
/// # Safety
/// `make` is null or points to the plugin's `PJRT_CallbackError` function pointer, valid for the
/// call.
unsafe fn report(make: *mut ffi::PJRT_CallbackError, e: &Error) -> *mut ffi::PJRT_Error {
    let code = e.status_code().unwrap_or(StatusCode::Internal);
    let message = e.to_string();
    // SAFETY: a non-null `make` points to the plugin's function pointer.
    match unsafe { make.as_ref() }.copied().flatten() {
        // SAFETY: the plugin copies the message during the call.
        Some(f) => unsafe { f(code.pjrt_code(), message.as_ptr().cast(), message.len()) },
        None => {
            // The plugin broke its side of the contract: there is no way to return an error.
            eprintln!("warning: a PJRT plugin gave a key-value callback no error constructor; lost error: {message}");
            null_mut()
        }
    }
}
