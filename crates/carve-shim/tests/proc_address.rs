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
    let lookup = |name: &CStr, version| {
        let (mut p, mut status) = (std::ptr::null_mut(), -1);
        // SAFETY: a C string and live out-pointers.
        let r = unsafe { v2(name.as_ptr(), &mut p, version, 0, &mut status) };
        assert_eq!(
            (r, status),
            (CUDA_SUCCESS, CU_GET_PROC_ADDRESS_SUCCESS),
            "{name:?}"
        );
        p
    };
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
