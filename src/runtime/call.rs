//! The calling conventions every PJRT wrapper shares: an entry called by its `PjrtApi` field with
//! its error turned into a `Result`, args structs with their size filled in, destroying an object
//! from `Drop`, and awaiting an event.

use super::ffi;
use super::plugin::Plugin;
use crate::error::{Error, Result};

/// Calls a PJRT entry by its `PjrtApi` field, turning the returned error into a `Result`.
macro_rules! pjrt {
    ($plugin:expr, $field:ident, $name:literal, $args:expr) => {{
        let plugin: &crate::runtime::plugin::Plugin = &$plugin;
        let f = plugin.entry(crate::pjrt_api_offset!($field), $name, plugin.api().$field)?;
        // SAFETY: `$args` is a correctly laid out args struct whose pointers are valid for the
        // duration of the call, as the C API requires.
        plugin.check($name, unsafe { f($args) })
    }};
}

/// Fills in `struct_size` and a null `extension_start` for an args struct.
macro_rules! args {
    ($ty:ident { $($field:ident : $value:expr),* $(,)? }) => {
        crate::runtime::ffi::$ty {
            struct_size: std::mem::size_of::<crate::runtime::ffi::$ty>(),
            extension_start: std::ptr::null_mut(),
            $($field: $value),*
        }
    };
}

/// Destroys a PJRT object from `Drop`: calls the destroy entry with its args struct and reports a
/// failure as a warning (a destructor cannot return it, and the object is gone either way).
macro_rules! destroy {
    ($plugin:expr, $field:ident, $name:literal, $ty:ident { $($f:ident : $v:expr),* $(,)? }) => {{
        let mut a = args!($ty { $($f: $v),* });
        let r: crate::error::Result<()> = (|| pjrt!($plugin, $field, $name, &mut a))();
        if let Err(e) = r {
            eprintln!("warning: {e}");
        }
    }};
}

/// Waits for `event` (null: nothing to wait for) and destroys it; an error names `call`.
pub(crate) fn await_event(
    plugin: &Plugin,
    event: *mut ffi::PJRT_Event,
    call: &'static str,
) -> Result<()> {
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
