//! The calling conventions every PJRT wrapper shares: an entry called by its `PjrtApi` field with
//! its error turned into a `Result`, args structs with their size filled in, destroying an object
//! from `Drop`, and awaiting an event.

use super::ffi;
use super::plugin::Plugin;
use crate::error::{Error, Result};

/// Calls a PJRT entry by its `PjrtApi` field, turning the returned error into a `Result`. The
/// entry is read only after the plugin's table is known to hold it ([`Plugin::entry`]); a table
/// too short for it is an error naming the entry.
macro_rules! pjrt {
    ($plugin:expr, $field:ident, $name:literal, $args:expr) => {{
        let plugin: &crate::runtime::plugin::Plugin = &$plugin;
        // SAFETY: `entry` calls the closure only once the table is known to hold the field.
        let f = plugin.entry(crate::pjrt_api_offset!($field), $name, |api| unsafe {
            std::ptr::addr_of!((*api).$field).read()
        })?;
        // SAFETY: `$args` is a correctly laid out args struct whose pointers are valid for the
        // duration of the call, as the C API requires.
        plugin.check($name, unsafe { f($args) })
    }};
}

/// Whether the plugin's table holds a non-null entry `$field` (for optional fast paths).
macro_rules! has_entry {
    ($plugin:expr, $field:ident) => {{
        let plugin: &crate::runtime::plugin::Plugin = &$plugin;
        // SAFETY: `has` calls the closure only once the table is known to hold the field.
        plugin.has(crate::pjrt_api_offset!($field), |api| unsafe {
            std::ptr::addr_of!((*api).$field).read()
        })
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

/// A PJRT event the plugin handed over: awaited at most once and destroyed exactly once. One
/// dropped without [`Event::wait`] is awaited first (errors ignored), because the memory it
/// guards (a host buffer being copied from, a buffer being written) must not be released while
/// the plugin still uses it.
pub(crate) struct Event<'p> {
    plugin: &'p Plugin,
    raw: *mut ffi::PJRT_Event,
    /// The call that made it, named in errors.
    call: &'static str,
}

impl<'p> Event<'p> {
    /// Takes ownership of `raw` (null: nothing to wait for).
    pub(crate) fn new(plugin: &'p Plugin, raw: *mut ffi::PJRT_Event, call: &'static str) -> Self {
        Event { plugin, raw, call }
    }

    /// Waits for the event; its error names the call that made it.
    pub(crate) fn wait(mut self) -> Result<()> {
        let raw = std::mem::replace(&mut self.raw, std::ptr::null_mut());
        let waited = Self::await_raw(self.plugin, raw);
        let destroyed = Self::destroy_raw(self.plugin, raw);
        waited.map_err(|e| match e {
            Error::Pjrt { code, message, .. } => Error::Pjrt {
                call: self.call,
                code,
                message,
            },
            other => other,
        })?;
        destroyed
    }

    fn await_raw(plugin: &Plugin, raw: *mut ffi::PJRT_Event) -> Result<()> {
        if raw.is_null() {
            return Ok(());
        }
        let mut a = args!(PJRT_Event_Await_Args { event: raw });
        pjrt!(plugin, event_await, "PJRT_Event_Await", &mut a)
    }

    fn destroy_raw(plugin: &Plugin, raw: *mut ffi::PJRT_Event) -> Result<()> {
        if raw.is_null() {
            return Ok(());
        }
        let mut d = args!(PJRT_Event_Destroy_Args { event: raw });
        pjrt!(plugin, event_destroy, "PJRT_Event_Destroy", &mut d)
    }
}

impl Drop for Event<'_> {
    fn drop(&mut self) {
        let raw = std::mem::replace(&mut self.raw, std::ptr::null_mut());
        let _ = Self::await_raw(self.plugin, raw);
        if let Err(e) = Self::destroy_raw(self.plugin, raw) {
            eprintln!("warning: {e}");
        }
    }
}

/// Waits for `event` (null: nothing to wait for) and destroys it; an error names `call`.
pub(crate) fn await_event(
    plugin: &Plugin,
    event: *mut ffi::PJRT_Event,
    call: &'static str,
) -> Result<()> {
    Event::new(plugin, event, call).wait()
}
