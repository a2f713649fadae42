//! From a tenancy to a plan: decide every tenant's mode, then fill GPUs pool by pool (Kubernetes /
//! bare-metal nodes; hypervisor nodes) in this order: dedicated GPUs, time-sliced GPUs, MIG.

use crate::decide::{self, Decision, Facts};
use crate::pack::{self, Demand, Placer, PoolGpu};
use crate::plan::*;
use crate::tenancy::{Tenancy, Tenant, Workload};
use carve_model::Catalog;
use std::collections::BTreeMap;

/// Most tenant replicas time-sharing one GPU.
pub const MAX_TIME_SLICED_PER_GPU: usize = 32;

/// The vGPU scheduler's default slice above this many vGPUs is 1 ms (2 ms up to it).
const VGPU_DENSE: usize = 8;

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

/// Plans a tenancy. Deterministic: the same tenancy and catalog give the same plan, on any
/// machine (no clock is read; the solver's work is bounded by nodes, not time).
pub fn plan(tenancy: &Tenancy, catalog: &Catalog) -> Plan {
    let facts = Facts::of(tenancy);
    // Tenants that differ only in name, replicas and spread get the same decision: decide once.
    let mut seen: std::collections::HashMap<DecisionKey, Decision> = Default::default();
    let decisions: Vec<Decision> = tenancy
        .tenants
        .iter()
        .map(|t| {
            seen.entry(DecisionKey::of(t))
                .or_insert_with(|| decide::decide(t, catalog, &facts))
                .clone()
        })
        .collect();

    let mut gpus: Vec<PlannedGpu> = Vec::new();
    let mut hyp: Vec<bool> = Vec::new();
    for (n, i, g) in tenancy.gpus() {
        let node = &tenancy.nodes[n];
        gpus.push(PlannedGpu {
            node: node.name.clone(),
            index: i,
            model: g.name.clone(),
            memory_mib: g.memory_mib,
            mig_capable: g.model.is_some(),
            mode: GpuMode::Unused,
            instances: Vec::new(),
            shares: Vec::new(),
            scheduler: None,
        });
        hyp.push(node.platform.is_hypervisor());
    }
    let model_of: Vec<Option<usize>> = tenancy.gpus().map(|(_, _, g)| g.model).collect();
    let mut placements: Vec<Vec<Placement>> = vec![Vec::new(); tenancy.tenants.len()];
    let mut unplaced: Vec<u32> = vec![0; tenancy.tenants.len()];
    let mut warnings: Vec<String> = Vec::new();
    let mut stats = PackingStats {
        dedicated_gpus: 0,
        time_sliced_gpus: 0,
        mig_gpus: 0,
        mig_optimal: true,
        mig_lower_bound: 0,
        time_sliced_lower_bound: 0,
        solver_nodes: 0,
    };
    let mut shortfall: Vec<Shortfall> = Vec::new();
    let mut placer = Placer::new(catalog);

    for hypervisor in [false, true] {
        let pool_name = if hypervisor {
            "vsphere"
        } else {
            "kubernetes/bare-metal"
        };
        let in_pool = |m: Mode| m.is_vgpu() == hypervisor;

        // 1. Dedicated: a whole GPU per replica, largest first.
        let mut ded: Vec<(usize, u32, u64)> = Vec::new();
        for (ti, t) in tenancy.tenants.iter().enumerate() {
            let d = &decisions[ti];
            let whole = d.mode == Mode::Dedicated && in_pool(d.mode);
            if whole {
                for r in 0..t.replicas {
                    ded.push((ti, r, t.memory_mib.unwrap_or(0)));
                }
            }
        }
        ded.sort_by_key(|&(ti, r, m)| (std::cmp::Reverse(m), ti, r));
        for (ti, r, mem) in ded {
            let pick = free_gpus(&gpus, &hyp, hypervisor)
                .filter(|&p| gpus[p].memory_mib >= mem)
                .min_by_key(|&p| (gpus[p].mig_capable, gpus[p].memory_mib, p));
            match pick {
                Some(p) => {
                    let g = &mut gpus[p];
                    g.mode = GpuMode::Dedicated;
                    g.shares.push(PlannedShare {
                        tenant: tenancy.tenants[ti].name.clone(),
                        replica: r,
                        share: 1.0,
                        memory_mib: g.memory_mib,
                        vgpu_type: None,
                    });
                    placements[ti].push(Placement {
                        replica: r,
                        node: g.node.clone(),
                        gpu: g.index,
                        profile: None,
                        start: None,
                    });
                    stats.dedicated_gpus += 1;
                }
                None => unplaced[ti] += 1,
            }
        }

        // 2. Time-sliced GPUs.
        let ts_mode = if hypervisor {
            Mode::VgpuTimeSliced
        } else {
            Mode::TimeSliced
        };
        let (used, bound) = time_slice(
            tenancy,
            catalog,
            &decisions,
            ts_mode,
            &mut gpus,
            &hyp,
            &model_of,
            &mut placements,
            &mut unplaced,
            &mut warnings,
        );
        stats.time_sliced_gpus += used;
        stats.time_sliced_lower_bound += bound;

        // 3. MIG on what is left.
        let mig_mode = if hypervisor { Mode::VgpuMig } else { Mode::Mig };
        let demands: Vec<Demand> = tenancy
            .tenants
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
            continue;
        }
        let pool: Vec<PoolGpu> = free_gpus(&gpus, &hyp, hypervisor)
            .filter_map(|p| model_of[p].map(|m| (p, m)))
            .collect();
        let out = pack::pack(catalog, &pool, &demands, &mut placer);
        stats.mig_optimal &= out.optimal;
        stats.solver_nodes += out.nodes;
        stats.mig_lower_bound += out.lower_bound;
        stats.mig_gpus += out.gpus.len() as u32;
        for (m, more) in &out.shortfall {
            shortfall.push(Shortfall {
                model: catalog.gpus[*m].key.clone(),
                more_gpus: *more,
                pool: pool_name.into(),
            });
        }
        for (t, n) in &out.unplaced {
            unplaced[*t] += n;
        }
        for (pos, given) in out.gpus {
            let model = &catalog.gpus[model_of[pos].expect("MIG GPUs have a model")];
            let g = &mut gpus[pos];
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
                    tenant: tenancy.tenants[gv.tenant].name.clone(),
                    replica: gv.replica,
                    vgpu_type,
                });
                placements[gv.tenant].push(Placement {
                    replica: gv.replica,
                    node: g.node.clone(),
                    gpu: g.index,
                    profile: Some(p.name.clone()),
                    start: Some(gv.instance.start),
                });
            }
        }
    }

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
            w.push(format!(
                "{} of {} replicas found no room",
                unplaced[ti], t.replicas
            ));
        }
        tenants.push(PlannedTenant {
            name: t.name.clone(),
            workload: t.workload.as_str().into(),
            mode: d.mode,
            rule: d.rule.into(),
            reason: d.reason.clone(),
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
            if !catalog.gpus[*m].is_confirmed() && g.is_used() {
                let msg = format!(
                    "{} data is not fully confirmed: {}",
                    catalog.gpus[*m].key,
                    catalog.gpus[*m].unconfirmed.join("; ")
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
        shortfall,
        stats,
        warnings,
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

#[allow(clippy::too_many_arguments)]
fn time_slice(
    tenancy: &Tenancy,
    catalog: &Catalog,
    decisions: &[Decision],
    mode: Mode,
    gpus: &mut [PlannedGpu],
    hyp: &[bool],
    model_of: &[Option<usize>],
    placements: &mut [Vec<Placement>],
    unplaced: &mut [u32],
    warnings: &mut Vec<String>,
) -> (u32, u32) {
    let hypervisor = mode.is_vgpu();
    // Free GPUs of the pool, by model, for choosing vGPU types where GPUs are plentiful.
    let mut free_by_model: BTreeMap<Option<usize>, usize> = BTreeMap::new();
    for p in free_gpus(gpus, hyp, hypervisor) {
        *free_by_model.entry(model_of[p]).or_default() += 1;
    }
    let mut groups: BTreeMap<(u8, Option<String>), Vec<Item>> = BTreeMap::new();
    let mut policies: BTreeMap<(u8, Option<String>), Policy> = BTreeMap::new();
    for (ti, t) in tenancy.tenants.iter().enumerate() {
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
            .map(|i| tenancy.tenants[i.tenant].replicas)
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
                .all(|&i| tenancy.tenants[items[i].tenant].workload == Workload::Dev);
            let slice = if dev_only && n > VGPU_DENSE { 1 } else { pref };
            let g = &mut gpus[b.pos];
            let mut reason = match b.policy {
                Policy::FixedShare if unshared > 0 => format!(
                    "fixed share: the shares given, and {unshared} tenant(s) without one split the rest"
                ),
                Policy::FixedShare => "fixed share: every tenant gives its share".to_string(),
                Policy::EqualShare => format!("equal share among {n} interactive tenants"),
                Policy::BestEffort => "best effort: no shares given".to_string(),
            };
            reason.push_str(&format!(
                "; {slice} ms slice ({})",
                if slice <= 2 {
                    "short, for responsiveness"
                } else {
                    "long, for throughput"
                }
            ));
            g.scheduler = Some(PlannedScheduler {
                policy: b.policy,
                slice_ms: slice,
                work_conserving: crate::schedule::WORK_CONSERVING && !hypervisor,
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
                    tenant: tenancy.tenants[it.tenant].name.clone(),
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
