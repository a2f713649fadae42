//! Reconfiguration benchmark: random transitions between valid layouts, carve's plan vs.
//! mig-parted's destroy-all-and-recreate (which skips a GPU only when its profile counts already
//! match, and otherwise destroys every instance on it and creates the new set).
//!
//! cargo run --release -p carve-apply --example bench_reconfig [TRANSITIONS]

use carve_apply::{choose_layout, diff, observe, GpuTarget};
use carve_backend::engine::InMemory;
use carve_backend::Backend;
use carve_model::geometry::{self, counts_of, Instance};
use carve_model::{Catalog, GpuModel};
use std::time::Instant;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[(self.next() % v.len() as u64) as usize]
    }
}

#[derive(Default)]
struct Tally {
    transitions: u64,
    in_both: u64,
    kept_carve: u64,
    kept_destroy_all: u64,
    ops_carve: u64,
    ops_destroy_all: u64,
    below_target: u64,
    extra_ops: u64,
}

fn run(name: &str, catalog: &Catalog, models: &[&GpuModel], n: u64, rng: &mut Rng) -> Tally {
    let layouts: Vec<Vec<Vec<Instance>>> = models.iter().map(|m| geometry::enumerate(m)).collect();
    let mut t = Tally::default();
    let started = Instant::now();
    for _ in 0..n {
        let mut backend = InMemory::new(catalog.clone(), models, rng.next());
        let mut froms = Vec::new();
        let mut tos = Vec::new();
        for (g, m) in models.iter().enumerate() {
            let from = rng.pick(&layouts[g]).clone();
            for inst in &from {
                let p = &m.profiles[inst.profile];
                let gi = backend
                    .create_gpu_instance(g as u32, p.nvml, inst.start)
                    .unwrap();
                backend
                    .create_compute_instance(g as u32, gi, p.compute)
                    .unwrap();
            }
            froms.push(from);
            tos.push(rng.pick(&layouts[g]).clone());
        }
        let observed = observe(&mut backend, catalog).unwrap();
        let mut targets = Vec::new();
        for (g, m) in models.iter().enumerate() {
            let items: Vec<(usize, u8)> = tos[g]
                .iter()
                .map(|i| (i.profile, m.profiles[i.profile].compute))
                .collect();
            targets.push(GpuTarget {
                gpu_uuid: observed[g].info.uuid.clone(),
                gpu_index: g as u32,
                model: m.key.clone(),
                mig_enabled: true,
                instances: choose_layout(m, &observed[g].gpu_instances(), &items).unwrap(),
            });
        }
        let plan = diff(&observed, &targets).unwrap();
        t.transitions += 1;
        t.ops_carve += plan.ops.len() as u64;
        t.kept_carve += plan.kept.len() as u64;
        let mut minimal_ops = 0u64;
        for (g, m) in models.iter().enumerate() {
            let (from, to) = (&froms[g], &tos[g]);
            let both = from.iter().filter(|i| to.contains(i)).count() as u64;
            t.in_both += both;
            let kept_here = targets[g]
                .instances
                .iter()
                .filter(|ti| {
                    from.iter()
                        .any(|f| f.start == ti.start && m.profiles[f.profile].name == ti.profile)
                })
                .count() as u64;
            if kept_here < both {
                t.below_target += 1;
            }
            minimal_ops += 2 * (from.len() as u64 - kept_here) + 2 * (to.len() as u64 - kept_here);
            if counts_of(m, from) == counts_of(m, to) {
                t.kept_destroy_all += from.len() as u64;
            } else {
                t.ops_destroy_all += 2 * from.len() as u64 + 2 * to.len() as u64;
            }
        }
        if plan.ops.len() as u64 != minimal_ops {
            t.extra_ops += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{name}: {} transitions in {secs:.2} s ({:.0} µs per plan incl. setup)",
        t.transitions,
        secs * 1e6 / t.transitions as f64
    );
    println!(
        "  instances present in both layouts (same profile, same placement): {}",
        t.in_both
    );
    println!(
        "  instances kept:      carve {:>7}   destroy-all {:>7}   ratio {:.2}x",
        t.kept_carve,
        t.kept_destroy_all,
        t.kept_carve as f64 / t.kept_destroy_all.max(1) as f64
    );
    println!(
        "  NVML mutations:      carve {:>7}   destroy-all {:>7}   ratio {:.2} (carve / destroy-all)",
        t.ops_carve,
        t.ops_destroy_all,
        t.ops_carve as f64 / t.ops_destroy_all.max(1) as f64
    );
    println!(
        "  GPUs where carve kept fewer than were present in both: {}; plans with extra operations: {}",
        t.below_target, t.extra_ops
    );
    t
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let catalog = Catalog::embedded();
    let mut rng = Rng(2026);
    let h100 = catalog.gpu("H100-80GB").unwrap();
    run("H100-80GB, one GPU", &catalog, &[h100], n, &mut rng);
    let mixed: Vec<&GpuModel> = [
        "H100-80GB",
        "H100-80GB",
        "H100-80GB",
        "H100-80GB",
        "A100-40GB",
        "A100-40GB",
        "A30-24GB",
        "RTX-PRO-6000",
    ]
    .iter()
    .map(|k| catalog.gpu(k).unwrap())
    .collect();
    run(
        "mixed 8-GPU node (4xH100-80GB, 2xA100-40GB, A30-24GB, RTX-PRO-6000)",
        &catalog,
        &mixed,
        n / 4,
        &mut rng,
    );
}
