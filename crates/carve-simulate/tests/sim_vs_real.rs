//! The simulator against reality (issue 7): two scenarios run for real, on the stand-in GPU
//! under the scheduler daemon with `carve-workload` tenants under the shim, and through the
//! simulator; each tenant's simulated p95 must be within 10% of the real one. The figures are
//! printed (`cargo test -p carve-simulate --test sim_vs_real -- --nocapture`).
//!
//! It runs `examples/sim_vs_real.rs`, built optimised whatever this test's profile: the
//! simulator's host-side figures (hand-over, wake-up) are those of optimised builds of the
//! daemon, the shim and the stand-in; unoptimised, the daemon alone hands over about 50 µs slower.

use carve_test_support::cargo_build;
use std::process::Command;

#[test]
fn simulated_p95_is_within_ten_percent_of_the_real_one() {
    let dir = cargo_build::build_with(
        "release",
        &["-p", "carve-simulate", "--example", "sim_vs_real"],
        &["examples/sim_vs_real"],
    );
    // Reality includes the host: with every core taken by something else, the daemon's and the
    // shim's threads wait for CPU and every hand-over stretches. A model error is systematic and
    // fails every attempt; a busy moment passes, so up to three attempts.
    let mut report = String::new();
    for attempt in 1..=3 {
        let out = Command::new(dir.join("examples/sim_vs_real"))
            .args(["--seconds", "2.5", "--check", "10"])
            .args(["--only", "fixed 0.7/0.3,best effort x2"])
            .output()
            .expect("run sim_vs_real");
        let text = String::from_utf8_lossy(&out.stdout);
        println!("attempt {attempt}:\n{text}");
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        if out.status.success() {
            return;
        }
        assert_eq!(
            out.status.code(),
            Some(1),
            "sim_vs_real failed: {}",
            out.status
        );
        report.push_str(&format!("attempt {attempt}:\n{text}\n"));
    }
    panic!("the simulator is more than 10% off reality in three attempts:\n{report}");
}

#[test]
fn time_slicing_is_modelled_as_the_daemon_by_default() {
    use carve_simulate::*;
    assert_eq!(Slicing::default().switch, Switch::SCHED);
}
