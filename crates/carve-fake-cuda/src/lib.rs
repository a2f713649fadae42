//! A stand-in `libcuda.so.1` for tests without a GPU: symlink `libcarve_fake_cuda.so` as
//! `libcuda.so.1` in a directory on `LD_LIBRARY_PATH`, exactly where the real driver is looked
//! for. Test-only.
//!
//! It models **one GPU shared by every process that loads it**:
//!
//! - Kernel launches are asynchronous: every stream (and the null stream) is an in-order queue
//!   worked by a thread of its own. A kernel runs for its requested duration (its thread sleeps,
//!   then spins on the monotonic clock for the last 150 µs), while it holds the node-wide GPU: a first-come-first-served ticket lock in
//!   a page every process maps (`$CARVE_FAKE_CUDA_DIR/gpu.tickets`), so kernels from all
//!   processes run one at a time, in arrival order, as with context switching on a real GPU.
//! - The only kernel is `spin` (`cuModuleGetFunction(.., "spin")`, any module image): its first
//!   parameter is a `u64` of nanoseconds (`carve-workload`'s PTX kernel takes the same parameter).
//! - Device memory (`$CARVE_FAKE_CUDA_MEM_MIB`, default 81920) is accounted node-wide: each
//!   process publishes what it holds in `mem/<pid>` under `mem.lock`, so `cuMemGetInfo` sees
//!   other processes and an allocation beyond the free memory fails with
//!   `CUDA_ERROR_OUT_OF_MEMORY`. A process's memory is freed when it exits or dies.
//! - Each process writes `stats/<pid>.json` (`{"pid", "kernels", "busy_ns", "mem_bytes"}`) at
//!   every stream or context synchronisation and at exit.
//!
//! Contexts: a thread must have a current context (from `cuCtxCreate`, or from
//! `cuDevicePrimaryCtxRetain` and then `cuCtxSetCurrent`) for allocations, streams, events, modules
//! and launches, as with the real driver; all contexts of a process share its streams, modules
//! and memory. The null stream is a stream like the others (it does not synchronise with other
//! streams). Graphs can hold only memory-allocation nodes (which take their memory when added and
//! give it back with the graph), and a captured stream ends in an empty graph;
//! [`carve_fake_cuda_graph_exec_create`] makes an executable graph of N spin kernels so that
//! `cuGraphLaunch` can be tested.
//!
//! Variants: the per-thread-default-stream ones (`_ptsz`, the same as the plain ones here), the
//! pre-4.0 launches (`cuLaunch`, `cuLaunchGrid*`: a 100 µs kernel), the pre-3.2 unversioned
//! allocations (accounted; their 32-bit addresses are not usable), chosen by `cuGetProcAddress`
//! from its flags and version as the driver chooses. [`carve_fake_cuda_calls`] counts the calls
//! of each launch and allocation entry point by exact name. `cuMemCreate` memory is freed when it
//! is released and unmapped (and every `cuMemRetainAllocationHandle` reference released), as the
//! driver frees it.
//!
//! No panic crosses the C boundary: a failing call returns an error code, never aborts.
//!
//! The C ABI (codes, handles, structs, entry-point types) is `carve-cuda-abi`'s; every exported
//! driver function is checked at compile time to have its type there. Pointer arguments carry
//! cuda.h's contract: null, or valid for what the function does with them (an out-parameter is
//! written, an input read) for the duration of the call.

// The driver's names, and its safety contract (cuda.h) for every exported function.
#![allow(non_snake_case, clippy::missing_safety_doc)]

mod node;

pub use node::stats_file;

use carve_cuda_abi::*;
use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::sync::atomic::{AtomicU64, Ordering::*};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::time::Instant;

/// The directory of the node-wide state (default: `carve-fake-cuda-<uid>` in the temp dir).
pub const ENV_DIR: &str = "CARVE_FAKE_CUDA_DIR";
/// Device memory in MiB (default 81920).
pub const ENV_MEM_MIB: &str = "CARVE_FAKE_CUDA_MEM_MIB";

/// The default memory pool's handle (any non-null value: the fake has one pool).
const DEFAULT_POOL: usize = 0x9000;
/// How long a kernel launched through the API before CUDA 4.0 (`cuLaunch`, `cuLaunchGrid*`)
/// runs: its parameters would be set with `cuParamSet*`, which the fake does not have.
const LEGACY_KERNEL_NS: u64 = 100_000;
/// Kernels longer than this are cut short (a wrong parameter must not hang a test for hours).
const MAX_KERNEL_NS: u64 = 60_000_000_000;
/// `CU_EVENT_DISABLE_TIMING`.
const EVENT_DISABLE_TIMING: c_uint = 0x2;
/// `CU_STREAM_LEGACY` and `CU_STREAM_PER_THREAD`: both are the null stream here.
const STREAM_LEGACY: u64 = 0x1;
const STREAM_PER_THREAD: u64 = 0x2;

// ---------------------------------------------------------------------------------------------
// Process state.

enum Job {
    Kernel(u64),
    /// An event recorded at the given generation.
    Event(Arc<Event>, u64),
    Marker(Sender<()>),
}

/// An event: recorded (generation > 0) and, when its work is done, the time it completed.
struct Event {
    flags: c_uint,
    state: Mutex<EventState>,
    cv: Condvar,
}

#[derive(Default)]
struct EventState {
    generation: u64,
    done_at: Option<Instant>,
}

struct Stream {
    tx: Sender<Job>,
    /// Jobs queued and not yet finished.
    pending: Arc<AtomicU64>,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Mem {
    /// `cuMemAlloc*`: a device pointer.
    Device,
    /// `cuMemCreate`: a generic allocation handle.
    Generic,
    /// `cuArrayCreate`.
    Array,
}

struct Proc {
    init: bool,
    next_handle: u64,
    next_va: u64,
    contexts: HashMap<u64, ()>,
    primary: Option<(u64, u32)>,
    streams: HashMap<u64, Stream>,
    events: HashMap<u64, Arc<Event>>,
    /// module → its functions.
    modules: HashMap<u64, Vec<u64>>,
    functions: HashMap<u64, u64>,
    /// graph exec → (kernels, ns each).
    graphs: HashMap<u64, (u32, u64)>,
    allocs: HashMap<(Mem, u64), u64>,
    mem_used: u64,
    /// `cuMemCreate` allocations: (references, mappings); freed when both are zero.
    generic: HashMap<u64, (u32, u32)>,
    /// `cuMemMap` mappings: address → (size, allocation handle).
    mappings: std::collections::BTreeMap<u64, (u64, u64)>,
    /// Graphs being built → the device memory their allocation nodes took.
    built: HashMap<u64, Vec<u64>>,
    /// Streams being captured.
    capturing: std::collections::HashSet<u64>,
}

static PROC: Mutex<Option<Proc>> = Mutex::new(None);

thread_local! {
    static CURRENT: Cell<u64> = const { Cell::new(0) };
}

fn with<T>(f: impl FnOnce(&mut Proc) -> Result<T, CUresult>) -> Result<T, CUresult> {
    let mut g = PROC.lock().unwrap_or_else(|p| p.into_inner());
    let p = g.get_or_insert_with(|| Proc {
        init: false,
        next_handle: 0x1000,
        next_va: 0x7f00_0000_0000,
        contexts: HashMap::new(),
        primary: None,
        streams: HashMap::new(),
        events: HashMap::new(),
        modules: HashMap::new(),
        functions: HashMap::new(),
        graphs: HashMap::new(),
        allocs: HashMap::new(),
        mem_used: 0,
        generic: HashMap::new(),
        mappings: std::collections::BTreeMap::new(),
        built: HashMap::new(),
        capturing: std::collections::HashSet::new(),
    });
    f(p)
}

impl Proc {
    fn handle(&mut self) -> u64 {
        self.next_handle += 0x10;
        self.next_handle
    }

    fn initialised(&self) -> Result<(), CUresult> {
        if self.init {
            Ok(())
        } else {
            Err(CUDA_ERROR_NOT_INITIALIZED)
        }
    }

    /// The driver is initialised and the calling thread has a live current context.
    fn in_context(&self) -> Result<(), CUresult> {
        self.initialised()?;
        if self.contexts.contains_key(&CURRENT.get()) {
            Ok(())
        } else {
            Err(CUDA_ERROR_INVALID_CONTEXT)
        }
    }

    fn stream(&mut self, h: u64) -> Result<&Stream, CUresult> {
        let h = stream_key(h);
        if h == 0 && !self.streams.contains_key(&0) {
            self.streams.insert(0, new_stream()?);
        }
        self.streams.get(&h).ok_or(CUDA_ERROR_INVALID_HANDLE)
    }
}

/// A stream handle as the fake keeps it: the legacy and per-thread default streams are the null
/// stream.
fn stream_key(h: u64) -> u64 {
    match h {
        STREAM_LEGACY | STREAM_PER_THREAD => 0,
        h => h,
    }
}

/// Calls of the launch and allocation entry points, by exported name (for
/// [`carve_fake_cuda_calls`]).
static CALLS: Mutex<Option<HashMap<&'static str, u64>>> = Mutex::new(None);

/// Counts a call of the entry point `name`.
fn called(name: &'static str) {
    let mut g = CALLS.lock().unwrap_or_else(|p| p.into_inner());
    *g.get_or_insert_with(HashMap::new).entry(name).or_default() += 1;
}

/// Not a driver function: how many times this process called the launch or allocation entry
/// point `name` (its exported name, e.g. `cuLaunchKernel_ptsz`), so that tests can tell which
/// of a name's variants a caller reached.
#[no_mangle]
pub unsafe extern "C" fn carve_fake_cuda_calls(name: *const c_char) -> u64 {
    if name.is_null() {
        return 0;
    }
    // SAFETY: non-null (checked), a C string by the caller's contract.
    let name = unsafe { CStr::from_ptr(name) }.to_bytes();
    std::panic::catch_unwind(|| {
        let g = CALLS.lock().unwrap_or_else(|p| p.into_inner());
        g.as_ref()
            .and_then(|m| {
                m.iter()
                    .find(|(k, _)| k.as_bytes() == name)
                    .map(|(_, n)| *n)
            })
            .unwrap_or(0)
    })
    .unwrap_or(0)
}

/// A new object of the calling thread's context: a fresh handle, registered by `insert`.
fn create(insert: impl FnOnce(&mut Proc, u64) -> Result<(), CUresult>) -> Result<u64, CUresult> {
    with(|p| {
        p.in_context()?;
        let h = p.handle();
        insert(p, h)?;
        Ok(h)
    })
}

fn worker(rx: Receiver<Job>, pending: Arc<AtomicU64>) {
    // Timed waits for the GPU end when asked, not up to 50 µs later (the default timer slack).
    // SAFETY: PR_SET_TIMERSLACK on the calling thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    for job in rx {
        // Nothing here should panic; if it does, the stream keeps working.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match job {
            Job::Kernel(ns) => {
                if node::EXITING.load(Acquire) {
                    return;
                }
                let turn = node::acquire(ns);
                let ran = node::spin(ns);
                drop(turn);
                node::KERNELS.fetch_add(1, AcqRel);
                node::BUSY_NS.fetch_add(ran, AcqRel);
            }
            Job::Event(e, generation) => {
                let mut s = e.state.lock().unwrap_or_else(|p| p.into_inner());
                if s.generation == generation {
                    s.done_at = Some(Instant::now());
                    e.cv.notify_all();
                }
            }
            Job::Marker(tx) => {
                let _ = tx.send(());
            }
        }));
        pending.fetch_sub(1, AcqRel);
    }
}

fn new_stream() -> Result<Stream, CUresult> {
    let (tx, rx) = channel();
    let pending = Arc::new(AtomicU64::new(0));
    let p = pending.clone();
    std::thread::Builder::new()
        .name("carve-fake-cuda-stream".into())
        .spawn(move || worker(rx, p))
        .map_err(|_| CUDA_ERROR_UNKNOWN)?;
    Ok(Stream { tx, pending })
}

/// Queues a job on a stream (in a context).
fn enqueue(stream: u64, job: Job) -> Result<(), CUresult> {
    with(|p| {
        p.in_context()?;
        let s = p.stream(stream)?;
        s.pending.fetch_add(1, AcqRel);
        s.tx.send(job).map_err(|_| {
            s.pending.fetch_sub(1, AcqRel);
            CUDA_ERROR_UNKNOWN
        })
    })
}

/// Waits until everything queued on the streams so far has run.
fn drain(streams: &[u64]) -> Result<(), CUresult> {
    let mut waits = Vec::new();
    for &s in streams {
        let (tx, rx) = channel();
        enqueue(s, Job::Marker(tx))?;
        waits.push(rx);
    }
    for rx in waits {
        rx.recv().map_err(|_| CUDA_ERROR_UNKNOWN)?;
    }
    write_stats();
    Ok(())
}

fn write_stats() {
    let mem = with(|p| Ok(p.mem_used)).unwrap_or(0);
    node::write_stats(mem);
}

extern "C" fn at_exit() {
    let _ = std::panic::catch_unwind(|| {
        node::EXITING.store(true, Release);
        // The process's memory is gone with it.
        if let Some(_lock) = node::Flock::take("mem.lock") {
            node::set_own_usage(0);
        }
        write_stats();
    });
}

// ---------------------------------------------------------------------------------------------
// Memory.

fn alloc(kind: Mem, bytes: u64) -> Result<u64, CUresult> {
    if bytes == 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let _lock = node::Flock::take("mem.lock").ok_or(CUDA_ERROR_UNKNOWN)?;
    let others = node::others_used();
    with(|p| {
        if kind != Mem::Generic {
            p.in_context()?;
        } else {
            p.initialised()?;
        }
        let used = others.saturating_add(p.mem_used);
        if used.saturating_add(bytes) > node::total_bytes() {
            return Err(CUDA_ERROR_OUT_OF_MEMORY);
        }
        let h = match kind {
            Mem::Device => {
                let va = p.next_va;
                let span = bytes.div_ceil(2 << 20).max(1).saturating_mul(2 << 20);
                p.next_va = p.next_va.saturating_add(span);
                va
            }
            Mem::Generic | Mem::Array => p.handle(),
        };
        p.allocs.insert((kind, h), bytes);
        p.mem_used += bytes;
        node::set_own_usage(p.mem_used);
        Ok(h)
    })
}

fn free(kind: Mem, h: u64) -> Result<(), CUresult> {
    let _lock = node::Flock::take("mem.lock").ok_or(CUDA_ERROR_UNKNOWN)?;
    with(|p| {
        if kind != Mem::Generic {
            p.in_context()?;
        } else {
            p.initialised()?;
        }
        let b = p.allocs.remove(&(kind, h)).ok_or(match kind {
            Mem::Array => CUDA_ERROR_INVALID_HANDLE,
            _ => CUDA_ERROR_INVALID_VALUE,
        })?;
        p.mem_used -= b;
        node::set_own_usage(p.mem_used);
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Helpers for the C boundary.

/// Runs `f`, turning a panic into `CUDA_ERROR_UNKNOWN`.
fn guard(f: impl FnOnce() -> Result<(), CUresult>) -> CUresult {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(())) => CUDA_SUCCESS,
        Ok(Err(e)) => e,
        Err(_) => CUDA_ERROR_UNKNOWN,
    }
}

/// Writes an answer to the caller's out-parameter; a null one is `CUDA_ERROR_INVALID_VALUE`.
///
/// # Safety
/// `p` is null or valid for writes of a `T` (cuda.h's contract for out-parameters).
unsafe fn put<T>(p: *mut T, v: T) -> Result<(), CUresult> {
    if p.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: non-null (checked), hence writable by the caller's contract.
    unsafe { p.write(v) };
    Ok(())
}

fn check_device(dev: c_int) -> Result<(), CUresult> {
    with(|p| p.initialised())?;
    if dev == 0 {
        Ok(())
    } else {
        Err(CUDA_ERROR_INVALID_DEVICE)
    }
}

// ---------------------------------------------------------------------------------------------
// Initialisation, devices.

#[no_mangle]
pub unsafe extern "C" fn cuInit(flags: c_uint) -> CUresult {
    guard(|| {
        if flags != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        node::dir();
        static AT_EXIT: Once = Once::new();
        AT_EXIT.call_once(|| {
            // SAFETY: registering a function of this library, which is linked `-z nodelete`, so
            // it is still mapped at exit.
            unsafe { libc::atexit(at_exit) };
        });
        with(|p| {
            p.init = true;
            Ok(())
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDriverGetVersion(v: *mut c_int) -> CUresult {
    // SAFETY: `v` is the caller's `int *driverVersion`, null or writable.
    guard(|| unsafe { put(v, 12040) })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetCount(n: *mut c_int) -> CUresult {
    guard(|| {
        with(|p| p.initialised())?;
        // SAFETY: `n` is the caller's `int *count`, null or writable.
        unsafe { put(n, 1) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGet(d: *mut CUdevice, ordinal: c_int) -> CUresult {
    guard(|| {
        check_device(ordinal)?;
        // SAFETY: `d` is the caller's `CUdevice *device`, null or writable.
        unsafe { put(d, 0) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetName(name: *mut c_char, len: c_int, dev: CUdevice) -> CUresult {
    guard(|| {
        check_device(dev)?;
        if name.is_null() || len <= 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let s = b"carve stand-in GPU (NVIDIA H100 80GB HBM3)";
        let n = s.len().min(len as usize - 1);
        // SAFETY: `name` is non-null (checked) and, by the caller's contract, a buffer of `len`
        // chars: `n` + 1 <= `len` are written, from our own static bytes (no overlap).
        unsafe {
            std::ptr::copy_nonoverlapping(s.as_ptr() as *const c_char, name, n);
            *name.add(n) = 0;
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: CUdevice) -> CUresult {
    guard(|| {
        check_device(dev)?;
        // SAFETY: `bytes` is the caller's `size_t *bytes`, null or writable.
        unsafe { put(bytes, node::total_bytes() as usize) }
    })
}

/// `CUdevice_attribute` values of an H100 SXM5 for the common attributes; 0 for the others.
fn attribute(attr: c_int) -> Option<c_int> {
    Some(match attr {
        1 => 1024,        // MAX_THREADS_PER_BLOCK
        2 | 3 => 1024,    // MAX_BLOCK_DIM_X, _Y
        4 => 64,          // MAX_BLOCK_DIM_Z
        5 => i32::MAX,    // MAX_GRID_DIM_X
        6 | 7 => 65535,   // MAX_GRID_DIM_Y, _Z
        8 => 49152,       // MAX_SHARED_MEMORY_PER_BLOCK
        9 => 65536,       // TOTAL_CONSTANT_MEMORY
        10 => 32,         // WARP_SIZE
        12 => 65536,      // MAX_REGISTERS_PER_BLOCK
        13 => 1_980_000,  // CLOCK_RATE (kHz)
        16 => 132,        // MULTIPROCESSOR_COUNT
        31 => 1,          // CONCURRENT_KERNELS
        32 => 1,          // ECC_ENABLED
        36 => 2_619_000,  // MEMORY_CLOCK_RATE (kHz)
        37 => 5120,       // GLOBAL_MEMORY_BUS_WIDTH
        38 => 52_428_800, // L2_CACHE_SIZE
        39 => 2048,       // MAX_THREADS_PER_MULTIPROCESSOR
        40 => 5,          // ASYNC_ENGINE_COUNT
        41 => 1,          // UNIFIED_ADDRESSING
        75 => 9,          // COMPUTE_CAPABILITY_MAJOR
        76 => 0,          // COMPUTE_CAPABILITY_MINOR
        81 => 233_472,    // MAX_SHARED_MEMORY_PER_MULTIPROCESSOR
        82 => 65536,      // MAX_REGISTERS_PER_MULTIPROCESSOR
        83 => 1,          // MANAGED_MEMORY
        95 => 1,          // COOPERATIVE_LAUNCH
        97 => 232_448,    // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
        102 => 1,         // VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED
        106 => 32,        // MAX_BLOCKS_PER_MULTIPROCESSOR
        _ if (1..=200).contains(&attr) => 0,
        _ => return None,
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetAttribute(
    v: *mut c_int,
    attr: CUdevice_attribute,
    dev: CUdevice,
) -> CUresult {
    guard(|| {
        check_device(dev)?;
        let a = attribute(attr).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        // SAFETY: `v` is the caller's `int *pi`, null or writable.
        unsafe { put(v, a) }
    })
}

// ---------------------------------------------------------------------------------------------
// Contexts.

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxRetain(ctx: *mut CUcontext, dev: CUdevice) -> CUresult {
    guard(|| {
        check_device(dev)?;
        if ctx.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let h = with(|p| {
            let (h, refs) = match p.primary {
                Some((h, refs)) => (h, refs + 1),
                None => (p.handle(), 1),
            };
            p.primary = Some((h, refs));
            p.contexts.insert(h, ());
            Ok(h)
        })?;
        // SAFETY: `ctx` is the caller's `CUcontext *pctx`, non-null (checked) and writable.
        unsafe { put(ctx, h as CUcontext) }
    })
}

fn primary_release(dev: CUdevice) -> Result<(), CUresult> {
    check_device(dev)?;
    let gone = with(|p| match p.primary {
        Some((h, 1)) => {
            p.primary = None;
            p.contexts.remove(&h);
            Ok(true)
        }
        Some((h, refs)) => {
            p.primary = Some((h, refs - 1));
            Ok(false)
        }
        None => Err(CUDA_ERROR_INVALID_CONTEXT),
    })?;
    if gone {
        write_stats();
    }
    Ok(())
}

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxRelease_v2(dev: CUdevice) -> CUresult {
    guard(|| primary_release(dev))
}

/// The pre-11.0 name, which the driver still exports.
#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxRelease(dev: CUdevice) -> CUresult {
    guard(|| primary_release(dev))
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxCreate_v2(
    ctx: *mut CUcontext,
    _flags: c_uint,
    dev: CUdevice,
) -> CUresult {
    guard(|| {
        check_device(dev)?;
        if ctx.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let h = with(|p| {
            let h = p.handle();
            p.contexts.insert(h, ());
            Ok(h)
        })?;
        CURRENT.set(h);
        // SAFETY: `ctx` is the caller's `CUcontext *pctx`, non-null (checked) and writable.
        unsafe { put(ctx, h as CUcontext) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxDestroy_v2(ctx: CUcontext) -> CUresult {
    guard(|| {
        let h = ctx as u64;
        let streams = with(|p| {
            p.initialised()?;
            if !p.contexts.contains_key(&h) || p.primary.is_some_and(|(ph, _)| ph == h) {
                return Err(CUDA_ERROR_INVALID_CONTEXT);
            }
            Ok(p.streams.keys().copied().collect::<Vec<_>>())
        })?;
        // Work still queued finishes first (this is the process's only GPU).
        let prev = CURRENT.replace(h);
        let r = drain(&streams);
        CURRENT.set(if prev == h { 0 } else { prev });
        with(|p| {
            p.contexts.remove(&h);
            Ok(())
        })?;
        r
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxSetCurrent(ctx: CUcontext) -> CUresult {
    guard(|| {
        let h = ctx as u64;
        with(|p| {
            p.initialised()?;
            if h != 0 && !p.contexts.contains_key(&h) {
                return Err(CUDA_ERROR_INVALID_CONTEXT);
            }
            Ok(())
        })?;
        CURRENT.set(h);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetCurrent(ctx: *mut CUcontext) -> CUresult {
    guard(|| {
        let h = with(|p| {
            p.initialised()?;
            let h = CURRENT.get();
            Ok(if p.contexts.contains_key(&h) { h } else { 0 })
        })?;
        // SAFETY: `ctx` is the caller's `CUcontext *pctx`, null or writable.
        unsafe { put(ctx, h as CUcontext) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxSynchronize() -> CUresult {
    guard(|| {
        let streams = with(|p| {
            p.in_context()?;
            p.stream(0)?;
            Ok(p.streams.keys().copied().collect::<Vec<_>>())
        })?;
        drain(&streams)
    })
}

// ---------------------------------------------------------------------------------------------
// Streams and events.

#[no_mangle]
pub unsafe extern "C" fn cuStreamCreate(s: *mut CUstream, _flags: c_uint) -> CUresult {
    guard(|| {
        if s.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let h = create(|p, h| {
            p.streams.insert(h, new_stream()?);
            Ok(())
        })?;
        // SAFETY: `s` is the caller's `CUstream *phStream`, non-null (checked) and writable.
        unsafe { put(s, h as CUstream) }
    })
}

/// Returns at once; work already queued still runs (the worker drains its queue and ends).
#[no_mangle]
pub unsafe extern "C" fn cuStreamDestroy_v2(s: CUstream) -> CUresult {
    guard(|| {
        with(|p| {
            p.in_context()?;
            match s as u64 {
                0 | STREAM_LEGACY | STREAM_PER_THREAD => Err(CUDA_ERROR_INVALID_HANDLE),
                h => p
                    .streams
                    .remove(&h)
                    .map(|_| ())
                    .ok_or(CUDA_ERROR_INVALID_HANDLE),
            }
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamSynchronize(s: CUstream) -> CUresult {
    guard(|| drain(&[s as u64]))
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamSynchronize_ptsz(s: CUstream) -> CUresult {
    guard(|| drain(&[s as u64]))
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamQuery(s: CUstream) -> CUresult {
    guard(|| {
        let n = with(|p| {
            p.in_context()?;
            Ok(p.stream(s as u64)?.pending.load(Acquire))
        })?;
        if n == 0 {
            Ok(())
        } else {
            Err(CUDA_ERROR_NOT_READY)
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuEventCreate(e: *mut CUevent, flags: c_uint) -> CUresult {
    guard(|| {
        if e.is_null() || flags & !0xf != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let h = create(|p, h| {
            p.events.insert(
                h,
                Arc::new(Event {
                    flags,
                    state: Mutex::new(EventState::default()),
                    cv: Condvar::new(),
                }),
            );
            Ok(())
        })?;
        // SAFETY: `e` is the caller's `CUevent *phEvent`, non-null (checked) and writable.
        unsafe { put(e, h as CUevent) }
    })
}

fn event(h: CUevent) -> Result<Arc<Event>, CUresult> {
    with(|p| {
        p.initialised()?;
        p.events
            .get(&(h as u64))
            .cloned()
            .ok_or(CUDA_ERROR_INVALID_HANDLE)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuEventRecord(e: CUevent, s: CUstream) -> CUresult {
    guard(|| {
        let ev = event(e)?;
        let generation = {
            let mut st = ev.state.lock().unwrap_or_else(|p| p.into_inner());
            st.generation += 1;
            st.done_at = None;
            st.generation
        };
        enqueue(s as u64, Job::Event(ev, generation))
    })
}

/// Done when never recorded (as the driver says) or when its work has run.
fn event_done(st: &EventState) -> bool {
    st.generation == 0 || st.done_at.is_some()
}

#[no_mangle]
pub unsafe extern "C" fn cuEventQuery(e: CUevent) -> CUresult {
    guard(|| {
        let ev = event(e)?;
        let st = ev.state.lock().unwrap_or_else(|p| p.into_inner());
        if event_done(&st) {
            Ok(())
        } else {
            Err(CUDA_ERROR_NOT_READY)
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuEventSynchronize(e: CUevent) -> CUresult {
    guard(|| {
        let ev = event(e)?;
        let mut st = ev.state.lock().unwrap_or_else(|p| p.into_inner());
        while !event_done(&st) {
            st = ev.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuEventElapsedTime(
    ms: *mut f32,
    start: CUevent,
    end: CUevent,
) -> CUresult {
    guard(|| {
        let time = |h: CUevent| -> Result<Instant, CUresult> {
            let ev = event(h)?;
            if ev.flags & EVENT_DISABLE_TIMING != 0 {
                return Err(CUDA_ERROR_INVALID_HANDLE);
            }
            let st = ev.state.lock().unwrap_or_else(|p| p.into_inner());
            if st.generation == 0 {
                return Err(CUDA_ERROR_INVALID_HANDLE);
            }
            st.done_at.ok_or(CUDA_ERROR_NOT_READY)
        };
        let (a, b) = (time(start)?, time(end)?);
        let d = if b >= a {
            (b - a).as_secs_f64()
        } else {
            -(a - b).as_secs_f64()
        };
        // SAFETY: `ms` is the caller's `float *pMilliseconds`, null or writable.
        unsafe { put(ms, (d * 1000.0) as f32) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuEventDestroy_v2(e: CUevent) -> CUresult {
    guard(|| {
        with(|p| {
            p.initialised()?;
            p.events
                .remove(&(e as u64))
                .map(|_| ())
                .ok_or(CUDA_ERROR_INVALID_HANDLE)
        })
    })
}

// ---------------------------------------------------------------------------------------------
// Memory.

#[no_mangle]
pub unsafe extern "C" fn cuMemAlloc_v2(d: *mut CUdeviceptr, bytes: usize) -> CUresult {
    called("cuMemAlloc_v2");
    guard(|| {
        if d.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let dptr = alloc(Mem::Device, bytes as u64)?;
        // SAFETY: `d` is the caller's `CUdeviceptr *dptr`, non-null (checked) and writable.
        unsafe { put(d, dptr) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocManaged(
    d: *mut CUdeviceptr,
    bytes: usize,
    flags: c_uint,
) -> CUresult {
    called("cuMemAllocManaged");
    guard(|| {
        // CU_MEM_ATTACH_GLOBAL or CU_MEM_ATTACH_HOST.
        if d.is_null() || !(flags == 0x1 || flags == 0x2) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let dptr = alloc(Mem::Device, bytes as u64)?;
        // SAFETY: `d` is the caller's `CUdeviceptr *dptr`, non-null (checked) and writable.
        unsafe { put(d, dptr) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocAsync(
    d: *mut CUdeviceptr,
    bytes: usize,
    s: CUstream,
) -> CUresult {
    // SAFETY: `d` is the caller's `CUdeviceptr *dptr`.
    guard(|| unsafe { alloc_async("cuMemAllocAsync", d, bytes, s) })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocPitch_v2(
    d: *mut CUdeviceptr,
    pitch: *mut usize,
    width: usize,
    height: usize,
    elem: c_uint,
) -> CUresult {
    called("cuMemAllocPitch_v2");
    guard(|| {
        if d.is_null() || pitch.is_null() || width == 0 || height == 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        if !matches!(elem, 4 | 8 | 16) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let p = width
            .checked_next_multiple_of(512)
            .ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let bytes = p.checked_mul(height).ok_or(CUDA_ERROR_OUT_OF_MEMORY)?;
        let dptr = alloc(Mem::Device, bytes as u64)?;
        // SAFETY: `d` (`CUdeviceptr *dptr`) and `pitch` (`size_t *pPitch`) are the caller's,
        // both non-null (checked) and writable.
        unsafe {
            put(d, dptr)?;
            put(pitch, p)
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemFree_v2(d: CUdeviceptr) -> CUresult {
    guard(|| free(Mem::Device, d))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemFreeAsync(d: CUdeviceptr, s: CUstream) -> CUresult {
    guard(|| {
        with(|p| {
            p.in_context()?;
            p.stream(s as u64).map(|_| ())
        })?;
        free(Mem::Device, d)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemGetInfo_v2(free_b: *mut usize, total: *mut usize) -> CUresult {
    guard(|| {
        with(|p| p.in_context())?;
        let t = node::total_bytes();
        let used = {
            let _lock = node::Flock::take("mem.lock");
            node::others_used().saturating_add(with(|p| Ok(p.mem_used))?)
        };
        // SAFETY: `free_b` and `total` are the caller's `size_t *free, *total`, each null or
        // writable.
        unsafe {
            put(free_b, t.saturating_sub(used) as usize)?;
            put(total, t as usize)
        }
    })
}

/// `cuMemCreate(CUmemGenericAllocationHandle*, size_t, const CUmemAllocationProp*, flags)`.
#[no_mangle]
pub unsafe extern "C" fn cuMemCreate(
    h: *mut CUmemGenericAllocationHandle,
    bytes: usize,
    prop: *const CUmemAllocationProp,
    flags: u64,
) -> CUresult {
    called("cuMemCreate");
    guard(|| {
        if h.is_null() || prop.is_null() || flags != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let handle = alloc(Mem::Generic, bytes as u64)?;
        with(|p| {
            p.generic.insert(handle, (1, 0));
            Ok(())
        })?;
        // SAFETY: `h` is the caller's `CUmemGenericAllocationHandle *handle`, non-null
        // (checked) and writable.
        unsafe { put(h, handle) }
    })
}

/// Drops the creation's reference; as with the driver, the memory is freed only once it is also
/// unmapped everywhere (and every `cuMemRetainAllocationHandle` reference is released).
#[no_mangle]
pub unsafe extern "C" fn cuMemRelease(h: CUmemGenericAllocationHandle) -> CUresult {
    guard(|| {
        let gone = with(|p| {
            p.initialised()?;
            let e = p
                .generic
                .get_mut(&h)
                .filter(|e| e.0 > 0)
                .ok_or(CUDA_ERROR_INVALID_VALUE)?;
            e.0 -= 1;
            Ok(*e == (0, 0))
        })?;
        generic_gone(h, gone)
    })
}

/// Frees a `cuMemCreate` allocation that is neither referenced nor mapped any more.
fn generic_gone(h: u64, gone: bool) -> Result<(), CUresult> {
    if !gone {
        return Ok(());
    }
    with(|p| {
        p.generic.remove(&h);
        Ok(())
    })?;
    free(Mem::Generic, h)
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAddressReserve(
    ptr: *mut CUdeviceptr,
    size: usize,
    _alignment: usize,
    _addr: CUdeviceptr,
    _flags: u64,
) -> CUresult {
    guard(|| {
        if size == 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let va = with(|p| {
            p.initialised()?;
            let va = p.next_va;
            let span = (size as u64)
                .div_ceil(2 << 20)
                .max(1)
                .saturating_mul(2 << 20);
            p.next_va = p.next_va.saturating_add(span);
            Ok(va)
        })?;
        // SAFETY: `ptr` is the caller's `CUdeviceptr *ptr`, null (refused) or writable.
        unsafe { put(ptr, va) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAddressFree(_ptr: CUdeviceptr, _size: usize) -> CUresult {
    guard(|| with(|p| p.initialised()))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemMap(
    ptr: CUdeviceptr,
    size: usize,
    offset: usize,
    h: CUmemGenericAllocationHandle,
    flags: u64,
) -> CUresult {
    guard(|| {
        with(|p| {
            p.initialised()?;
            if ptr == 0 || size == 0 || offset != 0 || flags != 0 {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            let e = p.generic.get_mut(&h).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
            e.1 += 1;
            p.mappings.insert(ptr, (size as u64, h));
            Ok(())
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemUnmap(ptr: CUdeviceptr, size: usize) -> CUresult {
    guard(|| {
        let end = ptr.saturating_add(size as u64);
        let gone = with(|p| {
            p.initialised()?;
            let vas: Vec<u64> = p.mappings.range(ptr..end).map(|(va, _)| *va).collect();
            if vas.is_empty() {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            let mut gone = Vec::new();
            for va in vas {
                let Some((_, h)) = p.mappings.remove(&va) else {
                    continue;
                };
                if let Some(e) = p.generic.get_mut(&h) {
                    e.1 = e.1.saturating_sub(1);
                    if *e == (0, 0) {
                        gone.push(h);
                    }
                }
            }
            Ok(gone)
        })?;
        for h in gone {
            generic_gone(h, true)?;
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemRetainAllocationHandle(
    handle: *mut CUmemGenericAllocationHandle,
    addr: *mut c_void,
) -> CUresult {
    guard(|| {
        let a = addr as u64;
        let h = with(|p| {
            p.initialised()?;
            let (va, (size, h)) = p
                .mappings
                .range(..=a)
                .next_back()
                .map(|(va, m)| (*va, *m))
                .ok_or(CUDA_ERROR_INVALID_VALUE)?;
            if a >= va.saturating_add(size) {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            if let Some(e) = p.generic.get_mut(&h) {
                e.0 += 1;
            }
            Ok(h)
        })?;
        // SAFETY: `handle` is the caller's `CUmemGenericAllocationHandle *`, null or writable.
        unsafe { put(handle, h) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetDefaultMemPool(
    pool: *mut CUmemoryPool,
    dev: CUdevice,
) -> CUresult {
    guard(|| {
        check_device(dev)?;
        // SAFETY: `pool` is the caller's `CUmemoryPool *pool_out`, null or writable.
        unsafe { put(pool, DEFAULT_POOL as CUmemoryPool) }
    })
}

/// An allocation from a pool on a stream (`cuMemAllocAsync`, `cuMemAllocFromPoolAsync`): made at
/// once, or, while the stream is captured, as well (the fake records no graph node).
///
/// # Safety
/// `d` is null or writable (the caller's `CUdeviceptr *dptr`).
unsafe fn alloc_async(
    name: &'static str,
    d: *mut CUdeviceptr,
    bytes: usize,
    s: CUstream,
) -> Result<(), CUresult> {
    called(name);
    with(|p| {
        p.in_context()?;
        p.stream(s as u64).map(|_| ())
    })?;
    if d.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let dptr = alloc(Mem::Device, bytes as u64)?;
    // SAFETY: `d` is non-null (checked) and writable by the caller's contract.
    unsafe { put(d, dptr) }
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocAsync_ptsz(
    d: *mut CUdeviceptr,
    bytes: usize,
    s: CUstream,
) -> CUresult {
    // SAFETY: `d` is the caller's `CUdeviceptr *dptr`.
    guard(|| unsafe { alloc_async("cuMemAllocAsync_ptsz", d, bytes, s) })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocFromPoolAsync(
    d: *mut CUdeviceptr,
    bytes: usize,
    pool: CUmemoryPool,
    s: CUstream,
) -> CUresult {
    if pool.is_null() {
        return CUDA_ERROR_INVALID_VALUE;
    }
    // SAFETY: `d` is the caller's `CUdeviceptr *dptr`.
    guard(|| unsafe { alloc_async("cuMemAllocFromPoolAsync", d, bytes, s) })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocFromPoolAsync_ptsz(
    d: *mut CUdeviceptr,
    bytes: usize,
    pool: CUmemoryPool,
    s: CUstream,
) -> CUresult {
    if pool.is_null() {
        return CUDA_ERROR_INVALID_VALUE;
    }
    // SAFETY: `d` is the caller's `CUdeviceptr *dptr`.
    guard(|| unsafe { alloc_async("cuMemAllocFromPoolAsync_ptsz", d, bytes, s) })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemFreeAsync_ptsz(d: CUdeviceptr, s: CUstream) -> CUresult {
    guard(|| {
        with(|p| {
            p.in_context()?;
            p.stream(s as u64).map(|_| ())
        })?;
        free(Mem::Device, d)
    })
}

/// Bytes of an array `width` × `height` × `depth` (0 counts as 1) of `format` × `channels`.
fn array_size(
    width: u64,
    height: u64,
    depth: u64,
    format: CUarray_format,
    channels: c_uint,
) -> Result<u64, CUresult> {
    let elem = array_format_bytes(format).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    if width == 0 || !matches!(channels, 1 | 2 | 4) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    width
        .checked_mul(height.max(1))
        .and_then(|b| b.checked_mul(depth.max(1)))
        .and_then(|b| b.checked_mul(elem * channels as u64))
        .ok_or(CUDA_ERROR_OUT_OF_MEMORY)
}

/// An array of `bytes` to `*a`.
///
/// # Safety
/// `a` is null or writable (the caller's `CUarray *pHandle`).
unsafe fn new_array(a: *mut CUarray, bytes: Result<u64, CUresult>) -> Result<(), CUresult> {
    if a.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let array = alloc(Mem::Array, bytes?)? as CUarray;
    // SAFETY: `a` is non-null (checked) and writable by the caller's contract.
    unsafe { put(a, array) }
}

#[no_mangle]
pub unsafe extern "C" fn cuArray3DCreate_v2(
    a: *mut CUarray,
    desc: *const CUDA_ARRAY3D_DESCRIPTOR,
) -> CUresult {
    called("cuArray3DCreate_v2");
    guard(|| {
        // SAFETY: `desc` is the caller's `const CUDA_ARRAY3D_DESCRIPTOR *`: null or readable.
        let d = unsafe { desc.as_ref() }.ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let bytes = array_size(
            d.Width as u64,
            d.Height as u64,
            d.Depth as u64,
            d.Format,
            d.NumChannels,
        );
        // SAFETY: `a` is the caller's `CUarray *pHandle`.
        unsafe { new_array(a, bytes) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMipmappedArrayCreate(
    a: *mut CUmipmappedArray,
    desc: *const CUDA_ARRAY3D_DESCRIPTOR,
    levels: c_uint,
) -> CUresult {
    called("cuMipmappedArrayCreate");
    guard(|| {
        // SAFETY: `desc` is the caller's `const CUDA_ARRAY3D_DESCRIPTOR *`: null or readable.
        let d = unsafe { desc.as_ref() }.ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if levels == 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let mut bytes = 0u64;
        for l in 0..levels.min(32) {
            let dim = |x: usize| if x == 0 { 0 } else { ((x as u64) >> l).max(1) };
            let level = array_size(
                dim(d.Width),
                dim(d.Height),
                dim(d.Depth),
                d.Format,
                d.NumChannels,
            )?;
            bytes = bytes.checked_add(level).ok_or(CUDA_ERROR_OUT_OF_MEMORY)?;
        }
        // SAFETY: `a` is the caller's `CUmipmappedArray *pHandle` (a handle like an array's).
        unsafe { new_array(a.cast(), Ok(bytes)) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMipmappedArrayDestroy(a: CUmipmappedArray) -> CUresult {
    guard(|| free(Mem::Array, a as u64))
}

// The API before CUDA 3.2: 32-bit sizes and addresses. Accounted like the others; the address
// handed out is the low half of the fake's 64-bit one (nothing in the fake uses it).

#[no_mangle]
pub unsafe extern "C" fn cuMemAlloc(d: *mut CUdeviceptr_v1, bytes: c_uint) -> CUresult {
    called("cuMemAlloc");
    guard(|| {
        if d.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let dptr = alloc(Mem::Device, bytes as u64)?;
        // SAFETY: `d` is the caller's `CUdeviceptr_v1 *dptr`, non-null (checked) and writable.
        unsafe { put(d, dptr as CUdeviceptr_v1) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocPitch(
    d: *mut CUdeviceptr_v1,
    pitch: *mut c_uint,
    width: c_uint,
    height: c_uint,
    _elem: c_uint,
) -> CUresult {
    called("cuMemAllocPitch");
    guard(|| {
        if d.is_null() || pitch.is_null() || width == 0 || height == 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let p = width
            .checked_next_multiple_of(512)
            .ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let dptr = alloc(Mem::Device, p as u64 * height as u64)?;
        // SAFETY: `d` and `pitch` are the caller's, both non-null (checked) and writable.
        unsafe {
            put(d, dptr as CUdeviceptr_v1)?;
            put(pitch, p)
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuArrayCreate(
    a: *mut CUarray,
    desc: *const CUDA_ARRAY_DESCRIPTOR_v1,
) -> CUresult {
    called("cuArrayCreate");
    guard(|| {
        // SAFETY: `desc` is the caller's `const CUDA_ARRAY_DESCRIPTOR_v1 *`: null or readable.
        let d = unsafe { desc.as_ref() }.ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let bytes = array_size(d.Width as u64, d.Height as u64, 1, d.Format, d.NumChannels);
        // SAFETY: `a` is the caller's `CUarray *pHandle`.
        unsafe { new_array(a, bytes) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuArray3DCreate(
    a: *mut CUarray,
    desc: *const CUDA_ARRAY3D_DESCRIPTOR_v1,
) -> CUresult {
    called("cuArray3DCreate");
    guard(|| {
        // SAFETY: `desc` is the caller's `const CUDA_ARRAY3D_DESCRIPTOR_v1 *`: null or readable.
        let d = unsafe { desc.as_ref() }.ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let bytes = array_size(
            d.Width as u64,
            d.Height as u64,
            d.Depth as u64,
            d.Format,
            d.NumChannels,
        );
        // SAFETY: `a` is the caller's `CUarray *pHandle`.
        unsafe { new_array(a, bytes) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuArrayCreate_v2(
    a: *mut CUarray,
    desc: *const CUDA_ARRAY_DESCRIPTOR,
) -> CUresult {
    called("cuArrayCreate_v2");
    guard(|| {
        if a.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: `desc` is the caller's `const CUDA_ARRAY_DESCRIPTOR *`: null (refused) or
        // readable.
        let d = unsafe { desc.as_ref() }.ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let elem = array_format_bytes(d.Format).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if d.Width == 0 || !matches!(d.NumChannels, 1 | 2 | 4) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let bytes = (d.Width as u64)
            .checked_mul(d.Height.max(1) as u64)
            .and_then(|b| b.checked_mul(elem * d.NumChannels as u64))
            .ok_or(CUDA_ERROR_OUT_OF_MEMORY)?;
        let array = alloc(Mem::Array, bytes)? as CUarray;
        // SAFETY: `a` is the caller's `CUarray *pHandle`, non-null (checked) and writable.
        unsafe { put(a, array) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuArrayDestroy(a: CUarray) -> CUresult {
    guard(|| free(Mem::Array, a as u64))
}

// ---------------------------------------------------------------------------------------------
// Modules and launches.

/// Any image loads (it is not read); the module has one function, `spin`.
#[no_mangle]
pub unsafe extern "C" fn cuModuleLoadData(m: *mut CUmodule, image: *const c_void) -> CUresult {
    guard(|| {
        if m.is_null() || image.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let h = create(|p, h| {
            p.modules.insert(h, Vec::new());
            Ok(())
        })?;
        // SAFETY: `m` is the caller's `CUmodule *module`, non-null (checked) and writable.
        unsafe { put(m, h as CUmodule) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleUnload(m: CUmodule) -> CUresult {
    guard(|| {
        with(|p| {
            p.in_context()?;
            let fs = p
                .modules
                .remove(&(m as u64))
                .ok_or(CUDA_ERROR_INVALID_HANDLE)?;
            for f in fs {
                p.functions.remove(&f);
            }
            Ok(())
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleGetFunction(
    f: *mut CUfunction,
    m: CUmodule,
    name: *const c_char,
) -> CUresult {
    guard(|| {
        if f.is_null() || name.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: `name` is non-null (checked) and the caller's C string (`const char *name`).
        let spin = unsafe { CStr::from_ptr(name) }.to_bytes() == b"spin";
        let h = with(|p| {
            p.in_context()?;
            if !p.modules.contains_key(&(m as u64)) {
                return Err(CUDA_ERROR_INVALID_HANDLE);
            }
            if !spin {
                return Err(CUDA_ERROR_NOT_FOUND);
            }
            let h = p.handle();
            p.functions.insert(h, m as u64);
            if let Some(fs) = p.modules.get_mut(&(m as u64)) {
                fs.push(h);
            }
            Ok(h)
        })?;
        // SAFETY: `f` is the caller's `CUfunction *hfunc`, non-null (checked) and writable.
        unsafe { put(f, h as CUfunction) }
    })
}

/// The spin kernel's one parameter, from `kernelParams` or the `extra` buffer.
///
/// # Safety
/// As cuda.h says for a launch of a kernel with one `u64` parameter: `params` is null or an
/// array whose first entry points to the parameter's 8 bytes; `extra` is null or a list of
/// key/value pointers ending with `CU_LAUNCH_PARAM_END`, whose buffer pointer points to
/// (at least) the size the size entry gives.
unsafe fn kernel_ns(params: VoidPtrPtr, extra: VoidPtrPtr) -> Result<u64, CUresult> {
    if !params.is_null() {
        // SAFETY: `params` is non-null (checked), so its first entry exists (the kernel has a
        // parameter).
        let p0 = unsafe { *params };
        if p0.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: `p0` is non-null (checked) and points to the parameter, a u64 (any alignment).
        return Ok(unsafe { (p0 as *const u64).read_unaligned() });
    }
    if !extra.is_null() {
        // CU_LAUNCH_PARAM_BUFFER_POINTER (1), _SIZE (2), _END (0), as key/value pairs.
        let (mut buf, mut size): (*const u8, usize) = (std::ptr::null(), 0);
        // SAFETY (for the reads of `extra` below): `extra` is non-null (checked) and, by the
        // caller's contract, a list of keys each followed by its value, ended by the end key;
        // it is read only up to that key, and a value only after its key.
        for i in (0..64).step_by(2) {
            // SAFETY: entry `i` is a key (see above).
            let key = unsafe { *extra.add(i) } as usize;
            if key == 0 {
                break;
            }
            // SAFETY: a key other than the end key is followed by its value (see above).
            let value = unsafe { *extra.add(i + 1) };
            match key {
                1 => buf = value as *const u8,
                2 => {
                    let s = value as *const usize;
                    if !s.is_null() {
                        // SAFETY: the value of CU_LAUNCH_PARAM_BUFFER_SIZE points to a size_t.
                        size = unsafe { *s };
                    }
                }
                _ => return Err(CUDA_ERROR_INVALID_VALUE),
            }
        }
        if !buf.is_null() && size >= 8 {
            // SAFETY: the buffer is non-null (checked) and holds `size` >= 8 bytes (checked).
            return Ok(unsafe { (buf as *const u64).read_unaligned() });
        }
    }
    Err(CUDA_ERROR_INVALID_VALUE)
}

/// Queues a spin kernel on `stream`.
///
/// # Safety
/// `params` and `extra` as for [`kernel_ns`].
unsafe fn launch(
    f: CUfunction,
    grid: [c_uint; 3],
    block: [c_uint; 3],
    stream: CUstream,
    params: VoidPtrPtr,
    extra: VoidPtrPtr,
) -> Result<(), CUresult> {
    check_launch(f, grid, block)?;
    // SAFETY: the caller's contract for `params` and `extra`.
    let ns = unsafe { kernel_ns(params, extra)? };
    enqueue(stream as u64, Job::Kernel(ns.min(MAX_KERNEL_NS)))
}

/// A launch of `f` with these dimensions is valid.
fn check_launch(f: CUfunction, grid: [c_uint; 3], block: [c_uint; 3]) -> Result<(), CUresult> {
    with(|p| {
        p.in_context()?;
        if p.functions.contains_key(&(f as u64)) {
            Ok(())
        } else {
            Err(CUDA_ERROR_INVALID_HANDLE)
        }
    })?;
    let threads = block.iter().map(|&b| b as u64).product::<u64>();
    if grid.contains(&0) || block.contains(&0) || threads > 1024 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    Ok(())
}

#[no_mangle]
pub unsafe extern "C" fn cuLaunchKernel(
    f: CUfunction,
    gx: c_uint,
    gy: c_uint,
    gz: c_uint,
    bx: c_uint,
    by: c_uint,
    bz: c_uint,
    _shmem: c_uint,
    stream: CUstream,
    params: VoidPtrPtr,
    extra: VoidPtrPtr,
) -> CUresult {
    called("cuLaunchKernel");
    // SAFETY: `params` and `extra` are the caller's `kernelParams` and `extra`, with cuda.h's
    // contract for them.
    guard(|| unsafe { launch(f, [gx, gy, gz], [bx, by, bz], stream, params, extra) })
}

#[no_mangle]
pub unsafe extern "C" fn cuLaunchKernel_ptsz(
    f: CUfunction,
    gx: c_uint,
    gy: c_uint,
    gz: c_uint,
    bx: c_uint,
    by: c_uint,
    bz: c_uint,
    _shmem: c_uint,
    stream: CUstream,
    params: VoidPtrPtr,
    extra: VoidPtrPtr,
) -> CUresult {
    called("cuLaunchKernel_ptsz");
    // SAFETY: `params` and `extra` are the caller's `kernelParams` and `extra`, with cuda.h's
    // contract for them.
    guard(|| unsafe { launch(f, [gx, gy, gz], [bx, by, bz], stream, params, extra) })
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
    _shmem: c_uint,
    stream: CUstream,
    params: VoidPtrPtr,
) -> CUresult {
    called("cuLaunchCooperativeKernel");
    let (grid, block, no_extra) = ([gx, gy, gz], [bx, by, bz], std::ptr::null_mut());
    // SAFETY: `params` is the caller's `kernelParams`, with cuda.h's contract; no `extra`.
    guard(|| unsafe { launch(f, grid, block, stream, params, no_extra) })
}

#[no_mangle]
pub unsafe extern "C" fn cuLaunchCooperativeKernel_ptsz(
    f: CUfunction,
    gx: c_uint,
    gy: c_uint,
    gz: c_uint,
    bx: c_uint,
    by: c_uint,
    bz: c_uint,
    _shmem: c_uint,
    stream: CUstream,
    params: VoidPtrPtr,
) -> CUresult {
    called("cuLaunchCooperativeKernel_ptsz");
    let (grid, block, no_extra) = ([gx, gy, gz], [bx, by, bz], std::ptr::null_mut());
    // SAFETY: `params` is the caller's `kernelParams`, with cuda.h's contract; no `extra`.
    guard(|| unsafe { launch(f, grid, block, stream, params, no_extra) })
}

/// One launch per device; the fake has one device, so the list holds one launch.
#[no_mangle]
pub unsafe extern "C" fn cuLaunchCooperativeKernelMultiDevice(
    list: *mut CUDA_LAUNCH_PARAMS,
    devices: c_uint,
    _flags: c_uint,
) -> CUresult {
    called("cuLaunchCooperativeKernelMultiDevice");
    guard(|| {
        if devices != 1 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: `list` is the caller's array of `numDevices` (1) launches: null or readable.
        let l = unsafe { list.as_ref() }.ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let grid = [l.gridDimX, l.gridDimY, l.gridDimZ];
        let block = [l.blockDimX, l.blockDimY, l.blockDimZ];
        // SAFETY: the launch's `kernelParams`, with cuda.h's contract; no `extra`.
        unsafe {
            launch(
                l.function,
                grid,
                block,
                l.hStream,
                l.kernelParams,
                std::ptr::null_mut(),
            )
        }
    })
}

/// The launches before CUDA 4.0: a kernel of [`LEGACY_KERNEL_NS`].
fn legacy_launch(f: CUfunction, grid: [c_uint; 3], stream: CUstream) -> Result<(), CUresult> {
    check_launch(f, grid, [1, 1, 1])?;
    enqueue(stream as u64, Job::Kernel(LEGACY_KERNEL_NS))
}

#[no_mangle]
pub unsafe extern "C" fn cuLaunch(f: CUfunction) -> CUresult {
    called("cuLaunch");
    guard(|| legacy_launch(f, [1, 1, 1], std::ptr::null_mut()))
}

#[no_mangle]
pub unsafe extern "C" fn cuLaunchGrid(f: CUfunction, w: c_int, h: c_int) -> CUresult {
    called("cuLaunchGrid");
    guard(|| {
        let grid = [
            c_uint::try_from(w).unwrap_or(0),
            c_uint::try_from(h).unwrap_or(0),
            1,
        ];
        legacy_launch(f, grid, std::ptr::null_mut())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuLaunchGridAsync(
    f: CUfunction,
    w: c_int,
    h: c_int,
    stream: CUstream,
) -> CUresult {
    called("cuLaunchGridAsync");
    guard(|| {
        let grid = [
            c_uint::try_from(w).unwrap_or(0),
            c_uint::try_from(h).unwrap_or(0),
            1,
        ];
        legacy_launch(f, grid, stream)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuLaunchKernelEx(
    config: *const CUlaunchConfig,
    f: CUfunction,
    params: VoidPtrPtr,
    extra: VoidPtrPtr,
) -> CUresult {
    called("cuLaunchKernelEx");
    // SAFETY: the caller's arguments, with cuda.h's contract for them.
    unsafe { launch_ex(config, f, params, extra) }
}

#[no_mangle]
pub unsafe extern "C" fn cuLaunchKernelEx_ptsz(
    config: *const CUlaunchConfig,
    f: CUfunction,
    params: VoidPtrPtr,
    extra: VoidPtrPtr,
) -> CUresult {
    called("cuLaunchKernelEx_ptsz");
    // SAFETY: the caller's arguments, with cuda.h's contract for them.
    unsafe { launch_ex(config, f, params, extra) }
}

/// `cuLaunchKernelEx[_ptsz]`.
///
/// # Safety
/// `config` is null or readable; `params` and `extra` as for [`kernel_ns`].
unsafe fn launch_ex(
    config: *const CUlaunchConfig,
    f: CUfunction,
    params: VoidPtrPtr,
    extra: VoidPtrPtr,
) -> CUresult {
    guard(|| {
        // SAFETY: `config` is the caller's `const CUlaunchConfig *`: null (refused) or readable.
        let c = unsafe { config.as_ref() }.ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if c.numAttrs > 0 && c.attrs.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let grid = [c.gridDimX, c.gridDimY, c.gridDimZ];
        let block = [c.blockDimX, c.blockDimY, c.blockDimZ];
        // SAFETY: `params` and `extra` are the caller's `kernelParams` and `extra`, with
        // cuda.h's contract for them.
        unsafe { launch(f, grid, block, c.hStream, params, extra) }
    })
}

/// Not a driver function: makes an executable graph of `kernels` spin kernels of `ns` each, for
/// `cuGraphLaunch` (the fake cannot build graphs). Free it with `cuGraphExecDestroy`.
#[no_mangle]
pub unsafe extern "C" fn carve_fake_cuda_graph_exec_create(
    exec: *mut CUgraphExec,
    kernels: c_uint,
    ns: u64,
) -> CUresult {
    guard(|| {
        if exec.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let h = create(|p, h| {
            p.graphs.insert(h, (kernels, ns.min(MAX_KERNEL_NS)));
            Ok(())
        })?;
        // SAFETY: `exec` is the caller's `CUgraphExec *`, non-null (checked) and writable.
        unsafe { put(exec, h as CUgraphExec) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphLaunch(exec: CUgraphExec, stream: CUstream) -> CUresult {
    called("cuGraphLaunch");
    graph_launch(exec, stream)
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphLaunch_ptsz(exec: CUgraphExec, stream: CUstream) -> CUresult {
    called("cuGraphLaunch_ptsz");
    graph_launch(exec, stream)
}

fn graph_launch(exec: CUgraphExec, stream: CUstream) -> CUresult {
    guard(|| {
        let (n, ns) = with(|p| {
            p.in_context()?;
            p.graphs
                .get(&(exec as u64))
                .copied()
                .ok_or(CUDA_ERROR_INVALID_HANDLE)
        })?;
        // One queue entry per kernel, queued together: nothing else on the stream interleaves.
        with(|p| {
            let s = p.stream(stream as u64)?;
            for _ in 0..n {
                s.pending.fetch_add(1, AcqRel);
                if s.tx.send(Job::Kernel(ns)).is_err() {
                    s.pending.fetch_sub(1, AcqRel);
                    return Err(CUDA_ERROR_UNKNOWN);
                }
            }
            Ok(())
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphExecDestroy(exec: CUgraphExec) -> CUresult {
    guard(|| {
        with(|p| {
            p.initialised()?;
            p.graphs
                .remove(&(exec as u64))
                .map(|_| ())
                .ok_or(CUDA_ERROR_INVALID_HANDLE)
        })
    })
}

/// A graph to build: only memory-allocation nodes can be added (they take their memory when
/// added, not when the graph runs, and give it back with the graph).
#[no_mangle]
pub unsafe extern "C" fn cuGraphCreate(g: *mut CUgraph, flags: c_uint) -> CUresult {
    guard(|| {
        if g.is_null() || flags != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let h = with(|p| {
            p.initialised()?;
            let h = p.handle();
            p.built.insert(h, Vec::new());
            Ok(h)
        })?;
        // SAFETY: `g` is the caller's `CUgraph *phGraph`, non-null (checked) and writable.
        unsafe { put(g, h as CUgraph) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphDestroy(g: CUgraph) -> CUresult {
    guard(|| {
        let mem = with(|p| p.built.remove(&(g as u64)).ok_or(CUDA_ERROR_INVALID_HANDLE))?;
        for d in mem {
            free(Mem::Device, d)?;
        }
        Ok(())
    })
}

/// Adds a memory-allocation node of `alloc.bytesize` to `g`, writing its address to
/// `alloc.dptr` and the node to `node`.
///
/// # Safety
/// `node` is null or writable; `alloc` is null or readable and writable.
unsafe fn add_alloc_node(
    node: *mut CUgraphNode,
    g: CUgraph,
    alloc_params: *mut CUDA_MEM_ALLOC_NODE_PARAMS,
) -> Result<(), CUresult> {
    // SAFETY: the caller's contract: null (refused) or readable and writable.
    let a = unsafe { alloc_params.as_mut() }.ok_or(CUDA_ERROR_INVALID_VALUE)?;
    if node.is_null() || !with(|p| Ok(p.built.contains_key(&(g as u64))))? {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let d = alloc(Mem::Device, a.bytesize as u64)?;
    let n = with(|p| {
        if let Some(m) = p.built.get_mut(&(g as u64)) {
            m.push(d);
        }
        Ok(p.handle())
    })?;
    a.dptr = d;
    // SAFETY: `node` is non-null (checked) and writable by the caller's contract.
    unsafe { put(node, n as CUgraphNode) }
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphAddMemAllocNode(
    node: *mut CUgraphNode,
    g: CUgraph,
    _deps: *const CUgraphNode,
    _ndeps: usize,
    params: *mut CUDA_MEM_ALLOC_NODE_PARAMS,
) -> CUresult {
    called("cuGraphAddMemAllocNode");
    // SAFETY: the caller's `CUgraphNode *phGraphNode` and `CUDA_MEM_ALLOC_NODE_PARAMS *`.
    guard(|| unsafe { add_alloc_node(node, g, params) })
}

/// `cuGraphAddNode` (CUDA 12.2): memory-allocation nodes only.
#[no_mangle]
pub unsafe extern "C" fn cuGraphAddNode(
    node: *mut CUgraphNode,
    g: CUgraph,
    _deps: *const CUgraphNode,
    _ndeps: usize,
    params: *mut CUgraphNodeParams,
) -> CUresult {
    called("cuGraphAddNode");
    guard(|| {
        // SAFETY: the caller's `CUgraphNodeParams *`: null (refused) or readable and writable.
        let p = unsafe { params.as_mut() }.ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if p.type_ != CU_GRAPH_NODE_TYPE_MEM_ALLOC {
            return Err(CUDA_ERROR_NOT_SUPPORTED);
        }
        // SAFETY: a memory-allocation node's parameters are the union's `alloc`; `node` is the
        // caller's `CUgraphNode *`.
        unsafe { add_alloc_node(node, g, &mut p.params.alloc) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamBeginCapture_v2(
    s: CUstream,
    _mode: CUstreamCaptureMode,
) -> CUresult {
    guard(|| {
        with(|p| {
            p.in_context()?;
            p.stream(s as u64)?;
            if !p.capturing.insert(stream_key(s as u64)) {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            Ok(())
        })
    })
}

/// Ends a capture with an empty graph (the fake records nothing captured).
#[no_mangle]
pub unsafe extern "C" fn cuStreamEndCapture(s: CUstream, g: *mut CUgraph) -> CUresult {
    guard(|| {
        let h = with(|p| {
            p.in_context()?;
            if !p.capturing.remove(&stream_key(s as u64)) {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            let h = p.handle();
            p.built.insert(h, Vec::new());
            Ok(h)
        })?;
        // SAFETY: `g` is the caller's `CUgraph *phGraph`, null (refused) or writable.
        unsafe { put(g, h as CUgraph) }
    })
}

/// `cuStreamIsCapturing[_ptsz]`.
///
/// # Safety
/// `status` is null or writable.
unsafe fn is_capturing(s: CUstream, status: *mut CUstreamCaptureStatus) -> Result<(), CUresult> {
    let capturing = with(|p| {
        p.in_context()?;
        p.stream(s as u64)?;
        Ok(p.capturing.contains(&stream_key(s as u64)))
    })?;
    let st = if capturing {
        CU_STREAM_CAPTURE_STATUS_ACTIVE
    } else {
        CU_STREAM_CAPTURE_STATUS_NONE
    };
    // SAFETY: the caller's contract for `status`; `put` refuses null.
    unsafe { put(status, st) }
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamIsCapturing(
    s: CUstream,
    status: *mut CUstreamCaptureStatus,
) -> CUresult {
    // SAFETY: `status` is the caller's `CUstreamCaptureStatus *`.
    guard(|| unsafe { is_capturing(s, status) })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamIsCapturing_ptsz(
    s: CUstream,
    status: *mut CUstreamCaptureStatus,
) -> CUresult {
    // SAFETY: `status` is the caller's `CUstreamCaptureStatus *`.
    guard(|| unsafe { is_capturing(s, status) })
}

// ---------------------------------------------------------------------------------------------
// Errors.

/// (code, name, description) as the driver gives them.
macro_rules! errors {
    ($($code:ident: $text:literal,)*) => {
        &[$(($code, c_name(concat!(stringify!($code), "\0")), $text)),*]
    };
}

const ERRORS: &[(CUresult, &CStr, &CStr)] = errors! {
    CUDA_SUCCESS: c"no error",
    CUDA_ERROR_INVALID_VALUE: c"invalid argument",
    CUDA_ERROR_OUT_OF_MEMORY: c"out of memory",
    CUDA_ERROR_NOT_INITIALIZED: c"initialization error",
    CUDA_ERROR_DEINITIALIZED: c"driver shutting down",
    CUDA_ERROR_NO_DEVICE: c"no CUDA-capable device is detected",
    CUDA_ERROR_INVALID_DEVICE: c"invalid device ordinal",
    CUDA_ERROR_INVALID_IMAGE: c"device kernel image is invalid",
    CUDA_ERROR_INVALID_CONTEXT: c"invalid device context",
    CUDA_ERROR_INVALID_PTX: c"a PTX JIT compilation failed",
    CUDA_ERROR_INVALID_HANDLE: c"invalid resource handle",
    CUDA_ERROR_NOT_FOUND: c"named symbol not found",
    CUDA_ERROR_NOT_READY: c"device not ready",
    CUDA_ERROR_ILLEGAL_ADDRESS: c"an illegal memory access was encountered",
    CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES: c"too many resources requested for launch",
    CUDA_ERROR_LAUNCH_FAILED: c"unspecified launch failure",
    CUDA_ERROR_NOT_PERMITTED: c"operation not permitted",
    CUDA_ERROR_NOT_SUPPORTED: c"operation not supported",
    CUDA_ERROR_UNKNOWN: c"unknown error",
};

/// A C string constant from a `&str` ending with its NUL.
const fn c_name(name: &'static str) -> &'static CStr {
    match CStr::from_bytes_with_nul(name.as_bytes()) {
        Ok(c) => c,
        Err(_) => panic!("not a C string"),
    }
}

/// The name (`name`) or description of an error code, written to `*s` (null for an unknown
/// code, which is `CUDA_ERROR_INVALID_VALUE`).
///
/// # Safety
/// `s` is null or valid for writes of a pointer (the caller's `const char **pStr`).
unsafe fn error_text(e: CUresult, s: *mut *const c_char, name: bool) -> Result<(), CUresult> {
    let (text, r) = match ERRORS.iter().find(|x| x.0 == e) {
        Some(&(_, n, d)) => (if name { n } else { d }.as_ptr(), Ok(())),
        None => (std::ptr::null(), Err(CUDA_ERROR_INVALID_VALUE)),
    };
    // SAFETY: the caller's contract for `s`; `put` refuses null.
    unsafe { put(s, text) }?;
    r
}

#[no_mangle]
pub unsafe extern "C" fn cuGetErrorName(e: CUresult, s: *mut *const c_char) -> CUresult {
    // SAFETY: `s` is the caller's `const char **pStr`, null or writable.
    guard(|| unsafe { error_text(e, s, true) })
}

#[no_mangle]
pub unsafe extern "C" fn cuGetErrorString(e: CUresult, s: *mut *const c_char) -> CUresult {
    // SAFETY: `s` is the caller's `const char **pStr`, null or writable.
    guard(|| unsafe { error_text(e, s, false) })
}

// ---------------------------------------------------------------------------------------------
// cuGetProcAddress.

macro_rules! symbols {
    ($($f:ident: $pfn:ty),* $(,)?) => {
        fn exported(name: &str) -> Option<*mut c_void> {
            match name { $( stringify!($f) => Some($f as *mut c_void), )* _ => None }
        }
        /// Every CUDA driver function this library exports, by its exported name.
        pub const SYMBOLS: &[&str] = &[$(stringify!($f)),*];
        // Each has its type in cuda.h (`carve-cuda-abi`).
        $( const _: $pfn = $f; )*
    };
}

symbols!(
    cuInit: PFN_cuInit,
    cuDriverGetVersion: PFN_cuDriverGetVersion,
    cuDeviceGetCount: PFN_cuDeviceGetCount,
    cuDeviceGet: PFN_cuDeviceGet,
    cuDeviceGetName: PFN_cuDeviceGetName,
    cuDeviceTotalMem_v2: PFN_cuDeviceTotalMem_v2,
    cuDeviceGetAttribute: PFN_cuDeviceGetAttribute,
    cuDevicePrimaryCtxRetain: PFN_cuDevicePrimaryCtxRetain,
    cuDevicePrimaryCtxRelease: PFN_cuDevicePrimaryCtxRelease_v2,
    cuDevicePrimaryCtxRelease_v2: PFN_cuDevicePrimaryCtxRelease_v2,
    cuCtxCreate_v2: PFN_cuCtxCreate_v2,
    cuCtxDestroy_v2: PFN_cuCtxDestroy_v2,
    cuCtxSetCurrent: PFN_cuCtxSetCurrent,
    cuCtxGetCurrent: PFN_cuCtxGetCurrent,
    cuCtxSynchronize: PFN_cuCtxSynchronize,
    cuStreamCreate: PFN_cuStreamCreate,
    cuStreamDestroy_v2: PFN_cuStreamDestroy_v2,
    cuStreamSynchronize: PFN_cuStreamSynchronize,
    cuStreamQuery: PFN_cuStreamQuery,
    cuEventCreate: PFN_cuEventCreate,
    cuEventRecord: PFN_cuEventRecord,
    cuEventQuery: PFN_cuEventQuery,
    cuEventSynchronize: PFN_cuEventSynchronize,
    cuEventElapsedTime: PFN_cuEventElapsedTime,
    cuEventDestroy_v2: PFN_cuEventDestroy_v2,
    cuMemAlloc_v2: PFN_cuMemAlloc_v2,
    cuMemAllocManaged: PFN_cuMemAllocManaged,
    cuMemAllocAsync: PFN_cuMemAllocAsync,
    cuMemAllocPitch_v2: PFN_cuMemAllocPitch_v2,
    cuMemFree_v2: PFN_cuMemFree_v2,
    cuMemFreeAsync: PFN_cuMemFreeAsync,
    cuMemGetInfo_v2: PFN_cuMemGetInfo_v2,
    cuMemCreate: PFN_cuMemCreate,
    cuMemRelease: PFN_cuMemRelease,
    cuArrayCreate_v2: PFN_cuArrayCreate_v2,
    cuArrayDestroy: PFN_cuArrayDestroy,
    cuModuleLoadData: PFN_cuModuleLoadData,
    cuModuleUnload: PFN_cuModuleUnload,
    cuModuleGetFunction: PFN_cuModuleGetFunction,
    cuLaunchKernel: PFN_cuLaunchKernel,
    cuLaunchCooperativeKernel: PFN_cuLaunchCooperativeKernel,
    cuLaunchKernelEx: PFN_cuLaunchKernelEx,
    cuGraphLaunch: PFN_cuGraphLaunch,
    cuGraphExecDestroy: PFN_cuGraphExecDestroy,
    cuGetErrorName: PFN_cuGetErrorName,
    cuGetErrorString: PFN_cuGetErrorString,
    cuGetProcAddress: PFN_cuGetProcAddress,
    cuGetProcAddress_v2: PFN_cuGetProcAddress_v2,
    cuLaunchKernel_ptsz: PFN_cuLaunchKernel_ptsz,
    cuLaunchKernelEx_ptsz: PFN_cuLaunchKernelEx_ptsz,
    cuLaunchCooperativeKernel_ptsz: PFN_cuLaunchCooperativeKernel_ptsz,
    cuLaunchCooperativeKernelMultiDevice: PFN_cuLaunchCooperativeKernelMultiDevice,
    cuLaunch: PFN_cuLaunch,
    cuLaunchGrid: PFN_cuLaunchGrid,
    cuLaunchGridAsync: PFN_cuLaunchGridAsync,
    cuGraphLaunch_ptsz: PFN_cuGraphLaunch_ptsz,
    cuStreamSynchronize_ptsz: PFN_cuStreamSynchronize_ptsz,
    cuMemAllocAsync_ptsz: PFN_cuMemAllocAsync_ptsz,
    cuMemFreeAsync_ptsz: PFN_cuMemFreeAsync_ptsz,
    cuDeviceGetDefaultMemPool: PFN_cuDeviceGetDefaultMemPool,
    cuMemAllocFromPoolAsync: PFN_cuMemAllocFromPoolAsync,
    cuMemAllocFromPoolAsync_ptsz: PFN_cuMemAllocFromPoolAsync_ptsz,
    cuMemAddressReserve: PFN_cuMemAddressReserve,
    cuMemAddressFree: PFN_cuMemAddressFree,
    cuMemMap: PFN_cuMemMap,
    cuMemUnmap: PFN_cuMemUnmap,
    cuMemRetainAllocationHandle: PFN_cuMemRetainAllocationHandle,
    cuArray3DCreate_v2: PFN_cuArray3DCreate_v2,
    cuMipmappedArrayCreate: PFN_cuMipmappedArrayCreate,
    cuMipmappedArrayDestroy: PFN_cuMipmappedArrayDestroy,
    cuMemAlloc: PFN_cuMemAlloc,
    cuMemAllocPitch: PFN_cuMemAllocPitch,
    cuArrayCreate: PFN_cuArrayCreate,
    cuArray3DCreate: PFN_cuArray3DCreate,
    cuGraphCreate: PFN_cuGraphCreate,
    cuGraphDestroy: PFN_cuGraphDestroy,
    cuGraphAddMemAllocNode: PFN_cuGraphAddMemAllocNode,
    cuGraphAddNode: PFN_cuGraphAddNode,
    cuStreamBeginCapture_v2: PFN_cuStreamBeginCapture_v2,
    cuStreamEndCapture: PFN_cuStreamEndCapture,
    cuStreamIsCapturing: PFN_cuStreamIsCapturing,
    cuStreamIsCapturing_ptsz: PFN_cuStreamIsCapturing_ptsz,
);

/// The name `cuGetProcAddress` is asked for: the exported name without its `_v2`.
pub fn base_name(exported: &str) -> &str {
    exported.strip_suffix("_v2").unwrap_or(exported)
}

/// What `cuGetProcAddress(symbol, .., version, ..)` returns: the newest version of the base name
/// (`cuMemAlloc` → `cuMemAlloc_v2`); `cuGetProcAddress` itself is `_v2` from CUDA 12.0. Exported
/// names are accepted too.
///
/// Each name has the variant the caller's version and flags ask for, as the driver picks it:
/// before CUDA 3.2 (`version` < 3020) the unversioned name of the old API when there is one;
/// with `CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM`, the per-thread-default-stream variant
/// (`_ptsz`/`_ptds`) when there is one.
fn proc_address(symbol: &str, version: c_int, flags: u64) -> Option<*mut c_void> {
    if symbol == "cuGetProcAddress" {
        return exported(if version >= CUDA_VERSION_12_0 {
            "cuGetProcAddress_v2"
        } else {
            "cuGetProcAddress"
        });
    }
    let versioned = if version < CUDA_VERSION_3_2 && exported(symbol).is_some() {
        symbol.to_string()
    } else if exported(&format!("{symbol}_v2")).is_some() {
        format!("{symbol}_v2")
    } else {
        symbol.to_string()
    };
    if flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM != 0 {
        for suffix in ["_ptsz", "_ptds"] {
            if let Some(p) = exported(&format!("{versioned}{suffix}")) {
                return Some(p);
            }
        }
    }
    exported(&versioned)
}

/// CUDA 3.2 in the driver's version encoding: the first with 64-bit `_v2` memory functions.
const CUDA_VERSION_3_2: c_int = 3020;

/// Looks `symbol` up for `cuGetProcAddress[_v2]`: the entry point (or null) to `*pfn`, and
/// to `*status`, when given, whether it was found.
///
/// # Safety
/// `symbol` is null or a C string; `pfn` is null or valid for writes of a pointer; `status` is
/// null or valid for writes of a `CUdriverProcAddressQueryResult`.
unsafe fn get_proc_address(
    symbol: *const c_char,
    pfn: VoidPtrPtr,
    version: c_int,
    flags: u64,
    status: *mut CUdriverProcAddressQueryResult,
) -> Result<(), CUresult> {
    if symbol.is_null() || pfn.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: `symbol` is non-null (checked), a C string by the caller's contract.
    let name = unsafe { CStr::from_ptr(symbol) }.to_str().unwrap_or("");
    let found = proc_address(name, version, flags);
    // SAFETY: `pfn` is non-null (checked), writable by the caller's contract.
    unsafe { put(pfn, found.unwrap_or(std::ptr::null_mut())) }?;
    if !status.is_null() {
        let st = if found.is_some() {
            CU_GET_PROC_ADDRESS_SUCCESS
        } else {
            CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND
        };
        // SAFETY: `status` is non-null (checked), writable by the caller's contract.
        unsafe { put(status, st) }?;
    }
    found.map(|_| ()).ok_or(CUDA_ERROR_NOT_FOUND)
}

/// `cuGetProcAddress(symbol, pfn, cudaVersion, flags)` (CUDA 11.3–11.8).
#[no_mangle]
pub unsafe extern "C" fn cuGetProcAddress(
    symbol: *const c_char,
    pfn: VoidPtrPtr,
    version: c_int,
    flags: u64,
) -> CUresult {
    // SAFETY: the caller's `symbol` (a C string) and `pfn` (`void **`), as cuda.h defines them;
    // no status.
    guard(|| unsafe { get_proc_address(symbol, pfn, version, flags, std::ptr::null_mut()) })
}

/// `cuGetProcAddress_v2(symbol, pfn, cudaVersion, flags, CUdriverProcAddressQueryResult*)`
/// (CUDA 12: `cuGetProcAddress` in cuda.h).
#[no_mangle]
pub unsafe extern "C" fn cuGetProcAddress_v2(
    symbol: *const c_char,
    pfn: VoidPtrPtr,
    version: c_int,
    flags: u64,
    status: *mut CUdriverProcAddressQueryResult,
) -> CUresult {
    // SAFETY: the caller's `symbol` (a C string), `pfn` (`void **`) and `symbolStatus` (null or
    // writable), as cuda.h defines them.
    guard(|| unsafe { get_proc_address(symbol, pfn, version, flags, status) })
}
