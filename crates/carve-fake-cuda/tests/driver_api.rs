//! The stand-in driver through its C ABI: the built `libcarve_fake_cuda.so`, loaded as
//! `libcuda.so.1` from a driver directory, exactly as programs load the real one, and called
//! through the entry-point types of `carve-cuda-abi`. (The rlib is linked only for `SYMBOLS`.)

use carve_cuda_abi::*;
use carve_fake_cuda::{base_name, stats_file, ENV_DIR, ENV_MEM_MIB, SYMBOLS};
use carve_test_support::fake_cuda;
use libloading::Library;
use std::ffi::{c_char, c_uint, c_void, CStr, CString};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

type Ptr = *mut c_void;

/// Every function the fake must provide (the brief's list), by exported name.
const REQUIRED: &[&str] = &[
    "cuInit",
    "cuDriverGetVersion",
    "cuDeviceGetCount",
    "cuDeviceGet",
    "cuDeviceGetName",
    "cuDeviceTotalMem_v2",
    "cuDeviceGetAttribute",
    "cuDevicePrimaryCtxRetain",
    "cuDevicePrimaryCtxRelease_v2",
    "cuCtxCreate_v2",
    "cuCtxDestroy_v2",
    "cuCtxSetCurrent",
    "cuCtxGetCurrent",
    "cuCtxSynchronize",
    "cuStreamCreate",
    "cuStreamDestroy_v2",
    "cuStreamSynchronize",
    "cuStreamQuery",
    "cuEventCreate",
    "cuEventRecord",
    "cuEventQuery",
    "cuEventSynchronize",
    "cuEventElapsedTime",
    "cuEventDestroy_v2",
    "cuMemAlloc_v2",
    "cuMemAllocManaged",
    "cuMemAllocPitch_v2",
    "cuMemFree_v2",
    "cuMemGetInfo_v2",
    "cuMemCreate",
    "cuMemRelease",
    "cuArrayCreate_v2",
    "cuArrayDestroy",
    "cuModuleLoadData",
    "cuModuleGetFunction",
    "cuModuleUnload",
    "cuLaunchKernel",
    "cuLaunchKernelEx",
    "cuLaunchCooperativeKernel",
    "cuGraphLaunch",
    "cuGetProcAddress",
    "cuGetProcAddress_v2",
    "cuGetErrorString",
    "cuGetErrorName",
];

struct Fake {
    lib: Library,
    gpu_dir: PathBuf,
}

/// The library, loaded once with `CARVE_FAKE_CUDA_DIR` set to a fresh directory, and a lock that
/// runs the tests one at a time (they share the process's driver state and memory).
fn fake() -> (&'static Fake, MutexGuard<'static, ()>) {
    static ONE: Mutex<()> = Mutex::new(());
    static F: OnceLock<Fake> = OnceLock::new();
    let guard = ONE.lock().unwrap_or_else(|p| p.into_inner());
    let f = F.get_or_init(|| {
        let root = fake_cuda::driver_dir("carve-fake-cuda-api");
        let gpu_dir = root.join("gpu");
        // Read by the library at cuInit; set before any thread could read the environment.
        std::env::set_var(ENV_DIR, &gpu_dir);
        std::env::remove_var(ENV_MEM_MIB);
        // SAFETY: loading the stand-in driver.
        let lib = unsafe { Library::new(root.join("lib/libcuda.so.1")) }.expect("load the fake");
        let f = Fake { lib, gpu_dir };
        // SAFETY: cuInit with its one valid flag value; no pointers.
        let r = unsafe { f.sym::<PFN_cuInit>("cuInit")(0) };
        assert_eq!(r, 0);
        f
    });
    (f, guard)
}

impl Fake {
    /// A function by exported name.
    fn sym<T: Copy>(&self, name: &str) -> T {
        // SAFETY: the caller names the function's type.
        unsafe {
            *self
                .lib
                .get::<T>(name.as_bytes())
                .unwrap_or_else(|e| panic!("{name}: {e}"))
        }
    }

    fn raw(&self, name: &str) -> Ptr {
        self.sym::<Ptr>(name)
    }

    /// Makes the primary context current on the calling thread.
    fn context(&self) -> CUcontext {
        let retain: PFN_cuDevicePrimaryCtxRetain = self.sym("cuDevicePrimaryCtxRetain");
        let set: PFN_cuCtxSetCurrent = self.sym("cuCtxSetCurrent");
        let mut ctx = std::ptr::null_mut();
        // SAFETY: valid out-pointer; a context the driver gave.
        unsafe {
            assert_eq!(retain(&mut ctx, 0), 0);
            assert_eq!(set(ctx), 0);
        }
        ctx
    }

    /// A `spin` function from a module.
    fn spin_function(&self) -> CUfunction {
        let load: PFN_cuModuleLoadData = self.sym("cuModuleLoadData");
        let get: PFN_cuModuleGetFunction = self.sym("cuModuleGetFunction");
        let (mut m, mut f) = (std::ptr::null_mut(), std::ptr::null_mut());
        // SAFETY: valid out-pointers and C strings.
        unsafe {
            assert_eq!(load(&mut m, c"any image".as_ptr().cast()), 0);
            assert_eq!(get(&mut f, m, c"spin".as_ptr()), 0);
        }
        f
    }
}

/// Launches `spin` for `ns` on `stream` through cuLaunchKernel.
///
/// # Safety
/// As cuLaunchKernel for `func` and `stream` (the stand-in refuses handles it did not make).
unsafe fn launch(f: &Fake, func: CUfunction, stream: CUstream, ns: u64) -> CUresult {
    let l: PFN_cuLaunchKernel = f.sym("cuLaunchKernel");
    let mut ns = ns;
    let mut params = [&mut ns as *mut u64 as Ptr];
    // SAFETY: the handles are the caller's; the one parameter points to `ns`, live for the
    // call (the driver copies parameters at launch); no `extra`.
    unsafe {
        l(
            func,
            1,
            1,
            1,
            32,
            1,
            1,
            0,
            stream,
            params.as_mut_ptr(),
            std::ptr::null_mut(),
        )
    }
}

#[test]
fn every_required_function_is_exported() {
    let (f, _one) = fake();
    for name in REQUIRED {
        assert!(SYMBOLS.contains(name), "{name} is not in SYMBOLS");
    }
    for name in SYMBOLS {
        assert!(!f.raw(name).is_null(), "{name} is not exported");
    }
}

#[test]
fn get_proc_address_finds_every_implemented_symbol() {
    let (f, _one) = fake();
    let v1: PFN_cuGetProcAddress = f.sym("cuGetProcAddress");
    let v2: PFN_cuGetProcAddress_v2 = f.sym("cuGetProcAddress_v2");
    for name in SYMBOLS {
        let base = base_name(name);
        // The newest version of the base name, as the real driver hands it out.
        let newest = format!("{base}_v2");
        let expected = if base == "cuGetProcAddress" || !SYMBOLS.contains(&newest.as_str()) {
            f.raw(if base == "cuGetProcAddress" {
                "cuGetProcAddress_v2"
            } else {
                base
            })
        } else {
            f.raw(&newest)
        };
        let c = CString::new(base).unwrap();
        let (mut p1, mut p2, mut status) = (std::ptr::null_mut(), std::ptr::null_mut(), -1);
        // SAFETY: valid C string and out-pointers.
        unsafe {
            assert_eq!(v1(c.as_ptr(), &mut p1, 12040, 0), CUDA_SUCCESS, "{base}");
            assert_eq!(
                v2(c.as_ptr(), &mut p2, 12040, 0, &mut status),
                CUDA_SUCCESS,
                "{base}"
            );
        }
        assert_eq!(p1, expected, "cuGetProcAddress({base})");
        assert_eq!(p2, expected, "cuGetProcAddress_v2({base})");
        assert_eq!(status, CU_GET_PROC_ADDRESS_SUCCESS);
    }
    // Before CUDA 12, cuGetProcAddress is the four-argument one.
    let mut p = std::ptr::null_mut();
    // SAFETY: as above.
    unsafe {
        assert_eq!(v1(c"cuGetProcAddress".as_ptr(), &mut p, 11080, 0), 0);
    }
    assert_eq!(p, f.raw("cuGetProcAddress"));
    // An unknown name: NOT_FOUND, a null pointer and SYMBOL_NOT_FOUND.
    let (mut p, mut status) = (1 as Ptr, -1);
    // SAFETY: as above.
    unsafe {
        assert_eq!(
            v2(c"cuNoSuchFunction".as_ptr(), &mut p, 12040, 0, &mut status),
            CUDA_ERROR_NOT_FOUND
        );
        assert_eq!(
            v1(c"cuInit".as_ptr(), std::ptr::null_mut(), 12040, 0),
            CUDA_ERROR_INVALID_VALUE
        );
    }
    assert!(p.is_null());
    assert_eq!(status, CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND);
}

#[test]
fn a_bad_function_handle_is_an_error_not_a_crash() {
    let (f, _one) = fake();
    // No context on this thread yet.
    let good = {
        let bare = std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: a launch with a made-up handle on a thread with no context.
                unsafe { launch(f, 0xdead as CUfunction, std::ptr::null_mut(), 1000) }
            })
            .join()
            .unwrap()
        });
        assert_eq!(bare, CUDA_ERROR_INVALID_CONTEXT);
        f.context();
        f.spin_function()
    };
    let ex: PFN_cuLaunchKernelEx = f.sym("cuLaunchKernelEx");
    let coop: PFN_cuLaunchCooperativeKernel = f.sym("cuLaunchCooperativeKernel");
    let graph: PFN_cuGraphLaunch = f.sym("cuGraphLaunch");
    let get: PFN_cuModuleGetFunction = f.sym("cuModuleGetFunction");
    let sync: PFN_cuCtxSynchronize = f.sym("cuCtxSynchronize");
    let mut ns = 1000u64;
    let mut params = [&mut ns as *mut u64 as Ptr];
    let cfg = CUlaunchConfig {
        gridDimX: 1,
        gridDimY: 1,
        gridDimZ: 1,
        blockDimX: 32,
        blockDimY: 1,
        blockDimZ: 1,
        sharedMemBytes: 0,
        hStream: std::ptr::null_mut(),
        attrs: std::ptr::null_mut(),
        numAttrs: 0,
    };
    // SAFETY: every call gets well-formed arguments except the handle under test.
    unsafe {
        for bad in [0usize, 0xdead, 0x1010] {
            let (bad, bad_exec) = (bad as CUfunction, bad as CUgraphExec);
            assert_eq!(
                launch(f, bad, std::ptr::null_mut(), 1000),
                CUDA_ERROR_INVALID_HANDLE
            );
            assert_eq!(
                ex(&cfg, bad, params.as_mut_ptr(), std::ptr::null_mut()),
                CUDA_ERROR_INVALID_HANDLE
            );
            assert_eq!(
                coop(
                    bad,
                    1,
                    1,
                    1,
                    32,
                    1,
                    1,
                    0,
                    std::ptr::null_mut(),
                    params.as_mut_ptr()
                ),
                CUDA_ERROR_INVALID_HANDLE
            );
            assert_eq!(
                graph(bad_exec, std::ptr::null_mut()),
                CUDA_ERROR_INVALID_HANDLE
            );
        }
        // A good function with bad launch arguments.
        assert_eq!(
            launch(f, good, 0xbad0 as CUstream, 1000),
            CUDA_ERROR_INVALID_HANDLE,
            "unknown stream"
        );
        let l: PFN_cuLaunchKernel = f.sym("cuLaunchKernel");
        let null: CUstream = std::ptr::null_mut();
        let nullp: VoidPtrPtr = std::ptr::null_mut();
        assert_eq!(
            l(good, 1, 1, 1, 32, 1, 1, 0, null, nullp, nullp),
            CUDA_ERROR_INVALID_VALUE,
            "no parameters"
        );
        assert_eq!(
            l(good, 0, 1, 1, 32, 1, 1, 0, null, params.as_mut_ptr(), nullp),
            CUDA_ERROR_INVALID_VALUE,
            "empty grid"
        );
        assert_eq!(
            l(
                good,
                1,
                1,
                1,
                2048,
                1,
                1,
                0,
                null,
                params.as_mut_ptr(),
                nullp
            ),
            CUDA_ERROR_INVALID_VALUE,
            "block too large"
        );
        assert_eq!(
            ex(std::ptr::null(), good, params.as_mut_ptr(), nullp),
            CUDA_ERROR_INVALID_VALUE
        );
        let mut other = std::ptr::null_mut();
        let mut module = std::ptr::null_mut();
        let load: PFN_cuModuleLoadData = f.sym("cuModuleLoadData");
        assert_eq!(load(&mut module, c"x".as_ptr().cast()), 0);
        assert_eq!(
            get(&mut other, module, c"not_spin".as_ptr()),
            CUDA_ERROR_NOT_FOUND
        );
        assert_eq!(
            get(&mut other, 0x77 as CUmodule, c"spin".as_ptr()),
            CUDA_ERROR_INVALID_HANDLE
        );
        // An unloaded module's functions are gone.
        assert_eq!(get(&mut other, module, c"spin".as_ptr()), 0);
        let unload: PFN_cuModuleUnload = f.sym("cuModuleUnload");
        assert_eq!(unload(module), 0);
        assert_eq!(launch(f, other, null, 1000), CUDA_ERROR_INVALID_HANDLE);
        // The process is still here and the driver still works.
        assert_eq!(launch(f, good, null, 1000), 0);
        assert_eq!(
            ex(&cfg, good, params.as_mut_ptr(), nullp),
            0,
            "cuLaunchKernelEx"
        );
        assert_eq!(
            coop(good, 1, 1, 1, 32, 1, 1, 0, null, params.as_mut_ptr()),
            0
        );
        // The `extra` form of the parameters.
        let mut size = 8usize;
        let mut extra = [
            1 as Ptr,
            &mut ns as *mut u64 as Ptr,
            2 as Ptr,
            &mut size as *mut usize as Ptr,
            std::ptr::null_mut(),
        ];
        assert_eq!(
            l(good, 1, 1, 1, 32, 1, 1, 0, null, nullp, extra.as_mut_ptr()),
            0
        );
        assert_eq!(sync(), 0);
    }
}

#[test]
fn kernels_run_for_their_duration_in_order_and_events_time_them() {
    let (f, _one) = fake();
    f.context();
    let func = f.spin_function();
    let stream_create: PFN_cuStreamCreate = f.sym("cuStreamCreate");
    let stream_query: PFN_cuStreamQuery = f.sym("cuStreamQuery");
    let stream_sync: PFN_cuStreamSynchronize = f.sym("cuStreamSynchronize");
    let stream_destroy: PFN_cuStreamDestroy_v2 = f.sym("cuStreamDestroy_v2");
    let ev_create: PFN_cuEventCreate = f.sym("cuEventCreate");
    let record: PFN_cuEventRecord = f.sym("cuEventRecord");
    let query: PFN_cuEventQuery = f.sym("cuEventQuery");
    let ev_sync: PFN_cuEventSynchronize = f.sym("cuEventSynchronize");
    let elapsed: PFN_cuEventElapsedTime = f.sym("cuEventElapsedTime");
    let ev_destroy: PFN_cuEventDestroy_v2 = f.sym("cuEventDestroy_v2");
    let graph_create: unsafe extern "C" fn(*mut CUgraphExec, c_uint, u64) -> CUresult =
        f.sym("carve_fake_cuda_graph_exec_create");
    let graph_launch: PFN_cuGraphLaunch = f.sym("cuGraphLaunch");
    let stats = || -> serde_json::Value {
        let p = stats_file(&f.gpu_dir, std::process::id());
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
    };
    // SAFETY: plain driver calls with valid out-pointers and handles.
    unsafe {
        let mut s = std::ptr::null_mut();
        assert_eq!(stream_create(&mut s, 0), 0);
        let mut e = [std::ptr::null_mut(); 4];
        for x in &mut e {
            assert_eq!(ev_create(x, 0), 0);
        }
        // Never recorded: complete, but without a time.
        assert_eq!(query(e[0]), 0);
        assert_eq!(ev_sync(e[0]), 0);
        let mut ms = 0f32;
        assert_eq!(elapsed(&mut ms, e[0], e[1]), CUDA_ERROR_INVALID_HANDLE);

        // One kernel of 20 ms.
        let t = Instant::now();
        assert_eq!(record(e[0], s), 0);
        assert_eq!(launch(f, func, s, 20_000_000), 0);
        assert_eq!(record(e[1], s), 0);
        assert!(t.elapsed() < Duration::from_millis(10), "launch is async");
        assert_eq!(query(e[1]), CUDA_ERROR_NOT_READY);
        assert_eq!(stream_query(s), CUDA_ERROR_NOT_READY);
        assert_eq!(elapsed(&mut ms, e[0], e[1]), CUDA_ERROR_NOT_READY);
        assert_eq!(ev_sync(e[1]), 0);
        assert!(t.elapsed() >= Duration::from_millis(20));
        assert_eq!(query(e[1]), 0);
        assert_eq!(elapsed(&mut ms, e[0], e[1]), 0);
        assert!((19.9..40.0).contains(&ms), "20 ms kernel took {ms} ms");
        assert_eq!(stream_sync(s), 0);
        assert_eq!(stream_query(s), 0);
        let before = stats();

        // 100 kernels of 50 µs, back to back: 5 ms of GPU time, a little more of wall time.
        assert_eq!(record(e[2], s), 0);
        for _ in 0..100 {
            assert_eq!(launch(f, func, s, 50_000), 0);
        }
        assert_eq!(record(e[3], s), 0);
        assert_eq!(stream_sync(s), 0);
        assert_eq!(elapsed(&mut ms, e[2], e[3]), 0);
        assert!(
            (4.99..25.0).contains(&ms),
            "100 kernels of 50 µs took {ms} ms"
        );
        let after = stats();
        let kernels = after["kernels"].as_u64().unwrap() - before["kernels"].as_u64().unwrap();
        let busy = after["busy_ns"].as_u64().unwrap() - before["busy_ns"].as_u64().unwrap();
        assert_eq!(kernels, 100, "{after}");
        assert!((5_000_000..5_100_000).contains(&busy), "busy {busy} ns");

        // An executable graph of 3 kernels of 1 ms on the null stream.
        let mut g = std::ptr::null_mut();
        assert_eq!(graph_create(&mut g, 3, 1_000_000), 0);
        assert_eq!(record(e[2], std::ptr::null_mut()), 0);
        assert_eq!(graph_launch(g, std::ptr::null_mut()), 0);
        assert_eq!(record(e[3], std::ptr::null_mut()), 0);
        assert_eq!(ev_sync(e[3]), 0);
        assert_eq!(elapsed(&mut ms, e[2], e[3]), 0);
        assert!((2.99..20.0).contains(&ms), "graph of 3 ms took {ms} ms");

        for x in e {
            assert_eq!(ev_destroy(x), 0);
        }
        assert_eq!(ev_destroy(e[0]), CUDA_ERROR_INVALID_HANDLE);
        assert_eq!(stream_destroy(s), 0);
        assert_eq!(stream_destroy(s), CUDA_ERROR_INVALID_HANDLE);
        assert_eq!(stream_sync(s), CUDA_ERROR_INVALID_HANDLE);
    }
}

#[test]
fn memory_is_accounted_and_limited() {
    let (f, _one) = fake();
    f.context();
    let info: PFN_cuMemGetInfo_v2 = f.sym("cuMemGetInfo_v2");
    let total_mem: PFN_cuDeviceTotalMem_v2 = f.sym("cuDeviceTotalMem_v2");
    let alloc: PFN_cuMemAlloc_v2 = f.sym("cuMemAlloc_v2");
    let managed: PFN_cuMemAllocManaged = f.sym("cuMemAllocManaged");
    let pitch: PFN_cuMemAllocPitch_v2 = f.sym("cuMemAllocPitch_v2");
    let free: PFN_cuMemFree_v2 = f.sym("cuMemFree_v2");
    let create: PFN_cuMemCreate = f.sym("cuMemCreate");
    let release: PFN_cuMemRelease = f.sym("cuMemRelease");
    let array: PFN_cuArrayCreate_v2 = f.sym("cuArrayCreate_v2");
    let array_destroy: PFN_cuArrayDestroy = f.sym("cuArrayDestroy");
    const GIB: usize = 1 << 30;
    let free_now = || {
        let (mut fr, mut t) = (0usize, 0usize);
        // SAFETY: valid out-pointers.
        assert_eq!(unsafe { info(&mut fr, &mut t) }, 0);
        assert_eq!(t, 80 * GIB);
        fr
    };
    // SAFETY: plain driver calls with valid out-pointers and handles.
    unsafe {
        let mut t = 0usize;
        assert_eq!(total_mem(&mut t, 0), 0);
        assert_eq!(t, 80 * GIB);
        assert_eq!(free_now(), 80 * GIB);
        let (mut a, mut b) = (0u64, 0u64);
        assert_eq!(alloc(&mut a, 60 * GIB), 0);
        assert_eq!(free_now(), 20 * GIB);
        let held =
            std::fs::read_to_string(f.gpu_dir.join(format!("mem/{}", std::process::id()))).unwrap();
        assert!(held.starts_with(&(60 * GIB).to_string()), "{held}");
        assert_eq!(alloc(&mut b, 30 * GIB), CUDA_ERROR_OUT_OF_MEMORY);
        assert_eq!(managed(&mut b, 30 * GIB, 1), CUDA_ERROR_OUT_OF_MEMORY);
        assert_eq!(alloc(&mut b, 0), CUDA_ERROR_INVALID_VALUE);
        assert_eq!(alloc(&mut b, 20 * GIB), 0, "exactly the free memory");
        assert_eq!(free_now(), 0);
        assert_ne!(a, b);
        assert_eq!(free(b), 0);
        assert_eq!(free(b), CUDA_ERROR_INVALID_VALUE, "double free");

        // Pitched, managed, VMM and array allocations count too.
        let (mut p, mut pitch_bytes) = (0u64, 0usize);
        assert_eq!(pitch(&mut p, &mut pitch_bytes, 1000, 1024, 4), 0);
        assert_eq!(pitch_bytes, 1024);
        assert_eq!(free_now(), 20 * GIB - 1024 * 1024);
        assert_eq!(
            pitch(&mut p, &mut pitch_bytes, 1000, 1024, 3),
            CUDA_ERROR_INVALID_VALUE
        );
        let mut m = 0u64;
        assert_eq!(managed(&mut m, GIB, 1), 0);
        let prop = [0u8; 64];
        let mut h = 0u64;
        assert_eq!(create(&mut h, 2 * GIB, prop.as_ptr().cast(), 0), 0);
        let mut arr = std::ptr::null_mut();
        let desc = CUDA_ARRAY_DESCRIPTOR {
            Width: 1024,
            Height: 1024,
            Format: CU_AD_FORMAT_FLOAT,
            NumChannels: 4,
        };
        assert_eq!(array(&mut arr, &desc), 0);
        assert_eq!(
            free_now(),
            20 * GIB - 1024 * 1024 - 3 * GIB - 16 * 1024 * 1024
        );
        assert_eq!(free(h), CUDA_ERROR_INVALID_VALUE, "not a device pointer");
        assert_eq!(array_destroy(arr), 0);
        assert_eq!(release(h), 0);
        assert_eq!(free(m), 0);
        assert_eq!(free(p), 0);
        assert_eq!(free(a), 0);
        assert_eq!(free_now(), 80 * GIB);
    }
}

#[test]
fn devices_contexts_and_errors() {
    let (f, _one) = fake();
    let version: PFN_cuDriverGetVersion = f.sym("cuDriverGetVersion");
    let count: PFN_cuDeviceGetCount = f.sym("cuDeviceGetCount");
    let get: PFN_cuDeviceGet = f.sym("cuDeviceGet");
    let name: PFN_cuDeviceGetName = f.sym("cuDeviceGetName");
    let attr: PFN_cuDeviceGetAttribute = f.sym("cuDeviceGetAttribute");
    let create: PFN_cuCtxCreate_v2 = f.sym("cuCtxCreate_v2");
    let destroy: PFN_cuCtxDestroy_v2 = f.sym("cuCtxDestroy_v2");
    let current: PFN_cuCtxGetCurrent = f.sym("cuCtxGetCurrent");
    let set: PFN_cuCtxSetCurrent = f.sym("cuCtxSetCurrent");
    let sync: PFN_cuCtxSynchronize = f.sym("cuCtxSynchronize");
    let err_name: PFN_cuGetErrorName = f.sym("cuGetErrorName");
    let err_string: PFN_cuGetErrorString = f.sym("cuGetErrorString");
    // SAFETY: plain driver calls with valid out-pointers.
    unsafe {
        let mut v = 0;
        assert_eq!(version(&mut v), 0);
        assert_eq!(v, 12040);
        assert_eq!(count(&mut v), 0);
        assert_eq!(v, 1);
        assert_eq!(get(&mut v, 0), 0);
        assert_eq!(v, 0);
        assert_eq!(get(&mut v, 1), CUDA_ERROR_INVALID_DEVICE);
        let mut buf = [0 as c_char; 64];
        assert_eq!(name(buf.as_mut_ptr(), 64, 0), 0);
        assert!(CStr::from_ptr(buf.as_ptr())
            .to_str()
            .unwrap()
            .contains("H100"));
        for (a, want) in [(16, 132), (75, 9), (76, 0), (10, 32), (50, 0)] {
            assert_eq!(attr(&mut v, a, 0), 0);
            assert_eq!(v, want, "attribute {a}");
        }
        assert_eq!(attr(&mut v, 100_000, 0), CUDA_ERROR_INVALID_VALUE);

        // A fresh thread has no context; cuCtxCreate makes one current, destroying it clears it.
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut c = 1 as CUcontext;
                assert_eq!(current(&mut c), 0);
                assert!(c.is_null());
                assert_eq!(sync(), CUDA_ERROR_INVALID_CONTEXT);
                assert_eq!(set(0x4242 as CUcontext), CUDA_ERROR_INVALID_CONTEXT);
                let mut ctx = std::ptr::null_mut();
                assert_eq!(create(&mut ctx, 0, 0), 0);
                assert_eq!(current(&mut c), 0);
                assert_eq!(c, ctx);
                assert_eq!(sync(), 0);
                assert_eq!(destroy(ctx), 0);
                assert_eq!(current(&mut c), 0);
                assert!(c.is_null());
                assert_eq!(destroy(ctx), CUDA_ERROR_INVALID_CONTEXT);
            });
        });

        let mut s: *const c_char = std::ptr::null();
        assert_eq!(err_name(CUDA_ERROR_OUT_OF_MEMORY, &mut s), 0);
        assert_eq!(CStr::from_ptr(s), c"CUDA_ERROR_OUT_OF_MEMORY");
        assert_eq!(err_string(CUDA_ERROR_OUT_OF_MEMORY, &mut s), 0);
        assert_eq!(CStr::from_ptr(s), c"out of memory");
        for code in [0, 1, 2, 3, 101, 201, 400, 500, 600, 999] {
            assert_eq!(err_name(code, &mut s), 0, "{code}");
            assert!(CStr::from_ptr(s).to_bytes().starts_with(b"CUDA_"));
        }
        assert_eq!(err_name(12345, &mut s), CUDA_ERROR_INVALID_VALUE);
        assert!(s.is_null());
    }
}
