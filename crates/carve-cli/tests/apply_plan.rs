//! `carve apply` and `carve assert` with a carve plan (`plan.json`) on the simulated node, through
//! the real binary: exact placements, fewest changes between plans, MIG off for time-sliced GPUs,
//! unused GPUs untouched, node choice, and bad input that changes nothing.

use carve_test_support::cli::{carve_in, mig_devices, placements, success_json, Devices};
use carve_test_support::fresh_dir;
use predicates::prelude::*;
use serde_json::{json, Value};
use std::path::PathBuf;

struct Node {
    dir: PathBuf,
}

impl Node {
    fn new(tag: &str, spec: &str) -> Node {
        let n = Node {
            dir: fresh_dir(&format!("carve-apply-plan-{tag}")),
        };
        n.cmd().args(["--sim", spec, "status"]).assert().success();
        n
    }

    fn cmd(&self) -> assert_cmd::Command {
        carve_in(&self.dir)
    }

    /// Writes `text` to a file in the node's directory; returns its path.
    fn file(&self, name: &str, text: &str) -> String {
        let p = self.dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    }

    fn plan(&self, name: &str, plan: &Value) -> String {
        self.file(name, &serde_json::to_string_pretty(plan).unwrap())
    }

    fn apply_json(&self, args: &[&str]) -> Value {
        success_json(
            &self
                .cmd()
                .arg("apply")
                .args(args)
                .arg("--json")
                .output()
                .unwrap(),
        )
    }

    fn status(&self) -> Value {
        success_json(&self.cmd().args(["status", "--json"]).output().unwrap())
    }

    fn devices(&self) -> Devices {
        mig_devices(&self.status())
    }

    fn mig_on(&self, gpu: usize) -> bool {
        self.status()["gpus"][gpu]["info"]["mig"]["current"]
            .as_bool()
            .unwrap()
    }

    fn stored(&self, key: &str) -> Option<Value> {
        carve_state::Store::open(&self.dir.join("state"))
            .unwrap()
            .get(key)
            .unwrap()
    }
}

/// Planned MIG instances: (profile, start, size).
type Instances = [(&'static str, u8, u8)];

/// A planned GPU.
fn gpu(node: &str, index: u32, model: &str, mode: &str, inst: &Instances) -> Value {
    let instances: Vec<Value> = inst
        .iter()
        .enumerate()
        .map(|(i, (p, s, z))| {
            json!({"profile": p, "start": s, "size": z, "tenant": format!("t{i}"), "replica": 0})
        })
        .collect();
    let mut g = json!({
        "node": node, "index": index, "model": model, "memory_mib": 81559,
        "mig_capable": true, "mode": mode, "instances": instances,
    });
    if mode == "time-sliced" {
        g["shares"] = json!([{"tenant": "dev", "replica": 0, "share": 0.5, "memory_mib": 20000}]);
        g["scheduler"] = json!({"policy": "equal-share", "slice_ms": 2, "reason": "test"});
    }
    g
}

/// A plan over `nodes` with `gpus`, in the shape `carve plan` writes (format version 2).
fn plan(nodes: &[&str], gpus: Vec<Value>) -> Value {
    let nodes: Vec<Value> = nodes
        .iter()
        .map(|n| json!({"name": n, "platform": "bare-metal"}))
        .collect();
    let used = gpus.iter().filter(|g| g["mode"] != "unused").count();
    json!({
        "version": 2,
        "nodes": nodes,
        "gpus": gpus,
        "tenants": [],
        "gpus_used": used,
        "lower_bound_gpus": used,
        "optimal": true,
        "complete": true,
        "stats": {
            "dedicated_gpus": 0, "time_sliced_gpus": 0, "mig_gpus": used, "mig_optimal": true,
            "mig_lower_bound": used, "time_sliced_lower_bound": 0, "solver_nodes": 0
        }
    })
}

const GPU0: &Instances = &[
    ("1g.10gb", 0, 1),
    ("1g.10gb", 1, 1),
    ("2g.20gb", 2, 2),
    ("3g.40gb", 4, 4),
];
const GPU1: &Instances = &[("4g.40gb", 0, 4), ("3g.40gb", 4, 4)];

fn first_plan() -> Value {
    plan(
        &["node-a"],
        vec![
            gpu("node-a", 0, "H100-80GB", "mig", GPU0),
            gpu("node-a", 1, "H100-80GB", "mig", GPU1),
        ],
    )
}

fn expected(gpus: &[(u64, &Instances)]) -> Vec<(u64, String, u64)> {
    let mut v: Vec<(u64, String, u64)> = gpus
        .iter()
        .flat_map(|(g, inst)| {
            inst.iter()
                .map(move |(p, s, _)| (*g, p.to_string(), *s as u64))
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_plan_is_applied_at_its_placements() {
    let n = Node::new("exact", "2xH100-80GB");
    let p = n.plan("plan.json", &first_plan());
    n.cmd()
        .args(["apply", &p])
        .assert()
        .success()
        .stderr(predicate::str::contains("applying plan").and(predicate::str::contains("node-a")))
        .stderr(predicate::str::contains("[1/"));
    assert_eq!(placements(&n.devices()), expected(&[(0, GPU0), (1, GPU1)]));
    n.cmd()
        .args(["assert", &p])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "the GPUs match (2 GPU(s) checked)",
        ));
    // The plan is kept for the node agent.
    assert_eq!(n.stored("plan").unwrap(), first_plan());
    assert_eq!(n.stored("plan-node").unwrap(), json!("node-a"));
    // Applying again changes nothing.
    let v = n.apply_json(&[&p]);
    assert_eq!(v["ops"].as_array().unwrap().len(), 0);
    assert_eq!(v["kept"].as_array().unwrap().len(), 6);
    // A mig-parted config replaces the plan: it is no longer kept.
    let off = n.file(
        "off.yaml",
        "version: v1\nmig-configs:\n  off:\n    - devices: all\n      mig-enabled: false\n",
    );
    n.cmd().args(["apply", &off]).assert().success();
    assert_eq!(n.stored("plan"), None);
    assert_eq!(n.stored("plan-node"), None);
}

/// `first_plan` as older carve wrote it: format version 1, each tenant's placements (a copy of
/// what the GPUs say) and `plan_ms`.
fn first_plan_v1(t0: Value) -> Value {
    let mut p = first_plan();
    p["version"] = json!(1);
    let stats = p["stats"].as_object_mut().unwrap();
    stats.remove("solver_nodes");
    stats.insert("plan_ms".into(), json!(3.5));
    p["tenants"] = json!([{
        "name": "t0", "workload": "inference", "mode": "mig", "rule": "test", "reason": "test",
        "rejected": [], "replicas": 1, "memory_mib": 10240, "spread": false,
        "placements": t0,
    }]);
    p
}

#[test]
fn a_version_1_plan_is_still_applied() {
    let n = Node::new("v1", "2xH100-80GB");
    // t0 holds 1g.10gb@0 on GPU 0 and 4g.40gb@0 on GPU 1 (both replica 0 in this test plan).
    let t0 = json!([
        {"replica": 0, "node": "node-a", "gpu": 0, "profile": "1g.10gb", "start": 0},
        {"replica": 0, "node": "node-a", "gpu": 1, "profile": "4g.40gb", "start": 0},
    ]);
    let mut wrong = t0.clone();
    wrong[1]["start"] = json!(4);
    n.cmd()
        .args(["apply", &n.plan("edited.json", &first_plan_v1(wrong))])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "tenant 't0': its placements disagree with the GPUs",
        ));
    let p = n.plan("v1.json", &first_plan_v1(t0));
    n.cmd().args(["apply", &p]).assert().success();
    assert_eq!(placements(&n.devices()), expected(&[(0, GPU0), (1, GPU1)]));
    // Kept for the agent as a version-2 plan: the GPUs say where t0 is, once.
    let stored = n.stored("plan").unwrap();
    assert_eq!(stored["version"], 2);
    assert!(
        stored["tenants"][0].get("placements").is_none(),
        "{stored:#}"
    );
    assert!(stored["stats"].get("plan_ms").is_none(), "{stored:#}");
}

#[test]
fn a_second_plan_keeps_what_it_shares_with_the_first() {
    let n = Node::new("keep", "2xH100-80GB");
    n.apply_json(&[&n.plan("plan.json", &first_plan())]);
    let before = n.devices();
    // GPU 0: the 2g.20gb at 2 becomes two 1g.10gb (at 2 and 3); everything else stays.
    let gpu0: &Instances = &[
        ("1g.10gb", 0, 1),
        ("1g.10gb", 1, 1),
        ("1g.10gb", 2, 1),
        ("1g.10gb", 3, 1),
        ("3g.40gb", 4, 4),
    ];
    let second = plan(
        &["node-a"],
        vec![
            gpu("node-a", 0, "H100-80GB", "mig", gpu0),
            gpu("node-a", 1, "H100-80GB", "mig", GPU1),
        ],
    );
    let p2 = n.plan("plan2.json", &second);
    let dry = n.apply_json(&[&p2, "--dry-run"]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(n.devices(), before, "a dry run changes nothing");
    let v = n.apply_json(&[&p2]);
    let ops: Vec<&str> = v["ops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["op"].as_str().unwrap())
        .collect();
    // Destroy the 2g.20gb (CI, GI), create two 1g.10gb (GI, CI each): nothing else.
    assert_eq!(
        ops,
        [
            "destroy-compute-instance",
            "destroy-gpu-instance",
            "create-gpu-instance",
            "create-compute-instance",
            "create-gpu-instance",
            "create-compute-instance"
        ],
        "{v:#}"
    );
    assert_eq!(v["ops"], dry["ops"]);
    assert!(v["ops"].as_array().unwrap().iter().all(|o| o["gpu"] == 0));
    assert_eq!(v["kept"].as_array().unwrap().len(), 5);
    let after = n.devices();
    for d in before.iter().filter(|d| d.1 != "2g.20gb") {
        assert!(after.contains(d), "{d:?} was not kept (UUID changed)");
    }
    assert_eq!(placements(&after), expected(&[(0, gpu0), (1, GPU1)]));
    n.cmd().args(["assert", &p2]).assert().success();
}

#[test]
fn time_sliced_gpus_get_mig_off_and_unused_gpus_are_left_alone() {
    let n = Node::new("modes", "2xH100-80GB");
    n.apply_json(&[&n.plan("plan.json", &first_plan())]);
    let before = n.devices();
    // GPU 0 unused, GPU 1 time-sliced.
    let ts = plan(
        &["node-a"],
        vec![
            gpu("node-a", 0, "H100-80GB", "unused", &[]),
            gpu("node-a", 1, "H100-80GB", "time-sliced", &[]),
        ],
    );
    let p = n.plan("ts.json", &ts);
    let v = n.apply_json(&[&p]);
    assert!(v["ops"].as_array().unwrap().iter().all(|o| o["gpu"] == 1));
    assert_eq!(v["targets"].as_array().unwrap().len(), 1);
    assert!(!n.mig_on(1), "the time-sliced GPU has MIG off");
    assert!(n.mig_on(0));
    let gpu0: Devices = before.iter().filter(|d| d.0 == 0).cloned().collect();
    assert_eq!(n.devices(), gpu0, "the unused GPU is untouched");
    n.cmd().args(["assert", &p]).assert().success();
    // A dedicated GPU also gets MIG off; a GPU the plan does not name is untouched too.
    let ded = plan(
        &["node-a"],
        vec![gpu("node-a", 0, "H100-80GB", "dedicated", &[])],
    );
    n.apply_json(&[&n.plan("ded.json", &ded)]);
    assert!(!n.mig_on(0) && !n.mig_on(1));
    assert!(n.devices().is_empty());
}

#[test]
fn assert_and_boot_with_a_plan() {
    let n = Node::new("assert", "2xH100-80GB");
    let p = n.plan("plan.json", &first_plan());
    n.cmd().args(["assert", &p]).assert().code(1);
    n.apply_json(&[&p]);
    n.cmd().args(["assert", &p]).assert().success();
    n.cmd()
        .args(["assert", &p, "--json"])
        .assert()
        .success()
        .stdout(predicate::str::contains("\"matches\": true"));
    // A change: GPU 0 becomes one 7g.80gb.
    let other = plan(
        &["node-a"],
        vec![gpu("node-a", 0, "H100-80GB", "mig", &[("7g.80gb", 0, 8)])],
    );
    n.apply_json(&[&n.plan("other.json", &other)]);
    n.cmd()
        .args(["assert", &p])
        .assert()
        .code(1)
        .stdout(predicate::str::contains("the GPUs differ"));
    // Back to the plan; after a reboot `--boot` re-applies the plan-derived state.
    n.apply_json(&[&p]);
    let want = placements(&n.devices());
    n.cmd().args(["sim", "reboot"]).assert().success();
    assert!(n.devices().is_empty());
    n.cmd().args(["assert", &p]).assert().code(1);
    n.cmd().args(["apply", "--boot"]).assert().success();
    assert_eq!(placements(&n.devices()), want);
    n.cmd().args(["assert", &p]).assert().success();
    n.cmd().args(["assert"]).assert().success();
}

#[test]
fn bad_plans_exit_2_and_change_nothing() {
    let n = Node::new("bad", "2xH100-80GB");
    n.apply_json(&[&n.plan("plan.json", &first_plan())]);
    let before = n.status();
    let stored = n.stored("plan");
    let one = |g: Value| plan(&["node-a"], vec![g]);
    let cases: Vec<(Value, &str)> = vec![
        (
            one(gpu("node-a", 2, "H100-80GB", "mig", &[("7g.80gb", 0, 8)])),
            "node-a GPU 2 is planned as H100-80GB, this node has 2 GPUs",
        ),
        (
            one(gpu("node-a", 1, "A100-40GB", "mig", &[("7g.40gb", 0, 8)])),
            "node-a GPU 1 is planned as A100-40GB, this node's GPU 1 is H100-80GB",
        ),
        (
            one(gpu("node-a", 0, "H100-80GB", "mig", &[("3g.40g", 4, 4)])),
            "unknown profile '3g.40g' on H100-80GB; did you mean '3g.40gb'?",
        ),
        (
            one(gpu(
                "node-a",
                0,
                "H100-80GB",
                "mig",
                &[("2g.20gb", 0, 2), ("1g.10gb", 1, 1)],
            )),
            "invalid layout: 2g.20gb at 0:2 overlaps 1g.10gb at 1:1",
        ),
        (
            one(gpu("node-a", 0, "H100-80GB", "mig", &[("3g.40gb", 4, 2)])),
            "3g.40gb at 4 has size 2, but 3g.40gb takes 4 memory slots",
        ),
        (
            one(gpu("node-a", 0, "H100-80GB", "mig", &[("3g.40gb", 2, 4)])),
            "3g.40gb cannot start at memory slot 2",
        ),
        (
            one(gpu(
                "node-a",
                0,
                "H100-80GB",
                "time-sliced",
                &[("1g.10gb", 0, 1)],
            )),
            "time-sliced but lists 1 MIG instance",
        ),
        (
            {
                let mut p = first_plan();
                p["version"] = json!(3);
                p
            },
            "plan version 3 is not supported",
        ),
        (
            {
                let mut p = first_plan();
                p.as_object_mut().unwrap().remove("nodes");
                p
            },
            "missing field `nodes`",
        ),
    ];
    for (i, (p, want)) in cases.iter().enumerate() {
        let f = n.plan(&format!("bad{i}.json"), p);
        n.cmd()
            .args(["apply", &f])
            .assert()
            .code(2)
            .stderr(predicate::str::contains(*want))
            .stderr(predicate::str::contains(format!("bad{i}.json")));
        n.cmd()
            .args(["assert", &f])
            .assert()
            .code(2)
            .stderr(predicate::str::contains(*want));
        n.cmd()
            .args(["apply", &f, "--json"])
            .assert()
            .code(2)
            .stdout(predicate::str::contains(*want));
    }
    // Broken JSON: the position of the error.
    let f = n.file("broken.json", "{\n  \"version\": 1,\n  \"gpus\": [,]\n}\n");
    n.cmd()
        .args(["apply", &f])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "broken.json:3:12: not a carve plan",
        ));
    // -c is for mig-parted configs; --node for plans.
    let p = n.plan("ok.json", &first_plan());
    n.cmd()
        .args(["apply", &p, "-c", "x"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("is a carve plan"));
    let y = n.file(
        "c.yaml",
        "version: v1\nmig-configs:\n  off:\n    - devices: all\n      mig-enabled: false\n",
    );
    n.cmd()
        .args(["apply", &y, "--node", "node-a"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "--node picks a node of a carve plan",
        ));
    n.cmd()
        .args(["apply", &p, "--node", "node-x"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("the plan has no node 'node-x'"));
    assert_eq!(n.status(), before);
    assert_eq!(n.stored("plan"), stored);
}

#[test]
fn a_multi_node_plan_needs_the_node() {
    let n = Node::new("multi", "2xH100-80GB");
    let fleet = plan(
        &["gpu-node-1", "gpu-node-2"],
        vec![
            gpu("gpu-node-1", 0, "H100-80GB", "mig", GPU0),
            gpu("gpu-node-1", 1, "H100-80GB", "unused", &[]),
            gpu("gpu-node-2", 0, "H100-80GB", "mig", GPU1),
            gpu("gpu-node-2", 1, "H100-80GB", "mig", GPU0),
        ],
    );
    let p = n.plan("fleet.json", &fleet);
    let before = n.status();
    n.cmd()
        .args(["apply", &p])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "the plan has 2 nodes (gpu-node-1, gpu-node-2)",
        ))
        .stderr(predicate::str::contains("--node"));
    n.cmd()
        .args(["apply", &p, "--node", "gpu-node-3"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("did you mean"));
    n.cmd()
        .args(["assert", &p, "--node", "gpu-nod-2"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("did you mean 'gpu-node-2'"));
    assert_eq!(n.status(), before);
    n.cmd()
        .args(["apply", &p, "--node", "gpu-node-2"])
        .assert()
        .success();
    assert_eq!(placements(&n.devices()), expected(&[(0, GPU1), (1, GPU0)]));
    n.cmd()
        .args(["assert", &p, "--node", "gpu-node-2"])
        .assert()
        .success();
    n.cmd()
        .args(["assert", &p, "--node", "gpu-node-1"])
        .assert()
        .code(1);
    assert_eq!(n.stored("plan-node").unwrap(), json!("gpu-node-2"));
    // Without --node, the node named like this machine is chosen.
    let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") else {
        return;
    };
    let host = host.trim();
    let named = plan(
        &["elsewhere", host],
        vec![
            gpu("elsewhere", 0, "H100-80GB", "mig", GPU0),
            gpu(host, 0, "H100-80GB", "mig", GPU0),
        ],
    );
    n.cmd()
        .args(["apply", &n.plan("host.json", &named)])
        .assert()
        .success()
        .stderr(predicate::str::contains(format!("(node {host})")));
    assert_eq!(placements(&n.devices()), expected(&[(0, GPU0), (1, GPU0)]));
}

#[test]
fn a_busy_instance_blocks_a_plan_and_the_plan_is_not_recorded() {
    let n = Node::new("busy", "H100-80GB");
    let first = plan(
        &["node-a"],
        vec![gpu("node-a", 0, "H100-80GB", "mig", GPU0)],
    );
    n.apply_json(&[&n.plan("plan.json", &first)]);
    let busy = n
        .devices()
        .into_iter()
        .find(|d| d.1 == "2g.20gb")
        .unwrap()
        .3;
    n.cmd().args(["sim", "busy", &busy]).assert().success();
    let other = plan(
        &["node-a"],
        vec![gpu("node-a", 0, "H100-80GB", "mig", &[("7g.80gb", 0, 8)])],
    );
    let before = n.devices();
    n.cmd()
        .args(["apply", &n.plan("other.json", &other)])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "refusing to destroy instances in use",
        ));
    assert_eq!(n.devices(), before);
    assert_eq!(n.stored("plan").unwrap(), first);
}

/// The plan `carve apply` applied is what a bare `carve agent` serves afterwards (after a reboot
/// or an agent restart): its time-sliced tenants keep their own resources.
#[test]
fn a_bare_agent_serves_the_plan_the_last_apply_recorded() {
    let n = Node::new("agent", "H100-80GB");
    let tenancy = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/tenancy.yaml");
    let out = n.dir.join("plan");
    n.cmd()
        .args(["plan", tenancy, "--out"])
        .arg(&out)
        .assert()
        .success();
    let plan = out.join("plan.json");
    // node-a's GPUs, simulated.
    let p: Value = serde_json::from_slice(&std::fs::read(&plan).unwrap()).unwrap();
    let models: Vec<&str> = p["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["node"] == "node-a")
        .map(|g| g["model"].as_str().unwrap())
        .collect();
    n.cmd()
        .args(["--sim", &models.join(","), "sim", "reboot"])
        .assert()
        .success();
    n.cmd()
        .args(["apply", plan.to_str().unwrap(), "--node", "node-a"])
        .assert()
        .success();
    // The shim, without which no time-sliced share is offered.
    let shim = carve_test_support::cargo_build::build(
        &["carve-shim"],
        &[carve_test_support::fake_cuda::SHIM_LIB],
    )
    .join(carve_test_support::fake_cuda::SHIM_LIB);
    let agent = n
        .cmd()
        .env("CARVE_SHIM_LIB", shim)
        .args(["agent", "--json", "--listen", "off", "--run-for", "1s"])
        .arg("--device-plugin-dir")
        .arg(n.dir.join("plugins"))
        .arg("--cdi-dir")
        .arg(n.dir.join("cdi"))
        .arg("--run-dir")
        .arg(n.dir.join("run"))
        .output()
        .unwrap();
    assert!(
        agent.status.success(),
        "{}",
        String::from_utf8_lossy(&agent.stderr)
    );
    let ready: Value = serde_json::from_str(
        String::from_utf8_lossy(&agent.stdout)
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let sockets = ready["sockets"].as_object().unwrap();
    assert!(
        sockets.contains_key("carve.dev/notebooks"),
        "the recorded plan's tenant resources are served: {sockets:?}"
    );
    let tenants: Vec<&str> = ready["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["mode"].as_str())
        .collect();
    assert!(tenants.contains(&"time-sliced"), "{tenants:?}");
}
