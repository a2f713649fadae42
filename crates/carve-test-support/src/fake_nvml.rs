//! The stand-in `libnvidia-ml.so` (`carve-fake-nvml`) for the tests of `carve-nvml` and
//! `carve-cli`: built when stale, never linked (the fake's rlib would put a second copy of the NVML
//! symbols in the test).

use crate::cargo_build;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The fake library, built (when stale) with the test's own profile and target directory.
pub fn fake_nvml_lib() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        cargo_build::build(&["carve-fake-nvml"], &["libcarve_fake_nvml.so"])
            .join("libcarve_fake_nvml.so")
    })
}
