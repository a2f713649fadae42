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

#[path = "../support/real.rs"]
mod real;

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
    let scenarios: Vec<real::Scenario> = real::scenarios()
        .into_iter()
        .filter(|s| only.as_ref().is_none_or(|o| o.iter().any(|x| x == s.name)))
        .collect();
    if scenarios.is_empty() {
        eprintln!("no such scenario");
        std::process::exit(2);
    }
    let stand = real::Stand::new("carve-sim-vs-real");
    println!(
        "stand-in GPU, carve sched (default slice) + shim, carve-workload: one stream, {} kernels in \
         flight; {seconds} s real per scenario, {} s simulated",
        real::IN_FLIGHT,
        real::SIM_SECONDS
    );
    println!("{}", real::header());
    let mut rows = Vec::new();
    for s in &scenarios {
        for r in stand.compare(s, seconds) {
            println!("{}", real::line(&r));
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
