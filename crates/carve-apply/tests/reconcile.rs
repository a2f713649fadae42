//! The one apply pipeline: a plan applied is recorded with the desired state and read back by a
//! later `Desired::Recorded` (what the node agent starts from); a mig-parted config removes it;
//! bad input changes nothing; an apply with nothing to do journals nothing; a dry run writes
//! nothing. After a crash, the next apply supersedes the interrupted one and goes straight from
//! what the GPUs hold to its own targets (`--boot`: to the interrupted apply's), exactly as its
//! dry run says; a crash during that apply is taken over the same way.

use carve_apply::{
    compare, diff, interrupted, observe, reconcile, recorded_plan, ApplyOptions, Desired,
    GpuTarget, Reconciled,
};
use carve_backend::engine::InMemory;
use carve_backend::{Backend, GpuInfo, GpuInstance, MigMode};
use carve_model::{Catalog, NvmlGiProfile};
use carve_state::{status, Store};
use std::panic::{catch_unwind, AssertUnwindSafe};

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

const CONFIGS: &str = r#"version: v1
mig-configs:
  balanced:
    - devices: all
      mig-enabled: true
      mig-devices: {"1g.10gb": 2, "2g.20gb": 1, "3g.40gb": 1}
  small:
    - devices: all
      mig-enabled: true
      mig-devices: {"1g.10gb": 4, "3g.40gb": 1}
  sevens:
    - devices: all
      mig-enabled: true
      mig-devices: {"1g.10gb": 7}
  gpu1-small:
    - devices: [1]
      mig-enabled: true
      mig-devices: {"1g.10gb": 4, "3g.40gb": 1}
"#;

fn config(name: &str) -> Desired {
    Desired::read(CONFIGS, "configs.yaml", Some(name), None).unwrap()
}

/// The node's backend, crashing right after its `left`th committed mutation (a panic where the
/// simulated node's `CARVE_SIM_CRASH_AFTER` aborts the process): what the GPUs and the state
/// database hold afterwards is what a crash leaves.
struct CrashAfter<'a> {
    inner: &'a mut InMemory,
    left: usize,
}

impl CrashAfter<'_> {
    fn committed<T>(&mut self, r: carve_backend::Result<T>) -> carve_backend::Result<T> {
        if r.is_ok() {
            self.left -= 1;
            if self.left == 0 {
                panic!("crash (a test's)");
            }
        }
        r
    }
}

impl Backend for CrashAfter<'_> {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn gpus(&mut self) -> carve_backend::Result<Vec<GpuInfo>> {
        self.inner.gpus()
    }
    fn mig_mode(&mut self, gpu: u32) -> carve_backend::Result<MigMode> {
        self.inner.mig_mode(gpu)
    }
    fn set_mig_mode(&mut self, gpu: u32, enabled: bool) -> carve_backend::Result<MigMode> {
        let r = self.inner.set_mig_mode(gpu, enabled);
        self.committed(r)
    }
    fn gpu_instances(&mut self, gpu: u32) -> carve_backend::Result<Vec<GpuInstance>> {
        self.inner.gpu_instances(gpu)
    }
    fn create_gpu_instance(
        &mut self,
        gpu: u32,
        profile: NvmlGiProfile,
        start: u8,
    ) -> carve_backend::Result<u32> {
        let r = self.inner.create_gpu_instance(gpu, profile, start);
        self.committed(r)
    }
    fn create_compute_instance(
        &mut self,
        gpu: u32,
        gi: u32,
        slices: u8,
    ) -> carve_backend::Result<u32> {
        let r = self.inner.create_compute_instance(gpu, gi, slices);
        self.committed(r)
    }
    fn destroy_compute_instance(
        &mut self,
        gpu: u32,
        gi: u32,
        ci: u32,
    ) -> carve_backend::Result<()> {
        let r = self.inner.destroy_compute_instance(gpu, gi, ci);
        self.committed(r)
    }
    fn destroy_gpu_instance(&mut self, gpu: u32, gi: u32) -> carve_backend::Result<()> {
        let r = self.inner.destroy_gpu_instance(gpu, gi);
        self.committed(r)
    }
}

/// Applies `d`, crashing right after the `after`th GPU mutation; returns the interrupted
/// apply's journal id.
fn crash(n: &mut Node, d: &Desired, after: usize) -> i64 {
    let (catalog, store) = (&n.catalog, &n.store);
    let mut backend = CrashAfter {
        inner: &mut n.backend,
        left: after,
    };
    let r = catch_unwind(AssertUnwindSafe(|| {
        reconcile(
            &mut backend,
            catalog,
            store,
            d,
            ApplyOptions::default(),
            &mut |_| {},
        )
    }));
    assert!(r.is_err(), "the apply should have crashed");
    let unfinished = n.store.journal_unfinished().unwrap();
    assert_eq!(unfinished.len(), 1, "one apply is left running");
    unfinished[0].id
}

fn dry_run(n: &mut Node, d: &Desired) -> Reconciled {
    let opts = ApplyOptions {
        dry_run: true,
        force: false,
    };
    reconcile(&mut n.backend, &n.catalog, &n.store, d, opts, &mut |_| {}).unwrap()
}

/// A journal entry's status.
fn status_of(n: &Node, id: i64) -> String {
    let all = n.store.journal_recent(1000).unwrap();
    all.into_iter().find(|e| e.id == id).unwrap().status
}

/// Applies `d` after a dry run and checks that the real run did exactly what the dry run said.
fn apply_as_announced(n: &mut Node, d: &Desired) -> Reconciled {
    let dry = dry_run(n, d);
    let real = apply(n, d);
    assert_eq!(real.superseded, dry.superseded);
    assert_eq!(real.targets, dry.targets);
    assert_eq!(real.changes.ops, dry.changes.ops);
    assert_eq!(real.changes.kept, dry.changes.kept);
    assert_eq!(real.outcome.as_ref().unwrap().ops, dry.changes.ops);
    real
}

#[test]
fn an_interrupted_apply_is_superseded_not_replayed() {
    let mut n = node();
    apply(&mut n, &config("balanced"));
    let gpu1 = n.backend.gpu_instances(1).unwrap();
    // balanced -> sevens stops after 3 of its 28 operations, all on GPU 0.
    let old = crash(&mut n, &config("sevens"), 3);
    let dry = dry_run(&mut n, &config("balanced"));
    assert_eq!(dry.superseded, vec![old]);
    assert_eq!(
        status_of(&n, old),
        status::RUNNING,
        "a dry run writes nothing"
    );
    let r = apply_as_announced(&mut n, &config("balanced"));
    // Straight back: the 3 operations undone, nothing of sevens done first.
    assert_eq!(r.changes.ops.len(), 3, "{:#?}", r.changes.ops);
    assert!(r.changes.ops.iter().all(|op| op.gpu() == 0));
    assert_eq!(
        n.backend.gpu_instances(1).unwrap(),
        gpu1,
        "GPU 1 is untouched"
    );
    assert_eq!(status_of(&n, old), status::SUPERSEDED);
    let new = r.outcome.unwrap().journal_id.unwrap();
    assert_eq!(status_of(&n, new), status::DONE);
    assert!(n.store.journal_unfinished().unwrap().is_empty());
    let (_, left) = compare(&mut n.backend, &n.catalog, &n.store, &config("balanced")).unwrap();
    assert!(left.ops.is_empty());
    // The desired state recorded is the new one: `--boot` now has nothing to do.
    assert!(dry_run(&mut n, &Desired::Recorded).changes.ops.is_empty());
}

#[test]
fn a_crash_while_superseding_is_taken_over_the_same_way() {
    let mut n = node();
    apply(&mut n, &config("balanced"));
    let first = crash(&mut n, &config("sevens"), 5);
    // The apply that supersedes it crashes too: its entry, written with the superseding in one
    // transaction before its first operation, is the one left running.
    let second = crash(&mut n, &config("small"), 2);
    assert_ne!(first, second);
    assert_eq!(status_of(&n, first), status::SUPERSEDED);
    let observed = observe(&mut n.backend, &n.catalog).unwrap();
    let left = interrupted(&n.store, &observed).unwrap();
    assert_eq!(left.ids, vec![second]);
    // What it was going to: small, as placed from what the first crash left; and recorded as
    // the desired state already.
    let small = dry_run(&mut n, &config("small")).targets;
    let recorded: Vec<GpuTarget> = carve_apply::desired_targets(&n.store, &observed).unwrap();
    assert_eq!(left.targets, recorded);
    assert_eq!(
        left.targets
            .iter()
            .map(|t| t.instances.len())
            .collect::<Vec<_>>(),
        small.iter().map(|t| t.instances.len()).collect::<Vec<_>>()
    );
    let r = apply_as_announced(&mut n, &config("balanced"));
    assert_eq!(r.superseded, vec![second]);
    assert_eq!(status_of(&n, second), status::SUPERSEDED);
    assert!(n.store.journal_unfinished().unwrap().is_empty());
    let (_, left) = compare(&mut n.backend, &n.catalog, &n.store, &config("balanced")).unwrap();
    assert!(left.ops.is_empty());
}

#[test]
fn boot_after_a_crash_goes_straight_to_the_interrupted_targets() {
    for after in [1, 3, 14, 15, 27] {
        let mut n = node();
        apply(&mut n, &config("balanced"));
        let old = crash(&mut n, &config("sevens"), after);
        let observed = observe(&mut n.backend, &n.catalog).unwrap();
        let wanted = interrupted(&n.store, &observed).unwrap().targets;
        // The fewest operations from what the GPUs hold to the interrupted apply's targets.
        let direct = diff(&observed, &wanted).unwrap();
        let r = apply_as_announced(&mut n, &Desired::Recorded);
        assert_eq!(r.superseded, vec![old], "crash after {after}");
        assert_eq!(r.targets, wanted, "crash after {after}");
        assert_eq!(r.changes.ops, direct.ops, "crash after {after}");
        assert_eq!(r.changes.ops.len(), 28 - after, "crash after {after}");
        assert_eq!(status_of(&n, old), status::SUPERSEDED);
        assert!(n.store.journal_unfinished().unwrap().is_empty());
        let (_, left) = compare(&mut n.backend, &n.catalog, &n.store, &config("sevens")).unwrap();
        assert!(left.ops.is_empty(), "crash after {after}: {:?}", left.ops);
    }
}

#[test]
fn gpus_the_new_state_leaves_out_go_to_the_interrupted_targets() {
    let mut n = node();
    apply(&mut n, &config("balanced"));
    // Crashed part-way through GPU 0; the next config speaks of GPU 1 only. Superseding the
    // interrupted apply must not leave GPU 0 part-way: it goes to its interrupted target.
    let old = crash(&mut n, &config("sevens"), 3);
    let r = apply_as_announced(&mut n, &config("gpu1-small"));
    assert_eq!(r.superseded, vec![old]);
    assert_eq!(
        r.targets.iter().map(|t| t.gpu_index).collect::<Vec<_>>(),
        [0, 1]
    );
    assert!(n.store.journal_unfinished().unwrap().is_empty());
    let observed = observe(&mut n.backend, &n.catalog).unwrap();
    let count = |g: usize| observed[g].instances.len();
    assert_eq!((count(0), count(1)), (7, 5));
}

#[test]
fn a_crash_after_the_last_operation_leaves_only_the_superseding() {
    let mut n = node();
    apply(&mut n, &config("balanced"));
    // Every operation ran; the crash came before the journal said so.
    let old = crash(&mut n, &config("sevens"), 28);
    let before = n.store.journal_recent(1000).unwrap().len();
    let r = apply_as_announced(&mut n, &config("sevens"));
    assert!(r.changes.ops.is_empty());
    assert_eq!(r.superseded, vec![old]);
    // Nothing to run: no new entry, and none left running.
    assert_eq!(r.outcome.unwrap().journal_id, None);
    assert_eq!(n.store.journal_recent(1000).unwrap().len(), before);
    assert_eq!(status_of(&n, old), status::SUPERSEDED);
    assert!(n.store.journal_unfinished().unwrap().is_empty());
}
