//! A stand-in `libcuda.so.1` for tests without a GPU (symlink `libcarve_fake_cuda.so` as
//! `libcuda.so.1` on `LD_LIBRARY_PATH`, exactly where the real driver is looked for).
//!
//! It models **one GPU shared by every process that loads it**: launches are asynchronous (one
//! worker per stream, in order), and a kernel runs for its requested duration while holding a
//! node-wide ticket lock (a file every process maps, `$CARVE_FAKE_CUDA_DIR/gpu.tickets`), so kernels
//! from all processes run one at a time, in arrival order, as context switching between processes does. A kernel's duration is its first parameter, a
//! `u64` of nanoseconds (the `spin` kernel of `carve-spin`). Device memory
//! (`$CARVE_FAKE_CUDA_MEM_MIB`, default 81920) is accounted node-wide (a file per process under
//! `$CARVE_FAKE_CUDA_DIR/mem/`), so `cuMemGetInfo` sees other processes and allocations beyond
//! the free memory fail with `CUDA_ERROR_OUT_OF_MEMORY`. Each process writes what it ran to
//! `$CARVE_FAKE_CUDA_DIR/stats/<pid>.json` whenever it synchronises.
//!
//! Implemented: the driver calls `carve-spin` and the shim use (see `SYMBOLS`). Graph launches
//! accept any non-null executable graph and run nothing (there is no graph construction here).
//! No panic crosses the C boundary.

#![allow(non_snake_case, clippy::missing_safety_doc)]

use libc::{c_char, c_int, c_uint, c_void, size_t};
use std::collections::HashMap;
use std::ffi::CStr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::*};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Instant;

type CUresult = c_int;
const SUCCESS: CUresult = 0;
const INVALID_VALUE: CUresult = 1;
const OUT_OF_MEMORY: CUresult = 2;
const NOT_INITIALIZED: CUresult = 3;
const INVALID_DEVICE: CUresult = 101;
const INVALID_HANDLE: CUresult = 400;
const NOT_FOUND: CUresult = 500;
const NOT_READY: CUresult = 600;
const UNKNOWN: CUresult = 999;

fn dir() -> &'static PathBuf {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let d = std::env::var_os("CARVE_FAKE_CUDA_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                // SAFETY: getuid has no preconditions.
                std::env::temp_dir().join(format!("carve-fake-cuda-{}", unsafe { libc::getuid() }))
            });
        let _ = std::fs::create_dir_all(d.join("mem"));
        let _ = std::fs::create_dir_all(d.join("stats"));
        d
    })
}

fn total_bytes() -> u64 {
    std::env::var("CARVE_FAKE_CUDA_MEM_MIB")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(81920)
        * 1024
        * 1024
}

/// An exclusive advisory lock on a file in the fake's directory, held while alive.
struct Flock(std::fs::File);

impl Flock {
    fn take(name: &str) -> Option<Flock> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir().join(name))
            .ok()?;
        // SAFETY: flock on an open descriptor.
        while unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
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

// ---------------------------------------------------------------------------------------------
// The GPU: a first-come-first-served ticket lock in a file every process maps, so kernels from
// all processes take turns in arrival order (the way the GPU time-slices between contexts),
// rather than the same process winning the race again and again.

#[repr(C)]
struct Gpu {
    next: AtomicU64,
    serving: AtomicU64,
    holder: AtomicU64,
}

fn gpu() -> Option<&'static Gpu> {
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
        // SAFETY: a shared read-write mapping of a 4 KiB file, kept for the process lifetime.
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
        if p == libc::MAP_FAILED {
            return None;
        }
        Some(p as usize)
    });
    // SAFETY: the mapping is page-aligned, zero-initialised and lives as long as the process.
    addr.map(|a| unsafe { &*(a as *const Gpu) })
}

fn alive(pid: u64) -> bool {
    pid != 0 && std::path::Path::new(&format!("/proc/{pid}")).exists()
}

impl Gpu {
    fn acquire(&self) -> u64 {
        let t = self.next.fetch_add(1, AcqRel);
        let mut seen = self.serving.load(Acquire);
        let mut since = Instant::now();
        let mut spins = 0u32;
        loop {
            let s = self.serving.load(Acquire);
            if s == t {
                self.holder.store(std::process::id() as u64, Release);
                return t;
            }
            if s != seen {
                seen = s;
                since = Instant::now();
            } else if since.elapsed().as_millis() > 200 && !alive(self.holder.load(Acquire)) {
                // The process whose turn it is died: skip its ticket.
                let _ = self.serving.compare_exchange(s, s + 1, AcqRel, Acquire);
                since = Instant::now();
            }
            spins += 1;
            if spins < 200 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(std::time::Duration::from_micros(20));
            }
        }
    }

    fn release(&self, t: u64) {
        self.holder.store(0, Release);
        let _ = self.serving.compare_exchange(t, t + 1, AcqRel, Acquire);
    }
}

// ---------------------------------------------------------------------------------------------
// Process state.

enum Job {
    Kernel(u64),
    Event(Arc<Event>),
    Done(Sender<()>),
}

struct Event {
    at: Mutex<Option<Instant>>,
    cv: Condvar,
}

struct Stream {
    tx: Sender<Job>,
    /// Jobs queued and not finished.
    inflight: Arc<AtomicU64>,
}

#[derive(Default)]
struct Proc {
    init: bool,
    streams: HashMap<u64, Stream>,
    next_handle: u64,
    allocs: HashMap<u64, u64>,
    mem_used: u64,
    functions: HashMap<u64, String>,
    modules: u64,
    events: HashMap<u64, Arc<Event>>,
}

static PROC: Mutex<Option<Proc>> = Mutex::new(None);
static KERNELS: AtomicU64 = AtomicU64::new(0);
static BUSY_NS: AtomicU64 = AtomicU64::new(0);
static EPOCH: OnceLock<Instant> = OnceLock::new();

fn with<T>(f: impl FnOnce(&mut Proc) -> Result<T, CUresult>) -> Result<T, CUresult> {
    let mut g = PROC.lock().unwrap_or_else(|p| p.into_inner());
    let p = g.get_or_insert_with(|| Proc {
        next_handle: 0x1000,
        ..Proc::default()
    });
    f(p)
}

fn handle(p: &mut Proc) -> u64 {
    p.next_handle += 0x10;
    p.next_handle
}

fn spin(ns: u64) {
    let start = Instant::now();
    while (start.elapsed().as_nanos() as u64) < ns {
        std::hint::spin_loop();
    }
}

fn worker(rx: std::sync::mpsc::Receiver<Job>, inflight: Arc<AtomicU64>) {
    for job in rx {
        match job {
            Job::Kernel(ns) => {
                let turn = gpu().map(|g| g.acquire());
                spin(ns);
                if let (Some(g), Some(t)) = (gpu(), turn) {
                    g.release(t);
                }
                KERNELS.fetch_add(1, Relaxed);
                BUSY_NS.fetch_add(ns, Relaxed);
            }
            Job::Event(e) => {
                *e.at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                e.cv.notify_all();
            }
            Job::Done(tx) => {
                let _ = tx.send(());
            }
        }
        inflight.fetch_sub(1, AcqRel);
    }
}

fn stream(p: &mut Proc, h: u64) -> Result<&Stream, CUresult> {
    if h == 0 && !p.streams.contains_key(&0) {
        p.streams.insert(0, new_stream());
    }
    p.streams.get(&h).ok_or(INVALID_HANDLE)
}

fn new_stream() -> Stream {
    let (tx, rx) = channel();
    let inflight = Arc::new(AtomicU64::new(0));
    let i = inflight.clone();
    std::thread::spawn(move || worker(rx, i));
    Stream { tx, inflight }
}

fn enqueue(h: u64, job: Job) -> Result<(), CUresult> {
    with(|p| {
        if !p.init {
            return Err(NOT_INITIALIZED);
        }
        let s = stream(p, h)?;
        s.inflight.fetch_add(1, AcqRel);
        s.tx.send(job).map_err(|_| UNKNOWN)
    })
}

fn sync_stream(h: u64) -> Result<(), CUresult> {
    let (tx, rx) = channel();
    enqueue(h, Job::Done(tx))?;
    rx.recv().map_err(|_| UNKNOWN)?;
    write_stats();
    Ok(())
}

fn write_stats() {
    let pid = std::process::id();
    let s = format!(
        "{{\"pid\":{pid},\"kernels\":{},\"busy_ns\":{}}}\n",
        KERNELS.load(Relaxed),
        BUSY_NS.load(Relaxed)
    );
    let path = dir().join("stats").join(format!("{pid}.json"));
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, s).is_ok() {
        let _ = std::fs::rename(tmp, path);
    }
}

/// Memory used by live processes (files under mem/, one per pid).
fn node_used() -> u64 {
    let Ok(rd) = std::fs::read_dir(dir().join("mem")) else {
        return 0;
    };
    let me = std::process::id();
    rd.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            if pid != me && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_file(e.path());
                return None;
            }
            std::fs::read_to_string(e.path())
                .ok()?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .sum()
}

fn set_own_usage(bytes: u64) {
    let _ = std::fs::write(
        dir().join("mem").join(std::process::id().to_string()),
        bytes.to_string(),
    );
}

fn alloc(bytes: u64) -> Result<u64, CUresult> {
    if bytes == 0 {
        return Err(INVALID_VALUE);
    }
    let _lock = Flock::take("mem.lock").ok_or(UNKNOWN)?;
    let used = node_used();
    if used.saturating_add(bytes) > total_bytes() {
        return Err(OUT_OF_MEMORY);
    }
    with(|p| {
        if !p.init {
            return Err(NOT_INITIALIZED);
        }
        let h = handle(p) << 20;
        p.allocs.insert(h, bytes);
        p.mem_used += bytes;
        set_own_usage(p.mem_used);
        Ok(h)
    })
}

fn free(h: u64) -> CUresult {
    let _lock = Flock::take("mem.lock");
    match with(|p| {
        let b = p.allocs.remove(&h).ok_or(INVALID_VALUE)?;
        p.mem_used -= b;
        set_own_usage(p.mem_used);
        Ok(())
    }) {
        Ok(()) => SUCCESS,
        Err(e) => e,
    }
}

fn guard(f: impl FnOnce() -> Result<(), CUresult>) -> CUresult {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(())) => SUCCESS,
        Ok(Err(e)) => e,
        Err(_) => UNKNOWN,
    }
}

unsafe fn out<T>(p: *mut T, v: T) -> Result<(), CUresult> {
    if p.is_null() {
        return Err(INVALID_VALUE);
    }
    p.write(v);
    Ok(())
}

fn initialised() -> Result<(), CUresult> {
    with(|p| if p.init { Ok(()) } else { Err(NOT_INITIALIZED) })
}

// ---------------------------------------------------------------------------------------------
// The C API.

type Ptr = *mut c_void;

#[no_mangle]
pub unsafe extern "C" fn cuInit(_flags: c_uint) -> CUresult {
    guard(|| {
        EPOCH.get_or_init(Instant::now);
        with(|p| {
            p.init = true;
            Ok(())
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDriverGetVersion(v: *mut c_int) -> CUresult {
    guard(|| out(v, 12040))
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetCount(n: *mut c_int) -> CUresult {
    guard(|| {
        initialised()?;
        out(n, 1)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGet(d: *mut c_int, ordinal: c_int) -> CUresult {
    guard(|| {
        initialised()?;
        if ordinal != 0 {
            return Err(INVALID_DEVICE);
        }
        out(d, 0)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetName(name: *mut c_char, len: c_int, dev: c_int) -> CUresult {
    guard(|| {
        initialised()?;
        if dev != 0 {
            return Err(INVALID_DEVICE);
        }
        if name.is_null() || len <= 0 {
            return Err(INVALID_VALUE);
        }
        let s = b"carve stand-in GPU (NVIDIA H100 80GB HBM3)";
        let n = s.len().min(len as usize - 1);
        std::ptr::copy_nonoverlapping(s.as_ptr() as *const c_char, name, n);
        *name.add(n) = 0;
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceTotalMem_v2(bytes: *mut size_t, dev: c_int) -> CUresult {
    guard(|| {
        initialised()?;
        if dev != 0 {
            return Err(INVALID_DEVICE);
        }
        out(bytes, total_bytes() as size_t)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetAttribute(v: *mut c_int, attr: c_int, dev: c_int) -> CUresult {
    guard(|| {
        initialised()?;
        if dev != 0 {
            return Err(INVALID_DEVICE);
        }
        // A few attributes with H100 values; the rest 0.
        let val = match attr {
            1 => 1024, // MAX_THREADS_PER_BLOCK
            16 => 132, // MULTIPROCESSOR_COUNT
            75 => 9,   // COMPUTE_CAPABILITY_MAJOR
            76 => 0,   // COMPUTE_CAPABILITY_MINOR
            10 => 32,  // WARP_SIZE
            _ => 0,
        };
        out(v, val)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxRetain(ctx: *mut Ptr, dev: c_int) -> CUresult {
    guard(|| {
        initialised()?;
        if dev != 0 {
            return Err(INVALID_DEVICE);
        }
        out(ctx, 0x1 as Ptr)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxRelease_v2(_dev: c_int) -> CUresult {
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxCreate_v2(ctx: *mut Ptr, _flags: c_uint, dev: c_int) -> CUresult {
    cuDevicePrimaryCtxRetain(ctx, dev)
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxDestroy_v2(_ctx: Ptr) -> CUresult {
    guard(|| {
        let streams: Vec<u64> = with(|p| Ok(p.streams.keys().copied().collect()))?;
        for s in streams {
            sync_stream(s)?;
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxSetCurrent(_ctx: Ptr) -> CUresult {
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetCurrent(ctx: *mut Ptr) -> CUresult {
    guard(|| out(ctx, 0x1 as Ptr))
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxSynchronize() -> CUresult {
    guard(|| {
        initialised()?;
        let streams: Vec<u64> = with(|p| {
            stream(p, 0)?;
            Ok(p.streams.keys().copied().collect())
        })?;
        for s in streams {
            sync_stream(s)?;
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamCreate(s: *mut Ptr, _flags: c_uint) -> CUresult {
    guard(|| {
        let h = with(|p| {
            if !p.init {
                return Err(NOT_INITIALIZED);
            }
            let h = handle(p);
            p.streams.insert(h, new_stream());
            Ok(h)
        })?;
        out(s, h as Ptr)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamDestroy_v2(s: Ptr) -> CUresult {
    guard(|| {
        sync_stream(s as u64)?;
        with(|p| {
            p.streams
                .remove(&(s as u64))
                .map(|_| ())
                .ok_or(INVALID_HANDLE)
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamSynchronize(s: Ptr) -> CUresult {
    guard(|| sync_stream(s as u64))
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamQuery(s: Ptr) -> CUresult {
    guard(|| {
        let n = with(|p| Ok(stream(p, s as u64)?.inflight.load(Acquire)))?;
        if n == 0 {
            Ok(())
        } else {
            Err(NOT_READY)
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuEventCreate(e: *mut Ptr, _flags: c_uint) -> CUresult {
    guard(|| {
        let h = with(|p| {
            let h = handle(p);
            p.events.insert(
                h,
                Arc::new(Event {
                    at: Mutex::new(None),
                    cv: Condvar::new(),
                }),
            );
            Ok(h)
        })?;
        out(e, h as Ptr)
    })
}

fn event(h: Ptr) -> Result<Arc<Event>, CUresult> {
    with(|p| p.events.get(&(h as u64)).cloned().ok_or(INVALID_HANDLE))
}

#[no_mangle]
pub unsafe extern "C" fn cuEventRecord(e: Ptr, s: Ptr) -> CUresult {
    guard(|| {
        let ev = event(e)?;
        *ev.at.lock().unwrap_or_else(|p| p.into_inner()) = None;
        enqueue(s as u64, Job::Event(ev))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuEventQuery(e: Ptr) -> CUresult {
    guard(|| {
        let ev = event(e)?;
        let done = ev.at.lock().unwrap_or_else(|p| p.into_inner()).is_some();
        if done {
            Ok(())
        } else {
            Err(NOT_READY)
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuEventSynchronize(e: Ptr) -> CUresult {
    guard(|| {
        let ev = event(e)?;
        let mut g = ev.at.lock().unwrap_or_else(|p| p.into_inner());
        while g.is_none() {
            g = ev.cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuEventElapsedTime(ms: *mut f32, a: Ptr, b: Ptr) -> CUresult {
    guard(|| {
        let (a, b) = (event(a)?, event(b)?);
        let ta = (*a.at.lock().unwrap_or_else(|p| p.into_inner())).ok_or(NOT_READY)?;
        let tb = (*b.at.lock().unwrap_or_else(|p| p.into_inner())).ok_or(NOT_READY)?;
        let d = if tb >= ta {
            (tb - ta).as_secs_f32()
        } else {
            -(ta - tb).as_secs_f32()
        };
        out(ms, d * 1000.0)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuEventDestroy_v2(e: Ptr) -> CUresult {
    guard(|| {
        with(|p| {
            p.events
                .remove(&(e as u64))
                .map(|_| ())
                .ok_or(INVALID_HANDLE)
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAlloc_v2(d: *mut u64, bytes: size_t) -> CUresult {
    guard(|| {
        if d.is_null() {
            return Err(INVALID_VALUE);
        }
        out(d, alloc(bytes as u64)?)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocManaged(d: *mut u64, bytes: size_t, _flags: c_uint) -> CUresult {
    cuMemAlloc_v2(d, bytes)
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocAsync(d: *mut u64, bytes: size_t, _s: Ptr) -> CUresult {
    cuMemAlloc_v2(d, bytes)
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocPitch_v2(
    d: *mut u64,
    pitch: *mut size_t,
    width: size_t,
    height: size_t,
    _elem: c_uint,
) -> CUresult {
    guard(|| {
        if d.is_null() || pitch.is_null() {
            return Err(INVALID_VALUE);
        }
        let p = width.div_ceil(512) * 512;
        out(d, alloc((p * height) as u64)?)?;
        out(pitch, p)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemFree_v2(d: u64) -> CUresult {
    free(d)
}

#[no_mangle]
pub unsafe extern "C" fn cuMemFreeAsync(d: u64, _s: Ptr) -> CUresult {
    free(d)
}

#[no_mangle]
pub unsafe extern "C" fn cuMemCreate(
    h: *mut u64,
    bytes: size_t,
    _prop: Ptr,
    _flags: u64,
) -> CUresult {
    cuMemAlloc_v2(h, bytes)
}

#[no_mangle]
pub unsafe extern "C" fn cuMemRelease(h: u64) -> CUresult {
    free(h)
}

#[repr(C)]
pub struct ArrayDescriptor {
    width: size_t,
    height: size_t,
    format: c_uint,
    channels: c_uint,
}

#[no_mangle]
pub unsafe extern "C" fn cuArrayCreate_v2(a: *mut u64, desc: *const ArrayDescriptor) -> CUresult {
    guard(|| {
        if desc.is_null() || a.is_null() {
            return Err(INVALID_VALUE);
        }
        let d = &*desc;
        let elem = match d.format {
            0x01 | 0x08 => 1,
            0x02 | 0x09 | 0x10 => 2,
            _ => 4,
        };
        let bytes = (d.width * d.height.max(1)) as u64 * elem * d.channels.max(1) as u64;
        out(a, alloc(bytes)?)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuArrayDestroy(a: u64) -> CUresult {
    free(a)
}

#[no_mangle]
pub unsafe extern "C" fn cuMemGetInfo_v2(free_b: *mut size_t, total: *mut size_t) -> CUresult {
    guard(|| {
        initialised()?;
        let t = total_bytes();
        let _lock = Flock::take("mem.lock");
        out(free_b, t.saturating_sub(node_used()) as size_t)?;
        out(total, t as size_t)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleLoadData(m: *mut Ptr, _image: *const c_void) -> CUresult {
    guard(|| {
        let h = with(|p| {
            if !p.init {
                return Err(NOT_INITIALIZED);
            }
            p.modules += 1;
            Ok(handle(p))
        })?;
        out(m, h as Ptr)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleUnload(_m: Ptr) -> CUresult {
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleGetFunction(f: *mut Ptr, m: Ptr, name: *const c_char) -> CUresult {
    guard(|| {
        if m.is_null() || name.is_null() {
            return Err(INVALID_VALUE);
        }
        let n = CStr::from_ptr(name).to_string_lossy().into_owned();
        if n != "spin" {
            return Err(NOT_FOUND);
        }
        let h = with(|p| {
            let h = handle(p);
            p.functions.insert(h, n);
            Ok(h)
        })?;
        out(f, h as Ptr)
    })
}

fn launch(f: Ptr, stream: Ptr, params: *mut Ptr) -> Result<(), CUresult> {
    let known = with(|p| Ok(p.functions.contains_key(&(f as u64))))?;
    if !known {
        return Err(INVALID_HANDLE);
    }
    // SAFETY: the spin kernel's first parameter points at a u64 of nanoseconds.
    let ns = unsafe {
        if params.is_null() || (*params).is_null() {
            return Err(INVALID_VALUE);
        }
        *((*params) as *const u64)
    };
    enqueue(stream as u64, Job::Kernel(ns.min(60_000_000_000)))
}

#[no_mangle]
pub unsafe extern "C" fn cuLaunchKernel(
    f: Ptr,
    _gx: c_uint,
    _gy: c_uint,
    _gz: c_uint,
    _bx: c_uint,
    _by: c_uint,
    _bz: c_uint,
    _shmem: c_uint,
    stream: Ptr,
    params: *mut Ptr,
    _extra: *mut Ptr,
) -> CUresult {
    guard(|| launch(f, stream, params))
}

#[no_mangle]
pub unsafe extern "C" fn cuLaunchCooperativeKernel(
    f: Ptr,
    _gx: c_uint,
    _gy: c_uint,
    _gz: c_uint,
    _bx: c_uint,
    _by: c_uint,
    _bz: c_uint,
    _shmem: c_uint,
    stream: Ptr,
    params: *mut Ptr,
) -> CUresult {
    guard(|| launch(f, stream, params))
}

/// `CUlaunchConfig`: grid and block dims, shared memory, stream, attributes.
#[repr(C)]
pub struct LaunchConfig {
    grid: [c_uint; 3],
    block: [c_uint; 3],
    shmem: c_uint,
    stream: Ptr,
    attrs: Ptr,
    num_attrs: c_uint,
}

#[no_mangle]
pub unsafe extern "C" fn cuLaunchKernelEx(
    config: *const LaunchConfig,
    f: Ptr,
    params: *mut Ptr,
    _extra: *mut Ptr,
) -> CUresult {
    guard(|| {
        if config.is_null() {
            return Err(INVALID_VALUE);
        }
        launch(f, (*config).stream, params)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphLaunch(exec: Ptr, stream: Ptr) -> CUresult {
    guard(|| {
        if exec.is_null() {
            return Err(INVALID_VALUE);
        }
        enqueue(stream as u64, Job::Kernel(0))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGetErrorName(e: CUresult, s: *mut *const c_char) -> CUresult {
    guard(|| {
        let n: &'static CStr = match e {
            SUCCESS => c"CUDA_SUCCESS",
            INVALID_VALUE => c"CUDA_ERROR_INVALID_VALUE",
            OUT_OF_MEMORY => c"CUDA_ERROR_OUT_OF_MEMORY",
            NOT_INITIALIZED => c"CUDA_ERROR_NOT_INITIALIZED",
            INVALID_DEVICE => c"CUDA_ERROR_INVALID_DEVICE",
            INVALID_HANDLE => c"CUDA_ERROR_INVALID_HANDLE",
            NOT_FOUND => c"CUDA_ERROR_NOT_FOUND",
            NOT_READY => c"CUDA_ERROR_NOT_READY",
            800 => c"CUDA_ERROR_NOT_PERMITTED",
            _ => c"CUDA_ERROR_UNKNOWN",
        };
        out(s, n.as_ptr())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGetErrorString(e: CUresult, s: *mut *const c_char) -> CUresult {
    cuGetErrorName(e, s)
}

macro_rules! symbols {
    ($($f:ident),* $(,)?) => {
        fn lookup(name: &str) -> Option<*mut c_void> {
            match name { $( stringify!($f) => Some($f as *mut c_void), )* _ => None }
        }
        /// Every function this library implements.
        pub const SYMBOLS: &[&str] = &[$(stringify!($f)),*];
    };
}

symbols!(
    cuInit,
    cuDriverGetVersion,
    cuDeviceGetCount,
    cuDeviceGet,
    cuDeviceGetName,
    cuDeviceTotalMem_v2,
    cuDeviceGetAttribute,
    cuDevicePrimaryCtxRetain,
    cuDevicePrimaryCtxRelease_v2,
    cuCtxCreate_v2,
    cuCtxDestroy_v2,
    cuCtxSetCurrent,
    cuCtxGetCurrent,
    cuCtxSynchronize,
    cuStreamCreate,
    cuStreamDestroy_v2,
    cuStreamSynchronize,
    cuStreamQuery,
    cuEventCreate,
    cuEventRecord,
    cuEventQuery,
    cuEventSynchronize,
    cuEventElapsedTime,
    cuEventDestroy_v2,
    cuMemAlloc_v2,
    cuMemAllocManaged,
    cuMemAllocAsync,
    cuMemAllocPitch_v2,
    cuMemFree_v2,
    cuMemFreeAsync,
    cuMemCreate,
    cuMemRelease,
    cuArrayCreate_v2,
    cuArrayDestroy,
    cuMemGetInfo_v2,
    cuModuleLoadData,
    cuModuleUnload,
    cuModuleGetFunction,
    cuLaunchKernel,
    cuLaunchCooperativeKernel,
    cuLaunchKernelEx,
    cuGraphLaunch,
    cuGetErrorName,
    cuGetErrorString,
    cuGetProcAddress,
    cuGetProcAddress_v2,
);

/// The `_v2` (or other versioned) name behind a base name, as the runtime asks for it.
fn versioned(base: &str) -> Option<*mut c_void> {
    lookup(base).or_else(|| lookup(&format!("{base}_v2")))
}

#[no_mangle]
pub unsafe extern "C" fn cuGetProcAddress(
    symbol: *const c_char,
    pfn: *mut Ptr,
    _version: c_int,
    _flags: u64,
) -> CUresult {
    guard(|| {
        if symbol.is_null() || pfn.is_null() {
            return Err(INVALID_VALUE);
        }
        let name = CStr::from_ptr(symbol).to_string_lossy();
        match versioned(&name) {
            Some(f) => out(pfn, f),
            None => {
                *pfn = std::ptr::null_mut();
                Err(NOT_FOUND)
            }
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGetProcAddress_v2(
    symbol: *const c_char,
    pfn: *mut Ptr,
    version: c_int,
    flags: u64,
    status: *mut c_int,
) -> CUresult {
    let r = cuGetProcAddress(symbol, pfn, version, flags);
    if !status.is_null() {
        // CU_GET_PROC_ADDRESS_SUCCESS = 0, SYMBOL_NOT_FOUND = 1.
        *status = if r == SUCCESS { 0 } else { 1 };
    }
    r
}
