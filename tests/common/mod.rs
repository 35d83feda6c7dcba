//! Shared test helpers: finding the CPU plugins the test setup installs.
#![allow(dead_code)]

use std::path::PathBuf;

use basic::runtime::{find_cpu_plugins, Runtime};

/// Every CPU plugin found, as (package, path). Fails loudly when the main CPU plugin is missing:
/// `scripts/test` installs it, so its absence is a broken setup, not a reason to skip.
pub fn cpu_plugins() -> Vec<(&'static str, PathBuf)> {
    let found: Vec<_> = find_cpu_plugins()
        .into_iter()
        .map(|(k, p)| (k.package, p))
        .collect();
    assert!(
        found.iter().any(|(k, _)| *k == "xla-cpu-pjrt"),
        "the xla-cpu-pjrt plugin is not installed; run scripts/test (it installs it into .pjrt/)"
    );
    found
}

/// A runtime on the preferred CPU plugin with `n` devices.
pub fn cpu_runtime(n: usize) -> Runtime {
    let (_, path) = cpu_plugins().remove(0);
    Runtime::open_path(&path, Some(n)).expect("open CPU runtime")
}

/// Asserts two float slices agree within `tol` (absolute + relative).
pub fn assert_close(got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "length: got {got:?}, want {want:?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "element {i}: got {g}, want {w} (tol {tol})\n got {got:?}\nwant {want:?}"
        );
    }
}
