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
//! Environment (set by `carve run` and by the agent's Allocate; the names are
//! `carve_sched_proto::ENV_*`): `CARVE_SCHED_SOCKET`, `CARVE_TENANT`, `CARVE_TOKEN_FILE`,
//! `CARVE_FAIL` (`open` | `closed`, default `open`).
//!
//! Every hook keeps the driver's contract for its arguments: they are the caller's, passed on
//! unchanged, and the shim reads what they point to only where the driver has just succeeded
//! (and so has checked them) or after checking them itself.

// The hooks keep the driver's names, and their safety contract is the driver's (cuda.h).
#![allow(non_snake_case, clippy::missing_safety_doc)]

use carve_cuda_abi::*;
use carve_sched_proto::{self as proto, Client, ClientError, Reply, Request};
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicU8, Ordering::*};
use std::sync::{Mutex, MutexGuard, OnceLock};

// ---------------------------------------------------------------------------------------------
// Finding the real functions.

type DlsymFn = unsafe extern "C" fn(*mut c_void, *const c_char) -> *mut c_void;

static REAL_DLSYM: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());

/// glibc's own `dlsym`, found by version so that it never comes back to ours.
fn real_dlsym() -> Option<DlsymFn> {
    let mut p = REAL_DLSYM.load(Acquire);
    if p.is_null() {
        for v in [c"GLIBC_2.34", c"GLIBC_2.2.5", c"GLIBC_2.17"] {
            // SAFETY: dlvsym reads two NUL-terminated static strings and only looks the symbol
            // up (RTLD_NEXT: the definitions after this library, i.e. libc's).
            p = unsafe { libc::dlvsym(libc::RTLD_NEXT, c"dlsym".as_ptr(), v.as_ptr()) };
            if !p.is_null() {
                REAL_DLSYM.store(p, Release);
                break;
            }
        }
    }
    // SAFETY: a non-null `p` is libc's `dlsym` (looked up above by name and symbol version,
    // never anything else stored in REAL_DLSYM), whose type is `DlsymFn`.
    (!p.is_null()).then(|| unsafe { std::mem::transmute::<*mut c_void, DlsymFn>(p) })
}

/// The real driver function of a hooked entry point, typed: `F` is the entry point's type in
/// cuda.h (`hooks!` makes the only values, pairing each name with its `PFN_` type).
struct Slot<F> {
    idx: usize,
    name: &'static CStr,
    ty: PhantomData<F>,
}

impl<F: Copy> Slot<F> {
    /// The driver's function, or `None` when the driver has none of that name.
    fn get(&self) -> Option<F> {
        let p = real(self.idx, self.name);
        // SAFETY: a non-null `p` is the driver's function called `self.name` (found under that
        // name by dlsym or cuGetProcAddress, and never one of our hooks), and `F` is that
        // function's pointer type (`hooks!` checks it is a function pointer, as large as `p`).
        (!p.is_null()).then(|| unsafe { std::mem::transmute_copy::<*mut c_void, F>(&p) })
    }
}

/// `name` as a C string (`name` ends with its NUL).
const fn c_name(name: &'static str) -> &'static CStr {
    match CStr::from_bytes_with_nul(name.as_bytes()) {
        Ok(c) => c,
        Err(_) => panic!("a hook name is not a C string"),
    }
}

/// The hooked entry points: the slot of the real function, and our hook, which is exported
/// under the driver's name and must have its type in cuda.h (checked at compile time).
macro_rules! hooks {
    ($( $slot:ident: $hook:ident as $pfn:ty ),* $(,)?) => {
        #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
        enum Idx { $( $slot ),* }
        /// The hooks' names, by slot.
        const HOOKS: &[&str] = &[ $( stringify!($hook) ),* ];
        const SLOTS: usize = HOOKS.len();
        fn hook_ptr(idx: usize) -> *mut c_void {
            $( if idx == Idx::$slot as usize { return $hook as *mut c_void; } )*
            std::ptr::null_mut()
        }
        $(
            const $slot: Slot<$pfn> = Slot {
                idx: Idx::$slot as usize,
                name: c_name(concat!(stringify!($hook), "\0")),
                ty: PhantomData,
            };
            const _: $pfn = $hook;
        )*
    };
}

hooks! {
    LAUNCH_KERNEL: cuLaunchKernel as PFN_cuLaunchKernel,
    LAUNCH_KERNEL_EX: cuLaunchKernelEx as PFN_cuLaunchKernelEx,
    LAUNCH_COOPERATIVE: cuLaunchCooperativeKernel as PFN_cuLaunchCooperativeKernel,
    GRAPH_LAUNCH: cuGraphLaunch as PFN_cuGraphLaunch,
    MEM_ALLOC: cuMemAlloc_v2 as PFN_cuMemAlloc_v2,
    MEM_ALLOC_MANAGED: cuMemAllocManaged as PFN_cuMemAllocManaged,
    MEM_ALLOC_PITCH: cuMemAllocPitch_v2 as PFN_cuMemAllocPitch_v2,
    MEM_FREE: cuMemFree_v2 as PFN_cuMemFree_v2,
    MEM_CREATE: cuMemCreate as PFN_cuMemCreate,
    MEM_RELEASE: cuMemRelease as PFN_cuMemRelease,
    ARRAY_CREATE: cuArrayCreate_v2 as PFN_cuArrayCreate_v2,
    ARRAY_DESTROY: cuArrayDestroy as PFN_cuArrayDestroy,
    MEM_GET_INFO: cuMemGetInfo_v2 as PFN_cuMemGetInfo_v2,
    DEVICE_TOTAL_MEM: cuDeviceTotalMem_v2 as PFN_cuDeviceTotalMem_v2,
    MEM_ALLOC_ASYNC: cuMemAllocAsync as PFN_cuMemAllocAsync,
    MEM_FREE_ASYNC: cuMemFreeAsync as PFN_cuMemFreeAsync,
    GET_PROC_ADDRESS: cuGetProcAddress as PFN_cuGetProcAddress,
    GET_PROC_ADDRESS_V2: cuGetProcAddress_v2 as PFN_cuGetProcAddress_v2,
    CTX_SYNCHRONIZE: cuCtxSynchronize as PFN_cuCtxSynchronize,
    STREAM_SYNCHRONIZE: cuStreamSynchronize as PFN_cuStreamSynchronize,
    EVENT_SYNCHRONIZE: cuEventSynchronize as PFN_cuEventSynchronize,
}

/// The real driver functions, filled as they are found.
static REAL: [AtomicPtr<c_void>; SLOTS] = [const { AtomicPtr::new(std::ptr::null_mut()) }; SLOTS];

/// The slot of a hook by its exported name.
fn hook_index(name: &str) -> Option<usize> {
    HOOKS.iter().position(|h| *h == name)
}

/// The slot of what `cuGetProcAddress` returns for `symbol` at CUDA `version`: the driver hands
/// out the newest version of a base name (`cuMemAlloc` → `cuMemAlloc_v2`), and from CUDA 12.0
/// `cuGetProcAddress` is `cuGetProcAddress_v2` (five arguments); exported names are accepted
/// too.
fn proc_index(symbol: &str, version: c_int) -> Option<usize> {
    match symbol {
        "cuGetProcAddress" if version >= CUDA_VERSION_12_0 => Some(GET_PROC_ADDRESS_V2.idx),
        "cuGetProcAddress" | "cuGetProcAddress_v2" => hook_index(symbol),
        _ => hook_index(symbol).or_else(|| hook_index(&format!("{symbol}_v2"))),
    }
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
    // SAFETY: libc's dlsym with a pseudo-handle and a NUL-terminated name.
    let mut f = unsafe { dl(libc::RTLD_NEXT, name.as_ptr()) };
    if f.is_null() {
        // The driver may have been dlopen'ed by someone else: ask it by its soname.
        // SAFETY: dlopen with a static C string and RTLD_NOLOAD never loads anything new: it
        // returns a handle of a library already loaded, or null.
        let h = unsafe {
            libc::dlopen(
                c"libcuda.so.1".as_ptr(),
                libc::RTLD_NOLOAD | libc::RTLD_LAZY,
            )
        };
        if !h.is_null() {
            // SAFETY: libc's dlsym with the live handle just returned and a C string.
            f = unsafe { dl(h, name.as_ptr()) };
        }
    }
    // Never our own hook: calling it as the real function would call itself.
    if f.is_null() || f == hook_ptr(idx) {
        return std::ptr::null_mut();
    }
    REAL[idx].store(f, Release);
    f
}

/// Our `dlsym`: the driver's hooked names resolve to the hooks (remembering the real one).
///
/// # Safety
/// As libc's `dlsym`: `handle` is a handle from `dlopen` or a pseudo-handle, `symbol` a C string.
#[no_mangle]
pub unsafe extern "C" fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void {
    let Some(dl) = real_dlsym() else {
        return std::ptr::null_mut();
    };
    // SAFETY: libc's dlsym with the caller's arguments, whose contract is libc's.
    let f = unsafe { dl(handle, symbol) };
    if f.is_null() || symbol.is_null() {
        return f;
    }
    // SAFETY: `symbol` is non-null (checked) and a C string (the caller's contract; libc has
    // just read it).
    let bytes = unsafe { CStr::from_ptr(symbol) }.to_bytes();
    if !bytes.starts_with(b"cu") {
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

static CONN: Mutex<Option<Client>> = Mutex::new(None);
static INIT: OnceLock<()> = OnceLock::new();

/// The scheduler said no to this client's identity.
static REFUSED: AtomicBool = AtomicBool::new(false);

/// The connection, also after a panic elsewhere while it was held.
fn conn() -> MutexGuard<'static, Option<Client>> {
    CONN.lock().unwrap_or_else(|p| p.into_inner())
}

fn fail_mode() -> u8 {
    if REFUSED.load(Acquire) {
        return MODE_CLOSED;
    }
    match std::env::var(proto::ENV_FAIL).as_deref() {
        Ok(proto::FAIL_CLOSED) => MODE_CLOSED,
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
    *conn() = None;
}

/// After losing the scheduler: go on (open) or fail with `closed`.
fn lost(closed: CUresult) -> Result<(), CUresult> {
    match MODE.load(Acquire) {
        MODE_OPEN => Ok(()),
        _ => Err(closed),
    }
}

fn init() {
    INIT.get_or_init(|| {
        let socket =
            std::env::var(proto::ENV_SCHED_SOCKET).unwrap_or_else(|_| proto::DEFAULT_SOCKET.into());
        let tenant = std::env::var(proto::ENV_TENANT).unwrap_or_default();
        let token = std::env::var_os(proto::ENV_TOKEN_FILE)
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|t| t.trim().to_string());
        let mut client = match Client::connect(socket.as_ref()) {
            Ok(c) => c,
            Err(e) => {
                lose(&format!("cannot reach the scheduler ({e})"));
                return;
            }
        };
        match client.call(&Request::Hello {
            version: proto::VERSION,
            tenant: tenant.clone(),
            token,
        }) {
            Ok(Reply::Welcome { memory_limit, .. }) => {
                MEM_LIMIT.store(memory_limit.unwrap_or(u64::MAX), Release);
                *conn() = Some(client);
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
    if let Some(sync) = CTX_SYNCHRONIZE.get() {
        // SAFETY: the driver's cuCtxSynchronize, which takes no arguments; called from the
        // thread that is launching, in whatever context it has current.
        unsafe { sync() };
    }
}

/// An unexpected reply, as an error.
fn unexpected(r: Reply) -> ClientError {
    ClientError::Unexpected(Box::new(r))
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
    let mut guard = conn();
    // Another thread may have got the turn meanwhile.
    let now = proto::now_ns();
    if now < GRANT_UNTIL.load(Acquire) {
        return Ok(());
    }
    let Some(client) = guard.as_mut() else {
        drop(guard);
        return lost(CUDA_ERROR_NOT_PERMITTED);
    };
    let result = (|| -> Result<(), ClientError> {
        let until = GRANT_UNTIL.load(Acquire);
        let held = until != 0;
        if held && now > until.saturating_add(proto::GRACE_NS) {
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
            client.call(&Request::Release {
                used_ns: used,
                pending: true,
            })?;
        } else if held {
            let used = now.saturating_sub(GRANT_START.load(Acquire));
            match client.call(&Request::Renew { used_ns: used })? {
                Reply::Grant { until_ns } => {
                    GRANT_START.store(now, Release);
                    GRANT_UNTIL.store(until_ns, Release);
                    return Ok(());
                }
                Reply::Yield => {
                    drain();
                    let used = proto::now_ns().saturating_sub(GRANT_START.load(Acquire));
                    GRANT_UNTIL.store(0, Release);
                    client.call(&Request::Release {
                        used_ns: used,
                        pending: true,
                    })?;
                }
                other => return Err(unexpected(other)),
            }
        }
        match client.call(&Request::Acquire)? {
            Reply::Grant { until_ns } => {
                GRANT_START.store(proto::now_ns(), Release);
                GRANT_UNTIL.store(until_ns, Release);
                Ok(())
            }
            other => Err(unexpected(other)),
        }
    })();
    drop(guard);
    result.or_else(|e| {
        lose(&format!("lost the scheduler ({e})"));
        lost(CUDA_ERROR_NOT_PERMITTED)
    })
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
    let mut guard = conn();
    let Some(client) = guard.as_mut() else {
        return Ok(());
    };
    let result = match client.call(&Request::Alloc { bytes }) {
        Ok(Reply::AllocOk { used }) => {
            MEM_USED.store(used, Release);
            return Ok(());
        }
        Ok(Reply::AllocDenied { used, .. }) => {
            MEM_USED.store(used, Release);
            return Err(CUDA_ERROR_OUT_OF_MEMORY);
        }
        Ok(other) => unexpected(other),
        Err(e) => e,
    };
    drop(guard);
    lose(&format!("lost the scheduler ({result})"));
    lost(CUDA_ERROR_OUT_OF_MEMORY)
}

fn unreserve(bytes: u64) {
    if bytes == 0 || MODE.load(Acquire) != MODE_ACTIVE || MEM_LIMIT.load(Acquire) == u64::MAX {
        return;
    }
    if let Some(client) = conn().as_mut() {
        if let Ok(Reply::Freed { used }) = client.call(&Request::Free { bytes }) {
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

// ---------------------------------------------------------------------------------------------
// The hooks' common parts.

/// Runs a hook's body, turning a panic into `CUDA_ERROR_UNKNOWN` (nothing unwinds into C).
fn guard(f: impl FnOnce() -> CUresult) -> CUresult {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(CUDA_ERROR_UNKNOWN)
}

/// A hook around the driver's function in `slot`: `body` gets the function, or the hook
/// answers `CUDA_ERROR_NOT_FOUND` when the driver has none.
fn hook<F: Copy>(slot: Slot<F>, body: impl FnOnce(F) -> CUresult) -> CUresult {
    guard(|| match slot.get() {
        Some(real) => body(real),
        None => CUDA_ERROR_NOT_FOUND,
    })
}

/// A launch: waits for the turn, then `launch` with the driver's function in `slot`.
fn gated<F: Copy>(slot: Slot<F>, launch: impl FnOnce(F) -> CUresult) -> CUresult {
    guard(|| match gate() {
        Ok(()) => slot.get().map_or(CUDA_ERROR_NOT_FOUND, launch),
        Err(e) => e,
    })
}

/// An allocation of `bytes`: reserved against the limit first, made by `alloc`, and given back
/// if the driver fails. On success `created` says what was made: its handle and its real size
/// (at most `bytes`; the rest of the reservation is given back), remembered for its free.
fn allocation(
    bytes: u64,
    alloc: impl FnOnce() -> CUresult,
    created: impl FnOnce() -> Option<(u64, u64)>,
) -> CUresult {
    if let Err(e) = reserve(bytes) {
        return e;
    }
    let r = alloc();
    if r != CUDA_SUCCESS {
        unreserve(bytes);
        return r;
    }
    if let Some((handle, size)) = created() {
        let size = size.min(bytes);
        unreserve(bytes - size);
        remember(handle, size);
    }
    r
}

/// An allocation of `bytes` that `alloc` makes and, on success, writes to `out` (a device
/// pointer or an allocation handle), as [`allocation`].
///
/// # Safety
/// `out` is null or the out-parameter that `alloc` writes when it succeeds.
unsafe fn allocation_to(
    out: *const u64,
    bytes: usize,
    alloc: impl FnOnce() -> CUresult,
) -> CUresult {
    allocation(bytes as u64, alloc, || {
        // SAFETY: called only after `alloc` succeeded, i.e. wrote `out` (the caller's contract).
        Some((unsafe { written(out) }?, bytes as u64))
    })
}

/// What the driver wrote to an out-parameter, or `None` when the caller gave none.
///
/// # Safety
/// `p` is null or points to a `T` that the driver has written (the call it belongs to
/// succeeded).
unsafe fn written<T: Copy>(p: *const T) -> Option<T> {
    // SAFETY: the caller's contract: non-null means readable and initialised.
    unsafe { p.as_ref() }.copied()
}

/// A free of `handle` that returned `r`: on success its reservation is given back.
fn released(handle: u64, r: CUresult) -> CUresult {
    if r == CUDA_SUCCESS {
        unreserve(forget(handle));
    }
    r
}

// ---------------------------------------------------------------------------------------------
// Launches. The arguments are the caller's, passed to the driver unchanged: the driver's
// contract for them is the caller's to keep.

#[no_mangle]
pub unsafe extern "C" fn cuLaunchKernel(
    f: CUfunction,
    gx: c_uint,
    gy: c_uint,
    gz: c_uint,
    bx: c_uint,
    by: c_uint,
    bz: c_uint,
    shmem: c_uint,
    stream: CUstream,
    params: VoidPtrPtr,
    extra: VoidPtrPtr,
) -> CUresult {
    gated(LAUNCH_KERNEL, |real| {
        // SAFETY: the driver's cuLaunchKernel with the caller's arguments, unchanged.
        unsafe { real(f, gx, gy, gz, bx, by, bz, shmem, stream, params, extra) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuLaunchKernelEx(
    config: *const CUlaunchConfig,
    f: CUfunction,
    params: VoidPtrPtr,
    extra: VoidPtrPtr,
) -> CUresult {
    gated(LAUNCH_KERNEL_EX, |real| {
        // SAFETY: the driver's cuLaunchKernelEx with the caller's arguments, unchanged.
        unsafe { real(config, f, params, extra) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuLaunchCooperativeKernel(
    f: CUfunction,
    gx: c_uint,
    gy: c_uint,
    gz: c_uint,
    bx: c_uint,
    by: c_uint,
    bz: c_uint,
    shmem: c_uint,
    stream: CUstream,
    params: VoidPtrPtr,
) -> CUresult {
    gated(LAUNCH_COOPERATIVE, |real| {
        // SAFETY: the driver's cuLaunchCooperativeKernel with the caller's arguments, unchanged.
        unsafe { real(f, gx, gy, gz, bx, by, bz, shmem, stream, params) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphLaunch(exec: CUgraphExec, stream: CUstream) -> CUresult {
    gated(GRAPH_LAUNCH, |real| {
        // SAFETY: the driver's cuGraphLaunch with the caller's handles, unchanged.
        unsafe { real(exec, stream) }
    })
}

// ---------------------------------------------------------------------------------------------
// Memory. As above, the caller's arguments go to the driver unchanged; out-parameters are read
// back only after the driver succeeded, i.e. wrote them.

#[no_mangle]
pub unsafe extern "C" fn cuMemAlloc_v2(dptr: *mut CUdeviceptr, bytes: usize) -> CUresult {
    hook(MEM_ALLOC, |real| {
        // SAFETY: the driver's cuMemAlloc_v2 with the caller's arguments, unchanged; on
        // success it has written the new pointer to `dptr`.
        unsafe { allocation_to(dptr, bytes, || real(dptr, bytes)) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocManaged(
    dptr: *mut CUdeviceptr,
    bytes: usize,
    flags: c_uint,
) -> CUresult {
    hook(MEM_ALLOC_MANAGED, |real| {
        // SAFETY: the driver's cuMemAllocManaged with the caller's arguments, unchanged; on
        // success it has written the new pointer to `dptr`.
        unsafe { allocation_to(dptr, bytes, || real(dptr, bytes, flags)) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocAsync(
    dptr: *mut CUdeviceptr,
    bytes: usize,
    stream: CUstream,
) -> CUresult {
    hook(MEM_ALLOC_ASYNC, |real| {
        // SAFETY: the driver's cuMemAllocAsync with the caller's arguments, unchanged; on
        // success it has written the new pointer to `dptr`.
        unsafe { allocation_to(dptr, bytes, || real(dptr, bytes, stream)) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocPitch_v2(
    dptr: *mut CUdeviceptr,
    pitch: *mut usize,
    width: usize,
    height: usize,
    elem: c_uint,
) -> CUresult {
    hook(MEM_ALLOC_PITCH, |real| {
        // Pitch rounds each row up (to at most 512 bytes more): reserve for the worst case, then
        // settle to the real size.
        let worst = (width as u64)
            .saturating_add(512)
            .saturating_mul(height as u64);
        allocation(
            worst,
            // SAFETY: the driver's cuMemAllocPitch_v2 with the caller's arguments, unchanged.
            || unsafe { real(dptr, pitch, width, height, elem) },
            || {
                // SAFETY: called only after that succeeded: the driver wrote the pointer to
                // `dptr` and the row pitch to `pitch`.
                let (d, p) = unsafe { (written(dptr)?, written(pitch)?) };
                Some((d, (p as u64).saturating_mul(height as u64)))
            },
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemCreate(
    handle: *mut CUmemGenericAllocationHandle,
    bytes: usize,
    prop: *const CUmemAllocationProp,
    flags: u64,
) -> CUresult {
    hook(MEM_CREATE, |real| {
        // SAFETY: the driver's cuMemCreate with the caller's arguments, unchanged; on success
        // it has written the new allocation's handle to `handle`.
        unsafe { allocation_to(handle, bytes, || real(handle, bytes, prop, flags)) }
    })
}

/// What an array of this description takes: width × height (1 for a one-dimensional array) ×
/// element size × channels; unknown formats count 4 bytes, as the widest classic ones.
fn array_bytes(d: &CUDA_ARRAY_DESCRIPTOR) -> u64 {
    (d.Width as u64)
        .saturating_mul((d.Height as u64).max(1))
        .saturating_mul(array_format_bytes(d.Format).unwrap_or(4))
        .saturating_mul(d.NumChannels.max(1) as u64)
}

#[no_mangle]
pub unsafe extern "C" fn cuArrayCreate_v2(
    array: *mut CUarray,
    desc: *const CUDA_ARRAY_DESCRIPTOR,
) -> CUresult {
    hook(ARRAY_CREATE, |real| {
        // SAFETY: `desc` is null or points to the caller's descriptor (cuda.h's contract: a
        // `const CUDA_ARRAY_DESCRIPTOR *`), read here before the driver reads it.
        let bytes = unsafe { desc.as_ref() }.map_or(0, array_bytes);
        allocation(
            bytes,
            // SAFETY: the driver's cuArrayCreate_v2 with the caller's arguments, unchanged.
            || unsafe { real(array, desc) },
            // SAFETY: called only after that succeeded: the driver wrote the array to `array`.
            || Some((unsafe { written(array) }? as u64, bytes)),
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemFree_v2(dptr: CUdeviceptr) -> CUresult {
    hook(MEM_FREE, |real| {
        // SAFETY: the driver's cuMemFree_v2 with the caller's device pointer, unchanged.
        released(dptr, unsafe { real(dptr) })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemFreeAsync(dptr: CUdeviceptr, stream: CUstream) -> CUresult {
    hook(MEM_FREE_ASYNC, |real| {
        // SAFETY: the driver's cuMemFreeAsync with the caller's arguments, unchanged.
        released(dptr, unsafe { real(dptr, stream) })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemRelease(handle: CUmemGenericAllocationHandle) -> CUresult {
    hook(MEM_RELEASE, |real| {
        // SAFETY: the driver's cuMemRelease with the caller's handle, unchanged.
        released(handle, unsafe { real(handle) })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuArrayDestroy(array: CUarray) -> CUresult {
    hook(ARRAY_DESTROY, |real| {
        // SAFETY: the driver's cuArrayDestroy with the caller's handle, unchanged.
        released(array as u64, unsafe { real(array) })
    })
}

/// The tenant's memory limit, once the scheduler was asked; `None` without one.
fn memory_limit() -> Option<u64> {
    let _ = mode();
    Some(MEM_LIMIT.load(Acquire)).filter(|&l| l != u64::MAX)
}

#[no_mangle]
pub unsafe extern "C" fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> CUresult {
    hook(MEM_GET_INFO, |real| {
        // SAFETY: the driver's cuMemGetInfo_v2 with the caller's arguments, unchanged.
        let r = unsafe { real(free, total) };
        if let (CUDA_SUCCESS, Some(limit)) = (r, memory_limit()) {
            let used = MEM_USED.load(Acquire);
            // SAFETY: the driver succeeded, so it wrote both; the caller's `size_t *`s (checked
            // non-null by `as_mut`) are ours to rewrite until we return.
            if let (Some(free), Some(total)) = unsafe { (free.as_mut(), total.as_mut()) } {
                *total = (*total as u64).min(limit) as usize;
                *free = (*free as u64).min(limit.saturating_sub(used)) as usize;
            }
        }
        r
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: CUdevice) -> CUresult {
    hook(DEVICE_TOTAL_MEM, |real| {
        // SAFETY: the driver's cuDeviceTotalMem_v2 with the caller's arguments, unchanged.
        let r = unsafe { real(bytes, dev) };
        if let (CUDA_SUCCESS, Some(limit)) = (r, memory_limit()) {
            // SAFETY: the driver succeeded, so it wrote it; the caller's `size_t *` (checked
            // non-null by `as_mut`) is ours to rewrite until we return.
            if let Some(bytes) = unsafe { bytes.as_mut() } {
                *bytes = (*bytes as u64).min(limit) as usize;
            }
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
    hook(CTX_SYNCHRONIZE, |real| {
        // SAFETY: the driver's cuCtxSynchronize, which takes no arguments.
        synced(unsafe { real() })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamSynchronize(stream: CUstream) -> CUresult {
    hook(STREAM_SYNCHRONIZE, |real| {
        // SAFETY: the driver's cuStreamSynchronize with the caller's stream, unchanged.
        synced(unsafe { real(stream) })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuEventSynchronize(event: CUevent) -> CUresult {
    hook(EVENT_SYNCHRONIZE, |real| {
        // SAFETY: the driver's cuEventSynchronize with the caller's event, unchanged.
        synced(unsafe { real(event) })
    })
}

// ---------------------------------------------------------------------------------------------
// cuGetProcAddress: the CUDA runtime's way to every driver function.

/// Swaps a found pointer for our hook (by the runtime's base name, e.g. `cuMemAlloc`, and the
/// CUDA version it asked for).
///
/// # Safety
/// `symbol` is null or a C string; `pfn` is null or points to a pointer that
/// `cuGetProcAddress` has just written (it succeeded).
unsafe fn swap(symbol: *const c_char, pfn: VoidPtrPtr, version: c_int) {
    // SAFETY: the caller's contract: `pfn` is null or readable and writable.
    let Some(pfn) = (unsafe { pfn.as_mut() }) else {
        return;
    };
    if symbol.is_null() || (*pfn).is_null() {
        return;
    }
    // SAFETY: `symbol` is non-null (checked), and a C string by the caller's contract.
    let name = unsafe { CStr::from_ptr(symbol) }.to_str().unwrap_or("");
    if let Some(i) = proc_index(name, version) {
        if *pfn != hook_ptr(i) {
            REAL[i].store(*pfn, Release);
            *pfn = hook_ptr(i);
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuGetProcAddress(
    symbol: *const c_char,
    pfn: VoidPtrPtr,
    version: c_int,
    flags: u64,
) -> CUresult {
    hook(GET_PROC_ADDRESS, |real| {
        // SAFETY: the driver's cuGetProcAddress with the caller's arguments, unchanged.
        let r = unsafe { real(symbol, pfn, version, flags) };
        if r == CUDA_SUCCESS {
            // SAFETY: the caller's arguments, which the driver has just accepted: `symbol` a C
            // string, `pfn` holding the entry point the driver wrote.
            unsafe { swap(symbol, pfn, version) };
        }
        r
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGetProcAddress_v2(
    symbol: *const c_char,
    pfn: VoidPtrPtr,
    version: c_int,
    flags: u64,
    status: *mut CUdriverProcAddressQueryResult,
) -> CUresult {
    hook(GET_PROC_ADDRESS_V2, |real| {
        // SAFETY: the driver's cuGetProcAddress_v2 with the caller's arguments, unchanged.
        let r = unsafe { real(symbol, pfn, version, flags, status) };
        if r == CUDA_SUCCESS {
            // SAFETY: the caller's arguments, which the driver has just accepted: `symbol` a C
            // string, `pfn` holding the entry point the driver wrote.
            unsafe { swap(symbol, pfn, version) };
        }
        r
    })
}
