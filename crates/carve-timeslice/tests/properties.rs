//! Property tests with a tiny deterministic GPU: a tenant holding a turn launches kernels of
//! 50 µs – 5 ms back to back; a kernel started before the turn ends runs to completion, so turns
//! overrun their slice. Tenants come and go, go idle, come back, and some have finite bursts of
//! work (they yield early). Every step checks the invariants; long runs check the shares.

use carve_timeslice::{Decision, Policy, Scheduler, Settings, TenantId, DEFAULT_AVERAGING_FACTOR};
use proptest::prelude::*;

const MS: u64 = 1_000_000;

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
    /// A kernel of 50 µs to `max_us` µs.
    fn kernel(&mut self, max_us: u64) -> u64 {
        (50 + self.next() % (max_us - 49)) * 1000
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Work {
    None,
    Forever,
    /// This much GPU time left, then it goes idle.
    Burst(u64),
}

#[derive(Debug, Clone, Copy)]
enum Event {
    Add(Option<f64>),
    Remove,
    Work(Work),
}

/// What a run saw.
#[derive(Debug, Default)]
struct Run {
    /// GPU time per tenant.
    busy: Vec<u64>,
    /// Longest wait of a tenant with work for its next turn (from when its work arrived or its
    /// previous turn ended).
    max_wait: Vec<u64>,
    /// Time the GPU was idle while some tenant had work.
    idle_with_work: u64,
    /// Longest turn (GPU time of one grant).
    max_turn: u64,
    /// Smallest target share each tenant had while registered.
    min_target: Vec<f64>,
    end: u64,
}

/// Drives `s` until `end`, applying `script` ((time, tenant, event), any order) on the way, with
/// kernels of 50 µs to `max_us`. Checks at every step: the decision fits the world (`Empty`
/// exactly when nobody has work, grants only to registered tenants with work, `Idle` only for
/// share policies without `work_conserving`, and moves time forward), a tenant without work
/// earns at most one slice while idle (above what it had, if positive; checked without
/// `work_conserving`, where credits are absolute), debt stays within its cap.
fn drive(
    s: &mut Scheduler,
    n: usize,
    script: &[(u64, usize, Event)],
    seed: u64,
    max_us: u64,
    end: u64,
) -> Run {
    let mut script = script.to_vec();
    script.sort_by_key(|e| e.0);
    let mut script = script.into_iter().peekable();
    let mut rng = Lcg(seed);
    let mut registered = vec![false; n];
    let mut work = vec![Work::None; n];
    let mut since: Vec<Option<u64>> = vec![None; n];
    // Credit of each tenant when its idle spell began (as first seen).
    let mut idle_credit: Vec<Option<i64>> = vec![None; n];
    let absolute = !s.settings().work_conserving;
    let mut r = Run {
        busy: vec![0; n],
        max_wait: vec![0; n],
        min_target: vec![1.0; n],
        end,
        ..Run::default()
    };
    let share_idle_allowed =
        s.settings().policy != Policy::BestEffort && !s.settings().work_conserving;
    let mut now = 0u64;
    while now < end {
        while let Some(&(_, i, ev)) = script.peek().filter(|e| e.0 <= now) {
            script.next();
            let id = TenantId(i as u32);
            match ev {
                Event::Add(share) => {
                    if !registered[i] && s.add_tenant(id, share, now).is_ok() {
                        registered[i] = true;
                        work[i] = Work::None;
                    }
                }
                Event::Remove => {
                    s.remove_tenant(id, now);
                    idle_credit[i] = None;
                    registered[i] = false;
                    work[i] = Work::None;
                    since[i] = None;
                }
                Event::Work(w) if registered[i] => {
                    let has = w != Work::None;
                    if has && work[i] == Work::None {
                        since[i] = Some(now);
                    }
                    if !has {
                        since[i] = None;
                    }
                    work[i] = w;
                    s.set_pending(id, has, now);
                }
                Event::Work(_) => {}
            }
        }
        let someone = (0..n).any(|i| registered[i] && work[i] != Work::None);
        let slice = s.slice_ns() as i64;
        for st in s.stats(now) {
            let i = st.tenant.0 as usize;
            assert!(registered[i], "{st:?} was removed");
            if work[i] == Work::None {
                let start = *idle_credit[i].get_or_insert(st.credit_ns);
                let most = start.max(0) + slice + 1;
                if absolute {
                    assert!(
                        st.credit_ns <= most,
                        "idle credit rose above {most}: {st:?}"
                    );
                }
            } else {
                idle_credit[i] = None;
            }
            assert!(st.debt_ns <= s.debt_cap_ns(), "{st:?}");
            r.min_target[i] = r.min_target[i].min(st.target_share);
        }
        let next_event = script.peek().map_or(end, |e| e.0.max(now + 1)).min(end);
        match s.next(now) {
            Decision::Grant { tenant, until } => {
                let i = tenant.0 as usize;
                assert!(
                    registered[i] && work[i] != Work::None,
                    "granted {i} without work"
                );
                assert!(until > now);
                let from = since[i].expect("waiting since");
                r.max_wait[i] = r.max_wait[i].max(now - from);
                let start = now;
                while now < until {
                    match &mut work[i] {
                        Work::Forever => now += rng.kernel(max_us),
                        Work::Burst(left) => {
                            let k = rng.kernel(max_us).min(*left);
                            now += k;
                            *left -= k;
                            if *left == 0 {
                                work[i] = Work::None;
                                break;
                            }
                        }
                        Work::None => unreachable!(),
                    }
                }
                let used = now - start;
                s.finish(tenant, used, now);
                if work[i] == Work::None {
                    s.set_pending(tenant, false, now);
                    since[i] = None;
                } else {
                    since[i] = Some(now);
                }
                r.busy[i] += used;
                r.max_turn = r.max_turn.max(used);
            }
            Decision::Idle { until } => {
                assert!(someone, "Idle when nobody has work: use Empty");
                assert!(
                    share_idle_allowed,
                    "{:?} idled with work waiting",
                    s.settings()
                );
                assert!(until > now, "idle must move time forward");
                let to = until.min(next_event);
                r.idle_with_work += to - now;
                now = to;
            }
            Decision::Empty => {
                assert!(!someone, "Empty while someone has work");
                now = next_event;
            }
        }
    }
    r
}

fn sched(policy: Policy, work_conserving: bool) -> Scheduler {
    Scheduler::new(Settings {
        policy,
        slice_ns: None,
        work_conserving,
        averaging_factor: DEFAULT_AVERAGING_FACTOR,
    })
    .unwrap()
}

/// Registers tenants 0..shares.len() at 0 and gives `busy` ones endless work.
fn start(shares: &[Option<f64>], busy: &[usize]) -> Vec<(u64, usize, Event)> {
    let mut s: Vec<_> = shares
        .iter()
        .enumerate()
        .map(|(i, sh)| (0, i, Event::Add(*sh)))
        .collect();
    s.extend(busy.iter().map(|&i| (0, i, Event::Work(Work::Forever))));
    s
}

fn achieved(r: &Run, i: usize) -> f64 {
    r.busy[i] as f64 / r.end as f64
}

fn policy() -> impl Strategy<Value = Policy> {
    prop_oneof![
        Just(Policy::BestEffort),
        Just(Policy::EqualShare),
        Just(Policy::FixedShare)
    ]
}

/// A script of arrivals, departures, busy spells, bursts and idle spells for `n` tenants.
fn script(n: usize, horizon_ms: u64) -> impl Strategy<Value = Vec<(u64, usize, Event)>> {
    let event = prop_oneof![
        1 => (proptest::option::of(0.05f64..0.4)).prop_map(Event::Add),
        1 => Just(Event::Remove),
        3 => Just(Event::Work(Work::Forever)),
        3 => (100u64..30_000).prop_map(|us| Event::Work(Work::Burst(us * 1000))),
        2 => Just(Event::Work(Work::None)),
    ];
    proptest::collection::vec((0..horizon_ms * MS, 0..n, event), 0..60)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, .. ProptestConfig::default() })]

    /// Fixed shares converge to their targets (within 1 percentage point) despite overruns,
    /// with or without idle registered tenants; unassigned and idle shares stay idle. With
    /// `work_conserving`, the busy tenants split everything in proportion to their shares.
    #[test]
    fn fixed_shares_converge(
        raw in proptest::collection::vec(1u32..10, 2..6),
        idle in 0usize..2,
        unassigned in 0.0f64..0.3,
        wc in any::<bool>(),
        seed in any::<u64>(),
        max_us in 100u64..5000,
    ) {
        let total: u32 = raw.iter().sum();
        let shares: Vec<f64> = raw
            .iter()
            .map(|&x| x as f64 / total as f64 * (1.0 - unassigned))
            .collect();
        let busy: Vec<usize> = (idle.min(shares.len() - 1)..shares.len()).collect();
        let mut s = sched(Policy::FixedShare, wc);
        let given: Vec<Option<f64>> = shares.iter().map(|&x| Some(x)).collect();
        let r = drive(&mut s, shares.len(), &start(&given, &busy), seed, max_us, 20_000 * MS);
        let busy_sum: f64 = busy.iter().map(|&i| shares[i]).sum();
        for i in 0..shares.len() {
            let want = match (busy.contains(&i), wc) {
                (false, _) => 0.0,
                (true, false) => shares[i],
                (true, true) => shares[i] / busy_sum,
            };
            let got = achieved(&r, i);
            prop_assert!(
                (got - want).abs() < 0.01,
                "tenant {i}: {got:.4} vs {want:.4} ({shares:?}, busy {busy:?})"
            );
        }
        if wc {
            prop_assert_eq!(r.idle_with_work, 0);
        }
    }

    /// Equal share: 1/N of the time for every registered tenant, idle or not; the idle ones'
    /// share stays idle. Work-conserving: the busy ones split everything.
    #[test]
    fn equal_share_and_its_work_conserving_variant(
        n in 2usize..10,
        idle in 0usize..3,
        seed in any::<u64>(),
        wc in any::<bool>(),
        max_us in 100u64..5000,
    ) {
        let idle = idle.min(n - 1);
        let busy: Vec<usize> = (idle..n).collect();
        let mut s = sched(Policy::EqualShare, wc);
        let r = drive(&mut s, n, &start(&vec![None; n], &busy), seed, max_us, 10_000 * MS);
        let want = if wc { 1.0 / busy.len() as f64 } else { 1.0 / n as f64 };
        for &i in &busy {
            let got = achieved(&r, i);
            prop_assert!((got - want).abs() < 0.01, "tenant {i}: {got:.4} vs {want:.4}");
        }
        if wc {
            prop_assert_eq!(r.idle_with_work, 0);
        }
    }

    /// Best effort is work-conserving and fair among busy tenants with the same kernels (within
    /// 2 points: nothing feeds back on shares, so they carry the kernels' randomness), and nobody
    /// waits longer than one turn of each of the others.
    #[test]
    fn best_effort_is_work_conserving_and_fair(
        n in 1usize..12,
        seed in any::<u64>(),
        max_us in 100u64..5000,
    ) {
        let mut s = sched(Policy::BestEffort, false);
        let ids: Vec<usize> = (0..n).collect();
        let r = drive(&mut s, n, &start(&vec![None; n], &ids), seed, max_us, 10_000 * MS);
        prop_assert_eq!(r.idle_with_work, 0);
        let turn = s.slice_ns() + max_us * 1000;
        for i in 0..n {
            let got = achieved(&r, i);
            prop_assert!((got - 1.0 / n as f64).abs() < 0.02, "tenant {i}: {got:.4}");
            let bound = (n as u64 - 1).max(1) * turn;
            prop_assert!(r.max_wait[i] <= bound, "tenant {i} waited {} > {bound}", r.max_wait[i]);
        }
    }

    /// Overrun compensation (vGPU's ARR): under best effort with kernels no longer than a slice,
    /// almost every turn overruns, yet every busy tenant's GPU time is exactly turns × slice + its
    /// remaining debt, and the debt stays below averaging factor × longest kernel (past that, the
    /// cut exceeds any overrun), so the mean turn tends to one slice.
    #[test]
    fn compensation_makes_the_mean_turn_one_slice(
        n in 1usize..6,
        seed in any::<u64>(),
        max_us in 200u64..2000,
        factor in 1u32..61,
    ) {
        let config = Settings { averaging_factor: factor, ..Settings::default() };
        let mut s = Scheduler::new(config).unwrap();
        let ids: Vec<usize> = (0..n).collect();
        let r = drive(&mut s, n, &start(&vec![None; n], &ids), seed, max_us, 5_000 * MS);
        let slice = s.slice_ns();
        prop_assert!(r.max_turn > slice, "no overrun, nothing tested");
        for st in s.stats(r.end) {
            prop_assert_eq!(st.gpu_time_ns, st.turns * slice + st.debt_ns, "{:?}", st);
            prop_assert!(st.debt_ns <= factor as u64 * (max_us * 1000 + 1), "{:?}", st);
            let mean = st.gpu_time_ns as f64 / st.turns as f64;
            prop_assert!((mean / slice as f64 - 1.0).abs() < 0.05, "mean turn {mean} ns: {st:?}");
        }
    }

    /// Equal and fixed share hold even when one tenant's kernels always overrun the slice by
    /// far (5 ms kernels, 2 ms slices) and the other's never do (50 µs): paying for GPU time
    /// really used brings the long-run shares back to target.
    #[test]
    fn shares_hold_against_tenants_that_always_overrun(
        seed in any::<u64>(),
        fixed in any::<bool>(),
        wc in any::<bool>(),
    ) {
        let (policy, shares) = if fixed {
            (Policy::FixedShare, [Some(0.3), Some(0.7)])
        } else {
            (Policy::EqualShare, [None, None])
        };
        let mut s = sched(policy, wc);
        for (i, sh) in shares.iter().enumerate() {
            s.add_tenant(TenantId(i as u32), *sh, 0).unwrap();
            s.set_pending(TenantId(i as u32), true, 0);
        }
        let mut rng = Lcg(seed);
        let (mut now, mut busy) = (0u64, [0u64; 2]);
        let end = 10_000 * MS;
        while now < end {
            let Decision::Grant { tenant, until } = s.next(now) else {
                prop_assert!(!wc, "work-conserving and idle");
                let Decision::Idle { until } = s.next(now) else { unreachable!() };
                now = until;
                continue;
            };
            let i = tenant.0 as usize;
            let start = now;
            while now < until {
                now += if i == 0 { 5 * MS } else { 50_000 + rng.next() % 1000 };
            }
            s.finish(tenant, now - start, now);
            busy[i] += now - start;
        }
        let want = shares[0].unwrap_or(0.5);
        let got = busy[0] as f64 / now as f64;
        prop_assert!((got - want).abs() < 0.01, "overrunning tenant got {got:.4}, target {want}");
    }

    /// The daemon's pattern: a client releases its turn and acquires the next one a moment
    /// later, so its tenant has no work for an instant after every turn. Fixed and equal shares
    /// still converge (within 1 point).
    #[test]
    fn shares_hold_when_tenants_drop_their_work_between_turns(
        seed in any::<u64>(),
        fixed in any::<bool>(),
        wc in any::<bool>(),
        max_us in 100u64..3000,
        gap_us in 1u64..1500,
    ) {
        let (policy, shares) = if fixed {
            (Policy::FixedShare, [0.5, 0.3, 0.2])
        } else {
            (Policy::EqualShare, [1.0 / 3.0; 3])
        };
        let mut s = sched(policy, wc);
        for (i, sh) in shares.iter().enumerate() {
            s.add_tenant(TenantId(i as u32), fixed.then_some(*sh), 0).unwrap();
            s.set_pending(TenantId(i as u32), true, 0);
        }
        let mut rng = Lcg(seed);
        let (mut now, mut busy) = (0u64, [0u64; 3]);
        // (tenant, when) of the client that comes back.
        let mut back: Option<(TenantId, u64)> = None;
        let end = 10_000 * MS;
        while now < end {
            match s.next(now) {
                Decision::Grant { tenant, until } => {
                    let start = now;
                    while now < until {
                        now += rng.kernel(max_us);
                        if let Some((t, at)) = back.filter(|b| b.1 <= now) {
                            s.set_pending(t, true, at.max(start));
                            back = None;
                        }
                    }
                    s.finish(tenant, now - start, now);
                    busy[tenant.0 as usize] += now - start;
                    if let Some((t, at)) = back.take() {
                        s.set_pending(t, true, at.min(now));
                    }
                    s.set_pending(tenant, false, now);
                    back = Some((tenant, now + gap_us * 1000));
                }
                Decision::Idle { until } => {
                    let to = back.map_or(until, |b| b.1.min(until)).max(now + 1);
                    if let Some((t, at)) = back.filter(|b| b.1 <= to) {
                        s.set_pending(t, true, at.max(now));
                        back = None;
                    }
                    now = to;
                }
                Decision::Empty => {
                    let (t, at) = back.take().expect("someone comes back");
                    now = at.max(now);
                    s.set_pending(t, true, now);
                }
            }
        }
        let handed_out = if wc { busy.iter().sum::<u64>() } else { now };
        for (i, want) in shares.iter().enumerate() {
            let got = busy[i] as f64 / handed_out as f64;
            prop_assert!((got - want).abs() < 0.01, "tenant {i}: {got:.4} vs {want:.4}");
        }
    }

    /// Anything goes: tenants arrive and leave, work comes in endless spells or finite bursts
    /// (turns that end early), tenants go idle. `drive` checks every step (decisions fit the
    /// world; never idle with work under best effort or `work_conserving`; no credit earned
    /// above a slice while idle; debt within its cap). And nobody starves: under best effort and equal share a
    /// tenant with work runs within (N+1) turns of the longest kind (a slice plus a kernel); under
    /// fixed share within the time its share takes to repay one such turn, plus N+1 turns.
    #[test]
    fn arrivals_departures_and_idle_spells(
        policy in policy(),
        wc in any::<bool>(),
        n in 1usize..8,
        events in script(8, 3_000),
        seed in any::<u64>(),
        max_us in 50u64..5000,
    ) {
        let mut s = sched(policy, wc);
        let mut all = vec![(0, 0, Event::Add(Some(0.2))), (0, 0, Event::Work(Work::Forever))];
        all.extend(events.into_iter().filter(|e| e.1 < n));
        let r = drive(&mut s, n, &all, seed, max_us, 4_000 * MS);
        // Slice: the default for at most 8 tenants.
        let turn = 2 * MS + max_us * 1000;
        for i in 0..n {
            let bound = match policy {
                Policy::BestEffort | Policy::EqualShare => (n as u64 + 1) * turn,
                // A tenant left with no share (the given shares add up to 1) never runs while
                // others with a share have work: by design.
                Policy::FixedShare if r.min_target[i] == 0.0 => continue,
                // Its last turn repaid at its share, then one turn of each of the others.
                Policy::FixedShare => {
                    (turn as f64 / r.min_target[i]) as u64 + (n as u64 + 1) * turn
                }
            };
            let waited = r.max_wait[i];
            prop_assert!(waited <= bound, "tenant {i} waited {waited} ns > {bound}");
        }
    }
}

/// A tenant back from a long idle spell does not bring more than a slice of credit: it cannot
/// hold the GPU for much more than two slices before the others run again, under any policy.
#[test]
fn a_tenant_back_from_idle_cannot_monopolise() {
    for (policy, wc) in [
        (Policy::BestEffort, false),
        (Policy::EqualShare, false),
        (Policy::EqualShare, true),
        (Policy::FixedShare, false),
        (Policy::FixedShare, true),
    ] {
        for gap in [10 * MS, 1_000 * MS, 30_000 * MS] {
            let mut s = sched(policy, wc);
            let shares = [Some(0.4), Some(0.4), Some(0.2)];
            let mut script = start(&shares, &[0, 1]);
            script.push((gap, 2, Event::Work(Work::Forever)));
            let _ = drive(&mut s, 3, &script[..], 7, 3000, gap);
            let slice = s.slice_ns() as i64;
            assert!(s
                .stats(gap)
                .iter()
                .all(|t| t.credit_ns <= slice || t.tenant != TenantId(2)));
            // Now tenant 2 has work: follow who runs.
            s.set_pending(TenantId(2), true, gap);
            let mut rng = Lcg(gap);
            let (mut now, mut run_of_2) = (gap, 0u64);
            for _ in 0..50 {
                match s.next(now) {
                    Decision::Grant { tenant, until } => {
                        let start = now;
                        while now < until {
                            now += rng.kernel(3000);
                        }
                        s.finish(tenant, now - start, now);
                        run_of_2 = if tenant == TenantId(2) {
                            run_of_2 + now - start
                        } else {
                            0
                        };
                        assert!(
                            run_of_2 <= 2 * s.slice_ns() + 3 * MS,
                            "{policy:?} wc={wc} gap={gap}: tenant 2 ran {run_of_2} ns in a row"
                        );
                    }
                    Decision::Idle { until } => now = until,
                    Decision::Empty => unreachable!(),
                }
            }
        }
    }
}

/// Shares follow tenants as they come and go: equal share re-divides; fixed share stays.
#[test]
fn shares_as_tenants_come_and_go() {
    // Equal share: 1/2 each, then a third arrives: 1/3 each.
    let mut s = sched(Policy::EqualShare, false);
    let mut script = start(&[None, None], &[0, 1]);
    script.push((2_000 * MS, 2, Event::Add(None)));
    script.push((2_000 * MS, 2, Event::Work(Work::Forever)));
    let r = drive(&mut s, 3, &script, 1, 500, 8_000 * MS);
    let want = [
        (2.0 / 8.0) / 2.0 + (6.0 / 8.0) / 3.0,
        0.0,
        (6.0 / 8.0) / 3.0,
    ];
    for (i, w) in [(0, want[0]), (1, want[0]), (2, want[2])] {
        assert!(
            (achieved(&r, i) - w).abs() < 0.01,
            "tenant {i}: {} vs {w}",
            achieved(&r, i)
        );
    }
    // Fixed share: the given share does not move; the shareless split what is left.
    let mut f = sched(Policy::FixedShare, false);
    f.add_tenant(TenantId(0), Some(0.3), 0).unwrap();
    f.add_tenant(TenantId(1), None, 0).unwrap();
    assert!((f.stats(0)[1].target_share - 0.7).abs() < 1e-9);
    f.add_tenant(TenantId(2), None, 0).unwrap();
    assert!((f.stats(0)[0].target_share - 0.3).abs() < 1e-9);
    assert!((f.stats(0)[1].target_share - 0.35).abs() < 1e-9);
    // And a fixed-share tenant keeps its 30 % as a second busy tenant arrives.
    let mut f = sched(Policy::FixedShare, false);
    let mut script = start(&[Some(0.3), Some(0.5)], &[0]);
    script.push((2_000 * MS, 1, Event::Work(Work::Forever)));
    let r = drive(&mut f, 2, &script, 3, 2000, 6_000 * MS);
    assert!((achieved(&r, 0) - 0.3).abs() < 0.01, "{}", achieved(&r, 0));
    assert!(
        (achieved(&r, 1) - 0.5 * 4.0 / 6.0).abs() < 0.01,
        "{}",
        achieved(&r, 1)
    );
}

/// A tenant that comes back thousands of times with a little work (the pattern of an
/// interactive tenant) is served within a round each time, however long the others have been
/// busy: credits do not drift apart as tenants come and go.
#[test]
fn a_bursty_tenant_is_served_at_once_every_time() {
    for (policy, wc) in [
        (Policy::BestEffort, false),
        (Policy::EqualShare, false),
        (Policy::EqualShare, true),
        (Policy::FixedShare, false),
        (Policy::FixedShare, true),
    ] {
        let mut s = sched(policy, wc);
        let mut script = start(&[Some(0.4), Some(0.4), Some(0.2)], &[0, 1]);
        for k in 0..3_000 {
            script.push((k * 5 * MS, 2, Event::Work(Work::Burst(100_000))));
        }
        let r = drive(&mut s, 3, &script, 11, 1000, 15_000 * MS);
        let turn = s.slice_ns() + MS;
        assert!(
            r.busy[2] >= 2_900 * 100_000,
            "{policy:?} wc={wc}: {:?}",
            r.busy
        );
        let waited = r.max_wait[2];
        assert!(waited <= 3 * turn, "{policy:?} wc={wc}: waited {waited} ns");
    }
}
