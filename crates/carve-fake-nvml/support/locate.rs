//! Finds the stand-in `libcarve_fake_nvml.so` for integration tests, building it first when it is
//! stale. Shared by the tests of `carve-nvml` and `carve-cli` through
//! `#[path = "../../carve-fake-nvml/support/locate.rs"] mod locate;` (a source include, not a
//! dependency: linking the fake's rlib would put a second copy of the NVML symbols in the test).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// `target/<profile>/` of the running test binary (`target/<profile>/deps/<test>-<hash>`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors()
        .find(|a| a.file_name().is_some_and(|n| n == "deps"))
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| panic!("cannot find target/<profile>/ above {}", exe.display()))
}

/// The fake library, built with the test's own profile and target directory. Cargo is asked every
/// time (quick when fresh) so that a stale library from before an edit of the fake is never used.
pub fn fake_nvml_lib() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let dir = profile_dir();
        let lib = dir.join("libcarve_fake_nvml.so");
        if let Some(cargo) = std::env::var_os("CARGO") {
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "--quiet", "-p", "carve-fake-nvml"]);
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
                .expect("running cargo build -p carve-fake-nvml");
            assert!(
                status.success() || lib.exists(),
                "cargo build -p carve-fake-nvml failed"
            );
        }
        assert!(
            lib.exists(),
            "{} is missing: run `cargo build -p carve-fake-nvml`",
            lib.display()
        );
        lib
    })
}
