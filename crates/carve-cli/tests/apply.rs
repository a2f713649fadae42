//! `carve apply` on the simulated node, through the real binary: fewest changes, busy instances,
//! crash safety at every operation boundary (and the next apply going straight to its own state,
//! as its dry run says), faults, reboot, assert and export.

use carve_test_support::cli::{
    carve_in, mig_devices, placements, success_json, Devices, MIG_CONFIG,
};
use carve_test_support::fresh_dir;
use predicates::prelude::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

struct Node {
    dir: PathBuf,
    config: PathBuf,
}

impl Node {
    fn new(tag: &str, spec: &str) -> Node {
        let dir = fresh_dir(&format!("carve-apply-{tag}"));
        let config = dir.join("config.yaml");
        std::fs::write(&config, MIG_CONFIG).unwrap();
        let n = Node { dir, config };
        n.cmd().args(["--sim", spec, "status"]).assert().success();
        n
    }

    fn cmd(&self) -> assert_cmd::Command {
        carve_in(&self.dir)
    }

    fn apply(&self, config: &str) -> assert_cmd::assert::Assert {
        self.cmd()
            .args(["apply", self.config.to_str().unwrap(), "-c", config])
            .assert()
    }

    fn status(&self) -> Value {
        success_json(&self.cmd().args(["status", "--json"]).output().unwrap())
    }

    /// Every MIG device UUID with its GPU, profile and placement start.
    fn devices(&self) -> Devices {
        mig_devices(&self.status())
    }

    fn assert_matches(&self, config: &str) {
        self.cmd()
            .args(["assert", self.config.to_str().unwrap(), "-c", config])
            .assert()
            .success();
    }
}

#[test]
fn apply_changes_only_what_must_change() {
    let n = Node::new("minimal", "H100-80GB");
    n.apply("balanced").success();
    n.assert_matches("balanced");
    let before = n.devices();
    assert_eq!(before.len(), 4);
    // `carve status --json` and `carve sim show --json` name profiles as people write them.
    for args in [&["status", "--json"][..], &["sim", "show", "--json"]] {
        let out = n.cmd().args(args).output().unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let two = v["gpus"][0]["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|gi| gi["profile"] == "2g.20gb")
            .unwrap_or_else(|| panic!("{args:?}: no 2g.20gb in {v:#}"));
        assert_eq!(two["nvml_profile"], "NVML_GPU_INSTANCE_PROFILE_2_SLICE");
        assert!(v["gpus"][0].get("profile_names").is_none());
    }
    let out = n
        .cmd()
        .args(["apply", n.config.to_str().unwrap(), "-c", "small", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ops = v["ops"].as_array().unwrap();
    // 2g.20gb goes (CI + GI), two 1g.10gb come (GI + CI each): 6 operations, nothing else.
    assert_eq!(ops.len(), 6, "{ops:#?}");
    assert_eq!(v["kept"].as_array().unwrap().len(), 3);
    let after = n.devices();
    let kept: Vec<_> = before.iter().filter(|d| d.1 != "2g.20gb").collect();
    for d in kept {
        assert!(after.contains(d), "{d:?} was not kept");
    }
    n.assert_matches("small");
    // Applying again changes nothing.
    let v: Value = serde_json::from_slice(
        &n.cmd()
            .args(["apply", n.config.to_str().unwrap(), "-c", "small", "--json"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(v["ops"].as_array().unwrap().len(), 0);
    assert_eq!(n.devices(), after);
}

#[test]
fn busy_instances_are_kept_or_refused() {
    let n = Node::new("busy", "H100-80GB");
    n.apply("balanced").success();
    let devs = n.devices();
    let busy_1g = devs.iter().find(|d| d.1 == "1g.10gb").unwrap().3.clone();
    n.cmd()
        .args(["sim", "busy", &busy_1g, "--name", "python", "--pid", "77"])
        .assert()
        .success();
    // 'sevens' keeps both 1g.10gb, so the busy one is untouched.
    n.apply("sevens").success();
    assert!(n.devices().iter().any(|d| d.3 == busy_1g));
    // 'balanced' would keep it too; 'off' would destroy it: refused, nothing changed.
    let before = n.devices();
    n.apply("off")
        .code(1)
        .stderr(predicate::str::contains(
            "refusing to destroy instances in use",
        ))
        .stderr(predicate::str::contains(&busy_1g))
        .stderr(predicate::str::contains("python (pid 77)"));
    assert_eq!(n.devices(), before);
    // --force tries, and the driver refuses the busy compute instance (NVML IN_USE).
    n.cmd()
        .args(["apply", n.config.to_str().unwrap(), "-c", "off", "--force"])
        .assert()
        .code(3)
        .stderr(predicate::str::contains("in use"));
    n.cmd().args(["sim", "idle", &busy_1g]).assert().success();
    n.apply("off").success();
    let st = n.status();
    assert_eq!(st["gpus"][0]["info"]["mig"]["current"], false);
}

#[test]
fn a_crash_at_every_operation_boundary_converges() {
    // balanced -> small on two GPUs: 12 operations.
    let n = Node::new("crash-count", "2xH100-80GB");
    n.apply("balanced").success();
    let dry: Value = serde_json::from_slice(
        &n.cmd()
            .args([
                "apply",
                n.config.to_str().unwrap(),
                "-c",
                "small",
                "--dry-run",
                "--json",
            ])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let total = dry["ops"].as_array().unwrap().len();
    assert_eq!(total, 12);
    for crash_after in 1..=total {
        let n = Node::new(&format!("crash-{crash_after}"), "2xH100-80GB");
        n.apply("balanced").success();
        let before = n.devices();
        let to_keep: Vec<_> = before
            .iter()
            .filter(|d| d.1 != "2g.20gb")
            .cloned()
            .collect();
        let out = n
            .cmd()
            .env("CARVE_SIM_CRASH_AFTER", crash_after.to_string())
            .args(["apply", n.config.to_str().unwrap(), "-c", "small"])
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "crash {crash_after}: the process should abort"
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("CARVE_SIM_CRASH_AFTER"));
        // Kept instances were never touched, even mid-way.
        let mid = n.devices();
        for d in &to_keep {
            assert!(mid.contains(d), "crash {crash_after}: {d:?} destroyed");
        }
        n.cmd()
            .args(["status"])
            .assert()
            .success()
            .stdout(predicate::str::contains("interrupted"));
        // A second crash, during the apply that supersedes the interrupted one (straight from
        // what the GPUs hold to `small`), when there is work left.
        if crash_after + 1 < total {
            let out = n
                .cmd()
                .env("CARVE_SIM_CRASH_AFTER", "1")
                .args(["apply", n.config.to_str().unwrap(), "-c", "small"])
                .output()
                .unwrap();
            assert!(
                !out.status.success(),
                "crash {crash_after}: the superseding apply should abort"
            );
        }
        // The interrupted apply (or the crashed recovery) is superseded, not replayed.
        n.apply("small")
            .success()
            .stdout(predicate::str::contains("superseded, not replayed"));
        n.cmd()
            .args(["status"])
            .assert()
            .success()
            .stdout(predicate::str::contains("interrupted").not());
        n.assert_matches("small");
        let after = n.devices();
        for d in &to_keep {
            assert!(after.contains(d), "crash {crash_after}: {d:?} destroyed");
        }
        let mut want: Vec<(u64, String, u64)> = Vec::new();
        for g in 0..2 {
            for s in 0..4 {
                want.push((g, "1g.10gb".into(), s));
            }
            want.push((g, "3g.40gb".into(), 4));
        }
        want.sort();
        assert_eq!(placements(&after), want, "crash {crash_after}");
    }
}

/// `carve apply <config> --json` (with `--dry-run` when `dry`), its JSON.
fn apply_json(n: &Node, config: &str, dry: bool) -> Value {
    let mut args = vec!["apply", n.config.to_str().unwrap(), "-c", config, "--json"];
    if dry {
        args.push("--dry-run");
    }
    success_json(&n.cmd().args(&args).output().unwrap())
}

#[test]
fn after_a_crash_a_new_config_goes_straight_there() {
    // balanced -> sevens on two GPUs (28 operations), crashed after every one of them, then a
    // third config: the interrupted apply is superseded, not finished first; the operations run
    // are exactly the ones a dry run announced after the crash (the fewest from what the GPUs
    // held); and no instance the crashed state and the new config share is destroyed. With a
    // second crash, during that shortest-way apply, the same holds for the next apply.
    let n = Node::new("straight-count", "2xH100-80GB");
    n.apply("balanced").success();
    let total = apply_json(&n, "sevens", true)["ops"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(total, 28);
    for crash_after in 1..=total {
        for (c, second_crash) in [("balanced", false), ("small", true)] {
            let case = format!("crash {crash_after}, then {c}");
            let n = Node::new(&format!("straight-{crash_after}-{c}"), "2xH100-80GB");
            n.apply("balanced").success();
            let out = n
                .cmd()
                .env("CARVE_SIM_CRASH_AFTER", crash_after.to_string())
                .args(["apply", n.config.to_str().unwrap(), "-c", "sevens"])
                .output()
                .unwrap();
            assert!(!out.status.success(), "{case}: the process should abort");
            let crashed = n.devices();
            assert_eq!(n.status()["interrupted_applies"], 1, "{case}");
            let mut dry = apply_json(&n, c, true);
            assert_eq!(dry["superseded"].as_array().unwrap().len(), 1, "{case}");
            if second_crash && dry["ops"].as_array().unwrap().len() >= 2 {
                let out = n
                    .cmd()
                    .env("CARVE_SIM_CRASH_AFTER", "1")
                    .args(["apply", n.config.to_str().unwrap(), "-c", c])
                    .output()
                    .unwrap();
                assert!(!out.status.success(), "{case}: the second crash");
                // The first entry was superseded when the second was written: one is left.
                assert_eq!(n.status()["interrupted_applies"], 1, "{case}");
                let again = apply_json(&n, c, true);
                assert_ne!(again["superseded"], dry["superseded"], "{case}");
                assert_eq!(again["superseded"].as_array().unwrap().len(), 1);
                dry = again;
            }
            let real = apply_json(&n, c, false);
            for field in ["superseded", "targets", "ops", "kept"] {
                assert_eq!(real[field], dry[field], "{case}: {field}");
            }
            if crash_after == 3 && c == "balanced" {
                // The case: 3 operations, where finishing sevens first took 25 + 28.
                assert_eq!(real["ops"].as_array().unwrap().len(), 3, "{case}");
            }
            n.assert_matches(c);
            assert_eq!(n.status()["interrupted_applies"], 0, "{case}");
            let after = n.devices();
            for d in &crashed {
                let same_place = after.iter().any(|a| (a.0, &a.1, a.2) == (d.0, &d.1, d.2));
                assert!(
                    !same_place || after.contains(d),
                    "{case}: {d:?} was destroyed and made again"
                );
            }
            for uuid in dry["kept"].as_array().unwrap() {
                assert!(
                    after.iter().any(|a| a.3 == uuid.as_str().unwrap()),
                    "{case}: {uuid} was to be kept"
                );
            }
        }
    }
}

#[test]
fn an_injected_fault_stops_the_apply_and_a_rerun_converges() {
    let n = Node::new("fault", "H100-80GB");
    n.apply("balanced").success();
    n.cmd()
        .args(["sim", "fail", "3", "insufficient-resources"])
        .assert()
        .success();
    n.apply("small")
        .code(3)
        .stderr(predicate::str::contains("insufficient resources"));
    n.apply("small").success();
    n.assert_matches("small");
    n.cmd()
        .args(["sim", "fail", "1", "exploded"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("unknown NVML error 'exploded'"));
}

#[test]
fn boot_reapplies_the_last_desired_state() {
    let n = Node::new("boot", "H100-80GB,A100-40GB");
    let cfg = n.dir.join("mixed.yaml");
    std::fs::write(
        &cfg,
        "version: v1\nmig-configs:\n  mixed:\n    - devices: [0]\n      mig-enabled: true\n      mig-devices: {\"3g.40gb\": 2}\n    - devices: [1]\n      mig-enabled: true\n      mig-devices: {\"1g.5gb\": 7}\n",
    )
    .unwrap();
    n.cmd()
        .args(["apply", cfg.to_str().unwrap()])
        .assert()
        .success();
    let before = placements(&n.devices());
    n.cmd().args(["sim", "reboot"]).assert().success();
    let st = n.status();
    assert_eq!(
        st["gpus"][0]["info"]["mig"]["current"], false,
        "Hopper forgets MIG mode"
    );
    assert_eq!(
        st["gpus"][1]["info"]["mig"]["current"], true,
        "Ampere keeps it"
    );
    assert!(n.devices().is_empty());
    n.cmd().args(["assert"]).assert().code(1);
    n.cmd().args(["apply", "--boot"]).assert().success();
    assert_eq!(placements(&n.devices()), before);
    n.cmd().args(["assert"]).assert().success();
}

#[test]
fn compute_instance_splits_and_export_round_trip() {
    let n = Node::new("export", "H100-80GB");
    n.apply("split").success();
    let out = n.cmd().args(["export", "--label", "now"]).output().unwrap();
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert!(
        yaml.contains("\"1c.3g.40gb\": 1") && yaml.contains("\"4g.40gb\": 1"),
        "{yaml}"
    );
    let f = n.dir.join("export.yaml");
    std::fs::write(&f, &yaml).unwrap();
    n.cmd()
        .args(["validate", f.to_str().unwrap()])
        .assert()
        .success();
    n.cmd()
        .args(["assert", f.to_str().unwrap(), "-c", "now"])
        .assert()
        .success();
    n.cmd()
        .args(["assert", n.config.to_str().unwrap(), "-c", "balanced"])
        .assert()
        .code(1);
}

#[test]
fn bad_input_changes_nothing() {
    let n = Node::new("bad", "H100-80GB");
    n.apply("balanced").success();
    let before = n.devices();
    let bad = n.dir.join("bad.yaml");
    std::fs::write(&bad, "version: v1\nmig-configs:\n  x:\n    - devices: all\n      mig-enabled: true\n      mig-devices: {\"3g.40gb\": 3}\n").unwrap();
    n.cmd()
        .args(["apply", bad.to_str().unwrap()])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("bad.yaml:6:7"))
        .stderr(predicate::str::contains("needs 9 compute slices"));
    n.cmd()
        .args(["apply", n.config.to_str().unwrap(), "-c", "balancd"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("did you mean 'balanced'"));
    n.cmd()
        .args(["apply", n.config.to_str().unwrap()])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("choose one with -c"));
    n.cmd().args(["apply"]).assert().code(2);
    n.cmd()
        .args(["--sim", "3xH100-8OGB", "status"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("did you mean 'H100-80GB'"));
    n.cmd().args(["sim", "busy", "MIG-nope"]).assert().code(2);
    assert_eq!(n.devices(), before);
}

#[allow(dead_code)]
fn exists(p: &Path) -> bool {
    p.exists()
}

#[test]
fn node_file_and_ampere_mode_change_needs_a_reset() {
    let dir = fresh_dir("carve-apply-nodefile");
    let node_file = dir.join("node.txt");
    std::fs::write(&node_file, "# a lab box\nA100-40GB\n").unwrap();
    let n = Node::new("ampere", node_file.to_str().unwrap());
    let st = n.status();
    assert_eq!(st["gpus"].as_array().unwrap().len(), 1);
    n.apply("off")
        .code(3)
        .stderr(predicate::str::contains("pending until the GPU is reset"));
    n.cmd().args(["sim", "reset", "0"]).assert().success();
    n.apply("off").success();
    assert_eq!(n.status()["gpus"][0]["info"]["mig"]["current"], false);
}

#[test]
fn concurrent_applies_take_turns() {
    let n = Node::new("concurrent", "2xH100-80GB");
    let spawn = |cfg: &str| {
        let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin("carve"));
        c.env("CARVE_STATE_DIR", n.dir.join("state"))
            .env_remove("CARVE_SIM_CRASH_AFTER")
            .env("HOME", &n.dir)
            .args(["apply", n.config.to_str().unwrap(), "-c", cfg])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        c.spawn().unwrap()
    };
    let kids: Vec<_> = (0..4)
        .map(|i| spawn(if i % 2 == 0 { "balanced" } else { "sevens" }))
        .collect();
    for k in kids {
        let out = k.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let ok = |cfg: &str| {
        n.cmd()
            .args(["assert", n.config.to_str().unwrap(), "-c", cfg])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(ok("balanced") || ok("sevens"));
}
