//! What every process on the node shares, all of it under `$CARVE_FAKE_CUDA_DIR`: the GPU (a
//! ticket lock in a mapped file), the device memory in use (a file per process) and what each
//! process ran (`stats/<pid>.json`).

use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::*};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The directory of the shared state: `$CARVE_FAKE_CUDA_DIR`, else `carve-fake-cuda-<uid>` in the
/// temporary directory. Read once per process.
pub fn dir() -> &'static PathBuf {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let d = std::env::var_os(crate::ENV_DIR)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                // SAFETY: getuid has no preconditions.
                let uid = unsafe { libc::getuid() };
                std::env::temp_dir().join(format!("carve-fake-cuda-{uid}"))
            });
        let _ = std::fs::create_dir_all(d.join("mem"));
        let _ = std::fs::create_dir_all(d.join("stats"));
        d
    })
}

/// Device memory in bytes: `$CARVE_FAKE_CUDA_MEM_MIB` (default 81920, an H100's 80 GiB).
pub fn total_bytes() -> u64 {
    static T: OnceLock<u64> = OnceLock::new();
    *T.get_or_init(|| {
        std::env::var(crate::ENV_MEM_MIB)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(81920)
            .saturating_mul(1024 * 1024)
    })
}

/// Set at process exit: kernels still running stop, queued ones are dropped, so a process that
/// exits with work in flight never holds the GPU from beyond the grave.
pub static EXITING: AtomicBool = AtomicBool::new(false);

/// The start time of a process (field 22 of `/proc/<pid>/stat`), `None` when it is gone or a
/// zombie. With the pid it names a process uniquely.
fn start_time(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold anything; fields after it are
    // plain. Field 3 is the state, field 22 the start time.
    let rest = &s[s.rfind(')')? + 1..];
    let mut f = rest.split_ascii_whitespace();
    let state = f.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    f.nth(18)?.parse().ok()
}

fn alive(pid: u32) -> bool {
    pid != 0 && start_time(pid).is_some()
}

fn my_start_time() -> u64 {
    static S: OnceLock<u64> = OnceLock::new();
    *S.get_or_init(|| start_time(std::process::id()).unwrap_or(0))
}

// ---------------------------------------------------------------------------------------------
// The GPU: a first-come-first-served ticket lock in a page every process maps, so kernels from
// all processes run one at a time in arrival order (as the GPU time-slices between contexts).
// A plain `flock` would serialise them too, but it is not fair: the process that has just
// released it wins it back far more often than not. Waiters sleep on a futex in the shared page;
// a release wakes them.

#[repr(C)]
struct Tickets {
    /// The next ticket to hand out.
    next: AtomicU64,
    /// The ticket whose turn it is.
    serving: AtomicU64,
    /// The pid running a kernel (0 while the turn is being taken).
    holder: AtomicU64,
    /// Bumped at every release: the futex word waiters sleep on.
    seq: AtomicU32,
    /// Threads asleep on `seq` (a release with none skips the wake-up call).
    sleepers: AtomicU32,
    /// When the running kernel should end (CLOCK_MONOTONIC ns, the same clock in every process):
    /// the next ticket in line sleeps until just before it, then watches for the release.
    ends_at: AtomicU64,
}

fn tickets() -> Option<&'static Tickets> {
    static G: OnceLock<Option<usize>> = OnceLock::new();
    let addr = G.get_or_init(|| {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(dir().join("gpu.tickets"))
            .ok()?;
        if f.metadata().ok()?.len() < 4096 {
            f.set_len(4096).ok()?;
        }
        // SAFETY: a shared read-write mapping of a 4 KiB file, kept for the life of the process
        // (the descriptor may close; the mapping stays).
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        (p != libc::MAP_FAILED).then_some(p as usize)
    });
    // SAFETY: the mapping is page-aligned, zero-filled when new, and lives as long as the process;
    // every field is an atomic.
    addr.map(|a| unsafe { &*(a as *const Tickets) })
}

/// CLOCK_MONOTONIC in nanoseconds (system-wide, unlike `Instant`'s opaque values).
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime with a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Sleeps until `seq` moves from `seen` or the timeout passes.
fn futex_wait(g: &Tickets, seen: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    g.sleepers.fetch_add(1, SeqCst);
    // SAFETY: FUTEX_WAIT (shared, not private: other processes map the same page) on a live
    // 32-bit atomic, with a relative timeout.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            g.seq.as_ptr(),
            libc::FUTEX_WAIT,
            seen,
            &ts as *const libc::timespec,
        );
    }
    g.sleepers.fetch_sub(1, SeqCst);
}

/// Moves the turn on and wakes the sleepers.
fn advance(g: &Tickets) {
    g.seq.fetch_add(1, SeqCst);
    if g.sleepers.load(SeqCst) > 0 {
        // SAFETY: FUTEX_WAKE on a live 32-bit atomic.
        unsafe {
            libc::syscall(libc::SYS_futex, g.seq.as_ptr(), libc::FUTEX_WAKE, i32::MAX);
        }
    }
}

/// How long the turn may stay with a ticket whose process is gone before it is skipped.
const DEAD_AFTER: Duration = Duration::from_millis(100);
/// The next in line stops sleeping this long before the running kernel should end.
const WAKE_EARLY_NS: u64 = 40_000;

/// A held turn on the GPU; released on drop.
pub struct Turn(u64);

/// Waits for the GPU to run a kernel of `ns`. `None` when the shared page cannot be mapped (then
/// kernels run without mutual exclusion rather than not at all) or when the process is exiting.
pub fn acquire(ns: u64) -> Option<Turn> {
    let g = tickets()?;
    let me = std::process::id() as u64;
    let mut t = g.next.fetch_add(1, SeqCst);
    let mut seen = g.serving.load(SeqCst);
    let mut since = Instant::now();
    loop {
        if EXITING.load(Acquire) {
            // Give the ticket back: if it is our turn, pass it on (if it comes later, it is
            // skipped as a dead process's would be).
            if g.serving.compare_exchange(t, t + 1, SeqCst, SeqCst).is_ok() {
                advance(g);
            }
            return None;
        }
        let seq = g.seq.load(SeqCst);
        let s = g.serving.load(SeqCst);
        if s == t {
            g.holder.store(me, SeqCst);
            g.ends_at.store(mono_ns().saturating_add(ns), SeqCst);
            return Some(Turn(t));
        }
        if s > t {
            // Our ticket was skipped (we looked dead for a while): take another.
            t = g.next.fetch_add(1, SeqCst);
            continue;
        }
        if s != seen {
            seen = s;
            since = Instant::now();
        } else if since.elapsed() > DEAD_AFTER && !alive(g.holder.load(SeqCst) as u32) {
            // The ticket being served belongs to a process that died (holding it, or before
            // taking it): skip it.
            if g.serving.compare_exchange(s, s + 1, SeqCst, SeqCst).is_ok() {
                g.holder.store(0, SeqCst);
                advance(g);
            }
            since = Instant::now();
            continue;
        }
        if t == s + 1 {
            // Next in line: sleep until just before the running kernel ends, then watch.
            let (end, now) = (g.ends_at.load(SeqCst), mono_ns());
            if end > now + WAKE_EARLY_NS {
                let nap = (end - now - WAKE_EARLY_NS).min(20_000_000);
                futex_wait(g, seq, Duration::from_nanos(nap));
            } else if now < end + 500_000 {
                std::thread::yield_now();
            } else {
                // The kernel overran (its thread descheduled, or it is being taken): sleep.
                futex_wait(g, seq, Duration::from_millis(1));
            }
        } else {
            futex_wait(g, seq, Duration::from_millis(20));
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some(g) = tickets() {
            let me = std::process::id() as u64;
            let _ = g.holder.compare_exchange(me, 0, SeqCst, SeqCst);
            if g.serving
                .compare_exchange(self.0, self.0 + 1, SeqCst, SeqCst)
                .is_ok()
            {
                advance(g);
            }
        }
    }
}

/// A kernel's thread sleeps through all but this much of it, then spins to the end (a sleep
/// overshoots by the wake-up latency; spinning alone is exact).
const SPIN_LAST_NS: u64 = 150_000;

/// Runs a kernel for `ns`: the calling thread sleeps through all but the last
/// [`SPIN_LAST_NS`], then spins on the monotonic clock to the end. A GPU kernel takes no CPU;
/// spinning through all of it would take a core from the threads that launch and wait for
/// kernels (on a small machine the thread woken by a kernel's completion could wait for the
/// next kernel to end before it runs). Returns the nanoseconds it ran.
pub fn spin(ns: u64) -> u64 {
    let start = Instant::now();
    if ns > SPIN_LAST_NS {
        let wake = start + Duration::from_nanos(ns - SPIN_LAST_NS);
        loop {
            let now = Instant::now();
            if now >= wake || EXITING.load(Relaxed) {
                break;
            }
            std::thread::sleep((wake - now).min(Duration::from_millis(5)));
        }
    }
    loop {
        let e = start.elapsed().as_nanos() as u64;
        if e >= ns || EXITING.load(Relaxed) {
            return e.min(ns);
        }
        std::hint::spin_loop();
    }
}

// ---------------------------------------------------------------------------------------------
// Device memory: each process writes what it holds to `mem/<pid>` ("<bytes> <start time>");
// the node's use is the sum over live processes. Read-modify-write under `mem.lock`.

/// An exclusive `flock` on a file in the shared directory, held while alive.
pub struct Flock(std::fs::File);

impl Flock {
    pub fn take(name: &str) -> Option<Flock> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir().join(name))
            .ok()?;
        // SAFETY: flock on an open descriptor.
        while unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            if std::io::Error::last_os_error().kind() != ErrorKind::Interrupted {
                return None;
            }
        }
        Some(Flock(f))
    }
}

impl Drop for Flock {
    fn drop(&mut self) {
        // SAFETY: unlock our own descriptor.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

fn mem_file(pid: u32) -> PathBuf {
    dir().join("mem").join(pid.to_string())
}

/// Bytes held by the other live processes (call under `mem.lock`). Files of dead processes are
/// removed on the way.
pub fn others_used() -> u64 {
    let Ok(rd) = std::fs::read_dir(dir().join("mem")) else {
        return 0;
    };
    let me = std::process::id();
    rd.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            if pid == me {
                return None;
            }
            let text = std::fs::read_to_string(e.path()).ok()?;
            let mut w = text.split_ascii_whitespace();
            let bytes: u64 = w.next()?.parse().ok()?;
            let started: Option<u64> = w.next().and_then(|s| s.parse().ok());
            let live = match (start_time(pid), started) {
                (Some(now), Some(then)) => now == then,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if !live {
                let _ = std::fs::remove_file(e.path());
                return None;
            }
            Some(bytes)
        })
        .fold(0u64, u64::saturating_add)
}

/// Publishes what this process holds (call under `mem.lock`).
pub fn set_own_usage(bytes: u64) {
    let path = mem_file(std::process::id());
    if bytes == 0 {
        let _ = std::fs::remove_file(path);
    } else {
        let _ = std::fs::write(path, format!("{bytes} {}\n", my_start_time()));
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics.

pub static KERNELS: AtomicU64 = AtomicU64::new(0);
pub static BUSY_NS: AtomicU64 = AtomicU64::new(0);

/// Writes `stats/<pid>.json`: `{"pid", "kernels", "busy_ns", "mem_bytes"}` (atomically: a
/// temporary file renamed).
pub fn write_stats(mem_bytes: u64) {
    let pid = std::process::id();
    let s = format!(
        "{{\"pid\":{pid},\"kernels\":{},\"busy_ns\":{},\"mem_bytes\":{mem_bytes}}}\n",
        KERNELS.load(Acquire),
        BUSY_NS.load(Acquire)
    );
    let path = stats_file(dir(), pid);
    let tmp = path.with_extension("json.tmp");
    if std::fs::write(&tmp, s).is_ok() {
        let _ = std::fs::rename(tmp, path);
    }
}

/// `<dir>/stats/<pid>.json`.
pub fn stats_file(dir: &Path, pid: u32) -> PathBuf {
    dir.join("stats").join(format!("{pid}.json"))
}
