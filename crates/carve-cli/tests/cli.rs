//! Runs the real `carve` binary: output, JSON shapes, exit codes and bad input for every command.

use carve_test_support::cli::{carve, example, json_with_code};
use predicates::prelude::*;
use serde_json::Value;
use std::path::PathBuf;

fn json_of(args: &[&str], code: i32) -> Value {
    let out = carve().args(args).output().unwrap();
    json_with_code(&out, code, &format!("{args:?}"))
}

fn temp_file(name: &str, content: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("carve-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

// --- catalog ------------------------------------------------------------------------------------

#[test]
fn catalog_lists_every_model() {
    carve()
        .arg("catalog")
        .assert()
        .success()
        .stdout(predicate::str::contains("H100-80GB"))
        .stdout(predicate::str::contains("A30-24GB"))
        .stdout(predicate::str::contains("RTX-PRO-6000"));
    let v = json_of(&["catalog", "--json"], 0);
    let gpus = v["gpus"].as_array().unwrap();
    assert!(gpus.len() >= 15, "{} GPUs", gpus.len());
    assert!(v["editions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["name"] == "vCS"));
}

#[test]
fn user_catalog_adds_a_model_and_bad_ones_are_located() {
    let lab = example("catalog/lab.toml");
    let v = json_of(
        &["--catalog", lab.to_str().unwrap(), "catalog", "--json"],
        0,
    );
    assert!(v["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .any(|g| g["key"] == "LAB-A100-40GB"));
    carve()
        .env("CARVE_CATALOG", &lab)
        .args(["fit", "lab-a100", "3g.20gb=2"])
        .assert()
        .success();
    let bad = temp_file(
        "bad.toml",
        "schema = 1\n[[gpu]]\nkey = \"X\"\nname = \"x\"\narchitecture = \"hopper\"\nmemory_gb = 1\ncompute_slices = 7\nmemory_slots = 8\nmax_instances = 7\nprofiles = [\n  { name = \"3g.40gb\", nvml = \"3_SLICE\", compute = 3, slots = 4, starts = [6], max = 2 },\n]\n",
    );
    carve()
        .args(["--catalog", bad.to_str().unwrap(), "catalog"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("bad.toml:2:1"))
        .stderr(predicate::str::contains(
            "placement 6:4 runs past memory slot 7",
        ));
    carve()
        .args(["--catalog", "/nonexistent/catalog.toml", "catalog"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "cannot read /nonexistent/catalog.toml",
        ));
}

// --- profiles -----------------------------------------------------------------------------------

#[test]
fn profiles_by_key_alias_and_pci_id() {
    for name in ["H100-80GB", "NVIDIA H100 80GB HBM3", "0x2330", "h100-80gb"] {
        carve()
            .args(["profiles", name])
            .assert()
            .success()
            .stdout(predicate::str::contains(
                "NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV2",
            ))
            .stdout(predicate::str::contains("H100-1-10C"));
    }
    let v = json_of(&["profiles", "A30-24GB", "--json"], 0);
    assert_eq!(v["gpu"], "A30-24GB");
    let p = &v["profiles"][0];
    assert_eq!(p["name"], "1g.6gb");
    assert_eq!(p["nvml_constant"], "NVML_GPU_INSTANCE_PROFILE_1_SLICE");
    assert_eq!(p["starts"], serde_json::json!([0, 1, 2, 3]));
}

#[test]
fn unknown_gpu_exits_2_with_did_you_mean() {
    carve()
        .args(["profiles", "H100-80G"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("unknown GPU 'H100-80G'"))
        .stderr(predicate::str::contains("did you mean 'H100-80GB'"));
    let v = json_of(&["layouts", "A31-24GB", "--json"], 2);
    assert!(v["error"].as_str().unwrap().contains("unknown GPU"));
    assert_eq!(v["suggestions"][0], "A30-24GB");
    carve().args(["profiles", "zzzz"]).assert().code(2);
}

// --- layouts ------------------------------------------------------------------------------------

#[test]
fn layouts_shows_maximal_combinations_and_draws_them() {
    let v = json_of(&["layouts", "A30-24GB", "--json"], 0);
    assert_eq!(v["placed_layouts"], 76);
    assert_eq!(v["combinations"], 19);
    assert_eq!(v["maximal"], 8);
    assert_eq!(v["layouts"].as_array().unwrap().len(), 8);
    let all = json_of(&["layouts", "A30-24GB", "--all", "--json"], 0);
    assert_eq!(all["layouts"].as_array().unwrap().len(), 19);
    let svg = std::env::temp_dir().join(format!("carve-layouts-{}.svg", std::process::id()));
    carve()
        .args(["layouts", "H100-80GB", "--svg", svg.to_str().unwrap()])
        .assert()
        .success()
        .stdout(predicate::str::contains("3g.40gb"));
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(
        text.starts_with("<svg") && text.contains("7g.80gb"),
        "{}",
        &text[..80]
    );
}

// --- fit ----------------------------------------------------------------------------------------

#[test]
fn fit_places_and_prints_the_documented_json() {
    let v = json_of(
        &[
            "fit",
            "H100-80GB",
            "3g.40gb",
            "2g.20gb",
            "1g.10gb=2",
            "--json",
        ],
        0,
    );
    assert_eq!(v["gpu"], "H100-80GB");
    assert_eq!(v["feasible"], true);
    let inst = v["instances"].as_array().unwrap();
    assert_eq!(inst.len(), 4);
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys[..3], ["gpu", "feasible", "instances"]);
    // 3g must take 4..7: at 0 the 2g and both 1g cannot all fit below slot 7.
    assert!(inst
        .iter()
        .any(|i| i["profile"] == "3g.40gb" && i["start"] == 4 && i["size"] == 4));
    let v = json_of(
        &["fit", "RTX-PRO-6000", "2g.48gb", "1g.24gb=2", "--json"],
        0,
    );
    assert_eq!(v["instances"].as_array().unwrap().len(), 3);
}

#[test]
fn fit_infeasible_exits_1_with_a_reason() {
    let v = json_of(&["fit", "H100-80GB", "3g.40gb=3", "--json"], 1);
    assert_eq!(v["feasible"], false);
    assert_eq!(
        v["reason"],
        "3g.40gb x3 needs 9 compute slices, H100-80GB has 7"
    );
    carve()
        .args(["fit", "H100-80GB", "2g.20gb=3", "--used", "1g.10gb@1"])
        .assert()
        .code(1)
        .stdout(predicate::str::contains("cannot be placed without overlap"));
}

#[test]
fn fit_with_every_count_zero_has_nothing_to_place() {
    // `=0` asks for none: nothing to place, which fits (exit 0), the GPU shown as it is.
    carve()
        .args(["fit", "H100-80GB", "1g.10gb=0"])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "H100-80GB: nothing to place (every count is 0).",
        ))
        .stdout(predicate::str::contains("nothing fits").not());
    let v = json_of(
        &[
            "fit",
            "H100-80GB",
            "1g.10gb=0",
            "--used",
            "3g.40gb@4",
            "--json",
        ],
        0,
    );
    assert_eq!(v["feasible"], true);
    assert_eq!(v["instances"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["room"]["3g.40gb"], serde_json::json!([0]));
    // A zero beside a count places the others.
    carve()
        .args(["fit", "H100-80GB", "1g.10gb=0", "3g.40gb"])
        .assert()
        .success()
        .stdout(predicate::str::contains("H100-80GB: 3g.40gb fits."));
}

#[test]
fn fit_reports_room_around_used_instances() {
    let v = json_of(
        &[
            "fit",
            "H100-80GB",
            "2g.20gb=2",
            "--used",
            "1g.10gb@1",
            "--json",
        ],
        0,
    );
    assert_eq!(v["room"]["1g.20gb"], serde_json::json!([6]));
}

#[test]
fn fit_bad_input_exits_2() {
    let cases: &[(&[&str], &str)] = &[
        (&["fit", "H100-80GB", "3g.40g"], "did you mean '3g.40gb'"),
        (&["fit", "H100-80GB", "3g.40gb=x"], "non-negative integer"),
        (&["fit", "H100-80GB", "3g.40gb=-1"], "non-negative integer"),
        (
            &["fit", "H100-80GB", "1g.10gb", "--used", "3g.40gb"],
            "PROFILE@START",
        ),
        (
            &["fit", "H100-80GB", "1g.10gb", "--used", "3g.40gb@2"],
            "cannot start at memory slot 2",
        ),
        (
            &["fit", "H100-80GB", "1g.10gb", "--used", "3g.40gb@999"],
            "memory-slot index",
        ),
        (
            &["fit", "H100-80GB", "1g.10gb=99999999999"],
            "non-negative integer",
        ),
        (&["fit", "H100-80GB", "1g.10gb=1000"], "cannot fit"),
        (&["fit", "H100-80GB"], "required"),
        (&["fit"], "required"),
        (&["frobnicate"], "unrecognized subcommand"),
    ];
    for (args, msg) in cases {
        carve()
            .args(*args)
            .assert()
            .code(2)
            .stderr(predicate::str::contains(*msg))
            .stderr(predicate::str::contains("panicked").not());
    }
}

// --- validate -----------------------------------------------------------------------------------

#[test]
fn validate_accepts_a_good_config() {
    let f = example("mig-parted/config.yaml");
    carve()
        .args(["validate", f.to_str().unwrap()])
        .assert()
        .success()
        .stdout(predicate::str::contains("valid"));
    let v = json_of(&["validate", f.to_str().unwrap(), "--json"], 0);
    assert_eq!(v["valid"], true);
    let balanced: Vec<&Value> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["config"] == "all-balanced")
        .collect();
    assert_eq!(balanced.len(), 3);
    assert!(balanced.iter().all(|e| e["models"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["feasible"] == true)));
    // The A100-40GB entry is checked on the A100-40GB model (device-filter 0x20B0).
    assert_eq!(balanced[0]["models"][0]["gpu"], "A100-40GB");
}

#[test]
fn validate_names_config_line_and_reason() {
    let f = example("mig-parted/broken.yaml");
    let out = carve()
        .args(["validate", f.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("broken.yaml:8:7: error: config 'too-big': H100-80GB: 3g.40gb x3 needs 9 compute slices, H100-80GB has 7"),
        "{err}"
    );
    assert!(
        err.contains("config 'typo'") && err.contains("did you mean '1g.10gb'"),
        "{err}"
    );
    assert!(
        err.contains("broken.yaml:18:7") && err.contains("mig-enabled is false"),
        "{err}"
    );
    let v = json_of(&["validate", f.to_str().unwrap(), "--json"], 2);
    assert_eq!(v["valid"], false);
    assert!(v["error"].as_str().unwrap().contains("3 errors"));
    assert_eq!(v["diagnostics"][0]["line"], 8);
    assert_eq!(v["diagnostics"][0]["config"], "too-big");
}

#[test]
fn validate_node_option_targets_gpu_indexes() {
    let f = temp_file(
        "node.yaml",
        "version: v1\nmig-configs:\n  c:\n    - devices: [0]\n      mig-enabled: true\n      mig-devices:\n        1g.5gb: 7\n    - devices: [1]\n      mig-enabled: true\n      mig-devices:\n        1g.10gb: 7\n",
    );
    carve()
        .args([
            "validate",
            f.to_str().unwrap(),
            "--gpus",
            "A100-40GB,H100-80GB",
        ])
        .assert()
        .success();
    // Index 1 is now an A100-40GB, where 1g.10gb is the double-memory profile (max 4).
    carve()
        .args(["validate", f.to_str().unwrap(), "--gpus", "2xA100-40GB"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("A100-40GB: 1g.10gb x7"));
    carve()
        .args(["validate", f.to_str().unwrap(), "--gpus", "1xA100-40GB"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("device index 1 is out of range"));
    carve()
        .args(["validate", f.to_str().unwrap(), "--gpus", "2xB100"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("unknown GPU 'B100'"));
    // The one GPU-list parser and its limit (shared with the simulated node and tenancy files).
    for (node, want) in [
        (
            "2000xH100-80GB",
            "--gpus: '2000xH100-80GB': the GPU count must be 1 to 1024",
        ),
        (
            "1000xH100-80GB,100xH100-80GB",
            "more than 1024 GPUs on one node",
        ),
        (",", "--gpus: no GPUs given"),
        ("2xH100-8OGB", "did you mean 'H100-80GB'"),
    ] {
        carve()
            .args(["validate", f.to_str().unwrap(), "--gpus", node])
            .assert()
            .code(2)
            .stderr(predicate::str::contains(want));
    }
}

#[test]
fn validate_syntax_and_schema_errors_have_positions() {
    let cases: &[(&str, &str)] = &[
        ("version: v1\nmig-configs:\n  a: [\n", ":4:1: error: YAML syntax error"),
        ("version: v2\nmig-configs:\n  a:\n    - devices: all\n      mig-enabled: false\n", ":1:10: error: unsupported version 'v2'"),
        ("version: v1\nmig-configs:\n  a:\n    - devices: all\n      mig-enable: false\n", ":5:7: error: config 'a': unknown field 'mig-enable' in a config entry; did you mean 'mig-enabled'?"),
        ("version: v1\nmig-configs:\n  a:\n    - devices: some\n      mig-enabled: false\n", ":4:16: error: config 'a': devices must be 'all'"),
        ("version: v1\nmig-configs:\n  a:\n    - devices: all\n      device-filter: 2330\n      mig-enabled: false\n", ":5:22: error: config 'a': device-filter '2330'"),
        ("version: v1\nmig-configs:\n  a:\n    - devices: all\n      mig-enabled: true\n      mig-devices:\n        1g.10gb: lots\n", ":7:18: error: config 'a': the count of 1g.10gb"),
        ("version: v1\nmig-configs:\n  a:\n    - devices: all\n      mig-enabled: true\n      mig-devices:\n        9g.10gb: 1\n", "exists on no GPU"),
        ("version: v1\nversion: v1\nmig-configs: {}\n", "duplicate key 'version'"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("", "missing field 'version'"),
        ("\u{0}\u{1}binary", "error"),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let f = temp_file(&format!("case{i}.yaml"), text);
        carve()
            .args(["validate", f.to_str().unwrap()])
            .assert()
            .code(2)
            .stderr(predicate::str::contains(*want))
            .stderr(predicate::str::contains("panicked").not());
    }
    carve()
        .args(["validate", "/nonexistent.yaml"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("cannot read /nonexistent.yaml"));
}

#[test]
fn validate_reads_stdin() {
    carve()
        .args(["validate", "-"])
        .write_stdin(
            "version: v1\nmig-configs:\n  a:\n    - devices: all\n      mig-enabled: false\n",
        )
        .assert()
        .success();
}

#[test]
fn help_and_version_succeed() {
    // The help ends with the exit statuses, the same for every command.
    carve()
        .arg("--help")
        .assert()
        .success()
        .stdout(predicate::str::contains("fit"))
        .stdout(predicate::str::contains("1  the answer is no"))
        .stdout(predicate::str::contains("3  could not do it"));
    // The version names the commit it was built from (or says it is unknown).
    let out = carve().arg("--version").output().unwrap();
    assert!(out.status.success());
    let v = String::from_utf8_lossy(&out.stdout);
    let commit = v
        .trim()
        .strip_prefix(concat!("carve ", env!("CARGO_PKG_VERSION"), " ("))
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("carve VERSION (COMMIT): {v}"));
    assert!(
        commit == "unknown"
            || (commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{v}"
    );
}

#[test]
fn completions_and_man_page() {
    for (shell, says) in [
        ("bash", "complete -F _carve"),
        ("zsh", "#compdef carve"),
        ("fish", "complete -c carve"),
    ] {
        carve()
            .args(["completions", shell])
            .assert()
            .success()
            .stdout(predicate::str::contains(says))
            .stdout(predicate::str::contains("simulate"));
    }
    carve().args(["completions", "tcsh"]).assert().code(2);
    carve()
        .arg("man")
        .assert()
        .success()
        .stdout(predicate::str::starts_with(".ie"))
        .stdout(predicate::str::contains(".TH carve 1"))
        .stdout(predicate::str::contains("Exit status"));
    // A user catalog that does not load does not stop them.
    carve()
        .env("CARVE_CATALOG", "/nonexistent/catalog.toml")
        .args(["completions", "bash", "--json"])
        .assert()
        .success()
        .stdout(predicate::str::contains("\"script\""));
}

// --- exit status 3: could not do it --------------------------------------------------------------

/// Each family of commands, made to fail by its environment (a file that cannot be written, a
/// state database that cannot be opened, a scheduler that is not there, a shim that is not
/// there): exit 3, and with --json one JSON document saying so.
#[test]
fn failures_exit_3_with_one_json_document() {
    let dir = std::env::temp_dir().join(format!("carve-cli-fails-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // A path under a plain file: nothing can be made there.
    std::fs::write(dir.join("a-file"), "").unwrap();
    let under = dir.join("a-file/x");
    let under = under.to_str().unwrap();
    let tenancy = example("tenancy.yaml");
    let tenancy = tenancy.to_str().unwrap();
    let sched = example("sched.yaml");
    let nosock = dir.join("none.sock");
    /// Arguments, environment, what the error says.
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, PathBuf)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec!["layouts", "H100-80GB", "--svg", under],
            vec![],
            "cannot write",
        ),
        (
            vec!["fit", "H100-80GB", "1g.10gb", "--svg", under],
            vec![],
            "cannot write",
        ),
        (
            vec!["plan", tenancy, "--out", under],
            vec![],
            "cannot create",
        ),
        (
            vec!["simulate", tenancy, "--duration", "1s", "--out", under],
            vec![],
            "cannot create",
        ),
        (
            vec!["--state", under, "--backend", "sim", "status"],
            vec![],
            "a-file",
        ),
        (vec!["--state", under, "sim", "show"], vec![], "a-file"),
        (vec!["--state", under, "sim", "reboot"], vec![], "a-file"),
        (vec!["--state", under, "export"], vec![], "a-file"),
        (
            vec!["sched", "status", "--socket", nosock.to_str().unwrap()],
            vec![],
            "none.sock",
        ),
        (
            vec!["sched", "serve", sched.to_str().unwrap(), "--socket", under],
            vec![],
            "cannot create",
        ),
        (
            vec!["run", "--tenant", "x", "--", "true"],
            vec![("CARVE_SHIM_LIB", dir.join("no-shim.so"))],
            "CARVE_SHIM_LIB",
        ),
    ];
    for (args, env, says) in cases {
        let mut c = carve();
        for (k, v) in &env {
            c.env(k, v);
        }
        let out = c.arg("--json").args(&args).output().unwrap();
        let v = json_with_code(&out, 3, &format!("{args:?}"));
        assert_eq!(v["kind"], "failed", "{args:?}: {v}");
        assert_eq!(v["exit"], 3, "{args:?}: {v}");
        assert!(
            v["error"].as_str().unwrap().contains(says),
            "{args:?}: {says} in {v}"
        );
        // For people: the message on stderr, nothing on stdout.
        let mut c = carve();
        for (k, v) in &env {
            c.env(k, v);
        }
        let out = c.args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(3), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("carve: error: "),
            "{args:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
