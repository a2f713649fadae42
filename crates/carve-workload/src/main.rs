//! `carve-workload`: a CUDA workload for tests and benchmarks. It launches spin kernels of a chosen
//! length through the CUDA driver API only, loaded at run time from `libcuda.so.1` (the real
//! driver, or carve's stand-in on the library path), with entry points resolved through
//! `cuGetProcAddress` as the CUDA runtime does (falling back to `dlsym`). On a real GPU the kernel
//! is the PTX below: a loop on `%globaltimer` until its `u64` parameter of nanoseconds has passed.
//!
//! ```text
//! carve-workload --kernel-us N [--kernel-us-max M] --seconds S [--alloc-mib M] [--streams K] [--gap-us G] [--json]
//! carve-workload --launch-bench COUNT [--json]
//! ```
//!
//! Each stream is worked by a thread of its own, with at most two kernels in flight (it waits on
//! the older one's event before launching again). Kernel lengths are N µs, or log-uniform in
//! N..=M. Reports kernels launched, GPU time requested (the kernels' lengths summed), wall time,
//! the share (GPU time / wall time) and the latency from launch to completion (p50/p95/p99).
//! `--launch-bench` times back-to-back launches of empty kernels instead.
//!
//! Exit status: 0 done, 2 bad arguments, 3 out of device memory, 4 any other CUDA failure
//! (including no driver).

use carve_cuda_abi::*;
use libloading::Library;
use std::ffi::{c_char, c_void, CString};
use std::time::Instant;

/// The spin kernel: `spin(u64 ns)` returns once `ns` nanoseconds of `%globaltimer` have passed.
const PTX: &str = r#".version 7.0
.target sm_70
.address_size 64

.visible .entry spin(.param .u64 spin_ns)
{
    .reg .pred %p;
    .reg .b64 %rd<5>;

    ld.param.u64 %rd1, [spin_ns];
    mov.u64 %rd2, %globaltimer;
$L_wait:
    mov.u64 %rd3, %globaltimer;
    sub.u64 %rd4, %rd3, %rd2;
    setp.lt.u64 %p, %rd4, %rd1;
    @%p bra $L_wait;
    ret;
}
"#;

type Ptr = *mut c_void;

struct Args {
    kernel_us: u64,
    /// Kernel lengths drawn log-uniformly from kernel_us..=kernel_us_max.
    kernel_us_max: u64,
    /// Only time this many back-to-back launches of empty kernels (launch overhead).
    launch_bench: u64,
    seconds: f64,
    alloc_mib: u64,
    streams: usize,
    /// Idle this long after each kernel completes (an interactive tenant), µs.
    gap_us: u64,
    json: bool,
}

const USAGE: &str = "usage: carve-workload --kernel-us N [--kernel-us-max M] --seconds S [--alloc-mib M] [--streams K] [--gap-us G] [--json]\n       carve-workload --launch-bench COUNT [--json]";

fn usage(msg: &str) -> ! {
    eprintln!("carve-workload: {msg}\n{USAGE}");
    std::process::exit(2)
}

fn args() -> Args {
    let mut a = Args {
        kernel_us: 1000,
        kernel_us_max: 0,
        launch_bench: 0,
        seconds: 1.0,
        alloc_mib: 0,
        streams: 1,
        gap_us: 0,
        json: false,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        let flag = v[i].as_str();
        if flag == "--json" {
            a.json = true;
            i += 1;
            continue;
        }
        if flag == "--help" || flag == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let val = v
            .get(i + 1)
            .unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        let num = || -> u64 {
            val.parse()
                .unwrap_or_else(|_| usage(&format!("{flag}: not a whole number: {val}")))
        };
        match flag {
            "--kernel-us" => a.kernel_us = num(),
            "--kernel-us-max" => a.kernel_us_max = num(),
            "--launch-bench" => a.launch_bench = num(),
            "--alloc-mib" => a.alloc_mib = num(),
            "--streams" => a.streams = num().min(1 << 20) as usize,
            "--gap-us" => a.gap_us = num().min(60_000_000),
            "--seconds" => {
                a.seconds = val
                    .parse()
                    .unwrap_or_else(|_| usage(&format!("--seconds: not a number: {val}")))
            }
            other => usage(&format!("unknown argument {other}")),
        }
        i += 2;
    }
    if a.kernel_us_max < a.kernel_us {
        a.kernel_us_max = a.kernel_us;
    }
    if a.kernel_us == 0 || a.kernel_us_max > 60_000_000 {
        usage("--kernel-us must be 1..=60000000");
    }
    if !(a.seconds > 0.0 && a.seconds <= 86400.0) {
        usage("--seconds must be more than 0 and at most 86400");
    }
    if a.streams == 0 || a.streams > 64 {
        usage("--streams must be 1..=64");
    }
    if a.alloc_mib > (1 << 30) {
        usage("--alloc-mib is too large");
    }
    a
}

// ---------------------------------------------------------------------------------------------
// The driver, found at run time.

struct Cuda {
    lib: &'static Library,
    v2: Option<PFN_cuGetProcAddress_v2>,
    v1: Option<PFN_cuGetProcAddress>,
}

fn fail(msg: &str) -> ! {
    eprintln!("carve-workload: {msg}");
    std::process::exit(4)
}

impl Cuda {
    fn load() -> Cuda {
        // SAFETY: loading the driver by its soname, from the library path as the runtime does.
        let lib = unsafe { Library::new("libcuda.so.1") }
            .unwrap_or_else(|e| fail(&format!("cannot load libcuda.so.1: {e}")));
        // Never unloaded (the driver has threads of its own), as the CUDA runtime never does.
        let lib: &'static Library = Box::leak(Box::new(lib));
        // SAFETY: the documented signatures of cuGetProcAddress (11.3+) and its v2 (12.0+).
        let (v2, v1) = unsafe {
            (
                lib.get::<PFN_cuGetProcAddress_v2>(b"cuGetProcAddress_v2\0")
                    .ok()
                    .map(|f| *f),
                lib.get::<PFN_cuGetProcAddress>(b"cuGetProcAddress\0")
                    .ok()
                    .map(|f| *f),
            )
        };
        Cuda { lib, v2, v1 }
    }

    /// The entry point of a driver function by its base name (`cuMemAlloc`): through
    /// `cuGetProcAddress`, else `dlsym` of the versioned then the plain name.
    ///
    /// # Safety
    /// `T` is the entry point's function pointer type (`carve_cuda_abi::PFN_*` of the name the
    /// driver gives for `base` at CUDA 12.0).
    unsafe fn f<T: Copy>(&self, base: &str) -> T {
        assert_eq!(std::mem::size_of::<T>(), std::mem::size_of::<Ptr>());
        let c = CString::new(base).expect("no NUL");
        let mut p: Ptr = std::ptr::null_mut();
        let mut status = 0;
        let r = match (self.v2, self.v1) {
            // SAFETY: the driver's cuGetProcAddress_v2 with a C string and live out-pointers.
            (Some(v2), _) => unsafe {
                v2(
                    c.as_ptr(),
                    &mut p,
                    CUDA_VERSION_12_0,
                    CU_GET_PROC_ADDRESS_DEFAULT,
                    &mut status,
                )
            },
            // SAFETY: the driver's cuGetProcAddress with a C string and a live out-pointer.
            (None, Some(v1)) => unsafe {
                v1(
                    c.as_ptr(),
                    &mut p,
                    CUDA_VERSION_12_0,
                    CU_GET_PROC_ADDRESS_DEFAULT,
                )
            },
            (None, None) => CUDA_ERROR_NOT_FOUND,
        };
        if r != CUDA_SUCCESS {
            p = std::ptr::null_mut();
        }
        if p.is_null() {
            for name in [format!("{base}_v2"), base.to_string()] {
                // SAFETY: looking a symbol up as a plain pointer, which any symbol is.
                if let Ok(s) = unsafe { self.lib.get::<Ptr>(name.as_bytes()) } {
                    p = *s;
                    break;
                }
            }
        }
        if p.is_null() {
            fail(&format!("the driver has no {base}"));
        }
        // SAFETY: `p` is the driver's entry point for `base` and `T` its type (the caller's
        // contract), a function pointer as large as `p` (asserted above).
        unsafe { std::mem::transmute_copy(&p) }
    }
}

/// The functions used, resolved once. (Function pointers, so `Send` and `Sync`: the driver API
/// may be called from any thread.)
#[derive(Clone, Copy)]
struct Api {
    init: PFN_cuInit,
    device_get: PFN_cuDeviceGet,
    primary_retain: PFN_cuDevicePrimaryCtxRetain,
    primary_release: PFN_cuDevicePrimaryCtxRelease_v2,
    ctx_set: PFN_cuCtxSetCurrent,
    ctx_sync: PFN_cuCtxSynchronize,
    mem_info: PFN_cuMemGetInfo_v2,
    mem_alloc: PFN_cuMemAlloc_v2,
    mem_free: PFN_cuMemFree_v2,
    module_load: PFN_cuModuleLoadData,
    module_unload: PFN_cuModuleUnload,
    get_function: PFN_cuModuleGetFunction,
    stream_create: PFN_cuStreamCreate,
    stream_destroy: PFN_cuStreamDestroy_v2,
    event_create: PFN_cuEventCreate,
    event_record: PFN_cuEventRecord,
    event_sync: PFN_cuEventSynchronize,
    event_destroy: PFN_cuEventDestroy_v2,
    launch: PFN_cuLaunchKernel,
    error_name: PFN_cuGetErrorName,
}

impl Api {
    fn resolve(cu: &Cuda) -> Api {
        // SAFETY: each field's type is its function's entry-point type (at CUDA 12.0 the base
        // names below resolve to the `_v2` functions where cuda.h has them, and
        // cuDevicePrimaryCtxRelease has the type of its `_v2`).
        unsafe {
            Api {
                init: cu.f("cuInit"),
                device_get: cu.f("cuDeviceGet"),
                primary_retain: cu.f("cuDevicePrimaryCtxRetain"),
                primary_release: cu.f("cuDevicePrimaryCtxRelease"),
                ctx_set: cu.f("cuCtxSetCurrent"),
                ctx_sync: cu.f("cuCtxSynchronize"),
                mem_info: cu.f("cuMemGetInfo"),
                mem_alloc: cu.f("cuMemAlloc"),
                mem_free: cu.f("cuMemFree"),
                module_load: cu.f("cuModuleLoadData"),
                module_unload: cu.f("cuModuleUnload"),
                get_function: cu.f("cuModuleGetFunction"),
                stream_create: cu.f("cuStreamCreate"),
                stream_destroy: cu.f("cuStreamDestroy"),
                event_create: cu.f("cuEventCreate"),
                event_record: cu.f("cuEventRecord"),
                event_sync: cu.f("cuEventSynchronize"),
                event_destroy: cu.f("cuEventDestroy"),
                launch: cu.f("cuLaunchKernel"),
                error_name: cu.f("cuGetErrorName"),
            }
        }
    }

    /// Exits on failure: 3 for out of memory, 4 for anything else.
    fn check(&self, what: &str, r: CUresult) {
        if r == 0 {
            return;
        }
        let mut s: *const c_char = std::ptr::null();
        // SAFETY: cuGetErrorName gives a static C string or leaves the pointer null.
        let name = unsafe {
            if (self.error_name)(r, &mut s) == 0 && !s.is_null() {
                std::ffi::CStr::from_ptr(s).to_string_lossy().into_owned()
            } else {
                format!("CUDA error {r}")
            }
        };
        if r == CUDA_ERROR_OUT_OF_MEMORY {
            eprintln!("carve-workload: {what}: out of device memory ({name})");
            std::process::exit(3)
        }
        fail(&format!("{what} failed: {name} ({r})"))
    }
}

// ---------------------------------------------------------------------------------------------
// The work.

/// A thread's results.
#[derive(Default)]
struct Tally {
    kernels: u64,
    gpu_ns: u64,
    /// Launch to completion, ms.
    latency_ms: Vec<f64>,
}

/// Launches `spin(ns)` on a stream.
fn launch(api: &Api, func: CUfunction, stream: CUstream, ns: u64) -> CUresult {
    // The driver copies the parameter at launch.
    let mut ns = ns;
    let mut params = [&mut ns as *mut u64 as Ptr];
    // SAFETY: one u64 parameter for a one-parameter kernel; grid and block of one.
    unsafe {
        (api.launch)(
            func,
            1,
            1,
            1,
            1,
            1,
            1,
            0,
            stream,
            params.as_mut_ptr(),
            std::ptr::null_mut(),
        )
    }
}

/// One stream's loop: at most two kernels in flight, until `until`.
fn work(
    api: &Api,
    a: &Args,
    ctx: CUcontext,
    func: CUfunction,
    stream: CUstream,
    seed: u64,
    until: Instant,
) -> Tally {
    let mut t = Tally::default();
    // SAFETY: driver calls with valid out-pointers and handles this process created.
    unsafe {
        api.check("cuCtxSetCurrent", (api.ctx_set)(ctx));
        let mut ev = [std::ptr::null_mut(); 2];
        for e in &mut ev {
            api.check("cuEventCreate", (api.event_create)(e, 0));
        }
        let mut launched: [Option<Instant>; 2] = [None; 2];
        let mut rng = seed | 1;
        let (lo, hi) = ((a.kernel_us as f64).ln(), (a.kernel_us_max as f64).ln());
        let mut k = 0usize;
        let wait = |slot: usize, launched: &mut [Option<Instant>; 2], t: &mut Tally| {
            if let Some(at) = launched[slot].take() {
                api.check("cuEventSynchronize", (api.event_sync)(ev[slot]));
                t.latency_ms.push(at.elapsed().as_secs_f64() * 1e3);
            }
        };
        while Instant::now() < until {
            let slot = k % 2;
            wait(slot, &mut launched, &mut t);
            let us = if hi > lo {
                // xorshift64: a log-uniform length in kernel_us..=kernel_us_max.
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let u = (rng >> 11) as f64 / (1u64 << 53) as f64;
                (lo + (hi - lo) * u).exp()
            } else {
                a.kernel_us as f64
            };
            let ns = (us * 1000.0) as u64;
            launched[slot] = Some(Instant::now());
            api.check("cuLaunchKernel", launch(api, func, stream, ns));
            api.check("cuEventRecord", (api.event_record)(ev[slot], stream));
            t.kernels += 1;
            t.gpu_ns += ns;
            k += 1;
            if a.gap_us > 0 {
                // Interactive: wait for the answer, then think.
                wait(slot, &mut launched, &mut t);
                std::thread::sleep(std::time::Duration::from_micros(a.gap_us));
            }
        }
        for slot in [k % 2, (k + 1) % 2] {
            wait(slot, &mut launched, &mut t);
        }
        for e in ev {
            api.check("cuEventDestroy", (api.event_destroy)(e));
        }
    }
    t
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let a = args();
    let cu = Cuda::load();
    let api = Api::resolve(&cu);
    const MIB: usize = 1024 * 1024;
    // SAFETY: plain driver API calls with valid out-pointers throughout.
    unsafe {
        api.check("cuInit", (api.init)(0));
        let mut dev = 0;
        api.check("cuDeviceGet", (api.device_get)(&mut dev, 0));
        // The primary context, as the CUDA runtime uses.
        let mut ctx: CUcontext = std::ptr::null_mut();
        api.check(
            "cuDevicePrimaryCtxRetain",
            (api.primary_retain)(&mut ctx, dev),
        );
        api.check("cuCtxSetCurrent", (api.ctx_set)(ctx));
        let (mut free, mut total) = (0usize, 0usize);
        api.check("cuMemGetInfo", (api.mem_info)(&mut free, &mut total));
        let mut buf = 0u64;
        if a.alloc_mib > 0 {
            let bytes = usize::try_from(a.alloc_mib)
                .ok()
                .and_then(|m| m.checked_mul(MIB))
                .unwrap_or(usize::MAX);
            api.check(
                &format!("cuMemAlloc of {} MiB", a.alloc_mib),
                (api.mem_alloc)(&mut buf, bytes),
            );
        }
        let ptx = CString::new(PTX).expect("no NUL");
        let mut module: CUmodule = std::ptr::null_mut();
        api.check(
            "cuModuleLoadData",
            (api.module_load)(&mut module, ptx.as_ptr() as *const c_void),
        );
        let mut func: CUfunction = std::ptr::null_mut();
        api.check(
            "cuModuleGetFunction(spin)",
            (api.get_function)(&mut func, module, c"spin".as_ptr()),
        );
        let mut streams = Vec::new();
        for _ in 0..a.streams {
            let mut s: CUstream = std::ptr::null_mut();
            api.check("cuStreamCreate", (api.stream_create)(&mut s, 0));
            streams.push(s as usize);
        }

        if a.launch_bench > 0 {
            let s0 = streams[0] as CUstream;
            let t = Instant::now();
            for _ in 0..a.launch_bench {
                api.check("cuLaunchKernel", launch(&api, func, s0, 0));
            }
            let per = t.elapsed().as_nanos() as f64 / a.launch_bench as f64;
            api.check("cuCtxSynchronize", (api.ctx_sync)());
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({"launches": a.launch_bench, "ns_per_launch": per})
                );
            } else {
                println!("{} launches: {per:.0} ns per launch", a.launch_bench);
            }
            return;
        }

        let start = Instant::now();
        let until = start + std::time::Duration::from_secs_f64(a.seconds);
        let (ctx_u, func_u) = (ctx as usize, func as usize);
        let seed = 0x9E37_79B9_7F4A_7C15u64 ^ std::process::id() as u64;
        let tallies: Vec<Tally> = std::thread::scope(|scope| {
            let hs: Vec<_> = streams
                .iter()
                .enumerate()
                .map(|(i, &s)| {
                    let (api, a) = (&api, &a);
                    let seed = seed.wrapping_mul(i as u64 + 1);
                    scope.spawn(move || {
                        work(
                            api,
                            a,
                            ctx_u as CUcontext,
                            func_u as CUfunction,
                            s as CUstream,
                            seed,
                            until,
                        )
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().unwrap_or_else(|_| fail("a stream thread failed")))
                .collect()
        });
        api.check("cuCtxSynchronize", (api.ctx_sync)());
        let wall = start.elapsed().as_secs_f64();

        for s in streams {
            api.check("cuStreamDestroy", (api.stream_destroy)(s as CUstream));
        }
        api.check("cuModuleUnload", (api.module_unload)(module));
        if buf != 0 {
            api.check("cuMemFree", (api.mem_free)(buf));
        }
        api.check("cuDevicePrimaryCtxRelease", (api.primary_release)(dev));

        let kernels: u64 = tallies.iter().map(|t| t.kernels).sum();
        let gpu = tallies.iter().map(|t| t.gpu_ns).sum::<u64>() as f64 / 1e9;
        let mut lat: Vec<f64> = tallies.into_iter().flat_map(|t| t.latency_ms).collect();
        lat.sort_by(|x, y| x.total_cmp(y));
        let (p50, p95, p99) = (pct(&lat, 0.5), pct(&lat, 0.95), pct(&lat, 0.99));
        let share = gpu / wall;
        if a.json {
            println!(
                "{}",
                serde_json::json!({
                    "kernels": kernels, "kernel_us": a.kernel_us, "kernel_us_max": a.kernel_us_max,
                    "streams": a.streams, "wall_s": wall, "gpu_s": gpu, "share": share,
                    "p50_ms": p50, "p95_ms": p95, "p99_ms": p99,
                    "memory_total_mib": total / MIB, "memory_free_mib": free / MIB,
                    "alloc_mib": a.alloc_mib,
                })
            );
        } else {
            let len = if a.kernel_us_max > a.kernel_us {
                format!("{}–{} µs", a.kernel_us, a.kernel_us_max)
            } else {
                format!("{} µs", a.kernel_us)
            };
            println!(
                "{kernels} kernels of {len} on {} stream(s) in {wall:.2} s: GPU time {gpu:.3} s, share {:.1}%\n\
                 launch to completion: p50 {p50:.3} ms, p95 {p95:.3} ms, p99 {p99:.3} ms\n\
                 device memory: {} MiB total, {} MiB free at start, {} MiB allocated",
                a.streams,
                100.0 * share,
                total / MIB,
                free / MIB,
                a.alloc_mib
            );
        }
    }
}
