//! The capacity simulator: what latency each tenant sees under a sharing mode, by discrete-event
//! simulation. Pure and deterministic for a seed.
//!
//! A tenant's load: arrivals (Poisson, bursty on/off, or a closed loop of clients with think time),
//! GPU work per request in ms on a whole GPU with a service-time distribution, and the fraction of
//! that work bound by memory bandwidth rather than SMs. A **MIG slice** runs a request at the
//! slice's SM fraction for the compute-bound part and its memory-bandwidth fraction for the rest,
//! alone. **Time-sliced** tenants share a whole GPU through the same policy core as `carve sched`
//! (`carve-timeslice`: policy, slice, overrun compensation), paying a context-switch cost at every
//! switch; work is preempted at slice ends, as GPU time-slicing does.

use carve_timeslice::{Config as CoreConfig, Decision, Policy, Scheduler, TenantId};
use serde::Serialize;
use std::collections::VecDeque;

pub mod scenario;

/// Arrival process of a tenant's requests.
#[derive(Debug, Clone, PartialEq)]
pub enum Arrivals {
    /// Poisson arrivals at `rate` per second.
    Poisson { rate: f64 },
    /// Poisson at `rate` during `on_s`, nothing during `off_s`, repeating.
    Bursty { rate: f64, on_s: f64, off_s: f64 },
    /// `clients` each sending a request, waiting for the answer, thinking `think_ms`, again.
    Closed { clients: u32, think_ms: f64 },
}

/// Service-time distribution around the mean work.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Service {
    Deterministic,
    Exponential,
    /// Lognormal with this coefficient of variation.
    Lognormal {
        cv: f64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Load {
    pub arrivals: Arrivals,
    /// Mean GPU work per request on a whole GPU, ms.
    pub work_ms: f64,
    pub service: Service,
    /// Fraction of the work bound by memory bandwidth (0..=1).
    pub memory_bound: f64,
}

/// Where a tenant runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Placement {
    /// A MIG slice with these fractions of the GPU's SMs and memory bandwidth.
    Slice { sm: f64, bandwidth: f64 },
    /// A whole GPU time-shared with the other tenants of the same group.
    TimeShared,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    pub name: String,
    pub load: Load,
    pub placement: Placement,
    /// Fixed share (time-sliced, fixed-share policy).
    pub share: Option<f64>,
}

/// The time-slicing settings of a group.
#[derive(Debug, Clone, PartialEq)]
pub struct Slicing {
    pub policy: Policy,
    pub slice_ms: Option<f64>,
    /// Cost of a switch between tenants, µs.
    pub switch_us: f64,
    /// Time-slicing inside a MIG slice (the bare-metal counterpart of vGPU on MIG): the shared
    /// "GPU" is this slice, given as (SM fraction, bandwidth fraction).
    pub inside: Option<(f64, f64)>,
}

impl Default for Slicing {
    fn default() -> Slicing {
        Slicing {
            policy: Policy::BestEffort,
            slice_ms: None,
            switch_us: 25.0,
            inside: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TenantResult {
    pub name: String,
    pub requests: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    /// Mean time waiting before service began (queueing), ms.
    pub queueing_ms: f64,
    pub throughput_per_s: f64,
    /// Fraction of time its slice (or its share of the GPU) was busy with its work.
    pub utilisation: f64,
    /// Latency at the quantiles 0.01, 0.02, … 0.99 (for CDF plots), ms.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cdf_ms: Vec<f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GroupResult {
    pub tenants: Vec<TenantResult>,
    /// Events processed.
    pub events: u64,
    /// GPU busy fraction (time-shared groups).
    pub gpu_busy: f64,
    /// The first [`TIMELINE_NS`] of the time-shared GPU: (tenant name, start ms, end ms) of each
    /// stretch of work, for the timeline picture.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub timeline: Timeline,
}

/// Stretches of work on a time-shared GPU: (tenant, start ms, end ms).
pub type Timeline = Vec<(String, f64, f64)>;

/// How much of a time-shared GPU's run the timeline keeps.
pub const TIMELINE_NS: u64 = 100_000_000;

/// A small, fast, deterministic generator (xoshiro256**).
#[derive(Debug, Clone)]
pub struct Rng([u64; 4]);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut z = seed;
        let mut s = [0u64; 4];
        for x in &mut s {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut v = z;
            v = (v ^ (v >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            v = (v ^ (v >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            *x = v ^ (v >> 31);
        }
        Rng(s)
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let r = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        r
    }

    /// Uniform in (0, 1].
    pub fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * self.unit().ln()
    }

    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

fn service_ms(l: &Load, rng: &mut Rng) -> f64 {
    match l.service {
        Service::Deterministic => l.work_ms,
        Service::Exponential => rng.exp(l.work_ms),
        Service::Lognormal { cv } => {
            let s2 = (1.0 + cv * cv).ln();
            let mu = l.work_ms.ln() - s2 / 2.0;
            (mu + s2.sqrt() * rng.normal()).exp()
        }
    }
}

/// Stretch of work on a slice: compute part at the SM fraction, memory part at the bandwidth one.
fn stretch(l: &Load, p: Placement) -> f64 {
    match p {
        Placement::Slice { sm, bandwidth } => {
            (1.0 - l.memory_bound) / sm.max(1e-9) + l.memory_bound / bandwidth.max(1e-9)
        }
        Placement::TimeShared => 1.0,
    }
}

/// Next arrival time after `t` (s) for open arrival processes.
fn next_arrival(a: &Arrivals, t: f64, rng: &mut Rng) -> f64 {
    match *a {
        Arrivals::Poisson { rate } => t + rng.exp(1.0 / rate.max(1e-12)),
        Arrivals::Bursty { rate, on_s, off_s } => {
            // Time runs only while "on": map on-time to wall time.
            let period = on_s + off_s;
            let on_now = t % period;
            let mut on_elapsed = (t / period).floor() * on_s + on_now.min(on_s);
            on_elapsed += rng.exp(1.0 / rate.max(1e-12));
            let cycles = (on_elapsed / on_s).floor();
            cycles * period + (on_elapsed - cycles * on_s)
        }
        Arrivals::Closed { .. } => f64::INFINITY,
    }
}

struct Stats {
    lat: Vec<f32>,
    wait_sum: f64,
    busy: f64,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            lat: Vec::new(),
            wait_sum: 0.0,
            busy: 0.0,
        }
    }

    fn result(mut self, name: &str, duration: f64, share_of_time: f64) -> TenantResult {
        let n = self.lat.len();
        self.lat.sort_unstable_by(|a, b| a.total_cmp(b));
        let pick = |q: f64| -> f64 {
            if n == 0 {
                return 0.0;
            }
            self.lat[((n as f64 - 1.0) * q).round() as usize] as f64
        };
        let mean = if n > 0 {
            self.lat.iter().map(|x| *x as f64).sum::<f64>() / n as f64
        } else {
            0.0
        };
        TenantResult {
            name: name.to_string(),
            requests: n as u64,
            p50_ms: pick(0.5),
            p95_ms: pick(0.95),
            p99_ms: pick(0.99),
            mean_ms: mean,
            queueing_ms: if n > 0 { self.wait_sum / n as f64 } else { 0.0 },
            throughput_per_s: n as f64 / duration,
            utilisation: self.busy / (duration * 1e3 * share_of_time.max(1e-12)),
            cdf_ms: if n > 0 {
                (1..100).map(|k| pick(k as f64 / 100.0)).collect()
            } else {
                Vec::new()
            },
        }
    }
}

/// One tenant alone on a slice: a single-server FIFO queue (Lindley's recursion for open
/// arrivals; an event loop for closed ones). Latencies in ms.
fn run_slice(t: &Tenant, duration_s: f64, rng: &mut Rng) -> (TenantResult, u64) {
    let k = stretch(&t.load, t.placement);
    let mut st = Stats::new();
    let mut events = 0u64;
    match t.load.arrivals {
        Arrivals::Closed { clients, think_ms } => {
            // Clients cycle: think, queue, serve. Times in ms.
            let end = duration_s * 1e3;
            let mut ready: Vec<f64> = (0..clients).map(|_| rng.exp(think_ms.max(1e-9))).collect();
            let mut free_at = 0.0f64;
            loop {
                // The client ready first is served next (FIFO by arrival).
                let (i, &arr) = ready
                    .iter()
                    .enumerate()
                    .min_by(|a, b| a.1.total_cmp(b.1))
                    .expect("clients");
                if arr >= end {
                    break;
                }
                let s = service_ms(&t.load, rng) * k;
                let begin = free_at.max(arr);
                free_at = begin + s;
                st.wait_sum += begin - arr;
                st.busy += s;
                st.lat.push((free_at - arr) as f32);
                ready[i] = free_at + rng.exp(think_ms.max(1e-9));
                events += 2;
            }
        }
        ref a => {
            let end = duration_s;
            let mut t_arr = next_arrival(a, 0.0, rng);
            let mut free_at = 0.0f64; // s
            while t_arr < end {
                let s = service_ms(&t.load, rng) * k / 1e3;
                let begin = free_at.max(t_arr);
                free_at = begin + s;
                st.wait_sum += (begin - t_arr) * 1e3;
                st.busy += s * 1e3;
                st.lat.push(((free_at - t_arr) * 1e3) as f32);
                t_arr = next_arrival(a, t_arr, rng);
                events += 2;
            }
        }
    }
    (st.result(&t.name, duration_s, 1.0), events)
}

/// Time-shared tenants on one whole GPU through the policy core. Time in ns internally.
fn run_shared(
    ts: &[&Tenant],
    slicing: &Slicing,
    duration_s: f64,
    rng: &mut Rng,
) -> (Vec<TenantResult>, u64, f64, Timeline) {
    let n = ts.len();
    let mut timeline: Timeline = Vec::new();
    let stretches: Vec<f64> = ts
        .iter()
        .map(|t| match slicing.inside {
            Some((sm, bandwidth)) => stretch(&t.load, Placement::Slice { sm, bandwidth }),
            None => 1.0,
        })
        .collect();
    let end = (duration_s * 1e9) as u64;
    let mut core = Scheduler::new(CoreConfig {
        policy: slicing.policy,
        slice_ns: slicing.slice_ms.map(|ms| (ms * 1e6) as u64),
        work_conserving: false,
        averaging_factor: 33,
    })
    .expect("valid slicing");
    for (i, t) in ts.iter().enumerate() {
        let _ = core.add_tenant(TenantId(i as u32), t.share, 0);
    }
    let switch = (slicing.switch_us * 1e3) as u64;
    // Per tenant: FIFO of (arrival ns, remaining work ns, started?), next open arrival.
    let mut q: Vec<VecDeque<(u64, u64, Option<u64>)>> = vec![VecDeque::new(); n];
    let mut next_arr: Vec<u64> = vec![u64::MAX; n];
    let mut stats: Vec<Stats> = (0..n).map(|_| Stats::new()).collect();
    // Closed-loop clients: (ready time) queue per tenant.
    let mut thinking: Vec<Vec<u64>> = vec![Vec::new(); n];
    for (i, t) in ts.iter().enumerate() {
        match t.load.arrivals {
            Arrivals::Closed { clients, think_ms } => {
                thinking[i] = (0..clients)
                    .map(|_| (rng.exp(think_ms) * 1e6) as u64)
                    .collect();
            }
            ref a => next_arr[i] = (next_arrival(a, 0.0, rng) * 1e9) as u64,
        }
    }
    let mut now = 0u64;
    let mut events = 0u64;
    let mut busy = 0u64;
    let mut last: Option<usize> = None;
    // Admit every arrival up to `now`.
    let admit = |now: u64,
                 q: &mut Vec<VecDeque<(u64, u64, Option<u64>)>>,
                 next_arr: &mut Vec<u64>,
                 thinking: &mut Vec<Vec<u64>>,
                 core: &mut Scheduler,
                 rng: &mut Rng,
                 events: &mut u64,
                 next_any: &mut u64| {
        if now < *next_any {
            return;
        }
        let mut soonest = u64::MAX;
        for i in 0..n {
            let l = &ts[i].load;
            while next_arr[i] <= now {
                let w = (service_ms(l, rng) * stretches[i] * 1e6) as u64;
                q[i].push_back((next_arr[i], w.max(1), None));
                let t = next_arr[i] as f64 / 1e9;
                next_arr[i] = (next_arrival(&l.arrivals, t, rng) * 1e9) as u64;
                *events += 1;
            }
            let mut k = 0;
            while k < thinking[i].len() {
                if thinking[i][k] <= now {
                    let at = thinking[i].swap_remove(k);
                    let w = (service_ms(l, rng) * stretches[i] * 1e6) as u64;
                    q[i].push_back((at, w.max(1), None));
                    *events += 1;
                } else {
                    k += 1;
                }
            }
            if !q[i].is_empty() {
                core.set_pending(TenantId(i as u32), true, now);
            }
            soonest = soonest.min(next_arr[i]);
            if let Some(m) = thinking[i].iter().min() {
                soonest = soonest.min(*m);
            }
        }
        *next_any = soonest;
    };
    let mut next_any = 0u64;
    while now < end {
        admit(
            now,
            &mut q,
            &mut next_arr,
            &mut thinking,
            &mut core,
            rng,
            &mut events,
            &mut next_any,
        );
        match core.next(now) {
            Decision::Grant { tenant, until } => {
                let i = tenant.0 as usize;
                let start = now;
                if last != Some(i) {
                    now += switch;
                }
                last = Some(i);
                // Serve its queue until the slice ends (preempting the request in service).
                while now < until {
                    let Some(head) = q[i].front_mut() else { break };
                    if head.2.is_none() {
                        head.2 = Some(now);
                    }
                    let run = head.1.min(until - now);
                    head.1 -= run;
                    if now < TIMELINE_NS {
                        let (a, b) = (now as f64 / 1e6, (now + run) as f64 / 1e6);
                        match timeline.last_mut() {
                            Some(l) if l.0 == ts[i].name && (l.2 - a).abs() < 1e-9 => l.2 = b,
                            _ => timeline.push((ts[i].name.clone(), a, b)),
                        }
                    }
                    now += run;
                    busy += run;
                    stats[i].busy += run as f64 / 1e6;
                    events += 1;
                    if head.1 == 0 {
                        let (arr, _, began) = q[i].pop_front().expect("head");
                        stats[i].lat.push(((now - arr) as f64 / 1e6) as f32);
                        stats[i].wait_sum += (began.unwrap_or(now) - arr) as f64 / 1e6;
                        if let Arrivals::Closed { think_ms, .. } = ts[i].load.arrivals {
                            let at = now + (rng.exp(think_ms) * 1e6) as u64;
                            thinking[i].push(at);
                            next_any = next_any.min(at);
                        }
                        // Arrivals during the slice join the queue.
                        admit(
                            now,
                            &mut q,
                            &mut next_arr,
                            &mut thinking,
                            &mut core,
                            rng,
                            &mut events,
                            &mut next_any,
                        );
                    }
                }
                core.finish(tenant, now - start, now);
                if q[i].is_empty() {
                    core.set_pending(tenant, false, now);
                }
            }
            Decision::Idle { until } => now = until.min(end).max(now + 1),
            Decision::Empty => {
                // Jump to the next arrival.
                let na = next_arr.iter().copied().min().unwrap_or(u64::MAX);
                let nt = thinking.iter().flatten().copied().min().unwrap_or(u64::MAX);
                let next = na.min(nt);
                if next == u64::MAX || next >= end {
                    break;
                }
                now = next.max(now + 1);
            }
        }
    }
    let share = 1.0 / n.max(1) as f64;
    let results = stats
        .into_iter()
        .zip(ts)
        .map(|(s, t)| s.result(&t.name, duration_s, t.share.unwrap_or(share)))
        .collect();
    (results, events, busy as f64 / end.max(1) as f64, timeline)
}

/// Simulates a group of tenants sharing one GPU (some on slices, the rest time-shared).
pub fn simulate(tenants: &[Tenant], slicing: &Slicing, duration_s: f64, seed: u64) -> GroupResult {
    let mut rng = Rng::new(seed);
    let mut out: Vec<Option<TenantResult>> = vec![None; tenants.len()];
    let mut events = 0;
    for (i, t) in tenants.iter().enumerate() {
        if let Placement::Slice { .. } = t.placement {
            let (r, e) = run_slice(t, duration_s, &mut rng);
            out[i] = Some(r);
            events += e;
        }
    }
    let shared: Vec<(usize, &Tenant)> = tenants
        .iter()
        .enumerate()
        .filter(|(_, t)| t.placement == Placement::TimeShared)
        .collect();
    let mut gpu_busy = 0.0;
    let mut timeline = Vec::new();
    if !shared.is_empty() {
        let ts: Vec<&Tenant> = shared.iter().map(|(_, t)| *t).collect();
        let (rs, e, b, tl) = run_shared(&ts, slicing, duration_s, &mut rng);
        events += e;
        gpu_busy = b;
        timeline = tl;
        for ((i, _), r) in shared.iter().zip(rs) {
            out[*i] = Some(r);
        }
    }
    GroupResult {
        tenants: out
            .into_iter()
            .map(|r| r.expect("every tenant simulated"))
            .collect(),
        events,
        gpu_busy,
        timeline,
    }
}

/// Jain's fairness index of values (1 = all equal).
pub fn jain(x: &[f64]) -> f64 {
    let s: f64 = x.iter().sum();
    let q: f64 = x.iter().map(|v| v * v).sum();
    if q == 0.0 {
        1.0
    } else {
        s * s / (x.len() as f64 * q)
    }
}
