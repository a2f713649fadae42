//! Code shared by carve's tests, examples and benchmarks. Dev-only (`publish = false`): crates
//! name it under `[dev-dependencies]` only, which the tidy test checks. It replaces the source
//! includes (`#[path = ...] mod ...;`) that tests used to share code with, which cargo could not
//! see.
//!
//! - [`cargo_build`]: builds workspace artifacts (cdylibs, binaries) for tests and benchmarks;
//! - [`fake_cuda`], [`fake_nvml`]: the stand-in drivers, built and laid out where programs look
//!   for the real ones;
//! - [`cli`]: the helpers of carve-cli's integration tests (command builders, JSON output, MIG
//!   devices, the agent's ready line, signals); [`http`]: a minimal HTTP client for the agent's API;
//! - `sim_vs_real` (feature `sim-vs-real`): the real side of carve-simulate's sim-vs-real
//!   comparison (the daemon, the shim and `carve-workload` on the stand-in GPU).

pub mod cargo_build;
pub mod cli;
pub mod fake_cuda;
pub mod fake_nvml;
pub mod http;
#[cfg(feature = "sim-vs-real")]
pub mod sim_vs_real;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A fresh, empty directory `<tmp>/<name>-<pid>` (whatever an earlier run left there is removed).
pub fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// Polls `poll` every `every` until it returns `Ok`; `Err` says what is still awaited, and is the
/// panic message once `timeout` has passed (checked after each poll).
pub fn wait_for<T>(
    timeout: Duration,
    every: Duration,
    mut poll: impl FnMut() -> Result<T, String>,
) -> T {
    let t0 = Instant::now();
    loop {
        match poll() {
            Ok(v) => return v,
            Err(what) => assert!(t0.elapsed() < timeout, "{what}"),
        }
        std::thread::sleep(every);
    }
}
