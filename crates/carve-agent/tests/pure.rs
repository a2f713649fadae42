//! The pure parts of the agent: inventory, Allocate's answer, preferred allocation, labels and
//! the CDI spec, on simulated nodes laid out through `carve apply`'s engine.

use carve_agent::allocate::{
    allocate, preload_file, shim_config, AllocError, HostPaths, CONTAINER_PRELOAD,
    CONTAINER_SCHED_SOCKET, CONTAINER_SHIM, CONTAINER_TOKEN,
};
use carve_agent::inventory::{
    endpoint_of, inventory, prefer, valid_resource_name, DeviceKind, MigStrategy, Options,
    Preference,
};
use carve_apply::Observed;
use carve_model::Catalog;
use carve_sched_proto::{FAIL_CLOSED, SHIM_CONFIG};
use carve_simnode::SimBackend;
use carve_state::Store;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

/// A simulated node of `spec` laid out by the mig-parted config `yaml` (config `c`).
fn node(spec: &str, yaml: &str) -> Vec<Observed> {
    let tmp = tempfile::tempdir().unwrap();
    let catalog = Catalog::embedded();
    let store = Store::open(tmp.path()).unwrap();
    let (mut sim, _) = SimBackend::open(
        Store::open(tmp.path()).unwrap(),
        catalog.clone(),
        Some(spec),
    )
    .unwrap();
    let desired = carve_apply::Desired::read(yaml, "inline", Some("c"), None).unwrap();
    let apply = |sim: &mut SimBackend| {
        carve_apply::reconcile(
            sim,
            &catalog,
            &store,
            &desired,
            carve_apply::ApplyOptions::default(),
            &mut |_| {},
        )
    };
    // MIG mode changes on Ampere wait for a reset: the first apply may stop there.
    let gpus = match apply(&mut sim) {
        Ok(r) => r.observed.len(),
        Err(_) => carve_apply::observe(&mut sim, &catalog).unwrap().len(),
    };
    for g in 0..gpus as u32 {
        let _ = sim.reset(g);
    }
    apply(&mut sim).unwrap().observed
}

const MIXED: &str = r#"
version: v1
mig-configs:
  c:
    - devices: [0]
      mig-enabled: true
      mig-devices: {"1g.10gb": 2, "1g.10gb+me": 1, "3g.40gb": 1}
    - devices: [1]
      mig-enabled: true
      mig-devices: {"1g.10gb": 7}
    - devices: [2]
      mig-enabled: false
"#;

#[test]
fn mixed_strategy_names_one_resource_per_profile() {
    let obs = node("3xH100-80GB", MIXED);
    let inv = inventory(&obs, None, &Options::default()).unwrap();
    let names: Vec<&str> = inv.resources.iter().map(|r| r.name.as_str()).collect();
    let set: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(
        set,
        BTreeSet::from([
            "nvidia.com/mig-1g.10gb",
            "nvidia.com/mig-1g.10gb.me",
            "nvidia.com/mig-3g.40gb",
            "nvidia.com/gpu"
        ])
    );
    let count = |n: &str| inv.resource(n).unwrap().devices.len();
    assert_eq!(count("nvidia.com/mig-1g.10gb"), 9);
    assert_eq!(count("nvidia.com/mig-1g.10gb.me"), 1);
    assert_eq!(count("nvidia.com/mig-3g.40gb"), 1);
    assert_eq!(count("nvidia.com/gpu"), 1);
    // Every MIG device of the node, exactly once, by its UUID; indices 0.. per GPU.
    let mut want: Vec<String> = obs
        .iter()
        .flat_map(|o| o.instances.iter())
        .flat_map(|g| g.compute_instances.iter().map(|c| c.uuid.clone()))
        .collect();
    want.sort();
    let mut got: Vec<String> = inv
        .devices()
        .filter(|(_, d)| matches!(d.kind, DeviceKind::Mig { .. }))
        .map(|(_, d)| d.id.clone())
        .collect();
    got.sort();
    assert_eq!(got, want);
    for gpu in 0..2u32 {
        let mut idx: Vec<u32> = inv
            .devices()
            .filter_map(|(_, d)| match d.kind {
                DeviceKind::Mig { index, .. } if d.gpu_index == gpu => Some(index),
                _ => None,
            })
            .collect();
        idx.sort_unstable();
        assert_eq!(idx, (0..idx.len() as u32).collect::<Vec<_>>());
    }
    for r in &inv.resources {
        assert!(valid_resource_name(&r.name), "{}", r.name);
        assert_eq!(r.endpoint, endpoint_of(&r.name));
        assert!(r.devices.iter().all(|d| d.id.len() <= 63));
    }
}

#[test]
fn single_strategy_needs_one_kind() {
    let obs = node("3xH100-80GB", MIXED);
    let single = Options {
        mig_strategy: MigStrategy::Single,
        ..Options::default()
    };
    let e = inventory(&obs, None, &single).unwrap_err();
    assert!(
        matches!(&e, carve_agent::error::InventoryError::MixedKinds { kinds } if kinds.len() > 1),
        "{e}"
    );
    assert!(e.to_string().contains("single MIG strategy"), "{e}");
    let same = r#"
version: v1
mig-configs:
  c:
    - devices: all
      mig-enabled: true
      mig-devices: {"1g.10gb": 7}
"#;
    let obs = node("2xH100-80GB", same);
    let inv = inventory(&obs, None, &single).unwrap();
    assert_eq!(inv.resources.len(), 1);
    assert_eq!(inv.resources[0].name, "nvidia.com/gpu");
    assert_eq!(inv.resources[0].devices.len(), 14);
}

#[test]
fn replicas_of_whole_gpus_are_equal_share_tenants() {
    let obs = node("3xH100-80GB", MIXED);
    let opts = Options {
        replicas: 4,
        rename_shared: true,
        ..Options::default()
    };
    let inv = inventory(&obs, None, &opts).unwrap();
    let r = inv.resource("nvidia.com/gpu.shared").unwrap();
    let ids: Vec<&str> = r.devices.iter().map(|d| d.id.as_str()).collect();
    let uuid = &obs[2].info.uuid;
    assert_eq!(
        ids,
        (0..4).map(|i| format!("{uuid}::{i}")).collect::<Vec<_>>()
    );
    assert!(inv.resource("nvidia.com/gpu").is_none());
    assert_eq!(inv.shared.len(), 1);
    let schedule = &inv.shared[0].schedule;
    assert_eq!(schedule.tenants.len(), 4);
    assert_eq!(
        schedule.settings.policy,
        carve_timeslice::Policy::EqualShare
    );
    assert!(schedule.settings.work_conserving, "replicas conserve work");
}

/// A planned time-sliced GPU runs exactly the schedule the plan gives it (the same function the
/// simulator and `carve sched serve plan.json` use): policy, slice, work-conserving, tenants.
#[test]
fn planned_time_sliced_gpus_run_the_plans_schedule() {
    let catalog = Catalog::embedded();
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/tenancy.yaml"
    ))
    .unwrap();
    let plan = carve_plan::plan(&carve_plan::parse(&text, &catalog).unwrap(), &catalog);
    let gpus: Vec<&carve_plan::plan::PlannedGpu> = plan.node_gpus("node-a").collect();
    let spec: Vec<&str> = gpus.iter().map(|g| g.model.as_str()).collect();
    let off = "version: v1\nmig-configs:\n  c:\n    - devices: all\n      mig-enabled: false\n";
    let observed = node(&spec.join(","), off);
    let inv = inventory(&observed, Some((&plan, "node-a")), &Options::default()).unwrap();
    let sliced: Vec<_> = gpus
        .iter()
        .filter(|g| g.mode == carve_plan::plan::GpuMode::TimeSliced)
        .collect();
    assert!(!sliced.is_empty());
    assert_eq!(inv.shared.len(), sliced.len());
    for g in sliced {
        let want = carve_plan::schedule::gpu_schedule(g).unwrap().unwrap();
        let got = inv
            .shared
            .iter()
            .find(|s| s.gpu_index == g.index)
            .expect("served");
        assert_eq!(got.schedule, want);
        assert_eq!(
            got.schedule.settings.work_conserving,
            carve_plan::schedule::WORK_CONSERVING
        );
    }
}

/// Without a shim the agent offers no time-sliced share: planned shares and replicas go, with
/// their schedules, and a warning says so; MIG devices and whole GPUs stay.
#[test]
fn shares_that_cannot_be_enforced_are_withheld() {
    let catalog = Catalog::embedded();
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/tenancy.yaml"
    ))
    .unwrap();
    let plan = carve_plan::plan(&carve_plan::parse(&text, &catalog).unwrap(), &catalog);
    let spec: Vec<String> = plan.node_gpus("node-a").map(|g| g.model.clone()).collect();
    let off = "version: v1\nmig-configs:\n  c:\n    - devices: all\n      mig-enabled: false\n";
    let observed = node(&spec.join(","), off);
    let mut inv = inventory(&observed, Some((&plan, "node-a")), &Options::default()).unwrap();
    let before = inv.clone();
    assert!(!inv.shared.is_empty());
    let sliced: Vec<u32> = inv.shared.iter().map(|g| g.gpu_index).collect();
    inv.withhold_shares("no shim");
    assert!(inv.shared.is_empty());
    assert_eq!(inv.withheld, sliced);
    assert!(inv
        .devices()
        .all(|(_, d)| !matches!(d.kind, carve_agent::inventory::DeviceKind::Share { .. })));
    assert!(inv.resources.iter().all(|r| !r.devices.is_empty()));
    // Everything else is still offered.
    let others = |i: &carve_agent::inventory::Inventory| -> Vec<String> {
        i.devices()
            .filter(|(_, d)| !matches!(d.kind, carve_agent::inventory::DeviceKind::Share { .. }))
            .map(|(r, d)| format!("{r} {}", d.id))
            .collect()
    };
    assert_eq!(others(&inv), others(&before));
    assert!(
        inv.warnings
            .last()
            .unwrap()
            .contains("not offered: no shim"),
        "{:?}",
        inv.warnings
    );
    // Replicas of unplanned GPUs too.
    let opts = Options {
        replicas: 2,
        ..Options::default()
    };
    let mut inv = inventory(&node("3xH100-80GB", MIXED), None, &opts).unwrap();
    inv.withhold_shares("no shim");
    assert!(inv.shared.is_empty() && inv.withheld == vec![2]);
    assert!(inv.resource("nvidia.com/gpu").is_none());
    // Nothing to withhold: nothing said.
    let mut inv = inventory(&node("3xH100-80GB", MIXED), None, &Options::default()).unwrap();
    let n = inv.warnings.len();
    inv.withhold_shares("no shim");
    assert_eq!(inv.warnings.len(), n);
}

fn host_for(inv: &carve_agent::inventory::Inventory) -> HostPaths {
    let mut h = HostPaths {
        shim: Some("/opt/carve/libcarve_shim.so".into()),
        ..HostPaths::default()
    };
    for g in &inv.shared {
        h.sched_sockets.insert(
            g.gpu_index,
            format!("/run/carve/sched-gpu{}.sock", g.gpu_index).into(),
        );
        for t in g.schedule.tenants.iter().map(|t| &t.name) {
            h.tokens
                .insert(t.clone(), format!("/run/carve/tokens/{t}").into());
            h.shim_configs
                .insert(t.clone(), format!("/run/carve/shim/{t}.conf").into());
        }
    }
    h.preload = Some("/run/carve/shim/ld.so.preload".into());
    h
}

#[test]
fn allocate_answers_and_refusals() {
    let obs = node("3xH100-80GB", MIXED);
    let opts = Options {
        replicas: 2,
        ..Options::default()
    };
    let mut inv = inventory(&obs, None, &opts).unwrap();
    let host = host_for(&inv);
    let migs: Vec<String> = inv
        .resource("nvidia.com/mig-1g.10gb")
        .unwrap()
        .devices
        .iter()
        .map(|d| d.id.clone())
        .collect();
    // Two MIG devices: both UUIDs, both CDI names, no shim.
    let a = allocate(&inv, "nvidia.com/mig-1g.10gb", &migs[..2], &host).unwrap();
    assert_eq!(a.envs["NVIDIA_VISIBLE_DEVICES"], migs[..2].join(","));
    assert_eq!(a.cdi_devices.len(), 2);
    assert!(a.mounts.is_empty() && !a.envs.contains_key("LD_PRELOAD"));
    // Replicas of two different tenants cannot share a container.
    let shares: Vec<String> = inv
        .resource("nvidia.com/gpu")
        .unwrap()
        .devices
        .iter()
        .map(|d| d.id.clone())
        .collect();
    let e = allocate(&inv, "nvidia.com/gpu", &shares, &host).unwrap_err();
    assert!(matches!(e, AllocError::Invalid(_)), "{e}");
    // One replica: its tenant's identity.
    let a = allocate(&inv, "nvidia.com/gpu", &shares[1..2], &host).unwrap();
    assert_eq!(a.envs["NVIDIA_VISIBLE_DEVICES"], obs[2].info.uuid);
    // The shim's setup is files, mounted read-only (but the socket): nothing in the environment,
    // which the tenant controls.
    assert_eq!(a.envs.len(), 1);
    let mounts: BTreeMap<&str, (&str, bool)> = a
        .mounts
        .iter()
        .map(|m| {
            (
                m.container.as_str(),
                (m.host.to_str().unwrap(), m.read_only),
            )
        })
        .collect();
    assert_eq!(
        mounts,
        BTreeMap::from([
            (CONTAINER_SHIM, ("/opt/carve/libcarve_shim.so", true)),
            (CONTAINER_PRELOAD, ("/run/carve/shim/ld.so.preload", true)),
            (SHIM_CONFIG, ("/run/carve/shim/gpu2-r1.conf", true)),
            (
                CONTAINER_SCHED_SOCKET,
                ("/run/carve/sched-gpu2.sock", false)
            ),
            (CONTAINER_TOKEN, ("/run/carve/tokens/gpu2-r1", true)),
        ])
    );
    // What those files say: the shim by its container path, and this tenant, failing closed.
    assert_eq!(preload_file(), format!("{CONTAINER_SHIM}\n"));
    let c = shim_config("gpu2-r1");
    assert_eq!(
        (c.tenant.as_str(), c.fail.as_str(), c.socket.as_str()),
        ("gpu2-r1", FAIL_CLOSED, CONTAINER_SCHED_SOCKET)
    );
    assert_eq!(c.token_file.as_deref(), Some(CONTAINER_TOKEN));
    // Without the preload file or the tenant's configuration a share is refused.
    for host in [
        HostPaths {
            preload: None,
            ..host.clone()
        },
        HostPaths {
            shim_configs: BTreeMap::new(),
            ..host.clone()
        },
    ] {
        assert!(matches!(
            allocate(&inv, "nvidia.com/gpu", &shares[1..2], &host),
            Err(AllocError::Unavailable(_))
        ));
    }
    // Without a shim a share is refused, never handed out unenforced.
    let no_shim = HostPaths {
        shim: None,
        ..host.clone()
    };
    assert!(matches!(
        allocate(&inv, "nvidia.com/gpu", &shares[1..2], &no_shim),
        Err(AllocError::Unavailable(_))
    ));
    // Unknown resource, unknown device, nothing asked.
    assert!(matches!(
        allocate(&inv, "nvidia.com/mig-2g.20gb", &migs[..1], &host),
        Err(AllocError::Unknown(_))
    ));
    assert!(matches!(
        allocate(
            &inv,
            "nvidia.com/mig-1g.10gb",
            &["MIG-nope".to_string()],
            &host
        ),
        Err(AllocError::Unknown(_))
    ));
    assert!(matches!(
        allocate(&inv, "nvidia.com/mig-1g.10gb", &[], &host),
        Err(AllocError::Invalid(_))
    ));
    // A GPU-level XID makes every device on that GPU unhealthy, and Allocate refuses them.
    let bad = BTreeMap::from([(obs[1].info.uuid.clone(), 79u64)]);
    assert!(inv.apply_health(&bad));
    for (_, d) in inv.devices() {
        assert_eq!(d.healthy, d.gpu_index != 1, "{}", d.id);
    }
    let on1 = inv
        .devices()
        .find(|(_, d)| d.gpu_index == 1)
        .map(|(_, d)| d.id.clone())
        .unwrap();
    assert!(matches!(
        allocate(&inv, "nvidia.com/mig-1g.10gb", &[on1], &host),
        Err(AllocError::Unhealthy(_))
    ));
    assert!(!inv.apply_health(&bad), "no change the second time");
}

#[test]
fn labels_and_cdi_describe_the_node() {
    let obs = node("3xH100-80GB", MIXED);
    let opts = Options {
        replicas: 3,
        ..Options::default()
    };
    let inv = inventory(&obs, None, &opts).unwrap();
    let l = carve_agent::labels::labels(&obs, &inv, &opts, Some("node a"));
    assert_eq!(l["nvidia.com/gpu.count"], "3");
    assert_eq!(l["nvidia.com/mig.strategy"], "mixed");
    assert_eq!(l["nvidia.com/mig-1g.10gb.count"], "9");
    assert_eq!(l["nvidia.com/mig-1g.10gb.me.count"], "1");
    assert_eq!(l["nvidia.com/mig-3g.40gb.count"], "1");
    assert_eq!(l["nvidia.com/gpu.replicas"], "3");
    assert_eq!(l["nvidia.com/gpu.sharing-strategy"], "time-slicing");
    // carve's scheduler runs the replicas: equal share, work-conserving, vGPU's default slice.
    assert_eq!(l["carve.dev/time-sliced-gpus"], "1");
    assert_eq!(l["carve.dev/gpu-2.policy"], "equal-share");
    assert_eq!(l["carve.dev/gpu-2.work-conserving"], "true");
    assert_eq!(l["carve.dev/gpu-2.slice-ms"], "2");
    assert_eq!(l["carve.dev/gpu-2.tenants"], "3");
    assert_eq!(l["carve.dev/gpu-2.shares"], "3");
    assert!(
        !l.contains_key("carve.dev/gpu-0.policy"),
        "a MIG GPU is not time-sliced"
    );
    assert_eq!(l["carve.dev/plan-node"], "node-a");
    for (k, v) in &l {
        assert!(v.len() <= 63 && !v.contains(' '), "{k}={v}");
    }
    let host = host_for(&inv);
    let spec = carve_agent::cdi::spec(&inv, &host);
    assert_eq!(spec["kind"], "carve.dev/gpu");
    let names: BTreeSet<String> = spec["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap().to_string())
        .collect();
    // Every device UUID Allocate hands out as a CDI name is in the spec.
    for (_, d) in inv.devices() {
        assert!(names.contains(&d.uuid), "{}", d.uuid);
    }
    for t in ["gpu2-r0", "gpu2-r1", "gpu2-r2"] {
        assert!(names.contains(&format!("tenant-{t}")));
    }
    // A tenant's device mounts what Allocate mounts, and sets no shim environment.
    let dev = spec["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "tenant-gpu2-r1")
        .unwrap();
    let edits = &dev["containerEdits"];
    assert_eq!(edits["env"].as_array().unwrap().len(), 1);
    let mounts: BTreeMap<&str, (&str, &str)> = edits["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["containerPath"].as_str().unwrap(),
                (
                    m["hostPath"].as_str().unwrap(),
                    m["options"][0].as_str().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(
        mounts[CONTAINER_PRELOAD],
        ("/run/carve/shim/ld.so.preload", "ro")
    );
    assert_eq!(mounts[SHIM_CONFIG], ("/run/carve/shim/gpu2-r1.conf", "ro"));
    assert_eq!(mounts[CONTAINER_TOKEN].1, "ro");
    assert_eq!(mounts[CONTAINER_SCHED_SOCKET].1, "rw");
    // Without the preload file no tenant device is offered.
    let no_preload = HostPaths {
        preload: None,
        ..host.clone()
    };
    let spec = carve_agent::cdi::spec(&inv, &no_preload);
    assert!(!spec["devices"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["name"].as_str().unwrap().starts_with("tenant-")));
    assert!(names.contains("0:0") && names.contains("2"));
}

/// A plan's time-sliced shares are each tenant's `carve.dev/<tenant>` devices, not
/// `nvidia.com/gpu` replicas: GFD's sharing labels leave them out (unless `--replicas` offers
/// some), and carve's labels say what each time-sliced GPU's scheduler runs, as planned.
#[test]
fn labels_describe_planned_shares_as_carves_not_as_gpu_replicas() {
    let catalog = Catalog::embedded();
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/tenancy.yaml"
    ))
    .unwrap();
    let plan = carve_plan::plan(&carve_plan::parse(&text, &catalog).unwrap(), &catalog);
    let gpus: Vec<&carve_plan::plan::PlannedGpu> = plan.node_gpus("node-a").collect();
    let spec: Vec<&str> = gpus.iter().map(|g| g.model.as_str()).collect();
    let off = "version: v1\nmig-configs:\n  c:\n    - devices: all\n      mig-enabled: false\n";
    let observed = node(&spec.join(","), off);
    let sliced: Vec<&&carve_plan::plan::PlannedGpu> = gpus
        .iter()
        .filter(|g| g.mode == carve_plan::plan::GpuMode::TimeSliced)
        .collect();
    assert!(!sliced.is_empty());

    let opts = Options::default();
    let inv = inventory(&observed, Some((&plan, "node-a")), &opts).unwrap();
    let l = carve_agent::labels::labels(&observed, &inv, &opts, Some("node-a"));
    assert_eq!(l["nvidia.com/gpu.replicas"], "1", "{l:#?}");
    assert_eq!(l["nvidia.com/gpu.sharing-strategy"], "none");
    assert_eq!(l["carve.dev/time-sliced-gpus"], sliced.len().to_string());
    for g in &sliced {
        let sch = g.scheduler.as_ref().unwrap();
        let key = |what: &str| format!("carve.dev/gpu-{}.{what}", g.index);
        assert_eq!(l[&key("policy")], sch.policy.as_str());
        assert_eq!(l[&key("slice-ms")], sch.slice_ms.to_string());
        assert_eq!(l[&key("work-conserving")], sch.work_conserving.to_string());
        assert_eq!(l[&key("shares")], g.shares.len().to_string());
        let mut tenants: Vec<&str> = g.shares.iter().map(|s| s.tenant.as_str()).collect();
        tenants.sort_unstable();
        tenants.dedup();
        assert_eq!(l[&key("tenants")], tenants.len().to_string());
        for t in tenants {
            let r = plan.tenant(t).unwrap().resource.clone().unwrap();
            let name = r
                .strip_prefix("carve.dev/")
                .expect("a tenant's own resource");
            assert_eq!(
                l[&format!("carve.dev/tenant.{name}")],
                inv.resource(&r).unwrap().devices.len().to_string()
            );
        }
    }
    for (k, v) in &l {
        assert!(v.len() <= 63 && !v.contains(' '), "{k}={v}");
        let name = k.split_once('/').map_or(k.as_str(), |(_, n)| n);
        assert!(name.len() <= 63, "{k}");
    }

    // With --replicas, the GPUs the plan does not time-slice are offered as nvidia.com/gpu
    // replicas: those, and only those, are GFD's.
    let opts = Options {
        replicas: 2,
        ..Options::default()
    };
    let inv = inventory(&observed, Some((&plan, "node-a")), &opts).unwrap();
    let l = carve_agent::labels::labels(&observed, &inv, &opts, Some("node-a"));
    let offered = inv.resource("nvidia.com/gpu").map_or(0, |r| {
        r.devices
            .iter()
            .filter(|d| matches!(d.kind, DeviceKind::Share { .. }))
            .count()
    });
    assert!(offered > 0);
    assert_eq!(l["nvidia.com/gpu.replicas"], "2");
    assert_eq!(l["nvidia.com/gpu.sharing-strategy"], "time-slicing");
    for g in &sliced {
        let sch = g.scheduler.as_ref().unwrap();
        assert_eq!(
            l[&format!("carve.dev/gpu-{}.policy", g.index)],
            sch.policy.as_str()
        );
    }
}

fn gpu_of(id: &str) -> Option<u32> {
    id.split('-').next()?.strip_prefix('g')?.parse().ok()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Whatever the preference: the size asked for (or all there is), every must-include, only
    /// available devices, no duplicates.
    #[test]
    fn preferred_allocation_is_well_formed(
        free in proptest::collection::vec(0usize..6, 1..6),
        size in 0usize..12,
        must_n in 0usize..3,
        pack in any::<bool>(),
    ) {
        let avail: Vec<String> = free.iter().enumerate()
            .flat_map(|(g, n)| (0..*n).map(move |k| format!("g{g}-{k}")))
            .collect();
        let must: Vec<String> = avail.iter().take(must_n.min(size)).cloned().collect();
        let pref = if pack { Preference::Pack } else { Preference::Spread };
        let got = prefer(&avail, &must, size, &gpu_of, pref);
        prop_assert_eq!(got.len(), size.min(avail.len()).max(must.len()));
        for m in &must { prop_assert!(got.contains(m)); }
        for g in &got { prop_assert!(avail.contains(g)); }
        let set: BTreeSet<&String> = got.iter().collect();
        prop_assert_eq!(set.len(), got.len());
    }

    /// Spread: no GPU gets two more than another unless that other has nothing left.
    #[test]
    fn spread_balances(free in proptest::collection::vec(0usize..6, 1..6), size in 0usize..20) {
        let avail: Vec<String> = free.iter().enumerate()
            .flat_map(|(g, n)| (0..*n).map(move |k| format!("g{g}-{k}")))
            .collect();
        let got = prefer(&avail, &[], size, &gpu_of, Preference::Spread);
        let mut per = vec![0usize; free.len()];
        for g in &got { per[gpu_of(g).unwrap() as usize] += 1; }
        for a in 0..free.len() {
            for b in 0..free.len() {
                if per[a] > per[b] + 1 {
                    prop_assert_eq!(per[b], free[b], "{:?} of {:?}", per, free);
                }
            }
        }
    }

    /// Pack: at most one GPU is left partly taken by the choice.
    #[test]
    fn pack_fills_gpus(free in proptest::collection::vec(0usize..6, 1..6), size in 0usize..20) {
        let avail: Vec<String> = free.iter().enumerate()
            .flat_map(|(g, n)| (0..*n).map(move |k| format!("g{g}-{k}")))
            .collect();
        let got = prefer(&avail, &[], size, &gpu_of, Preference::Pack);
        let mut per = vec![0usize; free.len()];
        for g in &got { per[gpu_of(g).unwrap() as usize] += 1; }
        let partial = (0..free.len()).filter(|&g| per[g] > 0 && per[g] < free[g]).count();
        prop_assert!(partial <= 1, "{:?} of {:?}", per, free);
    }
}

#[test]
fn cdi_uses_the_drivers_minors_and_mig_capabilities() {
    use carve_agent::host::{parse_device_minor, parse_mig_minors, proc_pci_id, DeviceNodes};
    assert_eq!(proc_pci_id("00000000:17:00.0"), "0000:17:00.0");
    assert_eq!(proc_pci_id("0000:AB:00.0"), "0000:ab:00.0");
    let info = "Model: \t\t NVIDIA H100 80GB HBM3\nIRQ:   \t\t 123\nDevice Minor: \t 3\nBus Location: \t 0000:17:00.0\n";
    assert_eq!(parse_device_minor(info), Some(3));
    assert_eq!(parse_device_minor("Model: x\n"), None);
    // A /proc tree as the driver lays it out.
    let obs = node("3xH100-80GB", MIXED);
    let proc = tempfile::tempdir().unwrap();
    let mut text = String::from("config 1\nmonitor 2\n");
    for (k, o) in obs.iter().enumerate() {
        let dir = proc
            .path()
            .join("driver/nvidia/gpus")
            .join(proc_pci_id(&o.info.pci_bus_id));
        std::fs::create_dir_all(&dir).unwrap();
        // Minors that differ from the indices.
        std::fs::write(
            dir.join("information"),
            format!("Device Minor: \t {}\n", k + 4),
        )
        .unwrap();
        for gi in &o.instances {
            text.push_str(&format!(
                "gpu{}/gi{}/access {}\n",
                k + 4,
                gi.id,
                100 + gi.id
            ));
            for ci in &gi.compute_instances {
                text.push_str(&format!(
                    "gpu{}/gi{}/ci{}/access {}\n",
                    k + 4,
                    gi.id,
                    ci.id,
                    200 + gi.id * 10 + ci.id
                ));
            }
        }
    }
    assert_eq!(parse_mig_minors(&text).len(), text.lines().count());
    std::fs::create_dir_all(proc.path().join("driver/nvidia-caps")).unwrap();
    std::fs::write(proc.path().join("driver/nvidia-caps/mig-minors"), &text).unwrap();
    let gpus: Vec<(u32, String)> = obs
        .iter()
        .map(|o| (o.info.index, o.info.pci_bus_id.clone()))
        .collect();
    // NUMA nodes in sysfs: GPU 0 on node 1, GPU 1 without one (-1), GPU 2 not listed.
    let sys = tempfile::tempdir().unwrap();
    for (k, v) in [(0usize, "1\n"), (1, "-1\n")] {
        let d = sys
            .path()
            .join("bus/pci/devices")
            .join(proc_pci_id(&obs[k].info.pci_bus_id));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("numa_node"), v).unwrap();
    }
    let nodes = DeviceNodes::read(proc.path(), sys.path(), &gpus);
    assert_eq!(nodes.gpu_minor.len(), 3);
    assert_eq!(nodes.numa, BTreeMap::from([(0u32, 1i64)]));
    let inv = inventory(&obs, None, &Options::default()).unwrap();
    let host = HostPaths {
        nodes,
        ..HostPaths::default()
    };
    let spec = carve_agent::cdi::spec(&inv, &host);
    for (_, d) in inv.devices() {
        let dev = spec["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == d.uuid.as_str())
            .unwrap();
        let paths: Vec<&str> = dev["containerEdits"]["deviceNodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["path"].as_str().unwrap())
            .collect();
        let minor = d.gpu_index + 4;
        assert_eq!(paths[0], format!("/dev/nvidia{minor}"));
        match d.kind {
            DeviceKind::Mig { gi, ci, .. } => assert_eq!(
                paths[1..],
                [
                    format!("/dev/nvidia-caps/nvidia-cap{}", 100 + gi),
                    format!("/dev/nvidia-caps/nvidia-cap{}", 200 + gi * 10 + ci)
                ]
            ),
            _ => assert_eq!(paths.len(), 1),
        }
    }
    // Without the driver's files: the index, no capability devices.
    let bare = carve_agent::cdi::spec(&inv, &HostPaths::default());
    let first = &bare["devices"][0]["containerEdits"]["deviceNodes"];
    assert_eq!(first.as_array().unwrap().len(), 1);
}
