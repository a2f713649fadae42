//! `carve-spin`: a CUDA workload for tests and benchmarks. It launches spin kernels of a chosen
//! length through the driver API, found at run time in `libcuda.so.1` (the real driver, or carve's
//! stand-in on the library path) with entry points resolved through `cuGetProcAddress`, as the
//! CUDA runtime does. On a real GPU the kernel comes from PTX text below (a `%globaltimer` loop).
//!
//! `carve-spin --kernel-us N [--kernel-us-max M] --seconds S [--alloc-mib M] [--streams K] [--json]`
//! (kernel lengths log-uniform in N..=M), or `carve-spin --launch-bench COUNT` (time per launch).
//! Exit 0 done, 2 bad arguments, 3 out of memory, 4 a CUDA error.

use libloading::Library;
use std::ffi::{c_char, c_int, c_uint, c_void, CString};
use std::time::Instant;

const PTX: &str = r#"
.version 7.0
.target sm_70
.address_size 64
.visible .entry spin(.param .u64 ns)
{
    .reg .u64 %t0, %t1, %d, %n;
    .reg .pred %p;
    ld.param.u64 %n, [ns];
    mov.u64 %t0, %globaltimer;
LOOP:
    mov.u64 %t1, %globaltimer;
    sub.u64 %d, %t1, %t0;
    setp.lt.u64 %p, %d, %n;
    @%p bra LOOP;
    ret;
}
"#;

type Ptr = *mut c_void;
type R = c_int;

struct Args {
    kernel_us: u64,
    /// Kernel lengths drawn log-uniformly from kernel_us..=kernel_us_max.
    kernel_us_max: u64,
    /// Only time this many back-to-back launches of empty kernels (launch overhead).
    launch_bench: u64,
    seconds: f64,
    alloc_mib: u64,
    streams: usize,
    json: bool,
}

fn usage(msg: &str) -> ! {
    eprintln!("carve-spin: {msg}\nusage: carve-spin --kernel-us N [--kernel-us-max M] --seconds S [--alloc-mib M] [--streams K] [--json] | --launch-bench COUNT");
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
        json: false,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        let val = |i: usize| {
            v.get(i + 1)
                .unwrap_or_else(|| usage(&format!("{} needs a value", v[i])))
        };
        match v[i].as_str() {
            "--kernel-us" => {
                a.kernel_us = val(i)
                    .parse()
                    .unwrap_or_else(|_| usage("--kernel-us: a number"))
            }
            "--kernel-us-max" => {
                a.kernel_us_max = val(i)
                    .parse()
                    .unwrap_or_else(|_| usage("--kernel-us-max: a number"))
            }
            "--launch-bench" => {
                a.launch_bench = val(i)
                    .parse()
                    .unwrap_or_else(|_| usage("--launch-bench: a number"))
            }
            "--seconds" => {
                a.seconds = val(i)
                    .parse()
                    .unwrap_or_else(|_| usage("--seconds: a number"))
            }
            "--alloc-mib" => {
                a.alloc_mib = val(i)
                    .parse()
                    .unwrap_or_else(|_| usage("--alloc-mib: a number"))
            }
            "--streams" => {
                a.streams = val(i)
                    .parse()
                    .unwrap_or_else(|_| usage("--streams: a number"))
            }
            "--json" => {
                a.json = true;
                i += 1;
                continue;
            }
            other => usage(&format!("unknown argument {other}")),
        }
        i += 2;
    }
    if a.kernel_us_max < a.kernel_us {
        a.kernel_us_max = a.kernel_us;
    }
    if a.kernel_us == 0
        || !(a.seconds > 0.0 && a.seconds < 86400.0)
        || a.streams == 0
        || a.streams > 64
    {
        usage("kernel length, seconds and streams must be positive");
    }
    a
}

struct Cuda {
    _lib: Library,
    get: unsafe extern "C" fn(*const c_char, *mut Ptr, c_int, u64) -> R,
}

impl Cuda {
    fn load() -> Cuda {
        // SAFETY: loading the driver library by its soname.
        let lib = unsafe { Library::new("libcuda.so.1") }.unwrap_or_else(|e| {
            eprintln!("carve-spin: cannot load libcuda.so.1: {e}");
            std::process::exit(4)
        });
        // SAFETY: cuGetProcAddress has this signature (CUDA 11.3+).
        let get = unsafe {
            *lib.get::<unsafe extern "C" fn(*const c_char, *mut Ptr, c_int, u64) -> R>(
                b"cuGetProcAddress\0",
            )
            .unwrap_or_else(|e| {
                eprintln!("carve-spin: the driver has no cuGetProcAddress: {e}");
                std::process::exit(4)
            })
        };
        Cuda { _lib: lib, get }
    }

    fn f<T: Copy>(&self, name: &str) -> T {
        let c = CString::new(name).expect("no NUL");
        let mut p: Ptr = std::ptr::null_mut();
        // SAFETY: asking the driver for an entry point.
        let r = unsafe { (self.get)(c.as_ptr(), &mut p, 12000, 0) };
        if r != 0 || p.is_null() {
            eprintln!("carve-spin: the driver has no {name} (error {r})");
            std::process::exit(4)
        }
        assert_eq!(std::mem::size_of::<T>(), std::mem::size_of::<Ptr>());
        // SAFETY: T is the function pointer type of `name`.
        unsafe { std::mem::transmute_copy(&p) }
    }
}

fn check(what: &str, r: R) {
    if r == 2 {
        eprintln!("carve-spin: {what}: out of memory (CUDA_ERROR_OUT_OF_MEMORY)");
        std::process::exit(3)
    }
    if r != 0 {
        eprintln!("carve-spin: {what} failed with CUDA error {r}");
        std::process::exit(4)
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let a = args();
    let cu = Cuda::load();
    let init: unsafe extern "C" fn(c_uint) -> R = cu.f("cuInit");
    let device_get: unsafe extern "C" fn(*mut c_int, c_int) -> R = cu.f("cuDeviceGet");
    let ctx_create: unsafe extern "C" fn(*mut Ptr, c_uint, c_int) -> R = cu.f("cuCtxCreate");
    let mem_info: unsafe extern "C" fn(*mut usize, *mut usize) -> R = cu.f("cuMemGetInfo");
    let mem_alloc: unsafe extern "C" fn(*mut u64, usize) -> R = cu.f("cuMemAlloc");
    let mem_free: unsafe extern "C" fn(u64) -> R = cu.f("cuMemFree");
    let module_load: unsafe extern "C" fn(*mut Ptr, *const c_void) -> R = cu.f("cuModuleLoadData");
    let get_function: unsafe extern "C" fn(*mut Ptr, Ptr, *const c_char) -> R =
        cu.f("cuModuleGetFunction");
    let stream_create: unsafe extern "C" fn(*mut Ptr, c_uint) -> R = cu.f("cuStreamCreate");
    let event_create: unsafe extern "C" fn(*mut Ptr, c_uint) -> R = cu.f("cuEventCreate");
    let event_record: unsafe extern "C" fn(Ptr, Ptr) -> R = cu.f("cuEventRecord");
    let event_sync: unsafe extern "C" fn(Ptr) -> R = cu.f("cuEventSynchronize");
    let ctx_sync: unsafe extern "C" fn() -> R = cu.f("cuCtxSynchronize");
    #[allow(clippy::type_complexity)]
    let launch: unsafe extern "C" fn(
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
    ) -> R = cu.f("cuLaunchKernel");

    // SAFETY: plain driver API calls with valid out-pointers throughout.
    unsafe {
        check("cuInit", init(0));
        let mut dev = 0;
        check("cuDeviceGet", device_get(&mut dev, 0));
        let mut ctx: Ptr = std::ptr::null_mut();
        check("cuCtxCreate", ctx_create(&mut ctx, 0, dev));
        let (mut free, mut total) = (0usize, 0usize);
        check("cuMemGetInfo", mem_info(&mut free, &mut total));
        let mut buf = 0u64;
        if a.alloc_mib > 0 {
            check(
                "cuMemAlloc",
                mem_alloc(&mut buf, (a.alloc_mib * 1024 * 1024) as usize),
            );
        }
        let ptx = CString::new(PTX).expect("no NUL");
        let mut module: Ptr = std::ptr::null_mut();
        check(
            "cuModuleLoadData",
            module_load(&mut module, ptx.as_ptr() as *const c_void),
        );
        let mut func: Ptr = std::ptr::null_mut();
        check(
            "cuModuleGetFunction",
            get_function(&mut func, module, c"spin".as_ptr()),
        );
        let mut streams = Vec::new();
        for _ in 0..a.streams {
            let mut s: Ptr = std::ptr::null_mut();
            check("cuStreamCreate", stream_create(&mut s, 0));
            // Two events per stream: at most two kernels in flight.
            let mut e = [std::ptr::null_mut(); 2];
            for x in &mut e {
                check("cuEventCreate", event_create(x, 0));
            }
            streams.push((s, e, [None::<Instant>; 2], 0usize));
        }
        if a.launch_bench > 0 {
            let mut zero: u64 = 0;
            let s0 = streams[0].0;
            let t = Instant::now();
            for _ in 0..a.launch_bench {
                let mut params = [&mut zero as *mut u64 as Ptr];
                check(
                    "cuLaunchKernel",
                    launch(
                        func,
                        1,
                        1,
                        1,
                        1,
                        1,
                        1,
                        0,
                        s0,
                        params.as_mut_ptr(),
                        std::ptr::null_mut(),
                    ),
                );
            }
            let per = t.elapsed().as_nanos() as f64 / a.launch_bench as f64;
            check("cuCtxSynchronize", ctx_sync());
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
        let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ std::process::id() as u64;
        let (lo, hi) = ((a.kernel_us as f64).ln(), (a.kernel_us_max as f64).ln());
        let mut next_len = move || -> u64 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let u = (rng >> 11) as f64 / (1u64 << 53) as f64;
            ((lo + (hi - lo) * u).exp() * 1000.0) as u64
        };
        let mut gpu_ns = 0u64;
        let start = Instant::now();
        let mut kernels = 0u64;
        let mut lat = Vec::new();
        while start.elapsed().as_secs_f64() < a.seconds {
            for (s, ev, launched, k) in streams.iter_mut() {
                let slot = *k % 2;
                if let Some(t) = launched[slot] {
                    check("cuEventSynchronize", event_sync(ev[slot]));
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                }
                // The driver copies kernel parameters at launch.
                let mut ns = next_len();
                gpu_ns += ns;
                let mut params = [&mut ns as *mut u64 as Ptr];
                launched[slot] = Some(Instant::now());
                check(
                    "cuLaunchKernel",
                    launch(
                        func,
                        1,
                        1,
                        1,
                        1,
                        1,
                        1,
                        0,
                        *s,
                        params.as_mut_ptr(),
                        std::ptr::null_mut(),
                    ),
                );
                check("cuEventRecord", event_record(ev[slot], *s));
                *k += 1;
                kernels += 1;
            }
        }
        for (_, ev, launched, _) in streams.iter_mut() {
            for slot in 0..2 {
                if let Some(t) = launched[slot].take() {
                    check("cuEventSynchronize", event_sync(ev[slot]));
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
        check("cuCtxSynchronize", ctx_sync());
        let wall = start.elapsed().as_secs_f64();
        if buf != 0 {
            check("cuMemFree", mem_free(buf));
        }
        let gpu = gpu_ns as f64 / 1e9;
        let (p50, p95, p99) = (pct(&mut lat, 0.5), pct(&mut lat, 0.95), pct(&mut lat, 0.99));
        if a.json {
            println!(
                "{}",
                serde_json::json!({
                    "kernels": kernels, "kernel_us": a.kernel_us, "wall_s": wall, "gpu_s": gpu,
                    "share": gpu / wall, "p50_ms": p50, "p95_ms": p95, "p99_ms": p99,
                    "memory_total_mib": total / (1024 * 1024), "memory_free_mib": free / (1024 * 1024),
                    "alloc_mib": a.alloc_mib,
                })
            );
        } else {
            println!(
                "{kernels} kernels of {} µs in {wall:.2} s: GPU time {gpu:.2} s, share {:.1}%; completion latency p50 {p50:.2} ms, p95 {p95:.2} ms, p99 {p99:.2} ms; device memory {} MiB total, {} MiB free",
                a.kernel_us,
                100.0 * gpu / wall,
                total / (1024 * 1024),
                free / (1024 * 1024)
            );
        }
    }
}
