//! A tenant that knows carve, under the shim, against the stand-in driver (`carve-fake-cuda` as
//! `libcuda.so.1`) and a scheduler (`carve-sched`, in this process) whose tenant `a` may hold
//! 64 MiB. Each test re-runs this binary as the tenant's process, which tries one way around
//! the shim and reports, by its exit status, whether it was scheduled and limited or refused:
//!
//! - every launch and allocation entry point of the driver API, each variant by its exact
//!   name, with the scheduler gone (all must fail closed, none may reach the driver) and with it
//!   (each launch reaches exactly its own driver function; each allocation is limited);
//! - `cuMemRelease` of memory still mapped, and an extra reference from
//!   `cuMemRetainAllocationHandle`: the reservation stays until the driver frees the memory;
//! - glibc's real `dlsym` looked up with `dlvsym` or through libc's handle;
//! - an environment that lies (`CARVE_FAIL=open`, another socket, another tenant) against the
//!   configuration file;
//! - a process started without `LD_PRELOAD` where `/etc/ld.so.preload` names the shim and
//!   `/etc/carve/shim.conf` holds the configuration (in a mount namespace of its own with an
//!   overlay on `/etc`: the machine's `/etc` is never written; needs root);
//! - a library of the program's own that wraps a libc function with `dlsym(RTLD_NEXT, ...)`.

use carve_cuda_abi::*;
use carve_sched::config::DaemonConfig;
use carve_sched::server::Server;
use carve_sched_proto::{self as proto, ShimConfig};
use carve_test_support::{cargo_build, fake_cuda, fresh_dir};
use std::ffi::{c_char, c_uint, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

/// Set in the re-run: the scenario the tenant's process plays.
const CHILD: &str = "CARVE_SHIM_HOSTILE_CHILD";
const MEBIBYTE: usize = 1 << 20;
/// The tenant's memory limit.
const LIMIT_MIB: usize = 64;

/// The tests one at a time: each runs a scheduler and a process of kernels.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

// ---------------------------------------------------------------------------------------------
// The test's side: the stand-in driver, the shim, a scheduler, the tenant's process.

struct Stand {
    dir: PathBuf,
    driver: PathBuf,
    shim: PathBuf,
    socket: PathBuf,
    token: PathBuf,
    server: Option<Server>,
}

impl Stand {
    /// The stand-in driver and the shim; with `daemon`, a scheduler serving tenant `a`.
    fn new(tag: &str, daemon: bool) -> Stand {
        let dir = fresh_dir(&format!("carve-shim-hostile-{tag}"));
        let driver = fake_cuda::driver_dir(&format!("carve-shim-hostile-{tag}-driver"));
        let shim =
            cargo_build::build(&["carve-shim"], &[fake_cuda::SHIM_LIB]).join(fake_cuda::SHIM_LIB);
        let token = dir.join("a.tok");
        std::fs::write(&token, "token-a-0123456789abcdef\n").unwrap();
        let socket = dir.join("sched.sock");
        let server = daemon.then(|| {
            let yaml = format!(
                "policy: best-effort\nslice_ms: 2\ntenants:\n  - {{name: a, token_file: a.tok, memory_limit_mib: {LIMIT_MIB}}}\n"
            );
            let cfg = DaemonConfig::from_yaml(&yaml, &dir).unwrap();
            Server::start(cfg, &socket).unwrap()
        });
        Stand {
            dir,
            driver,
            shim,
            socket,
            token,
            server,
        }
    }

    /// The configuration the agent would mount for tenant `a` (fail closed), with host paths.
    fn config(&self) -> ShimConfig {
        ShimConfig {
            socket: self.socket.display().to_string(),
            tenant: "a".into(),
            token_file: Some(self.token.display().to_string()),
            fail: proto::FAIL_CLOSED.into(),
        }
    }

    /// This binary re-run as the tenant's process playing `scenario` (the test of that name),
    /// under the shim, configured by `config`, with an environment that lies.
    fn tenant(&self, scenario: &str) -> Command {
        let file = self.dir.join("shim.conf");
        std::fs::write(&file, self.config().render()).unwrap();
        let mut c = Command::new(std::env::current_exe().unwrap());
        c.args(["--exact", scenario, "--nocapture", "--test-threads", "1"])
            .env(CHILD, scenario)
            .env("LD_PRELOAD", &self.shim)
            .env("LD_LIBRARY_PATH", self.driver.join("lib"))
            .env(fake_cuda_dir_var(), self.driver.join("gpu"))
            .env(proto::ENV_SHIM_CONFIG, &file);
        self.lie(&mut c);
        c
    }

    /// What a tenant would set to get out from under its limits.
    fn lie(&self, c: &mut Command) {
        c.env(proto::ENV_FAIL, proto::FAIL_OPEN)
            .env(proto::ENV_SCHED_SOCKET, self.dir.join("elsewhere.sock"))
            .env(proto::ENV_TENANT, "b")
            .env_remove(proto::ENV_TOKEN_FILE);
    }

    /// The scheduler's view of tenant `a`: turns granted.
    fn turns(&self) -> u64 {
        let st = proto::status(&self.socket).unwrap();
        st.tenants.iter().find(|t| t.name == "a").unwrap().launches
    }
}

impl Drop for Stand {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(&self.driver);
    }
}

/// The stand-in's state directory variable (`carve_fake_cuda::ENV_DIR`, not linked here).
fn fake_cuda_dir_var() -> &'static str {
    "CARVE_FAKE_CUDA_DIR"
}

fn assert_ran(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what}: {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// The tenant's side: the driver as a program finds it (dlopen and dlsym, through the shim).

type Ptr = *mut c_void;

struct Cuda {
    lib: Ptr,
    spin: CUfunction,
}

impl Cuda {
    /// Loads the driver, initialises it, makes the primary context current and loads `spin`.
    fn open() -> Cuda {
        // SAFETY: loading the (stand-in) driver by its soname, as programs do.
        let lib = unsafe { libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_NOW) };
        assert!(!lib.is_null(), "libcuda.so.1 is not on the library path");
        let mut c = Cuda {
            lib,
            spin: std::ptr::null_mut(),
        };
        let init: PFN_cuInit = c.sym(c"cuInit");
        let retain: PFN_cuDevicePrimaryCtxRetain = c.sym(c"cuDevicePrimaryCtxRetain");
        let set: PFN_cuCtxSetCurrent = c.sym(c"cuCtxSetCurrent");
        let load: PFN_cuModuleLoadData = c.sym(c"cuModuleLoadData");
        let get: PFN_cuModuleGetFunction = c.sym(c"cuModuleGetFunction");
        let (mut ctx, mut m, mut f) = (
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        );
        // SAFETY: the driver's functions with valid out-pointers and C strings.
        unsafe {
            assert_eq!(init(0), CUDA_SUCCESS);
            assert_eq!(retain(&mut ctx, 0), CUDA_SUCCESS);
            assert_eq!(set(ctx), CUDA_SUCCESS);
            assert_eq!(load(&mut m, c"any".as_ptr().cast()), CUDA_SUCCESS);
            assert_eq!(get(&mut f, m, c"spin".as_ptr()), CUDA_SUCCESS);
        }
        c.spin = f;
        c
    }

    /// A function by name, as the program's `dlsym` finds it in the driver.
    fn sym<T: Copy>(&self, name: &CStr) -> T {
        assert_eq!(std::mem::size_of::<T>(), std::mem::size_of::<Ptr>());
        // SAFETY: dlsym with the driver's handle and a C string.
        let p = unsafe { libc::dlsym(self.lib, name.as_ptr()) };
        assert!(!p.is_null(), "no {name:?}");
        // SAFETY: the caller names the function's type (cuda.h's for that name).
        unsafe { std::mem::transmute_copy::<Ptr, T>(&p) }
    }

    /// How often the driver's function of exactly this name was called.
    fn calls(&self, name: &str) -> u64 {
        let f: unsafe extern "C" fn(*const c_char) -> u64 = self.sym(c"carve_fake_cuda_calls");
        let n = CString::new(name).unwrap();
        // SAFETY: the stand-in's counter with a C string.
        unsafe { f(n.as_ptr()) }
    }

    /// Every launch entry point, each launching a 200 µs spin kernel: (name, result).
    fn launch_everything(&self) -> Vec<(&'static str, CUresult)> {
        let mut ns: u64 = 200_000;
        let mut params = [&mut ns as *mut u64 as Ptr];
        let p = params.as_mut_ptr();
        let null: Ptr = std::ptr::null_mut();
        let f = self.spin;
        let mut exec: CUgraphExec = std::ptr::null_mut();
        let make: unsafe extern "C" fn(*mut CUgraphExec, c_uint, u64) -> CUresult =
            self.sym(c"carve_fake_cuda_graph_exec_create");
        // SAFETY: the stand-in's graph maker with a live out-pointer.
        assert_eq!(unsafe { make(&mut exec, 1, 200_000) }, CUDA_SUCCESS);
        let config = CUlaunchConfig {
            gridDimX: 1,
            gridDimY: 1,
            gridDimZ: 1,
            blockDimX: 32,
            blockDimY: 1,
            blockDimZ: 1,
            sharedMemBytes: 0,
            hStream: null.cast(),
            attrs: null.cast(),
            numAttrs: 0,
        };
        let mut multi = CUDA_LAUNCH_PARAMS {
            function: f,
            gridDimX: 1,
            gridDimY: 1,
            gridDimZ: 1,
            blockDimX: 32,
            blockDimY: 1,
            blockDimZ: 1,
            sharedMemBytes: 0,
            hStream: null.cast(),
            kernelParams: p,
        };
        let mut out = Vec::new();
        // SAFETY: for every call below, the driver's entry points, looked up by their exact
        // names, with cuda.h's arguments: the spin function, one parameter pointing to `ns`
        // (live for the calls), the null stream, and the stand-in's graph.
        unsafe {
            for name in ["cuLaunchKernel", "cuLaunchKernel_ptsz"] {
                let l: PFN_cuLaunchKernel = self.sym(&CString::new(name).unwrap());
                out.push((
                    name,
                    l(f, 1, 1, 1, 32, 1, 1, 0, null.cast(), p, null.cast()),
                ));
            }
            for name in ["cuLaunchKernelEx", "cuLaunchKernelEx_ptsz"] {
                let l: PFN_cuLaunchKernelEx = self.sym(&CString::new(name).unwrap());
                out.push((name, l(&config, f, p, null.cast())));
            }
            for name in [
                "cuLaunchCooperativeKernel",
                "cuLaunchCooperativeKernel_ptsz",
            ] {
                let l: PFN_cuLaunchCooperativeKernel = self.sym(&CString::new(name).unwrap());
                out.push((name, l(f, 1, 1, 1, 32, 1, 1, 0, null.cast(), p)));
            }
            let l: PFN_cuLaunchCooperativeKernelMultiDevice =
                self.sym(c"cuLaunchCooperativeKernelMultiDevice");
            out.push(("cuLaunchCooperativeKernelMultiDevice", l(&mut multi, 1, 0)));
            let l: PFN_cuLaunch = self.sym(c"cuLaunch");
            out.push(("cuLaunch", l(f)));
            let l: PFN_cuLaunchGrid = self.sym(c"cuLaunchGrid");
            out.push(("cuLaunchGrid", l(f, 1, 1)));
            let l: PFN_cuLaunchGridAsync = self.sym(c"cuLaunchGridAsync");
            out.push(("cuLaunchGridAsync", l(f, 1, 1, null.cast())));
            for name in ["cuGraphLaunch", "cuGraphLaunch_ptsz"] {
                let l: PFN_cuGraphLaunch = self.sym(&CString::new(name).unwrap());
                out.push((name, l(exec, null.cast())));
            }
        }
        let sync: PFN_cuCtxSynchronize = self.sym(c"cuCtxSynchronize");
        // SAFETY: no arguments.
        unsafe { sync() };
        out
    }

    /// Every allocation entry point, each asked for `bytes`: (name, result); what was made is
    /// freed again.
    fn allocate_everything(&self, bytes: usize) -> Vec<(&'static str, CUresult)> {
        let null: Ptr = std::ptr::null_mut();
        let mut out = Vec::new();
        let free: PFN_cuMemFree_v2 = self.sym(c"cuMemFree_v2");
        let mut pool: CUmemoryPool = null.cast();
        let get_pool: PFN_cuDeviceGetDefaultMemPool = self.sym(c"cuDeviceGetDefaultMemPool");
        let prop = [0u8; 32];
        // Arrays of 4-byte elements: `bytes` / 4 wide (a 1-D array), or 1 MiB rows.
        let desc2 = CUDA_ARRAY_DESCRIPTOR {
            Width: MEBIBYTE / 4,
            Height: bytes / MEBIBYTE,
            Format: CU_AD_FORMAT_FLOAT,
            NumChannels: 1,
        };
        let desc3 = CUDA_ARRAY3D_DESCRIPTOR {
            Width: MEBIBYTE / 4,
            Height: 1,
            Depth: bytes / MEBIBYTE,
            Format: CU_AD_FORMAT_FLOAT,
            NumChannels: 1,
            Flags: 0,
        };
        // SAFETY: for every call below, the driver's entry points by their exact names with
        // live out-pointers and descriptors; what succeeded is freed with its own free.
        unsafe {
            assert_eq!(get_pool(&mut pool, 0), CUDA_SUCCESS);
            let mut d: CUdeviceptr = 0;
            let mut freed = |name: &'static str, r: CUresult, d: CUdeviceptr| {
                if r == CUDA_SUCCESS {
                    assert_eq!(free(d), CUDA_SUCCESS, "free after {name}");
                }
                out.push((name, r));
            };
            let a: PFN_cuMemAlloc_v2 = self.sym(c"cuMemAlloc_v2");
            let r = a(&mut d, bytes);
            freed("cuMemAlloc_v2", r, d);
            let a: PFN_cuMemAllocManaged = self.sym(c"cuMemAllocManaged");
            let r = a(&mut d, bytes, 1);
            freed("cuMemAllocManaged", r, d);
            let a: PFN_cuMemAllocPitch_v2 = self.sym(c"cuMemAllocPitch_v2");
            let mut pitch = 0usize;
            let r = a(&mut d, &mut pitch, MEBIBYTE, bytes / MEBIBYTE, 4);
            freed("cuMemAllocPitch_v2", r, d);
            for name in ["cuMemAllocAsync", "cuMemAllocAsync_ptsz"] {
                let a: PFN_cuMemAllocAsync = self.sym(&CString::new(name).unwrap());
                let r = a(&mut d, bytes, null.cast());
                freed(name, r, d);
            }
            for name in ["cuMemAllocFromPoolAsync", "cuMemAllocFromPoolAsync_ptsz"] {
                let a: PFN_cuMemAllocFromPoolAsync = self.sym(&CString::new(name).unwrap());
                let r = a(&mut d, bytes, pool, null.cast());
                freed(name, r, d);
            }
            let mut array: CUarray = null.cast();
            let destroy: PFN_cuArrayDestroy = self.sym(c"cuArrayDestroy");
            let a: PFN_cuArrayCreate_v2 = self.sym(c"cuArrayCreate_v2");
            let r = a(&mut array, &desc2);
            if r == CUDA_SUCCESS {
                assert_eq!(destroy(array), CUDA_SUCCESS);
            }
            out.push(("cuArrayCreate_v2", r));
            let a: PFN_cuArray3DCreate_v2 = self.sym(c"cuArray3DCreate_v2");
            let r = a(&mut array, &desc3);
            if r == CUDA_SUCCESS {
                assert_eq!(destroy(array), CUDA_SUCCESS);
            }
            out.push(("cuArray3DCreate_v2", r));
            // One level of the whole size: the levels below add a half, a quarter, ...
            let mut mm: CUmipmappedArray = null.cast();
            let a: PFN_cuMipmappedArrayCreate = self.sym(c"cuMipmappedArrayCreate");
            let r = a(&mut mm, &desc3, 1);
            if r == CUDA_SUCCESS {
                let destroy: PFN_cuMipmappedArrayDestroy = self.sym(c"cuMipmappedArrayDestroy");
                assert_eq!(destroy(mm), CUDA_SUCCESS);
            }
            out.push(("cuMipmappedArrayCreate", r));
            let mut h: CUmemGenericAllocationHandle = 0;
            let a: PFN_cuMemCreate = self.sym(c"cuMemCreate");
            let r = a(&mut h, bytes, prop.as_ptr().cast(), 0);
            if r == CUDA_SUCCESS {
                let release: PFN_cuMemRelease = self.sym(c"cuMemRelease");
                assert_eq!(release(h), CUDA_SUCCESS);
            }
            out.push(("cuMemCreate", r));
        }
        out
    }

    /// The entry points carve refuses, each asked for `bytes`: (name, result).
    fn refused_everything(&self, bytes: usize) -> Vec<(&'static str, CUresult)> {
        let null: Ptr = std::ptr::null_mut();
        let mut out = Vec::new();
        let mut d32: CUdeviceptr_v1 = 0;
        let mut pitch32: c_uint = 0;
        let mut array: CUarray = null.cast();
        let desc2 = CUDA_ARRAY_DESCRIPTOR_v1 {
            Width: (bytes / 4) as c_uint,
            Height: 0,
            Format: CU_AD_FORMAT_FLOAT,
            NumChannels: 1,
        };
        let desc3 = CUDA_ARRAY3D_DESCRIPTOR_v1 {
            Width: (bytes / 4) as c_uint,
            Height: 0,
            Depth: 0,
            Format: CU_AD_FORMAT_FLOAT,
            NumChannels: 1,
            Flags: 0,
        };
        // SAFETY: for every call below, the driver's entry points by their exact names with
        // live out-pointers, descriptors and node parameters.
        unsafe {
            let a: PFN_cuMemAlloc = self.sym(c"cuMemAlloc");
            out.push(("cuMemAlloc", a(&mut d32, bytes as c_uint)));
            let a: PFN_cuMemAllocPitch = self.sym(c"cuMemAllocPitch");
            let rows = (bytes / MEBIBYTE) as c_uint;
            out.push((
                "cuMemAllocPitch",
                a(&mut d32, &mut pitch32, MEBIBYTE as c_uint, rows, 4),
            ));
            let a: PFN_cuArrayCreate = self.sym(c"cuArrayCreate");
            out.push(("cuArrayCreate", a(&mut array, &desc2)));
            let a: PFN_cuArray3DCreate = self.sym(c"cuArray3DCreate");
            out.push(("cuArray3DCreate", a(&mut array, &desc3)));
            // Graph memory nodes, by each way there is to make one.
            let mut g: CUgraph = null.cast();
            let create: PFN_cuGraphCreate = self.sym(c"cuGraphCreate");
            assert_eq!(create(&mut g, 0), CUDA_SUCCESS);
            let mut node: CUgraphNode = null.cast();
            let mut alloc = CUDA_MEM_ALLOC_NODE_PARAMS {
                poolProps: CUmemPoolProps {
                    allocType: 1,
                    handleTypes: 0,
                    location: CUmemLocation { type_: 1, id: 0 },
                    win32SecurityAttributes: null,
                    maxSize: 0,
                    usage: 0,
                    reserved: [0; 54],
                },
                accessDescs: null.cast(),
                accessDescCount: 0,
                bytesize: bytes,
                dptr: 0,
            };
            let a: PFN_cuGraphAddMemAllocNode = self.sym(c"cuGraphAddMemAllocNode");
            out.push((
                "cuGraphAddMemAllocNode",
                a(&mut node, g, null.cast(), 0, &mut alloc),
            ));
            let mut params = CUgraphNodeParams {
                type_: CU_GRAPH_NODE_TYPE_MEM_ALLOC,
                reserved0: [0; 3],
                params: CUgraphNodeParamsUnion { alloc },
                reserved2: 0,
            };
            let a: PFN_cuGraphAddNode = self.sym(c"cuGraphAddNode");
            out.push((
                "cuGraphAddNode",
                a(&mut node, g, null.cast(), 0, &mut params),
            ));
            let begin: PFN_cuStreamBeginCapture_v2 = self.sym(c"cuStreamBeginCapture_v2");
            let end: PFN_cuStreamEndCapture = self.sym(c"cuStreamEndCapture");
            let mut s: CUstream = null.cast();
            let new_stream: PFN_cuStreamCreate = self.sym(c"cuStreamCreate");
            assert_eq!(new_stream(&mut s, 0), CUDA_SUCCESS);
            assert_eq!(begin(s, CU_STREAM_CAPTURE_MODE_GLOBAL), CUDA_SUCCESS);
            let mut d: CUdeviceptr = 0;
            let a: PFN_cuMemAllocAsync = self.sym(c"cuMemAllocAsync");
            out.push(("cuMemAllocAsync while capturing", a(&mut d, bytes, s)));
            let mut captured: CUgraph = null.cast();
            assert_eq!(end(s, &mut captured), CUDA_SUCCESS);
            let destroy: PFN_cuGraphDestroy = self.sym(c"cuGraphDestroy");
            assert_eq!(destroy(g), CUDA_SUCCESS);
        }
        out
    }
}

/// Exits the tenant's process with what it found: 0 when `problems` is empty.
fn report(problems: Vec<String>) {
    if problems.is_empty() {
        println!("scenario: held");
        std::process::exit(0);
    }
    for p in &problems {
        println!("scenario: {p}");
    }
    std::process::exit(1);
}

fn child(scenario: &str) -> bool {
    std::env::var(CHILD).is_ok_and(|s| s == scenario)
}

// ---------------------------------------------------------------------------------------------
// The tests.

/// With the scheduler gone and the configuration saying fail closed (the environment saying
/// fail open, another socket, another tenant), every launch and allocation entry point is
/// refused before it reaches the driver. (Before: the `_ptsz` variants, the multi-device and
/// pre-4.0 launches, `cuMemAllocFromPoolAsync`, `cuArray3DCreate`, `cuMipmappedArrayCreate`
/// reached the driver, and the environment's `CARVE_FAIL=open` won.)
#[test]
fn every_entry_point_fails_closed_whatever_the_environment_says() {
    const ME: &str = "every_entry_point_fails_closed_whatever_the_environment_says";
    if child(ME) {
        let c = Cuda::open();
        let mut problems = Vec::new();
        let results = c
            .launch_everything()
            .into_iter()
            .chain(c.allocate_everything(MEBIBYTE));
        for (name, r) in results {
            if r != CUDA_ERROR_NOT_PERMITTED || c.calls(name) != 0 {
                problems.push(format!(
                    "{name}: {r}, reached the driver {} time(s)",
                    c.calls(name)
                ));
            }
        }
        return report(problems);
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let stand = Stand::new("closed", false);
    let out = stand.tenant(ME).output().unwrap();
    assert_ran("the tenant's process", &out);
}

/// With the scheduler: each launch entry point waits for a turn and reaches the driver's
/// function of exactly its own name; each allocation entry point is limited (96 MiB of 64 is
/// out of memory, 16 MiB is not); the refused ones are refused. (Before: launches of a variant
/// reached the other variant's function after a lookup; 96 MiB went through the unhooked
/// entry points and the unversioned names; graph memory nodes were made.)
#[test]
fn every_entry_point_is_scheduled_limited_or_refused() {
    const ME: &str = "every_entry_point_is_scheduled_limited_or_refused";
    if child(ME) {
        let c = Cuda::open();
        let mut problems = Vec::new();
        for (name, r) in c.launch_everything() {
            if r != CUDA_SUCCESS || c.calls(name) != 1 {
                problems.push(format!("{name}: {r}, called {} time(s)", c.calls(name)));
            }
        }
        for (name, r) in c.allocate_everything(96 * MEBIBYTE) {
            if r != CUDA_ERROR_OUT_OF_MEMORY {
                problems.push(format!("{name} of 96 MiB over a 64 MiB limit: {r}"));
            }
        }
        for (name, r) in c.allocate_everything(16 * MEBIBYTE) {
            if r != CUDA_SUCCESS {
                problems.push(format!("{name} of 16 MiB: {r}"));
            }
        }
        for (name, r) in c.refused_everything(96 * MEBIBYTE) {
            if r != CUDA_ERROR_NOT_SUPPORTED {
                problems.push(format!("{name}: {r}, not refused"));
            }
        }
        return report(problems);
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let stand = Stand::new("live", true);
    let out = stand.tenant(ME).output().unwrap();
    assert_ran("the tenant's process", &out);
    assert!(stand.turns() > 0, "the scheduler granted tenant a no turn");
}

/// A `cuMemCreate` allocation is the tenant's until the driver frees it: released *and*
/// unmapped, with every extra reference (`cuMemRetainAllocationHandle`) released too.
/// (Before: `cuMemRelease` gave the reservation back while the memory was still mapped.)
#[test]
fn released_memory_is_counted_until_unmapped() {
    const ME: &str = "released_memory_is_counted_until_unmapped";
    if child(ME) {
        let c = Cuda::open();
        let create: PFN_cuMemCreate = c.sym(c"cuMemCreate");
        let release: PFN_cuMemRelease = c.sym(c"cuMemRelease");
        let reserve: PFN_cuMemAddressReserve = c.sym(c"cuMemAddressReserve");
        let map: PFN_cuMemMap = c.sym(c"cuMemMap");
        let unmap: PFN_cuMemUnmap = c.sym(c"cuMemUnmap");
        let retain: PFN_cuMemRetainAllocationHandle = c.sym(c"cuMemRetainAllocationHandle");
        let prop = [0u8; 32];
        let size = 40 * MEBIBYTE;
        let mut problems = Vec::new();
        let mut expect = |what: &str, r: CUresult, want: CUresult| {
            if r != want {
                problems.push(format!("{what}: {r}, not {want}"));
            }
        };
        // SAFETY: the driver's virtual-memory functions with live out-pointers and the handles
        // and addresses they gave.
        unsafe {
            let (mut h, mut h2, mut va) = (0u64, 0u64, 0u64);
            expect("create", create(&mut h, size, prop.as_ptr().cast(), 0), 0);
            expect("reserve", reserve(&mut va, size, 0, 0, 0), 0);
            expect("map", map(va, size, 0, h, 0), 0);
            expect("release", release(h), 0);
            // Still mapped: 40 + 40 MiB is over 64.
            let r = create(&mut h2, size, prop.as_ptr().cast(), 0);
            expect(
                "create while the first is mapped",
                r,
                CUDA_ERROR_OUT_OF_MEMORY,
            );
            // A second reference, then unmapped: still referenced.
            let mut again = 0u64;
            expect("retain", retain(&mut again, va as Ptr), 0);
            expect("unmap", unmap(va, size), 0);
            let r = create(&mut h2, size, prop.as_ptr().cast(), 0);
            expect("create while retained", r, CUDA_ERROR_OUT_OF_MEMORY);
            expect("release the retained", release(again), 0);
            // Now freed: there is room again.
            expect(
                "create after",
                create(&mut h2, size, prop.as_ptr().cast(), 0),
                0,
            );
            expect("release it", release(h2), 0);
        }
        return report(problems);
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let stand = Stand::new("vmm", true);
    let out = stand.tenant(ME).output().unwrap();
    assert_ran("the tenant's process", &out);
}

/// glibc's `dlsym`, looked up with `dlvsym` or through libc's own handle, is the shim's: what
/// it finds in the driver is the hook, and the limit holds. (Before: glibc's, and the driver's
/// `cuMemAlloc_v2` allocated 96 MiB over a 64 MiB limit.)
#[test]
fn the_real_dlsym_cannot_be_looked_up() {
    const ME: &str = "the_real_dlsym_cannot_be_looked_up";
    if child(ME) {
        let c = Cuda::open();
        type Dlsym = unsafe extern "C" fn(Ptr, *const c_char) -> Ptr;
        let mut problems = Vec::new();
        // SAFETY: dlopen of libc's soname, already loaded.
        let libc_h = unsafe { libc::dlopen(c"libc.so.6".as_ptr(), libc::RTLD_NOW) };
        let mut found: Vec<(&str, Ptr)> = Vec::new();
        for v in [c"GLIBC_2.34", c"GLIBC_2.2.5", c"GLIBC_2.17"] {
            for h in [libc::RTLD_NEXT, libc::RTLD_DEFAULT, libc_h] {
                // SAFETY: dlvsym with a handle and C strings.
                let p = unsafe { libc::dlvsym(h, c"dlsym".as_ptr(), v.as_ptr()) };
                found.push(("dlvsym(.., \"dlsym\", ..)", p));
            }
        }
        // SAFETY: dlsym with libc's handle and a C string.
        found.push(("dlsym(libc, \"dlsym\")", unsafe {
            libc::dlsym(libc_h, c"dlsym".as_ptr())
        }));
        for (how, p) in found.into_iter().filter(|(_, p)| !p.is_null()) {
            // SAFETY: whatever was found under the name dlsym has dlsym's type.
            let dl = unsafe { std::mem::transmute::<Ptr, Dlsym>(p) };
            // SAFETY: as dlsym: the driver's handle and a C string.
            let a = unsafe { dl(c.lib, c"cuMemAlloc_v2".as_ptr()) };
            if a.is_null() {
                problems.push(format!("{how}: finds no cuMemAlloc_v2"));
                continue;
            }
            // SAFETY: cuMemAlloc_v2's type.
            let a = unsafe { std::mem::transmute::<Ptr, PFN_cuMemAlloc_v2>(a) };
            let mut d = 0u64;
            // SAFETY: a live out-pointer.
            let r = unsafe { a(&mut d, 96 * MEBIBYTE) };
            if r != CUDA_ERROR_OUT_OF_MEMORY {
                problems.push(format!("{how}: cuMemAlloc_v2 of 96 MiB over 64: {r}"));
            }
        }
        return report(problems);
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let stand = Stand::new("dlvsym", true);
    let out = stand.tenant(ME).output().unwrap();
    assert_ran("the tenant's process", &out);
}

/// A library of the program's own that wraps `getpid` and finds libc's with
/// `dlsym(RTLD_NEXT, "getpid")` gets libc's, not itself: the shim resolves `RTLD_NEXT` relative
/// to the caller. (Before: relative to the shim, which comes first, so the wrapper found itself
/// and recursed; the wrapper here counts its depth and gives up instead of overflowing.)
#[test]
fn rtld_next_is_the_callers_next() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let stand = Stand::new("rtld-next", false);
    let dir = &stand.dir;
    std::fs::write(
        dir.join("wrap.c"),
        r#"#define _GNU_SOURCE
#include <dlfcn.h>
#include <unistd.h>
static int depth;
pid_t getpid(void) {
    static pid_t (*next)(void);
    if (!next) next = (pid_t (*)(void))dlsym(RTLD_NEXT, "getpid");
    if (!next || ++depth > 8) return -1;
    pid_t p = next();
    depth--;
    return p;
}
"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("main.c"),
        r#"#include <stdio.h>
#include <unistd.h>
int main(void) {
    pid_t p = getpid();
    printf("%s\n", p > 0 ? "libc's getpid" : "the wrapper found itself");
    return p > 0 ? 0 : 1;
}
"#,
    )
    .unwrap();
    let cc = |args: &[&str]| {
        let out = Command::new("cc").current_dir(dir).args(args).output();
        let out = out.expect("a C compiler (cc) is needed to build the test library");
        assert_ran(&format!("cc {}", args.join(" ")), &out);
    };
    cc(&["-shared", "-fPIC", "-o", "libwrap.so", "wrap.c", "-ldl"]);
    cc(&[
        "-o",
        "main",
        "main.c",
        "-L.",
        "-lwrap",
        "-Wl,-rpath,$ORIGIN",
    ]);
    let run = |preload: Option<&Path>| {
        let mut c = Command::new(dir.join("main"));
        match preload {
            Some(p) => c.env("LD_PRELOAD", p),
            None => c.env_remove("LD_PRELOAD"),
        };
        c.output().unwrap()
    };
    assert_ran("the program alone", &run(None));
    assert_ran("the program under the shim", &run(Some(&stand.shim)));
}

/// A container's setup for real, in a mount namespace with an overlay on `/etc`: the shim named
/// in `/etc/ld.so.preload` and configured by `/etc/carve/shim.conf` (fail closed, a scheduler
/// that is gone). A process started with `env -u LD_PRELOAD` and a lying environment still has
/// the shim, and its launches and allocations fail closed. Needs root (skipped, saying so,
/// without).
#[test]
fn the_preload_file_and_the_fixed_configuration_hold_without_the_environment() {
    const ME: &str = "the_preload_file_and_the_fixed_configuration_hold_without_the_environment";
    if child(ME) {
        let c = Cuda::open();
        let mut problems = Vec::new();
        if std::env::var_os("LD_PRELOAD").is_some() {
            problems.push("LD_PRELOAD is set".into());
        }
        let results = c
            .launch_everything()
            .into_iter()
            .chain(c.allocate_everything(MEBIBYTE));
        for (name, r) in results {
            if r != CUDA_ERROR_NOT_PERMITTED {
                problems.push(format!("{name}: {r}"));
            }
        }
        return report(problems);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: a mount namespace with an overlay on /etc needs root");
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let stand = Stand::new("ld-so-preload", false);
    let (upper, work) = (stand.dir.join("upper"), stand.dir.join("work"));
    std::fs::create_dir_all(&upper).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(
        stand.dir.join("preload"),
        format!("{}\n", stand.shim.display()),
    )
    .unwrap();
    std::fs::write(stand.dir.join("shim.conf"), stand.config().render()).unwrap();
    let script = format!(
        "set -e; mount -t overlay overlay -o lowerdir=/etc,upperdir={u},workdir={w} /etc; \
         cp {d}/preload /etc/ld.so.preload; mkdir -p /etc/carve; cp {d}/shim.conf {conf}; \
         exec env -u LD_PRELOAD -u {cfg_env} \"$@\"",
        u = upper.display(),
        w = work.display(),
        d = stand.dir.display(),
        conf = proto::SHIM_CONFIG,
        cfg_env = proto::ENV_SHIM_CONFIG,
    );
    let mut c = Command::new("unshare");
    c.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
        "sh",
    ])
    .arg(std::env::current_exe().unwrap())
    .args(["--exact", ME, "--nocapture", "--test-threads", "1"])
    .env(CHILD, ME)
    .env("LD_LIBRARY_PATH", stand.driver.join("lib"))
    .env(fake_cuda_dir_var(), stand.driver.join("gpu"));
    stand.lie(&mut c);
    let out = c.output().unwrap();
    assert_ran("the tenant's process in its container", &out);
    assert!(
        !Path::new("/etc/ld.so.preload").exists()
            || std::fs::read_to_string("/etc/ld.so.preload")
                .is_ok_and(|t| !t.contains(&stand.shim.display().to_string())),
        "the machine's /etc was written"
    );
}
