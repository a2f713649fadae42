//! Finds the stand-in `libcarve_fake_cuda.so` for integration tests, building it first when it is
//! stale, and lays out a driver directory for it. Shared through
//! `#[path = "../../carve-fake-cuda/support/locate.rs"] mod locate;` (a source include: linking
//! the fake's rlib would put a second copy of the driver symbols in the test).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// `target/<profile>/` of the running test binary (`target/<profile>/deps/<test>-<hash>`).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors()
        .find(|a| a.file_name().is_some_and(|n| n == "deps"))
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| panic!("cannot find target/<profile>/ above {}", exe.display()))
}

/// The fake library, built with the test's own profile and target directory. Cargo is asked every
/// time (quick when fresh) so that a stale library from before an edit of the fake is never used.
pub fn fake_cuda_lib() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let dir = profile_dir();
        let lib = dir.join("libcarve_fake_cuda.so");
        if let Some(cargo) = std::env::var_os("CARGO") {
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "--quiet", "-p", "carve-fake-cuda"]);
            match dir.file_name().and_then(|n| n.to_str()) {
                Some("debug") | None => {}
                Some("release") => {
                    cmd.arg("--release");
                }
                Some(other) => {
                    cmd.args(["--profile", other]);
                }
            }
            if let Some(target) = dir.parent() {
                cmd.arg("--target-dir").arg(target);
            }
            let status = cmd
                .status()
                .expect("running cargo build -p carve-fake-cuda");
            assert!(
                status.success() || lib.exists(),
                "cargo build -p carve-fake-cuda failed"
            );
        }
        assert!(
            lib.exists(),
            "{} is missing: run `cargo build -p carve-fake-cuda`",
            lib.display()
        );
        lib
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
