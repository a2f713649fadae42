//! Achieved versus target GPU shares for 2, 4 and 8 always-busy tenants under each policy, with
//! kernels of different lengths per tenant (50 µs – 5 ms), driven on a simulated GPU for 60 s of
//! virtual time; and Jain's fairness index over achieved / target. Figures only, no assertions.
//!
//! `cargo run -p carve-timeslice --example fairness --release`

use carve_timeslice::{Decision, Policy, Scheduler, Settings, TenantId};

const MS: u64 = 1_000_000;
const US: u64 = 1_000;

/// Kernel lengths per tenant, cycled: (name, shortest, longest).
const KERNELS: [(&str, u64, u64); 4] = [
    ("50µs-5ms", 50 * US, 5 * MS),
    ("50-200µs", 50 * US, 200 * US),
    ("2-5ms", 2 * MS, 5 * MS),
    ("0.5-2ms", 500 * US, 2 * MS),
];

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

struct Outcome {
    target: Vec<f64>,
    achieved: Vec<f64>,
    utilisation: f64,
    mean_turn_ms: f64,
}

fn simulate(policy: Policy, shares: &[Option<f64>], seconds: u64) -> Outcome {
    let mut s = Scheduler::new(Settings {
        policy,
        ..Settings::default()
    })
    .expect("valid");
    for (i, sh) in shares.iter().enumerate() {
        s.add_tenant(TenantId(i as u32), *sh, 0)
            .expect("valid share");
        s.set_pending(TenantId(i as u32), true, 0);
    }
    let mut rng = Lcg(42);
    let end = seconds * 1000 * MS;
    let (mut now, mut busy, mut turns) = (0u64, 0u64, 0u64);
    while now < end {
        match s.next(now) {
            Decision::Grant { tenant, until } => {
                let (_, lo, hi) = KERNELS[tenant.0 as usize % KERNELS.len()];
                let start = now;
                while now < until {
                    now += rng.between(lo, hi);
                }
                s.finish(tenant, now - start, now);
                busy += now - start;
                turns += 1;
            }
            Decision::Idle { until } => now = until,
            Decision::Empty => unreachable!("every tenant is busy"),
        }
    }
    let stats = s.stats(now);
    Outcome {
        target: stats.iter().map(|t| t.target_share).collect(),
        achieved: stats.iter().map(|t| t.achieved_share).collect(),
        utilisation: busy as f64 / now as f64,
        mean_turn_ms: busy as f64 / turns as f64 / 1e6,
    }
}

/// Jain's fairness index of x: (Σx)² / (n Σx²); 1 = perfectly even.
fn jain(x: &[f64]) -> f64 {
    let sum: f64 = x.iter().sum();
    let squares: f64 = x.iter().map(|v| v * v).sum();
    sum * sum / (x.len() as f64 * squares)
}

fn main() {
    let fixed: [&[f64]; 3] = [
        &[0.7, 0.3],
        &[0.5, 0.3, 0.1, 0.1],
        &[0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05],
    ];
    println!("60 s of virtual time per run; default slice (2 ms), averaging factor 33;");
    println!("every tenant always has work; kernel lengths per tenant as shown.\n");
    for shares in fixed {
        let n = shares.len();
        println!("== {n} tenants ==");
        for (name, policy, given) in [
            ("best effort", Policy::BestEffort, vec![None; n]),
            ("equal share", Policy::EqualShare, vec![None; n]),
            (
                "fixed share",
                Policy::FixedShare,
                shares.iter().map(|&x| Some(x)).collect(),
            ),
        ] {
            let o = simulate(policy, &given, 60);
            let ratio: Vec<f64> = o
                .achieved
                .iter()
                .zip(&o.target)
                .map(|(a, t)| a / t)
                .collect();
            let worst = o
                .achieved
                .iter()
                .zip(&o.target)
                .map(|(a, t)| (a - t).abs() * 100.0)
                .fold(0.0, f64::max);
            println!(
                "{name}: Jain {:.4}, worst |achieved - target| {worst:.2} pp, \
                 GPU busy {:.1} %, mean turn {:.2} ms",
                jain(&ratio),
                o.utilisation * 100.0,
                o.mean_turn_ms,
            );
            for i in 0..n {
                println!(
                    "  tenant {i} ({:>8}): target {:>5.2} %  achieved {:>5.2} %",
                    KERNELS[i % KERNELS.len()].0,
                    o.target[i] * 100.0,
                    o.achieved[i] * 100.0
                );
            }
        }
        println!();
    }
}
