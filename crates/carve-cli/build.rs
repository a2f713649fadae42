//! Puts the commit carve is built from into `carve --version`: `$CARVE_COMMIT` when set (a build
//! from a source tarball or a container context without `.git`), else `git rev-parse` of the
//! source tree, else "unknown". Rebuilt when the commit changes.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let dir = std::env::var("CARGO_MANIFEST_DIR").ok()?;
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=CARVE_COMMIT");
    let commit = match std::env::var("CARVE_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => {
            // Rebuild when HEAD moves: HEAD itself (a checkout) and the branch it names (a commit).
            for p in ["HEAD", "packed-refs"] {
                if let Some(f) = git(&["rev-parse", "--git-path", p]) {
                    watch(&f);
                }
            }
            if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
                if let Some(f) = git(&["rev-parse", "--git-path", &r]) {
                    watch(&f);
                }
            }
            git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into())
        }
    };
    println!("cargo:rustc-env=CARVE_COMMIT={commit}");
}

/// Reruns the build script when `file` (relative to the manifest directory or absolute) changes.
fn watch(file: &str) {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let p = Path::new(&dir).join(file);
    if p.exists() {
        println!("cargo:rerun-if-changed={}", p.display());
    }
}
