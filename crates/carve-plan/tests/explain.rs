//! Explanations agree with what runs: a time-sliced tenant's reason names exactly the policy and
//! slice of each GPU it runs on (`Policy <policy>, slice <n> ms`), says why when that is not what
//! it would get alone, and each GPU's scheduler reason says whether it is work-conserving.

use carve_model::Catalog;
use carve_plan::plan::{Mode, Plan, Policy};
use proptest::prelude::*;
use std::collections::BTreeSet;

fn plan_of(text: &str) -> Plan {
    let cat = Catalog::embedded();
    let t = carve_plan::parse(text, &cat).unwrap_or_else(|e| panic!("{e:?}\n{text}"));
    carve_plan::plan(&t, &cat)
}

/// Every `Policy <policy>, slice <n> ms` the text names.
fn named(reason: &str) -> BTreeSet<(String, u32)> {
    let mut out = BTreeSet::new();
    for part in reason.split("Policy ").skip(1) {
        let Some((policy, rest)) = part.split_once(", slice ") else {
            continue;
        };
        let Some((ms, _)) = rest.split_once(" ms") else {
            continue;
        };
        if let Ok(ms) = ms.parse() {
            out.insert((policy.to_string(), ms));
        }
    }
    out
}

/// The checks, on any plan.
fn agree(plan: &Plan) -> Result<(), String> {
    for t in &plan.tenants {
        let sliced = matches!(t.mode, Mode::TimeSliced | Mode::VgpuTimeSliced);
        let runs: BTreeSet<(String, u32)> = plan
            .gpus
            .iter()
            .filter(|g| g.shares.iter().any(|s| s.tenant == t.name))
            .filter_map(|g| g.scheduler.as_ref())
            .map(|s| (s.policy.to_string(), s.slice_ms))
            .collect();
        let said = named(&t.reason);
        if !sliced {
            if !said.is_empty() {
                return Err(format!("{} is {} but names a policy", t.name, t.mode));
            }
            continue;
        }
        if said != runs {
            return Err(format!(
                "{}: the reason names {said:?}, its GPUs run {runs:?}: {}",
                t.name, t.reason
            ));
        }
        if t.unplaced == t.replicas && !t.reason.contains("found no GPU") {
            return Err(format!(
                "{}: placed nowhere, and not said: {}",
                t.name, t.reason
            ));
        }
    }
    for g in &plan.gpus {
        let Some(s) = &g.scheduler else { continue };
        let r = &s.reason;
        let not = r.contains("not work-conserving");
        let ok = match s.policy {
            Policy::BestEffort => r.contains("work-conserving by nature") && !not,
            _ if s.work_conserving => r.contains("work-conserving") && !not,
            _ => not,
        };
        if !ok {
            return Err(format!("{}/{}: {r}", g.node, g.index));
        }
        if !r.contains(&format!("{} ms slices", s.slice_ms)) {
            return Err(format!("{}/{}: no slice in {r}", g.node, g.index));
        }
    }
    Ok(())
}

/// The example: `ci` (best effort, 2 ms alone) shares its GPU with `notebooks`, an
/// interactive pool, and runs equal share at 1 ms: its reason says so, and why.
#[test]
fn ci_says_what_its_gpu_runs_and_why() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/tenancy.yaml"
    ))
    .unwrap();
    let plan = plan_of(&text);
    agree(&plan).unwrap();
    let ci = plan.tenant("ci").unwrap();
    assert!(
        ci.reason.contains(" Policy equal-share, slice 1 ms: its GPU's, as it shares the GPU with notebooks (an interactive pool: equal share, 1 ms slices); alone it would run best effort with 2 ms slices"),
        "{}",
        ci.reason
    );
    assert!(!ci.reason.contains("slice 2 ms"), "{}", ci.reason);
    // Its GPU's reason does not call ci interactive.
    let g = plan
        .gpus
        .iter()
        .find(|g| g.shares.iter().any(|s| s.tenant == "ci"))
        .unwrap();
    let r = &g.scheduler.as_ref().unwrap().reason;
    assert!(r.contains("notebooks is an interactive pool"), "{r}");
    assert!(!r.contains("ci"), "{r}");
    // The report shows the same reasons and each GPU's scheduler with its own.
    let md = carve_plan::files::report_md(&plan, &Catalog::embedded());
    assert!(md.contains(&ci.reason));
    assert!(
        md.contains(&format!("GPU {} runs equal-share at 1 ms: {r}", g.index)),
        "{md}"
    );
}

/// Many dev replicas on one GPU: the slice is vGPU's dense default, and the reason says that,
/// not what a dev tenant alone would get.
#[test]
fn dense_dev_gpus_say_why_the_slice_is_short() {
    let plan = plan_of(
        "fleet:\n  - node: a\n    gpus: [H100-80GB]\ntenants:\n  - {name: ci, workload: dev, memory_gb: 4, replicas: 10}\n",
    );
    agree(&plan).unwrap();
    let ci = plan.tenant("ci").unwrap();
    assert!(
        ci.reason.contains("Policy best-effort, slice 1 ms"),
        "{}",
        ci.reason
    );
    assert!(
        ci.reason.contains("more than 8 dev replicas"),
        "{}",
        ci.reason
    );
}

/// Replicas on GPUs that run different settings: each named, with where.
#[test]
fn replicas_on_different_schedulers_name_each() {
    let plan = plan_of(
        "fleet:\n  - node: a\n    gpus: [2xH100-80GB]\ntenants:\n  - {name: nb, workload: interactive, memory_gb: 40, replicas: 1}\n  - {name: dev, workload: dev, memory_gb: 40, replicas: 3}\n",
    );
    agree(&plan).unwrap();
    let dev = plan.tenant("dev").unwrap();
    assert_eq!(named(&dev.reason).len(), 2, "{}", dev.reason);
    assert!(dev.reason.contains(" on a/"), "{}", dev.reason);
}

const WORKLOADS: [&str; 6] = [
    "inference",
    "training",
    "interactive",
    "dev",
    "batch",
    "desktop",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random tenancies on Kubernetes and vSphere nodes: every time-sliced tenant's reason names
    /// exactly its GPUs' policies and slices.
    #[test]
    fn every_time_sliced_reason_names_its_gpus_settings(
        gpus in 1u32..4,
        tenants in proptest::collection::vec((0usize..6, 1u32..30, 1u32..6, 0u8..4), 1..7),
    ) {
        let mut text = format!(
            "fleet:\n  - node: k\n    gpus: [{gpus}xH100-80GB, {{model: L40S, memory_gb: 48}}]\n  - node: v\n    platform: vsphere\n    licence: vws\n    gpus: [H100-80GB]\ntenants:\n"
        );
        for (i, &(w, mem, replicas, extra)) in tenants.iter().enumerate() {
            text.push_str(&format!(
                "  - {{name: t{i}, workload: {}, memory_gb: {mem}, replicas: {replicas}{}}}\n",
                WORKLOADS[w],
                match extra {
                    1 if matches!(WORKLOADS[w], "batch" | "training") => ", share: 0.3",
                    2 => ", vm: true",
                    _ => "",
                }
            ));
        }
        let plan = plan_of(&text);
        if let Err(e) = agree(&plan) {
            prop_assert!(false, "{e}\n{text}");
        }
    }
}
