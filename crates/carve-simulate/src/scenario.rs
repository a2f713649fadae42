//! A tenancy and its plan, simulated under each sharing mode side by side:
//! - **as planned**: MIG instances as slices, time-sliced GPUs through carve's scheduler with the
//!   plan's policy and slice, dedicated GPUs whole;
//! - **time-sliced**: on each node, the tenants packed by memory onto the fewest of its GPUs and
//!   sharing them with no policy (best effort), as plain Kubernetes / bare-metal time-slicing does;
//! - **mig**: every replica on the smallest MIG slice that fits it on its GPU's model (a
//!   hypothetical: it does not check the slices fit together);
//! - **mig+time-sliced**: on each GPU, the tenants planned as MIG keep their slices and the
//!   others share one slice, time-sliced inside it (the smallest profile holding their memory) —
//!   the bare-metal counterpart of vGPU on MIG.
//!
//! A tenant's load is split evenly over its replicas; a tenant's figures are those of its worst
//! replica (by p95), with throughput summed.

use crate::{simulate, Arrivals, Load, Placement, Service, Slicing, Tenant, TenantResult};
use carve_model::{Catalog, GpuModel};
use carve_plan::decide::profile_for;
use carve_plan::plan::{GpuMode, Plan, PlannedGpu};
use carve_plan::schedule::{self, ScheduleError};
use carve_plan::tenancy::{ArrivalSpec, LoadSpec, ServiceSpec, Slo, Tenancy};
use carve_timeslice::{Policy, Settings};
use serde::Serialize;
use std::collections::BTreeMap;

pub const MODES: [&str; 4] = ["as planned", "time-sliced", "mig", "mig+time-sliced"];

#[derive(Debug, Clone, Serialize)]
pub struct TenantReport {
    pub name: String,
    /// p95 target from the tenancy file, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slo_p95_ms: Option<f64>,
    /// Offered load, requests per second (open arrivals).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offered_per_s: Option<f64>,
    pub by_mode: BTreeMap<String, TenantResult>,
    /// The mode with the lowest p95 (among those meeting the SLO's throughput).
    pub best: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub duration_s: f64,
    pub seed: u64,
    pub events: u64,
    pub tenants: Vec<TenantReport>,
    /// Jain's index of each mode over tenants' delivered / offered throughput.
    pub fairness: BTreeMap<String, f64>,
    /// The first time-shared GPU of each mode: which GPU, and its first 100 ms of work.
    pub timelines: BTreeMap<String, GpuTimeline>,
}

/// Who held one time-shared GPU when.
#[derive(Debug, Clone, Serialize)]
pub struct GpuTimeline {
    /// The GPU: its node and index in the plan, and its model (under `time-sliced`, the GPU of
    /// its node that the node's tenants were packed onto).
    pub node: String,
    pub gpu: u32,
    pub model: String,
    /// (tenant, start ms, end ms).
    pub segments: crate::Timeline,
}

fn load_of(spec: LoadSpec, replicas: u32) -> Load {
    let r = replicas.max(1) as f64;
    Load {
        arrivals: match spec.arrival {
            ArrivalSpec::Poisson { rate } => Arrivals::Poisson { rate: rate / r },
            ArrivalSpec::Bursty { rate, on_s, off_s } => Arrivals::Bursty {
                rate: rate / r,
                on_s,
                off_s,
            },
            ArrivalSpec::Closed { clients, think_ms } => Arrivals::Closed {
                clients: clients.div_ceil(replicas.max(1)).max(1),
                think_ms,
            },
        },
        work_ms: spec.work_ms,
        service: match spec.service {
            ServiceSpec::Deterministic => Service::Deterministic,
            ServiceSpec::Exponential => Service::Exponential,
            ServiceSpec::Lognormal { cv } => Service::Lognormal { cv },
        },
        memory_bound: spec.memory_bound,
    }
}

/// A MIG profile's share of the GPU's SMs and memory bandwidth.
fn slice_of(model: &GpuModel, profile: usize) -> Placement {
    let p = &model.profiles[profile];
    let full_sm = model.profiles.iter().filter_map(|q| q.sm).max();
    let sm = match (p.sm, full_sm) {
        (Some(a), Some(b)) if b > 0 => a as f64 / b as f64,
        _ => p.compute as f64 / model.compute_slices as f64,
    };
    Placement::Slice {
        sm,
        bandwidth: p.slots as f64 / model.memory_slots as f64,
    }
}

/// Runs every mode. `progress` is called with each mode's name as it starts. Fails when a GPU's
/// planned scheduler settings are invalid (as its scheduler would refuse them).
pub fn run(
    tenancy: &Tenancy,
    plan: &Plan,
    catalog: &Catalog,
    duration_s: f64,
    seed: u64,
    mut progress: impl FnMut(&str),
) -> Result<Report, ScheduleError> {
    let spec: BTreeMap<&str, (LoadSpec, u32)> = tenancy
        .tenants
        .iter()
        .map(|t| {
            (
                t.name.as_str(),
                (
                    t.load.unwrap_or_else(|| LoadSpec::default_for(t.workload)),
                    t.replicas,
                ),
            )
        })
        .collect();
    let tenant_of = |name: &str| tenancy.tenants.iter().find(|t| t.name == name);
    let mut events = 0u64;
    // mode → tenant → replica results
    let mut per: BTreeMap<&str, BTreeMap<String, Vec<TenantResult>>> = BTreeMap::new();
    let mut timelines: BTreeMap<String, GpuTimeline> = BTreeMap::new();
    for (mi, mode) in MODES.iter().enumerate() {
        progress(mode);
        let groups: Vec<(usize, &PlannedGpu, Vec<Member>)> = if *mode == "time-sliced" {
            packed_per_node(plan, tenancy)
        } else {
            plan.gpus
                .iter()
                .enumerate()
                .filter(|(_, g)| g.is_used())
                .map(|(gi, g)| (gi, g, gpu_members(g, catalog.gpu(&g.model).ok())))
                .collect()
        };
        for (gi, g, members) in groups {
            let model = catalog.gpu(&g.model).ok();
            let mut group: Vec<Tenant> = Vec::new();
            for (name, share, planned_slice) in members {
                let Some((ls, reps)) = spec.get(name.as_str()).copied() else {
                    continue;
                };
                let placement = match *mode {
                    "as planned" => match (g.mode, planned_slice, model) {
                        (GpuMode::Mig | GpuMode::VgpuMig, Some(p), Some(m)) => slice_of(m, p),
                        (GpuMode::Dedicated, _, _) => Placement::Slice {
                            sm: 1.0,
                            bandwidth: 1.0,
                        },
                        _ => Placement::TimeShared,
                    },
                    "time-sliced" => Placement::TimeShared,
                    "mig+time-sliced" => match (planned_slice, model) {
                        (Some(p), Some(m)) => slice_of(m, p),
                        _ => Placement::TimeShared,
                    },
                    _ => {
                        let prof = planned_slice.or_else(|| {
                            let (m, t) = (model?, tenant_of(&name)?);
                            profile_for(m, t)
                        });
                        match (prof, model) {
                            (Some(p), Some(m)) => slice_of(m, p),
                            _ => Placement::TimeShared,
                        }
                    }
                };
                group.push(Tenant {
                    name: name.clone(),
                    load: load_of(ls, reps),
                    placement,
                    share: if *mode == "as planned" { share } else { None },
                });
            }
            if group.is_empty() {
                continue;
            }
            // Inside one slice: the smallest profile that holds the time-shared tenants' memory.
            let inside = if *mode == "mig+time-sliced" {
                let need_gb: f64 = group
                    .iter()
                    .filter(|t| t.placement == Placement::TimeShared)
                    .filter_map(|t| tenant_of(&t.name).and_then(|x| x.memory_mib))
                    .map(|m| m as f64 / 1024.0)
                    .sum();
                model.and_then(|m| {
                    m.profiles
                        .iter()
                        .enumerate()
                        .filter(|(_, p)| p.attribute() == carve_model::profile::Attribute::None)
                        .filter(|(_, p)| {
                            carve_model::profile::ProfileName::parse(&p.name)
                                .is_some_and(|n| n.memory_gb as f64 + 1e-9 >= need_gb)
                        })
                        .min_by_key(|(_, p)| (p.slots, p.compute))
                        .map(|(i, _)| match slice_of(m, i) {
                            Placement::Slice { sm, bandwidth } => (sm, bandwidth),
                            Placement::TimeShared => (1.0, 1.0),
                        })
                })
            } else {
                None
            };
            // As planned: the settings the GPU's scheduler runs (`carve_plan::schedule`, the
            // same function the agent and `carve sched` use).
            let settings = match (*mode, &g.scheduler) {
                ("as planned", Some(s)) => {
                    schedule::settings(s).map_err(|error| ScheduleError::Invalid {
                        node: g.node.clone(),
                        gpu: g.index,
                        error,
                    })?
                }
                _ => Settings::default(),
            };
            let slicing = Slicing {
                settings,
                inside,
                ..Slicing::default()
            };
            // Shares only under fixed share, as the schedule keeps them.
            if slicing.settings.policy != Policy::FixedShare {
                for t in &mut group {
                    t.share = None;
                }
            }
            let r = simulate(
                &group,
                &slicing,
                duration_s,
                seed ^ ((gi as u64) << 8) ^ mi as u64,
            )
            .map_err(|error| ScheduleError::Invalid {
                node: g.node.clone(),
                gpu: g.index,
                error,
            })?;
            events += r.events;
            if !r.timeline.is_empty() && !timelines.contains_key(*mode) {
                timelines.insert(
                    mode.to_string(),
                    GpuTimeline {
                        node: g.node.clone(),
                        gpu: g.index,
                        model: g.model.clone(),
                        segments: r.timeline.clone(),
                    },
                );
            }
            for t in r.tenants {
                per.entry(mode)
                    .or_default()
                    .entry(t.name.clone())
                    .or_default()
                    .push(t);
            }
        }
    }
    let mut tenants = Vec::new();
    let mut fair_in: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for t in &tenancy.tenants {
        let (ls, _) = spec[t.name.as_str()];
        let offered = match ls.arrival {
            ArrivalSpec::Poisson { rate } => Some(rate),
            ArrivalSpec::Bursty { rate, on_s, off_s } => Some(rate * on_s / (on_s + off_s)),
            ArrivalSpec::Closed { .. } => None,
        };
        let mut by_mode = BTreeMap::new();
        for mode in MODES {
            let Some(reps) = per.get(mode).and_then(|m| m.get(&t.name)) else {
                continue;
            };
            let mut worst = reps
                .iter()
                .max_by(|a, b| a.p95_ms.total_cmp(&b.p95_ms))
                .expect("at least one replica")
                .clone();
            worst.throughput_per_s = reps.iter().map(|r| r.throughput_per_s).sum();
            worst.requests = reps.iter().map(|r| r.requests).sum();
            if let Some(o) = offered {
                fair_in
                    .entry(mode.to_string())
                    .or_default()
                    .push((worst.throughput_per_s / o).min(1.0));
            }
            by_mode.insert(mode.to_string(), worst);
        }
        let best = by_mode
            .iter()
            .filter(|(_, r)| offered.is_none_or(|o| r.throughput_per_s >= 0.95 * o))
            .min_by(|a, b| a.1.p95_ms.total_cmp(&b.1.p95_ms))
            .or_else(|| {
                by_mode
                    .iter()
                    .max_by(|a, b| a.1.throughput_per_s.total_cmp(&b.1.throughput_per_s))
            })
            .map(|(m, _)| m.clone())
            .unwrap_or_default();
        tenants.push(TenantReport {
            name: t.name.clone(),
            slo_p95_ms: match t.slo {
                Slo::P95Ms(ms) => Some(ms),
                _ => None,
            },
            offered_per_s: offered,
            by_mode,
            best,
        });
    }
    Ok(Report {
        duration_s,
        seed,
        events,
        tenants,
        fairness: fair_in
            .into_iter()
            .map(|(m, v)| (m, crate::jain(&v)))
            .collect(),
        timelines,
    })
}

/// (tenant, share under fixed share, planned MIG profile index).
type Member = (String, Option<f64>, Option<usize>);

/// Time-slicing only: on each node, the replicas of its used GPUs packed first-fit by memory onto
/// the fewest of those GPUs — the density a time-slicing-only deployment would go for.
fn packed_per_node<'a>(
    plan: &'a Plan,
    tenancy: &Tenancy,
) -> Vec<(usize, &'a PlannedGpu, Vec<Member>)> {
    let mem = |name: &str| {
        tenancy
            .tenants
            .iter()
            .find(|t| t.name == name)
            .and_then(|t| t.memory_mib)
            .unwrap_or(0)
    };
    let mut out = Vec::new();
    for n in &plan.nodes {
        let gpus: Vec<(usize, &PlannedGpu)> = plan
            .gpus
            .iter()
            .enumerate()
            .filter(|(_, g)| g.node == n.name && g.is_used())
            .collect();
        let mut reps: Vec<String> = gpus
            .iter()
            .flat_map(|(_, g)| {
                g.instances
                    .iter()
                    .map(|i| i.tenant.clone())
                    .chain(g.shares.iter().map(|s| s.tenant.clone()))
            })
            .collect();
        reps.sort_by_key(|t| std::cmp::Reverse(mem(t)));
        let mut bins: Vec<(u64, Vec<Member>)> = gpus.iter().map(|_| (0, Vec::new())).collect();
        for r in reps {
            let m = mem(&r);
            let k = (0..gpus.len())
                .find(|&k| bins[k].0 + m <= gpus[k].1.memory_mib)
                .unwrap_or_else(|| (0..gpus.len()).min_by_key(|&k| bins[k].0).unwrap_or(0));
            if let Some(b) = bins.get_mut(k) {
                b.0 += m;
                b.1.push((r, None, None));
            }
        }
        for ((gi, g), (_, members)) in gpus.into_iter().zip(bins) {
            if !members.is_empty() {
                out.push((gi, g, members));
            }
        }
    }
    out
}

/// Who runs on a GPU.
fn gpu_members(g: &PlannedGpu, model: Option<&GpuModel>) -> Vec<Member> {
    let mut out = Vec::new();
    for i in &g.instances {
        out.push((
            i.tenant.clone(),
            None,
            model.and_then(|m| m.profile_index(&i.profile)),
        ));
    }
    for s in &g.shares {
        out.push((s.tenant.clone(), Some(s.share), None));
    }
    out
}
