//! The one apply pipeline: a plan applied is recorded with the desired state and read back by a
//! later `Desired::Recorded` (what the node agent starts from); a mig-parted config removes it;
//! bad input changes nothing; an apply with nothing to do journals nothing; a dry run writes
//! nothing.

use carve_apply::{compare, reconcile, recorded_plan, ApplyOptions, Desired};
use carve_backend::engine::InMemory;
use carve_backend::Backend;
use carve_model::Catalog;
use carve_state::Store;

const PLAN: &str = r#"{
  "version": 2,
  "nodes": [{"name": "node-a", "platform": "kubernetes"}],
  "gpus": [
    {"node": "node-a", "index": 0, "model": "H100-80GB", "memory_mib": 81920, "mig_capable": true,
     "mode": "mig", "instances": [
       {"profile": "3g.40gb", "start": 4, "size": 4, "tenant": "search", "replica": 0},
       {"profile": "1g.10gb", "start": 0, "size": 1, "tenant": "chat", "replica": 0}]},
    {"node": "node-a", "index": 1, "model": "H100-80GB", "memory_mib": 81920, "mig_capable": true,
     "mode": "time-sliced", "shares": [
       {"tenant": "notebooks", "replica": 0, "share": 0.5, "memory_mib": 10240},
       {"tenant": "ci", "replica": 0, "share": 0.5, "memory_mib": 10240}],
     "scheduler": {"policy": "equal-share", "slice_ms": 2, "reason": "test"}}
  ],
  "tenants": [],
  "gpus_used": 2, "lower_bound_gpus": 2, "optimal": true, "complete": true,
  "stats": {"dedicated_gpus": 0, "time_sliced_gpus": 1, "mig_gpus": 1, "mig_optimal": true,
            "mig_lower_bound": 1, "time_sliced_lower_bound": 1, "solver_nodes": 0}
}"#;

const MIG_PARTED: &str = "version: v1\nmig-configs:\n  small:\n    - devices: all\n      mig-enabled: true\n      mig-devices:\n        1g.10gb: 2\n";

struct Node {
    _dir: tempfile::TempDir,
    catalog: Catalog,
    backend: InMemory,
    store: Store,
}

fn node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::embedded();
    let h100 = catalog.gpu("H100-80GB").unwrap().clone();
    let backend = InMemory::new(catalog.clone(), &[&h100, &h100], 7);
    let store = Store::open(dir.path()).unwrap();
    Node {
        _dir: dir,
        catalog,
        backend,
        store,
    }
}

fn apply(n: &mut Node, d: &Desired) -> carve_apply::Reconciled {
    reconcile(
        &mut n.backend,
        &n.catalog,
        &n.store,
        d,
        ApplyOptions::default(),
        &mut |_| {},
    )
    .unwrap()
}

#[test]
fn an_applied_plan_is_recorded_and_read_back() {
    let mut n = node();
    let plan = Desired::read(PLAN, "plan.json", None, Some("node-a")).unwrap();
    let r = apply(&mut n, &plan);
    assert!(r.outcome.as_ref().unwrap().journal_id.is_some());
    assert_eq!(r.plan.as_ref().map(|p| p.node.as_str()), Some("node-a"));
    // What the agent starts from after a restart: the same plan, and nothing to do.
    let recorded = recorded_plan(&n.store).unwrap().expect("recorded");
    assert_eq!(recorded.node, "node-a");
    assert_eq!(recorded.plan.gpus.len(), 2);
    let again = apply(&mut n, &Desired::Recorded);
    assert_eq!(again.plan.map(|p| p.node), Some("node-a".to_string()));
    assert!(again.changes.ops.is_empty());
    // Nothing to do: nothing journaled.
    let before = n.store.journal_recent(100).unwrap().len();
    let same = apply(&mut n, &plan);
    assert_eq!(same.outcome.unwrap().journal_id, None);
    assert_eq!(n.store.journal_recent(100).unwrap().len(), before);
    // A mig-parted config replaces the layout and removes the recorded plan.
    let cfg = Desired::read(MIG_PARTED, "c.yaml", None, None).unwrap();
    apply(&mut n, &cfg);
    assert!(recorded_plan(&n.store).unwrap().is_none());
    let (_, changes) = compare(&mut n.backend, &n.catalog, &n.store, &Desired::Recorded).unwrap();
    assert!(changes.ops.is_empty(), "{:?}", changes.ops);
}

#[test]
fn bad_input_and_dry_runs_change_nothing() {
    let mut n = node();
    let before = n.backend.gpus().unwrap();
    // A plan for another node's GPUs.
    let wrong = PLAN.replace("\"index\": 1", "\"index\": 5");
    let d = Desired::read(&wrong, "plan.json", None, Some("node-a")).unwrap();
    let e = reconcile(
        &mut n.backend,
        &n.catalog,
        &n.store,
        &d,
        ApplyOptions::default(),
        &mut |_| {},
    )
    .unwrap_err();
    assert_eq!(e.kind(), carve_apply::ErrorKind::Input, "{e}");
    assert!(e.to_string().starts_with("plan.json: "), "{e}");
    assert_eq!(n.backend.gpus().unwrap(), before);
    assert!(n.store.journal_recent(10).unwrap().is_empty());
    assert!(recorded_plan(&n.store).unwrap().is_none());
    // A dry run computes the changes and writes nothing.
    let d = Desired::read(PLAN, "plan.json", None, None).unwrap();
    let dry = reconcile(
        &mut n.backend,
        &n.catalog,
        &n.store,
        &d,
        ApplyOptions {
            dry_run: true,
            force: false,
        },
        &mut |_| {},
    )
    .unwrap();
    assert!(!dry.changes.ops.is_empty() && dry.outcome.is_none());
    assert_eq!(n.backend.gpus().unwrap(), before);
    assert!(n.store.desired().unwrap().is_empty());
    assert!(recorded_plan(&n.store).unwrap().is_none());
}

#[test]
fn the_format_is_told_once_and_errors_are_located() {
    let e = |text: &str, c: Option<&str>, node: Option<&str>| {
        Desired::read(text, "f", c, node).unwrap_err().to_string()
    };
    // A plan given -c, a mig-parted file given --node.
    assert!(e(PLAN, Some("x"), None).contains("is a carve plan"));
    assert!(e(MIG_PARTED, None, Some("n")).contains("is a mig-parted config"));
    // Broken JSON that is no YAML either: located JSON error.
    let msg = e("{\"version\": 1, \"gpus\": [", None, None);
    assert!(msg.starts_with("f:1:"), "{msg}");
    // A plan missing a field: located.
    let msg = e(&PLAN.replace("\"gpus_used\": 2, ", ""), None, None);
    assert!(msg.contains("gpus_used") && msg.starts_with("f:"), "{msg}");
    // mig-parted in YAML flow style (starts with '{') is still mig-parted.
    let flow = "{version: v1, mig-configs: {a: [{devices: all, mig-enabled: false}]}}";
    assert!(matches!(
        Desired::read(flow, "f", None, None).unwrap(),
        Desired::MigParted { .. }
    ));
    // An unknown config gets a suggestion.
    assert!(e(MIG_PARTED, Some("smal"), None).contains("did you mean"));
}
