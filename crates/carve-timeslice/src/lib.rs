//! The policy core of carve's software time-slicing: who may put work on the GPU now, and for how
//! long. Pure and deterministic — no clocks, threads or I/O; time is passed in as nanoseconds — so
//! the scheduler daemon (`carve sched`, real time) and the capacity simulator (`carve simulate`,
//! virtual time) run the very same code.
//!
//! # Semantics
//!
//! They follow NVIDIA's vGPU scheduler as documented in `shared/reference/timeslicing.md` §1–§2
//! (NVIDIA AI Enterprise 5.0 User Guide ch. 7, vGPU user guide, vGPU FAQ):
//!
//! - **Best effort** (§1, vGPU's default): time-sliced round robin among tenants that have work;
//!   a tenant may use the cycles others leave idle, so it is work-conserving; nothing is
//!   guaranteed. Each turn is one time slice.
//! - **Equal share** (§1): each *running* tenant gets 1/N of GPU time, N = the registered tenants
//!   (vGPU's "running vGPUs": powered on, whether or not they have work right now), so the share
//!   changes as tenants come and go. Not work-conserving: "an idle VM's slice stays idle instead
//!   of being handed to others".
//! - **Fixed share** (§1): each tenant a constant share, unchanged as others come and go. vGPU
//!   derives it from the vGPU type (1 / max per GPU); carve takes it from the configuration, and
//!   tenants without a share split what is left equally (nothing, when the given shares add up
//!   to 1). Not work-conserving: unassigned share and idle tenants' shares stay idle.
//! - [`Settings::work_conserving`] (carve's option; NVIDIA has none) makes equal and fixed share
//!   hand time nobody with work is owed to the tenants with work, in proportion to their shares.
//! - **Time slice** (§2, `TT` field of `RmPVMRL`): 1–30 ms. The default is vGPU's Table 1
//!   ("Default Time Slice Length … by vGPU Density"): 2 ms with up to 8 tenants, 1 ms above 8.
//!   NVIDIA's docs disagree on the threshold (ch. 7.1: fewer than 8 *residing* vGPUs → 480 Hz;
//!   Table 1: at most 8 vGPUs *per GPU for the type* → 2 ms); carve has no vGPU type, so it
//!   applies Table 1's ≤ 8 / > 8 to the number of registered tenants.
//! - **Overrun compensation** (§1, "Strict round robin / ARR", and the `AA` field of §2): work
//!   cannot be preempted mid-kernel, so a turn may overrun its slice. The overrun is carried as
//!   debt; each following slice is cut by debt / averaging factor (1–60, default 33), and the cut
//!   is taken off the debt. So the mean turn of a busy tenant is one slice. carve applies it under
//!   every policy, and adds two bounds NVIDIA does not document: a turn is never cut below
//!   [`MIN_TURN_NS`], and debt is capped at averaging factor × slice (beyond that the cut is a
//!   whole slice anyway), so a tenant whose single kernels are longer than a slice does not pile
//!   up debt it would pay for long after its workload changed.
//!
//! # How shares are kept
//!
//! Equal and fixed share are kept with *credits*, in nanoseconds of GPU time. Every registered
//! tenant earns credit at the rate of its share as time passes and pays the GPU time its turns
//! really took (overruns and late-drained work, [`Scheduler::charge`], included), so long-run
//! shares hold despite overruns. A tenant with work may start a turn while its credit is positive;
//! the one with most credit goes first (ties in round-robin order). When no tenant with work has
//! credit, the GPU stays idle ([`Decision::Idle`]) until one has.
//!
//! With `work_conserving`, shares are scaled up so that those of the tenants with work (or
//! holding the GPU, or idle for less than one slice) add up to 1, so idle time is split among
//! them in proportion to their shares; the tenant with most credit runs even without positive
//! credit, so the GPU never idles while someone has work. The one-slice grace keeps a tenant
//! that drops its work for a moment between turns (a client between a release and its next
//! acquire) from handing its share away each time. Credits are kept relative to the leader (the
//! counted tenant with most credit is at 0), which keeps them bounded however tenants come and
//! go: a tenant that leaves with a large bill does not leave the others far ahead of a newcomer.
//!
//! A tenant with no work (and not holding the GPU) earns at most one slice of credit per idle
//! spell, on top of what it was owed when it went idle (or up to one slice, if it owed): a tenant
//! back from idle runs at once but cannot monopolise the GPU, while one that drops its work for
//! a moment between turns loses nothing. A new tenant starts with one slice of credit, like one
//! back from a long idle spell. Best effort keeps no credits (they stay 0).
//!
//! # Driving it
//!
//! The caller registers tenants ([`Scheduler::add_tenant`]), says which have work
//! ([`Scheduler::set_pending`]), asks [`Scheduler::next`] whenever the GPU is free, lets the
//! granted tenant launch until `until` (work launched before then may run past it), and reports
//! the GPU time the turn took with [`Scheduler::finish`]. Time must not go backwards.

mod schedule;

pub use schedule::{Schedule, ScheduledTenant};

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A tenant, as the caller numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(pub u32);

/// vGPU's scheduling policies (timeslicing.md §1; NVML's `NVML_VGPU_SCHEDULER_POLICY_*`). The one
/// policy type of carve: plans, scheduler configurations and the simulator all use it, spelled
/// `best-effort`, `equal-share` and `fixed-share` in every file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Round robin among tenants with work; work-conserving, nothing guaranteed.
    BestEffort,
    /// 1/N of GPU time for each of the N registered tenants.
    EqualShare,
    /// A configured, constant share per tenant.
    FixedShare,
}

impl Policy {
    /// Every policy, in vGPU's order.
    pub const ALL: [Policy; 3] = [Policy::BestEffort, Policy::EqualShare, Policy::FixedShare];

    /// The name files and commands use.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::BestEffort => "best-effort",
            Policy::EqualShare => "equal-share",
            Policy::FixedShare => "fixed-share",
        }
    }

    /// Equal and fixed share keep shares (with credits); best effort does not.
    pub fn keeps_shares(self) -> bool {
        self != Policy::BestEffort
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Policy {
    type Err = SettingsError;

    /// Reads `best-effort`, `equal-share` or `fixed-share`; anything else is an error that lists
    /// them (never a silent default).
    fn from_str(s: &str) -> Result<Policy, SettingsError> {
        Policy::ALL
            .into_iter()
            .find(|p| p.as_str() == s.trim())
            .ok_or_else(|| {
                SettingsError(format!(
                    "unknown policy '{s}': expected best-effort, equal-share or fixed-share"
                ))
            })
    }
}

/// The scheduler's settings. [`Settings::default`] is vGPU's default: best effort, default slice,
/// averaging factor 33.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// The policy.
    pub policy: Policy,
    /// Time slice, 1–30 ms; `None` is vGPU's default (2 ms up to 8 tenants, 1 ms above), see
    /// [`default_slice_ns`].
    pub slice_ns: Option<u64>,
    /// Equal and fixed share only: hand idle time to tenants with work, in proportion to their
    /// shares. Not NVIDIA's behaviour (its share policies leave that time idle).
    pub work_conserving: bool,
    /// vGPU's averaging factor for overrun compensation, 1–60 (default 33).
    pub averaging_factor: u32,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            policy: Policy::BestEffort,
            slice_ns: None,
            work_conserving: false,
            averaging_factor: DEFAULT_AVERAGING_FACTOR,
        }
    }
}

/// vGPU's default averaging factor (`AA` = 00 in `RmPVMRL`, timeslicing.md §2).
pub const DEFAULT_AVERAGING_FACTOR: u32 = 33;
/// The averaging factor's range (`AA`, 0x01–0x3C).
pub const MIN_AVERAGING_FACTOR: u32 = 1;
/// See [`MIN_AVERAGING_FACTOR`].
pub const MAX_AVERAGING_FACTOR: u32 = 60;
/// The shortest time slice (`TT`, 1–30 ms).
pub const MIN_SLICE_NS: u64 = 1_000_000;
/// The longest time slice.
pub const MAX_SLICE_NS: u64 = 30_000_000;
/// A slice given in whole milliseconds (how plans and configuration files write it), in ns.
pub const fn slice_ns_from_ms(ms: u32) -> u64 {
    ms as u64 * 1_000_000
}
/// Overrun compensation never cuts a turn below this.
pub const MIN_TURN_NS: u64 = 100_000;

/// vGPU's default time slice for `tenants` tenants (timeslicing.md §2, Table 1): 2 ms (480 Hz)
/// with up to 8, 1 ms (960 Hz) above.
pub fn default_slice_ns(tenants: usize) -> u64 {
    if tenants > 8 {
        1_000_000
    } else {
        2_000_000
    }
}

/// An invalid setting, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsError(pub String);

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SettingsError {}

impl Settings {
    /// Checks the ranges of timeslicing.md §2: slice 1–30 ms, averaging factor 1–60. (The driver
    /// silently caps out-of-range values; carve rejects them.)
    pub fn validate(&self) -> Result<(), SettingsError> {
        if let Some(s) = self.slice_ns {
            if !(MIN_SLICE_NS..=MAX_SLICE_NS).contains(&s) {
                return Err(SettingsError(format!(
                    "the time slice must be 1 to 30 ms, not {} ms",
                    s as f64 / 1e6
                )));
            }
        }
        if !(MIN_AVERAGING_FACTOR..=MAX_AVERAGING_FACTOR).contains(&self.averaging_factor) {
            return Err(SettingsError(format!(
                "the averaging factor must be 1 to 60, not {}",
                self.averaging_factor
            )));
        }
        Ok(())
    }
}

/// What the GPU does from now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// `tenant` may launch work until `until` (work launched before then may run past it).
    Grant {
        /// Who.
        tenant: TenantId,
        /// End of the turn.
        until: u64,
    },
    /// Someone has work but nobody may launch before `until` (equal and fixed share without
    /// `work_conserving`: the time belongs to idle tenants or to no one). Ask again then, or
    /// sooner if something changes.
    Idle {
        /// When to ask again.
        until: u64,
    },
    /// Nobody has work.
    Empty,
}

/// One tenant's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantStats {
    /// Who.
    pub tenant: TenantId,
    /// The share the policy gives it now (best effort: 1/N, for reference).
    pub target_share: f64,
    /// GPU time used / time since it was registered.
    pub achieved_share: f64,
    /// GPU time used (turns as reported by `finish`, plus `charge`).
    pub gpu_time_ns: u64,
    /// Turns granted.
    pub turns: u64,
    /// Time it had work but was not holding the GPU.
    pub throttled_ns: u64,
    /// Overrun not yet compensated.
    pub debt_ns: u64,
    /// Credit (equal and fixed share; relative to the leader with `work_conserving`; 0 under
    /// best effort).
    pub credit_ns: i64,
}

#[derive(Debug, Clone)]
struct Tenant {
    id: TenantId,
    share: Option<f64>,
    pending: bool,
    pending_since: Option<u64>,
    credit: f64,
    /// While it has no work: the most credit it may reach by earning (the credit it had when it
    /// went idle, if positive, plus one slice). `None` while active.
    idle_cap: Option<f64>,
    /// While it has no work: since when.
    idle_since: Option<u64>,
    debt: u64,
    gpu_time: u64,
    turns: u64,
    throttled: u64,
    since: u64,
}

/// The scheduler. See the crate documentation for the rules.
#[derive(Debug, Clone)]
pub struct Scheduler {
    settings: Settings,
    /// Sorted by id.
    tenants: Vec<Tenant>,
    /// Time credits were last brought up to date.
    clock: u64,
    /// The turn in progress: (tenant, granted length).
    running: Option<(TenantId, u64)>,
    /// Round-robin position: the tenant served last.
    last: Option<TenantId>,
}

impl Scheduler {
    /// A scheduler with no tenants; fails if the settings do not validate.
    pub fn new(settings: Settings) -> Result<Scheduler, SettingsError> {
        settings.validate()?;
        Ok(Scheduler {
            settings,
            tenants: Vec::new(),
            clock: 0,
            running: None,
            last: None,
        })
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The time slice in force (the default depends on how many tenants there are).
    pub fn slice_ns(&self) -> u64 {
        self.settings
            .slice_ns
            .unwrap_or_else(|| default_slice_ns(self.tenants.len()))
    }

    /// The most overrun debt a tenant carries: averaging factor × slice, where the cut is a whole
    /// slice already.
    pub fn debt_cap_ns(&self) -> u64 {
        self.settings.averaging_factor as u64 * self.slice_ns()
    }

    /// Registers a tenant (a vGPU that starts running). `share` is used by fixed share only; it
    /// must lie in (0, 1] and the shares given must add up to at most 1. A new tenant starts
    /// with one slice of credit, like a tenant back from idle.
    pub fn add_tenant(
        &mut self,
        id: TenantId,
        share: Option<f64>,
        now: u64,
    ) -> Result<(), SettingsError> {
        if self.tenants.iter().any(|t| t.id == id) {
            return Err(SettingsError(format!("tenant {} is already there", id.0)));
        }
        if let Some(s) = share {
            if !(s.is_finite() && s > 0.0 && s <= 1.0) {
                return Err(SettingsError(format!("a share must be in (0, 1], not {s}")));
            }
            let sum: f64 = self.tenants.iter().filter_map(|t| t.share).sum::<f64>() + s;
            if sum > 1.0 + 1e-9 {
                return Err(SettingsError(format!(
                    "the shares would add up to {sum:.3}, more than 1"
                )));
            }
        }
        self.accrue(now);
        let credit = if self.settings.policy == Policy::BestEffort {
            0.0
        } else {
            // One slice, as the slice will be with this tenant in.
            self.settings
                .slice_ns
                .unwrap_or_else(|| default_slice_ns(self.tenants.len() + 1)) as f64
        };
        self.tenants.push(Tenant {
            id,
            share,
            pending: false,
            pending_since: None,
            credit,
            // Like a tenant back from a long idle spell: one slice, and no more to earn.
            idle_cap: Some(credit),
            idle_since: None,
            debt: 0,
            gpu_time: 0,
            turns: 0,
            throttled: 0,
            since: now,
        });
        self.tenants.sort_by_key(|t| t.id);
        self.settle();
        Ok(())
    }

    /// Unregisters a tenant (its turn, if it holds one, ends). Unknown ids are ignored.
    pub fn remove_tenant(&mut self, id: TenantId, now: u64) {
        self.accrue(now);
        self.tenants.retain(|t| t.id != id);
        if self.running.is_some_and(|(t, _)| t == id) {
            self.running = None;
        }
        self.settle();
    }

    /// Whether the tenant has work waiting. Unknown ids are ignored.
    pub fn set_pending(&mut self, id: TenantId, pending: bool, now: u64) {
        self.accrue(now);
        let running = self.running.map(|r| r.0);
        if let Some(t) = self.tenants.iter_mut().find(|t| t.id == id) {
            if pending && !t.pending && running != Some(id) {
                t.pending_since = Some(now);
            }
            if !pending {
                if let Some(s) = t.pending_since.take() {
                    t.throttled += now.saturating_sub(s);
                }
            }
            t.pending = pending;
        }
        self.settle();
    }

    /// The share each tenant is due under the policy (best effort: 1/N, for reference).
    fn targets(&self) -> Vec<f64> {
        let n = self.tenants.len().max(1) as f64;
        match self.settings.policy {
            Policy::BestEffort | Policy::EqualShare => vec![1.0 / n; self.tenants.len()],
            Policy::FixedShare => {
                let given: f64 = self.tenants.iter().filter_map(|t| t.share).sum();
                let rest = self.tenants.iter().filter(|t| t.share.is_none()).count();
                let each = if rest > 0 {
                    (1.0 - given).max(0.0) / rest as f64
                } else {
                    0.0
                };
                self.tenants
                    .iter()
                    .map(|t| t.share.unwrap_or(each))
                    .collect()
            }
        }
    }

    /// Whether a tenant has work or holds the GPU.
    fn active(&self, t: &Tenant) -> bool {
        t.pending || self.running.is_some_and(|(r, _)| r == t.id)
    }

    /// Whether a tenant counts among those that share the GPU under `work_conserving`: active,
    /// or idle for less than a slice (a client between a release and its next acquire is not
    /// idle in any useful sense; handing its share to the others at once would cost it).
    fn counts(&self, t: &Tenant) -> bool {
        self.active(t)
            || t.idle_since
                .is_some_and(|s| self.clock < s + self.slice_ns())
    }

    /// The rate at which each tenant earns credit: its share; with `work_conserving`, its share
    /// among the tenants that count (scaled so that theirs add up to 1; equal parts if all of
    /// them have share 0), and nothing for anyone when none counts.
    fn rates(&self) -> Vec<f64> {
        let targets = self.targets();
        if !self.settings.work_conserving {
            return targets;
        }
        let (sum, count) = self
            .tenants
            .iter()
            .zip(&targets)
            .filter(|(t, _)| self.counts(t))
            .fold((0.0, 0usize), |(s, c), (_, x)| (s + x, c + 1));
        if count == 0 {
            vec![0.0; targets.len()]
        } else if sum > 0.0 {
            targets.iter().map(|x| x / sum).collect()
        } else {
            vec![1.0 / count as f64; targets.len()]
        }
    }

    /// Brings credits up to `now`: each tenant earns at its rate for the time passed (in pieces,
    /// where a grace period ends and the rates change); a tenant without work earns at most one
    /// slice per idle spell.
    fn accrue(&mut self, now: u64) {
        if self.settings.policy == Policy::BestEffort {
            self.clock = self.clock.max(now);
            return;
        }
        while self.clock < now {
            let slice = self.slice_ns();
            let until = if self.settings.work_conserving {
                self.tenants
                    .iter()
                    .filter_map(|t| t.idle_since.map(|s| s + slice))
                    .filter(|&end| end > self.clock && end < now)
                    .min()
                    .unwrap_or(now)
            } else {
                now
            };
            let dt = (until - self.clock) as f64;
            let rates = self.rates();
            for (t, rate) in self.tenants.iter_mut().zip(rates) {
                let earned = t.credit + rate * dt;
                t.credit = match t.idle_cap {
                    Some(cap) => earned.min(cap.max(t.credit)),
                    None => earned,
                };
            }
            self.clock = until;
            self.settle();
        }
    }

    /// Starts or ends idle spells, at the time of the last event (`clock`).
    fn mark_idle(&mut self) {
        let clock = self.clock;
        let active: Vec<bool> = self.tenants.iter().map(|t| self.active(t)).collect();
        for (t, a) in self.tenants.iter_mut().zip(active) {
            if a {
                t.idle_cap = None;
                t.idle_since = None;
            } else if t.idle_cap.is_none() && t.idle_since.is_none() {
                t.idle_since = Some(clock);
            }
        }
    }

    /// Caps what a tenant that went idle may earn: up to one slice above the credit it has (or
    /// up to one slice, if it owes). Credit owed to it stays, and a tenant that drops its work
    /// for a moment between two turns (as a client does between a release and its next acquire)
    /// earns as if it had kept it; but a long idle spell adds one slice at most.
    fn cap_idle(&mut self) {
        let slice = self.slice_ns() as f64;
        for t in &mut self.tenants {
            if t.idle_since.is_some() && t.idle_cap.is_none() {
                t.idle_cap = Some(t.credit.max(0.0) + slice);
            }
        }
    }

    /// Records idle spells and, with `work_conserving`, keeps credits relative to the leader: the
    /// tenant with most credit among those that count is at 0. (Credits of tenants that leave
    /// with a large bill, or come back, would otherwise let the others' credits wander off, far
    /// from where a returning tenant starts.)
    fn settle(&mut self) {
        if self.settings.policy == Policy::BestEffort {
            return;
        }
        self.mark_idle();
        if self.settings.work_conserving {
            let lead = self
                .tenants
                .iter()
                .filter(|t| self.counts(t))
                .map(|t| t.credit)
                .fold(f64::NEG_INFINITY, f64::max);
            if lead.is_finite() && lead != 0.0 {
                for t in &mut self.tenants {
                    let before = t.credit;
                    t.credit -= lead;
                    // An idle tenant's cap is relative to the leader already: a new leader
                    // further behind (one back from idle that owed, say) must not lift idle
                    // tenants past it.
                    if let Some(cap) = t.idle_cap {
                        t.credit = t.credit.min(cap.max(before));
                    }
                }
            }
        }
        self.cap_idle();
    }

    /// The length of the next turn of a tenant: one slice, cut by its debt / averaging factor
    /// (never below [`MIN_TURN_NS`]); the cut is taken off the debt.
    fn turn_length(&mut self, i: usize) -> u64 {
        let slice = self.slice_ns();
        let t = &mut self.tenants[i];
        let cut =
            (t.debt / self.settings.averaging_factor as u64).min(slice.saturating_sub(MIN_TURN_NS));
        t.debt -= cut;
        slice - cut
    }

    /// Who holds the GPU from `now`. Call it when the GPU is free (no turn in progress, or the
    /// turn in progress is given up).
    pub fn next(&mut self, now: u64) -> Decision {
        self.accrue(now);
        if self.tenants.iter().all(|t| !t.pending) {
            return Decision::Empty;
        }
        let n = self.tenants.len();
        // Round-robin order starting after the last served tenant.
        let start = self
            .last
            .and_then(|l| self.tenants.iter().position(|t| t.id > l))
            .unwrap_or(0);
        let order = (0..n).map(|k| (start + k) % n);
        let pick = match self.settings.policy {
            Policy::BestEffort => order.clone().find(|&i| self.tenants[i].pending),
            Policy::EqualShare | Policy::FixedShare => {
                let best = order.clone().filter(|&i| self.tenants[i].pending).fold(
                    None::<usize>,
                    |b, i| match b {
                        Some(j) if self.tenants[j].credit >= self.tenants[i].credit => Some(j),
                        _ => Some(i),
                    },
                );
                best.filter(|&i| self.tenants[i].credit > 0.0 || self.settings.work_conserving)
            }
        };
        let Some(i) = pick else {
            // Nobody with work has credit: idle until the first of them has earned some.
            let rates = self.rates();
            let wait = self
                .tenants
                .iter()
                .zip(&rates)
                .filter(|(t, r)| t.pending && **r > 0.0)
                .map(|(t, r)| ((-t.credit) / r).ceil().max(0.0) as u64 + 1)
                .min()
                .unwrap_or(self.slice_ns());
            return Decision::Idle { until: now + wait };
        };
        let len = self.turn_length(i);
        let t = &mut self.tenants[i];
        if let Some(s) = t.pending_since.take() {
            t.throttled += now.saturating_sub(s);
        }
        t.turns += 1;
        let id = t.id;
        self.running = Some((id, len));
        self.last = Some(id);
        Decision::Grant {
            tenant: id,
            until: now + len,
        }
    }

    /// The turn of `id` ended (its slice was over, or it yielded early); its work took `used` ns
    /// of GPU time — more than granted when it overran, which becomes debt. The tenant is paid
    /// for `used` (not the grant). A `finish` for a tenant not holding the GPU just pays `used`.
    pub fn finish(&mut self, id: TenantId, used: u64, now: u64) {
        self.accrue(now);
        let granted = match self.running {
            Some((t, g)) if t == id => {
                self.running = None;
                g
            }
            _ => used,
        };
        self.pay(id, used, used.saturating_sub(granted));
        if let Some(t) = self.tenants.iter_mut().find(|t| t.id == id) {
            if t.pending {
                t.pending_since = Some(now);
            }
        }
        self.settle();
    }

    /// GPU time a tenant's work took after its turn was accounted (its work drained late): paid
    /// like any use, and carried as overrun debt.
    pub fn charge(&mut self, id: TenantId, ns: u64, now: u64) {
        self.accrue(now);
        self.pay(id, ns, ns);
        self.settle();
    }

    fn pay(&mut self, id: TenantId, used: u64, overrun: u64) {
        let cap = self.debt_cap_ns();
        let share_policy = self.settings.policy != Policy::BestEffort;
        if let Some(t) = self.tenants.iter_mut().find(|t| t.id == id) {
            if share_policy {
                t.credit -= used as f64;
            }
            t.gpu_time += used;
            t.debt = t.debt.saturating_add(overrun).min(cap);
        }
    }

    /// Every registered tenant's figures at `now` (in id order).
    pub fn stats(&self, now: u64) -> Vec<TenantStats> {
        let targets = self.targets();
        self.tenants
            .iter()
            .zip(targets)
            .map(|(t, target)| {
                let mut throttled = t.throttled;
                if let Some(s) = t.pending_since {
                    throttled += now.saturating_sub(s);
                }
                TenantStats {
                    tenant: t.id,
                    target_share: target,
                    achieved_share: t.gpu_time as f64 / now.saturating_sub(t.since).max(1) as f64,
                    gpu_time_ns: t.gpu_time,
                    turns: t.turns,
                    throttled_ns: throttled,
                    debt_ns: t.debt,
                    credit_ns: t.credit as i64,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
