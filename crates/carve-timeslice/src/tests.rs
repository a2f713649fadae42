//! Unit tests: one behaviour each, on small hand-driven scenarios.

use super::*;

const MS: u64 = 1_000_000;

fn cfg(policy: Policy) -> Settings {
    Settings {
        policy,
        ..Settings::default()
    }
}

fn sched(policy: Policy, work_conserving: bool, shares: &[Option<f64>]) -> Scheduler {
    let mut s = Scheduler::new(Settings {
        work_conserving,
        ..cfg(policy)
    })
    .unwrap();
    for (i, sh) in shares.iter().enumerate() {
        s.add_tenant(TenantId(i as u32), *sh, 0).unwrap();
    }
    s
}

/// Runs the GPU from `*now` to `end` with tenants that launch kernels of `kernel` ns while they
/// hold a turn (the last one may overrun). Returns GPU time per tenant index, and the longest
/// run of consecutive GPU time any one tenant held.
fn run(s: &mut Scheduler, now: &mut u64, end: u64, kernel: u64) -> (Vec<u64>, Vec<u64>) {
    let n = s
        .stats(*now)
        .iter()
        .map(|t| t.tenant.0 + 1)
        .max()
        .unwrap_or(0) as usize;
    let mut busy = vec![0; n];
    let mut streak = vec![0; n];
    let mut current = (u32::MAX, 0u64);
    while *now < end {
        match s.next(*now) {
            Decision::Grant { tenant, until } => {
                let start = *now;
                while *now < until {
                    *now += kernel;
                }
                s.finish(tenant, *now - start, *now);
                busy[tenant.0 as usize] += *now - start;
                if current.0 != tenant.0 {
                    current = (tenant.0, 0);
                }
                current.1 += *now - start;
                let k = tenant.0 as usize;
                streak[k] = streak[k].max(current.1);
            }
            Decision::Idle { until } => {
                assert!(until > *now);
                *now = until;
                current = (u32::MAX, 0);
            }
            Decision::Empty => {
                *now += MS;
                current = (u32::MAX, 0);
            }
        }
    }
    (busy, streak)
}

fn share(busy: u64, over: u64) -> f64 {
    busy as f64 / over as f64
}

#[test]
fn default_slice_follows_vgpu_table_1() {
    let mut s = Scheduler::new(cfg(Policy::EqualShare)).unwrap();
    for i in 0..8 {
        s.add_tenant(TenantId(i), None, 0).unwrap();
    }
    assert_eq!(s.slice_ns(), 2 * MS);
    s.add_tenant(TenantId(8), None, 0).unwrap();
    assert_eq!(s.slice_ns(), MS);
    s.remove_tenant(TenantId(3), 0);
    assert_eq!(s.slice_ns(), 2 * MS);
    assert_eq!(default_slice_ns(0), 2 * MS);
    assert_eq!(default_slice_ns(9), MS);
    // A configured slice holds whatever the count.
    let mut s = Scheduler::new(Settings {
        slice_ns: Some(24 * MS),
        ..cfg(Policy::BestEffort)
    })
    .unwrap();
    for i in 0..12 {
        s.add_tenant(TenantId(i), None, 0).unwrap();
    }
    assert_eq!(s.slice_ns(), 24 * MS);
}

#[test]
fn config_is_validated() {
    let with_slice = |ns| Settings {
        slice_ns: Some(ns),
        ..cfg(Policy::BestEffort)
    };
    let with_factor = |averaging_factor| Settings {
        averaging_factor,
        ..cfg(Policy::BestEffort)
    };
    for bad in [0, MS - 1, 30 * MS + 1, 31 * MS] {
        let e = Scheduler::new(with_slice(bad)).unwrap_err();
        assert!(e.0.contains("1 to 30 ms"), "{e}");
    }
    for good in [MS, 30 * MS] {
        assert!(with_slice(good).validate().is_ok());
    }
    for bad in [0, 61] {
        let e = Scheduler::new(with_factor(bad)).unwrap_err();
        assert!(e.0.contains("averaging factor"), "{e}");
    }
    for good in [1, 33, 60] {
        assert!(with_factor(good).validate().is_ok());
    }

    let mut s = Scheduler::new(cfg(Policy::FixedShare)).unwrap();
    for bad in [1.5, 0.0, -0.1, f64::NAN, f64::INFINITY] {
        assert!(s.add_tenant(TenantId(0), Some(bad), 0).is_err(), "{bad}");
    }
    s.add_tenant(TenantId(0), Some(0.7), 0).unwrap();
    let e = s.add_tenant(TenantId(1), Some(0.4), 0).unwrap_err();
    assert!(e.0.contains("more than 1"), "{e}");
    s.add_tenant(TenantId(1), Some(0.3), 0).unwrap();
    assert!(s.add_tenant(TenantId(0), None, 0).is_err(), "duplicate id");
    assert_eq!(s.stats(0).len(), 2);
}

#[test]
fn best_effort_is_round_robin_among_tenants_with_work() {
    let mut s = sched(Policy::BestEffort, false, &[None, None, None]);
    assert_eq!(s.next(0), Decision::Empty);
    s.set_pending(TenantId(0), true, 0);
    s.set_pending(TenantId(2), true, 0);
    let mut now = 0;
    let mut order = Vec::new();
    for k in 0..6 {
        if k == 4 {
            s.set_pending(TenantId(1), true, now);
        }
        let Decision::Grant { tenant, until } = s.next(now) else {
            panic!("best effort never idles while someone has work")
        };
        assert_eq!(until - now, 2 * MS);
        s.finish(tenant, until - now, until);
        now = until;
        order.push(tenant.0);
    }
    assert_eq!(order, [0, 2, 0, 2, 0, 1]);
    for t in 0..3 {
        s.set_pending(TenantId(t), false, now);
    }
    assert_eq!(s.next(now), Decision::Empty);
    assert!(s.stats(now).iter().all(|t| t.credit_ns == 0));
}

#[test]
fn equal_share_leaves_an_idle_tenants_share_idle() {
    let mut s = sched(Policy::EqualShare, false, &[None, None]);
    s.set_pending(TenantId(0), true, 0);
    let mut now = 0;
    let (busy, _) = run(&mut s, &mut now, 2000 * MS, 300_000);
    assert!((share(busy[0], now) - 0.5).abs() < 0.01, "{busy:?}");
    // A third tenant arrives: 1/3 each.
    let t0 = now;
    s.add_tenant(TenantId(2), None, now).unwrap();
    assert!(s
        .stats(now)
        .iter()
        .all(|t| (t.target_share - 1.0 / 3.0).abs() < 1e-12));
    let (busy, _) = run(&mut s, &mut now, t0 + 3000 * MS, 300_000);
    assert!(
        (share(busy[0], now - t0) - 1.0 / 3.0).abs() < 0.01,
        "{busy:?}"
    );
    // Work-conserving: the only tenant with work gets everything.
    let mut s = sched(Policy::EqualShare, true, &[None, None]);
    s.set_pending(TenantId(0), true, 0);
    let mut now = 0;
    let (busy, _) = run(&mut s, &mut now, 1000 * MS, 300_000);
    assert_eq!(busy[0], now);
}

#[test]
fn fixed_share_is_constant_and_leaves_unassigned_share_idle() {
    let mut s = sched(Policy::FixedShare, false, &[Some(0.3), Some(0.2), None]);
    let targets =
        |s: &Scheduler| -> Vec<f64> { s.stats(0).iter().map(|t| t.target_share).collect() };
    assert_eq!(targets(&s), [0.3, 0.2, 0.5]);
    s.add_tenant(TenantId(3), None, 0).unwrap();
    assert_eq!(targets(&s), [0.3, 0.2, 0.25, 0.25]);
    s.remove_tenant(TenantId(2), 0);
    s.remove_tenant(TenantId(3), 0);
    assert_eq!(targets(&s), [0.3, 0.2]);
    // Alone with work, tenant 0 gets its 30 %; the rest stays idle.
    s.set_pending(TenantId(0), true, 0);
    let mut now = 0;
    let (busy, _) = run(&mut s, &mut now, 2000 * MS, 300_000);
    assert!((share(busy[0], now) - 0.3).abs() < 0.01, "{busy:?}");
    assert_eq!(busy[1], 0);
}

#[test]
fn work_conserving_splits_idle_time_in_proportion_to_shares() {
    // 0.3 and 0.1 busy, 0.1 registered but idle, 0.5 unassigned: 3 : 1.
    let mut s = sched(Policy::FixedShare, true, &[Some(0.3), Some(0.1), Some(0.1)]);
    s.set_pending(TenantId(0), true, 0);
    s.set_pending(TenantId(1), true, 0);
    let mut now = 0;
    let (busy, _) = run(&mut s, &mut now, 4000 * MS, 300_000);
    assert_eq!(busy[0] + busy[1], now, "never idle while someone has work");
    assert!((share(busy[0], now) - 0.75).abs() < 0.01, "{busy:?}");
    assert!((share(busy[1], now) - 0.25).abs() < 0.01, "{busy:?}");
    assert_eq!(busy[2], 0);
}

#[test]
fn a_tenant_back_from_idle_gets_about_one_slice_ahead() {
    for wc in [false, true] {
        for policy in [Policy::EqualShare, Policy::FixedShare] {
            let mut s = sched(policy, wc, &[Some(0.3), Some(0.1), Some(0.1)]);
            s.set_pending(TenantId(0), true, 0);
            s.set_pending(TenantId(1), true, 0);
            let mut now = 0;
            run(&mut s, &mut now, 10_000 * MS, 300_000);
            for t in s.stats(now) {
                if t.tenant == TenantId(2) {
                    assert!(t.credit_ns <= s.slice_ns() as i64, "{t:?}");
                }
            }
            s.set_pending(TenantId(2), true, now);
            let end = now + 100 * MS;
            let (_, streak) = run(&mut s, &mut now, end, 300_000);
            // One slice of credit plus the slice it may run on it, plus one kernel of overrun.
            assert!(
                streak[2] <= 2 * s.slice_ns() + 300_000,
                "{policy:?} wc={wc}: {streak:?}"
            );
        }
    }
}

#[test]
fn idle_until_the_first_tenant_with_work_has_credit() {
    let mut s = sched(Policy::EqualShare, false, &[None, None]);
    s.set_pending(TenantId(0), true, 0);
    let Decision::Grant { until, .. } = s.next(0) else {
        panic!()
    };
    // It spends its starting credit (one slice) and the slice's worth it earned at 1/2.
    s.finish(TenantId(0), until, until);
    let mut now = until;
    let Decision::Grant { until, .. } = s.next(now) else {
        panic!("{:?}", s.stats(now))
    };
    s.finish(TenantId(0), until - now, until);
    now = until;
    let Decision::Idle { until } = s.next(now) else {
        panic!("{:?}", s.stats(now))
    };
    assert!(until > now);
    let credit = s.stats(now)[0].credit_ns;
    assert!(credit <= 0);
    // At rate 1/2 it has credit again after twice its deficit.
    assert_eq!(until - now, (-credit) as u64 * 2 + 1);
    assert!(matches!(s.next(until), Decision::Grant { .. }));
}

#[test]
fn overrun_is_carried_and_cut_from_later_slices() {
    let mut s = Scheduler::new(Settings {
        slice_ns: Some(2 * MS),
        averaging_factor: 10,
        ..cfg(Policy::BestEffort)
    })
    .unwrap();
    assert_eq!(s.debt_cap_ns(), 20 * MS);
    s.add_tenant(TenantId(0), None, 0).unwrap();
    s.set_pending(TenantId(0), true, 0);
    let Decision::Grant { until, .. } = s.next(0) else {
        panic!()
    };
    assert_eq!(until, 2 * MS);
    s.finish(TenantId(0), 3 * MS, 3 * MS);
    assert_eq!(s.stats(3 * MS)[0].debt_ns, MS);
    // 1 ms of debt / 10: the next slice is 0.1 ms shorter, and the debt 0.1 ms smaller.
    let Decision::Grant { until, .. } = s.next(3 * MS) else {
        panic!()
    };
    assert_eq!(until - 3 * MS, 1_900_000);
    assert_eq!(s.stats(3 * MS)[0].debt_ns, 900_000);
    // Yielding early leaves the debt as it is.
    s.finish(TenantId(0), MS, 4 * MS);
    assert_eq!(s.stats(4 * MS)[0].debt_ns, 900_000);
    // Debt is capped at averaging factor x slice.
    s.charge(TenantId(0), 1000 * MS, 5 * MS);
    assert_eq!(s.stats(5 * MS)[0].debt_ns, 20 * MS);
    // A turn is never cut below the minimum; what was cut comes off the debt.
    let Decision::Grant { until, .. } = s.next(5 * MS) else {
        panic!()
    };
    assert_eq!(until - 5 * MS, MIN_TURN_NS);
    assert_eq!(s.stats(5 * MS)[0].debt_ns, 20 * MS - (2 * MS - MIN_TURN_NS));
}

#[test]
fn charge_pays_late_work_in_share_policies() {
    let mut s = sched(Policy::EqualShare, false, &[None, None]);
    s.set_pending(TenantId(0), true, 0);
    s.set_pending(TenantId(1), true, 0);
    let before = s.stats(0)[0].credit_ns;
    s.charge(TenantId(0), 5 * MS, 0);
    let after = &s.stats(0)[0];
    assert_eq!(after.credit_ns, before - 5 * MS as i64);
    assert_eq!(after.gpu_time_ns, 5 * MS);
    assert_eq!(after.debt_ns, 5 * MS);
    // The other one goes first now.
    assert!(matches!(
        s.next(0),
        Decision::Grant {
            tenant: TenantId(1),
            ..
        }
    ));
}

#[test]
fn throttled_time_counts_waiting_with_work() {
    let mut s = sched(Policy::BestEffort, false, &[None, None]);
    s.set_pending(TenantId(0), true, 0);
    s.set_pending(TenantId(1), true, 0);
    let Decision::Grant { tenant, until } = s.next(0) else {
        panic!()
    };
    assert_eq!(tenant, TenantId(0));
    s.finish(tenant, until, until);
    let Decision::Grant { tenant, .. } = s.next(until) else {
        panic!()
    };
    assert_eq!(tenant, TenantId(1));
    let st = s.stats(until);
    assert_eq!(st[0].throttled_ns, 0);
    assert_eq!(st[1].throttled_ns, 2 * MS);
    assert_eq!((st[0].turns, st[1].turns), (1, 1));
}

#[test]
fn work_conserving_credits_are_relative_to_the_leader() {
    // Tenant 2 runs up a large bill (late-drained work) and leaves without paying it; the busy
    // tenants were owed that time, but a newcomer must not wait for them to be paid.
    for policy in [Policy::EqualShare, Policy::FixedShare] {
        let mut s = sched(policy, true, &[Some(0.3), Some(0.3), Some(0.2)]);
        for t in 0..3 {
            s.set_pending(TenantId(t), true, 0);
        }
        let mut now = 0;
        run(&mut s, &mut now, 100 * MS, 300_000);
        s.charge(TenantId(2), 500 * MS, now);
        s.remove_tenant(TenantId(2), now);
        let st = s.stats(now);
        assert_eq!(st.iter().map(|t| t.credit_ns).max(), Some(0), "{st:?}");
        s.add_tenant(TenantId(3), Some(0.2), now).unwrap();
        s.set_pending(TenantId(3), true, now);
        assert_eq!(
            s.next(now),
            Decision::Grant {
                tenant: TenantId(3),
                until: now + 2 * MS
            },
            "{policy:?}"
        );
    }
}

#[test]
fn credit_owed_survives_a_moment_without_work() {
    // Tenant 0 waits while tenant 1 overruns by far, so it is owed more than a slice; then it has
    // no work for a moment (as a client between a release and its next acquire). What it is
    // owed stays, and it earns meanwhile: over the next second both get the same GPU time,
    // within a slice.
    let mut s = sched(Policy::FixedShare, false, &[Some(0.5), Some(0.5)]);
    s.set_pending(TenantId(0), true, 0);
    s.set_pending(TenantId(1), true, 0);
    let Decision::Grant { tenant, until } = s.next(0) else {
        panic!()
    };
    assert_eq!(tenant, TenantId(0));
    s.finish(tenant, until, until);
    let Decision::Grant { tenant, .. } = s.next(until) else {
        panic!()
    };
    assert_eq!(tenant, TenantId(1));
    let mut now = until + 12 * MS;
    s.finish(tenant, 12 * MS, now);
    let owed = s.stats(now)[0].credit_ns;
    assert!(owed > 2 * s.slice_ns() as i64, "{owed}");
    s.set_pending(TenantId(0), false, now);
    now += MS;
    s.set_pending(TenantId(0), true, now);
    // It earned its half of the millisecond, as if it had kept its work.
    assert!((s.stats(now)[0].credit_ns - (owed + 500_000)).abs() <= 1);
    let (busy, _) = run(&mut s, &mut now, 1000 * MS, 100_000);
    let (g0, g1) = (busy[0] + 2 * MS, busy[1] + 12 * MS);
    assert!(g0.abs_diff(g1) <= s.slice_ns(), "{g0} vs {g1}");
}
