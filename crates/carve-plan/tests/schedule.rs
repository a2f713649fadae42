//! Plan → scheduler: a planned time-sliced GPU becomes the schedule its scheduler runs, with the
//! same rules for everything that runs or predicts it.

use carve_model::Catalog;
use carve_plan::plan::{GpuMode, Plan, PlannedGpu};
use carve_plan::schedule::{self, ScheduleError};
use carve_timeslice::Policy;

fn example_plan() -> Plan {
    let cat = Catalog::embedded();
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/tenancy.yaml"
    ))
    .unwrap();
    carve_plan::plan(&carve_plan::parse(&text, &cat).unwrap(), &cat)
}

fn time_sliced(plan: &Plan, node: &str) -> PlannedGpu {
    plan.gpus
        .iter()
        .find(|g| g.node == node && g.mode == GpuMode::TimeSliced)
        .expect("a time-sliced GPU")
        .clone()
}

#[test]
fn a_planned_gpu_becomes_its_schedule() {
    let plan = example_plan();
    let g = time_sliced(&plan, "node-a");
    let sch = g.scheduler.as_ref().unwrap();
    let s = schedule::gpu_schedule(&g).unwrap().unwrap();
    assert_eq!(s.settings.policy, sch.policy);
    assert_eq!(s.settings.slice_ns, Some(sch.slice_ms as u64 * 1_000_000));
    assert_eq!(s.settings.work_conserving, sch.work_conserving);
    assert_eq!(s.settings.work_conserving, schedule::WORK_CONSERVING);
    assert_eq!(
        s.settings.averaging_factor,
        carve_timeslice::DEFAULT_AVERAGING_FACTOR
    );
    // One scheduler tenant per plan tenant: replicas' memory summed.
    for t in &s.tenants {
        let want: u64 = g
            .shares
            .iter()
            .filter(|x| x.tenant == t.name)
            .map(|x| x.memory_mib)
            .sum();
        assert_eq!(t.memory_limit_bytes, Some(want * 1024 * 1024), "{}", t.name);
    }
    let mut names: Vec<&str> = g.shares.iter().map(|x| x.tenant.as_str()).collect();
    names.dedup();
    assert_eq!(
        s.tenants
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        names
    );
    s.validate().unwrap();
    // `pick` finds the same one.
    let (node, gpu, picked) = schedule::pick(&plan, Some("node-a"), Some(g.index)).unwrap();
    assert_eq!((node.as_str(), gpu), ("node-a", g.index));
    assert_eq!(picked, s);
}

#[test]
fn shares_are_kept_under_fixed_share_only() {
    let plan = example_plan();
    let mut g = time_sliced(&plan, "node-a");
    let sch = g.scheduler.as_mut().unwrap();
    sch.policy = Policy::FixedShare;
    let n = g.shares.len() as f64;
    for s in &mut g.shares {
        s.share = 1.0 / n;
    }
    let fixed = schedule::gpu_schedule(&g).unwrap().unwrap();
    let total: f64 = fixed.tenants.iter().filter_map(|t| t.share).sum();
    assert!((total - 1.0).abs() < 1e-9, "{total}");
    for p in [Policy::EqualShare, Policy::BestEffort] {
        g.scheduler.as_mut().unwrap().policy = p;
        let s = schedule::gpu_schedule(&g).unwrap().unwrap();
        assert!(s.tenants.iter().all(|t| t.share.is_none()), "{p}");
    }
}

#[test]
fn a_bad_slice_is_rejected_not_clamped() {
    let plan = example_plan();
    let mut g = time_sliced(&plan, "node-a");
    for bad in [0, 31, 1000] {
        g.scheduler.as_mut().unwrap().slice_ms = bad;
        let e = schedule::gpu_schedule(&g).unwrap_err();
        assert!(
            matches!(&e, ScheduleError::Invalid { .. }) && e.to_string().contains("1 to 30 ms"),
            "{e}"
        );
    }
    g.scheduler = None;
    assert!(matches!(
        schedule::gpu_schedule(&g),
        Err(ScheduleError::NoSettings { .. })
    ));
}

#[test]
fn only_carve_time_sliced_gpus_have_one() {
    let plan = example_plan();
    for g in &plan.gpus {
        let s = schedule::gpu_schedule(g).unwrap();
        assert_eq!(s.is_some(), g.mode == GpuMode::TimeSliced, "{g:?}");
    }
}

#[test]
fn picking_a_gpu_says_what_is_wrong() {
    let plan = example_plan();
    let e = |node: Option<&str>, gpu: Option<u32>| {
        schedule::pick(&plan, node, gpu).unwrap_err().to_string()
    };
    assert!(e(Some("nope"), None).contains("no node 'nope'"));
    assert!(e(None, None).contains("give --node"));
    let mig = plan
        .gpus
        .iter()
        .find(|g| g.node == "node-a" && g.mode == GpuMode::Mig)
        .unwrap();
    assert!(e(Some("node-a"), Some(mig.index)).contains("not time-sliced"));
}

#[test]
fn replicas_share_equally_and_conserve_work() {
    let s = schedule::replicas((0..4).map(|i| format!("r{i}")));
    assert_eq!(s.settings.policy, Policy::EqualShare);
    assert!(s.settings.work_conserving);
    assert_eq!(s.tenants.len(), 4);
    s.validate().unwrap();
}
