//! Compile options, serialized by hand as an `xla.CompileOptionsProto`.
//!
//! Field numbers (from XLA's `compile_options.proto` / `xla.proto`):
//! CompileOptionsProto.executable_build_options = 3;
//! ExecutableBuildOptionsProto: device_ordinal = 1, num_replicas = 4, num_partitions = 5,
//! use_spmd_partitioning = 6, device_assignment = 9, use_shardy_partitioner = 19;
//! DeviceAssignmentProto: replica_count = 1, computation_count = 2, computation_devices = 3
//! (each `{ repeated int64 replica_device_ids = 1 }`).
//!
//! An empty options message, or `num_partitions = 0`, aborts the CPU plugin's process (a CHECK in
//! XLA): [`CompileOptions::encode`] always writes both counts, and [`CompileOptions::validate`]
//! refuses zero counts before anything reaches the plugin.

use crate::error::{Error, Result};

/// Which SPMD partitioner XLA runs on a program with sharding annotations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Partitioner {
    /// Shardy (`sdy` dialect), what JAX emits by default.
    #[default]
    Shardy,
    /// GSPMD (`mhlo.sharding` attributes).
    Gspmd,
}

impl Partitioner {
    pub const NAMES: [&'static str; 2] = ["shardy", "gspmd"];
}

impl std::fmt::Display for Partitioner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Partitioner::Shardy => "shardy",
            Partitioner::Gspmd => "gspmd",
        })
    }
}

impl std::str::FromStr for Partitioner {
    type Err = Error;

    fn from_str(s: &str) -> Result<Partitioner> {
        match s.trim() {
            "shardy" => Ok(Partitioner::Shardy),
            "gspmd" => Ok(Partitioner::Gspmd),
            _ => Err(Error::invalid(
                format!("partitioner `{s}`"),
                "use shardy (the default) or gspmd",
            )),
        }
    }
}

/// The most devices a program may run on: more than any slice or cluster has, and a bound on what
/// the options allocate (a device assignment) from counts a program's text declares.
pub const MAX_DEVICES: usize = 1 << 20;

/// How a program is laid out over devices.
#[derive(Clone, Debug, PartialEq)]
pub struct CompileOptions {
    pub num_replicas: usize,
    pub num_partitions: usize,
    /// Run the SPMD partitioner (needed when `num_partitions > 1`).
    pub spmd: bool,
    pub partitioner: Partitioner,
    /// Device ids, replica-major: `devices[r * num_partitions + p]` runs replica `r`, partition `p`.
    /// `None` means `0..num_replicas * num_partitions`.
    pub device_assignment: Option<Vec<i64>>,
    /// XLA debug options set by name on top of the plugin's defaults (`env_option_overrides`),
    /// e.g. `xla_gpu_cuda_data_dir`. Sent as overrides rather than a `DebugOptions` message,
    /// which would replace every default with zero.
    pub debug_options: Vec<(String, DebugValue)>,
}

/// The value of one XLA debug option (`OptionOverrideProto`).
#[derive(Clone, Debug, PartialEq)]
pub enum DebugValue {
    String(String),
    Bool(bool),
    Int(i64),
    Double(f64),
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions::single()
    }
}

impl CompileOptions {
    /// One replica, one partition.
    pub fn single() -> CompileOptions {
        CompileOptions {
            num_replicas: 1,
            num_partitions: 1,
            spmd: false,
            partitioner: Partitioner::Shardy,
            device_assignment: None,
            debug_options: Vec::new(),
        }
    }

    /// An SPMD program over `n` partitions with the given partitioner.
    pub fn spmd(n: usize, partitioner: Partitioner) -> CompileOptions {
        CompileOptions {
            num_replicas: 1,
            num_partitions: n,
            spmd: true,
            partitioner,
            device_assignment: None,
            debug_options: Vec::new(),
        }
    }

    /// Number of devices the program runs on (saturating: [`CompileOptions::validate`] refuses
    /// more than [`MAX_DEVICES`]).
    pub fn num_devices(&self) -> usize {
        self.num_replicas.saturating_mul(self.num_partitions)
    }

    /// The device ids in replica-major order.
    pub fn devices(&self) -> Vec<i64> {
        self.device_assignment
            .clone()
            .unwrap_or_else(|| (0..self.num_devices() as i64).collect())
    }

    /// Refuses options that would abort the plugin or cannot be satisfied.
    pub fn validate(&self) -> Result<()> {
        if self.num_replicas == 0 || self.num_partitions == 0 {
            return Err(Error::invalid(
                format!(
                    "compile options (num_replicas = {}, num_partitions = {})",
                    self.num_replicas, self.num_partitions
                ),
                "both counts must be at least 1",
            ));
        }
        if self.num_devices() > MAX_DEVICES {
            return Err(Error::invalid(
                format!(
                    "compile options (num_replicas = {}, num_partitions = {})",
                    self.num_replicas, self.num_partitions
                ),
                format!("a program runs on at most {MAX_DEVICES} devices"),
            ));
        }
        if let Some(d) = &self.device_assignment {
            if d.len() != self.num_devices() {
                return Err(Error::invalid(
                    format!("device assignment {d:?}"),
                    format!(
                        "give exactly num_replicas × num_partitions = {} device ids",
                        self.num_devices()
                    ),
                ));
            }
            let mut sorted = d.clone();
            sorted.sort_unstable();
            sorted.dedup();
            if sorted.len() != d.len() {
                return Err(Error::invalid(
                    format!("device assignment {d:?}"),
                    "each device may appear only once",
                ));
            }
        }
        Ok(())
    }

    /// Serializes to `xla.CompileOptionsProto` bytes.
    pub fn encode(&self) -> Vec<u8> {
        let devices = self.devices();
        let mut assignment = Vec::new();
        put_varint_field(&mut assignment, 1, self.num_replicas as u64);
        put_varint_field(&mut assignment, 2, self.num_partitions as u64);
        for p in 0..self.num_partitions {
            let mut comp = Vec::new();
            for r in 0..self.num_replicas {
                put_varint_field(&mut comp, 1, devices[r * self.num_partitions + p] as u64);
            }
            put_bytes_field(&mut assignment, 3, &comp);
        }

        let mut build = Vec::new();
        put_varint_field(&mut build, 1, (-1i64) as u64);
        put_varint_field(&mut build, 4, self.num_replicas as u64);
        put_varint_field(&mut build, 5, self.num_partitions as u64);
        put_varint_field(&mut build, 6, self.spmd as u64);
        put_bytes_field(&mut build, 9, &assignment);
        put_varint_field(
            &mut build,
            19,
            (self.spmd && self.partitioner == Partitioner::Shardy) as u64,
        );

        let mut out = Vec::new();
        put_bytes_field(&mut out, 3, &build);
        // CompileOptionsProto.env_option_overrides = 7: map<string, OptionOverrideProto>, each
        // entry { key = 1, value = 2 }; OptionOverrideProto: string_field = 1, bool_field = 2,
        // int_field = 3, double_field = 4.
        for (name, value) in &self.debug_options {
            let mut v = Vec::new();
            match value {
                DebugValue::String(s) => put_bytes_field(&mut v, 1, s.as_bytes()),
                DebugValue::Bool(b) => put_varint_field(&mut v, 2, *b as u64),
                DebugValue::Int(i) => put_varint_field(&mut v, 3, *i as u64),
                DebugValue::Double(d) => {
                    put_varint(&mut v, (4 << 3) | 1);
                    v.extend_from_slice(&d.to_le_bytes());
                }
            }
            let mut entry = Vec::new();
            put_bytes_field(&mut entry, 1, name.as_bytes());
            put_bytes_field(&mut entry, 2, &v);
            put_bytes_field(&mut out, 7, &entry);
        }
        out
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    put_varint(out, u64::from(field) << 3);
    put_varint(out, v);
}

fn put_bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_varint(out, (u64::from(field) << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_single_device_options() {
        // Worked by hand: field 3 (tag 0x1a), then the build options: device_ordinal = -1 (tag 0x08,
        // ten-byte varint), num_replicas = 1 (0x20 0x01), num_partitions = 1 (0x28 0x01),
        // spmd = 0 (0x30 0x00), assignment (tag 0x4a, len 8: 08 01 10 01 1a 02 08 00),
        // shardy = 0 (tag 19 → 0x98 0x01, 0x00).
        let bytes = CompileOptions::single().encode();
        let mut build = vec![0x08];
        build.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        build.extend_from_slice(&[0x20, 0x01, 0x28, 0x01, 0x30, 0x00]);
        build.extend_from_slice(&[0x4a, 0x08, 0x08, 0x01, 0x10, 0x01, 0x1a, 0x02, 0x08, 0x00]);
        build.extend_from_slice(&[0x98, 0x01, 0x00]);
        let mut expected = vec![0x1a, build.len() as u8];
        expected.extend(build);
        assert_eq!(bytes, expected);

        // One string override: field 7 { key "k" (0a 01 6b), value { string_field "v" } (12 03 0a 01 76) }.
        let mut o = CompileOptions::single();
        o.debug_options = vec![("k".into(), DebugValue::String("v".into()))];
        let bytes = o.encode();
        assert_eq!(
            &bytes[expected.len()..],
            &[0x3a, 0x08, 0x0a, 0x01, 0x6b, 0x12, 0x03, 0x0a, 0x01, 0x76]
        );
    }

    #[test]
    fn refuses_zero_counts_and_bad_assignments() {
        let mut o = CompileOptions::spmd(0, Partitioner::Gspmd);
        assert!(o.validate().is_err());
        o.num_partitions = 2;
        o.device_assignment = Some(vec![1, 1]);
        assert!(o.validate().is_err());
        o.device_assignment = Some(vec![1, 0]);
        assert!(o.validate().is_ok());
    }
}

impl CompileOptions {
    /// Options that match what a program declares: `mhlo.num_partitions` / `mhlo.num_replicas` on
    /// its module, SPMD when partitioned, and Shardy when it declares an `sdy.mesh` (else GSPMD).
    pub fn for_program(text: &str) -> CompileOptions {
        let header = text
            .lines()
            .find(|l| l.trim_start().starts_with("module"))
            .unwrap_or("");
        let read = |key: &str| -> Option<usize> {
            let at = header.find(key)? + key.len();
            let rest = header[at..].trim_start().strip_prefix('=')?.trim_start();
            let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            // Too many digits for a count saturates, for `validate` to refuse.
            (!digits.is_empty()).then(|| digits.parse().unwrap_or(usize::MAX))
        };
        let partitions = read("mhlo.num_partitions").unwrap_or(1).max(1);
        let replicas = read("mhlo.num_replicas").unwrap_or(1).max(1);
        CompileOptions {
            num_replicas: replicas,
            num_partitions: partitions,
            spmd: partitions > 1,
            partitioner: if text.contains("sdy.mesh") {
                Partitioner::Shardy
            } else {
                Partitioner::Gspmd
            },
            device_assignment: None,
            debug_options: Vec::new(),
        }
    }
}

#[cfg(test)]
mod program_tests {
    use super::*;

    #[test]
    fn reads_partitions_from_the_module() {
        let o = CompileOptions::for_program(
            "module @m attributes {mhlo.num_partitions = 8 : i32, mhlo.num_replicas = 1 : i32} {\n  sdy.mesh @mesh = <[\"d\"=8]>\n",
        );
        assert_eq!(
            (o.num_partitions, o.spmd, o.partitioner),
            (8, true, Partitioner::Shardy)
        );
        let o = CompileOptions::for_program("module @m {\n");
        assert_eq!((o.num_partitions, o.spmd), (1, false));
    }
}
