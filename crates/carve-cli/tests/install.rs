//! `deploy/install.sh`, the documented way to install carve with its shim: run as the README says
//! (with this test's cargo profile and target directory, so that cargo finds everything built),
//! into a fresh prefix. The installed `PREFIX/bin/carve` finds `PREFIX/lib/carve/libcarve_shim.so`
//! by itself: `carve run` execs its command with the shim preloaded.

use carve_test_support::cargo_build::profile_dir;
use carve_test_support::{fresh_dir, repo_root};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn install_sh_installs_carve_with_its_shim() {
    let base = fresh_dir("carve-install");
    // A prefix with a space in it: the script quotes its paths.
    let prefix = base.join("my prefix");
    let target = profile_dir();
    let profile = target.file_name().unwrap().to_str().unwrap().to_string();
    let mut install = Command::new("bash");
    install
        .arg(repo_root().join("deploy/install.sh"))
        .args(["--profile", &profile])
        .arg(&prefix)
        .env("CARGO_TARGET_DIR", target.parent().unwrap());
    // As from a shell: without the variables cargo sets for this test (build scripts that watch
    // them, ring's, would otherwise run again here and again in the next `cargo test`).
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k == "OUT_DIR"
            || [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_BIN_",
                "CARGO_CRATE_",
                "CARGO_PRIMARY_",
            ]
            .iter()
            .any(|p| k.starts_with(p))
            || k == "CARGO_TARGET_TMPDIR"
        {
            install.env_remove(k.as_ref());
        }
    }
    ok(&install.output().unwrap(), "deploy/install.sh");
    let carve = prefix.join("bin/carve");
    let shim = prefix.join("lib/carve/libcarve_shim.so");
    for (f, mode) in [(&carve, 0o755), (&shim, 0o644)] {
        let m = std::fs::metadata(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert_eq!(m.permissions().mode() & 0o777, mode, "{}", f.display());
    }

    // `carve run` finds the shim, with no CARVE_SHIM_LIB: it execs the command with LD_PRELOAD
    // set (the shim, with no scheduler to reach, fails open; `true` makes no CUDA call anyway).
    let run = |cmd: &[&str]| {
        Command::new(&carve)
            .args(["run", "--tenant", "x", "--socket"])
            .arg(base.join("no-scheduler.sock"))
            .arg("--")
            .args(cmd)
            .env_remove("CARVE_SHIM_LIB")
            .env_remove("LD_PRELOAD")
            .output()
            .unwrap()
    };
    ok(&run(&["true"]), "carve run -- true");
    let preload = ok(
        &run(&["sh", "-c", "printf %s \"$LD_PRELOAD\""]),
        "carve run -- sh",
    );
    assert_eq!(Path::new(&preload), shim.canonicalize().unwrap());
    let version = ok(
        &Command::new(&carve).arg("--version").output().unwrap(),
        "--version",
    );
    assert!(version.starts_with("carve "), "{version}");

    // Without its shim, `carve run` cannot do it (exit 3) and says how to get one.
    std::fs::remove_file(&shim).unwrap();
    let out = run(&["true"]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("deploy/install.sh"), "{err}");
    assert!(err.contains("lib/carve/libcarve_shim.so"), "{err}");

    // Bad usage is bad input (2), as for carve.
    let out = Command::new("bash")
        .arg(repo_root().join("deploy/install.sh"))
        .arg("--no-such-option")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&base);
}
