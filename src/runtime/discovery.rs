//! Finding a PJRT plugin from a backend name: `cpu`, `cuda`, `tpu`, or a path.
//!
//! Order for a name: the environment variable `BASIC_PJRT_PLUGIN` (when no backend is given),
//! the project-local folder `.pjrt/` that `scripts/test` and `scripts/quickstart` install into
//! (searched from the current directory upwards, and in the source tree `basic` was built from),
//! then Python's site-packages folders.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};

/// The environment variable that names a plugin (a backend name or a path).
pub const PLUGIN_ENV: &str = "BASIC_PJRT_PLUGIN";

/// Project-local folder the setup scripts install plugins into.
pub const LOCAL_DIR: &str = ".pjrt";

/// A known CPU plugin: its package, the folder `scripts/` installs it into, and the file inside.
#[derive(Clone, Copy, Debug)]
pub struct KnownPlugin {
    pub package: &'static str,
    pub relative: &'static str,
}

/// CPU plugins in order of preference, which is `--backend cpu`'s choice: three builds of XLA's
/// CPU compiler, each a single `.so` that needs only the C and C++ runtime.
///
/// 1. `lammps-jax-pjrt-cpu` 0.11.2 (Apache-2.0; 202 MB): XLA's CPU plugin built from the XLA of
///    jaxlib 0.11.2 by a third party, for LAMMPS. The fastest on basic's training step
///    (BENCHMARKS.md, `benches/peers.sh`: 0.74–0.85× the step time of `xla-cpu-pjrt`).
/// 2. `fastatomstruct-xla-cpu` 2026.6.23 (Apache-2.0; 274 MB): the unmodified zml
///    pjrt-artifacts CPU build of 2026-06, republished by a third party.
/// 3. `xla-cpu-pjrt` 0.0.1 (Apache-2.0; 259 MB): published by the OpenXLA project, the plugin
///    whose 0.81 header the bindings are laid out from; an older XLA (2025-11).
///
/// All three pass the conformance suite (`tests/runtime_conformance.rs`) and compile the golden
/// programs; the first one found is used.
pub const CPU_PLUGINS: [KnownPlugin; 3] = [
    KnownPlugin {
        package: "lammps-jax-pjrt-cpu",
        relative: "lammps_jax_pjrt_cpu/pjrt_c_api_cpu_plugin.so",
    },
    KnownPlugin {
        package: "fastatomstruct-xla-cpu",
        relative: "fastatomstruct_xla_cpu/libpjrt_cpu.so",
    },
    KnownPlugin {
        package: "xla-cpu-pjrt",
        relative: "xla_plugins/xla_cpu_pjrt/xla_cpu_pjrt.so",
    },
];

/// What the user asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    Cpu,
    Cuda,
    Tpu,
    Path(PathBuf),
}

impl Backend {
    /// `cpu`, `cuda`, `gpu`, `tpu`, or anything else as a path.
    pub fn parse(s: &str) -> Backend {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Backend::Cpu,
            "cuda" | "gpu" => Backend::Cuda,
            "tpu" => Backend::Tpu,
            _ => Backend::Path(PathBuf::from(s.trim())),
        }
    }

    /// The backend from a flag, else from `BASIC_PJRT_PLUGIN`, else CPU.
    pub fn from_flag_or_env(flag: Option<&str>) -> Backend {
        match flag {
            Some(f) => Backend::parse(f),
            None => match std::env::var(PLUGIN_ENV) {
                Ok(v) if !v.trim().is_empty() => Backend::parse(&v),
                _ => Backend::Cpu,
            },
        }
    }

    fn name(&self) -> String {
        match self {
            Backend::Cpu => "cpu".into(),
            Backend::Cuda => "cuda".into(),
            Backend::Tpu => "tpu".into(),
            Backend::Path(p) => p.display().to_string(),
        }
    }
}

/// Folders that may hold a project-local `.pjrt/`: the current directory and its parents, the
/// executable's folder and its parents, and the source tree this binary was built from.
fn local_roots() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    let mut push_ancestors = |start: &Path| {
        for a in start.ancestors() {
            let d = a.join(LOCAL_DIR);
            if !roots.contains(&d) {
                roots.push(d);
            }
        }
    };
    if let Ok(cwd) = std::env::current_dir() {
        push_ancestors(&cwd);
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            push_ancestors(dir);
        }
    }
    push_ancestors(Path::new(env!("CARGO_MANIFEST_DIR")));
    roots
}

/// Python package folders: `$VIRTUAL_ENV`'s, and what `python3` reports (site and user site).
fn python_site_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(venv) = std::env::var("VIRTUAL_ENV") {
        if let Ok(rd) = std::fs::read_dir(Path::new(&venv).join("lib")) {
            for e in rd.flatten() {
                dirs.push(e.path().join("site-packages"));
            }
        }
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import site,sys\nfor p in site.getsitepackages()+[site.getusersitepackages()]+sys.path: print(p)",
        ])
        .output();
    if let Ok(out) = out {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let p = PathBuf::from(line.trim());
            if !line.trim().is_empty() && p.is_dir() && !dirs.contains(&p) {
                dirs.push(p);
            }
        }
    }
    dirs
}

/// All CPU plugins that can be found, one per known package (the project-local copy first).
pub fn find_cpu_plugins() -> Vec<(KnownPlugin, PathBuf)> {
    let site = python_site_dirs();
    CPU_PLUGINS
        .iter()
        .filter_map(|k| {
            cpu_candidates(k, &site)
                .into_iter()
                .find(|p| p.is_file())
                .map(|p| (*k, p))
        })
        .collect()
}

fn cpu_candidates(k: &KnownPlugin, site: &[PathBuf]) -> Vec<PathBuf> {
    local_roots()
        .iter()
        .map(|r| r.join(k.package).join(k.relative))
        .chain(site.iter().map(|s| s.join(k.relative)))
        .collect()
}

/// Matches `dir/<prefix>*/<file>` for the CUDA plugin's versioned folder names.
fn glob_one(dir: &Path, prefix: &str, file: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        let mut entries: Vec<_> = rd.flatten().map(|e| e.path()).collect();
        entries.sort();
        // Newest CUDA first (xla_cuda13 before xla_cuda12).
        entries.reverse();
        for p in entries {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.starts_with(prefix) {
                out.push(p.join(file));
            }
        }
    }
    out
}

/// Resolves a backend to the path of a plugin file.
pub fn find_plugin(backend: &Backend) -> Result<PathBuf> {
    let (searched, install): (Vec<PathBuf>, String) = match backend {
        Backend::Path(p) => {
            return if p.is_file() {
                Ok(p.clone())
            } else {
                Err(Error::PluginLoad {
                    path: p.clone(),
                    reason: "no such file; pass the path of a PJRT plugin `.so`, or one of the backend names cpu, cuda, tpu".into(),
                })
            };
        }
        Backend::Cpu => {
            let site = python_site_dirs();
            let searched: Vec<PathBuf> = CPU_PLUGINS
                .iter()
                .flat_map(|k| cpu_candidates(k, &site))
                .collect();
            if let Some(p) = searched.iter().find(|p| p.is_file()) {
                return Ok(p.clone());
            }
            (
                searched,
                format!(
                    "python3 -m pip install --no-deps --target {LOCAL_DIR}/lammps-jax-pjrt-cpu lammps-jax-pjrt-cpu==0.11.2   (or run scripts/test, which installs all three CPU plugins)"
                ),
            )
        }
        Backend::Cuda => {
            let site = python_site_dirs();
            // The project-local copy first (`scripts/test` installs jax-cuda13-pjrt there).
            let searched: Vec<PathBuf> = local_roots()
                .iter()
                .flat_map(|r| {
                    ["jax-cuda", "xla-cuda"]
                        .into_iter()
                        .flat_map(|prefix| glob_one(r, prefix, "jax_plugins"))
                        .flat_map(|j| glob_one(&j, "xla_cuda", "xla_cuda_plugin.so"))
                        .collect::<Vec<_>>()
                })
                .chain(site.iter().flat_map(|s| {
                    glob_one(&s.join("jax_plugins"), "xla_cuda", "xla_cuda_plugin.so")
                }))
                .collect();
            if let Some(p) = searched.iter().find(|p| p.is_file()) {
                return Ok(p.clone());
            }
            let mut shown = searched;
            shown.extend(
                site.iter()
                    .map(|s| s.join("jax_plugins/xla_cuda*/xla_cuda_plugin.so")),
            );
            (
                shown,
                format!("python3 -m pip install --no-deps --target {LOCAL_DIR}/jax-cuda13-pjrt jax-cuda13-pjrt==0.10.2   (or run scripts/test, which does it)"),
            )
        }
        Backend::Tpu => {
            let site = python_site_dirs();
            let searched: Vec<PathBuf> = local_roots()
                .iter()
                .map(|r| r.join("libtpu/libtpu/libtpu.so"))
                .chain(site.iter().map(|s| s.join("libtpu/libtpu.so")))
                .collect();
            if let Some(p) = searched.iter().find(|p| p.is_file()) {
                return Ok(p.clone());
            }
            (
                searched,
                format!("python3 -m pip install --no-deps --target {LOCAL_DIR}/libtpu libtpu==0.0.42.1   (or run scripts/test, which does it)"),
            )
        }
    };
    Err(Error::PluginNotFound {
        backend: backend.name(),
        searched,
        install,
    })
}

/// The folder the CUDA compiler reads `nvvm/libdevice/libdevice.10.bc` and `bin/ptxas` from
/// (XLA's `xla_gpu_cuda_data_dir`): the project-local `.pjrt/cuda-tools/nvidia/cu13` that
/// `scripts/test` installs (PyPI `nvidia-nvvm` and `nvidia-cuda-nvcc`), else the same packages in
/// Python's site-packages.
pub fn find_cuda_data_dir() -> Result<PathBuf> {
    let has = |d: &Path| d.join("nvvm/libdevice/libdevice.10.bc").is_file();
    let mut searched = Vec::new();
    for root in local_roots() {
        for cu in ["cu13", "cu12"] {
            searched.push(root.join("cuda-tools/nvidia").join(cu));
        }
    }
    for site in python_site_dirs() {
        for cu in ["cu13", "cu12"] {
            searched.push(site.join("nvidia").join(cu));
        }
        searched.push(site.join("nvidia/cuda_nvcc"));
    }
    if let Some(d) = searched.iter().find(|d| has(d)) {
        return Ok(d.clone());
    }
    Err(Error::PluginNotFound {
        backend: "cuda compiler tools (libdevice, ptxas)".into(),
        searched: searched
            .iter()
            .map(|d| d.join("nvvm/libdevice/libdevice.10.bc"))
            .collect(),
        install: format!(
            "python3 -m pip install --no-deps --target {LOCAL_DIR}/cuda-tools nvidia-nvvm==13.0.88 nvidia-cuda-nvcc==13.0.88   (or run scripts/test, which does it)"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_backend_names() {
        assert_eq!(Backend::parse("CPU"), Backend::Cpu);
        assert_eq!(Backend::parse("gpu"), Backend::Cuda);
        assert_eq!(Backend::parse("tpu"), Backend::Tpu);
        assert_eq!(Backend::parse("/x/y.so"), Backend::Path("/x/y.so".into()));
    }

    #[test]
    fn missing_path_names_the_path() {
        let e = find_plugin(&Backend::Path("/nonexistent/plugin.so".into())).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/plugin.so"), "{e}");
    }
}
