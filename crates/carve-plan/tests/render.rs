//! The renderers of `files.rs` on a plan built by hand (not through the planner), so that every
//! GPU mode, both platforms, an unused GPU, a missing licence and awkward names are covered:
//! the YAML they write parses into the schema of the tool that reads it, the mig-parted configs
//! pass carve's checker, the SVG is well-formed and to scale.

use carve_model::Catalog;
use carve_plan::files;
use carve_plan::plan::{
    GpuMode, Mode, MoreGpus, PackingStats, Placement, Plan, PlannedGpu, PlannedInstance,
    PlannedNode, PlannedScheduler, PlannedShare, PlannedTenant, Platform, Policy, Rejected,
    Shortfall, PLAN_VERSION,
};
use serde::Deserialize;
use std::collections::BTreeMap;

// ---------------------------------------------------------------------------------------------
// The sample plan

const K8S: &str = "k8s-1";
const ESX: &str = "esx-01";

fn inst(profile: &str, start: u8, size: u8, tenant: &str, replica: u32) -> PlannedInstance {
    PlannedInstance {
        profile: profile.into(),
        start,
        size,
        tenant: tenant.into(),
        replica,
        vgpu_type: None,
    }
}

fn share(tenant: &str, replica: u32, share: f64, mib: u64, vgpu: Option<&str>) -> PlannedShare {
    PlannedShare {
        tenant: tenant.into(),
        replica,
        share,
        memory_mib: mib,
        vgpu_type: vgpu.map(str::to_string),
    }
}

fn gpu(node: &str, index: u32, mode: GpuMode) -> PlannedGpu {
    PlannedGpu {
        node: node.into(),
        index,
        model: "H100-80GB".into(),
        memory_mib: 81559,
        mig_capable: true,
        mode,
        instances: vec![],
        shares: vec![],
        scheduler: None,
    }
}

fn place(replica: u32, node: &str, gpu: u32, mig: Option<(&str, u8)>) -> Placement {
    Placement {
        replica,
        node: node.into(),
        gpu,
        profile: mig.map(|m| m.0.to_string()),
        start: mig.map(|m| m.1),
    }
}

/// Where each tenant of the sample is (what its GPUs say, checked by
/// `placements_come_from_the_gpus`).
type Said = Vec<(String, Vec<Placement>)>;

/// A tenant with its replicas at `placements`.
fn tenant(said: &mut Said, name: &str, mode: Mode, placements: Vec<Placement>) -> PlannedTenant {
    said.push((name.to_string(), placements.clone()));
    PlannedTenant {
        name: name.into(),
        workload: "inference".into(),
        mode,
        rule: format!("rule-for-{name}"),
        reason: format!("{name} gets {mode} because of its needs."),
        rejected: vec![Rejected {
            mode: if mode == Mode::Dedicated {
                Mode::Mig
            } else {
                Mode::Dedicated
            },
            why: format!("{name}: a whole GPU would waste most of it"),
        }],
        replicas: placements.len() as u32,
        memory_mib: 10240,
        share: None,
        profiles: BTreeMap::new(),
        spread: false,
        unplaced: 0,
        unplaceable: None,
        resource: None,
        licence: None,
        warnings: vec![],
    }
}

/// A Kubernetes node with two H100s (one MIG with three tenants, one time-sliced with two shares
/// under fixed share), a vSphere node with a vGPU time-sliced H100 (RmPVMRL) and an unused H100.
fn sample() -> Plan {
    sample_and_placements().0
}

fn sample_and_placements() -> (Plan, Said) {
    let mut said = Said::new();
    let mut mig = gpu(K8S, 0, GpuMode::Mig);
    mig.instances = vec![
        inst("1g.10gb", 0, 1, "search", 0),
        inst("1g.10gb", 1, 1, "search", 1),
        inst("2g.20gb", 2, 2, "recsys", 0),
        inst("3g.40gb", 4, 4, "fraud", 0),
    ];
    let mut ts = gpu(K8S, 1, GpuMode::TimeSliced);
    ts.shares = vec![
        share("notebooks", 0, 0.25, 10240, None),
        share("nightly", 0, 0.75, 40960, None),
    ];
    ts.scheduler = Some(PlannedScheduler {
        policy: Policy::FixedShare,
        slice_ms: 4,
        work_conserving: false,
        reason: "shares were asked for".into(),
        rmpvmrl: None,
    });
    let mut vts = gpu(ESX, 0, GpuMode::VgpuTimeSliced);
    vts.shares = vec![
        share("vm-ci", 0, 0.5, 8192, Some("H100-8C")),
        share("desk", 0, 0.5, 8192, Some("H100-8Q")),
    ];
    vts.scheduler = Some(PlannedScheduler {
        policy: Policy::EqualShare,
        slice_ms: 2,
        work_conserving: false,
        reason: "equal turns for the VMs".into(),
        rmpvmrl: Some("0x00020001".into()),
    });
    let unused = gpu(ESX, 1, GpuMode::Unused);

    let mut search = tenant(
        &mut said,
        "search",
        Mode::Mig,
        vec![
            place(0, K8S, 0, Some(("1g.10gb", 0))),
            place(1, K8S, 0, Some(("1g.10gb", 1))),
        ],
    );
    search.profiles.insert("H100-80GB".into(), "1g.10gb".into());
    search.resource = Some("nvidia.com/mig-1g.10gb".into());
    search.spread = true;
    search.warnings = vec!["search: spread asked, both replicas share GPU 0".into()];
    let mut recsys = tenant(
        &mut said,
        "recsys",
        Mode::Mig,
        vec![place(0, K8S, 0, Some(("2g.20gb", 2)))],
    );
    recsys.profiles.insert("H100-80GB".into(), "2g.20gb".into());
    recsys.resource = Some("nvidia.com/mig-2g.20gb".into());
    let mut fraud = tenant(
        &mut said,
        "fraud",
        Mode::Mig,
        vec![place(0, K8S, 0, Some(("3g.40gb", 4)))],
    );
    fraud.profiles.insert("H100-80GB".into(), "3g.40gb".into());
    fraud.resource = Some("nvidia.com/mig-3g.40gb".into());
    let mut notebooks = tenant(
        &mut said,
        "notebooks",
        Mode::TimeSliced,
        vec![place(0, K8S, 1, None)],
    );
    notebooks.share = Some(0.25);
    notebooks.resource = Some("nvidia.com/gpu".into());
    let mut nightly = tenant(
        &mut said,
        "nightly",
        Mode::TimeSliced,
        vec![place(0, K8S, 1, None)],
    );
    nightly.share = Some(0.75);
    nightly.resource = Some("nvidia.com/gpu".into());
    let mut vm_ci = tenant(
        &mut said,
        "vm-ci",
        Mode::VgpuTimeSliced,
        vec![place(0, ESX, 0, None)],
    );
    vm_ci.licence = Some("vCS".into());
    let mut desk = tenant(
        &mut said,
        "desk",
        Mode::VgpuTimeSliced,
        vec![place(0, ESX, 0, None)],
    );
    desk.licence = Some("vWS".into());

    let plan = Plan {
        version: PLAN_VERSION,
        nodes: vec![
            PlannedNode {
                name: K8S.into(),
                platform: Platform::Kubernetes,
                licence: None,
            },
            PlannedNode {
                name: ESX.into(),
                platform: Platform::Vsphere,
                licence: Some("vCS".into()),
            },
        ],
        gpus: vec![mig, ts, vts, unused],
        tenants: vec![search, recsys, fraud, notebooks, nightly, vm_ci, desk],
        gpus_used: 3,
        lower_bound_gpus: 3,
        optimal: true,
        complete: true,
        shortfall: vec![],
        stats: PackingStats {
            dedicated_gpus: 0,
            time_sliced_gpus: 2,
            mig_gpus: 1,
            mig_optimal: true,
            mig_lower_bound: 1,
            time_sliced_lower_bound: 2,
            solver_nodes: 3,
        },
        warnings: vec!["the vSphere host lacks a vWS licence for desk".into()],
    };
    (plan, said)
}

// ---------------------------------------------------------------------------------------------
// plan.json

#[test]
fn placements_come_from_the_gpus() {
    let (plan, said) = sample_and_placements();
    let all = plan.placements_by_tenant();
    for (name, want) in &said {
        assert_eq!(&plan.placements(name), want, "{name}");
        assert_eq!(&all[name.as_str()], want, "{name}");
    }
    assert_eq!(all.len(), said.len());
    assert!(plan.placements("nobody").is_empty());
}

#[test]
fn version_2_round_trips_without_a_copy_of_the_placements() {
    let plan = sample();
    let text = serde_json::to_string_pretty(&plan).unwrap();
    assert!(!text.contains("placements"), "{text}");
    assert!(!text.contains("plan_ms"), "{text}");
    assert_eq!(Plan::from_json(&text).unwrap(), plan);
}

/// The sample as carve 0.1 wrote it: version 1, each tenant's placements, plan_ms.
fn as_version_1(plan: &Plan, said: &Said) -> serde_json::Value {
    let mut v = serde_json::to_value(plan).unwrap();
    v["version"] = 1.into();
    v["stats"].as_object_mut().unwrap().remove("solver_nodes");
    v["stats"]["plan_ms"] = 12.5.into();
    for t in v["tenants"].as_array_mut().unwrap() {
        let name = t["name"].as_str().unwrap().to_string();
        let ps = &said.iter().find(|(n, _)| *n == name).unwrap().1;
        t["placements"] = serde_json::to_value(ps).unwrap();
    }
    v
}

#[test]
fn version_1_plans_are_read_and_checked() {
    let (plan, said) = sample_and_placements();
    let v1 = as_version_1(&plan, &said);
    let read = Plan::from_json(&v1.to_string()).unwrap();
    assert_eq!(read.version, PLAN_VERSION, "upgraded in memory");
    let mut want = plan.clone();
    want.stats.solver_nodes = 0;
    assert_eq!(read, want);

    // A copy that disagrees with the GPUs was edited by hand: refused.
    let mut bad = v1.clone();
    bad["tenants"][0]["placements"][1]["gpu"] = 1.into();
    let e = Plan::from_json(&bad.to_string()).unwrap_err();
    assert_eq!(
        e,
        carve_plan::plan::PlanError::Placements {
            tenant: "search".into()
        }
    );
    assert!(e.to_string().contains("tenant 'search'"), "{e}");
    let mut missing = v1;
    missing["tenants"][6]["placements"] = serde_json::json!([]);
    assert!(Plan::from_json(&missing.to_string()).is_err());
}

#[test]
fn unreadable_plans_say_why_and_where() {
    use carve_plan::plan::PlanError;
    let e = Plan::from_json("{\n  \"version\": 2,\n  \"nodes\": 7\n}").unwrap_err();
    assert_eq!(e.pos().map(|p| p.line), Some(3), "{e}");
    assert!(e.to_string().starts_with("3:"), "{e}");
    assert!(!e.to_string().contains(" at line "), "{e}");
    let e = Plan::from_json("{\"version\": 3}").unwrap_err();
    assert_eq!(e, PlanError::Version { found: 3 });
    assert_eq!(
        e.to_string(),
        "plan version 3 is not supported (this carve reads versions 1 to 2)"
    );
    assert!(matches!(
        Plan::from_json("[1"),
        Err(PlanError::Format { .. })
    ));
}

fn node_models<'a>(plan: &Plan, cat: &'a Catalog, node: &str) -> Vec<&'a carve_model::GpuModel> {
    plan.node_gpus(node)
        .map(|g| cat.gpu(&g.model).expect("a catalog model"))
        .collect()
}

fn yaml<T: serde::de::DeserializeOwned>(text: &str) -> T {
    marked_yaml::from_yaml(0, text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

// ---------------------------------------------------------------------------------------------
// mig-parted

#[test]
fn mig_parted_parses_checks_and_counts() {
    let plan = sample();
    let cat = Catalog::embedded();
    for node in [K8S, ESX] {
        let text = files::mig_parted(&plan, node).expect("a node with used GPUs");
        assert!(text.contains("carve apply plan.json"), "{text}");
        assert!(text.contains("cannot express placements"), "{text}");
        let (file, diags) = carve_migparted::parse(&text).unwrap_or_else(|d| panic!("{d:?}"));
        assert!(diags.is_empty(), "{diags:?}\n{text}");
        let report = carve_migparted::check(&file, &cat, Some(&node_models(&plan, &cat, node)));
        assert!(report.valid, "{:?}\n{text}", report.diagnostics);
        assert_eq!(file.configs.len(), 1);
        assert_eq!(file.configs[0].name, "carve");
    }

    let text = files::mig_parted(&plan, K8S).unwrap();
    let (file, _) = carve_migparted::parse(&text).unwrap();
    let entries = &file.config("carve").unwrap().entries;
    assert_eq!(entries.len(), 2, "{text}");
    assert_eq!(entries[0].devices, carve_migparted::Devices::List(vec![0]));
    assert!(entries[0].mig_enabled);
    let counts: BTreeMap<&str, u32> = entries[0]
        .mig_devices
        .iter()
        .map(|d| (d.profile.as_str(), d.count))
        .collect();
    assert_eq!(
        counts,
        BTreeMap::from([("1g.10gb", 2), ("2g.20gb", 1), ("3g.40gb", 1)])
    );
    assert_eq!(entries[1].devices, carve_migparted::Devices::List(vec![1]));
    assert!(!entries[1].mig_enabled);
    assert!(entries[1].mig_devices.is_empty());

    // The unused GPU is left out.
    let text = files::mig_parted(&plan, ESX).unwrap();
    let (file, _) = carve_migparted::parse(&text).unwrap();
    let entries = &file.configs[0].entries;
    assert_eq!(entries.len(), 1, "{text}");
    assert_eq!(entries[0].devices, carve_migparted::Devices::List(vec![0]));
    assert!(!entries[0].mig_enabled);
}

#[test]
fn mig_parted_for_vgpu_mig_and_idle_nodes() {
    let mut plan = sample();
    let cat = Catalog::embedded();
    // vGPU MIG on the vSphere node's second GPU.
    plan.gpus[3].mode = GpuMode::VgpuMig;
    plan.gpus[3].instances = vec![PlannedInstance {
        vgpu_type: Some("H100-3-40C".into()),
        ..inst("3g.40gb", 0, 4, "vm-ci", 1)
    }];
    let text = files::mig_parted(&plan, ESX).unwrap();
    let (file, diags) = carve_migparted::parse(&text).unwrap();
    assert!(diags.is_empty());
    assert!(
        carve_migparted::check(&file, &cat, Some(&node_models(&plan, &cat, ESX))).valid,
        "{text}"
    );
    let e = &file.configs[0].entries;
    assert_eq!(e.len(), 2);
    assert!(e[1].mig_enabled);
    assert_eq!(e[1].mig_devices[0].profile, "3g.40gb");

    // A node whose GPUs are all unused has no config.
    for g in plan.gpus.iter_mut().filter(|g| g.node == ESX) {
        g.mode = GpuMode::Unused;
    }
    assert!(files::mig_parted(&plan, ESX).is_none());
    assert!(files::mig_parted(&plan, "no-such-node").is_none());
}

// ---------------------------------------------------------------------------------------------
// Kubernetes

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DpConfig {
    version: String,
    flags: DpFlags,
    #[serde(default)]
    sharing: Option<DpSharing>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DpFlags {
    mig_strategy: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DpSharing {
    time_slicing: DpTimeSlicing,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DpTimeSlicing {
    rename_by_default: bool,
    fail_requests_greater_than_one: bool,
    resources: Vec<DpResource>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DpResource {
    name: String,
    replicas: u32,
}

#[test]
fn device_plugin_config_follows_the_plugin_schema() {
    let plan = sample();
    let text = files::device_plugin(&plan, K8S).expect("a kubernetes node");
    let c: DpConfig = yaml(&text);
    assert_eq!(c.version, "v1");
    assert_eq!(c.flags.mig_strategy, "mixed");
    let ts = c.sharing.expect("time-slicing").time_slicing;
    assert!(!ts.rename_by_default);
    assert!(ts.fail_requests_greater_than_one);
    assert_eq!(ts.resources.len(), 1);
    assert_eq!(ts.resources[0].name, "nvidia.com/gpu");
    assert_eq!(ts.resources[0].replicas, 2);
    assert!(text.contains("every GPU of the node"), "{text}");
    assert!(text.contains("carve sched"), "{text}");

    // Hypervisor nodes have no device plugin.
    assert!(files::device_plugin(&plan, ESX).is_none());

    // Only MIG: mixed, no sharing.
    let mut only_mig = sample();
    only_mig.gpus[1].mode = GpuMode::Unused;
    only_mig.gpus[1].shares.clear();
    only_mig.gpus[1].scheduler = None;
    let c: DpConfig = yaml(&files::device_plugin(&only_mig, K8S).unwrap());
    assert_eq!(c.flags.mig_strategy, "mixed");
    assert!(c.sharing.is_none());

    // Only time-slicing: strategy none; one share per GPU gives no replicas (they must be >= 2).
    let mut only_ts = sample();
    only_ts.gpus[0].mode = GpuMode::Unused;
    only_ts.gpus[0].instances.clear();
    let c: DpConfig = yaml(&files::device_plugin(&only_ts, K8S).unwrap());
    assert_eq!(c.flags.mig_strategy, "none");
    assert_eq!(c.sharing.unwrap().time_slicing.resources[0].replicas, 2);
    // A dedicated GPU beside time-sliced ones is replicated too: the file says so.
    let mut ded = sample();
    ded.gpus[0].mode = GpuMode::Dedicated;
    ded.gpus[0].instances.clear();
    ded.gpus[0].shares = vec![share("fraud", 0, 1.0, 81559, None)];
    let text = files::device_plugin(&ded, K8S).unwrap();
    let c: DpConfig = yaml(&text);
    assert_eq!(c.flags.mig_strategy, "none");
    assert!(text.contains("GPU 0 is dedicated"), "{text}");
    assert!(!files::device_plugin(&plan, K8S)
        .unwrap()
        .contains("dedicated"));
    only_ts.gpus[1].shares.truncate(1);
    let c: DpConfig = yaml(&files::device_plugin(&only_ts, K8S).unwrap());
    assert!(c.sharing.is_none());
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PodSpec {
    resources: PodResources,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PodResources {
    limits: BTreeMap<String, u32>,
}

#[test]
fn pod_resources_per_kubernetes_tenant() {
    let plan = sample();
    let text = files::pod_resources(&plan);
    let pods: BTreeMap<String, PodSpec> = yaml(&text);
    let limits = |t: &str| pods[t].resources.limits.clone();
    assert_eq!(
        limits("search"),
        BTreeMap::from([("nvidia.com/mig-1g.10gb".to_string(), 1)])
    );
    assert_eq!(
        limits("fraud"),
        BTreeMap::from([("nvidia.com/mig-3g.40gb".to_string(), 1)])
    );
    assert_eq!(
        limits("notebooks"),
        BTreeMap::from([("nvidia.com/gpu".to_string(), 1)])
    );
    // vGPU tenants run in VMs, not pods.
    assert!(!pods.contains_key("vm-ci") && !pods.contains_key("desk"));
    assert_eq!(pods.len(), 5);
    // Time-sliced tenants run under the shim.
    assert!(text.contains("carve run --tenant notebooks"), "{text}");
    assert!(text.contains("carve run --tenant nightly"), "{text}");
    assert!(!text.contains("carve run --tenant search"), "{text}");

    // Names that need quoting stay one YAML key.
    let mut odd = sample();
    odd.tenants[0].name = "team: a # b".into();
    let pods: BTreeMap<String, PodSpec> = yaml(&files::pod_resources(&odd));
    assert!(pods.contains_key("team: a # b"));
    odd.tenants[3].name = "it's me".into();
    assert!(
        files::pod_resources(&odd).contains(r"carve run --tenant 'it'\''s me' -- CMD"),
        "the shim's command line is quoted for a shell"
    );
}

// ---------------------------------------------------------------------------------------------
// carve sched and vGPU

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SchedFile {
    gpus: Vec<SchedGpu>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SchedGpu {
    gpu: u32,
    policy: String,
    slice_ms: u32,
    work_conserving: bool,
    averaging_factor: u32,
    tenants: Vec<SchedTenant>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SchedTenant {
    name: String,
    share: Option<f64>,
    memory_limit_mib: u64,
}

#[test]
fn sched_config_per_time_sliced_gpu() {
    let plan = sample();
    let text = files::sched_config(&plan, K8S).expect("a time-sliced GPU");
    // The fields are documented at the top.
    for f in [
        "policy",
        "slice_ms",
        "work_conserving",
        "averaging_factor",
        "share",
        "memory_limit_mib",
    ] {
        assert!(
            text.lines()
                .take_while(|l| l.starts_with('#'))
                .any(|l| l.contains(f)),
            "{f} undocumented:\n{text}"
        );
    }
    let c: SchedFile = yaml(&text);
    assert_eq!(c.gpus.len(), 1);
    let g = &c.gpus[0];
    assert_eq!(
        (
            g.gpu,
            g.policy.as_str(),
            g.slice_ms,
            g.work_conserving,
            g.averaging_factor
        ),
        (1, "fixed-share", 4, false, 33)
    );
    let t: BTreeMap<&str, (Option<f64>, u64)> = g
        .tenants
        .iter()
        .map(|t| (t.name.as_str(), (t.share, t.memory_limit_mib)))
        .collect();
    assert_eq!(
        t,
        BTreeMap::from([
            ("nightly", (Some(0.75), 40960)),
            ("notebooks", (Some(0.25), 10240))
        ])
    );
    // vGPU time-slicing is the hypervisor's business, not carve sched's.
    assert!(files::sched_config(&plan, ESX).is_none());
}

#[test]
fn vgpu_sheet_lists_vms_rmpvmrl_and_licences() {
    let plan = sample();
    let sheet = files::vgpu_sheet(&plan, ESX).expect("a hypervisor node");
    assert!(files::vgpu_sheet(&plan, K8S).is_none());
    let row = |who: &str| {
        sheet
            .lines()
            .find(|l| l.starts_with(&format!("| {who} ")))
            .unwrap_or_else(|| panic!("no row for {who}:\n{sheet}"))
            .to_string()
    };
    let ci = row("vm-ci/0");
    for want in ["H100-8C", "equal-share", "2 ms", "0x00020001", "vCS"] {
        assert!(ci.contains(want), "{want} missing: {ci}");
    }
    assert!(!ci.contains("missing"), "{ci}");
    let desk = row("desk/0");
    assert!(desk.contains("vWS") && desk.contains("missing"), "{desk}");
    assert!(sheet.contains(
        "esxcli system module parameters set -m nvidia -p \"NVreg_RegistryDwords=RmPVMRL=0x00020001\""
    ));
    assert!(sheet.contains("options nvidia NVreg_RegistryDwords=\"RmPVMRL=0x00020001\""));
    assert!(sheet.contains("dmesg | grep NVRM | grep scheduler"));
    // The unused GPU has no row.
    assert_eq!(sheet.lines().filter(|l| l.starts_with("| ")).count(), 3); // header + 2 VMs
}

// ---------------------------------------------------------------------------------------------
// report.md

#[test]
fn report_explains_summary_tenants_nodes_and_warnings() {
    let plan = sample();
    let md = files::report_md(&plan, &Catalog::embedded());
    assert!(md.contains("**3 of 4 GPUs used**"), "{md}");
    assert!(md.contains("proven optimum"));
    assert!(md.contains("Every tenant has room"));
    for t in &plan.tenants {
        let head = format!("### {} — {}", t.name, t.mode);
        let at = md.find(&head).unwrap_or_else(|| panic!("{head}"));
        let section = &md[at..];
        let section = &section[..section[4..].find("\n#").map_or(section.len(), |e| e + 4)];
        assert!(section.contains(&t.rule), "{}: no rule", t.name);
        assert!(section.contains(&t.reason), "{}: no reason", t.name);
        for r in &t.rejected {
            assert!(section.contains(&r.why), "{}: no rejection", t.name);
        }
        for w in &t.warnings {
            assert!(section.contains(w), "{}: no warning", t.name);
        }
        for p in &plan.tenants[0].profiles {
            if t.profiles.contains_key(p.0) {
                assert!(section.contains(&t.profiles[p.0]));
            }
        }
    }
    for n in &plan.nodes {
        assert!(md.contains(&format!("### {} ({}", n.name, n.platform)));
    }
    assert!(md.contains("3g.40gb 4@4 (fraud/0)"), "{md}");
    assert!(md.contains("## Warnings"));
    assert!(md.contains(&plan.warnings[0]));

    // A partial, non-optimal plan says what is missing and what would fit it.
    let mut p = sample();
    p.complete = false;
    p.optimal = false;
    p.lower_bound_gpus = 2;
    p.tenants[2].unplaced = 1;
    p.tenants[2].replicas = 2;
    p.shortfall = vec![Shortfall {
        model: "H100-80GB".into(),
        more_gpus: 1,
        pool: "kubernetes/bare-metal".into(),
        with: vec![],
    }];
    let md = files::report_md(&p, &Catalog::embedded());
    let fraud = p.tenants[2].name.clone();
    assert!(
        md.contains(&format!(
            "- 1 more H100-80GB on a kubernetes/bare-metal node would make room for {fraud}"
        )),
        "{md}"
    );
    assert!(md.contains("fraud (1 of 2)"), "{md}");
    assert!(!md.contains("proven optimum"));
    // A tenant no GPU holds says why, and is left out of the advice; a mix of models is one
    // alternative.
    p.tenants[1].unplaced = 1;
    p.tenants[1].unplaceable = Some("it needs 200 GB per replica".into());
    p.shortfall[0].with = vec![MoreGpus {
        model: "A100-40GB".into(),
        more_gpus: 2,
    }];
    let md = files::report_md(&p, &Catalog::embedded());
    let name = p.tenants[1].name.clone();
    assert!(
        md.contains(&format!(
            "- {name}: no GPU of this fleet's models holds it: it needs 200 GB per replica"
        )),
        "{md}"
    );
    assert!(
        md.contains(&format!("- 1 more H100-80GB and 2 more A100-40GB on a kubernetes/bare-metal node would make room for {fraud}\n")),
        "{md}"
    );
    // No advice for a pool: said, with the bound.
    p.shortfall.clear();
    let md = files::report_md(&p, &Catalog::embedded());
    assert!(
        md.contains(&format!(
            "- {fraud}: not even {} more GPUs of each of this fleet's models",
            carve_plan::planner::ADVICE_MAX_GPUS
        )),
        "{md}"
    );

    // A `|` in a name does not break the tables.
    let mut p = sample();
    p.tenants[1].name = "a|b".into();
    let md = files::report_md(&p, &Catalog::embedded());
    let row = md.lines().find(|l| l.contains("a\\|b")).expect("escaped");
    assert_eq!(row.matches(" | ").count(), 5, "{row}");
}

// ---------------------------------------------------------------------------------------------
// layout.svg

#[test]
fn layout_svg_rows_colours_and_scale() {
    let plan = sample();
    let cat = Catalog::embedded();
    let svg = files::layout_svg(&plan, &cat);
    let doc = roxmltree::Document::parse(&svg).unwrap_or_else(|e| panic!("{e}\n{svg}"));
    for t in &plan.tenants {
        assert!(svg.contains(&t.name), "{} missing", t.name);
    }
    let rows: Vec<_> = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("gpu"))
        .collect();
    assert_eq!(rows.len(), plan.gpus.len(), "one row per GPU, used or not");
    let keys: Vec<(String, u32)> = rows
        .iter()
        .map(|r| {
            (
                r.attribute("data-node").unwrap().to_string(),
                r.attribute("data-gpu").unwrap().parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        keys,
        vec![
            (K8S.into(), 0),
            (K8S.into(), 1),
            (ESX.into(), 0),
            (ESX.into(), 1)
        ]
    );
    // The unused GPU is drawn, empty and marked unused.
    let unused = rows[3];
    assert_eq!(unused.attribute("data-mode"), Some("unused"));
    assert!(unused
        .descendants()
        .all(|n| !matches!(n.attribute("class"), Some("instance" | "share"))));
    assert!(unused
        .descendants()
        .any(|n| n.attribute("class") == Some("unused")
            && n.text().is_some_and(|t| t.contains("unused"))));
    assert!(rows[..3]
        .iter()
        .all(|r| r.attribute("data-mode") != Some("unused")));
    let f = |n: &roxmltree::Node, a: &str| -> f64 { n.attribute(a).unwrap().parse().unwrap() };

    // MIG row: x and width proportional to start and size (8 slots on an H100).
    let rects: Vec<_> = rows[0]
        .descendants()
        .filter(|n| n.attribute("class") == Some("instance"))
        .collect();
    assert_eq!(rects.len(), 4);
    let slots = cat.gpu("H100-80GB").unwrap().memory_slots as f64;
    let (x0, w0) = (f(&rects[0], "x"), f(&rects[0], "width"));
    let slot = w0 + 2.0; // 1 slot, 1 px inset on each side
    assert!((slot * slots - 640.0).abs() < 0.5);
    for (r, i) in rects.iter().zip(&plan.gpus[0].instances) {
        assert!((f(r, "x") - x0 - i.start as f64 * slot).abs() < 0.2);
        assert!((f(r, "width") + 2.0 - i.size as f64 * slot).abs() < 0.2);
        let title = r
            .children()
            .find(|c| c.has_tag_name("title"))
            .expect("a tooltip");
        assert!(title.text().unwrap().contains(&i.tenant));
        assert!(title.text().unwrap().contains(&i.profile));
    }
    // Time-sliced row: split by share.
    let shares: Vec<_> = rows[1]
        .descendants()
        .filter(|n| n.attribute("class") == Some("share"))
        .collect();
    assert_eq!(shares.len(), 2);
    let w: Vec<f64> = shares.iter().map(|r| f(r, "width") + 2.0).collect();
    assert!((w[1] / w[0] - 3.0).abs() < 0.05, "{w:?}");

    // Same tenant, same colour; different tenants on one GPU, different colours.
    let fill = |n: &roxmltree::Node| n.attribute("fill").unwrap().to_string();
    assert_eq!(fill(&rects[0]), fill(&rects[1]));
    assert_ne!(fill(&rects[1]), fill(&rects[2]));
    assert_ne!(fill(&rects[2]), fill(&rects[3]));
    assert_ne!(fill(&shares[0]), fill(&shares[1]));

    // Names are escaped.
    let mut p = sample();
    p.tenants[0].name = "<a&b \"c\">".into();
    for i in &mut p.gpus[0].instances {
        if i.tenant == "search" {
            i.tenant = "<a&b \"c\">".into();
        }
    }
    p.gpus[0].node = "n<1>".into();
    let svg = files::layout_svg(&p, &cat);
    let doc = roxmltree::Document::parse(&svg).unwrap_or_else(|e| panic!("{e}\n{svg}"));
    assert!(doc
        .descendants()
        .any(|n| n.text().is_some_and(|t| t.contains("<a&b \"c\">"))));
    assert!(doc
        .descendants()
        .any(|n| n.attribute("data-node") == Some("n<1>")));
}

// ---------------------------------------------------------------------------------------------
// The output directory

#[test]
fn files_lists_what_applies_per_node() {
    let plan = sample();
    let all = files::files(&plan, &Catalog::embedded());
    let names: Vec<&str> = all.iter().map(|f| f.0.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "report.md",
            "layout.svg",
            "pod-resources.yaml",
            "nodes/k8s-1/mig-parted.yaml",
            "nodes/k8s-1/device-plugin.yaml",
            "nodes/k8s-1/carve-sched.yaml",
            "nodes/esx-01/mig-parted.yaml",
            "nodes/esx-01/vgpu.md",
        ]
    );
    assert!(!names.contains(&"plan.json"));
    assert!(all.iter().all(|f| !f.1.is_empty()));

    // Node names become safe path components.
    let mut p = sample();
    let evil = "../etc/x y";
    p.nodes[0].name = evil.into();
    for g in p.gpus.iter_mut().filter(|g| g.node == K8S) {
        g.node = evil.into();
    }
    for f in files::files(&p, &Catalog::embedded()) {
        let parts: Vec<&str> = f.0.split('/').collect();
        assert!(
            parts
                .iter()
                .all(|c| !c.is_empty() && *c != ".." && *c != "." && !c.contains(' ')),
            "{}",
            f.0
        );
    }
}
