//! How the host process allocates the memory a CPU plugin computes in.
//!
//! XLA's CPU runtime allocates each execution's temporaries (187 MiB for the `small` training
//! step) and results with `malloc` and frees them afterwards. Blocks that large are always
//! `mmap`ed by glibc, so every step faults each 4 KiB page in again and the kernel zeroes it:
//! about 49,500 page faults per `small` step, a tenth of the step's CPU time. With glibc's
//! `glibc.malloc.hugetlb=1` tunable, `malloc` asks for transparent huge pages on those blocks
//! (`madvise(MADV_HUGEPAGE)`) and the faults fall to about 4,000 per step. Tunables are read
//! once, when the process starts, so [`use_huge_pages`] re-executes the program with the tunable
//! set; it does nothing where the program already runs with it, where the user set
//! `BASIC_HUGE_PAGES=0`, or off Linux.

/// The environment variable that turns the re-execution off (`0`).
pub const HUGE_PAGES_ENV: &str = "BASIC_HUGE_PAGES";

const TUNABLE: &str = "glibc.malloc.hugetlb=1";

/// Whether this process runs with glibc's huge-page tunable, as [`use_huge_pages`] sets it.
pub fn huge_pages_on() -> bool {
    std::env::var("GLIBC_TUNABLES")
        .map(|t| t.split(':').any(|kv| kv == TUNABLE))
        .unwrap_or(false)
}

/// Re-executes the running program with `glibc.malloc.hugetlb=1` added to `GLIBC_TUNABLES`,
/// unless it already has it, `BASIC_HUGE_PAGES=0` is set, or the platform is not Linux. Call it
/// first thing in `main`, before any thread starts: on success it does not return. If the
/// re-execution fails the program goes on as it is (the tunable only changes speed).
pub fn use_huge_pages() {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        if huge_pages_on() || std::env::var_os(HUGE_PAGES_ENV).is_some_and(|v| v == "0") {
            return;
        }
        let Ok(exe) = std::env::current_exe() else {
            return;
        };
        let tunables = match std::env::var("GLIBC_TUNABLES") {
            Ok(t) if !t.is_empty() => format!("{t}:{TUNABLE}"),
            _ => TUNABLE.to_string(),
        };
        let mut args = std::env::args_os();
        let mut cmd = std::process::Command::new(exe);
        if let Some(arg0) = args.next() {
            cmd.arg0(arg0);
        }
        // `exec` returns only on failure; the program then runs without the tunable.
        let _ = cmd.args(args).env("GLIBC_TUNABLES", tunables).exec();
    }
}
