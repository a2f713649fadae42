//! Planner benchmark: random tenancies of 10 … 100,000 MIG tenants on a single-model fleet
//! (H100-80GB) and a mixed one (H100-80GB, A100-40GB, A100-80GB, H200-141GB). For each: GPUs used
//! by carve, its lower bound (the optimum where proven), plan time (timed here: the planner reads
//! no clock), branch-and-bound nodes (`B&B`, the planner's deterministic work);
//! first-fit-decreasing; and the uniform hand layouts `all-1g.10gb` and `all-balanced` (single
//! model).
//!
//! `cargo run --release -p carve-plan --example bench_plan [-- --max 100000 --seed 7]`

use carve_model::geometry;
use carve_model::Catalog;
use carve_plan::plan::Platform;
use carve_plan::tenancy::{FleetGpu, FleetNode, Isolation, Slo, Tenancy, Tenant, Workload};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

/// A small deterministic generator (xorshift64*), so runs are repeatable without dependencies.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const MEMORY_GB: [u32; 10] = [5, 8, 10, 10, 10, 12, 20, 20, 30, 40];

fn tenants(n: usize, rng: &mut Rng) -> Vec<Tenant> {
    (0..n)
        .map(|i| {
            let mem = MEMORY_GB[rng.below(MEMORY_GB.len() as u64) as usize];
            let compute = if rng.below(10) == 0 { Some(2) } else { None };
            let spread = rng.below(10) == 0;
            Tenant {
                name: format!("t{i}"),
                workload: Workload::Inference,
                memory_mib: Some(mem as u64 * 1024),
                compute,
                profile: None,
                share: None,
                replicas: if spread { 2 } else { 1 },
                slo: Slo::Strict,
                isolation: Isolation::Soft,
                vm: false,
                media: false,
                spread,
                load: None,
                pos: None,
            }
        })
        .collect()
}

fn fleet(models: &[&str], gpus: usize, catalog: &Catalog) -> Vec<FleetNode> {
    let mut nodes = Vec::new();
    let per_node = 8;
    for n in 0..gpus.div_ceil(per_node) {
        let key = models[n % models.len()];
        let m = catalog.gpus.iter().position(|g| g.key == key).unwrap();
        nodes.push(FleetNode {
            name: format!("n{n}"),
            platform: Platform::Kubernetes,
            licence: None,
            gpus: (0..per_node)
                .map(|_| FleetGpu {
                    model: Some(m),
                    name: key.to_string(),
                    memory_mib: catalog.gpus[m].memory_gb as u64 * 1024,
                })
                .collect(),
            pos: None,
        });
    }
    nodes
}

/// (largest GI slices, order, profile per model, spread, replica).
type Item<'a> = (u8, usize, &'a BTreeMap<String, String>, bool, u32);

/// First-fit decreasing over the fleet's GPUs in order: each replica (largest profile first) to
/// the first GPU where its profile still fits. GPUs with the same load behave alike, so they are
/// kept in groups by load.
fn ffd(plan: &carve_plan::Plan, catalog: &Catalog, tenancy: &Tenancy) -> u32 {
    // The profile carve chose per tenant and model, from the plan.
    let models: Vec<usize> = tenancy.gpus().map(|(_, _, g)| g.model.unwrap()).collect();
    let mut items: Vec<Item> = Vec::new();
    for t in &plan.tenants {
        let size = t
            .profiles
            .values()
            .filter_map(|p| carve_model::profile::ProfileName::parse(p))
            .map(|p| p.gi_slices)
            .max()
            .unwrap_or(0);
        for r in 0..t.replicas {
            items.push((size, items.len(), &t.profiles, t.spread, r));
        }
    }
    items.sort_by_key(|i| (std::cmp::Reverse(i.0), i.1));
    // Groups: (model, counts) → GPU indices.
    let mut groups: HashMap<(usize, Vec<u32>), BTreeSet<usize>> = HashMap::new();
    for (i, &m) in models.iter().enumerate() {
        groups
            .entry((m, vec![0; catalog.gpus[m].profiles.len()]))
            .or_default()
            .insert(i);
    }
    let mut fits: HashMap<(usize, Vec<u32>, usize), bool> = HashMap::new();
    let mut used: BTreeSet<usize> = BTreeSet::new();
    for (_, _, profiles, _, _) in items {
        let mut best: Option<(usize, (usize, Vec<u32>), usize)> = None;
        for ((m, counts), set) in &groups {
            let g = &catalog.gpus[*m];
            let Some(pname) = profiles.get(&g.key) else {
                continue;
            };
            let p = g.profile_index(pname).unwrap();
            let ok = *fits.entry((*m, counts.clone(), p)).or_insert_with(|| {
                let mut c = counts.clone();
                c[p] += 1;
                geometry::check_counts(g, &c).is_ok()
            });
            if !ok {
                continue;
            }
            if let Some(&first) = set.iter().next() {
                if best.as_ref().is_none_or(|b| first < b.0) {
                    best = Some((first, (*m, counts.clone()), p));
                }
            }
        }
        let Some((gpu, key, p)) = best else { continue };
        groups.get_mut(&key).unwrap().remove(&gpu);
        let mut c = key.1.clone();
        c[p] += 1;
        groups.entry((key.0, c)).or_default().insert(gpu);
        used.insert(gpu);
    }
    used.len() as u32
}

/// Uniform layouts on H100-80GB: tenants take the smallest slot type that holds their profile.
fn uniform(plan: &carve_plan::Plan) -> (String, String) {
    let (mut small, mut mid, mut large, mut beyond) = (0u64, 0u64, 0u64, 0u64);
    for t in &plan.tenants {
        let p = t
            .profiles
            .get("H100-80GB")
            .map(String::as_str)
            .unwrap_or("");
        let n = t.replicas as u64;
        match p {
            "1g.10gb" => small += n,
            "1g.20gb" | "2g.20gb" => mid += n,
            "3g.40gb" => large += n,
            _ => beyond += n,
        }
    }
    let total = small + mid + large + beyond;
    let all1 = if total == small {
        format!("{}", small.div_ceil(7))
    } else {
        format!("{} + {} tenants unserved", small.div_ceil(7), total - small)
    };
    // 2×1g.10gb + 2g.20gb + 3g.40gb per GPU; nested slot classes (Hall's condition).
    let bal = large
        .max((mid + large).div_ceil(2))
        .max((small + mid + large).div_ceil(4));
    let balanced = if beyond == 0 {
        format!("{bal}")
    } else {
        format!("{bal} + {beyond} tenants unserved")
    };
    (all1, balanced)
}

fn main() {
    let mut max = 100_000usize;
    let mut seed = 7u64;
    let args: Vec<String> = std::env::args().collect();
    for w in args.windows(2) {
        match w[0].as_str() {
            "--max" => max = w[1].parse().expect("--max N"),
            "--seed" => seed = w[1].parse().expect("--seed N"),
            _ => {}
        }
    }
    let catalog = Catalog::embedded();
    let fleets: [(&str, Vec<&str>); 2] = [
        ("H100-80GB", vec!["H100-80GB"]),
        (
            "mixed",
            vec!["H100-80GB", "A100-40GB", "A100-80GB", "H200-141GB"],
        ),
    ];
    println!(
        "{:<10} {:>8} {:>7} {:>7} {:>6} {:>9} {:>8} {:>7} {:>7} {:>28} {:>12}",
        "fleet",
        "tenants",
        "carve",
        "bound",
        "gap",
        "plan ms",
        "B&B",
        "ffd",
        "ffd/cv",
        "all-1g.10gb",
        "all-balanced"
    );
    let mut sizes = vec![10usize];
    while *sizes.last().unwrap() < max {
        let n = (sizes.last().unwrap() * 10).min(max);
        sizes.push(n);
    }
    for (name, models) in &fleets {
        for &n in &sizes {
            let mut rng = Rng(seed ^ (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let ts = tenants(n, &mut rng);
            let gpus = (n * 2).max(16);
            let tenancy = Tenancy {
                nodes: fleet(models, gpus, &catalog),
                tenants: ts,
            };
            let t0 = Instant::now();
            let plan = carve_plan::plan(&tenancy, &catalog);
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            assert!(plan.complete, "the fleet is large enough");
            let f = ffd(&plan, &catalog, &tenancy);
            let gap = 100.0 * (plan.gpus_used as f64 - plan.lower_bound_gpus as f64)
                / plan.lower_bound_gpus.max(1) as f64;
            let (a1, bal) = if models.len() == 1 {
                uniform(&plan)
            } else {
                ("n/a (mixed)".into(), "n/a".into())
            };
            println!(
                "{:<10} {:>8} {:>7} {:>7} {:>5.2}% {:>9.1} {:>8} {:>7} {:>7.3} {:>28} {:>12}{}",
                name,
                n,
                plan.gpus_used,
                plan.lower_bound_gpus,
                gap,
                ms,
                plan.stats.solver_nodes,
                f,
                f as f64 / plan.gpus_used.max(1) as f64,
                a1,
                bal,
                if plan.optimal { "  optimal" } else { "" }
            );
        }
    }
}
