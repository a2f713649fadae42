//! `carve` on the NVML backend, through the real binary and the real dynamic-loading path, against
//! the stand-in `libnvidia-ml.so.1` built from `carve-fake-nvml` (no GPU needed). The same
//! commands run unchanged on a GPU node, where the driver's library is found instead.

use assert_cmd::Command;
use carve_test_support::cli::{
    carve_in, json_with_code, read_ready, signal, success_json, MIG_CONFIG,
};
use carve_test_support::fake_nvml::fake_nvml_lib as fake_lib;
use carve_test_support::http::{get_json, http};
use carve_test_support::{fresh_dir, wait_for};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A node whose "driver" is the fake library, found through a `libnvidia-ml.so.1` symlink.
struct Node {
    dir: PathBuf,
    config: PathBuf,
    state: PathBuf,
}

impl Node {
    fn new(tag: &str, spec: &str) -> Node {
        let dir = fresh_dir(&format!("carve-nvml-{tag}"));
        std::fs::create_dir_all(dir.join("lib")).unwrap();
        std::os::unix::fs::symlink(fake_lib(), dir.join("lib/libnvidia-ml.so.1")).unwrap();
        let config = dir.join("config.yaml");
        std::fs::write(&config, MIG_CONFIG).unwrap();
        let n = Node {
            state: dir.join("gpus.json"),
            dir,
            config,
        };
        // The first call creates the fake's state file for this node spec.
        let mut c = n.cmd();
        c.env("CARVE_FAKE_NVML_NODE", spec);
        c.args(["--backend", "nvml", "status"]).assert().success();
        assert!(n.state.exists());
        n
    }

    /// `carve` with the fake driver on the library path only (no `CARVE_NVML_LIB`).
    fn cmd(&self) -> Command {
        let mut c = carve_in(&self.dir);
        c.env("LD_LIBRARY_PATH", self.dir.join("lib"))
            .env_remove("CARVE_NVML_LIB")
            .env("CARVE_FAKE_NVML_STATE", &self.state);
        c
    }

    fn apply(&self, config: &str, extra: &[&str]) -> std::process::Output {
        self.cmd()
            .args(["--backend", "nvml", "apply"])
            .arg(&self.config)
            .args(["-c", config, "--json"])
            .args(extra)
            .output()
            .unwrap()
    }

    fn status(&self) -> Value {
        success_json(
            &self
                .cmd()
                .args(["--backend", "nvml", "status", "--json"])
                .output()
                .unwrap(),
        )
    }

    /// MIG device UUID → (GPU, GI start, GI profile id) read from the driver's own state.
    fn devices(&self) -> BTreeMap<String, (u64, u64, String)> {
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(&self.state).unwrap()).unwrap();
        let mut out = BTreeMap::new();
        for (g, gpu) in v["gpus"].as_array().unwrap().iter().enumerate() {
            for gi in gpu["gis"].as_array().unwrap() {
                for ci in gi["cis"].as_array().unwrap() {
                    out.insert(
                        ci["uuid"].as_str().unwrap().to_string(),
                        (
                            g as u64,
                            gi["start"].as_u64().unwrap(),
                            gi["profile"].to_string(),
                        ),
                    );
                }
            }
        }
        out
    }

    fn edit_state(&self, f: impl FnOnce(&mut Value)) {
        let mut v: Value =
            serde_json::from_str(&std::fs::read_to_string(&self.state).unwrap()).unwrap();
        f(&mut v);
        std::fs::write(&self.state, serde_json::to_vec(&v).unwrap()).unwrap();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn auto_finds_the_driver_on_the_library_path() {
    let n = Node::new("auto", "2xH100-80GB");
    let out = n.cmd().args(["status", "--json"]).output().unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["backend"], "nvml");
    let gpus = v["gpus"].as_array().unwrap();
    assert_eq!(gpus.len(), 2);
    assert_eq!(gpus[0]["model"], "H100-80GB", "{:#}", gpus[0]);
    assert!(gpus[0]["info"]["uuid"]
        .as_str()
        .unwrap()
        .starts_with("GPU-"));

    // Without the library, auto falls back to the simulated node.
    let out = n
        .cmd()
        .env("LD_LIBRARY_PATH", n.dir.join("nothing-here"))
        .args(["status", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["backend"], "sim");

    // Asking for NVML explicitly when it cannot load is a failure (exit 3) with the reason, for
    // every command that works on the GPUs; with --json, one JSON document still.
    n.cmd()
        .env("LD_LIBRARY_PATH", n.dir.join("nothing-here"))
        .args(["--backend", "nvml", "status"])
        .assert()
        .code(3)
        .stderr(predicates::str::contains("NVML"));
    for args in [
        &["status"][..],
        &["export"],
        &["assert"],
        &["apply", "--boot"],
    ] {
        let out = n
            .cmd()
            .env("LD_LIBRARY_PATH", n.dir.join("nothing-here"))
            .args(["--backend", "nvml", "--json"])
            .args(args)
            .output()
            .unwrap();
        let v = json_with_code(&out, 3, &format!("{args:?}"));
        assert_eq!(v["kind"], "failed", "{args:?}: {v}");
        assert!(v["error"].as_str().unwrap().contains("NVML"), "{v}");
    }
}

#[test]
fn apply_through_nvml_keeps_what_stays() {
    let n = Node::new("minimal", "H100-80GB");
    let out = n.apply("balanced", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = n.devices();
    assert_eq!(before.len(), 4);
    n.cmd()
        .args(["--backend", "nvml", "assert"])
        .arg(&n.config)
        .args(["-c", "balanced"])
        .assert()
        .success();

    let out = n.apply("small", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["backend"], "nvml");
    assert_eq!(v["ops"].as_array().unwrap().len(), 6, "{:#}", v["ops"]);
    let after = n.devices();
    assert_eq!(after.len(), 5);
    // Every device but the 2g.20gb one is still there, same UUID, same place.
    let gone: Vec<_> = before.keys().filter(|u| !after.contains_key(*u)).collect();
    assert_eq!(gone.len(), 1, "{before:?} → {after:?}");
    for (u, d) in &before {
        if after.contains_key(u) {
            assert_eq!(&after[u], d);
        }
    }
    n.cmd()
        .args(["--backend", "nvml", "assert"])
        .arg(&n.config)
        .args(["-c", "small"])
        .assert()
        .success();
    n.cmd()
        .args(["--backend", "nvml", "assert"])
        .arg(&n.config)
        .args(["-c", "balanced"])
        .assert()
        .code(1);
    // The status the CLI reports is the driver's.
    let st = n.status();
    let listed: usize = st["gpus"][0]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|gi| gi["compute_instances"].as_array().unwrap().len())
        .sum();
    assert_eq!(listed, 5);
}

#[test]
fn a_busy_instance_through_nvml_is_refused_and_nothing_changes() {
    let n = Node::new("busy", "H100-80GB");
    assert!(n.apply("balanced", &[]).status.success());
    // A process appears on the 2g.20gb instance (the one "small" drops).
    let mut busy_uuid = String::new();
    n.edit_state(|v| {
        for gi in v["gpus"][0]["gis"].as_array_mut().unwrap() {
            let ci = &mut gi["cis"][0];
            if ci["slices"] == 2 {
                busy_uuid = ci["uuid"].as_str().unwrap().to_string();
                ci["processes"] = serde_json::json!([{ "pid": 4_194_999u32, "name": "x" }]);
            }
        }
    });
    assert!(busy_uuid.starts_with("MIG-"), "no 2g.20gb");
    let before = std::fs::read_to_string(&n.state).unwrap();
    let out = n.apply("small", &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&busy_uuid), "{err}");
    assert!(err.contains("4194999"), "{err}");
    assert_eq!(std::fs::read_to_string(&n.state).unwrap(), before);

    // --force cannot make the driver destroy an instance in use: it still fails, nothing lost
    // but the one instance the driver refused to touch.
    let out = n.apply("small", &["--force"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(n.devices().contains_key(&busy_uuid));

    // The process ends: the apply converges.
    n.edit_state(|v| {
        for gi in v["gpus"][0]["gis"].as_array_mut().unwrap() {
            for ci in gi["cis"].as_array_mut().unwrap() {
                ci["processes"] = serde_json::json!([]);
            }
        }
    });
    let out = n.apply("small", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!n.devices().contains_key(&busy_uuid));
}

/// `carve agent` on the NVML backend: it keeps the applied layout, offers its MIG devices, and an
/// XID the driver reports (the stand-in's event file) makes exactly that MIG device unhealthy.
#[test]
fn agent_takes_health_from_nvml_xid_events() {
    use std::io::Write;
    use std::time::Duration;
    let n = Node::new("agent", "2xH100-80GB");
    n.cmd()
        .args(["--backend", "nvml", "apply"])
        .arg(&n.config)
        .args(["-c", "balanced"])
        .assert()
        .success();
    let events = n.dir.join("events.jsonl");
    std::fs::write(&events, "").unwrap();
    let c = n.cmd();
    let mut cmd = std::process::Command::new(c.get_program());
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let mut child = cmd
        .env("CARVE_FAKE_NVML_EVENTS", &events)
        .args([
            "--backend",
            "nvml",
            "--json",
            "agent",
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--device-plugin-dir")
        .arg(n.dir.join("dp"))
        .arg("--cdi-dir")
        .arg(n.dir.join("cdi"))
        .arg("--run-dir")
        .arg(n.dir.join("run"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let ready = read_ready(&mut child);
    let api = ready.api;
    let sockets = ready.doc["sockets"].as_object().unwrap();
    for r in [
        "nvidia.com/mig-1g.10gb",
        "nvidia.com/mig-2g.20gb",
        "nvidia.com/mig-3g.40gb",
    ] {
        assert!(sockets.contains_key(r), "{r}: {sockets:?}");
    }
    let gpus = |api: &str| -> Value { get_json(api, "/v1/gpus") };
    let g = gpus(&api);
    let devs = g["gpus"][1]["devices"].as_array().unwrap().clone();
    assert_eq!(devs.len(), 4, "balanced: 2 + 1 + 1 MIG devices");
    let victim = devs.iter().find(|d| d["profile"] == "2g.20gb").unwrap();
    let (gi, ci) = (
        victim["gi"].as_u64().unwrap(),
        victim["ci"].as_u64().unwrap(),
    );
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&events)
        .unwrap();
    // An application XID first (ignored), then XID 48 on that MIG device.
    writeln!(f, "{{\"gpu\": 1, \"xid\": 13, \"gi\": {gi}, \"ci\": {ci}}}").unwrap();
    writeln!(f, "{{\"gpu\": 1, \"xid\": 48, \"gi\": {gi}, \"ci\": {ci}}}").unwrap();
    f.flush().unwrap();
    wait_for(Duration::from_secs(3), Duration::from_millis(20), || {
        let g = gpus(&api);
        let all: Vec<&Value> = g["gpus"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|x| x["devices"].as_array().unwrap())
            .collect();
        let sick: Vec<&str> = all
            .iter()
            .filter(|d| d["healthy"] == false)
            .map(|d| d["id"].as_str().unwrap())
            .collect();
        if !sick.is_empty() {
            assert_eq!(sick, [victim["id"].as_str().unwrap()]);
            return Ok(());
        }
        Err("the XID never arrived".to_string())
    });
    let (_, m) = http(&api, "GET", "/metrics", None, "");
    assert!(
        m.contains("carve_health_events_total{xid=\"13\",application=\"true\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("carve_health_events_total{xid=\"48\",application=\"false\"} 1"),
        "{m}"
    );
    signal(&child, libc::SIGTERM);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}
