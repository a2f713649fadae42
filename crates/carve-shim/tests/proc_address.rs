//! The shim preloaded into a process, between it and the stand-in driver (`carve-fake-cuda`,
//! found as `libcuda.so.1` on the library path): what the driver's lookups hand the program.
//! The test re-runs itself as that process.

use carve_cuda_abi::*;
use carve_test_support::{cargo_build, fake_cuda};
use std::ffi::{c_void, CStr};
use std::process::Command;

/// Set in the re-run: be the process under the shim.
const CHILD: &str = "CARVE_SHIM_TEST_CHILD";

#[test]
fn get_proc_address_hands_out_the_hook_of_the_version_asked_for() {
    if std::env::var_os(CHILD).is_some() {
        return under_the_shim();
    }
    let dir = fake_cuda::driver_dir("carve-shim-proc-address");
    let shim = cargo_build::build(&["carve-shim"], &["libcarve_shim.so"]).join("libcarve_shim.so");
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "get_proc_address_hands_out_the_hook_of_the_version_asked_for",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .env("LD_PRELOAD", &shim)
        .env("LD_LIBRARY_PATH", dir.join("lib"))
        .env("CARVE_FAKE_CUDA_DIR", dir.join("gpu"))
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "under the shim: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A symbol as the program sees it (through the shim's `dlsym`).
fn sym(handle: *mut c_void, name: &CStr) -> *mut c_void {
    // SAFETY: dlsym with a handle from dlopen (or RTLD_DEFAULT) and a C string.
    let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
    assert!(!p.is_null(), "no {name:?}");
    p
}

fn under_the_shim() {
    // SAFETY: loading the (stand-in) driver by its soname, as programs do.
    let cuda = unsafe { libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_NOW) };
    assert!(!cuda.is_null(), "libcuda.so.1 is not on the library path");
    // The shim is preloaded: its definitions come first.
    let hook = |name: &CStr| sym(libc::RTLD_DEFAULT, name);
    // SAFETY: the driver's cuGetProcAddress_v2 has this type.
    let v2: PFN_cuGetProcAddress_v2 = unsafe {
        std::mem::transmute::<*mut c_void, PFN_cuGetProcAddress_v2>(sym(
            cuda,
            c"cuGetProcAddress_v2",
        ))
    };
    assert_eq!(
        v2 as *mut c_void,
        hook(c"cuGetProcAddress_v2"),
        "dlsym gives the hook"
    );
    let lookup_with = |name: &CStr, version, flags| {
        let (mut p, mut status) = (std::ptr::null_mut(), -1);
        // SAFETY: a C string and live out-pointers.
        let r = unsafe { v2(name.as_ptr(), &mut p, version, flags, &mut status) };
        assert_eq!(
            (r, status),
            (CUDA_SUCCESS, CU_GET_PROC_ADDRESS_SUCCESS),
            "{name:?}"
        );
        p
    };
    let lookup = |name: &CStr, version| lookup_with(name, version, CU_GET_PROC_ADDRESS_DEFAULT);
    // The runtime asks for base names; the driver answers with the newest version, and the shim
    // hands out its hook of that version: same name, same arguments.
    for (name, version, expected) in [
        (c"cuMemAlloc", CUDA_VERSION_12_0, c"cuMemAlloc_v2"),
        (c"cuLaunchKernel", CUDA_VERSION_12_0, c"cuLaunchKernel"),
        (c"cuGetProcAddress", 11080, c"cuGetProcAddress"),
        (
            c"cuGetProcAddress",
            CUDA_VERSION_12_0,
            c"cuGetProcAddress_v2",
        ),
    ] {
        assert_eq!(
            lookup(name, version),
            hook(expected),
            "cuGetProcAddress({name:?}, {version})"
        );
    }
    // The variant the driver chose for the flags and version, exactly: the per-thread default
    // stream's `_ptsz`, the pre-3.2 unversioned name (refused by its hook).
    let ptds = CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM;
    for (name, version, flags, expected) in [
        (
            c"cuLaunchKernel",
            CUDA_VERSION_12_0,
            ptds,
            c"cuLaunchKernel_ptsz",
        ),
        (
            c"cuMemAllocAsync",
            CUDA_VERSION_12_0,
            ptds,
            c"cuMemAllocAsync_ptsz",
        ),
        (
            c"cuGraphLaunch",
            CUDA_VERSION_12_0,
            ptds,
            c"cuGraphLaunch_ptsz",
        ),
        (c"cuMemAlloc", 3000, 0, c"cuMemAlloc"),
        (
            c"cuArray3DCreate",
            CUDA_VERSION_12_0,
            0,
            c"cuArray3DCreate_v2",
        ),
    ] {
        assert_eq!(
            lookup_with(name, version, flags),
            hook(expected),
            "cuGetProcAddress({name:?}, {version}, {flags})"
        );
    }
    // One real function per exact name: after the `_ptsz` lookup, the legacy cuLaunchKernel
    // still calls the driver's cuLaunchKernel.
    let calls = |name: &CStr| {
        // SAFETY: the stand-in's counter has this type.
        let f = unsafe {
            std::mem::transmute::<*mut c_void, unsafe extern "C" fn(*const std::ffi::c_char) -> u64>(
                sym(cuda, c"carve_fake_cuda_calls"),
            )
        };
        // SAFETY: a C string.
        unsafe { f(name.as_ptr()) }
    };
    let legacy = lookup(c"cuLaunchKernel", CUDA_VERSION_12_0);
    // SAFETY: the hook of cuLaunchKernel (checked above), called with a null function: the
    // driver refuses it, after the call was counted.
    unsafe {
        let l = std::mem::transmute::<*mut c_void, PFN_cuLaunchKernel>(legacy);
        let null = std::ptr::null_mut();
        l(
            null,
            1,
            1,
            1,
            1,
            1,
            1,
            0,
            null.cast(),
            null.cast(),
            null.cast(),
        );
    }
    assert_eq!(
        (calls(c"cuLaunchKernel"), calls(c"cuLaunchKernel_ptsz")),
        (1, 0)
    );
    // And the five-argument function handed out for "cuGetProcAddress" works as one.
    let p = lookup(c"cuGetProcAddress", CUDA_VERSION_12_0);
    // SAFETY: checked above to be the shim's cuGetProcAddress_v2 hook.
    let again = unsafe { std::mem::transmute::<*mut c_void, PFN_cuGetProcAddress_v2>(p) };
    let (mut q, mut status) = (std::ptr::null_mut(), -1);
    // SAFETY: a C string and live out-pointers.
    let r = unsafe {
        again(
            c"cuMemFree".as_ptr(),
            &mut q,
            CUDA_VERSION_12_0,
            0,
            &mut status,
        )
    };
    assert_eq!((r, status), (CUDA_SUCCESS, CU_GET_PROC_ADDRESS_SUCCESS));
    assert_eq!(q, hook(c"cuMemFree_v2"));
}
