//! The decision table and the time-sliced packing, through the public API: each rule of the
//! decision map, the fleet's adjustments, and the limits every time-sliced GPU keeps.

use carve_model::Catalog;
use carve_plan::plan::{GpuMode, Mode, Plan, Policy};
use proptest::prelude::*;

fn plan_of(yaml: &str) -> Plan {
    let cat = Catalog::embedded();
    let t = carve_plan::parse(yaml, &cat).unwrap_or_else(|e| panic!("{e:?}"));
    carve_plan::plan(&t, &cat)
}

const FLEET: &str = r#"fleet:
  - node: k
    platform: kubernetes
    gpus: [4xH100-80GB]
  - node: v
    platform: vsphere
    licence: vcs
    gpus: [2xH100-80GB]
"#;

fn mode_of(tenant: &str) -> (Mode, String) {
    let p = plan_of(&format!("{FLEET}tenants:\n{tenant}"));
    let t = &p.tenants[0];
    (t.mode, t.rule.clone())
}

#[test]
fn every_rule_of_the_decision_map() {
    let cases = [
        (
            "  - {name: a, workload: inference, memory_gb: 10, vm: true, isolation: hard}",
            Mode::VgpuMig,
            "vm-hard-isolation",
        ),
        (
            "  - {name: a, workload: desktop, memory_gb: 8, vm: true}",
            Mode::VgpuTimeSliced,
            "vm",
        ),
        (
            "  - {name: a, workload: training, memory_gb: 80}",
            Mode::Dedicated,
            "whole-gpu",
        ),
        (
            "  - {name: a, workload: dev, profile: 2g.20gb}",
            Mode::Mig,
            "named-profile",
        ),
        (
            "  - {name: a, workload: desktop, memory_gb: 4}",
            Mode::TimeSliced,
            "desktop-interactive",
        ),
        (
            "  - {name: a, workload: interactive, memory_gb: 4}",
            Mode::TimeSliced,
            "desktop-interactive",
        ),
        (
            "  - {name: a, workload: dev, memory_gb: 4, slo: strict}",
            Mode::TimeSliced,
            "dev",
        ),
        (
            "  - {name: a, workload: training, memory_gb: 20, slo: strict}",
            Mode::Mig,
            "slo-or-hard-isolation",
        ),
        (
            "  - {name: a, workload: batch, memory_gb: 20, p95_ms: 100}",
            Mode::Mig,
            "slo-or-hard-isolation",
        ),
        (
            "  - {name: a, workload: batch, memory_gb: 20, isolation: hard}",
            Mode::Mig,
            "slo-or-hard-isolation",
        ),
        (
            "  - {name: a, workload: inference, memory_gb: 20}",
            Mode::Mig,
            "inference",
        ),
        (
            "  - {name: a, workload: training, memory_gb: 20}",
            Mode::TimeSliced,
            "throughput",
        ),
        (
            "  - {name: a, workload: batch, memory_gb: 20}",
            Mode::TimeSliced,
            "throughput",
        ),
    ];
    for (tenant, mode, rule) in cases {
        let (m, r) = mode_of(tenant);
        assert_eq!((m, r.as_str()), (mode, rule), "{tenant}");
    }
}

/// `gpus:` lists use carve-model's `N x NAME` parser and its per-node limit; errors keep their
/// line and column.
#[test]
fn gpu_lists_share_the_parser_and_the_limit() {
    let cat = Catalog::embedded();
    let tenants = "tenants:\n  - {name: a, workload: inference, memory_gb: 10}\n";
    let errors = |gpus: &str| {
        let y = format!("fleet:\n  - node: k\n    gpus: {gpus}\n{tenants}");
        carve_plan::parse(&y, &cat).unwrap_err()
    };
    let t = carve_plan::parse(
        &format!("fleet:\n  - node: k\n    gpus: [2 x H100-80GB, 1024XA30-24GB]\n{tenants}"),
        &cat,
    );
    assert!(t.is_err(), "1026 GPUs on one node");
    let ok = carve_plan::parse(
        &format!("fleet:\n  - node: k\n    gpus: [2 x H100-80GB, 3XA30-24GB]\n{tenants}"),
        &cat,
    )
    .unwrap();
    assert_eq!(ok.nodes[0].gpus.len(), 5);

    let e = errors("[0xH100-80GB]");
    assert_eq!(
        e[0].to_string(),
        "3:12: `0xH100-80GB`: the GPU count must be 1 to 1024"
    );
    let e = errors("[1000xH100-80GB, 100xA30-24GB]");
    assert_eq!(
        e[0].to_string(),
        "3:28: node `k` has more than 1024 GPUs, the most one node holds"
    );
    let e = errors("[{model: L40S, memory_gb: 48, count: 2000}]");
    assert!(
        e[0].to_string().ends_with("`count` must be 1 to 1024"),
        "{}",
        e[0]
    );
    let e = errors("[2xH100-8OGB]");
    assert!(
        e[0].to_string().contains("did you mean 'H100-80GB'"),
        "{}",
        e[0]
    );
}

#[test]
fn profiles_are_the_smallest_that_fit() {
    let p = plan_of(&format!(
        "{FLEET}tenants:\n  - {{name: a, workload: inference, memory_gb: 15}}\n  - {{name: b, workload: inference, memory_gb: 10, compute: 2}}\n  - {{name: c, workload: inference, memory_gb: 5, media: true}}\n"
    ));
    assert_eq!(p.tenants[0].profiles["H100-80GB"], "1g.20gb");
    assert_eq!(p.tenants[1].profiles["H100-80GB"], "2g.20gb");
    let c = &p.tenants[2].profiles["H100-80GB"];
    assert!(c == "1g.10gb+me" || c == "1g.10gb", "{c}");
}

#[test]
fn the_fleet_adjusts_modes_with_warnings() {
    // No hypervisor: a VM tenant runs as its bare-metal counterpart.
    let p = plan_of(
        "fleet:\n  - {node: k, gpus: [H100-80GB]}\ntenants:\n  - {name: a, workload: inference, memory_gb: 10, vm: true, isolation: hard}\n",
    );
    assert_eq!(p.tenants[0].mode, Mode::Mig);
    assert!(!p.tenants[0].warnings.is_empty());
    // A licence that does not cover the vGPU is flagged.
    let p = plan_of(
        "fleet:\n  - {node: v, platform: vsphere, licence: vpc, gpus: [H100-80GB]}\ntenants:\n  - {name: a, workload: inference, memory_gb: 10, vm: true}\n",
    );
    assert_eq!(p.tenants[0].mode, Mode::VgpuTimeSliced);
    assert!(
        p.tenants[0].warnings.iter().any(|w| w.contains("licence")),
        "{:?}",
        p.tenants[0].warnings
    );
}

#[test]
fn vgpu_gpus_get_a_type_policy_and_rmpvmrl() {
    let p = plan_of(&format!(
        "{FLEET}tenants:\n  - {{name: d, workload: desktop, memory_gb: 8, vm: true, replicas: 3}}\n  - {{name: f, workload: batch, memory_gb: 16, vm: true, share: 0.25}}\n"
    ));
    let d = p
        .gpus
        .iter()
        .find(|g| g.shares.iter().any(|s| s.tenant == "d"))
        .unwrap();
    let s = d.scheduler.as_ref().unwrap();
    assert_eq!(d.mode, GpuMode::VgpuTimeSliced);
    assert_eq!(s.policy, Policy::EqualShare);
    assert_eq!(s.rmpvmrl.as_deref(), Some("0x00010001"));
    assert_eq!(d.shares[0].vgpu_type.as_deref(), Some("H100-8C"));
    let f = p
        .gpus
        .iter()
        .find(|g| g.shares.iter().any(|s| s.tenant == "f"))
        .unwrap();
    let s = f.scheduler.as_ref().unwrap();
    assert_eq!(s.policy, Policy::FixedShare);
    // 16 GB at a quarter share: H100-20C (max 4 per GPU → 25%).
    assert_eq!(f.shares[0].vgpu_type.as_deref(), Some("H100-20C"));
    assert_eq!(s.rmpvmrl.as_deref(), Some("0x00100011"));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    /// Time-sliced GPUs never exceed memory or shares, spread holds, nothing is lost, and the
    /// GPU count is at least the bound the plan reports.
    #[test]
    fn time_sliced_gpus_keep_their_limits(
        tenants in proptest::collection::vec((1u32..50, 0u32..4, 1u32..4, any::<bool>(), 0usize..4), 1..12),
    ) {
        let workloads = ["dev", "interactive", "batch", "training"];
        let mut y = String::from("fleet:\n  - {node: k, gpus: [8xA100-40GB, 4xH100-80GB, {model: L40S, memory_gb: 48, count: 2}]}\ntenants:\n");
        for (i, (mem, share, replicas, spread, w)) in tenants.iter().enumerate() {
            let share = if *share == 0 { String::new() } else { format!(", share: {}", *share as f64 * 0.1) };
            y.push_str(&format!(
                "  - {{name: t{i}, workload: {}, memory_gb: {mem}, replicas: {replicas}, spread: {spread}{share}}}\n",
                workloads[*w]
            ));
        }
        let p = plan_of(&y);
        let mut placed = 0;
        for g in &p.gpus {
            if g.mode == GpuMode::TimeSliced {
                let mem: u64 = g.shares.iter().map(|s| s.memory_mib).sum();
                prop_assert!(mem <= g.memory_mib, "{g:?}");
                let share: f64 = g.shares.iter().map(|s| s.share).sum();
                prop_assert!(share <= 1.0 + 1e-9, "{g:?}");
                let s = g.scheduler.as_ref().unwrap();
                prop_assert!((1..=30).contains(&s.slice_ms));
                for t in &p.tenants {
                    if t.spread {
                        let n = g.shares.iter().filter(|s| s.tenant == t.name).count();
                        prop_assert!(n <= 1, "spread broken: {} on {g:?}", t.name);
                    }
                }
            }
            placed += g.shares.len();
        }
        let wanted: u32 = p.tenants.iter().map(|t| t.replicas).sum();
        let unplaced: u32 = p.tenants.iter().map(|t| t.unplaced).sum();
        prop_assert_eq!(placed as u32 + unplaced, wanted);
        prop_assert!(p.gpus_used >= p.lower_bound_gpus);
    }
}
