//! The stand-in `libcuda.so.1` (`carve-fake-cuda`) for tests: built when stale, never linked (the
//! fake's rlib would put a second copy of the driver symbols in the test), and laid out in a
//! driver directory that goes on `LD_LIBRARY_PATH`, as the real driver's library would be found.

use crate::cargo_build;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The fake library's file name in `target/<profile>/`.
pub const FAKE_CUDA_LIB: &str = "libcarve_fake_cuda.so";
/// The shim's file name in `target/<profile>/`.
pub const SHIM_LIB: &str = "libcarve_shim.so";
/// The test workload's binary in `target/<profile>/`.
pub const WORKLOAD_BIN: &str = "carve-workload";

/// The fake library, built (when stale) with the test's own profile and target directory.
pub fn fake_cuda_lib() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        cargo_build::build(&["carve-fake-cuda"], &[FAKE_CUDA_LIB]).join(FAKE_CUDA_LIB)
    })
}

/// `target/<profile>/` with the stand-in libcuda, the shim and `carve-workload` in it (built
/// once per process, when stale): everything a time-slicing test runs besides carve itself.
pub fn stand_artifacts() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        cargo_build::build(
            &["carve-fake-cuda", "carve-shim", "carve-workload"],
            &[FAKE_CUDA_LIB, SHIM_LIB, WORKLOAD_BIN],
        )
    })
}

/// Makes `<dir>/lib/libcuda.so.1` a link to `fake` (the stand-in library); put `<dir>/lib` on
/// `LD_LIBRARY_PATH`.
pub fn install_libcuda(dir: &Path, fake: &Path) {
    std::fs::create_dir_all(dir.join("lib")).expect("create the driver directory");
    std::os::unix::fs::symlink(fake, dir.join("lib/libcuda.so.1")).expect("link libcuda.so.1");
}

/// A fresh directory `<tmp>/<tag>-<pid>` holding `lib/libcuda.so.1` (a link to the fake) and an
/// empty `gpu/` for `CARVE_FAKE_CUDA_DIR`. Put `lib/` on `LD_LIBRARY_PATH`.
pub fn driver_dir(tag: &str) -> PathBuf {
    let root = crate::fresh_dir(tag);
    install_libcuda(&root, fake_cuda_lib());
    std::fs::create_dir_all(root.join("gpu")).expect("create the GPU directory");
    root
}

/// A fresh directory for the stand-in GPU's shared state (`CARVE_FAKE_CUDA_DIR`), `<tag>-<pid>`:
/// in memory (`/dev/shm`) where there is one, else under `fallback`. The stand-in rewrites its
/// statistics file (a write and a rename) at every synchronisation, and the shim synchronises at
/// every switch; on a disk file system the rename alone can take a millisecond, which would be
/// measured as part of every switch (or taken by the shim for work still running).
pub fn gpu_state_dir(tag: &str, fallback: &Path) -> PathBuf {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        shm.join(format!("{tag}-{}", std::process::id()))
    } else {
        fallback.join("gpu")
    };
    let _ = std::fs::remove_dir_all(&dir);
    dir
}
