//! `libcarve_shim.so`: loaded into a CUDA process with `LD_PRELOAD` (`carve run` sets it up). It
//! sits between the program (or the CUDA runtime) and the driver, `libcuda.so.1`:
//!
//! - **Launch gate.** `cuLaunchKernel`, `cuLaunchKernelEx`, `cuLaunchCooperativeKernel` and
//!   `cuGraphLaunch` run only while the process holds a turn from `carve sched`. Holding a turn
//!   costs one clock read per launch; at the end of a turn the shim asks to renew, and when
//!   someone else is due it drains its work (`cuCtxSynchronize`), reports the GPU time it took
//!   (overruns included) and waits for its next turn.
//! - **Memory limit.** Every allocation path (`cuMemAlloc`, `cuMemAllocManaged`,
//!   `cuMemAllocPitch`, `cuMemAllocAsync`, `cuMemCreate`, `cuArrayCreate`) is reserved against the
//!   tenant's limit first and fails with `CUDA_ERROR_OUT_OF_MEMORY` beyond it; `cuMemGetInfo` and
//!   `cuDeviceTotalMem` report the limit as the total, so frameworks size themselves to it.
//! - **Every way in.** The hooks are exported under the driver's names (for programs linked
//!   against libcuda), returned by an interposed `dlsym` (for programs that `dlopen` the driver)
//!   and by `cuGetProcAddress` (how the CUDA runtime finds driver entry points).
//!
//! It never crashes or hangs its host: no panic crosses the C boundary, and when the scheduler
//! cannot be reached it fails open (runs unscheduled, unlimited) or closed (launches and
//! allocations fail), as `CARVE_FAIL` says, with one line on stderr.
//!
//! Environment (set by `carve run`): `CARVE_SCHED_SOCKET`, `CARVE_TENANT`, `CARVE_TOKEN_FILE`,
//! `CARVE_FAIL` (`open` | `closed`, default `open`).

#![allow(non_snake_case, clippy::missing_safety_doc)]

use carve_sched::proto::{self, Reply, Request};
use libc::{c_char, c_int, c_uint, c_void, size_t};
use std::collections::HashMap;
use std::ffi::CStr;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicU8, Ordering::*};
use std::sync::{Mutex, OnceLock};

type CUresult = c_int;
const CUDA_SUCCESS: CUresult = 0;
const CUDA_ERROR_OUT_OF_MEMORY: CUresult = 2;
const CUDA_ERROR_NOT_FOUND: CUresult = 500;
const CUDA_ERROR_NOT_PERMITTED: CUresult = 800;
const CUDA_ERROR_UNKNOWN: CUresult = 999;

// ---------------------------------------------------------------------------------------------
// Finding the real functions.

type DlsymFn = unsafe extern "C" fn(*mut c_void, *const c_char) -> *mut c_void;

static REAL_DLSYM: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());

/// glibc's own `dlsym`, found by version so that it never comes back to ours.
fn real_dlsym() -> Option<DlsymFn> {
    let p = REAL_DLSYM.load(Acquire);
    if !p.is_null() {
        // SAFETY: stored below from dlvsym("dlsym").
        return Some(unsafe { std::mem::transmute::<*mut c_void, DlsymFn>(p) });
    }
    for v in [c"GLIBC_2.34", c"GLIBC_2.2.5", c"GLIBC_2.17"] {
        // SAFETY: dlvsym with static C strings.
        let f = unsafe { libc::dlvsym(libc::RTLD_NEXT, c"dlsym".as_ptr(), v.as_ptr()) };
        if !f.is_null() {
            REAL_DLSYM.store(f, Release);
            // SAFETY: it is dlsym.
            return Some(unsafe { std::mem::transmute::<*mut c_void, DlsymFn>(f) });
        }
    }
    None
}

/// The hooked entry points: driver name, the name `cuGetProcAddress` uses, our hook.
macro_rules! hooks {
    ($( $idx:literal $name:literal $base:literal $hook:ident ),* $(,)?) => {
        const HOOKS: &[(&str, &str, usize)] = &[ $( ($name, $base, $idx) ),* ];
        fn hook_ptr(idx: usize) -> *mut c_void {
            match idx { $( $idx => $hook as *mut c_void, )* _ => std::ptr::null_mut() }
        }
    };
}

hooks! {
    0 "cuLaunchKernel" "cuLaunchKernel" cuLaunchKernel,
    1 "cuLaunchKernelEx" "cuLaunchKernelEx" cuLaunchKernelEx,
    2 "cuLaunchCooperativeKernel" "cuLaunchCooperativeKernel" cuLaunchCooperativeKernel,
    3 "cuGraphLaunch" "cuGraphLaunch" cuGraphLaunch,
    4 "cuMemAlloc_v2" "cuMemAlloc" cuMemAlloc_v2,
    5 "cuMemAllocManaged" "cuMemAllocManaged" cuMemAllocManaged,
    6 "cuMemAllocPitch_v2" "cuMemAllocPitch" cuMemAllocPitch_v2,
    7 "cuMemFree_v2" "cuMemFree" cuMemFree_v2,
    8 "cuMemCreate" "cuMemCreate" cuMemCreate,
    9 "cuMemRelease" "cuMemRelease" cuMemRelease,
    10 "cuArrayCreate_v2" "cuArrayCreate" cuArrayCreate_v2,
    11 "cuArrayDestroy" "cuArrayDestroy" cuArrayDestroy,
    12 "cuMemGetInfo_v2" "cuMemGetInfo" cuMemGetInfo_v2,
    13 "cuDeviceTotalMem_v2" "cuDeviceTotalMem" cuDeviceTotalMem_v2,
    14 "cuMemAllocAsync" "cuMemAllocAsync" cuMemAllocAsync,
    15 "cuMemFreeAsync" "cuMemFreeAsync" cuMemFreeAsync,
    16 "cuGetProcAddress" "cuGetProcAddress" cuGetProcAddress,
    17 "cuGetProcAddress_v2" "cuGetProcAddress_v2" cuGetProcAddress_v2,
    18 "cuCtxSynchronize" "cuCtxSynchronize" cuCtxSynchronize,
    19 "cuStreamSynchronize" "cuStreamSynchronize" cuStreamSynchronize,
    20 "cuEventSynchronize" "cuEventSynchronize" cuEventSynchronize,
}

/// Index of `cuCtxSynchronize` among the real pointers (hooked; the real one drains).
const CTX_SYNC: usize = 18;
const SLOTS: usize = 21;

/// The real driver functions, filled as they are found.
static REAL: [AtomicPtr<c_void>; SLOTS] = [const { AtomicPtr::new(std::ptr::null_mut()) }; SLOTS];

fn hook_index(name: &str) -> Option<usize> {
    HOOKS.iter().find(|h| h.0 == name).map(|h| h.2)
}

fn hook_index_base(base: &str) -> Option<usize> {
    HOOKS.iter().find(|h| h.1 == base).map(|h| h.2)
}

/// The real function of a slot: as found through `dlsym`/`cuGetProcAddress`, else the next
/// definition after us (libcuda, when the program links it).
fn real(idx: usize, name: &CStr) -> *mut c_void {
    let p = REAL[idx].load(Acquire);
    if !p.is_null() {
        return p;
    }
    let Some(dl) = real_dlsym() else {
        return std::ptr::null_mut();
    };
    // SAFETY: dlsym with a C string.
    let mut f = unsafe { dl(libc::RTLD_NEXT, name.as_ptr()) };
    if f.is_null() {
        // The driver may have been dlopen'ed by someone else: ask it by its soname.
        // SAFETY: dlopen/dlsym with C strings; RTLD_NOLOAD never loads anything new.
        unsafe {
            let h = libc::dlopen(
                c"libcuda.so.1".as_ptr(),
                libc::RTLD_NOLOAD | libc::RTLD_LAZY,
            );
            if !h.is_null() {
                f = dl(h, name.as_ptr());
            }
        }
    }
    if !f.is_null() && f != hook_for_real(idx) {
        REAL[idx].store(f, Release);
    }
    f
}

fn hook_for_real(idx: usize) -> *mut c_void {
    hook_ptr(idx)
}

/// Our `dlsym`: the driver's hooked names resolve to the hooks (remembering the real one).
#[no_mangle]
pub unsafe extern "C" fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void {
    let Some(dl) = real_dlsym() else {
        return std::ptr::null_mut();
    };
    let f = dl(handle, symbol);
    if f.is_null() || symbol.is_null() {
        return f;
    }
    let bytes = CStr::from_ptr(symbol).to_bytes();
    if bytes.len() < 3 || &bytes[..2] != b"cu" {
        return f;
    }
    let name = std::str::from_utf8(bytes).unwrap_or("");
    match hook_index(name) {
        Some(i) if f != hook_ptr(i) => {
            REAL[i].store(f, Release);
            hook_ptr(i)
        }
        _ => f,
    }
}

// ---------------------------------------------------------------------------------------------
// The scheduler client.

const MODE_UNINIT: u8 = 0;
const MODE_ACTIVE: u8 = 1;
const MODE_OPEN: u8 = 2;
const MODE_CLOSED: u8 = 3;

static MODE: AtomicU8 = AtomicU8::new(MODE_UNINIT);
static GRANT_UNTIL: AtomicU64 = AtomicU64::new(0);
static GRANT_START: AtomicU64 = AtomicU64::new(0);
/// When the program last saw its work finish (a synchronisation returned): its GPU work had
/// ended by then.
static LAST_SYNC: AtomicU64 = AtomicU64::new(0);
static MEM_LIMIT: AtomicU64 = AtomicU64::new(u64::MAX);
static MEM_USED: AtomicU64 = AtomicU64::new(0);

struct Conn {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Conn {
    fn call(&mut self, r: &Request) -> std::io::Result<Reply> {
        self.writer.write_all(proto::encode(r).as_bytes())?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the scheduler closed the connection",
            ));
        }
        serde_json::from_str(&line)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }
}

static CONN: Mutex<Option<Conn>> = Mutex::new(None);
static INIT: OnceLock<()> = OnceLock::new();

/// The scheduler said no to this client's identity.
static REFUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn fail_mode() -> u8 {
    if REFUSED.load(Acquire) {
        return MODE_CLOSED;
    }
    match std::env::var("CARVE_FAIL").as_deref() {
        Ok("closed") => MODE_CLOSED,
        _ => MODE_OPEN,
    }
}

/// Gives up on the scheduler: one line, then fail open or closed for the rest of the process.
fn lose(why: &str) {
    let m = fail_mode();
    if MODE.swap(m, AcqRel) != m {
        let what = if m == MODE_CLOSED {
            "failing closed: kernel launches and allocations are refused"
        } else {
            "failing open: work runs unscheduled and without a memory limit"
        };
        eprintln!("carve-shim: {why}; {what}");
    }
    if let Ok(mut c) = CONN.lock() {
        *c = None;
    }
}

fn init() {
    INIT.get_or_init(|| {
        let socket =
            std::env::var("CARVE_SCHED_SOCKET").unwrap_or_else(|_| proto::DEFAULT_SOCKET.into());
        let tenant = std::env::var("CARVE_TENANT").unwrap_or_default();
        let token = std::env::var_os("CARVE_TOKEN_FILE")
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|t| t.trim().to_string());
        let conn = UnixStream::connect(&socket).and_then(|s| {
            let r = s.try_clone()?;
            Ok(Conn {
                writer: s,
                reader: BufReader::new(r),
            })
        });
        let mut conn = match conn {
            Ok(c) => c,
            Err(e) => {
                lose(&format!("cannot reach the scheduler at {socket} ({e})"));
                return;
            }
        };
        match conn.call(&Request::Hello {
            version: proto::VERSION,
            tenant: tenant.clone(),
            token,
        }) {
            Ok(Reply::Welcome { memory_limit, .. }) => {
                MEM_LIMIT.store(memory_limit.unwrap_or(u64::MAX), Release);
                if let Ok(mut c) = CONN.lock() {
                    *c = Some(conn);
                }
                MODE.store(MODE_ACTIVE, Release);
            }
            Ok(Reply::Error { message }) => {
                // A refusal is an answer, not an outage: never run unscheduled on it.
                REFUSED.store(true, Release);
                lose(&format!(
                    "the scheduler refused tenant '{tenant}': {message}"
                ))
            }
            Ok(other) => lose(&format!("unexpected reply from the scheduler: {other:?}")),
            Err(e) => lose(&format!("the scheduler at {socket} did not answer ({e})")),
        }
    });
}

fn mode() -> u8 {
    let m = MODE.load(Acquire);
    if m != MODE_UNINIT {
        return m;
    }
    init();
    MODE.load(Acquire)
}

/// Drains this context's work (waits for in-flight kernels).
fn drain() {
    let p = real(CTX_SYNC, c"cuCtxSynchronize");
    if !p.is_null() {
        // SAFETY: cuCtxSynchronize(void) -> CUresult.
        let f: unsafe extern "C" fn() -> CUresult = unsafe { std::mem::transmute(p) };
        // SAFETY: the driver's own function.
        unsafe { f() };
    }
}

/// Waits for a turn when the process holds none. Ok to launch, or the error to return.
#[inline]
fn gate() -> Result<(), CUresult> {
    match mode() {
        MODE_ACTIVE => {}
        MODE_OPEN => return Ok(()),
        _ => return Err(CUDA_ERROR_NOT_PERMITTED),
    }
    if proto::now_ns() < GRANT_UNTIL.load(Acquire) {
        return Ok(());
    }
    gate_slow()
}

#[cold]
fn gate_slow() -> Result<(), CUresult> {
    let mut guard = match CONN.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    // Another thread may have got the turn meanwhile.
    let now = proto::now_ns();
    if now < GRANT_UNTIL.load(Acquire) {
        return Ok(());
    }
    let Some(conn) = guard.as_mut() else {
        drop(guard);
        return match MODE.load(Acquire) {
            MODE_OPEN => Ok(()),
            _ => Err(CUDA_ERROR_NOT_PERMITTED),
        };
    };
    let result = (|| -> std::io::Result<()> {
        let until = GRANT_UNTIL.load(Acquire);
        let held = until != 0;
        if held && now > until.saturating_add(carve_sched::server::GRACE_NS) {
            // Back after a pause: the daemon has closed the turn (charging its whole length) and
            // moved on. Only work still running now is more GPU time; the pause is not.
            drain();
            let after = proto::now_ns();
            let grant = GRANT_START.load(Acquire);
            let seen_done = LAST_SYNC.load(Acquire);
            let used = if after.saturating_sub(now) > proto::LATE_DRAIN_NS {
                // Still running when it came back.
                after.saturating_sub(grant)
            } else if seen_done > until {
                // It waited for its work after the turn's end: the work ran until then.
                seen_done.saturating_sub(grant)
            } else {
                until.saturating_sub(grant)
            };
            GRANT_UNTIL.store(0, Release);
            conn.call(&Request::Release {
                used_ns: used,
                pending: true,
            })?;
        } else if held {
            let used = now.saturating_sub(GRANT_START.load(Acquire));
            match conn.call(&Request::Renew { used_ns: used })? {
                Reply::Grant { until_ns } => {
                    GRANT_START.store(now, Release);
                    GRANT_UNTIL.store(until_ns, Release);
                    return Ok(());
                }
                Reply::Yield => {
                    drain();
                    let used = proto::now_ns().saturating_sub(GRANT_START.load(Acquire));
                    GRANT_UNTIL.store(0, Release);
                    conn.call(&Request::Release {
                        used_ns: used,
                        pending: true,
                    })?;
                }
                other => return Err(std::io::Error::other(format!("{other:?}"))),
            }
        }
        match conn.call(&Request::Acquire)? {
            Reply::Grant { until_ns } => {
                GRANT_START.store(proto::now_ns(), Release);
                GRANT_UNTIL.store(until_ns, Release);
                Ok(())
            }
            other => Err(std::io::Error::other(format!("{other:?}"))),
        }
    })();
    drop(guard);
    match result {
        Ok(()) => Ok(()),
        Err(e) => {
            lose(&format!("lost the scheduler ({e})"));
            match MODE.load(Acquire) {
                MODE_OPEN => Ok(()),
                _ => Err(CUDA_ERROR_NOT_PERMITTED),
            }
        }
    }
}

/// Reserves memory against the tenant's limit.
fn reserve(bytes: u64) -> Result<(), CUresult> {
    match mode() {
        MODE_ACTIVE => {}
        MODE_OPEN => return Ok(()),
        _ => return Err(CUDA_ERROR_NOT_PERMITTED),
    }
    if MEM_LIMIT.load(Acquire) == u64::MAX {
        return Ok(());
    }
    let mut guard = match CONN.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    let Some(conn) = guard.as_mut() else {
        return Ok(());
    };
    match conn.call(&Request::Alloc { bytes }) {
        Ok(Reply::AllocOk { used }) => {
            MEM_USED.store(used, Release);
            Ok(())
        }
        Ok(Reply::AllocDenied { used, .. }) => {
            MEM_USED.store(used, Release);
            Err(CUDA_ERROR_OUT_OF_MEMORY)
        }
        Ok(other) => {
            drop(guard);
            lose(&format!("unexpected reply from the scheduler: {other:?}"));
            if MODE.load(Acquire) == MODE_OPEN {
                Ok(())
            } else {
                Err(CUDA_ERROR_OUT_OF_MEMORY)
            }
        }
        Err(e) => {
            drop(guard);
            lose(&format!("lost the scheduler ({e})"));
            if MODE.load(Acquire) == MODE_OPEN {
                Ok(())
            } else {
                Err(CUDA_ERROR_OUT_OF_MEMORY)
            }
        }
    }
}

fn unreserve(bytes: u64) {
    if bytes == 0 || MODE.load(Acquire) != MODE_ACTIVE || MEM_LIMIT.load(Acquire) == u64::MAX {
        return;
    }
    let mut guard = match CONN.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    if let Some(conn) = guard.as_mut() {
        if let Ok(Reply::Freed { used }) = conn.call(&Request::Free { bytes }) {
            MEM_USED.store(used, Release);
        }
    }
}

/// Sizes of live allocations by handle (device pointer, allocation handle, array).
static SIZES: Mutex<Option<HashMap<u64, u64>>> = Mutex::new(None);

fn remember(handle: u64, bytes: u64) {
    if let Ok(mut m) = SIZES.lock() {
        m.get_or_insert_with(HashMap::new).insert(handle, bytes);
    }
}

fn forget(handle: u64) -> u64 {
    SIZES
        .lock()
        .ok()
        .and_then(|mut m| m.as_mut().and_then(|m| m.remove(&handle)))
        .unwrap_or(0)
}

/// Runs `f`, turning a panic into `CUDA_ERROR_UNKNOWN` (nothing unwinds into C).
fn guard(f: impl FnOnce() -> CUresult) -> CUresult {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(CUDA_ERROR_UNKNOWN)
}

macro_rules! real_fn {
    ($idx:expr, $name:literal, $ty:ty) => {{
        let p = real($idx, $name);
        if p.is_null() {
            return CUDA_ERROR_NOT_FOUND;
        }
        // SAFETY: the slot holds the driver's function of this name and signature.
        unsafe { std::mem::transmute::<*mut c_void, $ty>(p) }
    }};
}

// ---------------------------------------------------------------------------------------------
// Launches.

type Ptr = *mut c_void;

#[no_mangle]
pub unsafe extern "C" fn cuLaunchKernel(
    f: Ptr,
    gx: c_uint,
    gy: c_uint,
    gz: c_uint,
    bx: c_uint,
    by: c_uint,
    bz: c_uint,
    shmem: c_uint,
    stream: Ptr,
    params: *mut Ptr,
    extra: *mut Ptr,
) -> CUresult {
    guard(|| {
        if let Err(e) = gate() {
            return e;
        }
        let real = real_fn!(
            0,
            c"cuLaunchKernel",
            unsafe extern "C" fn(
                Ptr,
                c_uint,
                c_uint,
                c_uint,
                c_uint,
                c_uint,
                c_uint,
                c_uint,
                Ptr,
                *mut Ptr,
                *mut Ptr,
            ) -> CUresult
        );
        real(f, gx, gy, gz, bx, by, bz, shmem, stream, params, extra)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuLaunchKernelEx(
    config: Ptr,
    f: Ptr,
    params: *mut Ptr,
    extra: *mut Ptr,
) -> CUresult {
    guard(|| {
        if let Err(e) = gate() {
            return e;
        }
        let real = real_fn!(
            1,
            c"cuLaunchKernelEx",
            unsafe extern "C" fn(Ptr, Ptr, *mut Ptr, *mut Ptr) -> CUresult
        );
        real(config, f, params, extra)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuLaunchCooperativeKernel(
    f: Ptr,
    gx: c_uint,
    gy: c_uint,
    gz: c_uint,
    bx: c_uint,
    by: c_uint,
    bz: c_uint,
    shmem: c_uint,
    stream: Ptr,
    params: *mut Ptr,
) -> CUresult {
    guard(|| {
        if let Err(e) = gate() {
            return e;
        }
        let real = real_fn!(
            2,
            c"cuLaunchCooperativeKernel",
            unsafe extern "C" fn(
                Ptr,
                c_uint,
                c_uint,
                c_uint,
                c_uint,
                c_uint,
                c_uint,
                c_uint,
                Ptr,
                *mut Ptr,
            ) -> CUresult
        );
        real(f, gx, gy, gz, bx, by, bz, shmem, stream, params)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphLaunch(exec: Ptr, stream: Ptr) -> CUresult {
    guard(|| {
        if let Err(e) = gate() {
            return e;
        }
        let real = real_fn!(
            3,
            c"cuGraphLaunch",
            unsafe extern "C" fn(Ptr, Ptr) -> CUresult
        );
        real(exec, stream)
    })
}

// ---------------------------------------------------------------------------------------------
// Memory.

/// Reserve, call, and give the reservation back when the driver fails.
fn with_reservation(bytes: u64, call: impl FnOnce() -> CUresult) -> CUresult {
    if let Err(e) = reserve(bytes) {
        return e;
    }
    let r = call();
    if r != CUDA_SUCCESS {
        unreserve(bytes);
    }
    r
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAlloc_v2(dptr: *mut u64, bytes: size_t) -> CUresult {
    guard(|| {
        let real = real_fn!(
            4,
            c"cuMemAlloc_v2",
            unsafe extern "C" fn(*mut u64, size_t) -> CUresult
        );
        with_reservation(bytes as u64, || {
            let r = real(dptr, bytes);
            if r == CUDA_SUCCESS && !dptr.is_null() {
                remember(*dptr, bytes as u64);
            }
            r
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocManaged(
    dptr: *mut u64,
    bytes: size_t,
    flags: c_uint,
) -> CUresult {
    guard(|| {
        let real = real_fn!(
            5,
            c"cuMemAllocManaged",
            unsafe extern "C" fn(*mut u64, size_t, c_uint) -> CUresult
        );
        with_reservation(bytes as u64, || {
            let r = real(dptr, bytes, flags);
            if r == CUDA_SUCCESS && !dptr.is_null() {
                remember(*dptr, bytes as u64);
            }
            r
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocPitch_v2(
    dptr: *mut u64,
    pitch: *mut size_t,
    width: size_t,
    height: size_t,
    elem: c_uint,
) -> CUresult {
    guard(|| {
        let real = real_fn!(
            6,
            c"cuMemAllocPitch_v2",
            unsafe extern "C" fn(*mut u64, *mut size_t, size_t, size_t, c_uint) -> CUresult
        );
        // Pitch rounds each row up (to at most 512 bytes more): reserve for the worst case, then
        // settle to the real size.
        let worst = (width as u64)
            .saturating_add(512)
            .saturating_mul(height as u64);
        with_reservation(worst, || {
            let r = real(dptr, pitch, width, height, elem);
            if r == CUDA_SUCCESS && !dptr.is_null() && !pitch.is_null() {
                let actual = (*pitch as u64).saturating_mul(height as u64);
                if actual < worst {
                    unreserve(worst - actual);
                }
                remember(*dptr, actual.min(worst));
            }
            r
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemFree_v2(dptr: u64) -> CUresult {
    guard(|| {
        let real = real_fn!(7, c"cuMemFree_v2", unsafe extern "C" fn(u64) -> CUresult);
        let r = real(dptr);
        if r == CUDA_SUCCESS {
            unreserve(forget(dptr));
        }
        r
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocAsync(dptr: *mut u64, bytes: size_t, stream: Ptr) -> CUresult {
    guard(|| {
        let real = real_fn!(
            14,
            c"cuMemAllocAsync",
            unsafe extern "C" fn(*mut u64, size_t, Ptr) -> CUresult
        );
        with_reservation(bytes as u64, || {
            let r = real(dptr, bytes, stream);
            if r == CUDA_SUCCESS && !dptr.is_null() {
                remember(*dptr, bytes as u64);
            }
            r
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemFreeAsync(dptr: u64, stream: Ptr) -> CUresult {
    guard(|| {
        let real = real_fn!(
            15,
            c"cuMemFreeAsync",
            unsafe extern "C" fn(u64, Ptr) -> CUresult
        );
        let r = real(dptr, stream);
        if r == CUDA_SUCCESS {
            unreserve(forget(dptr));
        }
        r
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemCreate(
    handle: *mut u64,
    bytes: size_t,
    prop: Ptr,
    flags: u64,
) -> CUresult {
    guard(|| {
        let real = real_fn!(
            8,
            c"cuMemCreate",
            unsafe extern "C" fn(*mut u64, size_t, Ptr, u64) -> CUresult
        );
        with_reservation(bytes as u64, || {
            let r = real(handle, bytes, prop, flags);
            if r == CUDA_SUCCESS && !handle.is_null() {
                remember(*handle, bytes as u64);
            }
            r
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemRelease(handle: u64) -> CUresult {
    guard(|| {
        let real = real_fn!(9, c"cuMemRelease", unsafe extern "C" fn(u64) -> CUresult);
        let r = real(handle);
        if r == CUDA_SUCCESS {
            unreserve(forget(handle));
        }
        r
    })
}

/// `CUDA_ARRAY_DESCRIPTOR`: Width, Height (size_t), Format (enum), NumChannels (unsigned).
#[repr(C)]
pub struct ArrayDescriptor {
    width: size_t,
    height: size_t,
    format: c_uint,
    channels: c_uint,
}

fn format_bytes(format: c_uint) -> u64 {
    // CU_AD_FORMAT_*: 0x01/0x08 8-bit, 0x02/0x09/0x10 16-bit, 0x03/0x0a/0x20 32-bit.
    match format {
        0x01 | 0x08 => 1,
        0x02 | 0x09 | 0x10 => 2,
        _ => 4,
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuArrayCreate_v2(
    array: *mut u64,
    desc: *const ArrayDescriptor,
) -> CUresult {
    guard(|| {
        let real = real_fn!(
            10,
            c"cuArrayCreate_v2",
            unsafe extern "C" fn(*mut u64, *const ArrayDescriptor) -> CUresult
        );
        let bytes = if desc.is_null() {
            0
        } else {
            let d = &*desc;
            (d.width as u64)
                .saturating_mul((d.height as u64).max(1))
                .saturating_mul(format_bytes(d.format))
                .saturating_mul(d.channels.max(1) as u64)
        };
        with_reservation(bytes, || {
            let r = real(array, desc);
            if r == CUDA_SUCCESS && !array.is_null() {
                remember(*array, bytes);
            }
            r
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuArrayDestroy(array: u64) -> CUresult {
    guard(|| {
        let real = real_fn!(11, c"cuArrayDestroy", unsafe extern "C" fn(u64) -> CUresult);
        let r = real(array);
        if r == CUDA_SUCCESS {
            unreserve(forget(array));
        }
        r
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemGetInfo_v2(free: *mut size_t, total: *mut size_t) -> CUresult {
    guard(|| {
        let real = real_fn!(
            12,
            c"cuMemGetInfo_v2",
            unsafe extern "C" fn(*mut size_t, *mut size_t) -> CUresult
        );
        let r = real(free, total);
        let _ = mode();
        let limit = MEM_LIMIT.load(Acquire);
        if r == CUDA_SUCCESS && limit != u64::MAX && !free.is_null() && !total.is_null() {
            let used = MEM_USED.load(Acquire);
            *total = (*total as u64).min(limit) as size_t;
            *free = (*free as u64).min(limit.saturating_sub(used)) as size_t;
        }
        r
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceTotalMem_v2(bytes: *mut size_t, dev: c_int) -> CUresult {
    guard(|| {
        let real = real_fn!(
            13,
            c"cuDeviceTotalMem_v2",
            unsafe extern "C" fn(*mut size_t, c_int) -> CUresult
        );
        let r = real(bytes, dev);
        let _ = mode();
        let limit = MEM_LIMIT.load(Acquire);
        if r == CUDA_SUCCESS && limit != u64::MAX && !bytes.is_null() {
            *bytes = (*bytes as u64).min(limit) as size_t;
        }
        r
    })
}

// ---------------------------------------------------------------------------------------------
// Synchronisation: passed through; when one returns, the program's work so far has finished,
// which is what a report after a pause needs to know (see `gate_slow`).

fn synced(r: CUresult) -> CUresult {
    if r == CUDA_SUCCESS {
        LAST_SYNC.store(proto::now_ns(), Release);
    }
    r
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxSynchronize() -> CUresult {
    guard(|| {
        let real = real_fn!(
            CTX_SYNC,
            c"cuCtxSynchronize",
            unsafe extern "C" fn() -> CUresult
        );
        synced(real())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamSynchronize(stream: Ptr) -> CUresult {
    guard(|| {
        let real = real_fn!(
            19,
            c"cuStreamSynchronize",
            unsafe extern "C" fn(Ptr) -> CUresult
        );
        synced(real(stream))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuEventSynchronize(event: Ptr) -> CUresult {
    guard(|| {
        let real = real_fn!(
            20,
            c"cuEventSynchronize",
            unsafe extern "C" fn(Ptr) -> CUresult
        );
        synced(real(event))
    })
}

// ---------------------------------------------------------------------------------------------
// cuGetProcAddress: the CUDA runtime's way to every driver function.

/// Swaps a found pointer for our hook (by the runtime's base name, e.g. `cuMemAlloc`).
unsafe fn swap(symbol: *const c_char, pfn: *mut *mut c_void) {
    if symbol.is_null() || pfn.is_null() || (*pfn).is_null() {
        return;
    }
    let name = CStr::from_ptr(symbol).to_str().unwrap_or("");
    if let Some(i) = hook_index_base(name).or_else(|| hook_index(name)) {
        if *pfn != hook_ptr(i) {
            REAL[i].store(*pfn, Release);
            *pfn = hook_ptr(i);
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuGetProcAddress(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: c_int,
    flags: u64,
) -> CUresult {
    guard(|| {
        let real = real_fn!(
            16,
            c"cuGetProcAddress",
            unsafe extern "C" fn(*const c_char, *mut *mut c_void, c_int, u64) -> CUresult
        );
        let r = real(symbol, pfn, version, flags);
        if r == CUDA_SUCCESS {
            swap(symbol, pfn);
        }
        r
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGetProcAddress_v2(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: c_int,
    flags: u64,
    status: *mut c_int,
) -> CUresult {
    guard(|| {
        let real = real_fn!(
            17,
            c"cuGetProcAddress_v2",
            unsafe extern "C" fn(
                *const c_char,
                *mut *mut c_void,
                c_int,
                u64,
                *mut c_int,
            ) -> CUresult
        );
        let r = real(symbol, pfn, version, flags, status);
        if r == CUDA_SUCCESS {
            swap(symbol, pfn);
        }
        r
    })
}
