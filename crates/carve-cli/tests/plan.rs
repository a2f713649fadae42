//! `carve plan` through the real binary: the example tenancy, decisions with reasons, a proven
//! optimum, shortfalls (exit 1) and `--allow-partial`, written files, and bad input (exit 2).

use carve_test_support::cli::{carve, example, json_with_code};
use carve_test_support::fresh_dir;
use predicates::prelude::*;
use serde_json::Value;
use std::path::PathBuf;

fn temp_dir(tag: &str) -> PathBuf {
    fresh_dir(&format!("carve-plan-{tag}"))
}

fn plan_json(args: &[&str], code: i32) -> Value {
    let out = carve()
        .arg("plan")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    json_with_code(&out, code, &format!("carve plan {args:?}"))
}

fn tenancy(tag: &str, text: &str) -> PathBuf {
    let p = temp_dir(tag).join("tenancy.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

fn tenant<'a>(plan: &'a Value, name: &str) -> &'a Value {
    plan["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no tenant {name}"))
}

#[test]
fn the_example_tenancy_plans_completely_with_a_reason_per_tenant() {
    let ex = example("tenancy.yaml");
    let plan = plan_json(&[ex.to_str().unwrap()], 0);
    assert_eq!(plan["complete"], true);
    assert_eq!(plan["optimal"], true);
    assert_eq!(plan["gpus_used"], plan["lower_bound_gpus"]);
    // The decision map.
    let expect = [
        ("search", "mig"),
        ("notebooks", "time-sliced"),
        ("ci", "time-sliced"),
        ("pretrain", "dedicated"),
        ("cad", "vgpu-time-sliced"),
        ("secure-vm", "vgpu-mig"),
    ];
    for (name, mode) in expect {
        let t = tenant(&plan, name);
        assert_eq!(t["mode"], mode, "{name}: {t:#}");
        assert!(!t["reason"].as_str().unwrap().is_empty());
        assert_eq!(t["rejected"].as_array().unwrap().len(), 4, "{name}");
    }
    // search: 3 replicas of 1g.10gb on 3 different GPUs, said once, by the GPUs (plan.json v2).
    let s = tenant(&plan, "search");
    assert!(s.get("placements").is_none(), "{s:#}");
    assert_eq!(plan["version"], 2);
    let mut gpus = std::collections::BTreeSet::new();
    for g in plan["gpus"].as_array().unwrap() {
        for i in g["instances"].as_array().into_iter().flatten() {
            if i["tenant"] == "search" {
                assert_eq!(i["profile"], "1g.10gb");
                gpus.insert((g["node"].as_str().unwrap(), g["index"].as_u64().unwrap()));
            }
        }
    }
    assert_eq!(gpus.len(), 3, "spread: {plan:#}");
    // Every MIG GPU's instances are a valid layout of its model.
    for g in plan["gpus"].as_array().unwrap() {
        if g["mode"] == "mig" || g["mode"] == "vgpu-mig" {
            let mut args = vec!["fit".to_string(), g["model"].as_str().unwrap().to_string()];
            let mut used = Vec::new();
            for i in g["instances"].as_array().unwrap() {
                used.push(format!(
                    "{}@{}",
                    i["profile"].as_str().unwrap(),
                    i["start"].as_u64().unwrap()
                ));
            }
            // Nothing more to place, everything already placed: fit checks the layout.
            args.push(g["instances"][0]["profile"].as_str().unwrap().to_string() + "=0");
            for u in used {
                args.push("--used".into());
                args.push(u);
            }
            carve().args(&args).assert().success();
        }
    }
    // vGPU: scheduler with an RmPVMRL value; time-sliced shares within memory.
    for g in plan["gpus"].as_array().unwrap() {
        if g["mode"] == "vgpu-time-sliced" {
            assert!(g["scheduler"]["rmpvmrl"]
                .as_str()
                .unwrap()
                .starts_with("0x"));
        }
        if g["mode"] == "time-sliced" {
            let mem: u64 = g["shares"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["memory_mib"].as_u64().unwrap())
                .sum();
            assert!(mem <= g["memory_mib"].as_u64().unwrap());
            let share: f64 = g["shares"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["share"].as_f64().unwrap())
                .sum();
            assert!(share <= 1.0 + 1e-9, "{g:#}");
        }
    }
}

#[test]
fn human_output_and_files() {
    let dir = temp_dir("out");
    let ex = example("tenancy.yaml");
    carve()
        .args(["plan", ex.to_str().unwrap(), "--out"])
        .arg(&dir)
        .assert()
        .success()
        .stdout(predicate::str::contains("search"))
        .stdout(predicate::str::contains("proven optimum"))
        .stdout(predicate::str::contains("plan.json"));
    let text = std::fs::read_to_string(dir.join("plan.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["version"], 2);
    // The planner's work, not its time.
    assert!(v["stats"]["solver_nodes"].is_u64(), "{:#}", v["stats"]);
    assert!(v["stats"].get("plan_ms").is_none());
}

#[test]
fn not_enough_room_exits_1_naming_tenants_and_what_would_fit() {
    let t = tenancy(
        "short",
        r#"fleet:
  - node: a
    gpus: [H100-80GB]
tenants:
  - name: big
    workload: inference
    memory_gb: 40
    replicas: 4
    slo: strict
  - name: small
    workload: inference
    memory_gb: 10
    slo: strict
"#,
    );
    let out = carve().arg("plan").arg(&t).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("big"), "{s}");
    assert!(s.contains("more H100-80GB"), "{s}");
    let dir = temp_dir("partial");
    // Nothing is written without --allow-partial.
    carve()
        .arg("plan")
        .arg(&t)
        .arg("--out")
        .arg(&dir)
        .assert()
        .code(1);
    assert!(!dir.join("plan.json").exists());
    carve()
        .arg("plan")
        .arg(&t)
        .arg("--out")
        .arg(&dir)
        .arg("--allow-partial")
        .assert()
        .success();
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("plan.json")).unwrap()).unwrap();
    assert_eq!(v["complete"], false);
    assert_eq!(v["shortfall"][0]["model"], "H100-80GB");
    assert!(v["shortfall"][0]["more_gpus"].as_u64().unwrap() >= 1);
    assert!(tenant(&v, "big")["unplaced"].as_u64().unwrap() >= 1);
}

/// The issue's examples: advice comes from planning again, and a tenant no GPU holds is named
/// with the reason instead of being counted into advice that cannot hold it.
#[test]
fn advice_is_right_or_absent_with_the_reason() {
    let t = tenancy(
        "huge",
        r#"fleet:
  - node: a
    gpus: [H100-80GB]
tenants:
  - {name: huge, workload: training, memory_gb: 200}
  - {name: api, workload: inference, memory_gb: 40, replicas: 3, slo: strict}
"#,
    );
    let out = carve().arg("plan").arg(&t).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("→ huge: no GPU of this fleet's models holds it: it needs 200 GB per replica; the largest GPU of this fleet has 80 GB\n"),
        "{s}"
    );
    assert!(
        s.contains("→ 1 more H100-80GB on a kubernetes/bare-metal node would make room for api\n"),
        "{s}"
    );
    let v = plan_json(&[t.to_str().unwrap()], 1);
    assert!(tenant(&v, "huge")["unplaceable"]
        .as_str()
        .unwrap()
        .contains("200 GB"));
    assert!(tenant(&v, "api").get("unplaceable").is_none());

    let t = tenancy(
        "shares",
        r#"fleet:
  - node: a
    gpus: [H100-80GB]
tenants:
  - {name: x, workload: batch, memory_gb: 10, share: 0.8}
  - {name: y, workload: batch, memory_gb: 10, share: 0.7}
"#,
    );
    let out = carve().arg("plan").arg(&t).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("→ 1 more H100-80GB on a kubernetes/bare-metal node would make room for y\n"),
        "{s}"
    );
    assert!(!s.contains("would hold them"), "{s}");
}

#[test]
fn gpus_without_mig_time_slice_with_a_warning() {
    let t = tenancy(
        "nomig",
        r#"fleet:
  - node: a
    platform: bare-metal
    gpus: [{model: L40S, memory_gb: 48}]
tenants:
  - name: api
    workload: inference
    memory_gb: 10
    slo: strict
"#,
    );
    let v = plan_json(&[t.to_str().unwrap()], 0);
    let api = tenant(&v, "api");
    assert_eq!(api["mode"], "time-sliced");
    assert!(api["warnings"][0].as_str().unwrap().contains("MIG"));
    assert_eq!(v["gpus"][0]["mode"], "time-sliced");
}

#[test]
fn bad_input_is_located_with_suggestions() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "fleet:\n  - node: a\n    gpus: [H100-80BG]\ntenants:\n  - name: x\n    workload: inference\n    memory_gb: 10\n",
            "3:",
            "H100-80GB",
        ),
        (
            "fleet:\n  - node: a\n    gpus: [H100-80GB]\ntenants:\n  - name: x\n    workload: inferense\n    memory_gb: 10\n",
            "6:",
            "inference",
        ),
        (
            "fleet:\n  - node: a\n    gpus: [H100-80GB]\ntenants:\n  - name: x\n    workload: inference\n    profile: 1g.10g\n",
            "7:",
            "1g.10gb",
        ),
        (
            "fleet:\n  - node: a\n    gpus: [H100-80GB]\ntenants:\n  - name: x\n    workload: inference\n    memory_gb: -3\n",
            "7:",
            "positive",
        ),
        (
            "fleet:\n  - node: a\n    gpus: [H100-80GB]\ntenants:\n  - name: x\n    workload: inference\n    memory_gb: 10\n    replicas: 0\n",
            "8:",
            "replicas",
        ),
        (
            "fleet:\n  - node: a\n    gpus: [H100-80GB]\ntenants:\n  - name: x\n    workload: inference\n    memroy_gb: 10\n",
            "7:",
            "memory_gb",
        ),
        (
            "fleet:\n  - node: a\n    gpus: [H100-80GB]\ntenants:\n  - name: x\n    workload: [inference\n",
            "7:",
            "YAML",
        ),
    ];
    for (i, (text, at, hint)) in cases.iter().enumerate() {
        let t = tenancy(&format!("bad{i}"), text);
        let out = carve().arg("plan").arg(&t).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "case {i}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("tenancy.yaml:{at}")),
            "case {i}: {err}"
        );
        assert!(err.contains(hint), "case {i}: {err}");
    }
}
