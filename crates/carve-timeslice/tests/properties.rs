//! Property tests with a small deterministic GPU: tenants launch kernels of 50 µs – 5 ms while
//! they hold a turn, a kernel started before the turn ends runs to completion (overrun).

use carve_timeslice::{Config, Decision, Policy, Scheduler, TenantId};
use proptest::prelude::*;

/// A tiny deterministic generator for kernel lengths.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn kernel(&mut self, max_us: u64) -> u64 {
        (50 + self.next() % (max_us - 49)) * 1000
    }
}

struct Run {
    busy: Vec<u64>,
    /// Longest wait of a tenant with work between two of its turns.
    max_wait: Vec<u64>,
    idle_with_work: u64,
    end: u64,
}

/// Drives `s` with always-busy tenants `busy_ids` (others registered but idle) until `end`.
fn drive(s: &mut Scheduler, n: usize, busy_ids: &[usize], seed: u64, max_us: u64, end: u64) -> Run {
    let mut rng = Lcg(seed);
    for &i in busy_ids {
        s.set_pending(TenantId(i as u32), true, 0);
    }
    let mut now = 0u64;
    let mut r = Run {
        busy: vec![0; n],
        max_wait: vec![0; n],
        idle_with_work: 0,
        end,
    };
    let mut last_run = vec![0u64; n];
    while now < end {
        match s.next(now) {
            Decision::Grant { tenant, until } => {
                let i = tenant.0 as usize;
                r.max_wait[i] = r.max_wait[i].max(now - last_run[i]);
                let start = now;
                while now < until {
                    now += rng.kernel(max_us);
                }
                s.finish(tenant, now - start, now);
                r.busy[i] += now - start;
                last_run[i] = now;
            }
            Decision::Idle { until } => {
                assert!(until > now, "idle must move time forward");
                r.idle_with_work += until - now;
                now = until;
            }
            Decision::Empty => panic!("busy tenants have work"),
        }
    }
    r
}

fn sched(policy: Policy, wc: bool) -> Scheduler {
    Scheduler::new(Config {
        policy,
        slice_ns: None,
        work_conserving: wc,
        averaging_factor: 33,
    })
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    /// Fixed shares converge to their targets despite overruns.
    #[test]
    fn fixed_shares_converge(raw in proptest::collection::vec(1u32..10, 2..6), seed in any::<u64>(), max_us in 100u64..5000) {
        let total: u32 = raw.iter().sum();
        let shares: Vec<f64> = raw.iter().map(|&x| x as f64 / total as f64 * 0.95).collect();
        let mut s = sched(Policy::FixedShare, false);
        for (i, sh) in shares.iter().enumerate() {
            s.add_tenant(TenantId(i as u32), Some(*sh), 0).unwrap();
        }
        let ids: Vec<usize> = (0..shares.len()).collect();
        let r = drive(&mut s, shares.len(), &ids, seed, max_us, 20_000_000_000);
        for (i, sh) in shares.iter().enumerate() {
            let got = r.busy[i] as f64 / r.end as f64;
            prop_assert!((got - sh).abs() < 0.01, "tenant {i}: {got:.4} vs {sh:.4} ({shares:?})");
        }
    }

    /// Equal share: 1/N of the time for every registered tenant, idle or not; the idle ones' share
    /// stays idle. Work-conserving: the busy ones split everything.
    #[test]
    fn equal_share_and_its_work_conserving_variant(n in 2usize..8, idle in 0usize..3, seed in any::<u64>(), wc in any::<bool>()) {
        let idle = idle.min(n - 1);
        let mut s = sched(Policy::EqualShare, wc);
        for i in 0..n {
            s.add_tenant(TenantId(i as u32), None, 0).unwrap();
        }
        let busy: Vec<usize> = (idle..n).collect();
        let r = drive(&mut s, n, &busy, seed, 2000, 10_000_000_000);
        let want = if wc { 1.0 / busy.len() as f64 } else { 1.0 / n as f64 };
        for &i in &busy {
            let got = r.busy[i] as f64 / r.end as f64;
            prop_assert!((got - want).abs() < 0.015, "tenant {i}: {got:.4} vs {want:.4}");
        }
        if wc {
            prop_assert!(r.idle_with_work == 0);
        }
    }

    /// Best effort: work-conserving and fair among busy tenants; nobody starves.
    #[test]
    fn best_effort_is_work_conserving_and_fair(n in 1usize..10, seed in any::<u64>(), max_us in 100u64..5000) {
        let mut s = sched(Policy::BestEffort, false);
        for i in 0..n {
            s.add_tenant(TenantId(i as u32), None, 0).unwrap();
        }
        let ids: Vec<usize> = (0..n).collect();
        let r = drive(&mut s, n, &ids, seed, max_us, 5_000_000_000);
        prop_assert_eq!(r.idle_with_work, 0);
        let slice = s.slice_ns();
        for i in 0..n {
            let got = r.busy[i] as f64 / r.end as f64;
            prop_assert!((got - 1.0 / n as f64).abs() < 0.02, "tenant {i}: {got:.4}");
            // No starvation: at most one turn (slice plus one kernel) of each other tenant.
            let bound = (n as u64) * (slice + max_us * 1000) + max_us * 1000;
            prop_assert!(r.max_wait[i] <= bound, "tenant {i} waited {} > {bound}", r.max_wait[i]);
        }
    }

    /// A tenant back from a long idle spell does not bring unbounded credit: it cannot hold the
    /// GPU much longer than a slice before the others run again. Debt never runs away.
    #[test]
    fn idle_credit_and_debt_stay_bounded(seed in any::<u64>(), gap_ms in 1u64..10_000) {
        let mut s = sched(Policy::FixedShare, false);
        s.add_tenant(TenantId(0), Some(0.5), 0).unwrap();
        s.add_tenant(TenantId(1), Some(0.5), 0).unwrap();
        // Tenant 1 idles for gap_ms while 0 works.
        let gap = gap_ms * 1_000_000;
        let r = drive(&mut s, 2, &[0], seed, 3000, gap);
        let _ = r;
        for st in s.stats(gap) {
            prop_assert!(st.credit_ns <= s.slice_ns() as i64);
        }
        s.set_pending(TenantId(1), true, gap);
        let mut now = gap;
        let mut run_of_1 = 0u64;
        let mut rng = Lcg(seed ^ 7);
        for _ in 0..20 {
            match s.next(now) {
                Decision::Grant { tenant, until } => {
                    let start = now;
                    while now < until { now += rng.kernel(3000); }
                    s.finish(tenant, now - start, now);
                    if tenant == TenantId(1) { run_of_1 += now - start; } else { run_of_1 = 0; }
                    prop_assert!(run_of_1 <= 2 * (s.slice_ns() + 3_000_000), "tenant 1 ran {run_of_1} in a row");
                }
                Decision::Idle { until } => now = until,
                Decision::Empty => break,
            }
        }
        for st in s.stats(now) {
            prop_assert!(st.debt_ns < 1_000_000_000);
        }
    }
}

/// Shares follow tenants as they come and go: equal share re-divides; fixed share stays.
#[test]
fn arrivals_and_departures() {
    let mut s = sched(Policy::EqualShare, false);
    s.add_tenant(TenantId(0), None, 0).unwrap();
    s.add_tenant(TenantId(1), None, 0).unwrap();
    let r = drive(&mut s, 3, &[0, 1], 1, 500, 2_000_000_000);
    assert!((r.busy[0] as f64 / r.end as f64 - 0.5).abs() < 0.02);
    s.add_tenant(TenantId(2), None, r.end).unwrap();
    let targets: Vec<f64> = s.stats(r.end).iter().map(|t| t.target_share).collect();
    assert!(targets.iter().all(|t| (t - 1.0 / 3.0).abs() < 1e-9));
    s.remove_tenant(TenantId(2), r.end);
    let mut f = sched(Policy::FixedShare, false);
    f.add_tenant(TenantId(0), Some(0.3), 0).unwrap();
    f.add_tenant(TenantId(1), None, 0).unwrap();
    assert!((f.stats(0)[1].target_share - 0.7).abs() < 1e-9);
    f.add_tenant(TenantId(2), None, 0).unwrap();
    assert!((f.stats(0)[0].target_share - 0.3).abs() < 1e-9);
    assert!((f.stats(0)[1].target_share - 0.35).abs() < 1e-9);
}
