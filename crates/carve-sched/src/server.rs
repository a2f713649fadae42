//! The daemon: a unix-socket server with two threads whatever the number of clients. One thread
//! hands out turns through the policy core (`carve-timeslice`); the other is an event loop
//! (epoll, through `mio`) that accepts connections, reads requests and answers them, so an idle
//! or unidentified connection costs a descriptor and a few hundred bytes, never a thread. An
//! `acquire` that waits for a turn is remembered and answered when the turn comes.
//!
//! The control plane is never in the fast path: a client that holds a turn launches without
//! talking to the daemon.
//!
//! What a client can make the daemon hold is bounded ([`Limits`]): a connection must be welcomed
//! (`hello`) within [`Limits::hello_within`] or is closed; unidentified connections are at most
//! [`Limits::max_unidentified`] (a new one pushes out the oldest, so a flood cannot lock out a
//! client that says hello at once, as the shim does) and their lines at most
//! [`Limits::max_hello_line`] bytes; one process holds at most [`Limits::max_per_pid`]
//! connections, one tenant at most its part of [`Limits::max_connections`] (so no tenant takes
//! another's), and a request line is at most `carve_sched_proto::MAX_LINE` bytes: a client that
//! sends more is answered with an error and disconnected. A client that does not read its replies
//! is not read from either.
//!
//! The GPU time a client reports is checked against the turns the daemon granted: a report about
//! a turn counts for at most the time since that turn began, and a turn is charged at least the
//! time its tenant held it (from its start until its last client reported, or its end and
//! `GRACE_NS` when one went quiet), so a client can neither report less than it held nor charge
//! time to anyone but its own tenant.

use crate::config::{DaemonConfig, SocketAccess};
use crate::identity::{self, Peer};
use carve_sched_proto::{self as proto, Reply, Request, StatusReport, TenantStatus};
use carve_sched_proto::{DRAIN_NS, GRACE_NS, LEDGER_TURNS};
use carve_timeslice as core;
use mio::net::{UnixListener as MioListener, UnixStream as MioStream};
use mio::{Events, Interest, Poll, Token, Waker};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Bounds on what clients can make the daemon hold. [`Limits::default`] is what
/// [`Server::start`] uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// A connection not welcomed by then (no `hello`, or a refused one) is closed.
    pub hello_within: Duration,
    /// Connections in all; one over it is refused.
    pub max_connections: usize,
    /// Connections not yet welcomed; at the cap a new one pushes out the oldest.
    pub max_unidentified: usize,
    /// Connections from one process (`SO_PEERCRED`'s pid; the shim opens one per process); one
    /// over it is refused.
    pub max_per_pid: usize,
    /// Welcomed connections of one tenant, at most: each tenant is sure of
    /// `min(max_per_tenant, (max_connections - max_unidentified) / tenants)`
    /// ([`Limits::per_tenant`]), whatever the others hold.
    pub max_per_tenant: usize,
    /// The longest line before `hello` is welcomed, newline included (a hello is a few hundred
    /// bytes); after it, `carve_sched_proto::MAX_LINE`.
    pub max_hello_line: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            hello_within: Duration::from_secs(1),
            max_connections: 1024,
            max_unidentified: 64,
            max_per_pid: 8,
            max_per_tenant: 256,
            max_hello_line: 16 * 1024,
        }
    }
}

impl Limits {
    /// The welcomed connections one tenant of `tenants` may hold.
    pub fn per_tenant(&self, tenants: usize) -> usize {
        let room = self.max_connections.saturating_sub(self.max_unidentified);
        self.max_per_tenant.min(room / tenants.max(1)).max(1)
    }
}

#[derive(Debug, Default, Clone)]
struct TenantState {
    clients: u32,
    /// The pid of each client connected now (`SO_PEERCRED` at its hello), once per connection.
    pids: Vec<u32>,
    /// Clients waiting for a turn.
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
    /// GPU time reported so far for the turn (each report at most the time since `start`).
    used: u64,
}

/// What a closed turn was charged, for reports that arrive after it closed.
#[derive(Debug, Clone, Copy)]
struct Charged {
    tenant: usize,
    /// When the turn began: a late report counts for at most the time since.
    start: u64,
    ns: u64,
}

struct DaemonState {
    core: core::Scheduler,
    tenants: Vec<TenantState>,
    turn: Option<Turn>,
    seq: u64,
    /// What each recent turn was charged, so that a report arriving after its turn was closed
    /// (work that drained late) pays the difference.
    ledger: std::collections::BTreeMap<u64, Charged>,
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
    /// Wakes the event loop: a turn began (someone waiting may get it), or the server stops.
    waker: Waker,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, DaemonState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes the scheduling thread and the event loop.
    fn notify(&self) {
        self.cv.notify_all();
        let _ = self.waker.wake();
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
    /// Something that is not a socket is at the path: never removed.
    #[error("{} exists and is not a socket: not removing it", path.display())]
    NotASocket { path: PathBuf },
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
    /// The socket could not be given its mode or group.
    #[error("cannot set permissions on {}: {source}", path.display())]
    Permissions {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The event loop could not be set up.
    #[error("cannot set up the event loop: {0}")]
    Poll(#[source] std::io::Error),
}

/// A running scheduler.
pub struct Server {
    shared: Arc<Shared>,
    path: PathBuf,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Raises the soft limit on open descriptors to the hard limit (a daemon's connections are
/// descriptors; the default soft limit, often 1,024, is below what the caps allow). Returns the
/// soft limit now.
pub fn raise_fd_limit() -> Option<libc::rlim_t> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the limits into `r`, a live rlimit on this stack frame.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return None;
    }
    if r.rlim_cur < r.rlim_max {
        let want = libc::rlimit {
            rlim_cur: r.rlim_max,
            rlim_max: r.rlim_max,
        };
        // SAFETY: setrlimit reads `want`, a live rlimit; raising the soft limit up to the hard
        // limit needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            return Some(want.rlim_cur);
        }
    }
    Some(r.rlim_cur)
}

/// Binds `path` with `access`'s mode and group, so that no process outside them can connect at
/// any moment: the socket is made in a fresh owner-only folder beside `path` (whatever the
/// umask), given its mode and group there, and moved into place.
fn bind(path: &Path, access: SocketAccess) -> Result<UnixListener, StartError> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let private = dir.unwrap_or(Path::new(".")).join(format!(
        ".{}.{}.tmp",
        name.as_deref().unwrap_or("sched.sock"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(|source| StartError::CreateDir {
            path: private.clone(),
            source,
        })?;
    let tmp = private.join("sock");
    let made = (|| {
        let listener = UnixListener::bind(&tmp).map_err(|source| StartError::Listen {
            path: path.to_path_buf(),
            source,
        })?;
        let perms = |source| StartError::Permissions {
            path: path.to_path_buf(),
            source,
        };
        if let SocketAccess::Group(g) = access {
            std::os::unix::fs::chown(&tmp, None, Some(g)).map_err(perms)?;
        }
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(access.mode()))
            .map_err(perms)?;
        std::fs::rename(&tmp, path).map_err(|source| StartError::Listen {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    made
}

impl Server {
    /// Binds the socket (its mode from [`DaemonConfig::socket_access`]) and starts serving
    /// within the default [`Limits`].
    pub fn start(config: DaemonConfig, path: &Path) -> Result<Server, StartError> {
        Server::start_with(config, path, Limits::default())
    }

    /// [`Server::start`] within `limits`.
    pub fn start_with(
        config: DaemonConfig,
        path: &Path,
        limits: Limits,
    ) -> Result<Server, StartError> {
        let sched = core::Scheduler::new(config.settings.clone())?;
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(StartError::NotASocket {
                    path: path.to_path_buf(),
                });
            }
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
        raise_fd_limit();
        let listener = bind(path, config.socket_access())?;
        let started = (|| {
            listener.set_nonblocking(true)?;
            let poll = Poll::new()?;
            let waker = Waker::new(poll.registry(), WAKE)?;
            let mut listener = MioListener::from_std(listener);
            poll.registry()
                .register(&mut listener, LISTENER, Interest::READABLE)?;
            Ok((poll, waker, listener))
        })();
        let (poll, waker, listener) = match started {
            Ok(x) => x,
            Err(e) => {
                let _ = std::fs::remove_file(path);
                return Err(StartError::Poll(e));
            }
        };
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
            waker,
        });
        let mut threads = Vec::new();
        let s = shared.clone();
        threads.push(std::thread::spawn(move || schedule_loop(&s)));
        let s = shared.clone();
        threads.push(std::thread::spawn(move || {
            EventLoop::new(s, poll, listener, limits).run();
        }));
        Ok(Server {
            shared,
            path: path.to_path_buf(),
            threads,
        })
    }

    pub fn status(&self) -> StatusReport {
        status(&self.shared, None)
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
        self.shared.notify();
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
    let ts = &mut st.tenants[t.tenant];
    ts.gpu_time = ts.gpu_time.saturating_add(used);
    st.ledger.insert(
        t.seq,
        Charged {
            tenant: t.tenant,
            start: t.start,
            ns: used,
        },
    );
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

/// A client of tenant `me` reports the GPU time it took in turn `seq` (from the grant until its
/// work drained). The report counts for at most the time since the turn began; the turn, once
/// its last client has reported, is charged at least the time it was held.
fn client_report(st: &mut DaemonState, me: usize, seq: u64, used: u64, now: u64) {
    if let Some(t) = st.turn.as_mut() {
        if t.seq == seq && t.tenant == me {
            let held = now.saturating_sub(t.start);
            t.running = t.running.saturating_sub(1);
            t.used = t.used.max(used.min(held));
            if t.running == 0 {
                let charge = t.used.max(held);
                end_turn(st, charge, now);
            }
            return;
        }
    }
    // The turn was closed already: pay what it took beyond what was charged.
    if let Some(c) = st.ledger.get_mut(&seq) {
        let used = used.min(now.saturating_sub(c.start));
        if c.tenant == me && used > c.ns {
            let extra = used - c.ns;
            c.ns = used;
            st.core.charge(tenant_id(me), extra, now);
            st.tenants[me].gpu_time = st.tenants[me].gpu_time.saturating_add(extra);
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
            // Whoever waits for the drain may go now.
            let _ = s.waker.wake();
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
                s.notify();
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

/// A client of tenant `me` asks for a turn: it is due from now. Returns when it asked.
fn acquire_begin(s: &Shared, st: &mut DaemonState, me: usize) -> u64 {
    let now = proto::now_ns();
    let ts = &mut st.tenants[me];
    ts.waiting += 1;
    if ts.waiting_since.is_none() {
        ts.waiting_since = Some(now);
    }
    st.core.set_pending(tenant_id(me), true, now);
    s.cv.notify_all();
    now
}

/// Joins the tenant's turn if it holds one now that it may run in (the previous holder has
/// drained). Returns (turn, end).
fn try_join(st: &mut DaemonState, me: usize, asked: u64) -> Option<(u64, u64)> {
    let now = proto::now_ns();
    let drained = st.draining.is_none_or(|d| d.0 == me || now >= d.2);
    let t = st.turn.as_mut()?;
    if !(t.tenant == me && drained && (now < t.until || t.running == 0)) {
        return None;
    }
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
    ts.wait_sum = ts.wait_sum.saturating_add(waited);
    ts.waiting -= 1;
    if ts.waiting == 0 {
        if let Some(since) = ts.waiting_since.take() {
            ts.throttled += now.saturating_sub(since);
        }
    }
    Some(got)
}

/// A client that waited for a turn went away (or the daemon stops): it is no longer due.
fn acquire_abandon(st: &mut DaemonState, me: usize) {
    let now = proto::now_ns();
    let ts = &mut st.tenants[me];
    ts.waiting = ts.waiting.saturating_sub(1);
    if ts.waiting == 0 {
        if let Some(since) = ts.waiting_since.take() {
            ts.throttled += now.saturating_sub(since);
        }
        if st.turn.as_ref().is_none_or(|t| t.tenant != me) {
            st.core.set_pending(tenant_id(me), false, now);
        }
    }
}

const LISTENER: Token = Token(0);
const WAKE: Token = Token(1);
/// How much of a connection's input is read at a time.
const READ_CHUNK: usize = 16 * 1024;
/// While a client waits for a turn, the waiting is looked at again at least this often.
const WAIT_RECHECK: Duration = Duration::from_millis(50);
/// After a failed accept (out of descriptors), accepting is tried again after this long.
const ACCEPT_RETRY: Duration = Duration::from_millis(20);

/// One client connection.
struct Conn {
    stream: MioStream,
    peer: Peer,
    /// When it must have been welcomed by; `None` once it is.
    deadline: Option<Instant>,
    /// Its tenant, once welcomed.
    me: Option<usize>,
    /// The turn this client last joined.
    mine: Option<u64>,
    /// Memory it reserved.
    reserved: u64,
    /// An `acquire` waiting for a turn: when it asked.
    waiting: Option<u64>,
    /// Read, not yet handled.
    input: Vec<u8>,
    /// To send, from `sent` on.
    output: Vec<u8>,
    sent: usize,
    /// The client closed its side.
    eof: bool,
    /// Close once `output` is sent.
    closing: bool,
}

/// What [`EventLoop::drive`] left a connection as.
#[derive(PartialEq, Eq)]
enum Drive {
    Keep,
    Close,
}

impl Conn {
    fn reply(&mut self, r: &Reply) {
        self.output.extend_from_slice(proto::encode(r).as_bytes());
    }

    fn refuse(&mut self, message: impl Into<String>) {
        self.reply(&Reply::Error {
            message: message.into(),
        });
        self.closing = true;
    }
}

/// Tells a client why it is not taken, if its socket takes the line at once, and hangs up.
fn turn_away(mut stream: MioStream, message: &str) {
    let line = proto::encode(&Reply::Error {
        message: message.into(),
    });
    let _ = stream.write(line.as_bytes());
}

/// The accept-and-serve loop: every connection, one thread.
struct EventLoop {
    s: Arc<Shared>,
    poll: Poll,
    listener: MioListener,
    limits: Limits,
    conns: HashMap<Token, Conn>,
    next: usize,
    /// Unidentified connections in the order they came, with their deadlines (entries of
    /// connections welcomed or gone since are skipped when met).
    arrivals: VecDeque<(Instant, Token)>,
    unidentified: usize,
    per_pid: HashMap<u32, usize>,
    /// Connections with an `acquire` waiting for a turn.
    waiters: BTreeSet<Token>,
    /// Accepting failed (no descriptor left): try again then.
    accept_again: Option<Instant>,
    /// The tenant cap of [`Limits::per_tenant`].
    tenant_cap: usize,
    /// What connections are read into.
    scratch: Vec<u8>,
}

impl EventLoop {
    fn new(s: Arc<Shared>, poll: Poll, listener: MioListener, limits: Limits) -> EventLoop {
        let tenant_cap = limits.per_tenant(s.config.tenants.len());
        EventLoop {
            s,
            poll,
            listener,
            limits,
            conns: HashMap::new(),
            next: 2,
            arrivals: VecDeque::new(),
            unidentified: 0,
            per_pid: HashMap::new(),
            waiters: BTreeSet::new(),
            accept_again: None,
            tenant_cap,
            scratch: vec![0; READ_CHUNK],
        }
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(256);
        loop {
            if self.s.stop.load(Ordering::Acquire) {
                break;
            }
            let timeout = self.timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    // Nothing else to do but try again (a failing epoll_wait is a bug).
                    std::thread::sleep(ACCEPT_RETRY);
                }
                continue;
            }
            if self.s.stop.load(Ordering::Acquire) {
                break;
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    WAKE => {}
                    t => {
                        let gone = self.conns.get(&t).is_some_and(|c| {
                            c.waiting.is_some() && (ev.is_read_closed() || ev.is_error())
                        });
                        if gone {
                            self.close(t);
                        } else {
                            self.drive(t);
                        }
                    }
                }
            }
            if self.accept_again.is_some_and(|at| Instant::now() >= at) {
                self.accept_again = None;
                self.accept();
            }
            self.serve_waiters();
            self.expire();
        }
        self.shut();
    }

    /// How long the next wait may be: until the first hello deadline, the next look at the
    /// waiting clients, or the next try at accepting.
    fn timeout(&self) -> Option<Duration> {
        let now = Instant::now();
        let mut at: Option<Instant> = self.arrivals.front().map(|a| a.0);
        let mut sooner = |t: Instant| at = Some(at.map_or(t, |a| a.min(t)));
        if let Some(t) = self.accept_again {
            sooner(t);
        }
        if !self.waiters.is_empty() {
            let mut t = now + WAIT_RECHECK;
            if let Some(d) = self.s.lock().draining {
                let left = d.2.saturating_sub(proto::now_ns());
                t = t.min(now + Duration::from_nanos(left));
            }
            sooner(t);
        }
        at.map(|t| t.saturating_duration_since(now))
    }

    /// Accepts every waiting connection, within the caps.
    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => self.admit(stream),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of descriptors (EMFILE, ENFILE): the oldest unidentified connection
                    // makes room for the next. With none to push out (or out of memory), come
                    // back shortly rather than spin.
                    let out_of_fds = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
                    if !(out_of_fds && self.push_out_oldest()) {
                        self.accept_again = Some(Instant::now() + ACCEPT_RETRY);
                        return;
                    }
                }
            }
        }
    }

    fn admit(&mut self, mut stream: MioStream) {
        let Ok(peer) = identity::peer(&stream) else {
            return;
        };
        if self.conns.len() >= self.limits.max_connections {
            return turn_away(
                stream,
                &format!(
                    "the scheduler holds {} connections, its most",
                    self.conns.len()
                ),
            );
        }
        let from_pid = self.per_pid.get(&peer.pid).copied().unwrap_or(0);
        if from_pid >= self.limits.max_per_pid {
            return turn_away(
                stream,
                &format!(
                    "process {} holds {from_pid} connections to the scheduler, the most one process may",
                    peer.pid
                ),
            );
        }
        if self.unidentified >= self.limits.max_unidentified {
            self.push_out_oldest();
        }
        let token = Token(self.next);
        self.next += 1;
        if self
            .poll
            .registry()
            .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
            .is_err()
        {
            return;
        }
        let deadline = Instant::now() + self.limits.hello_within;
        self.conns.insert(
            token,
            Conn {
                stream,
                peer,
                deadline: Some(deadline),
                me: None,
                mine: None,
                reserved: 0,
                waiting: None,
                input: Vec::new(),
                output: Vec::new(),
                sent: 0,
                eof: false,
                closing: false,
            },
        );
        *self.per_pid.entry(peer.pid).or_default() += 1;
        self.unidentified += 1;
        self.arrivals.push_back((deadline, token));
        // Its hello may be there already.
        self.drive(token);
    }

    /// Closes the oldest connection that has not been welcomed; false when there is none.
    fn push_out_oldest(&mut self) -> bool {
        while let Some((_, t)) = self.arrivals.pop_front() {
            if self.conns.get(&t).is_some_and(|c| c.me.is_none()) {
                self.close(t);
                return true;
            }
        }
        false
    }

    /// Closes the connections not welcomed in time.
    fn expire(&mut self) {
        let now = Instant::now();
        while let Some(&(deadline, t)) = self.arrivals.front() {
            match self.conns.get_mut(&t) {
                Some(c) if c.me.is_none() => {
                    if deadline > now {
                        return;
                    }
                    self.arrivals.pop_front();
                    let within = self.limits.hello_within;
                    let c = self.conns.get_mut(&t);
                    if let Some(c) = c {
                        c.output.clear();
                        c.sent = 0;
                        c.refuse(format!("no hello within {within:?}"));
                    }
                    if self.drive(t) == Drive::Keep {
                        self.close(t);
                    }
                }
                _ => {
                    self.arrivals.pop_front();
                }
            }
        }
    }

    /// Reads, handles and answers what a connection has, as far as it can go without waiting.
    fn drive(&mut self, t: Token) -> Drive {
        let Some(mut c) = self.conns.remove(&t) else {
            return Drive::Close;
        };
        let was = c.me.is_some();
        let d = self.drive_conn(&mut c, t);
        if !was && c.me.is_some() {
            self.unidentified -= 1;
        }
        self.conns.insert(t, c);
        if d == Drive::Close {
            self.close(t);
        }
        d
    }

    fn drive_conn(&mut self, c: &mut Conn, t: Token) -> Drive {
        loop {
            while c.sent < c.output.len() {
                match c.stream.write(&c.output[c.sent..]) {
                    Ok(0) => return Drive::Close,
                    Ok(n) => c.sent += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Drive::Keep,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => return Drive::Close,
                }
            }
            c.output.clear();
            c.sent = 0;
            if c.closing {
                return Drive::Close;
            }
            if c.waiting.is_some() {
                return Drive::Keep;
            }
            if let Some(end) = c.input.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = c.input.drain(..=end).collect();
                self.handle(c, t, &line);
                continue;
            }
            if c.eof {
                if c.input.is_empty() {
                    return Drive::Close;
                }
                // The last line of a client that closed its side.
                let line = std::mem::take(&mut c.input);
                self.handle(c, t, &line);
                continue;
            }
            let limit = match c.me {
                Some(_) => proto::MAX_LINE,
                None => self.limits.max_hello_line,
            };
            if c.input.len() >= limit {
                c.input = Vec::new();
                c.refuse(format!(
                    "bad request: longer than {limit} bytes without a newline"
                ));
                continue;
            }
            if c.input.is_empty() && c.input.capacity() > 4 * READ_CHUNK {
                c.input = Vec::new();
            }
            // Read through the loop's buffer: an idle connection holds no buffer of its own.
            let want = READ_CHUNK.min(limit - c.input.len());
            match c.stream.read(&mut self.scratch[..want]) {
                Ok(0) => c.eof = true,
                Ok(n) => c.input.extend_from_slice(&self.scratch[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Drive::Keep,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return Drive::Close,
            }
        }
    }

    /// Answers the clients whose tenant's turn has come.
    fn serve_waiters(&mut self) {
        if self.waiters.is_empty() {
            return;
        }
        let mut granted = Vec::new();
        {
            let mut st = self.s.lock();
            for t in &self.waiters {
                let Some(c) = self.conns.get_mut(t) else {
                    continue;
                };
                let (Some(i), Some(asked)) = (c.me, c.waiting) else {
                    continue;
                };
                if let Some((seq, until)) = try_join(&mut st, i, asked) {
                    c.waiting = None;
                    c.mine = Some(seq);
                    c.reply(&Reply::Grant { until_ns: until });
                    granted.push(*t);
                }
            }
        }
        for t in granted {
            self.waiters.remove(&t);
            self.drive(t);
        }
    }

    /// One request line.
    fn handle(&mut self, c: &mut Conn, t: Token, line: &[u8]) {
        let s = self.s.clone();
        let Ok(line) = std::str::from_utf8(line) else {
            c.closing = true;
            return;
        };
        let req: Request = match serde_json::from_str(line) {
            Ok(r) => r,
            Err(e) => return c.refuse(format!("bad request: {e}")),
        };
        let reply = match (&req, c.me) {
            (
                Request::Hello {
                    version,
                    tenant,
                    token,
                },
                None,
            ) => self.hello(c, *version, tenant, token.as_deref()),
            (Request::Status, me) => {
                if identity::is_operator(c.peer) {
                    Reply::Status {
                        status: status(&s, None),
                    }
                } else if let Some(i) = me {
                    // A tenant sees its own figures, not its neighbours'.
                    Reply::Status {
                        status: status(&s, Some(i)),
                    }
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
            (Request::Acquire, Some(i)) => {
                let mut st = s.lock();
                let asked = acquire_begin(&s, &mut st, i);
                match try_join(&mut st, i, asked) {
                    Some((seq, until)) => {
                        c.mine = Some(seq);
                        Reply::Grant { until_ns: until }
                    }
                    None => {
                        c.waiting = Some(asked);
                        self.waiters.insert(t);
                        return;
                    }
                }
            }
            (Request::Renew { used_ns }, Some(i)) => renew(&s, c, i, *used_ns),
            (Request::Release { used_ns, .. }, Some(i)) => {
                let mut st = s.lock();
                let now = proto::now_ns();
                if let Some(seq) = c.mine {
                    // Ends its part of the turn, or pays what drained after the turn closed.
                    client_report(&mut st, i, seq, *used_ns, now);
                    if st.draining.is_some_and(|d| d.1 == seq) {
                        st.draining = None;
                    }
                }
                if st.tenants[i].waiting == 0 && st.turn.as_ref().is_none_or(|t| t.tenant != i) {
                    st.core.set_pending(tenant_id(i), false, now);
                }
                s.notify();
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
                        c.reserved = c.reserved.saturating_add(*bytes);
                        Reply::AllocOk {
                            used: st.tenants[i].memory_used,
                        }
                    }
                }
            }
            (Request::Free { bytes }, Some(i)) => {
                let mut st = s.lock();
                let b = (*bytes).min(c.reserved);
                c.reserved -= b;
                st.tenants[i].memory_used = st.tenants[i].memory_used.saturating_sub(b);
                Reply::Freed {
                    used: st.tenants[i].memory_used,
                }
            }
        };
        let refused = matches!(reply, Reply::Error { .. }) && c.me.is_none();
        c.reply(&reply);
        if refused {
            c.closing = true;
        }
    }

    /// `hello`: the claim checked against the kernel's credentials or the token, within the
    /// tenant's share of the connections.
    fn hello(&mut self, c: &mut Conn, version: u32, tenant: &str, token: Option<&str>) -> Reply {
        let s = &self.s;
        if version != proto::VERSION {
            return Reply::Error {
                message: format!(
                    "protocol version {version} is not supported (this scheduler speaks {})",
                    proto::VERSION
                ),
            };
        }
        let i = match identity::authenticate(&s.config.tenants, tenant, token, c.peer) {
            Ok(t) => s
                .config
                .tenants
                .iter()
                .position(|x| x.tenant.name == t.tenant.name),
            Err(e) => {
                return Reply::Error {
                    message: e.for_client(c.peer),
                }
            }
        };
        let Some(i) = i else {
            return Reply::Error {
                message: "say hello first: unknown client".into(),
            };
        };
        let mut st = s.lock();
        let held = st.tenants[i].clients as usize;
        if held >= self.tenant_cap {
            return Reply::Error {
                message: format!(
                    "tenant '{tenant}' holds {held} connections to the scheduler, its most"
                ),
            };
        }
        let t = &s.config.tenants[i];
        c.me = Some(i);
        c.deadline = None;
        let now = proto::now_ns();
        st.tenants[i].clients += 1;
        st.tenants[i].pids.push(c.peer.pid);
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

    /// Closes a connection: gives back its turn, its memory and its place.
    fn close(&mut self, t: Token) {
        let Some(mut c) = self.conns.remove(&t) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut c.stream);
        self.waiters.remove(&t);
        if c.me.is_none() {
            self.unidentified -= 1;
        }
        if let Some(n) = self.per_pid.get_mut(&c.peer.pid) {
            *n -= 1;
            if *n == 0 {
                self.per_pid.remove(&c.peer.pid);
            }
        }
        if let Some(i) = c.me {
            gone(&self.s, &c, i);
        }
    }

    /// The server stops: those waiting for a turn are told, everyone is let go.
    fn shut(&mut self) {
        let waiting: Vec<Token> = self.waiters.iter().copied().collect();
        for t in waiting {
            if let Some(c) = self.conns.get_mut(&t) {
                if let Some(i) = c.me {
                    acquire_abandon(&mut self.s.lock(), i);
                }
                c.waiting = None;
                c.reply(&Reply::Error {
                    message: "the scheduler is stopping".into(),
                });
                c.closing = true;
            }
            self.waiters.remove(&t);
            self.drive(t);
        }
        let all: Vec<Token> = self.conns.keys().copied().collect();
        for t in all {
            self.close(t);
        }
    }
}

/// `renew`: go on in the tenant's turn, or report and yield (going on at once when the tenant is
/// due next and the GPU is free).
fn renew(s: &Shared, c: &mut Conn, i: usize, used_ns: u64) -> Reply {
    let mut st = s.lock();
    let now = proto::now_ns();
    let live = st
        .turn
        .as_ref()
        .filter(|t| t.tenant == i && now < t.until)
        .map(|t| (t.seq, t.until));
    if let Some((seq, until)) = live {
        // Its tenant holds a turn now: stay (joining it if it is a newer one).
        if c.mine != Some(seq) {
            if let Some(old) = c.mine {
                client_report(&mut st, i, old, used_ns, now);
            }
            if let Some(t) = st.turn.as_mut() {
                t.running += 1;
            }
            c.mine = Some(seq);
        }
        return Reply::Grant { until_ns: until };
    }
    if let Some(old) = c.mine {
        client_report(&mut st, i, old, used_ns, now);
    }
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
                    c.mine = Some(seq);
                    reply = Reply::Grant {
                        until_ns: until.max(now + 1),
                    };
                }
            }
            core::Decision::Idle { .. } | core::Decision::Empty => {}
        }
    }
    if !matches!(reply, Reply::Grant { .. }) {
        if let Some(old) = c.mine {
            st.draining = Some((i, old, now + DRAIN_NS));
        }
        if st.tenants[i].waiting == 0 {
            // It drains before it asks again; don't hand it a turn meanwhile.
            st.core.set_pending(tenant_id(i), false, now);
        }
    }
    s.notify();
    reply
}

/// A welcomed client went away: give back its turn and its memory.
fn gone(s: &Shared, c: &Conn, i: usize) {
    let mut st = s.lock();
    let now = proto::now_ns();
    if c.waiting.is_some() {
        acquire_abandon(&mut st, i);
    }
    if let Some(seq) = c.mine {
        if let Some(start) = st.turn.as_ref().filter(|t| t.seq == seq).map(|t| t.start) {
            client_report(&mut st, i, seq, now.saturating_sub(start), now);
        }
        if st.draining.is_some_and(|d| d.1 == seq) {
            st.draining = None;
        }
    }
    st.tenants[i].memory_used = st.tenants[i].memory_used.saturating_sub(c.reserved);
    st.tenants[i].clients = st.tenants[i].clients.saturating_sub(1);
    if let Some(k) = st.tenants[i].pids.iter().position(|p| *p == c.peer.pid) {
        st.tenants[i].pids.swap_remove(k);
    }
    if st.tenants[i].clients == 0 {
        if st.turn.as_ref().is_some_and(|t| t.tenant == i) {
            end_turn(&mut st, 0, now);
        }
        st.core.remove_tenant(tenant_id(i), now);
    }
    s.notify();
}

/// The daemon's figures: every tenant's, or only tenant `only`'s.
fn status(s: &Shared, only: Option<usize>) -> StatusReport {
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
        .filter(|(i, _)| only.is_none_or(|o| o == *i))
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
