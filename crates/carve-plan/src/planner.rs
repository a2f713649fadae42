//! From a tenancy to a plan: decide every tenant's mode, then fill GPUs pool by pool (Kubernetes /
//! bare-metal nodes; hypervisor nodes) in this order: dedicated GPUs, time-sliced GPUs, MIG.
//!
//! Two things are said only once the GPUs are filled, from what is applied:
//! - a time-sliced tenant's policy sentence, from the [`PlannedScheduler`] of each GPU it runs on
//!   (the strongest policy and the shortest slice the GPU's tenants ask for), saying when that is
//!   not what the tenant would get alone, and which neighbours made it so;
//! - when something has no room, the advice ([`Plan::shortfall`]): the pool is planned again with
//!   more GPUs of the fleet's models, and a count is advised only when that plan has room for
//!   every tenant of the pool. A tenant that not even a GPU of its own holds is
//!   [`PlannedTenant::unplaceable`], with the reason, and left out of the advice. The search is
//!   bounded ([`ADVICE_MAX_GPUS`]), and every plan in it by solver nodes: no clock.

use crate::decide::{self, Decision, Facts};
use crate::pack::{self, Demand, Placer, PoolGpu};
use crate::plan::*;
use crate::tenancy::{FleetGpu, FleetNode, Tenancy, Tenant, Workload};
use carve_model::Catalog;
use std::collections::{BTreeMap, HashMap};

/// Most tenant replicas time-sharing one GPU.
pub const MAX_TIME_SLICED_PER_GPU: usize = 32;

/// The vGPU scheduler's default slice above this many vGPUs is 1 ms (2 ms up to it).
const VGPU_DENSE: usize = 8;

/// The most GPUs of one model the advice adds to a pool when it plans again: one node's worth
/// ([`carve_model::MAX_GPUS_PER_NODE`]). Per model (and, when no one model does, for a mix of
/// all of them) the search doubles the count from 1 until the pool has room, then halves the
/// gap: about 2 × log2(this) plans, each bounded by solver nodes.
pub const ADVICE_MAX_GPUS: u32 = carve_model::MAX_GPUS_PER_NODE;

/// The node that holds the GPUs the advice adds, after the fleet's nodes.
const ADVICE_NODE: &str = "(more)";

/// What a decision depends on.
#[derive(PartialEq, Eq, Hash)]
struct DecisionKey {
    workload: Workload,
    memory_mib: Option<u64>,
    compute: Option<u8>,
    profile: Option<String>,
    share: Option<u64>,
    slo: (u8, u64),
    hard: bool,
    vm: bool,
    media: bool,
}

impl DecisionKey {
    fn of(t: &Tenant) -> DecisionKey {
        use crate::tenancy::{Isolation, Slo};
        DecisionKey {
            workload: t.workload,
            memory_mib: t.memory_mib,
            compute: t.compute,
            profile: t.profile.clone(),
            share: t.share.map(f64::to_bits),
            slo: match t.slo {
                Slo::Strict => (0, 0),
                Slo::Relaxed => (1, 0),
                Slo::P95Ms(ms) => (2, ms.to_bits()),
            },
            hard: t.isolation == Isolation::Hard,
            vm: t.vm,
            media: t.media,
        }
    }
}

/// Decides every tenant. Tenants that differ only in name, replicas and spread get the same
/// decision: decided once.
fn decide_all(tenants: &[Tenant], catalog: &Catalog, facts: &Facts) -> Vec<Decision> {
    let mut seen: HashMap<DecisionKey, Decision> = HashMap::new();
    tenants
        .iter()
        .map(|t| {
            seen.entry(DecisionKey::of(t))
                .or_insert_with(|| decide::decide(t, catalog, facts))
                .clone()
        })
        .collect()
}

/// The fleet's GPUs as the planner fills them, in fleet order.
struct Fleet {
    gpus: Vec<PlannedGpu>,
    /// On a hypervisor node.
    hyp: Vec<bool>,
    /// Catalog model, for MIG-capable GPUs.
    model_of: Vec<Option<usize>>,
}

impl Fleet {
    fn of(nodes: &[FleetNode]) -> Fleet {
        let mut f = Fleet {
            gpus: Vec::new(),
            hyp: Vec::new(),
            model_of: Vec::new(),
        };
        for node in nodes {
            for (i, g) in node.gpus.iter().enumerate() {
                f.gpus.push(PlannedGpu {
                    node: node.name.clone(),
                    index: i as u32,
                    model: g.name.clone(),
                    memory_mib: g.memory_mib,
                    mig_capable: g.model.is_some(),
                    mode: GpuMode::Unused,
                    instances: Vec::new(),
                    shares: Vec::new(),
                    scheduler: None,
                });
                f.hyp.push(node.platform.is_hypervisor());
                f.model_of.push(g.model);
            }
        }
        f
    }
}

/// What filling the pools gives besides the GPUs, per tenant and in all.
struct Packing {
    placements: Vec<Vec<Placement>>,
    unplaced: Vec<u32>,
    warnings: Vec<String>,
    stats: PackingStats,
}

impl Packing {
    fn new(tenants: usize) -> Packing {
        Packing {
            placements: vec![Vec::new(); tenants],
            unplaced: vec![0; tenants],
            warnings: Vec::new(),
            stats: PackingStats {
                dedicated_gpus: 0,
                time_sliced_gpus: 0,
                mig_gpus: 0,
                mig_optimal: true,
                mig_lower_bound: 0,
                time_sliced_lower_bound: 0,
                solver_nodes: 0,
            },
        }
    }
}

/// Plans a tenancy. Deterministic: the same tenancy and catalog give the same plan, on any
/// machine (no clock is read; the solver's work is bounded by nodes, not time).
pub fn plan(tenancy: &Tenancy, catalog: &Catalog) -> Plan {
    let facts = Facts::of(tenancy);
    let decisions = decide_all(&tenancy.tenants, catalog, &facts);
    let mut fleet = Fleet::of(&tenancy.nodes);
    let mut placer = Placer::new(catalog);
    let mut packing = Packing::new(tenancy.tenants.len());
    for hypervisor in [false, true] {
        fill_pool(
            &tenancy.tenants,
            catalog,
            &decisions,
            &mut fleet,
            hypervisor,
            &mut placer,
            &mut packing,
        );
    }
    let Packing {
        mut placements,
        unplaced,
        mut warnings,
        stats,
    } = packing;
    let advice = if unplaced.iter().any(|&n| n > 0) {
        advise(tenancy, catalog, &decisions, &unplaced, &mut placer)
    } else {
        Advice {
            shortfall: Vec::new(),
            unplaceable: vec![None; tenancy.tenants.len()],
        }
    };
    let policy = policy_sentences(&tenancy.tenants, &decisions, &fleet.gpus);
    let Fleet { gpus, model_of, .. } = fleet;

    // Tenants.
    let node_by_name: std::collections::HashMap<&str, &crate::tenancy::FleetNode> =
        tenancy.nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    let mut tenants = Vec::new();
    for (ti, t) in tenancy.tenants.iter().enumerate() {
        let d = &decisions[ti];
        let mut w = d.warnings.clone();
        let mut ps = std::mem::take(&mut placements[ti]);
        ps.sort_by_key(|p| p.replica);
        let on_k8s = ps.iter().any(|p| {
            node_by_name
                .get(p.node.as_str())
                .is_some_and(|n| n.platform == Platform::Kubernetes)
        });
        let resource = on_k8s.then(|| match d.mode {
            Mode::Mig => {
                let prof = ps
                    .iter()
                    .find_map(|p| p.profile.clone())
                    .unwrap_or_default();
                format!("nvidia.com/mig-{}", prof.replace('+', "."))
            }
            // Its own resource: the node agent tells tenants apart by it, so that each pod runs
            // under its tenant's share and memory limit.
            Mode::TimeSliced => tenant_resource(&t.name),
            _ => "nvidia.com/gpu".to_string(),
        });
        if let Some(ed) = d.licence {
            let mut missing: Vec<&str> = ps
                .iter()
                .filter_map(|p| node_by_name.get(p.node.as_str()).copied())
                .filter(|n| !licence_covers(catalog, n.licence.as_deref(), ed))
                .map(|n| n.name.as_str())
                .collect();
            missing.sort_unstable();
            missing.dedup();
            for n in missing {
                w.push(format!(
                    "node {n} has no licence that covers this vGPU ({ed} needed)"
                ));
            }
        }
        if unplaced[ti] > 0 {
            w.push(match &advice.unplaceable[ti] {
                Some(why) => format!(
                    "{} of {} replicas found no room, and no GPU of this fleet's models holds one: {why}",
                    unplaced[ti], t.replicas
                ),
                None => format!("{} of {} replicas found no room", unplaced[ti], t.replicas),
            });
        }
        tenants.push(PlannedTenant {
            name: t.name.clone(),
            workload: t.workload.as_str().into(),
            mode: d.mode,
            rule: d.rule.into(),
            reason: format!("{}{}", d.reason, policy[ti]),
            rejected: d.rejected.clone(),
            replicas: t.replicas,
            memory_mib: t.memory_mib.unwrap_or(0),
            share: t.share,
            profiles: d
                .profiles
                .iter()
                .map(|(&m, &p)| {
                    (
                        catalog.gpus[m].key.clone(),
                        catalog.gpus[m].profiles[p].name.clone(),
                    )
                })
                .collect(),
            spread: t.spread,
            unplaced: unplaced[ti],
            unplaceable: advice.unplaceable[ti].clone(),
            resource,
            licence: d.licence.map(str::to_string),
            warnings: w,
        });
    }
    for t in &tenants {
        for w in &t.warnings {
            warnings.push(format!("{}: {w}", t.name));
        }
    }
    for (g, m) in gpus.iter().zip(&model_of) {
        if let Some(m) = m {
            let m = &catalog.gpus[*m];
            if !m.is_confirmed() && g.is_used() {
                let msg = format!(
                    "{} data is not fully confirmed: {}",
                    m.key,
                    m.unconfirmed.join("; ")
                );
                if !warnings.contains(&msg) {
                    warnings.push(msg);
                }
            }
        }
    }
    let gpus_used = gpus.iter().filter(|g| g.is_used()).count() as u32;
    let lower = stats.dedicated_gpus + stats.time_sliced_lower_bound + stats.mig_lower_bound;
    let complete = unplaced.iter().all(|&n| n == 0);
    Plan {
        version: PLAN_VERSION,
        nodes: tenancy
            .nodes
            .iter()
            .map(|n| PlannedNode {
                name: n.name.clone(),
                platform: n.platform,
                licence: n.licence.clone(),
            })
            .collect(),
        gpus,
        tenants,
        gpus_used,
        lower_bound_gpus: lower.min(gpus_used),
        optimal: complete && gpus_used == lower,
        complete,
        shortfall: advice.shortfall,
        stats,
        warnings,
    }
}

/// Fills one pool's free GPUs: dedicated GPUs, then time-sliced GPUs, then MIG.
fn fill_pool(
    tenants: &[Tenant],
    catalog: &Catalog,
    decisions: &[Decision],
    fleet: &mut Fleet,
    hypervisor: bool,
    placer: &mut Placer,
    out: &mut Packing,
) {
    let in_pool = |m: Mode| m.is_vgpu() == hypervisor;

    // 1. Dedicated: a whole GPU per replica, largest first.
    let mut ded: Vec<(usize, u32, u64)> = Vec::new();
    for (ti, t) in tenants.iter().enumerate() {
        let d = &decisions[ti];
        if d.mode == Mode::Dedicated && in_pool(d.mode) {
            for r in 0..t.replicas {
                ded.push((ti, r, t.memory_mib.unwrap_or(0)));
            }
        }
    }
    ded.sort_by_key(|&(ti, r, m)| (std::cmp::Reverse(m), ti, r));
    for (ti, r, mem) in ded {
        let gpus = &fleet.gpus;
        let pick = free_gpus(gpus, &fleet.hyp, hypervisor)
            .filter(|&p| gpus[p].memory_mib >= mem)
            .min_by_key(|&p| (gpus[p].mig_capable, gpus[p].memory_mib, p));
        match pick {
            Some(p) => {
                let g = &mut fleet.gpus[p];
                g.mode = GpuMode::Dedicated;
                g.shares.push(PlannedShare {
                    tenant: tenants[ti].name.clone(),
                    replica: r,
                    share: 1.0,
                    memory_mib: g.memory_mib,
                    vgpu_type: None,
                });
                out.placements[ti].push(Placement {
                    replica: r,
                    node: g.node.clone(),
                    gpu: g.index,
                    profile: None,
                    start: None,
                });
                out.stats.dedicated_gpus += 1;
            }
            None => out.unplaced[ti] += 1,
        }
    }

    // 2. Time-sliced GPUs.
    let ts_mode = if hypervisor {
        Mode::VgpuTimeSliced
    } else {
        Mode::TimeSliced
    };
    let (used, bound) = time_slice(tenants, catalog, decisions, ts_mode, fleet, out);
    out.stats.time_sliced_gpus += used;
    out.stats.time_sliced_lower_bound += bound;

    // 3. MIG on what is left.
    let mig_mode = if hypervisor { Mode::VgpuMig } else { Mode::Mig };
    let demands: Vec<Demand> = tenants
        .iter()
        .enumerate()
        .filter(|(ti, _)| decisions[*ti].mode == mig_mode)
        .map(|(ti, t)| Demand {
            tenant: ti,
            replicas: t.replicas,
            spread: t.spread,
            profiles: decisions[ti].profiles.clone(),
        })
        .collect();
    if demands.is_empty() {
        return;
    }
    let pool: Vec<PoolGpu> = free_gpus(&fleet.gpus, &fleet.hyp, hypervisor)
        .filter_map(|p| fleet.model_of[p].map(|m| (p, m)))
        .collect();
    let packed = pack::pack(catalog, &pool, &demands, placer);
    out.stats.mig_optimal &= packed.optimal;
    out.stats.solver_nodes += packed.nodes;
    out.stats.mig_lower_bound += packed.lower_bound;
    out.stats.mig_gpus += packed.gpus.len() as u32;
    for (t, n) in &packed.unplaced {
        out.unplaced[*t] += n;
    }
    for (pos, given) in packed.gpus {
        let model = &catalog.gpus[fleet.model_of[pos].expect("MIG GPUs have a model")];
        let g = &mut fleet.gpus[pos];
        g.mode = if hypervisor {
            GpuMode::VgpuMig
        } else {
            GpuMode::Mig
        };
        for gv in given {
            let p = &model.profiles[gv.instance.profile];
            let vgpu_type = if hypervisor {
                model
                    .vgpu
                    .iter()
                    .find(|v| v.profile.as_deref() == Some(p.name.as_str()))
                    .map(|v| v.name.clone())
            } else {
                None
            };
            g.instances.push(PlannedInstance {
                profile: p.name.clone(),
                start: gv.instance.start,
                size: p.slots,
                tenant: tenants[gv.tenant].name.clone(),
                replica: gv.replica,
                vgpu_type,
            });
            out.placements[gv.tenant].push(Placement {
                replica: gv.replica,
                node: g.node.clone(),
                gpu: g.index,
                profile: Some(p.name.clone()),
                start: Some(gv.instance.start),
            });
        }
    }
}

/// The policy of a GPU whose tenants ask for two: a share anywhere makes it fixed share (the
/// others split what is left equally), an interactive tenant makes it equal share.
fn stronger(a: Policy, b: Policy) -> Policy {
    use Policy::*;
    match (a, b) {
        (FixedShare, _) | (_, FixedShare) => FixedShare,
        (EqualShare, _) | (_, EqualShare) => EqualShare,
        _ => BestEffort,
    }
}

fn licence_covers(catalog: &Catalog, have: Option<&str>, need: &str) -> bool {
    let Some(have) = have else { return false };
    if have.eq_ignore_ascii_case(need) {
        return true;
    }
    // vWS also licenses C-series (compute) vGPUs.
    let series = if need == "vWS" { "Q" } else { "C" };
    catalog
        .edition(have)
        .is_ok_and(|e| e.series.iter().any(|s| s == series))
}

fn free_gpus<'a>(
    gpus: &'a [PlannedGpu],
    hyp: &'a [bool],
    hypervisor: bool,
) -> impl Iterator<Item = usize> + 'a {
    (0..gpus.len()).filter(move |&p| hyp[p] == hypervisor && gpus[p].mode == GpuMode::Unused)
}

fn rmpvmrl(policy: Policy, slice_ms: u32) -> String {
    match policy {
        Policy::BestEffort => "0x00".into(),
        Policy::EqualShare => format!("0x00{slice_ms:02X}0001"),
        Policy::FixedShare => format!("0x00{slice_ms:02X}0011"),
    }
}

/// One replica waiting for a time-sliced GPU.
struct Item {
    tenant: usize,
    replica: u32,
    mem: u64,
    share: Option<f64>,
    spread: bool,
    slice: u32,
    /// vGPU type (name, max per GPU, catalog model) for hypervisor tenants.
    vgpu: Option<(String, u32, usize)>,
}

struct Bin {
    pos: usize,
    policy: Policy,
    vgpu: Option<String>,
    mem: u64,
    share: f64,
    items: Vec<usize>,
}

/// The smallest time-sliced vGPU type of a model for a tenant: framebuffer ≥ memory, and for a
/// share, a fixed share (1 / max per GPU) at least the share.
fn vgpu_type(catalog: &Catalog, model: usize, t: &Tenant) -> Option<(String, u32)> {
    let mem_gb = t.memory_mib.unwrap_or(0) as f64 / 1024.0;
    catalog.gpus[model]
        .vgpu
        .iter()
        .filter(|v| v.kind == carve_model::catalog::VgpuKind::TimeSliced)
        .filter(|v| v.framebuffer_gb as f64 + 1e-9 >= mem_gb)
        .filter(|v| t.share.is_none_or(|s| 1.0 / v.max as f64 + 1e-9 >= s))
        .min_by_key(|v| v.framebuffer_gb)
        .map(|v| (v.name.clone(), v.max))
}

/// Fills the pool's free GPUs with the time-sliced replicas of `mode`; returns the GPUs used and
/// their lower bound.
fn time_slice(
    tenants: &[Tenant],
    catalog: &Catalog,
    decisions: &[Decision],
    mode: Mode,
    fleet: &mut Fleet,
    out: &mut Packing,
) -> (u32, u32) {
    let Fleet {
        gpus,
        hyp,
        model_of,
    } = fleet;
    let (gpus, hyp, model_of) = (gpus.as_mut_slice(), hyp.as_slice(), model_of.as_slice());
    let (placements, unplaced, warnings) = (
        out.placements.as_mut_slice(),
        out.unplaced.as_mut_slice(),
        &mut out.warnings,
    );
    let hypervisor = mode.is_vgpu();
    // Free GPUs of the pool, by model, for choosing vGPU types where GPUs are plentiful.
    let mut free_by_model: BTreeMap<Option<usize>, usize> = BTreeMap::new();
    for p in free_gpus(gpus, hyp, hypervisor) {
        *free_by_model.entry(model_of[p]).or_default() += 1;
    }
    let mut groups: BTreeMap<(u8, Option<String>), Vec<Item>> = BTreeMap::new();
    let mut policies: BTreeMap<(u8, Option<String>), Policy> = BTreeMap::new();
    for (ti, t) in tenants.iter().enumerate() {
        let d = &decisions[ti];
        if d.mode != mode {
            continue;
        }
        let policy = d.policy.unwrap_or(Policy::BestEffort);
        let vgpu = if hypervisor {
            let mut best: Option<(String, u32, usize)> = None;
            let mut best_free = 0;
            for (&m, &n) in &free_by_model {
                if let Some(m) = m {
                    if let Some((name, max)) = vgpu_type(catalog, m, t) {
                        if best.is_none() || n > best_free {
                            best = Some((name, max, m));
                            best_free = n;
                        }
                    }
                }
            }
            if best.is_none() {
                warnings.push(format!(
                    "{}: no time-sliced vGPU type of the hypervisor GPUs fits {} GB{}; sized by memory only, pick the type by hand",
                    t.name,
                    t.memory_mib.unwrap_or(0) / 1024,
                    t.share.map(|s| format!(" at share {s}")).unwrap_or_default()
                ));
            }
            best
        } else {
            None
        };
        // vGPUs: one type and one policy per GPU (the hypervisor's rule). carve's scheduler:
        // one slice class per GPU (short for latency, long for throughput), policies mixed.
        let key = match &vgpu {
            Some(v) => (
                match policy {
                    Policy::FixedShare => 0,
                    Policy::EqualShare => 1,
                    Policy::BestEffort => 2,
                },
                Some(v.0.clone()),
            ),
            None => (u8::from(d.slice_ms.unwrap_or(2) > 2) + 3, None),
        };
        let merged = match policies.get(&key) {
            None => policy,
            Some(p) => stronger(*p, policy),
        };
        policies.insert(key.clone(), merged);
        let items = groups.entry(key).or_default();
        for r in 0..t.replicas {
            items.push(Item {
                tenant: ti,
                replica: r,
                mem: t.memory_mib.unwrap_or(0),
                share: t.share,
                spread: t.spread,
                slice: d.slice_ms.unwrap_or(2),
                vgpu: vgpu.clone(),
            });
        }
    }
    let mut used = 0u32;
    let mut bound = 0u32;
    for (key, mut items) in groups {
        let policy = policies[&key];
        items.sort_by_key(|i| (std::cmp::Reverse(i.mem), i.tenant, i.replica));
        // Lower bound for the group.
        let max_mem = free_gpus(gpus, hyp, hypervisor)
            .map(|p| gpus[p].memory_mib)
            .max()
            .unwrap_or(1)
            .max(1);
        let sum_mem: u64 = items.iter().map(|i| i.mem).sum();
        let sum_share: f64 = items.iter().filter_map(|i| i.share).sum();
        let per_gpu = items
            .first()
            .and_then(|i| i.vgpu.as_ref().map(|v| v.1 as usize))
            .unwrap_or(MAX_TIME_SLICED_PER_GPU)
            .max(1);
        let spread_max = items
            .iter()
            .filter(|i| i.spread)
            .map(|i| tenants[i.tenant].replicas)
            .max()
            .unwrap_or(0) as u64;
        let b = sum_mem
            .div_ceil(max_mem)
            .max((sum_share - 1e-9).ceil().max(0.0) as u64)
            .max((items.len() as u64).div_ceil(per_gpu as u64))
            .max(spread_max);
        bound += b as u32;

        let mut bins: Vec<Bin> = Vec::new();
        for (ii, it) in items.iter().enumerate() {
            let fits = |b: &Bin, gpus: &[PlannedGpu]| {
                let g = &gpus[b.pos];
                let count_ok = b.items.len() < per_gpu;
                let mem_ok = b.mem + it.mem <= g.memory_mib;
                // Shares given add up to at most 1, leaving 5% for each tenant without one.
                let unshared = b
                    .items
                    .iter()
                    .filter(|&&j| items[j].share.is_none())
                    .count()
                    + usize::from(it.share.is_none());
                let share_ok =
                    b.share + it.share.unwrap_or(0.0) + 0.05 * unshared as f64 <= 1.0 + 1e-9;
                let spread_ok =
                    !it.spread || !b.items.iter().any(|&j| items[j].tenant == it.tenant);
                count_ok && mem_ok && share_ok && spread_ok
            };
            let found = bins.iter().position(|b| fits(b, gpus));
            let bi = match found {
                Some(bi) => bi,
                None => {
                    // Open a GPU: GPUs without MIG first, then the model with most GPUs free.
                    let mut free_count: BTreeMap<Option<usize>, usize> = BTreeMap::new();
                    for p in free_gpus(gpus, hyp, hypervisor) {
                        *free_count.entry(model_of[p]).or_default() += 1;
                    }
                    let pick = free_gpus(gpus, hyp, hypervisor)
                        .filter(|&p| gpus[p].memory_mib >= it.mem)
                        .filter(|&p| it.vgpu.as_ref().is_none_or(|v| model_of[p] == Some(v.2)))
                        .min_by_key(|&p| {
                            (
                                gpus[p].mig_capable,
                                std::cmp::Reverse(free_count[&model_of[p]]),
                                p,
                            )
                        });
                    let Some(p) = pick else {
                        unplaced[it.tenant] += 1;
                        continue;
                    };
                    gpus[p].mode = if hypervisor {
                        GpuMode::VgpuTimeSliced
                    } else {
                        GpuMode::TimeSliced
                    };
                    bins.push(Bin {
                        pos: p,
                        policy,
                        vgpu: it.vgpu.as_ref().map(|v| v.0.clone()),
                        mem: 0,
                        share: 0.0,
                        items: Vec::new(),
                    });
                    bins.len() - 1
                }
            };
            let b = &mut bins[bi];
            b.mem += it.mem;
            b.share += it.share.unwrap_or(0.0);
            b.items.push(ii);
        }
        used += bins.len() as u32;
        for mut b in bins {
            let n = b.items.len();
            // The GPU's policy follows what its tenants ask.
            if b.vgpu.is_none() {
                b.policy = b
                    .items
                    .iter()
                    .map(|&i| {
                        decisions[items[i].tenant]
                            .policy
                            .unwrap_or(Policy::BestEffort)
                    })
                    .fold(Policy::BestEffort, stronger);
            }
            let unshared = b
                .items
                .iter()
                .filter(|&&i| items[i].share.is_none())
                .count();
            let rest = (1.0 - b.share).max(0.0) / unshared.max(1) as f64;
            let pref = b.items.iter().map(|&i| items[i].slice).min().unwrap_or(2);
            let dev_only = b
                .items
                .iter()
                .all(|&i| tenants[items[i].tenant].workload == Workload::Dev);
            // Many dev replicas: vGPU's default slice for more than eight, 1 ms.
            let dense = dev_only && n > VGPU_DENSE && pref > 1;
            let slice = if dense { 1 } else { pref };
            let work_conserving = crate::schedule::WORK_CONSERVING && !hypervisor;
            let g = &mut gpus[b.pos];
            let who = |keep: &dyn Fn(&Item) -> bool| {
                names(
                    b.items
                        .iter()
                        .map(|&i| &items[i])
                        .filter(|it| keep(it))
                        .map(|it| tenants[it.tenant].name.as_str()),
                )
            };
            let mut reason = match b.policy {
                Policy::FixedShare if b.vgpu.is_some() => format!(
                    "fixed share: each of its {n} vGPUs gets 1/{per_gpu} of the GPU, its type's share"
                ),
                Policy::FixedShare if unshared > 0 => {
                    let (given, k) = who(&|it| it.share.is_some());
                    let (rest, _) = who(&|it| it.share.is_none());
                    format!(
                        "fixed share: {given} give{} a share, and {rest} without one split the rest",
                        if k == 1 { "s" } else { "" }
                    )
                }
                Policy::FixedShare => {
                    let (given, _) = who(&|_| true);
                    format!("fixed share: every tenant gives its share ({given})")
                }
                Policy::EqualShare => {
                    let (pools, k) = who(&|it| {
                        decisions[it.tenant].policy == Some(Policy::EqualShare)
                    });
                    format!(
                        "equal share among its {n} replicas: {pools} {}",
                        if k == 1 {
                            "is an interactive pool"
                        } else {
                            "are interactive pools"
                        }
                    )
                }
                Policy::BestEffort => {
                    "best effort: no tenant gives a share or is interactive".to_string()
                }
            };
            reason.push_str(&format!(
                "; {slice} ms slices ({})",
                if dense {
                    format!(
                        "{n} dev replicas: vGPU's default above {VGPU_DENSE}, for responsiveness"
                    )
                } else if slice <= 2 {
                    "short, for responsiveness".to_string()
                } else {
                    "long, for throughput".to_string()
                }
            ));
            reason.push_str(match (b.policy, work_conserving) {
                (Policy::BestEffort, _) => {
                    "; work-conserving by nature: turns go round the tenants with work"
                }
                (_, true) => "; work-conserving: an idle tenant's time goes to those with work",
                (_, false) => {
                    "; not work-conserving: an idle tenant's time stays idle, so each share holds as others come and go"
                }
            });
            g.scheduler = Some(PlannedScheduler {
                policy: b.policy,
                slice_ms: slice,
                work_conserving,
                reason,
                rmpvmrl: hypervisor.then(|| rmpvmrl(b.policy, slice)),
            });
            for &i in &b.items {
                let it = &items[i];
                let share = match b.policy {
                    // A vGPU's fixed share is set by its type: 1 / (most per GPU).
                    Policy::FixedShare if b.vgpu.is_some() => 1.0 / per_gpu as f64,
                    Policy::FixedShare => it.share.unwrap_or(rest),
                    _ => 1.0 / n as f64,
                };
                g.shares.push(PlannedShare {
                    tenant: tenants[it.tenant].name.clone(),
                    replica: it.replica,
                    share,
                    memory_mib: it.mem,
                    vgpu_type: b.vgpu.clone(),
                });
                placements[it.tenant].push(Placement {
                    replica: it.replica,
                    node: g.node.clone(),
                    gpu: g.index,
                    profile: None,
                    start: None,
                });
            }
        }
    }
    (used, bound)
}

/// Names, each once, in order: at most three, then how many more; and how many there are.
fn names<'a>(all: impl IntoIterator<Item = &'a str>) -> (String, usize) {
    let mut v: Vec<&str> = Vec::new();
    for n in all {
        if !v.contains(&n) {
            v.push(n);
        }
    }
    (list(&v), v.len())
}

/// `a`, `a and b`, `a, b and c`, `a, b, c and 4 more`.
fn list<S: AsRef<str>>(v: &[S]) -> String {
    let shown: Vec<&str> = v.iter().take(3).map(AsRef::as_ref).collect();
    match (v.len(), shown.split_last()) {
        (_, None) => String::new(),
        (1, Some((last, _))) => last.to_string(),
        (n, Some((last, rest))) if n <= 3 => format!("{} and {last}", rest.join(", ")),
        (n, _) => format!("{} and {} more", shown.join(", "), n - 3),
    }
}

/// A policy in words: `best effort`.
fn words(p: Policy) -> String {
    p.as_str().replace('-', " ")
}

/// Each tenant's policy sentence, rendered from the scheduler of each GPU its replicas run on
/// (empty for tenants that are not time-sliced): `Policy <policy>, slice <n> ms` and why; where
/// that is not what the tenant would get alone ([`decide::policy_for`]), the neighbours that made
/// it so and what it would get alone.
fn policy_sentences(
    tenants: &[Tenant],
    decisions: &[Decision],
    gpus: &[PlannedGpu],
) -> Vec<String> {
    let index: HashMap<&str, usize> = tenants
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    // Per tenant, the GPUs (positions) whose scheduler runs its replicas.
    let mut on: Vec<Vec<usize>> = vec![Vec::new(); tenants.len()];
    for (p, g) in gpus.iter().enumerate() {
        if g.scheduler.is_none() {
            continue;
        }
        for s in &g.shares {
            if let Some(&ti) = index.get(s.tenant.as_str()) {
                if on[ti].last() != Some(&p) {
                    on[ti].push(p);
                }
            }
        }
    }
    let own = |ti: usize| decisions[ti].policy.zip(decisions[ti].slice_ms);
    tenants
        .iter()
        .enumerate()
        .map(|(ti, t)| {
            let Some((own_policy, own_slice)) = own(ti) else {
                return String::new();
            };
            let (_, _, why) = decide::policy_for(t);
            let alone = format!(
                "alone it would run {} with {own_slice} ms slices ({why})",
                words(own_policy)
            );
            if on[ti].is_empty() {
                return format!(" It found no GPU; {alone}.");
            }
            // Its GPUs, grouped by what their schedulers run.
            let mut groups: Vec<((Policy, u32), Vec<usize>)> = Vec::new();
            for &p in &on[ti] {
                let sch = gpus[p].scheduler.as_ref().expect("GPUs with a scheduler");
                let k = (sch.policy, sch.slice_ms);
                match groups.iter_mut().find(|g| g.0 == k) {
                    Some(g) => g.1.push(p),
                    None => groups.push((k, vec![p])),
                }
            }
            let mut out = String::new();
            for ((policy, slice), ps) in &groups {
                out.push_str(&format!(" Policy {policy}, slice {slice} ms"));
                if groups.len() > 1 {
                    let at: Vec<String> = ps
                        .iter()
                        .map(|&p| format!("{}/{}", gpus[p].node, gpus[p].index))
                        .collect();
                    out.push_str(&format!(" on {}", list(&at)));
                }
                if (*policy, *slice) == (own_policy, own_slice) {
                    out.push_str(&format!(": {why}."));
                    continue;
                }
                // The neighbours that ask for what the GPU runs, and whether the slice is the
                // dense default instead.
                let mut asked: Vec<usize> = Vec::new();
                let mut dense = false;
                for &p in ps {
                    let mut slice_asked = false;
                    for s in &gpus[p].shares {
                        let Some(&o) = index.get(s.tenant.as_str()) else {
                            continue;
                        };
                        let Some((op, os)) = own(o) else { continue };
                        let raises = *policy != own_policy && op == *policy;
                        let sets = *slice != own_slice && os == *slice;
                        slice_asked |= os == *slice;
                        if o != ti && (raises || sets) && !asked.contains(&o) {
                            asked.push(o);
                        }
                    }
                    dense |= *slice != own_slice && !slice_asked;
                }
                let items: Vec<String> = asked
                    .iter()
                    .map(|&o| {
                        let (op, os) = own(o).expect("time-sliced");
                        let mut parts = Vec::new();
                        if *policy != own_policy && op == *policy {
                            parts.push(match op {
                                Policy::FixedShare => "gives a share: fixed share",
                                Policy::EqualShare => "an interactive pool: equal share",
                                Policy::BestEffort => "best effort",
                            });
                        }
                        let slices = format!("{os} ms slices");
                        if *slice != own_slice && os == *slice {
                            parts.push(&slices);
                        }
                        format!("{} ({})", tenants[o].name, parts.join(", "))
                    })
                    .collect();
                let mut causes = Vec::new();
                let gpu = if ps.len() == 1 { "the GPU" } else { "the GPUs" };
                if !items.is_empty() {
                    causes.push(format!("it shares {gpu} with {}", list(&items)));
                }
                if dense {
                    causes.push(format!(
                        "more than {VGPU_DENSE} dev replicas share {gpu}, and 1 ms is vGPU's default slice above {VGPU_DENSE}"
                    ));
                }
                out.push_str(&format!(
                    ": {}, as {}; {alone}.",
                    if ps.len() == 1 {
                        "its GPU's"
                    } else {
                        "its GPUs'"
                    },
                    causes.join(", and ")
                ));
            }
            out
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Advice: planning again with more GPUs.

/// What a partial plan says about the room it lacks.
struct Advice {
    shortfall: Vec<Shortfall>,
    /// Per tenant: why no GPU of the fleet's models holds one replica.
    unplaceable: Vec<Option<String>>,
}

/// For each pool with a tenant waiting: which waiting tenants no GPU of the fleet's models holds
/// at all (alone on a fresh GPU of any of them), then, for the others, per GPU model of the fleet
/// the fewest more GPUs with which the pool has room for all of them (planned again), and when
/// no one model does, a mix.
fn advise(
    tenancy: &Tenancy,
    catalog: &Catalog,
    decisions: &[Decision],
    unplaced: &[u32],
    placer: &mut Placer,
) -> Advice {
    let n = tenancy.tenants.len();
    // The fleet's kinds of GPU, in fleet order.
    let mut kinds: Vec<&FleetGpu> = Vec::new();
    for g in tenancy.nodes.iter().flat_map(|n| &n.gpus) {
        if !kinds.contains(&g) {
            kinds.push(g);
        }
    }
    let mut out = Advice {
        shortfall: Vec::new(),
        unplaceable: vec![None; n],
    };
    for hypervisor in [false, true] {
        let waiting: Vec<usize> = (0..n)
            .filter(|&ti| unplaced[ti] > 0 && decisions[ti].mode.is_vgpu() == hypervisor)
            .collect();
        // The facts of the fleet with each kind added (the advice's fleets), and what is known
        // about tenants that differ only in name, replicas and spread.
        let facts: Vec<Facts> = kinds
            .iter()
            .map(|&k| Facts::of_nodes(&with_more(&tenancy.nodes, hypervisor, &[(k, 1)])))
            .collect();
        let mut held: HashMap<DecisionKey, bool> = HashMap::new();
        for &ti in &waiting {
            let t = &tenancy.tenants[ti];
            let holds = *held.entry(DecisionKey::of(t)).or_insert_with(|| {
                kinds
                    .iter()
                    .zip(&facts)
                    .any(|(k, f)| holds_one(t, catalog, f, &tenancy.nodes, k, hypervisor, placer))
            });
            if !holds {
                out.unplaceable[ti] = Some(why_unplaceable(
                    &tenancy.tenants[ti],
                    decisions[ti].mode,
                    &kinds,
                ));
            }
        }
        if waiting.iter().all(|&ti| out.unplaceable[ti].is_some()) {
            continue;
        }
        let ignore: Vec<bool> = out.unplaceable.iter().map(Option::is_some).collect();
        let mut fits = |more: &[(&FleetGpu, u32)]| {
            pool_has_room(tenancy, catalog, hypervisor, more, &ignore, placer)
        };
        let pool = pool_name(hypervisor);
        let mut found: Vec<Shortfall> = Vec::new();
        for &k in &kinds {
            if let Some(m) = fewest(1, ADVICE_MAX_GPUS, |m| fits(&[(k, m)])) {
                found.push(Shortfall {
                    model: k.name.clone(),
                    more_gpus: m,
                    pool: pool.into(),
                    with: Vec::new(),
                });
            }
        }
        if found.is_empty() && kinds.len() > 1 {
            let mix = |counts: &[u32]| -> Vec<(&FleetGpu, u32)> {
                kinds.iter().copied().zip(counts.iter().copied()).collect()
            };
            let every = fewest(1, ADVICE_MAX_GPUS, |m| fits(&mix(&vec![m; kinds.len()])));
            if let Some(m) = every {
                // Then as few of each model as the others allow, in fleet order.
                let mut counts = vec![m; kinds.len()];
                for i in 0..kinds.len() {
                    let fewer = fewest(0, counts[i], |c| {
                        let mut v = counts.clone();
                        v[i] = c;
                        fits(&mix(&v))
                    });
                    counts[i] = fewer.unwrap_or(counts[i]);
                }
                let mut more = kinds
                    .iter()
                    .zip(&counts)
                    .filter(|(_, &c)| c > 0)
                    .map(|(k, &c)| MoreGpus {
                        model: k.name.clone(),
                        more_gpus: c,
                    });
                if let Some(first) = more.next() {
                    found.push(Shortfall {
                        model: first.model,
                        more_gpus: first.more_gpus,
                        pool: pool.into(),
                        with: more.collect(),
                    });
                }
            }
        }
        found.sort_by_key(|s| s.more_gpus);
        out.shortfall.extend(found);
    }
    out
}

/// The smallest `n` in `lo..=hi` with `fits(n)`: up from `lo` in doubling steps to the first
/// count that fits, then halving the gap to the last that did not (more GPUs are taken never to
/// take room away). The answer was planned and fits; `answer - 1`, when at least `lo`, was
/// planned and does not.
fn fewest(lo: u32, hi: u32, mut fits: impl FnMut(u32) -> bool) -> Option<u32> {
    if lo > hi {
        return None;
    }
    if fits(lo) {
        return Some(lo);
    }
    let (mut bad, mut step) = (lo, 1u32);
    let mut good = loop {
        let n = bad.saturating_add(step).min(hi);
        if fits(n) {
            break n;
        }
        if n == hi {
            return None;
        }
        bad = n;
        step = step.saturating_mul(2);
    };
    while good - bad > 1 {
        let mid = bad + (good - bad) / 2;
        if fits(mid) {
            good = mid;
        } else {
            bad = mid;
        }
    }
    Some(good)
}

/// The node that holds the GPUs the advice adds to a pool: like the pool's first node (platform
/// and licence), after every node of the fleet.
fn advice_node(nodes: &[FleetNode], hypervisor: bool, more: &[(&FleetGpu, u32)]) -> FleetNode {
    let like = nodes
        .iter()
        .find(|n| n.platform.is_hypervisor() == hypervisor);
    FleetNode {
        name: ADVICE_NODE.into(),
        platform: like.map_or(
            if hypervisor {
                Platform::Vsphere
            } else {
                Platform::Kubernetes
            },
            |n| n.platform,
        ),
        licence: like.and_then(|n| n.licence.clone()),
        gpus: more
            .iter()
            .flat_map(|&(g, count)| std::iter::repeat_n(g.clone(), count as usize))
            .collect(),
        pos: None,
    }
}

/// The fleet with `more` GPUs on a new node of the pool.
fn with_more(nodes: &[FleetNode], hypervisor: bool, more: &[(&FleetGpu, u32)]) -> Vec<FleetNode> {
    let mut v = nodes.to_vec();
    v.push(advice_node(nodes, hypervisor, more));
    v
}

/// Whether the pool, planned again with `more` GPUs, has room for every one of its tenants but
/// those in `ignore`. The tenants are decided again, for the fleet with the GPUs added.
fn pool_has_room(
    tenancy: &Tenancy,
    catalog: &Catalog,
    hypervisor: bool,
    more: &[(&FleetGpu, u32)],
    ignore: &[bool],
    placer: &mut Placer,
) -> bool {
    let nodes = with_more(&tenancy.nodes, hypervisor, more);
    let decisions = decide_all(&tenancy.tenants, catalog, &Facts::of_nodes(&nodes));
    let mut fleet = Fleet::of(&nodes);
    let mut packing = Packing::new(tenancy.tenants.len());
    fill_pool(
        &tenancy.tenants,
        catalog,
        &decisions,
        &mut fleet,
        hypervisor,
        placer,
        &mut packing,
    );
    (0..tenancy.tenants.len()).all(|ti| {
        ignore[ti] || decisions[ti].mode.is_vgpu() != hypervisor || packing.unplaced[ti] == 0
    })
}

/// Whether one replica of `t`, alone on a GPU of kind `kind` in the pool, has room, decided with
/// `facts`, those of the fleet with that GPU added.
fn holds_one(
    t: &Tenant,
    catalog: &Catalog,
    facts: &Facts,
    nodes: &[FleetNode],
    kind: &FleetGpu,
    hypervisor: bool,
    placer: &mut Placer,
) -> bool {
    let t = Tenant {
        replicas: 1,
        spread: false,
        ..t.clone()
    };
    let d = decide::decide(&t, catalog, facts);
    if d.mode.is_vgpu() != hypervisor {
        return false;
    }
    let mut fleet = Fleet::of(&[advice_node(nodes, hypervisor, &[(kind, 1)])]);
    let mut packing = Packing::new(1);
    fill_pool(
        std::slice::from_ref(&t),
        catalog,
        std::slice::from_ref(&d),
        &mut fleet,
        hypervisor,
        placer,
        &mut packing,
    );
    packing.unplaced[0] == 0
}

/// Why no GPU of the fleet's kinds holds one replica of `t`.
fn why_unplaceable(t: &Tenant, mode: Mode, kinds: &[&FleetGpu]) -> String {
    let largest = kinds.iter().map(|k| k.memory_mib).max().unwrap_or(0);
    match t.memory_mib {
        Some(m) if m > largest => format!(
            "it needs {} per replica; the largest GPU of this fleet has {}",
            decide::gb(m),
            decide::gb(largest)
        ),
        _ => format!("even alone on a GPU of any of them, one replica finds no room as {mode}"),
    }
}
