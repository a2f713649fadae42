//! MIG packing: tenant replicas onto the fewest GPUs, as an integer programme over each model's
//! profile combinations (few per model, so the programme is small whatever the tenant count),
//! then replicas to slots (honouring `spread`), then placements that leave the largest free
//! space.
//!
//! The programme, per pool of GPUs (one GPU model or several):
//! - `x[m][c]` GPUs of model `m` in configuration `c` (a maximal combination of the profiles the
//!   tenants use on `m`), at most the number of free GPUs of `m`;
//! - `z[k][m]` replicas of class `k` (tenants with the same profile on every model) on model `m`;
//! - demand: `Σ_m z[k][m] = d[k]`; capacity: `Σ_c a[c][p]·x[m][c] ≥ Σ_{k: p_k(m)=p} z[k][m]`;
//! - spread (necessary condition): at least `r[k]` GPUs carry class `k`'s profile, where `r[k]`
//!   is the most replicas of a spreading tenant of the class;
//! - minimise `Σ x`.
//!
//! Solved to optimality (microlp's branch and bound), the optimum is a lower bound for every
//! plan, because each constraint is necessary; when the slot assignment then succeeds without
//! extra GPUs the plan is a proven optimum. Stopped by the node budget, the LP relaxation gives
//! the bound instead.
//!
//! The search is bounded by work, not time ([`NODE_LIMIT`] branch-and-bound nodes per
//! programme), so a plan is a function of its input: the same on a loaded machine as on an idle
//! one.

use carve_model::geometry::{self, Counts, Instance, Layout};
use carve_model::{Catalog, GpuModel};
use microlp::{ComparisonOp, LinearExpr, OptimizationDirection, Problem, SolveOptions, Variable};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

/// Branch-and-bound nodes one integer programme may take (microlp's `node_limit`; the root
/// relaxation is not counted). Beyond it the programme's best assignment so far is used (not
/// claimed optimal), or, without one, first fit.
///
/// Chosen from what the programmes need: the benchmark (`examples/bench_plan.rs`, seed 7) at
/// most 13,319 nodes (100,000 tenants on H100s), the same benchmark over seeds 1 to 20 at most
/// 43,556, the tests at most a few dozen; 100,000 leaves room above all of them, and every plan
/// the benchmark and the tests proved optimal under the old 3 s wall-clock limit still is. A node
/// took 40 to 65 µs where this was measured, so a programme that spends the whole budget takes
/// seconds, as the time limit allowed, but stops at the same point on every machine.
pub const NODE_LIMIT: u64 = 100_000;

/// One tenant's MIG replicas.
#[derive(Debug, Clone)]
pub struct Demand {
    pub tenant: usize,
    pub replicas: u32,
    pub spread: bool,
    /// Profile index per catalog model the tenant can use.
    pub profiles: BTreeMap<usize, usize>,
}

/// (pool model, profile) of a slot list.
type Key = (usize, usize);
/// Free slots of a GPU and its slot index, in a max-heap.
type HeapEntry = (u32, Reverse<usize>);

/// One free GPU of the pool: (position in the caller's GPU list, catalog model).
pub type PoolGpu = (usize, usize);

/// An instance given to a tenant replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Given {
    pub instance: Instance,
    pub tenant: usize,
    pub replica: u32,
}

#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Per used GPU (caller's position): its instances.
    pub gpus: Vec<(usize, Vec<Given>)>,
    /// Replicas that found no room: (tenant, count).
    pub unplaced: Vec<(usize, u32)>,
    /// The integer programme was solved to optimality and no GPU beyond it was needed.
    pub optimal: bool,
    pub lower_bound: u32,
    /// Branch-and-bound nodes solved, all programmes together.
    pub nodes: u64,
    /// The most nodes one programme took.
    pub max_nodes: u64,
}

/// A class: tenants with the same profile on every model of the pool.
struct Class {
    /// Profile per pool model (index into `models`).
    profile: Vec<Option<usize>>,
    demand: u32,
    spread_max: u32,
    tenants: Vec<usize>, // indices into demands
}

/// Configurations of one model: count vectors over the model's profiles.
fn configurations(g: &GpuModel, relevant: &[bool]) -> Vec<Counts> {
    let mut out: Vec<Counts> = Vec::new();
    for c in geometry::combinations(g) {
        let r: Counts = c
            .counts
            .iter()
            .zip(relevant)
            .map(|(&n, &rel)| if rel { n } else { 0 })
            .collect();
        if r.iter().all(|&n| n == 0) || out.contains(&r) {
            continue;
        }
        out.push(r);
    }
    // Keep the maximal ones (a sub-multiset of a feasible combination is feasible).
    let dominated = |a: &Counts, b: &Counts| a != b && a.iter().zip(b).all(|(x, y)| x <= y);
    let all = out.clone();
    out.retain(|a| !all.iter().any(|b| dominated(a, b)));
    out
}

struct Model {
    catalog: usize,
    free: Vec<usize>, // pool positions, fleet order
    configs: Vec<Counts>,
}

/// The programme's answer.
struct Solved {
    /// GPUs per (model, configuration).
    x: Vec<Vec<u32>>,
    /// Replicas per (class, model).
    z: Vec<Vec<u32>>,
    optimal: bool,
}

/// What the solver said.
enum Answer {
    Solved(Solved),
    Infeasible,
    /// Stopped by the node budget with no assignment: packing falls back to first fit.
    Unknown,
}

/// The solver's work so far.
#[derive(Default)]
struct Work {
    nodes: u64,
    max_nodes: u64,
}

impl Answer {
    fn ok(self) -> Option<Solved> {
        match self {
            Answer::Solved(s) => Some(s),
            _ => None,
        }
    }
}

enum Goal {
    /// Place everything on the fewest GPUs.
    All,
    /// Place as many replicas as possible, then the fewest GPUs.
    Most,
}

fn solve(
    models: &[Model],
    classes: &[Class],
    caps: &[Option<u32>],
    goal: Goal,
    relax: bool,
    node_limit: u64,
    work: &mut Work,
) -> Answer {
    let mut p = Problem::new(OptimizationDirection::Minimize);
    let total_gpus: f64 = models.iter().map(|m| m.free.len() as f64).sum::<f64>() + 1.0;
    let big = |cap: Option<u32>, fallback: u32| cap.unwrap_or(fallback).min(i32::MAX as u32) as i32;
    let total_demand: u32 = classes.iter().map(|c| c.demand).sum();
    let mut x: Vec<Vec<Variable>> = Vec::new();
    for (mi, m) in models.iter().enumerate() {
        let cap = big(caps[mi], total_demand.max(1));
        x.push(
            m.configs
                .iter()
                .map(|_| {
                    if relax {
                        p.add_var(1.0, (0.0, cap as f64))
                    } else {
                        p.add_integer_var(1.0, (0, cap))
                    }
                })
                .collect(),
        );
        // Cap on GPUs of the model.
        if let Some(c) = caps[mi] {
            let mut e = LinearExpr::empty();
            for v in &x[mi] {
                e.add(*v, 1.0);
            }
            p.add_constraint(e, ComparisonOp::Le, c as f64);
        }
    }
    let weight = match goal {
        Goal::All => 0.0,
        Goal::Most => -total_gpus,
    };
    let mut z: Vec<Vec<Option<Variable>>> = Vec::new();
    for c in classes {
        let d = c.demand.min(i32::MAX as u32) as i32;
        let row: Vec<Option<Variable>> = c
            .profile
            .iter()
            .map(|pr| {
                pr.map(|_| {
                    if relax {
                        p.add_var(weight, (0.0, d as f64))
                    } else {
                        p.add_integer_var(weight, (0, d))
                    }
                })
            })
            .collect();
        let mut e = LinearExpr::empty();
        for v in row.iter().flatten() {
            e.add(*v, 1.0);
        }
        let op = match goal {
            Goal::All => ComparisonOp::Eq,
            Goal::Most => ComparisonOp::Le,
        };
        p.add_constraint(e, op, c.demand as f64);
        z.push(row);
    }
    // Capacity per model and profile.
    for (mi, m) in models.iter().enumerate() {
        let nprof = m.configs.first().map(|c| c.len()).unwrap_or(0);
        for prof in 0..nprof {
            let users: Vec<Variable> = classes
                .iter()
                .zip(&z)
                .filter(|(c, _)| c.profile[mi] == Some(prof))
                .filter_map(|(_, zr)| zr[mi])
                .collect();
            if users.is_empty() {
                continue;
            }
            let mut e = LinearExpr::empty();
            for (ci, conf) in m.configs.iter().enumerate() {
                if conf[prof] > 0 {
                    e.add(x[mi][ci], conf[prof] as f64);
                }
            }
            for u in users {
                e.add(u, -1.0);
            }
            p.add_constraint(e, ComparisonOp::Ge, 0.0);
        }
    }
    // Spread: enough GPUs carrying the class's profile.
    if matches!(goal, Goal::All) {
        for c in classes.iter().filter(|c| c.spread_max > 1) {
            let mut e = LinearExpr::empty();
            let mut any = false;
            for (mi, m) in models.iter().enumerate() {
                if let Some(prof) = c.profile[mi] {
                    for (ci, conf) in m.configs.iter().enumerate() {
                        if conf[prof] > 0 {
                            e.add(x[mi][ci], 1.0);
                            any = true;
                        }
                    }
                }
            }
            if any {
                p.add_constraint(e, ComparisonOp::Ge, c.spread_max as f64);
            }
        }
    }
    let mut options = SolveOptions::default();
    options.node_limit = Some(node_limit);
    let outcome = match p.solve_with(options) {
        Ok(o) => o,
        Err(microlp::Error::Infeasible) => return Answer::Infeasible,
        Err(_) => return Answer::Unknown,
    };
    let nodes = outcome.stats().nodes_solved;
    work.nodes += nodes;
    work.max_nodes = work.max_nodes.max(nodes);
    let optimal = outcome.is_optimal();
    let Some(sol) = outcome.solution() else {
        // The node budget ran out before any assignment was found.
        return Answer::Unknown;
    };
    let val = |v: Variable| -> u32 {
        let f = sol.var_value(v);
        if relax {
            f.max(0.0).ceil() as u32
        } else {
            f.max(0.0).round() as u32
        }
    };
    if relax {
        // Only the objective matters: return it in x[0][0].
        let obj = sol.objective();
        return Answer::Solved(Solved {
            x: vec![vec![(obj - 1e-6).ceil().max(0.0) as u32]],
            z: Vec::new(),
            optimal,
        });
    }
    Answer::Solved(Solved {
        x: x.iter()
            .map(|r| r.iter().map(|v| val(*v)).collect())
            .collect(),
        z: z.iter()
            .map(|r| r.iter().map(|v| v.map(val).unwrap_or(0)).collect())
            .collect(),
        optimal,
    })
}

/// Free-space score of a layout: per profile (largest first), how many placements remain.
fn free_score(g: &GpuModel, layout: &[Instance], order: &[usize]) -> Vec<usize> {
    order
        .iter()
        .map(|&p| geometry::free_starts(g, layout, p).len())
        .collect()
}

/// Placement of a count vector that leaves the largest free placements.
pub struct Placer<'a> {
    catalog: &'a Catalog,
    layouts: HashMap<usize, Vec<Layout>>,
    memo: HashMap<(usize, Counts), Option<Layout>>,
}

impl<'a> Placer<'a> {
    pub fn new(catalog: &'a Catalog) -> Placer<'a> {
        Placer {
            catalog,
            layouts: HashMap::new(),
            memo: HashMap::new(),
        }
    }

    pub fn place(&mut self, model: usize, counts: &Counts) -> Option<Layout> {
        if let Some(l) = self.memo.get(&(model, counts.clone())) {
            return l.clone();
        }
        let g = &self.catalog.gpus[model];
        let all = self
            .layouts
            .entry(model)
            .or_insert_with(|| geometry::enumerate(g));
        let mut order: Vec<usize> = (0..g.profiles.len())
            .filter(|&p| g.profiles[p].attribute() == carve_model::profile::Attribute::None)
            .collect();
        order.sort_by_key(|&p| std::cmp::Reverse((g.profiles[p].slots, g.profiles[p].compute)));
        let mut best: Option<(Vec<usize>, Layout)> = None;
        for l in all.iter() {
            if &geometry::counts_of(g, l) != counts {
                continue;
            }
            let s = free_score(g, l, &order);
            if best.as_ref().is_none_or(|(bs, _)| s > *bs) {
                best = Some((s, l.clone()));
            }
        }
        let out = best
            .map(|(_, l)| l)
            .or_else(|| geometry::fit(g, counts, &[]).ok());
        self.memo.insert((model, counts.clone()), out.clone());
        out
    }
}

/// Packs MIG replicas onto the pool's free GPUs.
pub fn pack(
    catalog: &Catalog,
    pool: &[PoolGpu],
    demands: &[Demand],
    placer: &mut Placer,
) -> Outcome {
    pack_with_limit(catalog, pool, demands, placer, NODE_LIMIT)
}

/// [`pack`] with a budget of branch-and-bound nodes per integer programme. When the solver finds
/// nothing within it, replicas are placed first fit and the plan is not claimed optimal.
pub fn pack_with_limit(
    catalog: &Catalog,
    pool: &[PoolGpu],
    demands: &[Demand],
    placer: &mut Placer,
    node_limit: u64,
) -> Outcome {
    // Models of the pool, GPUs in fleet order.
    let mut models: Vec<Model> = Vec::new();
    for &(pos, m) in pool {
        match models.iter_mut().find(|x| x.catalog == m) {
            Some(x) => x.free.push(pos),
            None => models.push(Model {
                catalog: m,
                free: vec![pos],
                configs: Vec::new(),
            }),
        }
    }
    // Classes.
    let mut classes: Vec<Class> = Vec::new();
    let mut unplaceable: Vec<(usize, u32)> = Vec::new();
    for (di, d) in demands.iter().enumerate() {
        let profile: Vec<Option<usize>> = models
            .iter()
            .map(|m| d.profiles.get(&m.catalog).copied())
            .collect();
        if profile.iter().all(|p| p.is_none()) {
            unplaceable.push((d.tenant, d.replicas));
            continue;
        }
        let spread = if d.spread { d.replicas } else { 1 };
        match classes.iter_mut().find(|c| c.profile == profile) {
            Some(c) => {
                c.demand += d.replicas;
                c.spread_max = c.spread_max.max(spread);
                c.tenants.push(di);
            }
            None => classes.push(Class {
                profile,
                demand: d.replicas,
                spread_max: spread,
                tenants: vec![di],
            }),
        }
    }
    for (mi, m) in models.iter_mut().enumerate() {
        let g = &catalog.gpus[m.catalog];
        let mut relevant = vec![false; g.profiles.len()];
        for c in &classes {
            if let Some(p) = c.profile[mi] {
                relevant[p] = true;
            }
        }
        m.configs = configurations(g, &relevant);
        if m.configs.is_empty() {
            m.configs.push(vec![0; g.profiles.len()]);
        }
    }
    let caps: Vec<Option<u32>> = models.iter().map(|m| Some(m.free.len() as u32)).collect();
    let mut out = Outcome::default();
    if classes.is_empty() {
        out.unplaced = unplaceable;
        out.optimal = true;
        return out;
    }
    // Nothing reserved: every replica goes the first-fit way (when the solver gives up).
    let nothing = || Solved {
        x: models.iter().map(|m| vec![0; m.configs.len()]).collect(),
        z: classes.iter().map(|_| vec![0; models.len()]).collect(),
        optimal: false,
    };
    let mut work = Work::default();
    let (solved, complete) = match solve(
        &models,
        &classes,
        &caps,
        Goal::All,
        false,
        node_limit,
        &mut work,
    ) {
        Answer::Solved(s) => (s, true),
        Answer::Unknown => (nothing(), true),
        Answer::Infeasible => {
            // Not everything fits: the most that does. (What would fit the rest is the
            // planner's advice, which plans again with more GPUs.)
            match solve(
                &models,
                &classes,
                &caps,
                Goal::Most,
                false,
                node_limit,
                &mut work,
            ) {
                Answer::Solved(s) => (s, false),
                _ => (nothing(), false),
            }
        }
    };
    let lower = if complete && solved.optimal {
        solved.x.iter().flatten().sum::<u32>()
    } else {
        // The LP relaxation without the caps: a bound on the GPUs that placing everything needs.
        let uncapped = vec![None; models.len()];
        solve(
            &models,
            &classes,
            if complete { &caps } else { &uncapped },
            Goal::All,
            true,
            node_limit,
            &mut work,
        )
        .ok()
        .map(|s| s.x[0][0])
        .unwrap_or(0)
    };

    // GPUs and their slots: per model, fullest configurations first, GPUs in fleet order.
    struct Slot {
        pos: usize,
        mi: usize,
        rem: Counts,
        counts: Counts,
        given: Vec<(usize, usize, u32)>, // (profile, tenant, replica)
    }
    let mut slots: Vec<Slot> = Vec::new();
    let mut spare: Vec<(usize, usize)> = Vec::new(); // (pos, mi) free GPUs not in the programme's answer
    for (mi, m) in models.iter().enumerate() {
        let g = &catalog.gpus[m.catalog];
        let mut confs: Vec<(usize, u32)> = solved.x[mi]
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(c, n)| (c, *n))
            .collect();
        let used_slots = |c: &Counts| -> u32 {
            c.iter()
                .zip(&g.profiles)
                .map(|(n, p)| n * p.slots as u32)
                .sum()
        };
        confs.sort_by_key(|&(c, _)| std::cmp::Reverse(used_slots(&m.configs[c])));
        let mut free = m.free.iter();
        for (c, n) in confs {
            for _ in 0..n {
                if let Some(&pos) = free.next() {
                    slots.push(Slot {
                        pos,
                        mi,
                        rem: m.configs[c].clone(),
                        counts: vec![0; g.profiles.len()],
                        given: Vec::new(),
                    });
                }
            }
        }
        spare.extend(free.map(|&pos| (pos, mi)));
    }
    // Replicas to slots. Per (model, profile): the GPUs with free slots of it, in fill order
    // (a cursor, for packing) and in a max-heap of free slots (for spreading).
    let mut quota: Vec<Vec<u32>> = solved.z.clone();
    let mut lists: HashMap<(usize, usize), (Vec<usize>, usize)> = HashMap::new();
    let mut heaps: HashMap<Key, BinaryHeap<HeapEntry>> = HashMap::new();
    for (si, s) in slots.iter().enumerate() {
        for (prof, &n) in s.rem.iter().enumerate() {
            if n > 0 {
                lists.entry((s.mi, prof)).or_default().0.push(si);
                heaps
                    .entry((s.mi, prof))
                    .or_default()
                    .push((n, Reverse(si)));
            }
        }
    }
    // Slots of a (model, profile) beyond what the programme's split reserves for classes.
    let mut slack: HashMap<(usize, usize), i64> = HashMap::new();
    for s in &slots {
        for (prof, &n) in s.rem.iter().enumerate() {
            *slack.entry((s.mi, prof)).or_default() += n as i64;
        }
    }
    for (k, c) in classes.iter().enumerate() {
        for (mi, p) in c.profile.iter().enumerate() {
            if let Some(p) = p {
                *slack.entry((mi, *p)).or_default() -= quota[k][mi] as i64;
            }
        }
    }
    let mut extra_gpus = 0u32;
    let mut unplaced: BTreeMap<usize, u32> = BTreeMap::new();
    for (t, n) in unplaceable {
        *unplaced.entry(t).or_default() += n;
    }
    // Spreading tenants first (most replicas first), then the rest, classes with fewer model
    // options first.
    let mut order: Vec<(usize, usize)> = Vec::new(); // (class, demand index)
    for (k, c) in classes.iter().enumerate() {
        for &di in &c.tenants {
            order.push((k, di));
        }
    }
    order.sort_by_key(|&(k, di)| {
        let d = &demands[di];
        let options = classes[k].profile.iter().filter(|p| p.is_some()).count();
        (
            !(d.spread && d.replicas > 1),
            std::cmp::Reverse(if d.spread { d.replicas } else { 0 }),
            options,
            k,
            di,
        )
    });
    let take = |slots: &mut Vec<Slot>,
                quota: &mut Vec<Vec<u32>>,
                slack: &mut HashMap<(usize, usize), i64>,
                k: usize,
                si: usize,
                prof: usize,
                tenant: usize,
                r: u32| {
        let s = &mut slots[si];
        let reserved = s.rem[prof] > 0;
        if reserved {
            s.rem[prof] -= 1;
        }
        if quota[k][s.mi] > 0 {
            quota[k][s.mi] -= 1;
        } else if reserved {
            *slack.entry((s.mi, prof)).or_default() -= 1;
        }
        s.counts[prof] += 1;
        s.given.push((prof, tenant, r));
    };
    for (k, di) in order {
        let class = &classes[k];
        let d = &demands[di];
        let keys: Vec<(usize, usize)> = class
            .profile
            .iter()
            .enumerate()
            .filter_map(|(mi, p)| p.map(|p| (mi, p)))
            .collect();
        let mut left = d.replicas;
        let mut next_r = 0u32;
        if d.spread && d.replicas > 1 {
            // The GPUs with the most free slots of the profile, one replica each.
            let mut picked: Vec<(usize, usize)> = Vec::new();
            let mut held: Vec<(Key, HeapEntry)> = Vec::new();
            while (picked.len() as u32) < d.replicas {
                let mut best: Option<(Key, HeapEntry)> = None;
                for key in &keys {
                    let own = quota[k][key.0] as i64
                        - picked
                            .iter()
                            .filter(|(si, _)| slots[*si].mi == key.0)
                            .count() as i64;
                    if own <= 0 && slack.get(key).copied().unwrap_or(0) <= 0 {
                        continue;
                    }
                    let Some(h) = heaps.get_mut(key) else {
                        continue;
                    };
                    // Drop stale entries.
                    while let Some(&(n, Reverse(si))) = h.peek() {
                        if slots[si].rem[key.1] == n && n > 0 {
                            break;
                        }
                        h.pop();
                        let now = slots[si].rem[key.1];
                        if now > 0 && now != n {
                            h.push((now, Reverse(si)));
                        }
                    }
                    if let Some(&top) = h.peek() {
                        if best.is_none_or(|(_, b)| top > b) {
                            best = Some((*key, top));
                        }
                    }
                }
                let Some((key, top)) = best else { break };
                heaps.get_mut(&key).expect("key exists").pop();
                held.push((key, top));
                picked.push((top.1 .0, key.1));
            }
            for (si, prof) in picked {
                take(
                    &mut slots, &mut quota, &mut slack, k, si, prof, d.tenant, next_r,
                );
                next_r += 1;
                left -= 1;
            }
            for (key, (_, Reverse(si))) in held {
                let now = slots[si].rem[key.1];
                if now > 0 {
                    heaps
                        .get_mut(&key)
                        .expect("key exists")
                        .push((now, Reverse(si)));
                }
            }
        } else {
            // Fill GPUs in order, models as the programme split them, then any with room.
            while left > 0 {
                let mut chosen: Option<(usize, usize)> = None;
                let mut by_quota: Vec<(usize, usize)> = keys
                    .iter()
                    .copied()
                    .filter(|key| quota[k][key.0] > 0 || slack.get(key).copied().unwrap_or(0) > 0)
                    .collect();
                by_quota.sort_by_key(|&(mi, _)| std::cmp::Reverse(quota[k][mi]));
                for key in by_quota {
                    let Some((list, cursor)) = lists.get_mut(&key) else {
                        continue;
                    };
                    while *cursor < list.len() && slots[list[*cursor]].rem[key.1] == 0 {
                        *cursor += 1;
                    }
                    if *cursor < list.len() {
                        chosen = Some((list[*cursor], key.1));
                        break;
                    }
                }
                let Some((si, prof)) = chosen else { break };
                take(
                    &mut slots, &mut quota, &mut slack, k, si, prof, d.tenant, next_r,
                );
                next_r += 1;
                left -= 1;
            }
        }
        // What the programme's slots did not hold: room on a GPU beyond what is reserved, then
        // a spare GPU.
        while left > 0 {
            let used_here: Vec<usize> = slots
                .iter()
                .filter(|s| s.given.iter().any(|g| g.1 == d.tenant))
                .map(|s| s.pos)
                .collect();
            let mut best: Option<(usize, usize)> = None;
            for (si, s) in slots.iter().enumerate() {
                let Some(prof) = class.profile[s.mi] else {
                    continue;
                };
                if d.spread && used_here.contains(&s.pos) {
                    continue;
                }
                let g = &catalog.gpus[models[s.mi].catalog];
                let mut c: Counts = s.counts.iter().zip(&s.rem).map(|(a, b)| a + b).collect();
                c[prof] += 1;
                if geometry::check_counts(g, &c).is_ok() {
                    best = Some((si, prof));
                    break;
                }
            }
            if best.is_none() {
                if let Some(i) = spare
                    .iter()
                    .position(|&(_, mi)| class.profile[mi].is_some())
                {
                    let (pos, mi) = spare.remove(i);
                    let g = &catalog.gpus[models[mi].catalog];
                    slots.push(Slot {
                        pos,
                        mi,
                        rem: vec![0; g.profiles.len()],
                        counts: vec![0; g.profiles.len()],
                        given: Vec::new(),
                    });
                    extra_gpus += 1;
                    best = Some((slots.len() - 1, class.profile[mi].expect("filtered")));
                }
            }
            let Some((si, prof)) = best else {
                *unplaced.entry(d.tenant).or_default() += left;
                break;
            };
            take(
                &mut slots, &mut quota, &mut slack, k, si, prof, d.tenant, next_r,
            );
            next_r += 1;
            left -= 1;
        }
    }
    // Placements.
    for s in slots {
        if s.given.is_empty() {
            continue;
        }
        let model = models[s.mi].catalog;
        let Some(layout) = placer.place(model, &s.counts) else {
            for (_, t, _) in s.given {
                *unplaced.entry(t).or_default() += 1;
            }
            continue;
        };
        let mut by_profile: BTreeMap<usize, Vec<Instance>> = BTreeMap::new();
        for i in layout {
            by_profile.entry(i.profile).or_default().push(i);
        }
        for v in by_profile.values_mut() {
            v.sort_by_key(|i| std::cmp::Reverse(i.start));
        }
        let mut given = Vec::new();
        for (prof, tenant, replica) in s.given {
            let instance = by_profile
                .get_mut(&prof)
                .and_then(|v| v.pop())
                .expect("the layout has the counts");
            given.push(Given {
                instance,
                tenant,
                replica,
            });
        }
        given.sort_by_key(|g| g.instance.start);
        out.gpus.push((s.pos, given));
    }
    out.gpus.sort_by_key(|(p, _)| *p);
    out.unplaced = unplaced.into_iter().filter(|(_, n)| *n > 0).collect();
    let used = out.gpus.len() as u32;
    out.optimal =
        complete && solved.optimal && extra_gpus == 0 && out.unplaced.is_empty() && used == lower;
    out.lower_bound = lower;
    out.nodes = work.nodes;
    out.max_nodes = work.max_nodes;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h100(c: &Catalog) -> usize {
        c.gpus.iter().position(|g| g.key == "H100-80GB").unwrap()
    }

    fn demand(c: &Catalog, t: usize, profile: &str, n: u32, spread: bool) -> Demand {
        let m = h100(c);
        let p = c.gpus[m].profile_index(profile).unwrap();
        Demand {
            tenant: t,
            replicas: n,
            spread,
            profiles: [(m, p)].into_iter().collect(),
        }
    }

    #[test]
    fn sevens_fill_one_gpu() {
        let c = Catalog::embedded();
        let pool: Vec<PoolGpu> = (0..4).map(|i| (i, h100(&c))).collect();
        let mut placer = Placer::new(&c);
        let o = pack(
            &c,
            &pool,
            &[demand(&c, 0, "1g.10gb", 7, false)],
            &mut placer,
        );
        assert_eq!(o.gpus.len(), 1);
        assert!(o.optimal);
        assert_eq!(o.lower_bound, 1);
    }

    #[test]
    fn spread_needs_more_gpus() {
        let c = Catalog::embedded();
        let pool: Vec<PoolGpu> = (0..4).map(|i| (i, h100(&c))).collect();
        let mut placer = Placer::new(&c);
        let o = pack(&c, &pool, &[demand(&c, 0, "1g.10gb", 3, true)], &mut placer);
        assert_eq!(o.gpus.len(), 3);
        assert!(o.optimal, "{o:?}");
    }

    #[test]
    fn too_little_room_places_the_most() {
        let c = Catalog::embedded();
        let pool: Vec<PoolGpu> = (0..1).map(|i| (i, h100(&c))).collect();
        let mut placer = Placer::new(&c);
        let o = pack(
            &c,
            &pool,
            &[demand(&c, 0, "3g.40gb", 5, false)],
            &mut placer,
        );
        assert_eq!(o.unplaced, vec![(0, 3)]);
        assert_eq!(o.gpus.len(), 1);
    }
}
