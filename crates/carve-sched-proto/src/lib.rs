//! The protocol between the shim (inside each CUDA process) and `carve sched`: one JSON object per
//! line over a unix stream socket, request then reply. Times are `CLOCK_MONOTONIC` nanoseconds,
//! which every process on the node shares.
//!
//! A client first says `hello` with the tenant it claims and, if it has one, the token the agent
//! gave that tenant. The daemon does not take the claim on trust: it checks the connection's peer
//! credentials (uid, and the peer pid's cgroup) or the token against the tenant's configuration,
//! and refuses an unknown client.
//!
//! The fast path never talks to the daemon: while it holds a grant (`until_ns` in the future) the
//! shim launches freely. At the end of a grant it asks to `renew`; the daemon answers with a new
//! grant when nobody else is due, or `yield`, after which the shim drains its work, reports the
//! GPU time it took (`release`) and waits for its next turn (`acquire`).
//!
//! This crate is the whole contract between separately deployed processes (the shim is built
//! into containers' images and preloaded; the daemon runs on the node): the messages, the
//! daemon's timing that clients rely on ([`GRACE_NS`], [`DRAIN_NS`], [`LEDGER_TURNS`]), the
//! environment the shim reads ([`ENV_SCHED_SOCKET`] and the others) and, with the feature
//! `client` (on by default; the daemon, the shim and the CLI take it), a blocking `Client` and
//! the clock (`now_ns`). Without it the crate is pure: the simulator reads the daemon's figures
//! from it. A change to the wire format needs a [`VERSION`] bump.

#[cfg(feature = "client")]
mod client;

#[cfg(feature = "client")]
pub use client::{status, Client, ClientError, MAX_LINE};

use serde::{Deserialize, Serialize};

/// Protocol version; a daemon refuses other versions with a clear message.
pub const VERSION: u32 = 1;

/// Default socket path.
pub const DEFAULT_SOCKET: &str = "/run/carve/sched.sock";

/// The scheduler's socket, read by the shim (default [`DEFAULT_SOCKET`]).
pub const ENV_SCHED_SOCKET: &str = "CARVE_SCHED_SOCKET";
/// The tenant the shim's process claims to be.
pub const ENV_TENANT: &str = "CARVE_TENANT";
/// A file holding the tenant's token, sent with `hello` (trimmed).
pub const ENV_TOKEN_FILE: &str = "CARVE_TOKEN_FILE";
/// What the shim does when it cannot reach the scheduler: [`FAIL_OPEN`] (the default) or
/// [`FAIL_CLOSED`]. A refusal always fails closed.
pub const ENV_FAIL: &str = "CARVE_FAIL";
/// [`ENV_FAIL`]: run unscheduled and without a memory limit.
pub const FAIL_OPEN: &str = "open";
/// [`ENV_FAIL`]: refuse kernel launches and allocations.
pub const FAIL_CLOSED: &str = "closed";

/// Where the shim reads its configuration first: a read-only file that the agent mounts into
/// every container of a time-sliced share ([`ShimConfig`]). When it exists, the shim reads
/// nothing from the environment: a tenant cannot change its scheduler, tenant, token or fail
/// mode by changing its own environment.
pub const SHIM_CONFIG: &str = "/etc/carve/shim.conf";
/// Without [`SHIM_CONFIG`]: a configuration file named by the environment, read in place of the
/// other `ENV_*` variables (a host whose operator starts the program; the tests).
pub const ENV_SHIM_CONFIG: &str = "CARVE_SHIM_CONFIG";

/// The shim's configuration file ([`SHIM_CONFIG`]): `key = value` lines (`#` starts a comment)
/// with the keys `socket`, `tenant`, `token_file` and `fail`. A missing `fail` is
/// [`FAIL_CLOSED`]: a file is written by the operator, who must say so to fail open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimConfig {
    /// The scheduler's socket (default [`DEFAULT_SOCKET`]).
    pub socket: String,
    /// The tenant the process claims to be.
    pub tenant: String,
    /// The file holding the tenant's token.
    pub token_file: Option<String>,
    /// [`FAIL_OPEN`] or [`FAIL_CLOSED`].
    pub fail: String,
}

/// A line of a [`ShimConfig`] file that cannot be read (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimConfigError {
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for ShimConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ShimConfigError {}

impl ShimConfig {
    /// The file's text.
    pub fn render(&self) -> String {
        let mut s = format!(
            "# carve shim configuration (read-only; the environment is not read)\nsocket = {}\ntenant = {}\n",
            self.socket, self.tenant
        );
        if let Some(t) = &self.token_file {
            s.push_str(&format!("token_file = {t}\n"));
        }
        s.push_str(&format!("fail = {}\n", self.fail));
        s
    }

    /// Reads a file's text; an unknown key, a line without `=` or a fail mode other than
    /// [`FAIL_OPEN`] and [`FAIL_CLOSED`] is an error.
    pub fn parse(text: &str) -> Result<ShimConfig, ShimConfigError> {
        let mut c = ShimConfig {
            socket: DEFAULT_SOCKET.to_string(),
            tenant: String::new(),
            token_file: None,
            fail: FAIL_CLOSED.to_string(),
        };
        for (i, raw) in text.lines().enumerate() {
            let err = |message: String| ShimConfigError {
                line: i + 1,
                message,
            };
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| err(format!("expected key = value, found '{line}'")))?;
            let value = value.trim().to_string();
            match key.trim() {
                "socket" => c.socket = value,
                "tenant" => c.tenant = value,
                "token_file" => c.token_file = Some(value).filter(|v| !v.is_empty()),
                "fail" if value == FAIL_OPEN || value == FAIL_CLOSED => c.fail = value,
                "fail" => {
                    return Err(err(format!(
                        "fail must be {FAIL_OPEN} or {FAIL_CLOSED}, not '{value}'"
                    )))
                }
                other => {
                    return Err(err(format!(
                        "unknown key '{other}' (socket, tenant, token_file, fail)"
                    )))
                }
            }
        }
        Ok(c)
    }
}

/// How long after a turn ends the daemon waits for the holder's report (its real GPU time, with
/// any overrun) before closing the turn without it, charging at least the grant's length. A
/// client back after a longer pause knows its turn is gone (`carve-simulate` models the same
/// wait).
pub const GRACE_NS: u64 = 5_000_000;

/// How long a client told to `yield` may take to drain before the next turn starts anyway.
pub const DRAIN_NS: u64 = 10_000_000;

/// How many closed turns the daemon remembers what it charged for, so that a report arriving
/// after its turn was closed (work that drained late) pays the difference. Reports about older
/// turns are ignored.
pub const LEDGER_TURNS: usize = 256;

/// What a client asks (`{"op": "...", ...}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// Identify. `token` is the content of the tenant's token file, when it has one.
    Hello {
        version: u32,
        tenant: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
    /// Wait for the next turn.
    Acquire,
    /// The grant ran out and the client still has work: may it go on without a switch?
    /// `used_ns`: GPU time held since the grant began.
    Renew { used_ns: u64 },
    /// The turn is over; `used_ns` is the time from the grant until the client's work drained
    /// (more than the grant when kernels overran). `pending`: it has more work waiting.
    Release { used_ns: u64, pending: bool },
    /// Reserve device memory against the tenant's limit.
    Alloc { bytes: u64 },
    /// Return device memory.
    Free { bytes: u64 },
    /// Per-tenant figures (for `carve sched status`).
    Status,
}

/// What the daemon answers (`{"reply": "...", ...}`), one reply per request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "kebab-case")]
pub enum Reply {
    Welcome {
        tenant: String,
        /// Memory limit of the tenant, bytes (all its processes together).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        memory_limit: Option<u64>,
        slice_ns: u64,
        policy: String,
    },
    /// Run until `until_ns` (CLOCK_MONOTONIC).
    Grant {
        until_ns: u64,
    },
    /// Someone else is due: drain, release, then acquire.
    Yield,
    AllocOk {
        used: u64,
    },
    AllocDenied {
        used: u64,
        limit: u64,
    },
    Freed {
        used: u64,
    },
    Status {
        status: StatusReport,
    },
    Error {
        message: String,
    },
}

/// What `carve sched status --json` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub policy: String,
    pub slice_ms: f64,
    pub uptime_ns: u64,
    pub tenants: Vec<TenantStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantStatus {
    pub name: String,
    pub target_share: f64,
    pub achieved_share: f64,
    pub gpu_time_ns: u64,
    /// Turns granted.
    pub launches: u64,
    /// Time it waited for a turn while it had work.
    pub throttled_ns: u64,
    pub memory_used_mib: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_mib: Option<f64>,
    /// Connected client processes.
    pub clients: u32,
    /// How long launches that found no turn waited for one: a count per bucket of
    /// [`WAIT_BUCKETS_NS`], the last for longer waits.
    #[serde(default)]
    pub wait_buckets: Vec<u64>,
    /// The sum of those waits.
    #[serde(default)]
    pub wait_sum_ns: u64,
}

/// A client back after a pause longer than the daemon's grace drains its context first: a drain
/// that takes longer than this (an idle context synchronises in microseconds) found its work
/// still running, and the time until it ended is reported; otherwise the pause is not GPU time
/// and nothing more than the closed turn is reported.
pub const LATE_DRAIN_NS: u64 = 1_000_000;

/// Upper bounds of the launch-wait histogram buckets, ns.
pub const WAIT_BUCKETS_NS: [u64; 11] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
];

/// `CLOCK_MONOTONIC` now, in nanoseconds (feature `client`).
#[cfg(feature = "client")]
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live timespec on this stack frame, which clock_gettime only writes;
    // CLOCK_MONOTONIC always exists on Linux, so the call cannot fail and leave it unset.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One line of JSON for a message. (The messages have no maps and no fallible serialisers, so
/// serialising them cannot fail.)
pub fn encode<T: Serialize>(m: &T) -> String {
    let mut s = serde_json::to_string(m).expect("protocol messages serialise");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shim_config_round_trips_and_refuses_what_it_does_not_know() {
        let c = ShimConfig {
            socket: "/run/carve/sched.sock".into(),
            tenant: "team-a".into(),
            token_file: Some("/run/carve/token".into()),
            fail: FAIL_CLOSED.into(),
        };
        assert_eq!(ShimConfig::parse(&c.render()), Ok(c.clone()));
        // Without a fail mode a file fails closed.
        let bare = ShimConfig::parse("tenant = a\n").unwrap();
        assert_eq!(
            (bare.fail.as_str(), bare.socket.as_str()),
            (FAIL_CLOSED, DEFAULT_SOCKET)
        );
        assert_eq!(ShimConfig::parse("fail = maybe").unwrap_err().line, 1);
        assert_eq!(ShimConfig::parse("# x\nfial = open").unwrap_err().line, 2);
        assert!(ShimConfig::parse("tenant").is_err());
    }
}
