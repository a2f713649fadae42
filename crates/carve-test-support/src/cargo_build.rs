//! For tests and benchmarks that need other workspace artifacts (the stand-in drivers, the shim,
//! `carve-workload`, the `carve` binary): build them with the running binary's own profile and
//! target directory, and say where they are. They are built by cargo, never linked: nothing puts
//! the stand-ins' symbols into the caller.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `target/<profile>/` of the running binary: tests live in `target/<profile>/deps/`, examples
/// in `target/<profile>/examples/`.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors()
        .find(|a| {
            a.file_name()
                .is_some_and(|n| n == "deps" || n == "examples")
        })
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| panic!("cannot find target/<profile>/ above {}", exe.display()))
}

/// Builds `packages` (cargo is quick when they are fresh, and a stale artifact from before an
/// edit is never used), checks that `expect` exist, and returns `target/<profile>/`.
pub fn build(packages: &[&str], expect: &[&str]) -> PathBuf {
    let dir = profile_dir();
    let profile = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_string();
    let args: Vec<String> = packages
        .iter()
        .flat_map(|p| ["-p".into(), p.to_string()])
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    build_with(&profile, &args, expect)
}

/// Like [`build`], with another profile than the running binary's (`release` where timings
/// must be those of optimised code) and any `cargo build` arguments (`-p P`, `--example E`).
/// Returns `target/<profile>/` of the running binary's target directory.
pub fn build_with(profile: &str, args: &[&str], expect: &[&str]) -> PathBuf {
    let target = profile_dir().parent().map(Path::to_path_buf);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet"]).args(args);
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    if let Some(target) = &target {
        cmd.arg("--target-dir").arg(target);
    }
    let dir = target.unwrap_or_default().join(profile);
    let ok = cmd.status().map(|s| s.success()).unwrap_or(false);
    for f in expect {
        assert!(
            dir.join(f).exists(),
            "{f} is missing in {} (cargo build {} {})",
            dir.display(),
            args.join(" "),
            if ok { "succeeded" } else { "failed" }
        );
    }
    dir
}
