//! The simulator against queueing theory: M/M/1 and M/D/1 on a dedicated slice, and the
//! time-sliced GPU against what its policy promises.

use carve_simulate::*;
use carve_timeslice::{Policy, Settings};

/// A simulation whose settings are valid by construction here.
fn sim(tenants: &[Tenant], slicing: &Slicing, duration_s: f64, seed: u64) -> GroupResult {
    simulate(tenants, slicing, duration_s, seed).expect("valid settings")
}

fn dedicated(name: &str, rate: f64, work_ms: f64, service: Service) -> Tenant {
    Tenant {
        name: name.into(),
        load: Load {
            arrivals: Arrivals::Poisson { rate },
            work_ms,
            service,
            memory_bound: 0.0,
        },
        placement: Placement::Slice {
            sm: 1.0,
            bandwidth: 1.0,
        },
        share: None,
    }
}

#[test]
fn mm1_p95_matches_theory() {
    // λ = 60/s, μ = 100/s: sojourn time is exponential with rate μ − λ; p95 = ln 20 / (μ − λ).
    // Four simulated hours (≈ 860,000 requests); successive sojourn times are correlated, so a
    // single hour's p95 still wanders by a few percent.
    let (lambda, mu) = (60.0, 100.0);
    let runs: Vec<TenantResult> = (1..=4)
        .map(|seed| {
            let r = sim(
                &[dedicated("a", lambda, 1e3 / mu, Service::Exponential)],
                &Slicing::default(),
                3600.0,
                seed,
            );
            r.tenants[0].clone()
        })
        .collect();
    let avg = |f: fn(&TenantResult) -> f64| runs.iter().map(f).sum::<f64>() / runs.len() as f64;
    let want = 20f64.ln() / (mu - lambda) * 1e3;
    let p95 = avg(|t| t.p95_ms);
    assert!(
        (p95 - want).abs() / want < 0.02,
        "p95 {p95:.2} ms vs {want:.2}"
    );
    let mean = 1e3 / (mu - lambda);
    let got = avg(|t| t.mean_ms);
    assert!(
        (got - mean).abs() / mean < 0.02,
        "mean {got:.2} vs {mean:.2}"
    );
    assert!((avg(|t| t.utilisation) - lambda / mu).abs() < 0.005);
    assert!((avg(|t| t.throughput_per_s) - lambda).abs() / lambda < 0.005);
}

#[test]
fn md1_mean_wait_matches_theory() {
    // M/D/1: W_q = ρ / (2 μ (1 − ρ)).
    let (lambda, mu) = (70.0, 100.0);
    let rho = lambda / mu;
    let r = sim(
        &[dedicated("a", lambda, 1e3 / mu, Service::Deterministic)],
        &Slicing::default(),
        3600.0,
        2,
    );
    let want = rho / (2.0 * mu * (1.0 - rho)) * 1e3;
    let got = r.tenants[0].queueing_ms;
    assert!(
        (got - want).abs() / want < 0.03,
        "W_q {got:.3} ms vs {want:.3}"
    );
}

#[test]
fn a_smaller_slice_is_slower_by_its_fractions() {
    // Half the SMs, a quarter of the bandwidth, work half memory-bound: 0.5/0.5 + 0.5/0.25 = 3x.
    let mut t = dedicated("a", 1.0, 2.0, Service::Deterministic);
    t.load.memory_bound = 0.5;
    t.placement = Placement::Slice {
        sm: 0.5,
        bandwidth: 0.25,
    };
    let r = sim(&[t], &Slicing::default(), 600.0, 3);
    assert!(
        (r.tenants[0].p50_ms - 6.0).abs() < 0.01,
        "{}",
        r.tenants[0].p50_ms
    );
}

#[test]
fn time_slicing_follows_the_policy_and_a_noisy_neighbour_hurts() {
    let quiet = |name: &str| Tenant {
        name: name.into(),
        load: Load {
            arrivals: Arrivals::Poisson { rate: 20.0 },
            work_ms: 2.0,
            service: Service::Exponential,
            memory_bound: 0.0,
        },
        placement: Placement::TimeShared,
        share: None,
    };
    let alone = sim(&[quiet("q")], &Slicing::default(), 600.0, 4);
    let mut noisy = quiet("noisy");
    noisy.load.arrivals = Arrivals::Closed {
        clients: 8,
        think_ms: 0.0,
    };
    noisy.load.work_ms = 20.0;
    let both = sim(&[quiet("q"), noisy.clone()], &Slicing::default(), 600.0, 4);
    assert!(
        both.tenants[0].p95_ms > 2.0 * alone.tenants[0].p95_ms,
        "{:?} vs {:?}",
        both.tenants[0],
        alone.tenants[0]
    );
    // Fixed shares: a saturating pair splits the GPU as configured.
    let mut a = noisy.clone();
    a.name = "a".into();
    a.share = Some(0.75);
    let mut b = noisy;
    b.share = Some(0.25);
    let sl = Slicing {
        settings: Settings {
            policy: Policy::FixedShare,
            ..Settings::default()
        },
        ..Slicing::default()
    };
    let r = sim(&[a, b], &sl, 300.0, 5);
    let (ua, ub) = (
        r.tenants[0].utilisation * 0.75,
        r.tenants[1].utilisation * 0.25,
    );
    assert!((ua / (ua + ub) - 0.75).abs() < 0.02, "{ua} {ub}");
    assert!(r.gpu_busy > 0.9);
}

#[test]
fn same_seed_same_answer() {
    let t = [dedicated("a", 50.0, 5.0, Service::Lognormal { cv: 1.5 })];
    assert_eq!(
        sim(&t, &Slicing::default(), 60.0, 9),
        sim(&t, &Slicing::default(), 60.0, 9)
    );
}

#[test]
fn time_slicing_inside_a_slice_runs_at_the_slice_speed() {
    let t = Tenant {
        name: "a".into(),
        load: Load {
            arrivals: Arrivals::Poisson { rate: 1.0 },
            work_ms: 2.0,
            service: Service::Deterministic,
            memory_bound: 0.0,
        },
        placement: Placement::TimeShared,
        share: None,
    };
    let whole = sim(std::slice::from_ref(&t), &Slicing::default(), 300.0, 6);
    let half = Slicing {
        inside: Some((0.5, 0.5)),
        ..Slicing::default()
    };
    let r = sim(&[t], &half, 300.0, 6);
    let (w, h) = (whole.tenants[0].p50_ms, r.tenants[0].p50_ms);
    assert!(
        (h / w - 2.0).abs() < 0.05,
        "whole {w} ms, half slice {h} ms"
    );
}

#[test]
fn settings_the_daemon_would_refuse_are_an_error_not_a_panic() {
    let t = dedicated("a", 10.0, 1.0, Service::Deterministic);
    let shared = Tenant {
        placement: Placement::TimeShared,
        ..t
    };
    let bad_slice = Slicing {
        settings: Settings {
            slice_ns: Some(0),
            ..Settings::default()
        },
        ..Slicing::default()
    };
    let e = simulate(std::slice::from_ref(&shared), &bad_slice, 1.0, 1).unwrap_err();
    assert!(e.to_string().contains("1 to 30 ms"), "{e}");
    let mut greedy = vec![shared.clone(), shared];
    greedy[0].share = Some(0.7);
    greedy[1].share = Some(0.7);
    greedy[1].name = "b".into();
    let fixed = Slicing {
        settings: Settings {
            policy: Policy::FixedShare,
            ..Settings::default()
        },
        ..Slicing::default()
    };
    let e = simulate(&greedy, &fixed, 1.0, 1).unwrap_err();
    assert!(e.to_string().contains("more than 1"), "{e}");
}
