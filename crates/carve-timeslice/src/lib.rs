//! The policy core of carve's software time-slicing: who may put work on the GPU now, and for how
//! long. Pure and deterministic — no clocks, threads or I/O; time is passed in as nanoseconds — so
//! the scheduler daemon (`carve sched`, real time) and the capacity simulator (virtual time) run
//! the very same code.
//!
//! Semantics follow NVIDIA's vGPU scheduler (`shared/reference/timeslicing.md` §1–§2):
//! - **Best effort**: work-conserving round robin among tenants with pending work, one time slice
//!   per turn; no share is guaranteed.
//! - **Equal share**: each *registered* tenant gets 1/N of GPU time, N = registered tenants, so
//!   the share changes as tenants come and go. Not work-conserving: a registered tenant with no
//!   work leaves its share idle ("an idle VM's slice stays idle").
//! - **Fixed share**: each tenant a configured share (tenants without one split what is left
//!   equally), constant as others come and go; not work-conserving either (unassigned share and
//!   idle tenants' shares stay idle).
//! - `work_conserving: true` (carve's option, not NVIDIA's) hands idle time to tenants with work,
//!   in proportion to their shares.
//! - Time slice 1–30 ms; by default vGPU's: 2 ms with up to 8 tenants, 1 ms above.
//! - Overrun compensation like vGPU's adaptive round robin: work that overruns its slice is
//!   carried as debt; each following slice is cut by debt / averaging factor (1–60, default 33),
//!   and the cut is taken off the debt.
//!
//! Equal and fixed share are kept with credits: every registered tenant earns credit at the rate
//! of its share as time passes, and pays the GPU time its turns really took (overruns included).
//! A tenant with work may start a turn while its credit is positive; the one with most credit
//! goes first. A tenant without work keeps at most one slice of credit, so a tenant back from idle
//! cannot monopolise the GPU, and since payment is for time really used, long-run shares hold despite overruns.

use std::fmt;

/// A tenant, as the caller numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(pub u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    BestEffort,
    EqualShare,
    FixedShare,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub policy: Policy,
    /// Time slice; `None` is vGPU's default (2 ms up to 8 tenants, 1 ms above).
    pub slice_ns: Option<u64>,
    /// Hand idle time to tenants with work (equal and fixed share).
    pub work_conserving: bool,
    /// vGPU's averaging factor for overrun compensation (1–60, default 33).
    pub averaging_factor: u32,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            policy: Policy::BestEffort,
            slice_ns: None,
            work_conserving: false,
            averaging_factor: DEFAULT_AVERAGING_FACTOR,
        }
    }
}

pub const DEFAULT_AVERAGING_FACTOR: u32 = 33;
pub const MIN_SLICE_NS: u64 = 1_000_000;
pub const MAX_SLICE_NS: u64 = 30_000_000;
/// A turn is never cut below this by compensation.
const MIN_TURN_NS: u64 = 100_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(s) = self.slice_ns {
            if !(MIN_SLICE_NS..=MAX_SLICE_NS).contains(&s) {
                return Err(ConfigError(format!(
                    "the time slice must be 1 to 30 ms, not {} ms",
                    s as f64 / 1e6
                )));
            }
        }
        if !(1..=60).contains(&self.averaging_factor) {
            return Err(ConfigError(format!(
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
    /// `tenant` may launch until `until`.
    Grant { tenant: TenantId, until: u64 },
    /// Nobody may launch before `until` (shares of idle tenants stay idle).
    Idle { until: u64 },
    /// Nobody has work.
    Empty,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TenantStats {
    pub tenant: TenantId,
    pub target_share: f64,
    pub achieved_share: f64,
    pub gpu_time_ns: u64,
    pub turns: u64,
    /// Time it had work but was not running.
    pub throttled_ns: u64,
    pub debt_ns: u64,
    pub credit_ns: i64,
}

#[derive(Debug, Clone)]
struct Tenant {
    id: TenantId,
    share: Option<f64>,
    pending: bool,
    pending_since: Option<u64>,
    credit: f64,
    debt: u64,
    gpu_time: u64,
    turns: u64,
    throttled: u64,
    since: u64,
}

#[derive(Debug, Clone)]
pub struct Scheduler {
    config: Config,
    tenants: Vec<Tenant>,
    /// Time credits were last brought up to date.
    clock: u64,
    /// The turn in progress: (tenant, granted length).
    running: Option<(TenantId, u64)>,
    /// Round-robin position (index of the last tenant served).
    last: Option<TenantId>,
}

impl Scheduler {
    pub fn new(config: Config) -> Result<Scheduler, ConfigError> {
        config.validate()?;
        Ok(Scheduler {
            config,
            tenants: Vec::new(),
            clock: 0,
            running: None,
            last: None,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The time slice in force (the default depends on how many tenants there are).
    pub fn slice_ns(&self) -> u64 {
        self.config.slice_ns.unwrap_or(if self.tenants.len() > 8 {
            1_000_000
        } else {
            2_000_000
        })
    }

    pub fn add_tenant(
        &mut self,
        id: TenantId,
        share: Option<f64>,
        now: u64,
    ) -> Result<(), ConfigError> {
        if self.tenants.iter().any(|t| t.id == id) {
            return Err(ConfigError(format!("tenant {} is already there", id.0)));
        }
        if let Some(s) = share {
            if !(s.is_finite() && s > 0.0 && s <= 1.0) {
                return Err(ConfigError(format!("a share must be in (0, 1], not {s}")));
            }
            let sum: f64 = self.tenants.iter().filter_map(|t| t.share).sum::<f64>() + s;
            if sum > 1.0 + 1e-9 {
                return Err(ConfigError(format!(
                    "the shares would add up to {sum:.3}, more than 1"
                )));
            }
        }
        self.accrue(now);
        let slice = self.slice_ns() as f64;
        self.tenants.push(Tenant {
            id,
            share,
            pending: false,
            pending_since: None,
            credit: slice,
            debt: 0,
            gpu_time: 0,
            turns: 0,
            throttled: 0,
            since: now,
        });
        self.tenants.sort_by_key(|t| t.id);
        Ok(())
    }

    pub fn remove_tenant(&mut self, id: TenantId, now: u64) {
        self.accrue(now);
        self.tenants.retain(|t| t.id != id);
        if self.running.is_some_and(|(t, _)| t == id) {
            self.running = None;
        }
    }

    /// Whether the tenant has work waiting.
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
    }

    /// The share each tenant is due.
    fn targets(&self) -> Vec<f64> {
        let n = self.tenants.len().max(1) as f64;
        match self.config.policy {
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

    /// Brings credits up to `now`: each tenant earns its share of the time passed, up to a cap.
    fn accrue(&mut self, now: u64) {
        if now <= self.clock {
            return;
        }
        let dt = (now - self.clock) as f64;
        self.clock = now;
        let cap = self.slice_ns() as f64;
        let targets = self.targets();
        for (t, share) in self.tenants.iter_mut().zip(targets) {
            t.credit += share * dt;
            // Only a tenant without work is capped: one waiting for its turn must keep what it
            // earns while others run (even long, overrunning turns), or its share is lost.
            if !t.pending {
                // Idle time earns at most up to one slice; credit it was owed before stays.
                let before = t.credit - share * dt;
                t.credit = t.credit.min(before.max(cap));
            }
        }
    }

    /// The length of the next turn of a tenant: one slice, cut by its debt / averaging factor.
    fn turn_length(&mut self, i: usize) -> u64 {
        let slice = self.slice_ns();
        let t = &mut self.tenants[i];
        let cut =
            (t.debt / self.config.averaging_factor as u64).min(slice - MIN_TURN_NS.min(slice));
        t.debt -= cut;
        slice - cut
    }

    /// Who holds the GPU from `now`.
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
        let order: Vec<usize> = (0..n).map(|k| (start + k) % n).collect();
        let pick = match self.config.policy {
            Policy::BestEffort => order.iter().copied().find(|&i| self.tenants[i].pending),
            Policy::EqualShare | Policy::FixedShare => {
                let best = order
                    .iter()
                    .copied()
                    .filter(|&i| self.tenants[i].pending)
                    .fold(None::<usize>, |b, i| match b {
                        Some(j) if self.tenants[j].credit >= self.tenants[i].credit => Some(j),
                        _ => Some(i),
                    });
                match best {
                    Some(i) if self.tenants[i].credit > 0.0 || self.config.work_conserving => {
                        Some(i)
                    }
                    _ => None,
                }
            }
        };
        let Some(i) = pick else {
            // Nobody with work has credit: idle until the first of them earns some.
            let targets = self.targets();
            let wait = self
                .tenants
                .iter()
                .zip(&targets)
                .filter(|(t, s)| t.pending && **s > 0.0)
                .map(|(t, s)| ((-t.credit) / s).ceil().max(1.0) as u64 + 1)
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

    /// The turn of `id` ended; its work took `used` ns of GPU time (more than granted when it
    /// overran).
    pub fn finish(&mut self, id: TenantId, used: u64, now: u64) {
        self.accrue(now);
        let granted = match self.running {
            Some((t, g)) if t == id => {
                self.running = None;
                g
            }
            _ => used,
        };
        if let Some(t) = self.tenants.iter_mut().find(|t| t.id == id) {
            t.credit -= used as f64;
            t.gpu_time += used;
            t.debt += used.saturating_sub(granted);
            if t.pending {
                t.pending_since = Some(now);
            }
        }
    }

    /// GPU time a tenant's work took after its turn was accounted (its work drained late): paid
    /// like any use, and carried as overrun debt.
    pub fn charge(&mut self, id: TenantId, ns: u64, now: u64) {
        self.accrue(now);
        if let Some(t) = self.tenants.iter_mut().find(|t| t.id == id) {
            t.credit -= ns as f64;
            t.gpu_time += ns;
            t.debt += ns;
        }
    }

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
mod tests {
    use super::*;

    fn cfg(policy: Policy) -> Config {
        Config {
            policy,
            ..Config::default()
        }
    }

    #[test]
    fn default_slice_follows_vgpu() {
        let mut s = Scheduler::new(cfg(Policy::EqualShare)).unwrap();
        for i in 0..8 {
            s.add_tenant(TenantId(i), None, 0).unwrap();
        }
        assert_eq!(s.slice_ns(), 2_000_000);
        s.add_tenant(TenantId(8), None, 0).unwrap();
        assert_eq!(s.slice_ns(), 1_000_000);
    }

    #[test]
    fn config_is_validated() {
        let bad = |c: Config| Scheduler::new(c).is_err();
        assert!(bad(Config {
            slice_ns: Some(0),
            ..cfg(Policy::BestEffort)
        }));
        assert!(bad(Config {
            slice_ns: Some(31_000_000),
            ..cfg(Policy::BestEffort)
        }));
        assert!(bad(Config {
            averaging_factor: 0,
            ..cfg(Policy::BestEffort)
        }));
        assert!(bad(Config {
            averaging_factor: 61,
            ..cfg(Policy::BestEffort)
        }));
        let mut s = Scheduler::new(cfg(Policy::FixedShare)).unwrap();
        assert!(s.add_tenant(TenantId(0), Some(1.5), 0).is_err());
        s.add_tenant(TenantId(0), Some(0.7), 0).unwrap();
        assert!(s.add_tenant(TenantId(1), Some(0.4), 0).is_err());
        assert!(s.add_tenant(TenantId(0), None, 0).is_err());
    }

    #[test]
    fn overrun_is_carried_and_cut_from_later_slices() {
        let mut s = Scheduler::new(Config {
            slice_ns: Some(2_000_000),
            averaging_factor: 2,
            ..cfg(Policy::BestEffort)
        })
        .unwrap();
        s.add_tenant(TenantId(0), None, 0).unwrap();
        s.set_pending(TenantId(0), true, 0);
        let Decision::Grant { until, .. } = s.next(0) else {
            panic!()
        };
        assert_eq!(until, 2_000_000);
        s.finish(TenantId(0), 6_000_000, 6_000_000);
        assert_eq!(s.stats(6_000_000)[0].debt_ns, 4_000_000);
        let Decision::Grant { until, .. } = s.next(6_000_000) else {
            panic!()
        };
        // 4 ms of debt / 2 = 2 ms cut, bounded to leave the minimum turn.
        assert_eq!(until - 6_000_000, 100_000);
        assert_eq!(s.stats(6_000_000)[0].debt_ns, 2_100_000);
    }

    #[test]
    fn equal_share_leaves_an_idle_tenants_share_idle() {
        let mut s = Scheduler::new(cfg(Policy::EqualShare)).unwrap();
        s.add_tenant(TenantId(0), None, 0).unwrap();
        s.add_tenant(TenantId(1), None, 0).unwrap();
        s.set_pending(TenantId(0), true, 0);
        let mut now = 0;
        let mut busy = 0;
        while now < 200_000_000 {
            match s.next(now) {
                Decision::Grant { tenant, until } => {
                    s.finish(tenant, until - now, until);
                    busy += until - now;
                    now = until;
                }
                Decision::Idle { until } => now = until,
                Decision::Empty => panic!("tenant 0 has work"),
            }
        }
        let share = busy as f64 / now as f64;
        assert!((share - 0.5).abs() < 0.02, "{share}");
        // Work-conserving: it gets (nearly) everything.
        let mut s = Scheduler::new(Config {
            work_conserving: true,
            ..cfg(Policy::EqualShare)
        })
        .unwrap();
        s.add_tenant(TenantId(0), None, 0).unwrap();
        s.add_tenant(TenantId(1), None, 0).unwrap();
        s.set_pending(TenantId(0), true, 0);
        let Decision::Grant { .. } = s.next(0) else {
            panic!()
        };
    }
}
