//! Compile targets: TPU slices and GPU hosts described as data (`targets/*.toml`), compiled for by
//! their own plugin's compiler with no device attached.
//!
//! A target is named `NAME:TOPOLOGY`: `tpu-v5e:2x2` and `tpu-v4:2x2x1` carry libtpu's own topology
//! after the colon (chips along each axis), `h100:8` a GPU model and a device count. Each file says
//! which plugin compiles it, its devices per chip, and per device its HBM bytes, peak dense bf16
//! FLOP/s and HBM bandwidth; a GPU file also carries the `GpuTargetConfigProto` text that the CUDA
//! plugin needs to describe the device without one.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::runtime::{
    find_cuda_data_dir, find_plugin, Backend, CompileOptions, DebugValue, NamedOptions,
    OptionValue, Plugin, Topology, CUDA_TOPOLOGY, TPU_TOPOLOGY,
};

/// The target files, built into the binary so that it plans anywhere.
const BUILT_IN: [(&str, &str); 7] = [
    ("tpu-v4", include_str!("../../targets/tpu-v4.toml")),
    ("tpu-v5e", include_str!("../../targets/tpu-v5e.toml")),
    ("tpu-v5p", include_str!("../../targets/tpu-v5p.toml")),
    ("tpu-v6e", include_str!("../../targets/tpu-v6e.toml")),
    ("a100", include_str!("../../targets/a100.toml")),
    ("h100", include_str!("../../targets/h100.toml")),
    ("h200", include_str!("../../targets/h200.toml")),
];

/// Which plugin compiles a target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetPlugin {
    Tpu,
    Cuda,
}

/// One `targets/NAME.toml`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    pub name: String,
    pub plugin: TargetPlugin,
    pub description: String,
    /// libtpu's topology prefix (`v5e` in `v5e:2x2`); TPU only.
    #[serde(default)]
    pub topology_prefix: Option<String>,
    /// What libtpu expects in `TPU_ACCELERATOR_TYPE` for such a slice, with `{chips}` and
    /// `{2chips}` filled in (`v5litepod-{chips}`); TPU only. Without it libtpu probes for cloud
    /// metadata and warns.
    #[serde(default)]
    pub accelerator_type: Option<String>,
    pub topology_syntax: String,
    /// The topologies listed in errors (any shape libtpu accepts compiles).
    #[serde(default)]
    pub topologies: Vec<String>,
    /// GPUs per host; GPU only.
    #[serde(default)]
    pub devices_per_host: Option<i64>,
    pub devices_per_chip: i64,
    /// Per device.
    pub hbm_bytes: i64,
    /// Per device, dense bf16.
    pub peak_bf16_flops: f64,
    /// Per device, bytes per second.
    pub hbm_bandwidth: f64,
    /// `GpuTargetConfigProto` in protobuf text format; GPU only.
    #[serde(default)]
    pub target_config: Option<String>,
}

impl TargetSpec {
    /// Parses the text of a target file; `file` names it in errors. Public for the fuzz targets.
    #[doc(hidden)]
    pub fn parse(file: &str, text: &str) -> Result<TargetSpec> {
        let s: TargetSpec = toml::from_str(text).map_err(|e| {
            Error::invalid(
                format!("target file `{file}`: {e}"),
                "fix the file (fields: see targets/ in the source tree)",
            )
        })?;
        let bad = |why: &str| Error::invalid(format!("target file `{file}`"), why.to_string());
        match s.plugin {
            TargetPlugin::Tpu if s.topology_prefix.is_none() => {
                return Err(bad("a TPU target needs `topology_prefix`"))
            }
            TargetPlugin::Cuda if s.target_config.is_none() || s.devices_per_host.is_none() => {
                return Err(bad(
                    "a GPU target needs `target_config` and `devices_per_host`",
                ))
            }
            _ => {}
        }
        let positive = |x: f64| x.is_finite() && x > 0.0;
        let fits = (1..=64).contains(&s.devices_per_chip)
            && s.hbm_bytes >= 1
            && positive(s.peak_bf16_flops)
            && positive(s.hbm_bandwidth)
            && s.devices_per_host.is_none_or(|d| (1..=1024).contains(&d));
        if !fits {
            return Err(bad(
                "devices_per_chip (1 to 64), devices_per_host (1 to 1024), hbm_bytes, \
                 peak_bf16_flops and hbm_bandwidth must be positive finite numbers",
            ));
        }
        Ok(s)
    }

    /// Every built-in target.
    pub fn all() -> Result<Vec<TargetSpec>> {
        BUILT_IN
            .iter()
            .map(|(n, t)| TargetSpec::parse(&format!("targets/{n}.toml"), t))
            .collect()
    }
}

/// A target and its topology: what `--target NAME:TOPOLOGY` names.
#[derive(Clone, Debug)]
pub struct Target {
    pub spec: TargetSpec,
    /// What follows the colon: libtpu's topology (`2x2x1`) or a GPU count (`8`).
    pub topology: String,
    /// Chips along each axis (TPU) or `[hosts, GPUs per host]` (GPU).
    pub shape: Vec<i64>,
}

fn names() -> String {
    BUILT_IN
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Variables libtpu sets in its own process when it cannot reach a TPU VM's metadata server.
const LIBTPU_WRITES: [&str; 2] = ["TPU_WORKER_ID", "CLOUD_TPU_TASK_ID"];

impl Target {
    /// Parses `NAME:TOPOLOGY`. An unknown name or topology is one error listing the valid ones.
    pub fn parse(s: &str) -> Result<Target> {
        let (name, topo) = s.split_once(':').ok_or_else(|| {
            Error::invalid(
                format!("target `{s}`"),
                format!(
                    "write NAME:TOPOLOGY, e.g. tpu-v5e:2x2, tpu-v4:2x2x1, h100:8; targets: {}",
                    names()
                ),
            )
        })?;
        let name = name.trim().to_ascii_lowercase();
        let Some((_, text)) = BUILT_IN.iter().find(|(n, _)| *n == name) else {
            return Err(Error::invalid(
                format!("target `{name}`"),
                format!("use one of: {}", names()),
            ));
        };
        let spec = TargetSpec::parse(&format!("targets/{name}.toml"), text)?;
        let topo = topo.trim().to_ascii_lowercase();
        let bad_topology = || {
            Error::invalid(
                format!("topology `{topo}` of target `{name}`"),
                if spec.topologies.is_empty() {
                    format!("give {}", spec.topology_syntax)
                } else {
                    format!(
                        "give {}; for example {}",
                        spec.topology_syntax,
                        spec.topologies.join(", ")
                    )
                },
            )
        };
        let shape = match spec.plugin {
            TargetPlugin::Tpu => {
                let dims: Vec<i64> = topo
                    .split('x')
                    .map(|d| d.parse::<i64>().ok().filter(|&v| v >= 1))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(bad_topology)?;
                let want = spec
                    .topologies
                    .first()
                    .map_or(dims.len(), |t| t.split('x').count());
                if dims.len() != want {
                    return Err(bad_topology());
                }
                dims
            }
            TargetPlugin::Cuda => {
                let n: i64 = topo
                    .parse()
                    .ok()
                    .filter(|&v| v >= 1)
                    .ok_or_else(bad_topology)?;
                let per_host = spec.devices_per_host.unwrap_or(8);
                if n <= per_host {
                    if per_host % n != 0 {
                        return Err(bad_topology());
                    }
                    vec![1, n]
                } else if n % per_host == 0 {
                    vec![n / per_host, per_host]
                } else {
                    return Err(bad_topology());
                }
            }
        };
        // Chips and devices are products of the topology: bounded before anything multiplies them.
        let devices = shape
            .iter()
            .chain([&spec.devices_per_chip])
            .try_fold(1i64, |n, &d| n.checked_mul(d));
        if devices.is_none_or(|d| d > crate::runtime::MAX_DEVICES as i64) {
            return Err(Error::invalid(
                format!("topology `{topo}` of target `{name}`"),
                format!(
                    "a target has at most {} devices",
                    crate::runtime::MAX_DEVICES
                ),
            ));
        }
        Ok(Target {
            spec,
            topology: topo,
            shape,
        })
    }

    /// `tpu-v5e:2x2`.
    pub fn name(&self) -> String {
        format!("{}:{}", self.spec.name, self.topology)
    }

    /// Chips in the target.
    pub fn chips(&self) -> i64 {
        self.shape.iter().product()
    }

    /// Devices the target's compiler sees.
    pub fn devices(&self) -> i64 {
        self.chips() * self.spec.devices_per_chip
    }

    /// Finds and loads the plugin that compiles this target.
    pub fn plugin(&self) -> Result<Arc<Plugin>> {
        // `BASIC_TPU_PLUGIN` / `BASIC_CUDA_PLUGIN` name a plugin file of the user's own.
        let (var, default) = match self.spec.plugin {
            TargetPlugin::Tpu => ("BASIC_TPU_PLUGIN", Backend::Tpu),
            TargetPlugin::Cuda => ("BASIC_CUDA_PLUGIN", Backend::Cuda),
        };
        let backend = match std::env::var_os(var) {
            Some(p) if !p.is_empty() => Backend::Path(PathBuf::from(p)),
            _ => default,
        };
        let path = find_plugin(&backend)?;
        if self.spec.plugin == TargetPlugin::Tpu {
            // Without TPU metadata libtpu probes for it at load and prints errors; it needs none
            // to compile for a described slice. Read once, when the plugin loads.
            let vars = [
                (
                    "TPU_ACCELERATOR_TYPE",
                    self.spec
                        .accelerator_type
                        .as_deref()
                        .unwrap_or("compile-only")
                        .replace("{2chips}", &(2 * self.chips()).to_string())
                        .replace("{chips}", &self.chips().to_string()),
                ),
                ("TPU_WORKER_HOSTNAMES", "localhost".to_string()),
                // libtpu takes a machine-wide lock file (/tmp/libtpu_lockfile) so that one process
                // owns the chips; a compile-only process owns none, and plans and tests run several.
                ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1".to_string()),
                ("TPU_SKIP_MDS_QUERY", "1".to_string()),
            ];
            for (k, v) in vars {
                if std::env::var_os(k).is_none() {
                    std::env::set_var(k, v);
                }
            }
        }
        Plugin::load(path)
    }

    /// The topology description, from the target's plugin, with nothing attached.
    pub fn topology(&self) -> Result<Topology> {
        // With no metadata server, libtpu writes its warning ("WARNING: could not determine TPU
        // worker number, ...") into TPU_WORKER_ID and CLOUD_TPU_TASK_ID of this process as it
        // initialises, where the job discovery of this process and of every process it starts
        // would read it as a GKE worker id. What it wrote is taken back.
        let absent: Vec<&str> = LIBTPU_WRITES
            .iter()
            .copied()
            .filter(|k| std::env::var_os(k).is_none())
            .collect();
        let topology = self.topology_of_plugin();
        for k in absent {
            std::env::remove_var(k);
        }
        let topology = topology?;
        if topology.devices().len() as i64 != self.devices() {
            return Err(Error::invalid(
                format!(
                    "target `{}`: the plugin describes {} device(s), the target file {}",
                    self.name(),
                    topology.devices().len(),
                    self.devices()
                ),
                "correct devices_per_chip in the target file",
            ));
        }
        Ok(topology)
    }

    fn topology_of_plugin(&self) -> Result<Topology> {
        let plugin = self.plugin()?;
        Ok(match self.spec.plugin {
            TargetPlugin::Tpu => {
                let name = format!(
                    "{}:{}",
                    self.spec.topology_prefix.as_deref().unwrap_or_default(),
                    self.topology
                );
                Topology::new(plugin, &name, &NamedOptions::new(&TPU_TOPOLOGY, vec![])?)?
            }
            TargetPlugin::Cuda => {
                let options = NamedOptions::new(
                    &CUDA_TOPOLOGY,
                    vec![
                        (
                            "target_config".into(),
                            OptionValue::String(
                                self.spec.target_config.clone().unwrap_or_default(),
                            ),
                        ),
                        (
                            "topology".into(),
                            OptionValue::String(format!("1x{}x{}", self.shape[0], self.shape[1])),
                        ),
                    ],
                )?;
                Topology::new(plugin, "", &options)?
            }
        })
    }

    /// The compile options for this target: the layout's, plus what the target's compiler needs
    /// (the CUDA compiler reads libdevice and ptxas from `xla_gpu_cuda_data_dir`, which `basic`
    /// points at the installed packages itself).
    pub fn compile_options(&self, base: &CompileOptions) -> Result<CompileOptions> {
        let mut o = base.clone();
        if self.spec.plugin == TargetPlugin::Cuda
            && !o
                .debug_options
                .iter()
                .any(|(n, _)| n == "xla_gpu_cuda_data_dir")
        {
            let dir = find_cuda_data_dir()?;
            o.debug_options.push((
                "xla_gpu_cuda_data_dir".into(),
                DebugValue::String(dir.display().to_string()),
            ));
        }
        Ok(o)
    }

    /// A lower bound on the step time: `flops` spread evenly over the `devices` the program runs
    /// on, each at its peak dense bf16 rate. Real steps are slower (communication, memory
    /// traffic, imperfect overlap).
    pub fn step_time_bound(&self, flops: f64, devices: usize) -> f64 {
        flops / (devices.max(1) as f64 * self.spec.peak_bf16_flops)
    }
}

/// A compile that the target's compiler refused because the program does not fit its memory (libtpu
/// stops with RESOURCE_EXHAUSTED instead of returning figures): what it said it needs and has.
#[derive(Clone, Debug, PartialEq)]
pub struct OutOfMemory {
    /// Bytes the compiler said it needs (for the part it measured, e.g. the temporaries alone):
    /// a lower bound on the peak.
    pub required_bytes: i64,
    /// Bytes it said are available.
    pub available_bytes: Option<i64>,
    pub message: String,
}

impl OutOfMemory {
    /// The figures to report for a refused program: what the compiler said it needs, as its
    /// temporaries and peak (a lower bound on the real peak).
    pub fn memory_stats(&self) -> crate::runtime::MemoryStats {
        crate::runtime::MemoryStats {
            temp_bytes: self.required_bytes,
            peak_bytes: self.required_bytes,
            ..Default::default()
        }
    }

    /// Reads a compiler's out-of-memory error: `... required for HLO temporaries (19.75G) exceeds
    /// available HBM (15.75G)` or `Used 20.5G of 15.75G hbm`. `None` for any other error.
    pub fn from_error(e: &Error) -> Option<OutOfMemory> {
        let Error::Pjrt { code, message, .. } = e else {
            return None;
        };
        if *code != "RESOURCE_EXHAUSTED" {
            return None;
        }
        let sizes = regex::Regex::new(r"(\d+(?:\.\d+)?)\s*([KMGT])i?B?\b").ok()?;
        let mut found = sizes.captures_iter(message).filter_map(|c| {
            let v: f64 = c[1].parse().ok()?;
            let k = match &c[2] {
                "K" => 1024f64,
                "M" => 1024f64.powi(2),
                "G" => 1024f64.powi(3),
                _ => 1024f64.powi(4),
            };
            Some((v * k) as i64)
        });
        let required_bytes = found.next()?;
        Some(OutOfMemory {
            required_bytes,
            available_bytes: found.next(),
            message: message.lines().next().unwrap_or_default().to_string(),
        })
    }
}

/// What identifies a plugin's compiler in manifests and caches: its package and version
/// (`libtpu 0.0.42.1`), else the platform version it reports.
pub fn plugin_identity(plugin: &Plugin, platform_version: &str) -> String {
    plugin_package_version(plugin.path()).unwrap_or_else(|| platform_version.to_string())
}

/// The package and version a plugin file was installed from (`libtpu 0.0.42.1`): the
/// `*.dist-info` beside its package folder whose `RECORD` lists the file; else `None`.
pub fn plugin_package_version(plugin: &std::path::Path) -> Option<String> {
    let plugin = plugin.canonicalize().ok()?;
    for dir in plugin.ancestors().skip(2).take(4) {
        let relative = plugin
            .strip_prefix(dir)
            .ok()?
            .to_string_lossy()
            .into_owned();
        let Ok(rd) = std::fs::read_dir(dir) else {
            continue;
        };
        for info in rd.flatten().map(|e| e.path()) {
            if info.extension().is_none_or(|e| e != "dist-info") {
                continue;
            }
            let listed = std::fs::read_to_string(info.join("RECORD"))
                .is_ok_and(|r| r.lines().any(|l| l.split(',').next() == Some(&relative)));
            if !listed {
                continue;
            }
            let meta = std::fs::read_to_string(info.join("METADATA")).ok()?;
            let field = |k: &str| {
                meta.lines()
                    .find_map(|l| l.strip_prefix(k))
                    .map(|v| v.trim().to_string())
            };
            return Some(format!("{} {}", field("Name:")?, field("Version:")?));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_contract() {
        let t = Target::parse("tpu-v4:2x2x1").unwrap();
        assert_eq!((t.chips(), t.devices()), (4, 8));
        let t = Target::parse("tpu-v5e:2x2").unwrap();
        assert_eq!((t.chips(), t.devices()), (4, 4));
        let t = Target::parse("h100:8").unwrap();
        assert_eq!((t.shape.clone(), t.devices()), (vec![1, 8], 8));
        let t = Target::parse("h200:16").unwrap();
        assert_eq!(t.shape, vec![2, 8]);
        assert_eq!(TargetSpec::all().unwrap().len(), BUILT_IN.len());
    }

    #[test]
    fn reads_libtpu_out_of_memory_errors() {
        let e = Error::Pjrt {
            call: "PJRT_Compile",
            code: "RESOURCE_EXHAUSTED",
            message: "Ran out of memory on HBM, the total memory required for HLO temporaries (19.75G) exceeds available HBM (15.75G).".into(),
        };
        let o = OutOfMemory::from_error(&e).unwrap();
        assert_eq!(o.required_bytes, (19.75 * 1024f64.powi(3)) as i64);
        assert_eq!(o.available_bytes, Some((15.75 * 1024f64.powi(3)) as i64));
        let other = Error::Pjrt {
            call: "PJRT_Compile",
            code: "INTERNAL",
            message: "19.75G".into(),
        };
        assert!(OutOfMemory::from_error(&other).is_none());
    }

    #[test]
    fn bad_names_and_topologies_list_the_valid_ones() {
        let e = Target::parse("tpu-v9:2x2").unwrap_err().to_string();
        assert!(e.contains("tpu-v5e") && e.contains("h100"), "{e}");
        let e = Target::parse("tpu-v5e:2x2x1").unwrap_err().to_string();
        assert!(e.contains("2x2") && e.contains("16x16"), "{e}");
        let e = Target::parse("tpu-v4:2x2").unwrap_err().to_string();
        assert!(e.contains("2x2x1"), "{e}");
        let e = Target::parse("h100:3").unwrap_err().to_string();
        assert!(e.contains("multiple of 8"), "{e}");
        assert!(Target::parse("h100").is_err());
        assert!(Target::parse("h100:0").is_err());
    }
}
