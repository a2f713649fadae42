//! Decisions per tenant: the sharing mode (one table of rules, first match wins), the reason and
//! the alternatives rejected, the MIG profile per GPU model, and time-slice policy and slice.

use crate::plan::{Mode, Policy, Rejected};
use crate::tenancy::{FleetGpu, FleetNode, Isolation, Tenancy, Tenant, Workload};
use carve_model::profile::{Attribute, ProfileName};
use carve_model::{Catalog, GpuModel};
use std::collections::BTreeMap;

/// What the rules need to know about the fleet.
#[derive(Debug, Clone)]
pub struct Facts {
    /// Some node runs a hypervisor (vSphere).
    pub has_hypervisor: bool,
    /// Some node is Kubernetes or bare metal.
    pub has_host: bool,
    /// MIG-capable catalog models on host (Kubernetes / bare-metal) nodes.
    pub host_models: Vec<usize>,
    /// MIG-capable catalog models on hypervisor nodes.
    pub hypervisor_models: Vec<usize>,
}

impl Facts {
    pub fn of(t: &Tenancy) -> Facts {
        Facts::of_nodes(&t.nodes)
    }

    /// The facts of a fleet given as its nodes (the planner's advice plans fleets with more GPUs).
    pub fn of_nodes(nodes: &[FleetNode]) -> Facts {
        let models = |hyp: bool| {
            let mut v: Vec<usize> = nodes
                .iter()
                .filter(|n| n.platform.is_hypervisor() == hyp)
                .flat_map(|n| n.gpus.iter().filter_map(|g: &FleetGpu| g.model))
                .collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        Facts {
            has_hypervisor: nodes.iter().any(|n| n.platform.is_hypervisor()),
            has_host: nodes.iter().any(|n| !n.platform.is_hypervisor()),
            host_models: models(false),
            hypervisor_models: models(true),
        }
    }

    /// MIG models where a mode's tenants can run.
    pub fn models_for(&self, mode: Mode) -> &[usize] {
        if mode.is_vgpu() {
            &self.hypervisor_models
        } else {
            &self.host_models
        }
    }
}

/// One row of the decision table.
pub struct Rule {
    pub id: &'static str,
    /// The condition, as a person would say it.
    pub when: &'static str,
    pub mode: Mode,
    /// Why, in general terms (the decision adds the tenant's specifics).
    pub why: &'static str,
    test: fn(&Tenant, &Ctx) -> bool,
}

/// Per-tenant context for the rule tests.
pub struct Ctx<'a> {
    pub catalog: &'a Catalog,
    pub facts: &'a Facts,
}

impl Ctx<'_> {
    /// Smallest MIG profile short of a whole GPU fits the tenant on some MIG model it can use.
    fn fits_a_slice(&self, t: &Tenant) -> bool {
        self.facts
            .host_models
            .iter()
            .chain(&self.facts.hypervisor_models)
            .any(|&m| {
                let g = &self.catalog.gpus[m];
                profile_for(g, t).is_some_and(|p| g.profiles[p].compute < g.compute_slices)
            })
    }

    fn any_mig(&self) -> bool {
        !(self.facts.host_models.is_empty() && self.facts.hypervisor_models.is_empty())
    }
}

/// The decision table (DEVELOPERS.md's decision map), first match wins.
pub const RULES: &[Rule] = &[
    Rule {
        id: "vm-hard-isolation",
        when: "vm: true and isolation: hard",
        mode: Mode::VgpuMig,
        why: "VM management with hard isolation: a MIG-backed vGPU gives the VM its own SMs, L2 \
              and memory controllers while the hypervisor keeps managing it",
        test: |t, _| t.vm && t.isolation == Isolation::Hard,
    },
    Rule {
        id: "vm",
        when: "vm: true",
        mode: Mode::VgpuTimeSliced,
        why: "VM management without a hard-isolation need: a time-sliced vGPU is the densest \
              way to give VMs a GPU",
        test: |t, _| t.vm,
    },
    Rule {
        id: "whole-gpu",
        when: "needs more memory or compute than any MIG slice short of a whole GPU",
        mode: Mode::Dedicated,
        why: "it needs a whole GPU: MIG would only add a partition of everything, and \
              neighbours would have no room",
        test: |t, c| t.profile.is_none() && c.any_mig() && !c.fits_a_slice(t),
    },
    Rule {
        id: "named-profile",
        when: "profile: named",
        mode: Mode::Mig,
        why: "the tenant names a MIG profile",
        test: |t, _| t.profile.is_some(),
    },
    Rule {
        id: "desktop-interactive",
        when: "workload: desktop or interactive",
        mode: Mode::TimeSliced,
        why: "desktops, IDEs and light tools are idle most of the time: time-slicing with short \
              slices keeps them responsive at high density",
        test: |t, _| matches!(t.workload, Workload::Desktop | Workload::Interactive),
    },
    Rule {
        id: "dev",
        when: "workload: dev",
        mode: Mode::TimeSliced,
        why: "bursty development work: best-effort time-slicing lets each burst use the whole GPU",
        test: |t, _| t.workload == Workload::Dev,
    },
    Rule {
        id: "slo-or-hard-isolation",
        when: "an SLO (strict or p95_ms) or isolation: hard",
        mode: Mode::Mig,
        why: "a latency objective or hard isolation: a MIG slice has dedicated SMs, L2 and memory \
              bandwidth, so neighbours cannot move its p95 or touch its memory",
        test: |t, _| t.slo.is_strict() || t.isolation == Isolation::Hard,
    },
    Rule {
        id: "inference",
        when: "workload: inference",
        mode: Mode::Mig,
        why: "multi-tenant inference: MIG gives each tenant steady latency",
        test: |t, _| t.workload == Workload::Inference,
    },
    Rule {
        id: "throughput",
        when: "training or batch without an SLO",
        mode: Mode::TimeSliced,
        why: "throughput work without a latency objective: time-slicing with long slices keeps \
              the whole GPU busy",
        test: |_, _| true,
    },
];

/// The decision for one tenant.
#[derive(Debug, Clone)]
pub struct Decision {
    pub mode: Mode,
    pub rule: &'static str,
    pub reason: String,
    pub rejected: Vec<Rejected>,
    pub warnings: Vec<String>,
    /// MIG profile index per catalog model, for MIG modes (models of the tenant's pool).
    pub profiles: BTreeMap<usize, usize>,
    /// Time-slice policy and preferred slice the tenant would get alone, for time-sliced modes
    /// ([`policy_for`]). What its GPU runs is the planner's choice among its tenants, and the
    /// reason's policy sentence says that.
    pub policy: Option<Policy>,
    pub slice_ms: Option<u32>,
    /// vGPU licence edition needed, for vGPU modes.
    pub licence: Option<&'static str>,
}

fn nominal_gb(p: &carve_model::GiProfile) -> u32 {
    ProfileName::parse(&p.name)
        .map(|n| n.memory_gb)
        .unwrap_or(0)
}

/// The smallest profile of a model that meets the tenant's memory, compute and media needs (or
/// the profile it names).
pub fn profile_for(g: &GpuModel, t: &Tenant) -> Option<usize> {
    if let Some(name) = &t.profile {
        return g.profile_index(name);
    }
    let mem_gb = t.memory_mib.unwrap_or(0) as f64 / 1024.0;
    let compute = t.compute.unwrap_or(1);
    g.profiles
        .iter()
        .enumerate()
        .filter(|(_, p)| {
            let attr_ok = match p.attribute() {
                Attribute::None => true,
                Attribute::Me => t.media,
                _ => false,
            };
            let media_ok = !t.media || p.attribute() == Attribute::Me || p.dec.unwrap_or(0) > 0;
            attr_ok && media_ok && nominal_gb(p) as f64 + 1e-9 >= mem_gb && p.compute >= compute
        })
        .min_by_key(|(_, p)| {
            (
                p.slots,
                p.compute,
                nominal_gb(p),
                p.attribute() == Attribute::Me,
            )
        })
        .map(|(i, _)| i)
}

pub(crate) fn gb(mib: u64) -> String {
    let g = mib as f64 / 1024.0;
    if (g - g.round()).abs() < 1e-9 {
        format!("{} GB", g.round())
    } else {
        format!("{g:.1} GB")
    }
}

/// Time-slice policy and slice preference of a time-sliced tenant.
pub fn policy_for(t: &Tenant) -> (Policy, u32, &'static str) {
    let slice = match t.workload {
        Workload::Desktop | Workload::Interactive => 1,
        Workload::Inference => 2,
        Workload::Dev => 2,
        Workload::Training | Workload::Batch => 16,
    };
    if t.share.is_some() {
        (
            Policy::FixedShare,
            slice,
            "a share is given: fixed share keeps it constant as others come and go",
        )
    } else if matches!(t.workload, Workload::Desktop | Workload::Interactive) {
        (
            Policy::EqualShare,
            slice,
            "an interactive pool: equal share keeps every user responsive",
        )
    } else {
        (
            Policy::BestEffort,
            slice,
            "no share given: best effort lets each tenant use what others leave idle",
        )
    }
}

fn why_not(mode: Mode, chosen: Mode, rule: &str, t: &Tenant, ctx: &Ctx) -> String {
    let mem = t.memory_mib.map(gb).unwrap_or_else(|| "its memory".into());
    match mode {
        Mode::Mig => match chosen {
            Mode::Dedicated => format!("{mem} does not fit a MIG slice short of the whole GPU"),
            Mode::VgpuMig => "vm: true: a plain MIG slice goes to containers or processes, not VMs".into(),
            Mode::VgpuTimeSliced => "vm: true needs a vGPU; and isolation is soft, so a whole slice per VM would cost density".into(),
            _ if !ctx.any_mig() => "no GPU in the fleet supports MIG".into(),
            _ if rule == "dev" || rule == "desktop-interactive" => {
                "a slice would sit idle between bursts and cap each burst at the slice's SMs".into()
            }
            _ => "no SLO or hard isolation asks for it, and a slice caps the job at its SMs while time-slicing can use the whole GPU".into(),
        },
        Mode::VgpuMig => {
            if !t.vm {
                "no VM management needed (vm: false): a hypervisor and vGPU licences would add cost, not isolation".into()
            } else if t.isolation == Isolation::Soft {
                "isolation is soft: a MIG-backed vGPU would take a whole slice per VM".into()
            } else {
                "no hypervisor node with a MIG-capable GPU".into()
            }
        }
        Mode::VgpuTimeSliced => {
            if !t.vm {
                "no VM management needed (vm: false)".into()
            } else {
                "hard isolation asked: time-sliced vGPUs share L2 and memory bandwidth and jitter under noisy neighbours".into()
            }
        }
        Mode::TimeSliced => match chosen {
            Mode::Dedicated => format!("{mem} leaves no room for neighbours on one GPU"),
            Mode::VgpuMig | Mode::VgpuTimeSliced => "vm: true needs a hypervisor's vGPU".into(),
            _ if t.slo.is_strict() => format!(
                "the SLO ({}) would not hold: p95 jitters under noisy neighbours and there is no memory or fault isolation",
                t.slo
            ),
            _ if t.isolation == Isolation::Hard => "hard isolation asked: time-slicing shares memory and faults".into(),
            _ => "latency would jitter with the neighbours' load".into(),
        },
        Mode::Dedicated => match t.memory_mib {
            Some(m) => format!("it needs {} of a GPU: a whole GPU would leave most of it idle", gb(m)),
            None => "a whole GPU would leave most of it idle".into(),
        },
    }
}

/// Decides the mode of one tenant.
pub fn decide(t: &Tenant, catalog: &Catalog, facts: &Facts) -> Decision {
    let ctx = Ctx { catalog, facts };
    let rule = RULES
        .iter()
        .find(|r| (r.test)(t, &ctx))
        .expect("the last rule matches everything");
    let mut mode = rule.mode;
    let mut warnings = Vec::new();
    let mut reason = format!(
        "{}. Rule `{}`: {}.",
        capitalise(rule.why),
        rule.id,
        rule.when
    );

    // What the fleet offers.
    if mode.is_vgpu() && !facts.has_hypervisor {
        let to = if mode == Mode::VgpuMig {
            Mode::Mig
        } else {
            Mode::TimeSliced
        };
        warnings.push(format!(
            "vm: true, but no node is a hypervisor (platform: vsphere): planned as {to} on Kubernetes / bare metal"
        ));
        mode = to;
    } else if !mode.is_vgpu() && !facts.has_host && facts.has_hypervisor {
        let to = if mode.is_mig() || mode == Mode::Dedicated {
            Mode::VgpuMig
        } else {
            Mode::VgpuTimeSliced
        };
        warnings.push(format!("every node is a hypervisor: planned as {to}, a VM"));
        mode = to;
    }
    let mut profiles = BTreeMap::new();
    if mode.is_mig() {
        for &m in facts.models_for(mode) {
            if let Some(p) = profile_for(&catalog.gpus[m], t) {
                profiles.insert(m, p);
            }
        }
        if profiles.is_empty() {
            let to = if mode == Mode::VgpuMig {
                Mode::VgpuTimeSliced
            } else {
                Mode::TimeSliced
            };
            let what = match &t.profile {
                Some(p) => format!("profile {p}"),
                None => format!(
                    "{} of memory{}",
                    t.memory_mib.map(gb).unwrap_or_default(),
                    if t.media { " with a media engine" } else { "" }
                ),
            };
            if facts.models_for(mode).is_empty() {
                warnings.push(
                    "no GPU that supports MIG where this tenant runs: time-sliced instead, with no hardware isolation (carve's memory limits only)".to_string(),
                );
            } else {
                warnings.push(format!(
                    "no MIG profile of the fleet's GPUs offers {what}: time-sliced instead"
                ));
            }
            mode = to;
        }
    }
    if !profiles.is_empty() {
        let list: Vec<String> = profiles
            .iter()
            .map(|(&m, &p)| {
                format!(
                    "{} on {}",
                    catalog.gpus[m].profiles[p].name, catalog.gpus[m].key
                )
            })
            .collect();
        let need = match &t.profile {
            Some(_) => "as named".to_string(),
            None => {
                let mut n = format!(
                    "the smallest with ≥ {} and ≥ {} compute slice(s)",
                    t.memory_mib.map(gb).unwrap_or_default(),
                    t.compute.unwrap_or(1)
                );
                if t.media {
                    n.push_str(" and a media engine");
                }
                n
            }
        };
        reason.push_str(&format!(" Profile: {} ({need}).", list.join(", ")));
    }
    // The policy sentence is the planner's: a GPU's scheduler is known only once its tenants
    // are (`planner`), and the reason says what that scheduler runs.
    let (policy, slice_ms) = if matches!(mode, Mode::TimeSliced | Mode::VgpuTimeSliced) {
        let (p, s, _) = policy_for(t);
        (Some(p), Some(s))
    } else {
        (None, None)
    };
    if mode != rule.mode {
        reason = format!("{reason} Planned as {mode} because the fleet offers no better.");
    }
    let licence = if mode.is_vgpu() {
        Some(if matches!(t.workload, Workload::Desktop) {
            "vWS"
        } else {
            "vCS"
        })
    } else {
        None
    };
    let rejected = Mode::ALL
        .iter()
        .filter(|m| **m != mode)
        .map(|&m| Rejected {
            mode: m,
            why: why_not(m, mode, rule.id, t, &ctx),
        })
        .collect();
    Decision {
        mode,
        rule: rule.id,
        reason,
        rejected,
        warnings,
        profiles,
        policy,
        slice_ms,
        licence,
    }
}

fn capitalise(s: &str) -> String {
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}
