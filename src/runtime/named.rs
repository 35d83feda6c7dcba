//! Typed plugin options (`PJRT_NamedValue` lists), checked against a schema before any reaches a
//! plugin.
//!
//! A plugin reads its options by name and type, and at least one aborts the process on a value of
//! the wrong type (the CPU plugin on a `cpu_device_count` that is not an int64). Every option list
//! `basic` sends is therefore built from [`OptionValue`]s and checked against the [`OptionSchema`]
//! of the call it is for: an unknown name or a wrong type is an error that names the option and
//! lists what the call takes, and nothing is sent.

use std::ffi::CString;
use std::ptr::null_mut;

use super::ffi;
use crate::error::{Error, Result};

/// The type of one option, as the plugin reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptionKind {
    String,
    Int64,
    Int64List,
    Float,
    Bool,
}

impl std::fmt::Display for OptionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OptionKind::String => "string",
            OptionKind::Int64 => "int64",
            OptionKind::Int64List => "int64 list",
            OptionKind::Float => "float",
            OptionKind::Bool => "bool",
        })
    }
}

/// One option's value.
#[derive(Clone, Debug, PartialEq)]
pub enum OptionValue {
    String(String),
    Int64(i64),
    Int64List(Vec<i64>),
    Float(f32),
    Bool(bool),
}

impl OptionValue {
    pub fn kind(&self) -> OptionKind {
        match self {
            OptionValue::String(_) => OptionKind::String,
            OptionValue::Int64(_) => OptionKind::Int64,
            OptionValue::Int64List(_) => OptionKind::Int64List,
            OptionValue::Float(_) => OptionKind::Float,
            OptionValue::Bool(_) => OptionKind::Bool,
        }
    }
}

/// The options one PJRT call of one plugin takes: names and types.
#[derive(Clone, Copy, Debug)]
pub struct OptionSchema {
    /// What the options are for, for messages (e.g. "CPU client creation").
    pub call: &'static str,
    pub options: &'static [(&'static str, OptionKind)],
}

/// `PJRT_Client_Create` on the CPU plugins.
pub const CPU_CLIENT: OptionSchema = OptionSchema {
    call: "CPU client creation",
    options: &[("cpu_device_count", OptionKind::Int64)],
};

/// `PJRT_Client_Create` on the CUDA plugin, the options `basic` sets: the multi-host layout and
/// the mock multi-host mode (the plugin refuses names it does not know).
pub const CUDA_CLIENT: OptionSchema = OptionSchema {
    call: "CUDA client creation",
    options: &[
        ("node_id", OptionKind::Int64),
        ("num_nodes", OptionKind::Int64),
        ("enable_mock_nccl", OptionKind::Bool),
        ("mock_gpu_topology", OptionKind::String),
    ],
};

/// `PJRT_TopologyDescription_Create` on the CUDA plugin: the target's `GpuTargetConfigProto` in
/// protobuf text format and the topology (`"1x1x8"`: slices × hosts × devices per host).
pub const CUDA_TOPOLOGY: OptionSchema = OptionSchema {
    call: "CUDA topology creation",
    options: &[
        ("target_config", OptionKind::String),
        ("topology", OptionKind::String),
    ],
};

/// `PJRT_TopologyDescription_Create` on libtpu: the topology is the name itself (`v5e:2x2`).
pub const TPU_TOPOLOGY: OptionSchema = OptionSchema {
    call: "TPU topology creation",
    options: &[],
};

/// A checked list of named options, in the order given.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NamedOptions {
    entries: Vec<(String, OptionValue)>,
}

impl NamedOptions {
    /// Checks every option against `schema`: known name, right type, no duplicates.
    pub fn new(schema: &OptionSchema, entries: Vec<(String, OptionValue)>) -> Result<NamedOptions> {
        let known = || {
            if schema.options.is_empty() {
                "it takes no options".to_string()
            } else {
                format!(
                    "it takes {}",
                    schema
                        .options
                        .iter()
                        .map(|(n, k)| format!("`{n}` ({k})"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        };
        for (i, (name, value)) in entries.iter().enumerate() {
            let Some((_, kind)) = schema.options.iter().find(|(n, _)| n == name) else {
                return Err(Error::invalid(
                    format!("option `{name}` for {}", schema.call),
                    format!("remove it: {}", known()),
                ));
            };
            if value.kind() != *kind {
                return Err(Error::invalid(
                    format!(
                        "option `{name}` for {}: a {} value",
                        schema.call,
                        value.kind()
                    ),
                    format!("give it as {kind}"),
                ));
            }
            if entries[..i].iter().any(|(n, _)| n == name) {
                return Err(Error::invalid(
                    format!("option `{name}` for {}", schema.call),
                    "give each option once",
                ));
            }
        }
        Ok(NamedOptions { entries })
    }

    pub fn entries(&self) -> &[(String, OptionValue)] {
        &self.entries
    }

    /// The C layout, valid while the returned value lives.
    pub(crate) fn raw(&self) -> Result<RawOptions> {
        let mut strings = Vec::new();
        let mut values = Vec::new();
        for (name, value) in &self.entries {
            let cname = CString::new(name.as_str()).map_err(|_| {
                Error::invalid(
                    format!("option name {name:?}"),
                    "option names cannot contain NUL bytes",
                )
            })?;
            let (type_, v, size) = match value {
                OptionValue::String(s) => {
                    let c = CString::new(s.as_str()).map_err(|_| {
                        Error::invalid(
                            format!("option `{name}`"),
                            "option values cannot contain NUL bytes",
                        )
                    })?;
                    let p = c.as_ptr();
                    strings.push(c);
                    (
                        ffi::NAMED_VALUE_STRING,
                        ffi::NamedValueUnion { string_value: p },
                        s.len(),
                    )
                }
                OptionValue::Int64(i) => (
                    ffi::NAMED_VALUE_INT64,
                    ffi::NamedValueUnion { int64_value: *i },
                    1,
                ),
                OptionValue::Int64List(l) => (
                    ffi::NAMED_VALUE_INT64_LIST,
                    ffi::NamedValueUnion {
                        int64_array_value: l.as_ptr(),
                    },
                    l.len(),
                ),
                OptionValue::Float(x) => (
                    ffi::NAMED_VALUE_FLOAT,
                    ffi::NamedValueUnion { float_value: *x },
                    1,
                ),
                OptionValue::Bool(b) => (
                    ffi::NAMED_VALUE_BOOL,
                    ffi::NamedValueUnion { bool_value: *b },
                    1,
                ),
            };
            values.push(ffi::PJRT_NamedValue {
                struct_size: std::mem::size_of::<ffi::PJRT_NamedValue>(),
                extension_start: null_mut(),
                name: cname.as_ptr(),
                name_size: name.len(),
                type_,
                value: v,
                value_size: size,
            });
            strings.push(cname);
        }
        Ok(RawOptions {
            _strings: strings,
            values,
        })
    }
}

/// Options laid out for the C API. The `CString`s behind the pointers live as long as this value
/// (moving a `CString` does not move its heap bytes); int64 lists point into the `NamedOptions`.
pub(crate) struct RawOptions {
    _strings: Vec<CString>,
    pub values: Vec<ffi::PJRT_NamedValue>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_names_types_and_duplicates() {
        let ok = NamedOptions::new(
            &CPU_CLIENT,
            vec![("cpu_device_count".into(), OptionValue::Int64(8))],
        )
        .unwrap();
        assert_eq!(ok.raw().unwrap().values[0].type_, ffi::NAMED_VALUE_INT64);
        // The CPU plugin aborts on this one; it must never get through.
        let e = NamedOptions::new(
            &CPU_CLIENT,
            vec![("cpu_device_count".into(), OptionValue::String("8".into()))],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("cpu_device_count") && e.contains("int64"), "{e}");
        let e = NamedOptions::new(
            &CUDA_TOPOLOGY,
            vec![("topolgy".into(), OptionValue::String("1x1x1".into()))],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("topolgy") && e.contains("`target_config`"),
            "{e}"
        );
        let twice = vec![
            ("topology".into(), OptionValue::String("1x1x1".into())),
            ("topology".into(), OptionValue::String("1x1x2".into())),
        ];
        assert!(NamedOptions::new(&CUDA_TOPOLOGY, twice).is_err());
    }
}
