//! Helpers of carve-cli's integration tests, which run the built `carve` binary: command builders
//! that keep a test away from the user's catalog, config and state, JSON output, the MIG devices
//! of `carve status --json`, and the ready line of `carve agent`/`carve up`.

use assert_cmd::Command;
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Lines};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Output};

/// `carve` that never picks up a user's catalog from the environment or config dir (a home that
/// does not exist), for the commands that keep no state.
pub fn carve() -> Command {
    let mut c = Command::cargo_bin("carve").unwrap();
    c.env_remove("CARVE_CATALOG")
        .env("XDG_CONFIG_HOME", "/nonexistent-carve-test")
        .env("HOME", "/nonexistent-carve-test");
    c
}

/// `carve` living in `dir`: its state database in `<dir>/state`, `dir` as its home, no user
/// catalog, no crash injection.
pub fn carve_in(dir: &Path) -> Command {
    let mut c = Command::cargo_bin("carve").unwrap();
    c.env("CARVE_STATE_DIR", dir.join("state"))
        .env_remove("CARVE_SIM_CRASH_AFTER")
        .env_remove("CARVE_CATALOG")
        .env("HOME", dir)
        .env("XDG_CONFIG_HOME", dir.join("config"));
    c
}

/// `examples/<rel>` of the repository.
pub fn example(rel: &str) -> PathBuf {
    crate::repo_root().join("examples").join(rel)
}

/// A mig-parted config with the layouts the apply tests move between (every GPU alike).
pub const MIG_CONFIG: &str = r#"version: v1
mig-configs:
  balanced:
    - devices: all
      mig-enabled: true
      mig-devices:
        "1g.10gb": 2
        "2g.20gb": 1
        "3g.40gb": 1
  small:
    - devices: all
      mig-enabled: true
      mig-devices:
        "1g.10gb": 4
        "3g.40gb": 1
  sevens:
    - devices: all
      mig-enabled: true
      mig-devices:
        "1g.10gb": 7
  split:
    - devices: all
      mig-enabled: true
      mig-devices:
        "1c.3g.40gb": 1
        "4g.40gb": 1
  off:
    - devices: all
      mig-enabled: false
"#;

/// Asserts that the command succeeded, showing its stdout and stderr if not.
pub fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The command's stdout as one JSON document, after checking that it exited with `code`
/// (`what` names the command in failure messages).
pub fn json_with_code(out: &Output, code: i32, what: &str) -> Value {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The stdout of a command that must succeed, as one JSON document.
pub fn success_json(out: &Output) -> Value {
    assert_success(out);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// (GPU, profile, start, MIG UUID) of every MIG device.
pub type Devices = BTreeSet<(u64, String, u64, String)>;

/// Every MIG device of a `carve status --json` document.
///
/// Every instance must show its catalog profile name (`2g.20gb`) with the NVML constant beside it.
pub fn mig_devices(status: &Value) -> Devices {
    let mut out = BTreeSet::new();
    for (g, gpu) in status["gpus"].as_array().unwrap().iter().enumerate() {
        for gi in gpu["instances"].as_array().unwrap() {
            let name = gi["profile"].as_str().unwrap();
            assert!(
                name.contains("g.") && name.contains("gb"),
                "a catalog profile name: {gi}"
            );
            assert!(
                gi["nvml_profile"]
                    .as_str()
                    .unwrap()
                    .starts_with("NVML_GPU_INSTANCE_PROFILE_"),
                "{gi}"
            );
            for ci in gi["compute_instances"].as_array().unwrap() {
                out.insert((
                    g as u64,
                    name.to_string(),
                    gi["start"].as_u64().unwrap(),
                    ci["uuid"].as_str().unwrap().to_string(),
                ));
            }
        }
    }
    out
}

/// The devices without their UUIDs: (GPU, profile, start).
pub fn placements(devs: &Devices) -> Vec<(u64, String, u64)> {
    devs.iter()
        .map(|(g, p, s, _)| (*g, p.clone(), *s))
        .collect()
}

/// The first line `carve agent --json` / `carve up --json` prints, once it serves.
pub struct Ready {
    /// The whole line.
    pub doc: Value,
    /// The HTTP API's address (`host:port`).
    pub api: String,
    /// The lines that follow.
    pub rest: Lines<BufReader<ChildStdout>>,
}

/// Reads the ready line from the child's stdout (piped).
pub fn read_ready(child: &mut Child) -> Ready {
    let mut rest = BufReader::new(child.stdout.take().unwrap()).lines();
    let doc: Value = serde_json::from_str(&rest.next().unwrap().unwrap()).unwrap();
    let api = doc["api"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://")
        .to_string();
    Ready { doc, api, rest }
}

/// Sends `signal` (`libc::SIGINT`, `libc::SIGTERM`, ...) to the child.
pub fn signal(child: &Child, signal: i32) {
    let pid = i32::try_from(child.id()).expect("pid");
    // SAFETY: kill(2) takes plain integers and touches no memory of this process.
    unsafe { libc::kill(pid, signal) };
}
