//! The capacity simulator: what latency each tenant sees under a sharing mode, by discrete-event
//! simulation. Pure and deterministic for a seed.
//!
//! A tenant's load: arrivals (Poisson, bursty on/off, or a closed loop of clients with think time),
//! GPU work per request in ms on a whole GPU with a service-time distribution, and the fraction of
//! that work bound by memory bandwidth rather than SMs. A **MIG slice** runs a request at the
//! slice's SM fraction for the compute-bound part and its memory-bandwidth fraction for the rest,
//! alone. **Time-sliced** tenants share a whole GPU through the same policy core as `carve sched`
//! (`carve-timeslice`: policy, slice, overrun compensation). What happens at a switch is
//! [`Switch`]: by default what `carve sched` and its shim do on bare metal (launches gated by the
//! turn, kernels never preempted, the holder drains before the next turn starts, a hand-over
//! cost); or the GPU's own time-slicing, which preempts work at slice ends.

use carve_sched_proto::{DRAIN_NS, GRACE_NS, LATE_DRAIN_NS, LEDGER_TURNS};
use carve_timeslice::{Decision, Scheduler, Settings, SettingsError, TenantId};
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
    /// One thread keeping up to `depth` requests in flight, back to back: it waits for the oldest
    /// to finish, then launches the next (how `carve-workload`, and a typical loop of asynchronous
    /// launches on a CUDA stream, drive the GPU). Latency is from the launch call to when the
    /// thread sees the request finished. Where launches are held back (time-slicing under
    /// `carve sched`), a thread blocked in a launch sees nothing finish until it gets through;
    /// elsewhere this is a closed loop of `depth` clients with no think time.
    Pipeline { depth: u32 },
}

impl Arrivals {
    /// The closed loop a pipeline is where launches never block.
    fn unblocked(&self) -> Arrivals {
        match *self {
            Arrivals::Pipeline { depth } => Arrivals::Closed {
                clients: depth,
                think_ms: 0.0,
            },
            ref a => a.clone(),
        }
    }
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

/// What happens on a time-shared GPU when the turn passes from one tenant to another.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Switch {
    /// `carve sched` with the shim in every process (bare metal, containers), as
    /// `crates/carve-sched/src/server.rs` and `crates/carve-shim` do it:
    ///
    /// - **Kernels run one at a time** in launch order (the GPU, or the stand-in's node-wide
    ///   ticket lock), each taking `launch_us` more than its work (launch and completion). A
    ///   thread waiting for a kernel resumes `wake_us` after it ends.
    /// - **Launches are gated.** A request is launched only while its tenant holds a live turn
    ///   (before the turn's end); otherwise it waits (the launching thread is blocked in the shim)
    ///   and everything waiting is launched when the tenant's next turn starts.
    /// - **Kernels are not preempted.** What was launched runs to completion.
    /// - **The turn ends at the holder's first launch after its end**: the shim's renew, which
    ///   reaches the daemon `renew_us` later (charged from the grant to the launch call). If the
    ///   policy picks the holder again, it goes on at once; if it picks someone else, the holder
    ///   **drains** what it has in flight (charged to it as overrun), and the next holder's turn
    ///   starts when the drain is over (or `drain_limit_us` after the renew). The **hand-over** from the last kernel of one tenant to the first of
    ///   the next takes `switch_us` on average (lognormal, coefficient of variation
    ///   `jitter_cv`, as are `wake_us` and `renew_us`), in three legs: the yielding tenant's
    ///   report (charged to it, [`HANDOVER_REPORT`] of it), the daemon waking the next holder
    ///   (its turn starts, full length, when it joins, at [`HANDOVER_JOIN`]), and its first
    ///   launch reaching the GPU.
    /// - **A holder that launches nothing** for `grace_us` after its turn's end loses the turn,
    ///   charged the whole grant; its work in flight keeps the GPU, and the next holder's kernels
    ///   queue behind it. On its next launch the shim drains and pays, late, the work that ran
    ///   past the turn: up to the drain's end if it was still running, else up to when the
    ///   tenant last saw its work finish (the daemon's ledger of its last [`LEDGER_TURNS`]
    ///   turns); a pause is never paid.
    Drain {
        launch_us: f64,
        wake_us: f64,
        renew_us: f64,
        jitter_cv: f64,
        grace_us: f64,
        drain_limit_us: f64,
    },
    /// The GPU's own time-slicing (vGPU's scheduler): work in service is preempted at the slice
    /// end and resumes in the tenant's next turn; each switch costs `switch_us`.
    Preempt,
}

// The figures below were measured once, on the stand-in GPU with two best-effort tenants of
// 500 µs kernels (the "best effort x2" scenario of `examples/sim_vs_real.rs`, with its GPU
// timeline and the daemon's turns traced), and are used unchanged for every scenario. They are
// the host's (socket round trips, thread wake-ups), so they hold for a real GPU to the extent
// its launch and completion latencies are like the stand-in's (a few µs).

/// The hand-over between tenants under `carve sched` + shim, µs: from the last kernel of the
/// yielding tenant to the first of the next. Measured: 175 µs mean, 167 median, 236 at p95.
pub const SCHED_SWITCH_US: f64 = 175.0;
/// Where the hand-over's legs end, as fractions of it: the yielding tenant's report reaches the
/// daemon (its drain noticed, the stand-in's statistics written, the release sent: 100 µs
/// measured) ...
pub const HANDOVER_REPORT: f64 = 0.57;
/// ... and the next holder joins its turn (the daemon wakes its blocked launch: 25 µs); its
/// first kernel reaches the GPU after the rest (48 µs).
pub const HANDOVER_JOIN: f64 = 0.71;
/// The spread of the host-side delays (hand-over, wake-up, renew): coefficient of variation of
/// a lognormal (the hand-over's p95 is 1.4 times its median).
pub const SCHED_JITTER_CV: f64 = 0.25;
/// What a kernel takes beyond its work, µs: the gap between back-to-back kernels (2.6 µs
/// median, 3.4 mean).
pub const SCHED_LAUNCH_US: f64 = 3.5;
/// A thread waiting for a kernel resumes this long after it ends, µs (latency within a turn is
/// two kernels and 10–15 µs).
pub const SCHED_WAKE_US: f64 = 12.0;
/// The renew's trip from the holder's launch call to the daemon, µs (the renew reaches the
/// daemon 30 µs after the kernel the holder waited for ended, 28 median).
pub const SCHED_RENEW_US: f64 = 18.0;

impl Switch {
    /// `carve sched` + shim on bare metal, with the figures of the stand-in GPU.
    pub const SCHED: Switch = Switch::Drain {
        launch_us: SCHED_LAUNCH_US,
        wake_us: SCHED_WAKE_US,
        renew_us: SCHED_RENEW_US,
        jitter_cv: SCHED_JITTER_CV,
        // The daemon's own figures: its wait for a silent holder, its limit on a drain.
        grace_us: GRACE_NS as f64 / 1e3,
        drain_limit_us: DRAIN_NS as f64 / 1e3,
    };
}

/// The time-slicing settings of a group.
#[derive(Debug, Clone, PartialEq)]
pub struct Slicing {
    /// The policy core's settings, as the daemon runs them (for a plan's GPU:
    /// `carve_plan::schedule::gpu_schedule`).
    pub settings: Settings,
    /// What a switch between tenants does (default: `carve sched` on bare metal).
    pub switch: Switch,
    /// Cost of a switch between tenants, µs: the hand-over under [`Switch::Drain`], the context
    /// switch under [`Switch::Preempt`].
    pub switch_us: f64,
    /// Time-slicing inside a MIG slice (the bare-metal counterpart of vGPU on MIG): the shared
    /// "GPU" is this slice, given as (SM fraction, bandwidth fraction).
    pub inside: Option<(f64, f64)>,
}

impl Default for Slicing {
    fn default() -> Slicing {
        Slicing {
            settings: Settings::default(),
            switch: Switch::SCHED,
            switch_us: SCHED_SWITCH_US,
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
        Arrivals::Closed { .. } | Arrivals::Pipeline { .. } => f64::INFINITY,
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
    match t.load.arrivals.unblocked() {
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

/// Where the turn is, under [`Switch::Drain`].
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// No turn: ask the policy at `at` (at once when someone starts waiting).
    Free { at: u64 },
    /// `tenant` holds turn `seq`, granted at `start`, live until `until`; once it has launched
    /// after `until`, its renew (launch call, arrival at the daemon).
    Held {
        tenant: usize,
        start: u64,
        until: u64,
        seq: u64,
        renew: Option<(u64, u64)>,
    },
    /// `from` was told at `at` to yield and drains its work in flight; `next` (tenant, turn
    /// length, turn) joins when it has, or at `deadline`.
    Drain {
        from: usize,
        at: u64,
        deadline: u64,
        next: Option<(usize, u64, u64)>,
    },
    /// `tenant` starts turn `seq`, of `len`, at `at` (its grant arrives); its first kernel
    /// reaches the GPU at `kick`.
    Join {
        tenant: usize,
        at: u64,
        kick: u64,
        len: u64,
        seq: u64,
    },
}

/// The daemon's policy core for `slicing`, with the tenants `ts` (ids by position): the settings
/// and shares as the daemon would take them, or why it would refuse them.
fn policy_core(slicing: &Slicing, ts: &[&Tenant]) -> Result<Scheduler, SettingsError> {
    let mut core = Scheduler::new(slicing.settings.clone())?;
    for (i, t) in ts.iter().enumerate() {
        core.add_tenant(TenantId(i as u32), t.share, 0)
            .map_err(|e| SettingsError(format!("tenant {}: {e}", t.name)))?;
    }
    Ok(core)
}

/// Time-shared tenants under `carve sched` + shim ([`Switch::Drain`]). Time in ns.
struct Gated<'a> {
    ts: &'a [&'a Tenant],
    stretches: Vec<f64>,
    core: Scheduler,
    switch: f64,
    jitter_cv: f64,
    launch: u64,
    wake: f64,
    renew_trip: f64,
    grace: u64,
    drain_limit: u64,
    /// Requests issued and not launched yet (blocked in the shim): (arrival, work).
    ready: Vec<VecDeque<(u64, u64)>>,
    inflight: Vec<u32>,
    /// Launched kernels in launch order: (end, tenant, arrival).
    gpu: VecDeque<(u64, usize, u64)>,
    gpu_end: u64,
    next_arr: Vec<u64>,
    /// Closed-loop clients' next request times.
    thinking: Vec<Vec<u64>>,
    /// Pipelines: the kernels the thread has launched and not yet seen finish, oldest first:
    /// (launch call, end once known).
    seen: Vec<VecDeque<(u64, Option<u64>)>>,
    /// Pipelines: when the thread, waiting for its oldest kernel, resumes.
    wake_at: Vec<u64>,
    /// A grant the daemon closed without hearing from the tenant (grace): (grant, charged, turn).
    stale: Vec<Option<(u64, u64, u64)>>,
    /// When each tenant last saw one of its kernels finish (a synchronisation returning).
    last_done: Vec<u64>,
    seq: u64,
    last_holder: Option<usize>,
    phase: Phase,
    stats: Vec<Stats>,
    busy: u64,
    events: u64,
    timeline: Timeline,
}

impl Gated<'_> {
    fn pending(&mut self, i: usize, on: bool, now: u64) {
        self.core.set_pending(TenantId(i as u32), on, now);
    }

    fn depth(&self, i: usize) -> Option<usize> {
        match self.ts[i].load.arrivals {
            Arrivals::Pipeline { depth } => Some(depth.max(1) as usize),
            _ => None,
        }
    }

    /// Launches everything the tenant has waiting; the GPU runs kernels one at a time in launch
    /// order, each to completion. A pipeline's thread then goes on (at `now`).
    fn launch_all(&mut self, i: usize, now: u64, rng: &mut Rng) {
        let launched = !self.ready[i].is_empty();
        while let Some((arr, w)) = self.ready[i].pop_front() {
            let start = self.gpu_end.max(now);
            let end = start + w + self.launch;
            self.gpu_end = end;
            self.gpu.push_back((end, i, arr));
            self.inflight[i] += 1;
            self.busy += end - start;
            self.stats[i].busy += (end - start) as f64 / 1e6;
            self.stats[i].wait_sum += (start - arr) as f64 / 1e6;
            if start < TIMELINE_NS {
                let name = &self.ts[i].name;
                let (a, b) = (start as f64 / 1e6, end as f64 / 1e6);
                match self.timeline.last_mut() {
                    Some(l) if l.0 == *name && (l.2 - a).abs() < 1e-9 => l.2 = b,
                    _ => self.timeline.push((name.clone(), a, b)),
                }
            }
        }
        if launched {
            self.pipeline_step(i, now, rng);
        }
    }

    /// A pipeline's thread, free at `now`: it sees what has finished, oldest first, and launches
    /// while it has fewer than `depth` in flight.
    fn pipeline_step(&mut self, i: usize, now: u64, rng: &mut Rng) {
        let Some(depth) = self.depth(i) else { return };
        if !self.ready[i].is_empty() {
            return; // blocked in a launch
        }
        loop {
            if self.seen[i].len() >= depth {
                match self.seen[i].front() {
                    Some(&(call, Some(end))) if end <= now => {
                        self.seen[i].pop_front();
                        self.stats[i].lat.push(((now - call) as f64 / 1e6) as f32);
                    }
                    _ => return, // waits for the oldest
                }
            } else {
                self.seen[i].push_back((now, None));
                self.arrive(i, now, rng);
                // The launch went through (and the thread went on from there) or it blocks.
                return;
            }
        }
    }

    /// A request of tenant `i` is issued at `now` (its launch call).
    fn arrive(&mut self, i: usize, now: u64, rng: &mut Rng) {
        let w = (service_ms(&self.ts[i].load, rng) * self.stretches[i] * 1e6) as u64;
        self.ready[i].push_back((now, w.max(1)));
        self.events += 1;
        match self.phase {
            Phase::Held { tenant, until, .. } if tenant == i && now < until => {
                self.launch_all(i, now, rng)
            }
            Phase::Held {
                tenant,
                ref mut renew,
                ..
            } if tenant == i => {
                if renew.is_none() {
                    let trip = jittered(self.renew_trip, self.jitter_cv, rng);
                    *renew = Some((now, now + trip));
                }
            }
            _ => {
                if let Some((grant, charged, seq)) = self.stale[i].take() {
                    // Its first launch since the daemon closed its turn: the shim drains and
                    // reports late the work of its that ran past the turn: all the time since the
                    // grant when it is still running (the GPU was busy with it; the drain that
                    // then follows is not modelled), else until it last saw its work finish.
                    // Its pause is not GPU time.
                    let running = self
                        .gpu
                        .iter()
                        .any(|k| k.1 == i && k.0 > now + LATE_DRAIN_NS);
                    let end = if running { now } else { self.last_done[i] };
                    let used = end.saturating_sub(grant);
                    if self.seq < seq + LEDGER_TURNS as u64 && used > charged {
                        self.core.charge(TenantId(i as u32), used - charged, now);
                    }
                }
                self.pending(i, true, now);
                if let Phase::Free { at } = &mut self.phase {
                    *at = now;
                }
            }
        }
    }

    /// The holder launches after its turn's end: the daemon closes the turn (charged from the
    /// grant to now) and asks the policy who is next.
    fn renew(&mut self, i: usize, call: u64, now: u64, rng: &mut Rng) {
        let Phase::Held { start, .. } = self.phase else {
            return;
        };
        self.core
            .finish(TenantId(i as u32), call.saturating_sub(start), now);
        self.pending(i, true, now);
        match self.core.next(now) {
            Decision::Grant { tenant, until } if tenant.0 as usize == i => {
                self.seq += 1;
                self.phase = Phase::Held {
                    tenant: i,
                    start: now,
                    until: until.max(now + 1),
                    seq: self.seq,
                    renew: None,
                };
                self.launch_all(i, now, rng);
            }
            d => {
                let next = match d {
                    Decision::Grant { tenant, until } => {
                        self.seq += 1;
                        Some((
                            tenant.0 as usize,
                            until.saturating_sub(now).max(1),
                            self.seq,
                        ))
                    }
                    _ => None,
                };
                // Told to yield: it drains, then waits for its next turn.
                self.pending(i, false, now);
                self.phase = Phase::Drain {
                    from: i,
                    at: now,
                    deadline: now + self.drain_limit,
                    next,
                };
                if self.inflight[i] == 0 {
                    self.drained(now, rng);
                }
            }
        }
    }

    /// The yielding tenant's work has drained (or the limit passed): it pays the drain, waits
    /// again, and the next holder joins after the hand-over.
    fn drained(&mut self, now: u64, rng: &mut Rng) {
        let Phase::Drain { from, at, next, .. } = self.phase else {
            return;
        };
        let h = match next {
            Some((tenant, ..)) => self.handover(tenant, rng),
            None => 0,
        };
        let report = now + (h as f64 * HANDOVER_REPORT) as u64;
        if report > at {
            self.core.charge(TenantId(from as u32), report - at, now);
        }
        if !self.ready[from].is_empty() {
            self.pending(from, true, now);
        }
        self.phase = match next {
            Some((tenant, len, seq)) => Phase::Join {
                tenant,
                at: now + (h as f64 * HANDOVER_JOIN) as u64,
                kick: now + h,
                len,
                seq,
            },
            None => Phase::Free { at: now },
        };
    }

    /// The hand-over to `to`, ns (none when it held the last turn).
    fn handover(&self, to: usize, rng: &mut Rng) -> u64 {
        if self.last_holder == Some(to) {
            return 0;
        }
        jittered(self.switch, self.jitter_cv, rng)
    }

    /// When the turn machinery next acts by itself.
    fn timer(&self) -> u64 {
        match self.phase {
            Phase::Free { at } => at,
            Phase::Held { until, renew, .. } => {
                renew.map_or_else(|| until.saturating_add(self.grace), |r| r.1)
            }
            Phase::Drain { deadline, .. } => deadline,
            Phase::Join { at, .. } => at,
        }
    }

    fn on_timer(&mut self, now: u64, rng: &mut Rng) {
        match self.phase {
            Phase::Free { .. } => match self.core.next(now) {
                Decision::Grant { tenant, until } => {
                    let j = tenant.0 as usize;
                    self.seq += 1;
                    let h = self.handover(j, rng);
                    self.phase = Phase::Join {
                        tenant: j,
                        at: now + (h as f64 * HANDOVER_JOIN) as u64,
                        kick: now + h,
                        len: until.saturating_sub(now).max(1),
                        seq: self.seq,
                    };
                }
                Decision::Idle { until } => {
                    self.phase = Phase::Free {
                        at: until.max(now + 1),
                    }
                }
                Decision::Empty => self.phase = Phase::Free { at: u64::MAX },
            },
            Phase::Held {
                tenant,
                renew: Some((call, _)),
                ..
            } => self.renew(tenant, call, now, rng),
            Phase::Held {
                tenant,
                start,
                until,
                seq,
                renew: None,
            } => {
                // Nothing heard from the holder within the grace: charged the whole grant.
                let used = until - start;
                self.core.finish(TenantId(tenant as u32), used, now);
                self.stale[tenant] = Some((start, used, seq));
                if self.ready[tenant].is_empty() {
                    self.pending(tenant, false, now);
                }
                self.phase = Phase::Free { at: now };
            }
            Phase::Drain { .. } => self.drained(now, rng),
            Phase::Join {
                tenant,
                kick,
                len,
                seq,
                ..
            } => {
                self.gpu_end = self.gpu_end.max(kick);
                self.phase = Phase::Held {
                    tenant,
                    start: now,
                    until: now + len,
                    seq,
                    renew: None,
                };
                self.last_holder = Some(tenant);
                self.stale[tenant] = None;
                self.launch_all(tenant, now, rng);
            }
        }
    }

    /// The first kernel in flight completes.
    fn complete(&mut self, rng: &mut Rng) -> u64 {
        let (end, i, arr) = self.gpu.pop_front().expect("a kernel in flight");
        self.inflight[i] -= 1;
        self.last_done[i] = end;
        self.events += 1;
        match self.ts[i].load.arrivals {
            Arrivals::Closed { think_ms, .. } => {
                self.stats[i].lat.push(((end - arr) as f64 / 1e6) as f32);
                self.thinking[i].push(end + (rng.exp(think_ms) * 1e6) as u64);
            }
            Arrivals::Pipeline { .. } => {
                if let Some(k) = self.seen[i].iter_mut().find(|k| k.1.is_none()) {
                    k.1 = Some(end);
                }
            }
            _ => self.stats[i].lat.push(((end - arr) as f64 / 1e6) as f32),
        }
        if matches!(self.phase, Phase::Drain { from, .. } if from == i) && self.inflight[i] == 0 {
            self.drained(end, rng);
        }
        // A pipeline's thread waiting for this one resumes a little later.
        if self.ready[i].is_empty()
            && self.seen[i].front().is_some_and(|k| k.1 == Some(end))
            && self.depth(i).is_some_and(|d| self.seen[i].len() >= d)
        {
            self.wake_at[i] = end + jittered(self.wake, self.jitter_cv, rng);
        }
        end
    }
}

/// `mean` ns, lognormal with coefficient of variation `cv` (exactly `mean` when `cv` is 0).
fn jittered(mean: f64, cv: f64, rng: &mut Rng) -> u64 {
    if mean <= 0.0 {
        return 0;
    }
    if cv <= 0.0 {
        return mean as u64;
    }
    let s2 = (1.0 + cv * cv).ln();
    (mean.ln() - s2 / 2.0 + s2.sqrt() * rng.normal()).exp() as u64
}

/// Time-shared tenants on one GPU under `carve sched` + shim ([`Switch::Drain`]). Time in ns.
fn run_gated(
    ts: &[&Tenant],
    core: Scheduler,
    slicing: &Slicing,
    switch: Switch,
    duration_s: f64,
    rng: &mut Rng,
) -> (Vec<TenantResult>, u64, f64, Timeline) {
    let Switch::Drain {
        launch_us,
        wake_us,
        renew_us,
        jitter_cv,
        grace_us,
        drain_limit_us,
    } = switch
    else {
        unreachable!("run_gated is for Switch::Drain")
    };
    let n = ts.len();
    let end = (duration_s * 1e9) as u64;
    let mut g = Gated {
        ts,
        stretches: ts
            .iter()
            .map(|t| match slicing.inside {
                Some((sm, bandwidth)) => stretch(&t.load, Placement::Slice { sm, bandwidth }),
                None => 1.0,
            })
            .collect(),
        core,
        switch: slicing.switch_us.max(0.0) * 1e3,
        jitter_cv: jitter_cv.max(0.0),
        launch: (launch_us.max(0.0) * 1e3) as u64,
        wake: wake_us.max(0.0) * 1e3,
        renew_trip: renew_us.max(0.0) * 1e3,
        grace: (grace_us.max(0.0) * 1e3) as u64,
        drain_limit: (drain_limit_us.max(0.0) * 1e3) as u64,
        ready: vec![VecDeque::new(); n],
        inflight: vec![0; n],
        gpu: VecDeque::new(),
        gpu_end: 0,
        next_arr: vec![u64::MAX; n],
        thinking: vec![Vec::new(); n],
        seen: vec![VecDeque::new(); n],
        wake_at: vec![u64::MAX; n],
        stale: vec![None; n],
        last_done: vec![0; n],
        seq: 0,
        last_holder: None,
        phase: Phase::Free { at: u64::MAX },
        stats: (0..n).map(|_| Stats::new()).collect(),
        busy: 0,
        events: 0,
        timeline: Vec::new(),
    };
    for (i, t) in ts.iter().enumerate() {
        match t.load.arrivals {
            Arrivals::Closed { clients, think_ms } => {
                g.thinking[i] = (0..clients)
                    .map(|_| (rng.exp(think_ms) * 1e6) as u64)
                    .collect();
            }
            Arrivals::Pipeline { .. } => {}
            ref a => g.next_arr[i] = (next_arrival(a, 0.0, rng) * 1e9) as u64,
        }
    }
    for i in 0..n {
        g.pipeline_step(i, 0, rng);
    }
    loop {
        // The next event; at equal times completions first, then requests, then the turn.
        let done = g.gpu.front().map_or(u64::MAX, |k| k.0);
        let (mut arr, mut who, mut client) = (u64::MAX, 0, None);
        for i in 0..n {
            if g.next_arr[i] < arr {
                (arr, who, client) = (g.next_arr[i], i, None);
            }
            for (k, &at) in g.thinking[i].iter().enumerate() {
                if at < arr {
                    (arr, who, client) = (at, i, Some(k));
                }
            }
        }
        let (mut wake, mut waker) = (u64::MAX, 0);
        for (i, &w) in g.wake_at.iter().enumerate() {
            if w < wake {
                (wake, waker) = (w, i);
            }
        }
        let timer = g.timer();
        let now = done.min(arr).min(wake).min(timer);
        if now >= end {
            break;
        }
        if done == now {
            g.complete(rng);
        } else if wake == now {
            g.wake_at[waker] = u64::MAX;
            g.events += 1;
            g.pipeline_step(waker, now, rng);
        } else if arr == now {
            match client {
                Some(k) => {
                    g.thinking[who].swap_remove(k);
                }
                None => {
                    let t = now as f64 / 1e9;
                    g.next_arr[who] = (next_arrival(&ts[who].load.arrivals, t, rng) * 1e9) as u64;
                }
            }
            g.arrive(who, now, rng);
        } else {
            g.on_timer(now, rng);
        }
    }
    let share = 1.0 / n.max(1) as f64;
    let results = std::mem::take(&mut g.stats)
        .into_iter()
        .zip(ts)
        .map(|(s, t)| s.result(&t.name, duration_s, t.share.unwrap_or(share)))
        .collect();
    (
        results,
        g.events,
        g.busy.min(end) as f64 / end.max(1) as f64,
        g.timeline,
    )
}

/// Time-shared tenants on one whole GPU through the policy core, preempted at slice ends
/// ([`Switch::Preempt`]). Time in ns internally.
fn run_preempt(
    ts: &[&Tenant],
    mut core: Scheduler,
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

/// Simulates a group of tenants sharing one GPU (some on slices, the rest time-shared). Fails,
/// as the daemon would, when the slicing settings or the time-shared tenants' shares are invalid.
pub fn simulate(
    tenants: &[Tenant],
    slicing: &Slicing,
    duration_s: f64,
    seed: u64,
) -> Result<GroupResult, SettingsError> {
    let time_shared: Vec<&Tenant> = tenants
        .iter()
        .filter(|t| t.placement == Placement::TimeShared)
        .collect();
    let core = policy_core(slicing, &time_shared)?;
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
        let (rs, e, b, tl) = match slicing.switch {
            Switch::Drain { .. } => {
                run_gated(&ts, core, slicing, slicing.switch, duration_s, &mut rng)
            }
            Switch::Preempt => {
                // Launches never block: a pipeline is a closed loop.
                let owned: Vec<Tenant> = ts
                    .iter()
                    .map(|t| {
                        let mut t = (*t).clone();
                        t.load.arrivals = t.load.arrivals.unblocked();
                        t
                    })
                    .collect();
                let ts: Vec<&Tenant> = owned.iter().collect();
                run_preempt(&ts, core, slicing, duration_s, &mut rng)
            }
        };
        events += e;
        gpu_busy = b;
        timeline = tl;
        for ((i, _), r) in shared.iter().zip(rs) {
            out[*i] = Some(r);
        }
    }
    Ok(GroupResult {
        tenants: out
            .into_iter()
            .map(|r| r.expect("every tenant simulated"))
            .collect(),
        events,
        gpu_busy,
        timeline,
    })
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
