//! The PJRT key-value callbacks called through their C signatures exactly as a plugin calls them:
//! args built on the stack with `struct_size` 0, a real `callback_error` that allocates an error
//! object, the value deleter called after every successful get. Run against both stores basic
//! has (the single-process `LocalStore` and a one-process coordinator job), behind the
//! per-platform prefix. And a real CPU client created with a store attached.

mod common;

use std::ffi::{c_char, c_int};
use std::ptr::null_mut;
use std::sync::Arc;
use std::time::{Duration, Instant};

use basic::coord::{Client, ClientOptions, Server, ServerOptions};
use basic::runtime::ffi::{
    PJRT_CallbackError, PJRT_Error, PJRT_KeyValueGetCallback_Args, PJRT_KeyValuePutCallback_Args,
    PJRT_KeyValueTryGetCallback_Args,
};
use basic::runtime::kv::{self, KeyValueStore, KvCallbacks, LocalStore, Prefixed};

/// `PJRT_Error_Code` values of the 0.81 header.
const INVALID_ARGUMENT: c_int = 3;
const DEADLINE_EXCEEDED: c_int = 4;
const NOT_FOUND: c_int = 5;
const ALREADY_EXISTS: c_int = 6;

/// What the test's `callback_error` allocates, standing in for the plugin's error object.
#[derive(Debug)]
struct TestError {
    code: c_int,
    message: String,
}

unsafe extern "C" fn make_error(code: c_int, msg: *const c_char, len: usize) -> *mut PJRT_Error {
    // SAFETY: the callback passes `len` bytes at `msg`, valid for this call.
    let m = unsafe { std::slice::from_raw_parts(msg.cast::<u8>(), len) };
    let e = TestError {
        code,
        message: String::from_utf8_lossy(m).into_owned(),
    };
    Box::into_raw(Box::new(e)).cast()
}

/// Takes back an error object made by [`make_error`]; `None` for success (null).
fn take_error(p: *mut PJRT_Error) -> Option<TestError> {
    // SAFETY: non-null errors come from `make_error`'s Box.
    (!p.is_null()).then(|| *unsafe { Box::from_raw(p.cast::<TestError>()) })
}

/// Calls the get callback as the plugin does: copies the value, then calls the deleter.
fn get(cb: &KvCallbacks, key: &[u8], timeout_ms: c_int) -> Result<Vec<u8>, TestError> {
    let mut make: PJRT_CallbackError = Some(make_error);
    // SAFETY: all-zero is a valid value of these args (null pointers, `None` functions).
    let mut a: PJRT_KeyValueGetCallback_Args = unsafe { std::mem::zeroed() };
    a.key = key.as_ptr().cast();
    a.key_size = key.len();
    a.timeout_in_ms = timeout_ms;
    a.callback_error = &mut make;
    a.user_arg = cb.user_arg();
    // SAFETY: the args are filled as a plugin fills them.
    let err = unsafe { kv::kv_get_callback(&mut a) };
    if let Some(e) = take_error(err) {
        return Err(e);
    }
    let deleter = a
        .value_deleter_callback
        .expect("a deleter with every value");
    // SAFETY: the callback returned `value_size` bytes at `value`.
    let v = unsafe { copy(a.value, a.value_size) };
    // SAFETY: the deleter frees what the callback returned.
    unsafe { deleter(a.value) };
    Ok(v)
}

fn try_get(cb: &KvCallbacks, key: &[u8]) -> Result<Vec<u8>, TestError> {
    let mut make: PJRT_CallbackError = Some(make_error);
    // SAFETY: as in `get`.
    let mut a: PJRT_KeyValueTryGetCallback_Args = unsafe { std::mem::zeroed() };
    a.key = key.as_ptr().cast();
    a.key_size = key.len();
    a.callback_error = &mut make;
    a.user_arg = cb.user_arg();
    // SAFETY: as in `get`.
    let err = unsafe { kv::kv_try_get_callback(&mut a) };
    if let Some(e) = take_error(err) {
        return Err(e);
    }
    let deleter = a
        .value_deleter_callback
        .expect("a deleter with every value");
    // SAFETY: as in `get`.
    let v = unsafe { copy(a.value, a.value_size) };
    // SAFETY: as in `get`.
    unsafe { deleter(a.value) };
    Ok(v)
}

fn put(cb: &KvCallbacks, key: &[u8], value: &[u8]) -> Result<(), TestError> {
    let mut make: PJRT_CallbackError = Some(make_error);
    // SAFETY: as in `get`.
    let mut a: PJRT_KeyValuePutCallback_Args = unsafe { std::mem::zeroed() };
    a.key = key.as_ptr().cast();
    a.key_size = key.len();
    a.value = value.as_ptr().cast();
    a.value_size = value.len();
    a.callback_error = &mut make;
    a.user_arg = cb.user_arg();
    // SAFETY: as in `get`.
    match take_error(unsafe { kv::kv_put_callback(&mut a) }) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

unsafe fn copy(p: *const c_char, n: usize) -> Vec<u8> {
    if n == 0 {
        return vec![];
    }
    // SAFETY: the caller guarantees `n` bytes at `p`.
    unsafe { std::slice::from_raw_parts(p.cast::<u8>(), n) }.to_vec()
}

/// Every behaviour a plugin relies on, through the callbacks over `store`.
fn exercise(store: Arc<dyn KeyValueStore>) {
    let cb = KvCallbacks::new(store);
    put(&cb, b"topology/0", b"\x00binary\xffvalue").unwrap();
    assert_eq!(
        get(&cb, b"topology/0", 1000).unwrap(),
        b"\x00binary\xffvalue"
    );
    assert_eq!(try_get(&cb, b"topology/0").unwrap(), b"\x00binary\xffvalue");
    put(&cb, b"empty", b"").unwrap();
    assert_eq!(get(&cb, b"empty", 1000).unwrap(), b"");

    let miss = try_get(&cb, b"missing").unwrap_err();
    assert_eq!(miss.code, NOT_FOUND, "{miss:?}");
    assert!(miss.message.contains(":missing` is not set"), "{miss:?}");

    let again = put(&cb, b"topology/0", b"second").unwrap_err();
    assert_eq!(again.code, ALREADY_EXISTS, "{again:?}");
    assert_eq!(try_get(&cb, b"topology/0").unwrap(), b"\x00binary\xffvalue");

    let start = Instant::now();
    let late = get(&cb, b"never", 200).unwrap_err();
    let took = start.elapsed();
    assert_eq!(late.code, DEADLINE_EXCEEDED, "{late:?}");
    assert!(late.message.contains(":never` was not set"), "{late:?}");
    assert!(
        took >= Duration::from_millis(190) && took < Duration::from_secs(3),
        "{took:?}"
    );

    let bad = put(&cb, b"\xff\xfe", b"x").unwrap_err();
    assert_eq!(bad.code, INVALID_ARGUMENT, "{bad:?}");

    // A get that waits is woken by a put from another thread (another plugin thread, or
    // another process).
    let store = cb.store().clone();
    let setter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(150));
        store.put("global_topology", b"all").unwrap();
    });
    assert_eq!(get(&cb, b"global_topology", 5000).unwrap(), b"all");
    setter.join().unwrap();
}

#[test]
fn callbacks_over_the_local_store() {
    exercise(Arc::new(Prefixed::new("cpu:", Arc::new(LocalStore::new()))));
}

#[test]
fn callbacks_over_a_coordinator_job() {
    let server = Server::start("127.0.0.1:0", 1, ServerOptions::default()).unwrap();
    let opts = ClientOptions {
        registration_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    let client = Client::connect(&server.local_addr().to_string(), 0, 1, opts).unwrap();
    let inner: Arc<dyn KeyValueStore> = Arc::new(client.clone());
    exercise(Arc::new(Prefixed::new("cuda:", inner)));
    // The prefix is in the shared store's keys.
    assert_eq!(client.try_get("cuda:global_topology").unwrap(), b"all");
    assert!(client.try_get("global_topology").is_err());
    client.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn the_layouts_of_the_args_match_the_header() {
    use std::mem::{offset_of, size_of};
    // Printed by a C program compiled against the 0.81 header.
    assert_eq!(size_of::<PJRT_KeyValueGetCallback_Args>(), 80);
    assert_eq!(offset_of!(PJRT_KeyValueGetCallback_Args, timeout_in_ms), 32);
    assert_eq!(
        offset_of!(PJRT_KeyValueGetCallback_Args, callback_error),
        40
    );
    assert_eq!(offset_of!(PJRT_KeyValueGetCallback_Args, value), 56);
    assert_eq!(
        offset_of!(PJRT_KeyValueGetCallback_Args, value_deleter_callback),
        72
    );
    assert_eq!(size_of::<PJRT_KeyValueTryGetCallback_Args>(), 72);
    assert_eq!(
        offset_of!(PJRT_KeyValueTryGetCallback_Args, callback_error),
        32
    );
    assert_eq!(
        offset_of!(PJRT_KeyValueTryGetCallback_Args, value_deleter_callback),
        64
    );
    assert_eq!(size_of::<PJRT_KeyValuePutCallback_Args>(), 64);
    assert_eq!(offset_of!(PJRT_KeyValuePutCallback_Args, value), 32);
    assert_eq!(
        offset_of!(PJRT_KeyValuePutCallback_Args, callback_error),
        48
    );
    assert_eq!(offset_of!(PJRT_KeyValuePutCallback_Args, user_arg), 56);
}

#[test]
fn a_callback_without_its_user_argument_is_an_error_not_a_crash() {
    let mut make: PJRT_CallbackError = Some(make_error);
    // SAFETY: as in `get`.
    let mut a: PJRT_KeyValueTryGetCallback_Args = unsafe { std::mem::zeroed() };
    a.key = b"k".as_ptr().cast();
    a.key_size = 1;
    a.callback_error = &mut make;
    a.user_arg = null_mut();
    // SAFETY: the args are as a plugin fills them, less the user argument.
    let e = take_error(unsafe { kv::kv_try_get_callback(&mut a) }).unwrap();
    assert!(e.message.contains("without its user argument"), "{e:?}");
}

#[test]
fn cpu_clients_accept_a_store() {
    use basic::runtime::{Client as PjrtClient, ClientOptions as PjrtOptions, Plugin};
    for (name, path) in common::cpu_plugins() {
        let store: Arc<dyn KeyValueStore> =
            Arc::new(Prefixed::new("cpu:", Arc::new(LocalStore::new())));
        let plugin = Plugin::load(&path).unwrap();
        let client = PjrtClient::new(
            plugin,
            &PjrtOptions {
                cpu_device_count: Some(2),
                kv_store: Some(store),
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(client.devices().len(), 2, "{name}");
        // The client works with the store attached (the store lives inside it).
        let exe = client
            .compile(
                "func.func @main(%a: tensor<2xf32>) -> tensor<2xf32> {\n  %0 = stablehlo.add %a, %a : tensor<2xf32>\n  return %0 : tensor<2xf32>\n}",
                &basic::runtime::CompileOptions::single(),
            )
            .unwrap();
        let out = exe
            .run(&[basic::runtime::HostArray::new(&[2], &[1.0f32, 2.0]).unwrap()])
            .unwrap();
        assert_eq!(out[0].to_vec::<f32>().unwrap(), vec![2.0, 4.0], "{name}");
    }
}
