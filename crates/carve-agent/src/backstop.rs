//! The backstop: what a preload cannot dodge. The shim enforces turns and memory limits inside
//! the processes that load it; a static or setuid program, a child started with `env -u
//! LD_PRELOAD`, or a program that finds the driver's real functions never loads it or steps
//! around it. The driver sees every process with a context on a GPU whatever it loaded, so the
//! agent watches each time-sliced GPU through it (`Backend::gpu_processes`: NVML's compute
//! processes with the device memory each holds) and checks every process against the GPU's
//! scheduler:
//!
//! - **unregistered**: a process the GPU's scheduler has no client for (a client's pid is the
//!   kernel's peer credentials at its `hello`, never its word), once it has been on the GPU for
//!   [`Config::grace`];
//! - **over its memory limit**: a tenant's registered processes together hold more than its
//!   limit plus [`Config::slack_bytes`] per process (the context and module memory the driver
//!   counts and the shim does not); the largest are named until the rest fit.
//!
//! Each violation is an event (a [`Violation`] in the [`Record`]: the log, `GET
//! /v1/violations`, the metrics), and with [`Action::Kill`] the process gets SIGKILL. Only
//! processes on time-sliced GPUs are looked at (MIG isolates in hardware; a whole GPU is one
//! tenant's), never the agent itself or pid 1, and a kill is race-free against pid reuse: the
//! process is pinned with a pidfd, the GPU is asked again, and the signal goes to the pinned
//! process only if the fresh answer still shows the violation.
//!
//! What this detects is not what the shim prevents: it acts after the fact, within a poll and
//! the grace (0.5–0.7 s with the defaults), so an unregistered process gets that long on the GPU
//! and an over-limit allocation succeeds before its process is killed (a co-tenant may meet an
//! out-of-memory error meanwhile). It needs the agent in the host's pid namespace (NVML's pids
//! are the host's); a pid it cannot see is reported, never signalled.

use carve_backend::{Backend, GpuProcess};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// The longest poll: a violation is found within a second with the default grace.
pub const MAX_POLL: Duration = Duration::from_millis(500);
/// Violations the record keeps (the oldest go first).
pub const KEEP: usize = 256;

/// What the backstop does about a violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// An event: the log, the API and the metrics.
    Log,
    /// The event, and SIGKILL to the process.
    Kill,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Log => "log",
            Action::Kill => "kill",
        }
    }
}

/// How the backstop watches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    /// How often each time-sliced GPU is asked for its processes (at most [`MAX_POLL`]).
    #[serde(serialize_with = "as_ms", rename = "poll_ms")]
    pub poll: Duration,
    /// How long a process may be on a GPU unregistered before it is a violation (the shim
    /// says hello at its process's first launch or allocation; the driver lists a process from
    /// its context's creation).
    #[serde(serialize_with = "as_ms", rename = "grace_ms")]
    pub grace: Duration,
    /// Device memory each process may hold beyond its tenant's limit: the context and modules
    /// the driver counts and the shim's limit does not.
    pub slack_bytes: u64,
    pub action: Action,
}

fn as_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

impl Default for Config {
    /// Every 100 ms, 500 ms of grace, 512 MiB of slack per process, log only: an unregistered
    /// process is found 0.5 to 0.7 s after it appears on a GPU, one over a limit within 0.1 s.
    fn default() -> Config {
        Config {
            poll: Duration::from_millis(100),
            grace: Duration::from_millis(500),
            slack_bytes: 512 << 20,
            action: Action::Log,
        }
    }
}

/// One time-sliced GPU as the backstop checks it: its scheduler's tenants and who is
/// registered with it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub gpu: u32,
    pub gpu_uuid: String,
    /// Each tenant of the GPU's schedule with its memory limit.
    pub tenants: Vec<(String, Option<u64>)>,
    /// (tenant, pid) of every client registered with the GPU's scheduler now.
    pub registered: Vec<(String, u32)>,
}

/// What is wrong with a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// On a time-sliced GPU without a registration with its scheduler.
    Unregistered,
    /// Its tenant's processes hold more device memory than the tenant's limit (and the slack).
    OverMemoryLimit,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Unregistered => "unregistered",
            Kind::OverMemoryLimit => "over-memory-limit",
        }
    }
}

/// A process on a time-sliced GPU, as the backstop last saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Watched {
    pub gpu: u32,
    pub pid: u32,
    /// The tenant it is registered as, `None` when it is not registered.
    pub tenant: Option<String>,
    /// Device memory it holds as the driver says, when it says.
    pub memory_bytes: Option<u64>,
}

/// A violation found by [`assess`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub pid: u32,
    pub kind: Kind,
    pub tenant: Option<String>,
    pub memory_bytes: Option<u64>,
    /// For [`Kind::OverMemoryLimit`]: what the tenant's processes hold together, and its limit.
    pub tenant_memory_bytes: Option<u64>,
    pub limit_bytes: Option<u64>,
}

/// The processes of one GPU, attributed, and what is wrong with them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Assessment {
    pub watched: Vec<Watched>,
    pub findings: Vec<Finding>,
}

/// Checks the processes the driver lists on `t`'s GPU against its scheduler: who is registered
/// as which tenant (by pid), who has been on the GPU unregistered for the grace (`seen_for`
/// says how long each has been seen), and which tenants hold more than their limits. Pure; the
/// agent's own pid (`me`) and pids 0 and 1 are never findings.
pub fn assess(
    t: &Target,
    procs: &[GpuProcess],
    seen_for: &dyn Fn(u32) -> Duration,
    cfg: &Config,
    me: u32,
) -> Assessment {
    let mut a = Assessment::default();
    let tenant_of = |pid: u32| {
        t.registered
            .iter()
            .find(|(_, p)| *p == pid)
            .map(|(n, _)| n.clone())
    };
    for p in procs {
        let tenant = tenant_of(p.pid);
        a.watched.push(Watched {
            gpu: t.gpu,
            pid: p.pid,
            tenant: tenant.clone(),
            memory_bytes: p.used_memory_bytes,
        });
        let exempt = p.pid == me || p.pid <= 1;
        if tenant.is_none() && !exempt && seen_for(p.pid) >= cfg.grace {
            a.findings.push(Finding {
                pid: p.pid,
                kind: Kind::Unregistered,
                tenant: None,
                memory_bytes: p.used_memory_bytes,
                tenant_memory_bytes: None,
                limit_bytes: None,
            });
        }
    }
    for (name, limit) in &t.tenants {
        let Some(limit) = *limit else { continue };
        let mut mine: Vec<&Watched> = a
            .watched
            .iter()
            .filter(|w| w.tenant.as_deref() == Some(name.as_str()))
            .collect();
        let total: u64 = mine
            .iter()
            .map(|w| w.memory_bytes.unwrap_or(0))
            .fold(0, u64::saturating_add);
        // Largest last, so that the largest go first.
        mine.sort_by_key(|w| (w.memory_bytes.unwrap_or(0), w.pid));
        let allowed = |n: usize| limit.saturating_add(cfg.slack_bytes.saturating_mul(n as u64));
        let mut held = total;
        while held > allowed(mine.len()) {
            let Some(w) = mine.pop() else { break };
            held = held.saturating_sub(w.memory_bytes.unwrap_or(0));
            if w.pid == me || w.pid <= 1 {
                continue;
            }
            a.findings.push(Finding {
                pid: w.pid,
                kind: Kind::OverMemoryLimit,
                tenant: Some(name.clone()),
                memory_bytes: w.memory_bytes,
                tenant_memory_bytes: Some(total),
                limit_bytes: Some(limit),
            });
        }
    }
    a
}

/// A violation and what was done about it: an event of the log and `GET /v1/violations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// 1, 2, … in the order they were found.
    pub seq: u64,
    pub kind: Kind,
    pub gpu: u32,
    pub gpu_uuid: String,
    pub pid: u32,
    /// Its command name (`/proc/<pid>/comm`), `?` when it cannot be read.
    pub process: String,
    /// The tenant it is registered as (over a limit), `None` when it is not registered.
    pub tenant: Option<String>,
    pub memory_bytes: Option<u64>,
    pub tenant_memory_bytes: Option<u64>,
    pub limit_bytes: Option<u64>,
    /// When the backstop first saw the process on the GPU, and when it found the violation
    /// (milliseconds since the Unix epoch).
    pub first_seen_ms: u64,
    pub found_ms: u64,
    /// `logged`; with `--on-violation kill`: `killed`, `gone` (the process, or the violation,
    /// ended before the signal), `not-visible` (not in the agent's pid namespace: never
    /// signalled) or `kill-failed` (tried again at every poll, reported once).
    pub action: &'static str,
    /// Why a kill failed or was not tried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// When SIGKILL was sent (milliseconds since the Unix epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub killed_ms: Option<u64>,
}

fn mib(b: u64) -> String {
    format!("{:.0} MiB", b as f64 / (1024.0 * 1024.0))
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mem = self.memory_bytes.map(mib).unwrap_or_else(|| "? MiB".into());
        write!(
            f,
            "GPU {}: pid {} ({}, {mem}) ",
            self.gpu, self.pid, self.process
        )?;
        match self.kind {
            Kind::Unregistered => write!(
                f,
                "is not registered with the GPU's scheduler (no shim, or the shim was dodged)"
            )?,
            Kind::OverMemoryLimit => write!(
                f,
                "puts tenant '{}' at {}, over its limit of {}",
                self.tenant.as_deref().unwrap_or("?"),
                self.tenant_memory_bytes.map(mib).unwrap_or_default(),
                self.limit_bytes.map(mib).unwrap_or_default()
            )?,
        }
        write!(f, ": {}", self.action)?;
        if let Some(d) = &self.detail {
            write!(f, " ({d})")?;
        }
        Ok(())
    }
}

/// What the backstop has seen and done, for the API and the metrics. Held by the agent's state.
#[derive(Debug, Default)]
pub struct Record(Mutex<Inner>);

#[derive(Debug, Default, Clone)]
struct Inner {
    config: Option<Config>,
    seq: u64,
    violations: VecDeque<Violation>,
    watched: Vec<Watched>,
    /// (GPU, kind, action) → violations.
    counts: BTreeMap<(u32, Kind, &'static str), u64>,
    /// Looks at a GPU's processes, by result (`ok`, `failed`).
    polls: BTreeMap<&'static str, u64>,
    /// The last failure to list a GPU's processes, if the last look failed.
    error: Option<String>,
}

/// A copy of the record.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `None`: the backstop does not run.
    pub config: Option<Config>,
    pub error: Option<String>,
    pub processes: Vec<Watched>,
    pub violations: Vec<Violation>,
    #[serde(skip)]
    pub counts: BTreeMap<(u32, Kind, &'static str), u64>,
    #[serde(skip)]
    pub polls: BTreeMap<&'static str, u64>,
}

impl Record {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn report(&self) -> Report {
        let i = self.lock().clone();
        Report {
            config: i.config,
            error: i.error,
            processes: i.watched,
            violations: i.violations.into(),
            counts: i.counts,
            polls: i.polls,
        }
    }

    fn push(&self, mut v: Violation) -> Violation {
        let mut i = self.lock();
        i.seq += 1;
        v.seq = i.seq;
        *i.counts.entry((v.gpu, v.kind, v.action)).or_default() += 1;
        i.violations.push_back(v.clone());
        while i.violations.len() > KEEP {
            i.violations.pop_front();
        }
        v
    }

    fn polled(&self, result: Result<(), String>) {
        let mut i = self.lock();
        let key = if result.is_ok() { "ok" } else { "failed" };
        *i.polls.entry(key).or_default() += 1;
        i.error = result.err();
    }
}

fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The start time of a process (field 22 of `/proc/<pid>/stat`): with the pid it names one
/// process. `None` when it is gone or not in this pid namespace.
fn start_time(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

fn command_name(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "?".into())
}

/// What a kill came to.
#[derive(Debug, PartialEq, Eq)]
enum Killed {
    Yes,
    /// The process ended, or the violation did, before the signal.
    Gone,
    Failed(String),
}

/// A process to signal: pinned by a pidfd (`pidfd_open`), so that the signal cannot reach
/// another process that reuses its pid, or, on kernels without pidfds (before 5.3), by number.
enum Pin {
    Fd(std::os::fd::OwnedFd),
    Number,
    /// No such process.
    Gone,
}

impl Pin {
    fn open(pid: u32) -> Result<Pin, String> {
        // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor or -1; it
        // touches no memory of ours.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if let Ok(fd) = i32::try_from(fd) {
            if fd >= 0 {
                // SAFETY: a descriptor the kernel just gave us, owned by nobody else.
                let owned =
                    unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
                return Ok(Pin::Fd(owned));
            }
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ESRCH) => Ok(Pin::Gone),
            Some(libc::ENOSYS) => Ok(Pin::Number),
            _ => Err(format!("pidfd_open({pid}): {e}")),
        }
    }

    fn kill(&self, pid: u32) -> Killed {
        let r = match self {
            Pin::Fd(fd) => {
                use std::os::fd::AsRawFd;
                // SAFETY: pidfd_send_signal(2) on our own pidfd, with no siginfo (null) and no
                // flags.
                unsafe {
                    libc::syscall(
                        libc::SYS_pidfd_send_signal,
                        fd.as_raw_fd(),
                        libc::SIGKILL,
                        std::ptr::null::<libc::siginfo_t>(),
                        0,
                    )
                }
            }
            Pin::Number => {
                // SAFETY: kill(2) takes plain integers and touches no memory of ours.
                let r = unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                libc::c_long::from(r)
            }
            Pin::Gone => return Killed::Gone,
        };
        if r == 0 {
            return Killed::Yes;
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            Killed::Gone
        } else {
            Killed::Failed(format!("SIGKILL to pid {pid}: {e}"))
        }
    }
}

/// Kills `f.pid` if the violation still holds: the process pinned first, then `t`'s GPU asked
/// again (`confirm`: the fresh assessment still finds it), then the signal to the pinned process.
fn kill(
    source: &mut dyn Backend,
    f: &Finding,
    t: &Target,
    confirm: &dyn Fn(&Target, &[GpuProcess]) -> bool,
    me: u32,
) -> Killed {
    if f.pid == me || f.pid <= 1 {
        return Killed::Failed(format!("pid {} is never killed", f.pid));
    }
    let pinned = match Pin::open(f.pid) {
        Ok(Pin::Gone) => return Killed::Gone,
        Ok(p) => p,
        Err(e) => return Killed::Failed(e),
    };
    match source.gpu_processes(t.gpu) {
        Ok(procs) if confirm(t, &procs) => pinned.kill(f.pid),
        Ok(_) => Killed::Gone,
        Err(e) => Killed::Failed(format!("cannot confirm on GPU {}: {e}", t.gpu)),
    }
}

/// Watches until `stop`: every `cfg.poll`, each GPU `targets` gives (the time-sliced GPUs and
/// their schedulers, read fresh each time) is asked for its processes through `source`, checked
/// ([`assess`]) and acted on; each new violation goes into `record` and to `on_violation`. A
/// violation is reported once while it lasts (a failed kill is tried again at every poll).
pub fn run(
    source: &mut dyn Backend,
    cfg: &Config,
    targets: &dyn Fn() -> Vec<Target>,
    record: &Record,
    on_violation: &dyn Fn(&Violation),
    stop: &AtomicBool,
) {
    let me = std::process::id();
    record.lock().config = Some(cfg.clone());
    // (GPU, pid) → when it was first seen, and its start time then (a new one is another
    // process with the same pid).
    let mut first: HashMap<(u32, u32), (Instant, SystemTime, Option<u64>)> = HashMap::new();
    // (GPU, pid, kind) of the violations reported and still there → whether it is settled
    // (logged, or its kill done).
    let mut open: HashMap<(u32, u32, Kind), bool> = HashMap::new();
    while !stop.load(Ordering::Acquire) {
        let began = Instant::now();
        let mut watched = Vec::new();
        let mut present: HashSet<(u32, u32)> = HashSet::new();
        let mut failure = None;
        // GPUs that could not be listed this time: what was known of them is kept.
        let mut unlisted: HashSet<u32> = HashSet::new();
        for t in targets() {
            let procs = match source.gpu_processes(t.gpu) {
                Ok(p) => p,
                Err(e) => {
                    failure = Some(format!("GPU {}: {e}", t.gpu));
                    unlisted.insert(t.gpu);
                    continue;
                }
            };
            let (now, wall) = (Instant::now(), SystemTime::now());
            for p in &procs {
                let st = start_time(p.pid);
                let e = first.entry((t.gpu, p.pid)).or_insert((now, wall, st));
                if e.2 != st {
                    *e = (now, wall, st);
                }
                present.insert((t.gpu, p.pid));
            }
            let seen_for = |pid: u32| {
                first
                    .get(&(t.gpu, pid))
                    .map_or(Duration::ZERO, |f| now.duration_since(f.0))
            };
            let a = assess(&t, &procs, &seen_for, cfg, me);
            watched.extend(a.watched);
            for f in &a.findings {
                let key = (t.gpu, f.pid, f.kind);
                if open.get(&key) == Some(&true) {
                    continue;
                }
                let visible = start_time(f.pid).is_some();
                // Named before a kill: a dead process's name may be gone with it.
                let process = command_name(f.pid);
                let (action, detail, killed_ms) = match (cfg.action, visible) {
                    (Action::Log, _) => ("logged", None, None),
                    (Action::Kill, false) => (
                        "not-visible",
                        Some(format!(
                            "pid {} is not in the agent's pid namespace: run the agent in the \
                             host's",
                            f.pid
                        )),
                        None,
                    ),
                    (Action::Kill, true) => {
                        let fresh = |t: &Target, procs: &[GpuProcess]| -> bool {
                            let now = targets();
                            let t = now.iter().find(|x| x.gpu == t.gpu).unwrap_or(t);
                            let long = |_: u32| Duration::MAX;
                            assess(t, procs, &long, cfg, me)
                                .findings
                                .iter()
                                .any(|g| g.pid == f.pid && g.kind == f.kind)
                        };
                        match kill(source, f, &t, &fresh, me) {
                            Killed::Yes => ("killed", None, Some(epoch_ms(SystemTime::now()))),
                            Killed::Gone => ("gone", None, None),
                            Killed::Failed(why) => ("kill-failed", Some(why), None),
                        }
                    }
                };
                let settled = action != "kill-failed";
                let was_open = open.insert(key, settled).is_some();
                if was_open && !settled {
                    // Still failing: reported already.
                    continue;
                }
                let first_seen = first.get(&(t.gpu, f.pid)).map_or(wall, |x| x.1);
                let v = record.push(Violation {
                    seq: 0,
                    kind: f.kind,
                    gpu: t.gpu,
                    gpu_uuid: t.gpu_uuid.clone(),
                    pid: f.pid,
                    process,
                    tenant: f.tenant.clone(),
                    memory_bytes: f.memory_bytes,
                    tenant_memory_bytes: f.tenant_memory_bytes,
                    limit_bytes: f.limit_bytes,
                    first_seen_ms: epoch_ms(first_seen),
                    found_ms: epoch_ms(wall),
                    action,
                    detail,
                    killed_ms,
                });
                tracing::warn!("backstop: {v}");
                on_violation(&v);
            }
        }
        first.retain(|k, _| present.contains(k) || unlisted.contains(&k.0));
        open.retain(|k, _| present.contains(&(k.0, k.1)) || unlisted.contains(&k.0));
        record.lock().watched = watched;
        record.polled(failure.map_or(Ok(()), Err));
        let spent = began.elapsed();
        let mut left = cfg.poll.saturating_sub(spent);
        while !left.is_zero() && !stop.load(Ordering::Acquire) {
            let nap = left.min(Duration::from_millis(50));
            std::thread::sleep(nap);
            left -= nap;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn target() -> Target {
        Target {
            gpu: 0,
            gpu_uuid: "GPU-0".into(),
            tenants: vec![("a".into(), Some(1024 * MIB)), ("b".into(), None)],
            registered: vec![("a".into(), 10), ("a".into(), 11), ("b".into(), 20)],
        }
    }

    fn p(pid: u32, mib: u64) -> GpuProcess {
        GpuProcess {
            pid,
            used_memory_bytes: Some(mib * MIB),
        }
    }

    fn cfg() -> Config {
        Config {
            slack_bytes: 100 * MIB,
            ..Config::default()
        }
    }

    fn kinds(a: &Assessment) -> Vec<(u32, Kind)> {
        a.findings.iter().map(|f| (f.pid, f.kind)).collect()
    }

    #[test]
    fn registered_processes_within_their_limits_are_fine() {
        let long = |_: u32| Duration::from_secs(60);
        let a = assess(
            &target(),
            &[p(10, 500), p(11, 600), p(20, 9000)],
            &long,
            &cfg(),
            1234,
        );
        // a: 1100 MiB of 1024 + 2 × 100 allowed; b has no limit.
        assert_eq!(kinds(&a), []);
        assert_eq!(a.watched.len(), 3);
        assert_eq!(a.watched[0].tenant.as_deref(), Some("a"));
    }

    #[test]
    fn an_unregistered_process_is_found_after_the_grace_and_never_the_agent() {
        let t = target();
        let procs = [p(10, 10), p(30, 10), p(1234, 10), p(1, 10)];
        let young = |_: u32| Duration::from_millis(100);
        assert_eq!(kinds(&assess(&t, &procs, &young, &cfg(), 1234)), []);
        let old = |_: u32| Duration::from_millis(500);
        let a = assess(&t, &procs, &old, &cfg(), 1234);
        assert_eq!(kinds(&a), [(30, Kind::Unregistered)]);
        assert_eq!(a.watched[1].tenant, None);
    }

    #[test]
    fn a_tenant_over_its_limit_loses_its_largest_processes_until_it_fits() {
        let long = |_: u32| Duration::from_secs(60);
        // 300 + 2000 MiB: over 1024 + 200; without the 2000 the 300 fit.
        let a = assess(&target(), &[p(10, 300), p(11, 2000)], &long, &cfg(), 1);
        assert_eq!(kinds(&a), [(11, Kind::OverMemoryLimit)]);
        let f = &a.findings[0];
        assert_eq!(f.tenant.as_deref(), Some("a"));
        assert_eq!(f.tenant_memory_bytes, Some(2300 * MIB));
        assert_eq!(f.limit_bytes, Some(1024 * MIB));
        // Both large: both go.
        let a = assess(&target(), &[p(10, 1500), p(11, 2000)], &long, &cfg(), 1);
        assert_eq!(
            kinds(&a),
            [(11, Kind::OverMemoryLimit), (10, Kind::OverMemoryLimit)]
        );
        // Memory the driver does not report counts as none.
        let unknown = GpuProcess {
            pid: 10,
            used_memory_bytes: None,
        };
        assert_eq!(kinds(&assess(&target(), &[unknown], &long, &cfg(), 1)), []);
    }

    #[test]
    fn violations_read_as_sentences() {
        let v = Violation {
            seq: 1,
            kind: Kind::OverMemoryLimit,
            gpu: 0,
            gpu_uuid: "GPU-0".into(),
            pid: 42,
            process: "carve-workload".into(),
            tenant: Some("a".into()),
            memory_bytes: Some(3072 * MIB),
            tenant_memory_bytes: Some(3072 * MIB),
            limit_bytes: Some(2048 * MIB),
            first_seen_ms: 0,
            found_ms: 0,
            action: "killed",
            detail: None,
            killed_ms: Some(1),
        };
        assert_eq!(
            v.to_string(),
            "GPU 0: pid 42 (carve-workload, 3072 MiB) puts tenant 'a' at 3072 MiB, over its \
             limit of 2048 MiB: killed"
        );
        let j = serde_json::to_value(&v).unwrap();
        assert_eq!(j["kind"], "over-memory-limit");
        assert!(j.get("detail").is_none());
    }

    /// A backend that only lists processes: what a test puts in it.
    struct Listing(std::sync::Arc<Mutex<Vec<GpuProcess>>>);

    impl Backend for Listing {
        fn kind(&self) -> &'static str {
            "listing"
        }
        fn gpus(&mut self) -> carve_backend::Result<Vec<carve_backend::GpuInfo>> {
            Ok(Vec::new())
        }
        fn mig_mode(&mut self, _: u32) -> carve_backend::Result<carve_backend::MigMode> {
            Err(carve_backend::BackendError::NotSupported("test".into()))
        }
        fn set_mig_mode(
            &mut self,
            _: u32,
            _: bool,
        ) -> carve_backend::Result<carve_backend::MigMode> {
            Err(carve_backend::BackendError::NotSupported("test".into()))
        }
        fn gpu_instances(
            &mut self,
            _: u32,
        ) -> carve_backend::Result<Vec<carve_backend::GpuInstance>> {
            Ok(Vec::new())
        }
        fn create_gpu_instance(
            &mut self,
            _: u32,
            _: carve_model::NvmlGiProfile,
            _: u8,
        ) -> carve_backend::Result<u32> {
            Err(carve_backend::BackendError::NotSupported("test".into()))
        }
        fn create_compute_instance(&mut self, _: u32, _: u32, _: u8) -> carve_backend::Result<u32> {
            Err(carve_backend::BackendError::NotSupported("test".into()))
        }
        fn destroy_compute_instance(
            &mut self,
            _: u32,
            _: u32,
            _: u32,
        ) -> carve_backend::Result<()> {
            Err(carve_backend::BackendError::NotSupported("test".into()))
        }
        fn destroy_gpu_instance(&mut self, _: u32, _: u32) -> carve_backend::Result<()> {
            Err(carve_backend::BackendError::NotSupported("test".into()))
        }
        fn gpu_processes(&mut self, _: u32) -> carve_backend::Result<Vec<GpuProcess>> {
            Ok(self.0.lock().unwrap().clone())
        }
    }

    fn sleeper() -> std::process::Child {
        std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap()
    }

    fn listing(pids: &[u32]) -> std::sync::Arc<Mutex<Vec<GpuProcess>>> {
        std::sync::Arc::new(Mutex::new(pids.iter().map(|&pid| p(pid, 10)).collect()))
    }

    #[test]
    fn a_kill_goes_to_the_pinned_process_only_when_a_second_look_confirms() {
        use std::os::unix::process::ExitStatusExt;
        let mut a = sleeper();
        let f = Finding {
            pid: a.id(),
            kind: Kind::Unregistered,
            tenant: None,
            memory_bytes: None,
            tenant_memory_bytes: None,
            limit_bytes: None,
        };
        let confirm = |_: &Target, procs: &[GpuProcess]| procs.iter().any(|p| p.pid == f.pid);
        let me = std::process::id();
        // The second look no longer shows it: not killed.
        let mut src = Listing(listing(&[]));
        assert_eq!(kill(&mut src, &f, &target(), &confirm, me), Killed::Gone);
        assert!(a.try_wait().unwrap().is_none(), "still running");
        let mut src = Listing(listing(&[a.id()]));
        assert_eq!(kill(&mut src, &f, &target(), &confirm, me), Killed::Yes);
        assert_eq!(a.wait().unwrap().signal(), Some(libc::SIGKILL));
        // Gone (and reaped): nothing to signal.
        assert_eq!(kill(&mut src, &f, &target(), &confirm, me), Killed::Gone);
    }

    #[test]
    fn run_reports_a_violation_once_while_it_lasts_and_kills_when_asked() {
        use std::os::unix::process::ExitStatusExt;
        let mut a = sleeper();
        let procs = listing(&[a.id(), 10]);
        let record = std::sync::Arc::new(Record::default());
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
        let start = |action: Action| {
            let (procs, record, stop, seen) =
                (procs.clone(), record.clone(), stop.clone(), seen.clone());
            stop.store(false, Ordering::Release);
            std::thread::spawn(move || {
                let cfg = Config {
                    poll: Duration::from_millis(10),
                    grace: Duration::from_millis(30),
                    action,
                    ..Config::default()
                };
                let mut src = Listing(procs);
                run(
                    &mut src,
                    &cfg,
                    &|| vec![target()],
                    &record,
                    &|v| seen.lock().unwrap().push(v.clone()),
                    &stop,
                );
            })
        };
        let t = start(Action::Log);
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Release);
        t.join().unwrap();
        let r = record.report();
        assert_eq!(r.violations.len(), 1, "{r:?}");
        assert_eq!(r.violations[0].pid, a.id());
        assert_eq!(r.violations[0].action, "logged");
        assert_eq!(r.violations[0].process, "sleep");
        assert_eq!(seen.lock().unwrap().len(), 1);
        assert_eq!(r.processes.len(), 2);
        assert_eq!(r.counts[&(0, Kind::Unregistered, "logged")], 1);
        assert!(a.try_wait().unwrap().is_none(), "logged only");
        // It leaves the GPU and comes back: a new violation, and this time it is killed.
        procs.lock().unwrap().retain(|p| p.pid == 10);
        let t = start(Action::Kill);
        std::thread::sleep(Duration::from_millis(50));
        procs.lock().unwrap().push(p(a.id(), 10));
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = a.try_wait().unwrap() {
                break s;
            }
            assert!(t0.elapsed() < Duration::from_secs(5), "never killed");
            std::thread::sleep(Duration::from_millis(5));
        };
        stop.store(true, Ordering::Release);
        t.join().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        let r = record.report();
        assert_eq!(r.violations.len(), 2, "{r:?}");
        assert_eq!(r.violations[1].action, "killed");
        assert!(r.violations[1].killed_ms.is_some());
        assert_eq!(r.violations[1].seq, 2);
    }

    #[test]
    fn the_agent_and_init_are_never_killed() {
        let mut b = carve_backend::engine::InMemory::new(carve_model::Catalog::embedded(), &[], 1);
        let f = |pid| Finding {
            pid,
            kind: Kind::Unregistered,
            tenant: None,
            memory_bytes: None,
            tenant_memory_bytes: None,
            limit_bytes: None,
        };
        let yes = |_: &Target, _: &[GpuProcess]| true;
        let me = std::process::id();
        for pid in [me, 1, 0] {
            assert!(matches!(
                kill(&mut b, &f(pid), &target(), &yes, me),
                Killed::Failed(_)
            ));
        }
    }
}
