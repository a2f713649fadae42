//! Finds the stand-in `libcarve_fake_nvml.so` for integration tests, building it first when it is
//! stale. Shared by the tests of `carve-nvml` and `carve-cli` through
//! `#[path = "../../carve-fake-nvml/support/locate.rs"] mod locate;` (a source include, not a
//! dependency: linking the fake's rlib would put a second copy of the NVML symbols in the test).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

#[path = "../../../support/cargo_build.rs"]
mod cargo_build;

/// The fake library, built (when stale) with the test's own profile and target directory.
pub fn fake_nvml_lib() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        cargo_build::build(&["carve-fake-nvml"], &["libcarve_fake_nvml.so"])
            .join("libcarve_fake_nvml.so")
    })
}
