//! The simulator checked against reality: each scenario runs on the stand-in GPU under the real
//! scheduler daemon with `carve-workload` tenants under the shim, then through the simulator, and the
//! table compares per-tenant kernel latency (launch to completion) p50/p95/p99 and throughput.
//!
//! ```text
//! cargo run --release -p carve-simulate --example sim_vs_real [-- --seconds 4]
//!     [--only "fixed 0.7/0.3,best effort x2"] [--check 10]
//! ```
//!
//! `--check PCT` exits with status 1 when a simulated p95 is off the real one by more than PCT %
//! (`tests/sim_vs_real.rs` runs it so). Run it optimised: the simulator's host-side figures are
//! those of optimised builds of the daemon, the shim and the stand-in.
//!
//! The real side (scenarios, the stand) is `carve_test_support::sim_vs_real`; the simulated side
//! and the table are here.

use carve_simulate::{simulate, Arrivals, Load, Placement, Service, Slicing, Tenant};
use carve_test_support::sim_vs_real::{self as real, Figures, Scenario, Stand, IN_FLIGHT};

/// Simulated seconds per scenario (the simulator is deterministic; a long run settles its
/// percentiles).
const SIM_SECONDS: f64 = 60.0;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        a.iter()
            .position(|x| x == name)
            .and_then(|i| a.get(i + 1))
            .cloned()
    };
    let seconds: f64 = arg("--seconds").and_then(|s| s.parse().ok()).unwrap_or(4.0);
    let check: Option<f64> = arg("--check").and_then(|s| s.parse().ok());
    let only: Option<Vec<String>> =
        arg("--only").map(|s| s.split(',').map(|x| x.trim().to_string()).collect());
    let scenarios: Vec<Scenario> = real::scenarios()
        .into_iter()
        .filter(|s| only.as_ref().is_none_or(|o| o.iter().any(|x| x == s.name)))
        .collect();
    if scenarios.is_empty() {
        eprintln!("no such scenario");
        std::process::exit(2);
    }
    let stand = Stand::new("carve-sim-vs-real");
    println!(
        "stand-in GPU, carve sched (default slice) + shim, carve-workload: one stream, {} kernels in \
         flight; {seconds} s real per scenario, {} s simulated",
        IN_FLIGHT, SIM_SECONDS
    );
    println!("{}", header());
    let mut rows = Vec::new();
    for s in &scenarios {
        for r in compare(&stand, s, seconds) {
            println!("{}", line(&r));
            rows.push(r);
        }
    }
    let worst = rows
        .iter()
        .map(|r| r.p95_error_pct().abs())
        .fold(0.0, f64::max);
    println!("worst |p95 error|: {worst:.1}%");
    drop(stand);
    if let Some(limit) = check {
        if worst > limit {
            println!("FAIL: a simulated p95 is more than {limit}% off the real one");
            std::process::exit(1);
        }
    }
}

#[derive(Debug, Clone)]
struct Row {
    scenario: &'static str,
    tenant: String,
    kernel_us: u64,
    real: Figures,
    sim: Figures,
}

impl Row {
    /// (simulated − real) / real of the p95, in %.
    fn p95_error_pct(&self) -> f64 {
        (self.sim.p95_ms - self.real.p95_ms) / self.real.p95_ms.max(1e-9) * 100.0
    }
}

/// Runs the scenario for real and through the simulator; one row per tenant.
fn compare(stand: &Stand, s: &Scenario, seconds: f64) -> Vec<Row> {
    let real = stand.real(s, seconds);
    let sim = simulated(s, SIM_SECONDS, 1);
    real.into_iter()
        .zip(sim)
        .enumerate()
        .map(|(i, (real, sim))| Row {
            scenario: s.name,
            tenant: format!("t{i}"),
            kernel_us: s.tenants[i].1,
            real,
            sim,
        })
        .collect()
}

/// The scenario through the simulator, with the default (carve sched on bare metal) switch: each
/// tenant's `carve-workload` stream is a pipeline of depth [`IN_FLIGHT`] (`Arrivals::Pipeline`)
/// with deterministic service of the kernel's length.
fn simulated(s: &Scenario, seconds: f64, seed: u64) -> Vec<Figures> {
    let tenants: Vec<Tenant> = s
        .tenants
        .iter()
        .enumerate()
        .map(|(i, (share, us))| Tenant {
            name: format!("t{i}"),
            load: Load {
                arrivals: Arrivals::Pipeline { depth: IN_FLIGHT },
                work_ms: *us as f64 / 1e3,
                service: Service::Deterministic,
                memory_bound: 0.0,
            },
            placement: Placement::TimeShared,
            share: *share,
        })
        .collect();
    let slicing = Slicing {
        settings: s.schedule().settings,
        ..Slicing::default()
    };
    simulate(&tenants, &slicing, seconds, seed)
        .expect("valid scenario")
        .tenants
        .into_iter()
        .map(|t| Figures {
            per_s: t.throughput_per_s,
            p50_ms: t.p50_ms,
            p95_ms: t.p95_ms,
            p99_ms: t.p99_ms,
        })
        .collect()
}

/// The table's header.
fn header() -> String {
    format!(
        "{:<16} {:<6} {:>7}   {:>8} {:>7} {:>7} {:>6}   {:>7} {:>7} {:>7} {:>6}   {:>8}",
        "scenario",
        "tenant",
        "kernel",
        "real p50",
        "p95",
        "p99",
        "k/s",
        "sim p50",
        "p95",
        "p99",
        "k/s",
        "p95 err"
    )
}

/// One row of the table.
fn line(r: &Row) -> String {
    format!(
        "{:<16} {:<6} {:>5}us   {:>8.3} {:>7.3} {:>7.3} {:>6.0}   {:>7.3} {:>7.3} {:>7.3} {:>6.0}   {:>+7.1}%",
        r.scenario,
        r.tenant,
        r.kernel_us,
        r.real.p50_ms,
        r.real.p95_ms,
        r.real.p99_ms,
        r.real.per_s,
        r.sim.p50_ms,
        r.sim.p95_ms,
        r.sim.p99_ms,
        r.sim.per_s,
        r.p95_error_pct()
    )
}
