//! Finds the stand-in `libcarve_fake_cuda.so` for integration tests, building it first when it is
//! stale, and lays out a driver directory for it. Shared through
//! `#[path = "../../carve-fake-cuda/support/locate.rs"] mod locate;` (a source include: linking
//! the fake's rlib would put a second copy of the driver symbols in the test).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

#[path = "../../../support/cargo_build.rs"]
pub mod cargo_build;

/// The fake library, built (when stale) with the test's own profile and target directory.
pub fn fake_cuda_lib() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        cargo_build::build(&["carve-fake-cuda"], &["libcarve_fake_cuda.so"])
            .join("libcarve_fake_cuda.so")
    })
}

/// A fresh directory `<tmp>/<tag>-<pid>` holding `lib/libcuda.so.1` (a link to the fake) and an
/// empty `gpu/` for `CARVE_FAKE_CUDA_DIR`. Put `lib/` on `LD_LIBRARY_PATH`.
pub fn driver_dir(tag: &str) -> PathBuf {
    let root = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("lib")).expect("create the driver directory");
    std::fs::create_dir_all(root.join("gpu")).expect("create the GPU directory");
    std::os::unix::fs::symlink(fake_cuda_lib(), root.join("lib/libcuda.so.1"))
        .expect("link libcuda.so.1");
    root
}
