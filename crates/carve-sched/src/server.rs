//! The daemon: a unix-socket server, one thread per client connection, and one scheduling thread
//! that hands out turns through the policy core (`carve-timeslice`). The control plane is never in
//! the fast path: a client that holds a turn launches without talking to the daemon. A request
//! line is at most `carve_sched_proto::MAX_LINE` bytes: a client that sends more is answered
//! with an error and disconnected, so no client makes the daemon buffer without end.

use crate::config::DaemonConfig;
use crate::identity;
use carve_sched_proto::{self as proto, Reply, Request, StatusReport, TenantStatus};
use carve_sched_proto::{DRAIN_NS, GRACE_NS, LEDGER_TURNS};
use carve_timeslice as core;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

#[derive(Debug, Default, Clone)]
struct TenantState {
    clients: u32,
    /// The pid of each client connected now (`SO_PEERCRED` at its hello), once per connection.
    pids: Vec<u32>,
    /// Client threads waiting for a turn.
    waiting: u32,
    memory_used: u64,
    gpu_time: u64,
    turns: u64,
    throttled: u64,
    /// Since when it has waited with work (for `throttled`).
    waiting_since: Option<u64>,
    /// Launch waits per bucket of `proto::WAIT_BUCKETS_NS` (+ one for longer), and their sum.
    wait_hist: [u64; proto::WAIT_BUCKETS_NS.len() + 1],
    wait_sum: u64,
}

#[derive(Debug, Clone)]
struct Turn {
    tenant: usize,
    /// Which turn: a client reports against the turn it was in, never another.
    seq: u64,
    start: u64,
    until: u64,
    /// Clients of the tenant running in this turn.
    running: u32,
    /// GPU time reported so far for the turn.
    used: u64,
}

struct DaemonState {
    core: core::Scheduler,
    tenants: Vec<TenantState>,
    turn: Option<Turn>,
    seq: u64,
    /// What each recent turn was charged (turn → (tenant, ns)), so that a report arriving after
    /// its turn was closed (work that drained late) pays the difference.
    ledger: std::collections::BTreeMap<u64, (usize, u64)>,
    /// A client told to yield that is still draining its work: (tenant, its turn, deadline). The
    /// next turn starts when it has drained (or at the deadline), so that the next tenant's time
    /// is not spent waiting behind someone else's kernels.
    draining: Option<(usize, u64, u64)>,
}

struct Shared {
    config: DaemonConfig,
    state: Mutex<DaemonState>,
    cv: Condvar,
    started: u64,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, DaemonState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why a scheduler did not start (nothing is left listening).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The scheduling settings are invalid.
    #[error(transparent)]
    Settings(#[from] core::SettingsError),
    /// Another scheduler answers on the socket.
    #[error("{} is in use by another scheduler", path.display())]
    InUse { path: PathBuf },
    /// A stale socket file could not be removed.
    #[error("cannot remove {}: {source}", path.display())]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The socket's directory could not be created.
    #[error("cannot create {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The socket could not be bound.
    #[error("cannot listen on {}: {source}", path.display())]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The socket could not be made owner-only.
    #[error("cannot set permissions on {}: {source}", path.display())]
    Permissions {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A running scheduler.
pub struct Server {
    shared: Arc<Shared>,
    path: PathBuf,
    /// The listening socket, kept to wake the accept loop at shutdown even when the socket
    /// file is already gone.
    listener: Option<UnixListener>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Binds the socket (owner-only, 0600) and starts serving.
    pub fn start(config: DaemonConfig, path: &Path) -> Result<Server, StartError> {
        let sched = core::Scheduler::new(config.settings.clone())?;
        if path.exists() {
            // A stale socket from a previous run: refuse if someone still answers on it.
            if UnixStream::connect(path).is_ok() {
                return Err(StartError::InUse {
                    path: path.to_path_buf(),
                });
            }
            std::fs::remove_file(path).map_err(|source| StartError::Remove {
                path: path.to_path_buf(),
                source,
            })?;
        }
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|source| StartError::CreateDir {
                    path: dir.to_path_buf(),
                    source,
                })?;
            }
        }
        let listener = UnixListener::bind(path).map_err(|source| StartError::Listen {
            path: path.to_path_buf(),
            source,
        })?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| StartError::Permissions {
                path: path.to_path_buf(),
                source,
            },
        )?;
        let n = config.tenants.len();
        let shared = Arc::new(Shared {
            config,
            state: Mutex::new(DaemonState {
                core: sched,
                tenants: vec![TenantState::default(); n],
                turn: None,
                seq: 0,
                ledger: Default::default(),
                draining: None,
            }),
            cv: Condvar::new(),
            started: proto::now_ns(),
            stop: AtomicBool::new(false),
        });
        let waker = listener.try_clone().map_err(|source| StartError::Listen {
            path: path.to_path_buf(),
            source,
        })?;
        let mut threads = Vec::new();
        let s = shared.clone();
        threads.push(std::thread::spawn(move || schedule_loop(&s)));
        let s = shared.clone();
        threads.push(std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::Acquire) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                std::thread::spawn(move || serve(&s, conn));
            }
        }));
        Ok(Server {
            shared,
            path: path.to_path_buf(),
            listener: Some(waker),
            threads,
        })
    }

    pub fn status(&self) -> StatusReport {
        status(&self.shared)
    }

    /// The processes registered now, by tenant name: the pid of every connected client whose
    /// hello was accepted, from the kernel's peer credentials (never from the client's word),
    /// in the pid namespace of this process. A process that never said hello (no shim, the
    /// shim dodged) is in none of the lists.
    pub fn registered_pids(&self) -> Vec<(String, Vec<u32>)> {
        let st = self.shared.lock();
        self.shared
            .config
            .tenants
            .iter()
            .zip(&st.tenants)
            .map(|(t, s)| (t.tenant.name.clone(), s.pids.clone()))
            .collect()
    }

    /// Stops accepting, wakes everyone, removes the socket.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.cv.notify_all();
        if let Some(l) = self.listener.take() {
            // SAFETY: shutdown(2) on a socket descriptor we own; it makes a blocked accept()
            // return, so the accept thread sees `stop`.
            unsafe { libc::shutdown(std::os::fd::AsRawFd::as_raw_fd(&l), libc::SHUT_RDWR) };
        }
        let _ = UnixStream::connect(&self.path);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }

    /// Serves until the process is told to stop (SIGINT/SIGTERM set `stop`).
    pub fn wait(mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.shutdown();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.shutdown();
        }
    }
}

fn tenant_id(i: usize) -> core::TenantId {
    core::TenantId(i as u32)
}

/// Closes the current turn, charging `used`; a tenant with no client waiting stops being due.
fn end_turn(st: &mut DaemonState, used: u64, now: u64) {
    let Some(t) = st.turn.take() else { return };
    st.core.finish(tenant_id(t.tenant), used, now);
    st.tenants[t.tenant].gpu_time += used;
    st.ledger.insert(t.seq, (t.tenant, used));
    while st.ledger.len() > LEDGER_TURNS {
        st.ledger.pop_first();
    }
    if st.tenants[t.tenant].waiting == 0 {
        st.core.set_pending(tenant_id(t.tenant), false, now);
    }
}

/// Starts a turn for a tenant.
fn begin_turn(st: &mut DaemonState, tenant: usize, until: u64, now: u64) -> u64 {
    st.seq += 1;
    st.turn = Some(Turn {
        tenant,
        seq: st.seq,
        start: now,
        until: until.max(now + 1),
        running: 0,
        used: 0,
    });
    let ts = &mut st.tenants[tenant];
    ts.turns += 1;
    if let Some(since) = ts.waiting_since.take() {
        ts.throttled += now.saturating_sub(since);
    }
    st.seq
}

/// A client reports the GPU time it took in turn `seq` (from the grant until its work drained).
fn client_report(st: &mut DaemonState, me: usize, seq: u64, used: u64, now: u64) {
    if let Some(t) = st.turn.as_mut() {
        if t.seq == seq {
            t.running = t.running.saturating_sub(1);
            t.used = t.used.max(used);
            if t.running == 0 {
                let used = t.used;
                end_turn(st, used, now);
            }
            return;
        }
    }
    // The turn was closed already: pay what it took beyond what was charged.
    if let Some((tenant, charged)) = st.ledger.get_mut(&seq) {
        if *tenant == me && used > *charged {
            let extra = used - *charged;
            *charged = used;
            st.core.charge(tenant_id(me), extra, now);
            st.tenants[me].gpu_time += extra;
        }
    }
}

fn schedule_loop(s: &Shared) {
    let mut st = s.lock();
    loop {
        if s.stop.load(Ordering::Acquire) {
            return;
        }
        let now = proto::now_ns();
        if st.draining.is_some_and(|d| now >= d.2) {
            st.draining = None;
        }
        if let Some(t) = &st.turn {
            // Running, or run out with work still draining: wait (a little) for the reports. A
            // turn nobody joined yet waits for the previous holder to drain.
            let end = if t.running == 0 {
                match st.draining {
                    Some(d) => d.2.max(t.until),
                    None => t.until,
                }
            } else if now < t.until {
                t.until
            } else {
                t.until + GRACE_NS
            };
            if now < end {
                st =
                    s.cv.wait_timeout(st, Duration::from_nanos(end - now))
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                continue;
            }
            // Over: charge what was reported, or the whole grant for clients that went quiet.
            let used = if t.running > 0 {
                t.used.max(t.until - t.start)
            } else {
                t.used
            };
            end_turn(&mut st, used, now);
        }
        match st.core.next(now) {
            core::Decision::Grant { tenant, until } => {
                begin_turn(&mut st, tenant.0 as usize, until, now);
                s.cv.notify_all();
            }
            core::Decision::Idle { until } => {
                let wait = until.saturating_sub(now).max(1);
                st =
                    s.cv.wait_timeout(st, Duration::from_nanos(wait))
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
            }
            core::Decision::Empty => {
                st =
                    s.cv.wait_timeout(st, Duration::from_millis(100))
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
            }
        }
    }
}

/// Waits until the tenant holds a turn; joins it. Returns (turn, end).
fn acquire(s: &Shared, me: usize) -> Option<(u64, u64)> {
    let mut st = s.lock();
    let now = proto::now_ns();
    let asked = now;
    {
        let ts = &mut st.tenants[me];
        ts.waiting += 1;
        if ts.waiting_since.is_none() {
            ts.waiting_since = Some(now);
        }
    }
    st.core.set_pending(tenant_id(me), true, now);
    s.cv.notify_all();
    loop {
        if s.stop.load(Ordering::Acquire) {
            st.tenants[me].waiting -= 1;
            return None;
        }
        let now = proto::now_ns();
        let drained = st.draining.is_none_or(|d| d.0 == me || now >= d.2);
        if let Some(t) = st.turn.as_mut() {
            if t.tenant == me && drained && (now < t.until || t.running == 0) {
                if t.running == 0 {
                    // The first to join: the turn runs from now (the GPU is free now).
                    let len = t.until - t.start;
                    t.start = now;
                    t.until = now + len;
                }
                t.running += 1;
                let got = (t.seq, t.until);
                let ts = &mut st.tenants[me];
                let waited = now.saturating_sub(asked);
                let b = proto::WAIT_BUCKETS_NS
                    .iter()
                    .position(|&ub| waited <= ub)
                    .unwrap_or(proto::WAIT_BUCKETS_NS.len());
                ts.wait_hist[b] += 1;
                ts.wait_sum += waited;
                ts.waiting -= 1;
                if ts.waiting == 0 {
                    if let Some(since) = ts.waiting_since.take() {
                        ts.throttled += now.saturating_sub(since);
                    }
                }
                return Some(got);
            }
        }
        st =
            s.cv.wait_timeout(st, Duration::from_millis(50))
                .unwrap_or_else(|p| p.into_inner())
                .0;
    }
}

/// What [`read_request`] read.
enum Line {
    /// A request line, its newline included (or, before the client closed, without one).
    Got,
    /// The client closed the connection, or reading failed.
    Closed,
    /// [`proto::MAX_LINE`] bytes without a newline.
    TooLong,
}

/// Reads one request line into `buf`, at most [`proto::MAX_LINE`] bytes with its newline (the
/// limit clients keep for replies), so that a client cannot make the daemon buffer without end.
fn read_request(reader: &mut impl BufRead, buf: &mut Vec<u8>) -> Line {
    buf.clear();
    let limit = proto::MAX_LINE as u64;
    match reader.take(limit).read_until(b'\n', buf) {
        Ok(0) | Err(_) => Line::Closed,
        Ok(_) if buf.last() == Some(&b'\n') => Line::Got,
        Ok(_) if buf.len() >= proto::MAX_LINE => Line::TooLong,
        // The last line of a client that closed its side (as `read_line` returns it).
        Ok(_) => Line::Got,
    }
}

fn serve(s: &Shared, conn: UnixStream) {
    let Ok(peer) = identity::peer(&conn) else {
        return;
    };
    let Ok(read) = conn.try_clone() else { return };
    let mut reader = BufReader::new(read);
    let mut writer = conn;
    let mut me: Option<usize> = None;
    // The turn this client last joined.
    let mut mine: Option<u64> = None;
    let mut reserved: u64 = 0;
    let mut buf = Vec::new();
    let send = |w: &mut UnixStream, r: &Reply| w.write_all(proto::encode(r).as_bytes()).is_ok();
    loop {
        let line = match read_request(&mut reader, &mut buf) {
            Line::Closed => break,
            Line::TooLong => {
                let _ = send(
                    &mut writer,
                    &Reply::Error {
                        message: format!(
                            "bad request: longer than {} bytes without a newline",
                            proto::MAX_LINE
                        ),
                    },
                );
                break;
            }
            Line::Got => match std::str::from_utf8(&buf) {
                Ok(line) => line,
                Err(_) => break,
            },
        };
        let req: Request = match serde_json::from_str(line) {
            Ok(r) => r,
            Err(e) => {
                let _ = send(
                    &mut writer,
                    &Reply::Error {
                        message: format!("bad request: {e}"),
                    },
                );
                break;
            }
        };
        let reply = match (&req, me) {
            (
                Request::Hello {
                    version,
                    tenant,
                    token,
                },
                None,
            ) => {
                if *version != proto::VERSION {
                    Reply::Error {
                        message: format!("protocol version {version} is not supported (this scheduler speaks {})", proto::VERSION),
                    }
                } else {
                    match identity::authenticate(&s.config.tenants, tenant, token.as_deref(), peer)
                    {
                        Ok(t) => {
                            let i = s
                                .config
                                .tenants
                                .iter()
                                .position(|x| x.tenant.name == t.tenant.name)
                                .expect("found");
                            me = Some(i);
                            let mut st = s.lock();
                            let now = proto::now_ns();
                            st.tenants[i].clients += 1;
                            st.tenants[i].pids.push(peer.pid);
                            if st.tenants[i].clients == 1 {
                                let _ = st.core.add_tenant(tenant_id(i), t.tenant.share, now);
                            }
                            let slice = st.core.slice_ns();
                            s.cv.notify_all();
                            Reply::Welcome {
                                tenant: t.tenant.name.clone(),
                                memory_limit: t.tenant.memory_limit_bytes,
                                slice_ns: slice,
                                policy: s.config.settings.policy.as_str().into(),
                            }
                        }
                        Err(e) => Reply::Error {
                            message: e.to_string(),
                        },
                    }
                }
            }
            (Request::Status, _) => {
                // Status is for the node's operator: the daemon's own user, or root.
                // SAFETY: getuid has no preconditions.
                let own = unsafe { libc::getuid() };
                if peer.uid == own || peer.uid == 0 || me.is_some() {
                    Reply::Status { status: status(s) }
                } else {
                    Reply::Error {
                        message: "status is for the scheduler's owner".into(),
                    }
                }
            }
            (Request::Hello { .. }, Some(_)) => Reply::Error {
                message: "already identified".into(),
            },
            (_, None) => Reply::Error {
                message: "say hello first: unknown client".into(),
            },
            (Request::Acquire, Some(i)) => match acquire(s, i) {
                Some((seq, until)) => {
                    mine = Some(seq);
                    Reply::Grant { until_ns: until }
                }
                None => Reply::Error {
                    message: "the scheduler is stopping".into(),
                },
            },
            (Request::Renew { used_ns }, Some(i)) => {
                let mut st = s.lock();
                let now = proto::now_ns();
                let live = st
                    .turn
                    .as_ref()
                    .filter(|t| t.tenant == i && now < t.until)
                    .map(|t| (t.seq, t.until));
                match live {
                    // Its tenant holds a turn now: stay (joining it if it is a newer one).
                    Some((seq, until)) => {
                        if mine != Some(seq) {
                            if let Some(old) = mine {
                                client_report(&mut st, i, old, *used_ns, now);
                            }
                            if let Some(t) = st.turn.as_mut() {
                                t.running += 1;
                            }
                            mine = Some(seq);
                        }
                        Reply::Grant { until_ns: until }
                    }
                    None => {
                        if let Some(old) = mine {
                            client_report(&mut st, i, old, *used_ns, now);
                        }
                        // Goes on at once if it is due next and the GPU is free.
                        let mut reply = Reply::Yield;
                        if st.turn.is_none() {
                            st.core.set_pending(tenant_id(i), true, now);
                            match st.core.next(now) {
                                core::Decision::Grant { tenant, until } => {
                                    let j = tenant.0 as usize;
                                    let seq = begin_turn(&mut st, j, until, now);
                                    if j == i {
                                        if let Some(t) = st.turn.as_mut() {
                                            t.running = 1;
                                        }
                                        mine = Some(seq);
                                        reply = Reply::Grant {
                                            until_ns: until.max(now + 1),
                                        };
                                    }
                                }
                                core::Decision::Idle { .. } | core::Decision::Empty => {}
                            }
                        }
                        if !matches!(reply, Reply::Grant { .. }) {
                            if let Some(old) = mine {
                                st.draining = Some((i, old, now + DRAIN_NS));
                            }
                            if st.tenants[i].waiting == 0 {
                                // It drains before it asks again; don't hand it a turn meanwhile.
                                st.core.set_pending(tenant_id(i), false, now);
                            }
                        }
                        s.cv.notify_all();
                        reply
                    }
                }
            }
            (Request::Release { used_ns, .. }, Some(i)) => {
                let mut st = s.lock();
                let now = proto::now_ns();
                if let Some(seq) = mine {
                    // Ends its part of the turn, or pays what drained after the turn closed.
                    client_report(&mut st, i, seq, *used_ns, now);
                    if st.draining.is_some_and(|d| d.1 == seq) {
                        st.draining = None;
                    }
                }
                if st.tenants[i].waiting == 0 && st.turn.as_ref().is_none_or(|t| t.tenant != i) {
                    st.core.set_pending(tenant_id(i), false, now);
                }
                s.cv.notify_all();
                Reply::Yield
            }
            (Request::Alloc { bytes }, Some(i)) => {
                let mut st = s.lock();
                let limit = s.config.tenants[i].tenant.memory_limit_bytes;
                let used = st.tenants[i].memory_used;
                match limit {
                    Some(l) if used.saturating_add(*bytes) > l => {
                        Reply::AllocDenied { used, limit: l }
                    }
                    _ => {
                        st.tenants[i].memory_used = used.saturating_add(*bytes);
                        reserved = reserved.saturating_add(*bytes);
                        Reply::AllocOk {
                            used: st.tenants[i].memory_used,
                        }
                    }
                }
            }
            (Request::Free { bytes }, Some(i)) => {
                let mut st = s.lock();
                let b = (*bytes).min(reserved);
                reserved -= b;
                st.tenants[i].memory_used = st.tenants[i].memory_used.saturating_sub(b);
                Reply::Freed {
                    used: st.tenants[i].memory_used,
                }
            }
        };
        let refused = matches!(reply, Reply::Error { .. }) && me.is_none();
        if !send(&mut writer, &reply) || refused {
            break;
        }
    }
    // Gone: give back its turn and its memory.
    if let Some(i) = me {
        let mut st = s.lock();
        let now = proto::now_ns();
        if let Some(seq) = mine {
            if let Some(start) = st.turn.as_ref().filter(|t| t.seq == seq).map(|t| t.start) {
                client_report(&mut st, i, seq, now.saturating_sub(start), now);
            }
            if st.draining.is_some_and(|d| d.1 == seq) {
                st.draining = None;
            }
        }
        st.tenants[i].memory_used = st.tenants[i].memory_used.saturating_sub(reserved);
        st.tenants[i].clients -= 1;
        if let Some(k) = st.tenants[i].pids.iter().position(|p| *p == peer.pid) {
            st.tenants[i].pids.swap_remove(k);
        }
        if st.tenants[i].clients == 0 {
            if st.turn.as_ref().is_some_and(|t| t.tenant == i) {
                end_turn(&mut st, 0, now);
            }
            st.core.remove_tenant(tenant_id(i), now);
        }
        s.cv.notify_all();
    }
}

fn status(s: &Shared) -> StatusReport {
    let st = s.lock();
    let now = proto::now_ns();
    let up = now.saturating_sub(s.started).max(1);
    let core_stats = st.core.stats(now);
    let schedule = s.config.schedule();
    let tenants = s
        .config
        .tenants
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let t = &t.tenant;
            let ts = &st.tenants[i];
            let cs = core_stats.iter().find(|c| c.tenant.0 as usize == i);
            let mut throttled = ts.throttled;
            if let Some(since) = ts.waiting_since {
                throttled += now.saturating_sub(since);
            }
            TenantStatus {
                name: t.name.clone(),
                // Not connected: what the schedule gives it with everyone there.
                target_share: cs
                    .map(|c| c.target_share)
                    .or_else(|| schedule.target_share(&t.name))
                    .unwrap_or(0.0),
                achieved_share: ts.gpu_time as f64 / up as f64,
                gpu_time_ns: ts.gpu_time,
                launches: ts.turns,
                throttled_ns: throttled,
                memory_used_mib: ts.memory_used as f64 / (1024.0 * 1024.0),
                memory_limit_mib: t.memory_limit_bytes.map(|b| b as f64 / (1024.0 * 1024.0)),
                clients: ts.clients,
                wait_buckets: ts.wait_hist.to_vec(),
                wait_sum_ns: ts.wait_sum,
            }
        })
        .collect();
    StatusReport {
        policy: s.config.settings.policy.as_str().into(),
        slice_ms: st.core.slice_ns() as f64 / 1e6,
        uptime_ns: up,
        tenants,
    }
}
