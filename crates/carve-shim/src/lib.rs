//! `libcarve_shim.so`: loaded into every process of a time-sliced tenant. In a container it is
//! named in `/etc/ld.so.preload` (a read-only file the agent mounts), so every process loads it
//! and unsetting `LD_PRELOAD` does nothing; on a host `carve run` puts it in `LD_PRELOAD`. It
//! sits between the program (or the CUDA runtime) and the driver, `libcuda.so.1`:
//!
//! - **Launch gate.** Every kernel launch entry point of the driver API runs only while the
//!   process holds a turn from `carve sched`: `cuLaunchKernel`, `cuLaunchKernelEx`,
//!   `cuLaunchCooperativeKernel` and `cuGraphLaunch` with their per-thread-default-stream
//!   variants (`_ptsz`), `cuLaunchCooperativeKernelMultiDevice`, and the launches of the API before
//!   CUDA 4.0, `cuLaunch`, `cuLaunchGrid`, `cuLaunchGridAsync`. Holding a turn costs one clock
//!   read per launch; at the end of a turn the shim asks to renew, and when someone else is due
//!   it drains its work (`cuCtxSynchronize`), reports the GPU time it took (overruns included)
//!   and waits for its next turn. (`cuLaunchHostFunc` runs a host function, not a kernel, and
//!   is not gated.)
//! - **Memory limit.** Every allocation entry point is reserved against the tenant's limit first
//!   and fails with `CUDA_ERROR_OUT_OF_MEMORY` beyond it: `cuMemAlloc_v2`, `cuMemAllocManaged`,
//!   `cuMemAllocPitch_v2`, `cuMemAllocAsync` and `cuMemAllocFromPoolAsync` (and their `_ptsz`),
//!   `cuMemCreate`, `cuArrayCreate_v2`, `cuArray3DCreate_v2`, `cuMipmappedArrayCreate` (every
//!   level). A `cuMemCreate` allocation is counted until it is released *and* unmapped
//!   everywhere, as the driver frees it (`cuMemMap`, `cuMemUnmap` and
//!   `cuMemRetainAllocationHandle` are followed). `cuMemGetInfo` and `cuDeviceTotalMem` report
//!   the limit as the total, so frameworks size themselves to it.
//! - **Refused** (`CUDA_ERROR_NOT_SUPPORTED`, one line on stderr), where carve cannot account
//!   the memory: graph memory-allocation nodes (`cuGraphAddMemAllocNode`, `cuGraphAddNode[_v2]`
//!   of that type, and `cuMemAllocAsync`/`cuMemAllocFromPoolAsync` on a stream being captured,
//!   which would add one): a graph allocates them each time it runs, after any check the shim
//!   could make, so no graph under the shim has one to instantiate; and the unversioned names of
//!   the API before CUDA 3.2 (`cuMemAlloc`, `cuMemAllocPitch`, `cuArrayCreate`,
//!   `cuArray3DCreate`), whose 32-bit addresses no 64-bit program can use (cuda.h has mapped
//!   these names to `_v2` since 2010). A lookup of a launch or allocation name the shim does not
//!   know (a newer version than it was built for) finds nothing rather than the driver's
//!   function.
//! - **Every way in.** The hooks are exported under the driver's exact names (for programs linked
//!   against libcuda), returned by an interposed `dlsym` and `dlvsym` (for programs that `dlopen`
//!   the driver, and for a lookup of `dlsym` itself: `dlvsym(h, "dlsym", "GLIBC_2.34")` gives the
//!   shim's) and by `cuGetProcAddress[_v2]` (how the CUDA runtime finds driver entry points),
//!   which hands out the hook of exactly the function the driver chose for the version and flags
//!   asked for (a `_ptsz` variant, a `_v2`, ...). Each hook calls the driver's function of its
//!   own exact name, looked up in `libcuda.so.1`.
//! - **The dynamic linker's lookups stay the caller's.** `dlsym` and `dlvsym` are entered
//!   through a few instructions that keep the caller's return address: every name the shim does
//!   not answer itself is passed to glibc's function as a tail call, so `RTLD_NEXT` (and
//!   `RTLD_DEFAULT` in a library loaded with its own scope) resolves relative to the library that
//!   asked, not to the shim. glibc's own `dlsym` and `dlvsym` are found in libc's symbol table
//!   (the shim's references to them would bind to its own exports).
//!
//! **Configuration the tenant cannot change.** The shim reads, once, when it is loaded:
//! 1. `/etc/carve/shim.conf` (`carve_sched_proto::SHIM_CONFIG`), when it exists: in a container,
//!    a read-only file the agent mounts with the scheduler's socket, the tenant, its token file
//!    and the fail mode the operator chose (closed for the agent's shares). The environment is
//!    then not read at all: a tenant's `CARVE_FAIL=open` or `CARVE_SCHED_SOCKET` changes nothing.
//! 2. Else the file named by `CARVE_SHIM_CONFIG`, the same way.
//! 3. Else the environment (`carve_sched_proto::ENV_*`: `CARVE_SCHED_SOCKET`, `CARVE_TENANT`,
//!    `CARVE_TOKEN_FILE`, `CARVE_FAIL` = `open` | `closed`, default `open`), as `carve run`
//!    sets it on a host. This is only as trustworthy as whoever starts the program: on a bare-metal
//!    host the operator does, and a tenant that can start its own processes there can equally
//!    start them without the shim; only the configuration file (with `/etc/ld.so.preload`) holds
//!    against a tenant inside a container.
//!
//! A configuration file that cannot be read fails closed.
//!
//! **What no preloaded library can stop.** Statically linked programs and (outside containers,
//! where `/etc/ld.so.preload` also covers setuid programs) setuid ones never load any preload;
//! code that finds the driver's functions without the dynamic linker's lookup functions (reading
//! libcuda's ELF symbol table, an `LD_AUDIT` library that rebinds symbols, a `dlmopen` namespace
//! of its own) or that hides the mounted files (a mount namespace of its own) goes around any
//! in-process shim; and memory a pool keeps after `cuMemFreeAsync`, or that another process
//! keeps alive through an exported handle, is not counted here. Those are the agent's NVML
//! backstop's to catch: it watches every process on a shared GPU from outside.
//!
//! It never crashes or hangs its host: no panic crosses the C boundary, and when the scheduler
//! cannot be reached it fails open (runs unscheduled, unlimited) or closed (launches and
//! allocations fail), as configured, with one line on stderr. A refusal by the scheduler always
//! fails closed.
//!
//! Every hook keeps the driver's contract for its arguments: they are the caller's, passed on
//! unchanged, and the shim reads what they point to only where the driver has just succeeded
//! (and so has checked them) or after checking them itself.

// The hooks keep the driver's names, and their safety contract is the driver's (cuda.h).
#![allow(non_snake_case, clippy::missing_safety_doc)]

use carve_cuda_abi::*;
use carve_sched_proto::{self as proto, Client, ClientError, Reply, Request, ShimConfig};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicU8, Ordering::*};
use std::sync::{Mutex, MutexGuard, OnceLock};

// ---------------------------------------------------------------------------------------------
// glibc's own dlsym and dlvsym.

type DlsymFn = unsafe extern "C" fn(*mut c_void, *const c_char) -> *mut c_void;
type DlvsymFn = unsafe extern "C" fn(*mut c_void, *const c_char, *const c_char) -> *mut c_void;

/// The start of glibc's `struct link_map` (`<link.h>`: the public fields).
#[repr(C)]
struct LinkMap {
    l_addr: usize,
    l_name: *const c_char,
    l_ld: *const Elf64Dyn,
}

#[repr(C)]
struct Elf64Dyn {
    d_tag: i64,
    d_val: u64,
}

#[repr(C)]
struct Elf64Sym {
    st_name: u32,
    st_info: u8,
    st_other: u8,
    st_shndx: u16,
    st_value: u64,
    st_size: u64,
}

const DT_NULL: i64 = 0;
const DT_STRTAB: i64 = 5;
const DT_SYMTAB: i64 = 6;
const DT_GNU_HASH: i64 = 0x6fff_fef5;

/// glibc's `dlsym` and `dlvsym`, found in libc's dynamic symbol table: the shim exports both
/// names, so its own references to them (and a lookup through either) would come back to it.
fn glibc() -> (Option<DlsymFn>, Option<DlvsymFn>) {
    static FOUND: OnceLock<(usize, usize)> = OnceLock::new();
    let &(s, v) = FOUND.get_or_init(|| {
        let find = |name: &CStr| {
            std::panic::catch_unwind(|| {
                // SAFETY: `libc_symbol` reads libc's own mapped ELF tables (see there).
                unsafe { libc_symbol(name) }
            })
            .ok()
            .flatten()
            .unwrap_or(0)
        };
        (find(c"dlsym"), find(c"dlvsym"))
    });
    let own = (dlsym as *const () as usize, dlvsym as *const () as usize);
    // SAFETY: a non-zero value is the address of libc's function of that name (found in its
    // symbol table below), never ours (checked), whose C type is `DlsymFn`/`DlvsymFn`.
    unsafe {
        (
            (s != 0 && s != own.0).then(|| std::mem::transmute::<usize, DlsymFn>(s)),
            (v != 0 && v != own.1).then(|| std::mem::transmute::<usize, DlvsymFn>(v)),
        )
    }
}

/// The address of the function `name` that libc.so.6 defines, from its GNU hash table.
///
/// # Safety
/// Reads libc's link map and its dynamic section, string table, symbol table and hash table
/// in memory, as the dynamic linker mapped them (and relocated the addresses in the dynamic
/// section, as glibc does on the architectures the shim is built for).
#[cfg(target_pointer_width = "64")]
unsafe fn libc_symbol(name: &CStr) -> Option<usize> {
    // SAFETY: dlopen of libc's soname with RTLD_NOLOAD only returns the handle of the libc
    // already loaded (the shim links it).
    let h = unsafe { libc::dlopen(c"libc.so.6".as_ptr(), libc::RTLD_NOLOAD | libc::RTLD_LAZY) };
    if h.is_null() {
        return None;
    }
    let mut lm: *const LinkMap = std::ptr::null();
    // SAFETY: RTLD_DI_LINKMAP writes a `struct link_map *` to the pointer given.
    let r = unsafe {
        libc::dlinfo(
            h,
            libc::RTLD_DI_LINKMAP,
            (&mut lm as *mut *const LinkMap).cast(),
        )
    };
    // SAFETY: the handle from dlopen above, released once.
    unsafe { libc::dlclose(h) };
    if r != 0 || lm.is_null() {
        return None;
    }
    // SAFETY: glibc's link map of libc, which stays loaded.
    let lm = unsafe { &*lm };
    let base = lm.l_addr;
    let at = |p: u64| -> usize {
        let p = p as usize;
        if p < base {
            p + base
        } else {
            p
        }
    };
    let (mut strtab, mut symtab, mut gnu_hash) = (0usize, 0usize, 0usize);
    let mut d = lm.l_ld;
    for _ in 0..4096 {
        // SAFETY: the dynamic section is an array of entries ended by DT_NULL (read up to it).
        let e = unsafe { &*d };
        match e.d_tag {
            DT_NULL => break,
            DT_STRTAB => strtab = at(e.d_val),
            DT_SYMTAB => symtab = at(e.d_val),
            DT_GNU_HASH => gnu_hash = at(e.d_val),
            _ => {}
        }
        // SAFETY: the entry after one that is not DT_NULL is in the section.
        d = unsafe { d.add(1) };
    }
    if strtab == 0 || symtab == 0 || gnu_hash == 0 {
        return None;
    }
    let want = name.to_bytes();
    let hash = want
        .iter()
        .fold(5381u32, |h, &c| h.wrapping_mul(33).wrapping_add(c as u32));
    let words = gnu_hash as *const u32;
    // SAFETY: the GNU hash table's header: nbuckets, symoffset, bloom size, bloom shift; then
    // the bloom words (64-bit), the buckets and the chains, as the ELF gABI extension lays it out.
    let (nbuckets, symoffset, bloom_size) = unsafe { (*words, *words.add(1), *words.add(2)) };
    if nbuckets == 0 {
        return None;
    }
    // SAFETY: the buckets follow the header (4 words) and the bloom filter (bloom_size u64s).
    let buckets = unsafe { words.add(4 + 2 * bloom_size as usize) };
    // SAFETY: the chains follow the buckets.
    let chains = unsafe { buckets.add(nbuckets as usize) };
    // SAFETY: `hash % nbuckets` indexes the buckets.
    let first = unsafe { *buckets.add((hash % nbuckets) as usize) };
    if first < symoffset {
        return None;
    }
    for i in first..first.saturating_add(65536) {
        // SAFETY: a symbol index at or after symoffset has its chain word.
        let h2 = unsafe { *chains.add((i - symoffset) as usize) };
        if h2 | 1 == hash | 1 {
            // SAFETY: `i` indexes the symbol table (the hash table covers it).
            let sym = unsafe { &*(symtab as *const Elf64Sym).add(i as usize) };
            // SAFETY: st_name is an offset of a NUL-terminated name in the string table.
            let n = unsafe { CStr::from_ptr((strtab as *const c_char).add(sym.st_name as usize)) };
            if n.to_bytes() == want && sym.st_shndx != 0 && sym.st_value != 0 {
                return Some(base + sym.st_value as usize);
            }
        }
        if h2 & 1 == 1 {
            break;
        }
    }
    None
}

#[cfg(not(target_pointer_width = "64"))]
unsafe fn libc_symbol(_name: &CStr) -> Option<usize> {
    None
}

/// glibc's `dlsym`, for the shim's own lookups.
fn real_dlsym() -> Option<DlsymFn> {
    glibc().0
}

/// Names the shim answers itself in `dlsym`/`dlvsym`: the hooks, what it refuses, and the
/// lookup functions themselves.
fn answers(symbol: *const c_char) -> bool {
    if symbol.is_null() {
        return false;
    }
    // SAFETY: non-null (checked), a C string by the caller's contract (dlsym's).
    let name = unsafe { CStr::from_ptr(symbol) }.to_bytes();
    if name == b"dlsym" || name == b"dlvsym" {
        return true;
    }
    if !name.starts_with(b"cu") {
        return false;
    }
    std::str::from_utf8(name).is_ok_and(|n| hook_index(n).is_some() || unknown_gated(n))
}

/// Where `dlsym` goes on: glibc's, as a tail call that keeps the caller's return address (so
/// `RTLD_NEXT` is the caller's next), or the shim's answer.
extern "C" fn dlsym_route(_handle: *mut c_void, symbol: *const c_char) -> *const c_void {
    std::panic::catch_unwind(|| match real_dlsym() {
        Some(real) if !answers(symbol) => real as *const c_void,
        _ => dlsym_answer as *const c_void,
    })
    .unwrap_or(dlsym_answer as *const c_void)
}

/// As [`dlsym_route`], for `dlvsym`.
extern "C" fn dlvsym_route(_handle: *mut c_void, symbol: *const c_char) -> *const c_void {
    std::panic::catch_unwind(|| match glibc().1 {
        Some(real) if !answers(symbol) => real as *const c_void,
        _ => dlvsym_answer as *const c_void,
    })
    .unwrap_or(dlvsym_answer as *const c_void)
}

// The entry points: save the arguments, ask the route, restore them and jump, so that the
// function jumped to returns straight to the caller and sees the caller's return address.

/// Our `dlsym` (see [`dlsym_route`]).
///
/// # Safety
/// As libc's `dlsym`: `handle` is a handle from `dlopen` or a pseudo-handle, `symbol` a C string.
#[cfg(target_arch = "x86_64")]
#[unsafe(naked)]
#[no_mangle]
pub unsafe extern "C" fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void {
    // The stack is 16-byte aligned at the call (two pushes and 8 bytes after the return
    // address); the route preserves nothing the jump needs but the restored arguments.
    core::arch::naked_asm!(
        "push rdi",
        "push rsi",
        "sub rsp, 8",
        "call {route}",
        "add rsp, 8",
        "pop rsi",
        "pop rdi",
        "jmp rax",
        route = sym dlsym_route,
    )
}

/// Our `dlvsym` (see [`dlvsym_route`]).
///
/// # Safety
/// As libc's `dlvsym`: a handle or pseudo-handle and two C strings.
#[cfg(target_arch = "x86_64")]
#[unsafe(naked)]
#[no_mangle]
pub unsafe extern "C" fn dlvsym(
    handle: *mut c_void,
    symbol: *const c_char,
    version: *const c_char,
) -> *mut c_void {
    core::arch::naked_asm!(
        "push rdi",
        "push rsi",
        "push rdx",
        "call {route}",
        "pop rdx",
        "pop rsi",
        "pop rdi",
        "jmp rax",
        route = sym dlvsym_route,
    )
}

/// Our `dlsym` (see [`dlsym_route`]); x16 is the register a branch into a BTI-protected
/// function may use.
///
/// # Safety
/// As libc's `dlsym`: `handle` is a handle from `dlopen` or a pseudo-handle, `symbol` a C string.
#[cfg(target_arch = "aarch64")]
#[unsafe(naked)]
#[no_mangle]
pub unsafe extern "C" fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void {
    core::arch::naked_asm!(
        "stp x29, x30, [sp, #-32]!",
        "mov x29, sp",
        "stp x0, x1, [sp, #16]",
        "bl {route}",
        "mov x16, x0",
        "ldp x0, x1, [sp, #16]",
        "ldp x29, x30, [sp], #32",
        "br x16",
        route = sym dlsym_route,
    )
}

/// Our `dlvsym` (see [`dlvsym_route`]).
///
/// # Safety
/// As libc's `dlvsym`: a handle or pseudo-handle and two C strings.
#[cfg(target_arch = "aarch64")]
#[unsafe(naked)]
#[no_mangle]
pub unsafe extern "C" fn dlvsym(
    handle: *mut c_void,
    symbol: *const c_char,
    version: *const c_char,
) -> *mut c_void {
    core::arch::naked_asm!(
        "stp x29, x30, [sp, #-48]!",
        "mov x29, sp",
        "stp x0, x1, [sp, #16]",
        "str x2, [sp, #32]",
        "bl {route}",
        "mov x16, x0",
        "ldp x0, x1, [sp, #16]",
        "ldr x2, [sp, #32]",
        "ldp x29, x30, [sp], #48",
        "br x16",
        route = sym dlvsym_route,
    )
}

/// The shim's answer to a lookup of a name it answers ([`answers`]): its hook (when the driver
/// has the function, looked up as asked), its own `dlsym`/`dlvsym`, or nothing for a launch or
/// allocation name it does not know.
extern "C" fn dlsym_answer(handle: *mut c_void, symbol: *const c_char) -> *mut c_void {
    std::panic::catch_unwind(|| {
        if symbol.is_null() {
            return std::ptr::null_mut();
        }
        // SAFETY: non-null (checked), a C string by the caller's contract (dlsym's).
        let name = unsafe { CStr::from_ptr(symbol) }.to_str().unwrap_or("");
        match name {
            "dlsym" => return dlsym as *mut c_void,
            "dlvsym" => return dlvsym as *mut c_void,
            _ => {}
        }
        let Some(i) = hook_index(name) else {
            refused(
                name,
                "a launch or allocation entry point carve does not know",
            );
            return not_found();
        };
        let pseudo = handle == libc::RTLD_NEXT || handle == libc::RTLD_DEFAULT;
        let found = if pseudo {
            real(i, symbol_name(i))
        } else {
            // SAFETY: glibc's dlsym with the caller's handle (a handle lookup does not depend
            // on who asks) and the name checked above.
            real_dlsym().map_or(std::ptr::null_mut(), |dl| unsafe { dl(handle, symbol) })
        };
        if found.is_null() {
            return not_found();
        }
        if found != hook_ptr(i) {
            let _ = REAL[i].compare_exchange(std::ptr::null_mut(), found, AcqRel, Acquire);
        }
        hook_ptr(i)
    })
    .unwrap_or(std::ptr::null_mut())
}

/// [`dlsym_answer`] for `dlvsym` (the driver's names are unversioned).
extern "C" fn dlvsym_answer(
    handle: *mut c_void,
    symbol: *const c_char,
    _version: *const c_char,
) -> *mut c_void {
    dlsym_answer(handle, symbol)
}

/// Null, with `dlerror` saying why (a failed lookup of a name no library has).
fn not_found() -> *mut c_void {
    if let Some(dl) = real_dlsym() {
        // SAFETY: glibc's dlsym with a pseudo-handle and a static C string; it only sets the
        // thread's dlerror state.
        unsafe { dl(libc::RTLD_DEFAULT, c"carve-shim: refused".as_ptr()) };
    }
    std::ptr::null_mut()
}

// ---------------------------------------------------------------------------------------------
// The hooks and the driver's functions they call.

/// The real driver function of a hooked entry point, typed: `F` is the entry point's type in
/// cuda.h (`hooks!` makes the only values, pairing each name with its `PFN_` type).
struct Slot<F> {
    idx: usize,
    ty: PhantomData<F>,
}

impl<F: Copy> Slot<F> {
    /// The driver's function of exactly the hook's name, or `None` when the driver has none.
    fn get(&self) -> Option<F> {
        let p = real(self.idx, symbol_name(self.idx));
        // SAFETY: a non-null `p` is the driver's function of the hook's exact name (found under
        // that name by dlsym or cuGetProcAddress, and never one of our hooks), and `F` is that
        // function's pointer type (`hooks!` checks it is a function pointer, as large as `p`).
        (!p.is_null()).then(|| unsafe { std::mem::transmute_copy::<*mut c_void, F>(&p) })
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
        /// The same names as C strings.
        const HOOK_NAMES: &[&CStr] = &[ $( c_name(concat!(stringify!($hook), "\0")) ),* ];
        const SLOTS: usize = HOOKS.len();
        fn hook_ptr(idx: usize) -> *mut c_void {
            $( if idx == Idx::$slot as usize { return $hook as *mut c_void; } )*
            std::ptr::null_mut()
        }
        $(
            // A refused entry point never calls the driver's function: its slot is unused.
            #[allow(dead_code)]
            const $slot: Slot<$pfn> = Slot { idx: Idx::$slot as usize, ty: PhantomData };
            const _: $pfn = $hook;
        )*
    };
}

/// `name` as a C string (`name` ends with its NUL).
const fn c_name(name: &'static str) -> &'static CStr {
    match CStr::from_bytes_with_nul(name.as_bytes()) {
        Ok(c) => c,
        Err(_) => panic!("a hook name is not a C string"),
    }
}

hooks! {
    // Launches: gated.
    LAUNCH_KERNEL: cuLaunchKernel as PFN_cuLaunchKernel,
    LAUNCH_KERNEL_PTSZ: cuLaunchKernel_ptsz as PFN_cuLaunchKernel_ptsz,
    LAUNCH_KERNEL_EX: cuLaunchKernelEx as PFN_cuLaunchKernelEx,
    LAUNCH_KERNEL_EX_PTSZ: cuLaunchKernelEx_ptsz as PFN_cuLaunchKernelEx_ptsz,
    LAUNCH_COOPERATIVE: cuLaunchCooperativeKernel as PFN_cuLaunchCooperativeKernel,
    LAUNCH_COOPERATIVE_PTSZ: cuLaunchCooperativeKernel_ptsz as PFN_cuLaunchCooperativeKernel_ptsz,
    LAUNCH_MULTI_DEVICE: cuLaunchCooperativeKernelMultiDevice
        as PFN_cuLaunchCooperativeKernelMultiDevice,
    LAUNCH: cuLaunch as PFN_cuLaunch,
    LAUNCH_GRID: cuLaunchGrid as PFN_cuLaunchGrid,
    LAUNCH_GRID_ASYNC: cuLaunchGridAsync as PFN_cuLaunchGridAsync,
    GRAPH_LAUNCH: cuGraphLaunch as PFN_cuGraphLaunch,
    GRAPH_LAUNCH_PTSZ: cuGraphLaunch_ptsz as PFN_cuGraphLaunch_ptsz,
    // Allocations: reserved against the limit.
    MEM_ALLOC: cuMemAlloc_v2 as PFN_cuMemAlloc_v2,
    MEM_ALLOC_MANAGED: cuMemAllocManaged as PFN_cuMemAllocManaged,
    MEM_ALLOC_PITCH: cuMemAllocPitch_v2 as PFN_cuMemAllocPitch_v2,
    MEM_ALLOC_ASYNC: cuMemAllocAsync as PFN_cuMemAllocAsync,
    MEM_ALLOC_ASYNC_PTSZ: cuMemAllocAsync_ptsz as PFN_cuMemAllocAsync_ptsz,
    MEM_ALLOC_FROM_POOL: cuMemAllocFromPoolAsync as PFN_cuMemAllocFromPoolAsync,
    MEM_ALLOC_FROM_POOL_PTSZ: cuMemAllocFromPoolAsync_ptsz
        as PFN_cuMemAllocFromPoolAsync_ptsz,
    MEM_CREATE: cuMemCreate as PFN_cuMemCreate,
    ARRAY_CREATE: cuArrayCreate_v2 as PFN_cuArrayCreate_v2,
    ARRAY_3D_CREATE: cuArray3DCreate_v2 as PFN_cuArray3DCreate_v2,
    MIPMAPPED_CREATE: cuMipmappedArrayCreate as PFN_cuMipmappedArrayCreate,
    // Frees, and what keeps a cuMemCreate allocation alive.
    MEM_FREE: cuMemFree_v2 as PFN_cuMemFree_v2,
    MEM_FREE_ASYNC: cuMemFreeAsync as PFN_cuMemFreeAsync,
    MEM_FREE_ASYNC_PTSZ: cuMemFreeAsync_ptsz as PFN_cuMemFreeAsync_ptsz,
    MEM_RELEASE: cuMemRelease as PFN_cuMemRelease,
    MEM_MAP: cuMemMap as PFN_cuMemMap,
    MEM_UNMAP: cuMemUnmap as PFN_cuMemUnmap,
    MEM_RETAIN: cuMemRetainAllocationHandle as PFN_cuMemRetainAllocationHandle,
    ARRAY_DESTROY: cuArrayDestroy as PFN_cuArrayDestroy,
    MIPMAPPED_DESTROY: cuMipmappedArrayDestroy as PFN_cuMipmappedArrayDestroy,
    // Refused: memory carve cannot account.
    MEM_ALLOC_V1: cuMemAlloc as PFN_cuMemAlloc,
    MEM_ALLOC_PITCH_V1: cuMemAllocPitch as PFN_cuMemAllocPitch,
    ARRAY_CREATE_V1: cuArrayCreate as PFN_cuArrayCreate,
    ARRAY_3D_CREATE_V1: cuArray3DCreate as PFN_cuArray3DCreate,
    GRAPH_ADD_MEM_ALLOC_NODE: cuGraphAddMemAllocNode as PFN_cuGraphAddMemAllocNode,
    GRAPH_ADD_NODE: cuGraphAddNode as PFN_cuGraphAddNode,
    GRAPH_ADD_NODE_V2: cuGraphAddNode_v2 as PFN_cuGraphAddNode_v2,
    // Reported as the limit.
    MEM_GET_INFO: cuMemGetInfo_v2 as PFN_cuMemGetInfo_v2,
    DEVICE_TOTAL_MEM: cuDeviceTotalMem_v2 as PFN_cuDeviceTotalMem_v2,
    // How programs find the rest.
    GET_PROC_ADDRESS: cuGetProcAddress as PFN_cuGetProcAddress,
    GET_PROC_ADDRESS_V2: cuGetProcAddress_v2 as PFN_cuGetProcAddress_v2,
    // Passed through, noting when the program's work had finished.
    CTX_SYNCHRONIZE: cuCtxSynchronize as PFN_cuCtxSynchronize,
    STREAM_SYNCHRONIZE: cuStreamSynchronize as PFN_cuStreamSynchronize,
    STREAM_SYNCHRONIZE_PTSZ: cuStreamSynchronize_ptsz as PFN_cuStreamSynchronize_ptsz,
    EVENT_SYNCHRONIZE: cuEventSynchronize as PFN_cuEventSynchronize,
}

/// Not hooks: the driver's functions the shim calls for itself (whether a stream is being
/// captured), by exact name, after the hooks' slots.
const IS_CAPTURING: usize = SLOTS;
const IS_CAPTURING_PTSZ: usize = SLOTS + 1;
const OWN_NAMES: [&CStr; 2] = [c"cuStreamIsCapturing", c"cuStreamIsCapturing_ptsz"];

/// The real driver functions, filled as they are found: the hooks', then the shim's own.
static REAL: [AtomicPtr<c_void>; SLOTS + 2] =
    [const { AtomicPtr::new(std::ptr::null_mut()) }; SLOTS + 2];

/// The exact name of a slot.
fn symbol_name(idx: usize) -> &'static CStr {
    HOOK_NAMES
        .get(idx)
        .copied()
        .unwrap_or_else(|| OWN_NAMES[(idx - SLOTS).min(1)])
}

/// The slot of a hook by its exported name.
fn hook_index(name: &str) -> Option<usize> {
    HOOKS.iter().position(|h| *h == name)
}

/// A name without its per-thread suffix and version: `cuMemAllocAsync_ptsz` → `cuMemAllocAsync`,
/// `cuGraphAddNode_v2` → `cuGraphAddNode` (what the CUDA runtime asks `cuGetProcAddress` for).
fn base_name(name: &str) -> &str {
    let n = name
        .strip_suffix("_ptsz")
        .or_else(|| name.strip_suffix("_ptds"))
        .unwrap_or(name);
    match n.rsplit_once("_v") {
        Some((b, v)) if !v.is_empty() && v.bytes().all(|c| c.is_ascii_digit()) => b,
        _ => n,
    }
}

/// A launch or allocation entry point, or `cuGetProcAddress` (which finds them): the names whose
/// every version and variant must be one of the hooks. Host memory (`cuMemAllocHost`) and host
/// functions (`cuLaunchHostFunc`) are not the GPU's.
fn gated_name(name: &str) -> bool {
    const GATED: &[&str] = &[
        "cuGetProcAddress",
        "cuLaunch",
        "cuGraphLaunch",
        "cuMemAlloc",
        "cuMemCreate",
        "cuArrayCreate",
        "cuArray3DCreate",
        "cuMipmappedArrayCreate",
        "cuGraphAddMemAllocNode",
        "cuGraphAddNode",
    ];
    GATED.iter().any(|g| name.starts_with(g))
        && !name.starts_with("cuLaunchHostFunc")
        && !name.starts_with("cuMemAllocHost")
}

/// A launch or allocation entry point that is not one of the hooks (a version or variant newer
/// than the shim): found by nobody, since the shim could neither gate nor account it.
fn unknown_gated(name: &str) -> bool {
    gated_name(name) && hook_index(name).is_none()
}

/// The driver, `libcuda.so.1`, if the process has loaded it.
fn driver() -> *mut c_void {
    static DRIVER: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());
    let h = DRIVER.load(Acquire);
    if !h.is_null() {
        return h;
    }
    // SAFETY: dlopen with a static C string and RTLD_NOLOAD never loads anything new: it
    // returns a handle of a library already loaded (which the driver never is unloaded from a
    // CUDA process), or null.
    let h = unsafe {
        libc::dlopen(
            c"libcuda.so.1".as_ptr(),
            libc::RTLD_NOLOAD | libc::RTLD_LAZY,
        )
    };
    if !h.is_null() {
        DRIVER.store(h, Release);
    }
    h
}

/// The real function of a slot: as found before, else the driver's function of that exact name
/// (in `libcuda.so.1`, never a wrapper between the shim and it), else the next definition
/// after the shim.
fn real(idx: usize, name: &CStr) -> *mut c_void {
    let p = REAL[idx].load(Acquire);
    if !p.is_null() {
        return p;
    }
    let Some(dl) = real_dlsym() else {
        return std::ptr::null_mut();
    };
    let h = driver();
    let mut f = std::ptr::null_mut();
    if !h.is_null() {
        // SAFETY: glibc's dlsym with the driver's live handle and a C string.
        f = unsafe { dl(h, name.as_ptr()) };
    }
    if f.is_null() {
        // SAFETY: glibc's dlsym with a pseudo-handle and a C string (called from the shim: the
        // definitions after it, i.e. a driver linked by the program).
        f = unsafe { dl(libc::RTLD_NEXT, name.as_ptr()) };
    }
    // Never a hook: calling it as the real function would call itself.
    if f.is_null() || (idx < SLOTS && f == hook_ptr(idx)) {
        return std::ptr::null_mut();
    }
    REAL[idx].store(f, Release);
    f
}

/// Says once per entry point that it was refused, and why.
fn refused(name: &str, why: &str) {
    static SAID: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let mut said = SAID.lock().unwrap_or_else(|p| p.into_inner());
    if said
        .get_or_insert_with(HashSet::new)
        .insert(name.to_string())
    {
        eprintln!("carve-shim: {name} is refused: {why}");
    }
}
// Configuration: read once, when the library is loaded (before the program's `main` could
// change its environment).

/// Where the configuration comes from, in the order the shim looks (see the crate's doc).
fn read_config() -> Result<ShimConfig, String> {
    let file = if std::path::Path::new(proto::SHIM_CONFIG).exists() {
        Some(std::path::PathBuf::from(proto::SHIM_CONFIG))
    } else {
        std::env::var_os(proto::ENV_SHIM_CONFIG)
            .filter(|p| !p.is_empty())
            .map(std::path::PathBuf::from)
    };
    if let Some(path) = file {
        let shown = path.display();
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read the configuration {shown} ({e})"))?;
        return ShimConfig::parse(&text).map_err(|e| format!("{shown}:{e}"));
    }
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    Ok(ShimConfig {
        socket: env(proto::ENV_SCHED_SOCKET).unwrap_or_else(|| proto::DEFAULT_SOCKET.into()),
        tenant: env(proto::ENV_TENANT).unwrap_or_default(),
        token_file: env(proto::ENV_TOKEN_FILE),
        fail: match env(proto::ENV_FAIL).as_deref() {
            Some(proto::FAIL_CLOSED) => proto::FAIL_CLOSED.into(),
            _ => proto::FAIL_OPEN.into(),
        },
    })
}

/// The configuration, or why it cannot be had (then the shim fails closed).
fn config() -> &'static Result<ShimConfig, String> {
    static CONFIG: OnceLock<Result<ShimConfig, String>> = OnceLock::new();
    CONFIG.get_or_init(|| {
        std::panic::catch_unwind(read_config)
            .unwrap_or_else(|_| Err("cannot read the configuration".into()))
    })
}

extern "C" fn at_load() {
    let _ = std::panic::catch_unwind(config);
}

/// Reads the configuration as the library is loaded.
#[used]
#[link_section = ".init_array"]
static AT_LOAD: extern "C" fn() = at_load;

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
    match config() {
        Ok(c) if c.fail == proto::FAIL_OPEN => MODE_OPEN,
        _ => MODE_CLOSED,
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
        let c = match config() {
            Ok(c) => c,
            Err(e) => {
                lose(e);
                return;
            }
        };
        let (socket, tenant) = (c.socket.clone(), c.tenant.clone());
        let token = c
            .token_file
            .as_ref()
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

/// What a live allocation's handle is.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    /// A device pointer (`cuMemAlloc*`).
    Device,
    /// A `CUarray`.
    Array,
    /// A `CUmipmappedArray`.
    Mipmapped,
}

/// Sizes of live allocations by kind and handle.
static SIZES: Mutex<Option<HashMap<(Kind, u64), u64>>> = Mutex::new(None);

fn sizes() -> MutexGuard<'static, Option<HashMap<(Kind, u64), u64>>> {
    SIZES.lock().unwrap_or_else(|p| p.into_inner())
}

fn remember(kind: Kind, handle: u64, bytes: u64) {
    sizes()
        .get_or_insert_with(HashMap::new)
        .insert((kind, handle), bytes);
}

fn forget(kind: Kind, handle: u64) -> u64 {
    sizes()
        .as_mut()
        .and_then(|m| m.remove(&(kind, handle)))
        .unwrap_or(0)
}

/// A `cuMemCreate` allocation: its size, the references to its handle (its creation and each
/// `cuMemRetainAllocationHandle`, each given back by a `cuMemRelease`) and its mappings. The
/// driver frees it when both are gone, and so its reservation is kept until then.
struct Generic {
    bytes: u64,
    refs: u64,
    maps: u64,
}

#[derive(Default)]
struct Vmm {
    allocations: HashMap<u64, Generic>,
    /// Mapped address → the allocation mapped there.
    mappings: BTreeMap<u64, u64>,
}

static VMM: Mutex<Option<Vmm>> = Mutex::new(None);

/// The `cuMemCreate` bookkeeping; `f` returns the bytes whose reservation ends.
fn vmm(f: impl FnOnce(&mut Vmm) -> u64) {
    let bytes = {
        let mut g = VMM.lock().unwrap_or_else(|p| p.into_inner());
        f(g.get_or_insert_with(Vmm::default))
    };
    unreserve(bytes);
}

impl Vmm {
    /// The reservation that ends when `handle` is neither referenced nor mapped.
    fn settle(&mut self, handle: u64) -> u64 {
        match self.allocations.get(&handle) {
            Some(g) if g.refs == 0 && g.maps == 0 => {
                self.allocations.remove(&handle).map_or(0, |g| g.bytes)
            }
            _ => 0,
        }
    }
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

/// An entry point carve cannot account: refused, saying so once.
fn refuse(name: &str, why: &str) -> CUresult {
    refused(name, why);
    CUDA_ERROR_NOT_SUPPORTED
}

/// Why the API before CUDA 3.2 is refused.
const V1_WHY: &str = "the API before CUDA 3.2 (32-bit addresses) is not accounted; use the _v2 \
                      function cuda.h names";
/// Why graph memory nodes are refused.
const GRAPH_MEM_WHY: &str = "a graph's memory-allocation node allocates each time the graph \
                             runs, which carve cannot account against the tenant's limit";

/// Whether `stream` is being captured into a graph (an allocation on it would become a graph
/// memory node); `ptsz` for the per-thread-default-stream variants, whose null stream is the
/// thread's. No when the driver cannot say.
fn capturing(stream: CUstream, ptsz: bool) -> bool {
    let idx = if ptsz {
        IS_CAPTURING_PTSZ
    } else {
        IS_CAPTURING
    };
    let slot: Slot<PFN_cuStreamIsCapturing> = Slot {
        idx,
        ty: PhantomData,
    };
    let Some(is_capturing) = slot.get() else {
        return false;
    };
    let mut status = CU_STREAM_CAPTURE_STATUS_NONE;
    // SAFETY: the driver's cuStreamIsCapturing with the caller's stream and a live out-value.
    let r = unsafe { is_capturing(stream, &mut status) };
    r == CUDA_SUCCESS && status != CU_STREAM_CAPTURE_STATUS_NONE
}

/// An allocation of `bytes`: reserved against the limit first, made by `alloc`, and given back
/// if the driver fails. On success `created` records what was made and says its real size (at
/// most `bytes`; the rest of the reservation is given back); `None` keeps the whole reservation.
fn allocation(
    bytes: u64,
    alloc: impl FnOnce() -> CUresult,
    created: impl FnOnce() -> Option<u64>,
) -> CUresult {
    if let Err(e) = reserve(bytes) {
        return e;
    }
    let r = alloc();
    if r != CUDA_SUCCESS {
        unreserve(bytes);
        return r;
    }
    if let Some(size) = created() {
        unreserve(bytes - size.min(bytes));
    }
    r
}

/// An allocation of `bytes` that `alloc` makes and, on success, writes to `out` (a device
/// pointer or a handle of `kind`), as [`allocation`].
///
/// # Safety
/// `out` is null or the out-parameter that `alloc` writes when it succeeds.
unsafe fn allocation_to(
    kind: Kind,
    out: *const u64,
    bytes: u64,
    alloc: impl FnOnce() -> CUresult,
) -> CUresult {
    allocation(bytes, alloc, || {
        // SAFETY: called only after `alloc` succeeded, i.e. wrote `out` (the caller's contract).
        let handle = unsafe { written(out) }?;
        remember(kind, handle, bytes);
        Some(bytes)
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
fn released(kind: Kind, handle: u64, r: CUresult) -> CUresult {
    if r == CUDA_SUCCESS {
        unreserve(forget(kind, handle));
    }
    r
}

// ---------------------------------------------------------------------------------------------
// Launches. The arguments are the caller's, passed to the driver unchanged: the driver's
// contract for them is the caller's to keep.

macro_rules! launch_kernel {
    ($name:ident, $slot:ident) => {
        #[no_mangle]
        pub unsafe extern "C" fn $name(
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
            gated($slot, |real| {
                // SAFETY: the driver's function of this name with the caller's arguments,
                // unchanged.
                unsafe { real(f, gx, gy, gz, bx, by, bz, shmem, stream, params, extra) }
            })
        }
    };
}
launch_kernel!(cuLaunchKernel, LAUNCH_KERNEL);
launch_kernel!(cuLaunchKernel_ptsz, LAUNCH_KERNEL_PTSZ);

macro_rules! launch_kernel_ex {
    ($name:ident, $slot:ident) => {
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            config: *const CUlaunchConfig,
            f: CUfunction,
            params: VoidPtrPtr,
            extra: VoidPtrPtr,
        ) -> CUresult {
            gated($slot, |real| {
                // SAFETY: the driver's function of this name with the caller's arguments,
                // unchanged.
                unsafe { real(config, f, params, extra) }
            })
        }
    };
}
launch_kernel_ex!(cuLaunchKernelEx, LAUNCH_KERNEL_EX);
launch_kernel_ex!(cuLaunchKernelEx_ptsz, LAUNCH_KERNEL_EX_PTSZ);

macro_rules! launch_cooperative {
    ($name:ident, $slot:ident) => {
        #[no_mangle]
        pub unsafe extern "C" fn $name(
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
            gated($slot, |real| {
                // SAFETY: the driver's function of this name with the caller's arguments,
                // unchanged.
                unsafe { real(f, gx, gy, gz, bx, by, bz, shmem, stream, params) }
            })
        }
    };
}
launch_cooperative!(cuLaunchCooperativeKernel, LAUNCH_COOPERATIVE);
launch_cooperative!(cuLaunchCooperativeKernel_ptsz, LAUNCH_COOPERATIVE_PTSZ);

#[no_mangle]
pub unsafe extern "C" fn cuLaunchCooperativeKernelMultiDevice(
    list: *mut CUDA_LAUNCH_PARAMS,
    devices: c_uint,
    flags: c_uint,
) -> CUresult {
    gated(LAUNCH_MULTI_DEVICE, |real| {
        // SAFETY: the driver's function with the caller's arguments, unchanged.
        unsafe { real(list, devices, flags) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuLaunch(f: CUfunction) -> CUresult {
    gated(LAUNCH, |real| {
        // SAFETY: the driver's cuLaunch with the caller's function, unchanged.
        unsafe { real(f) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuLaunchGrid(f: CUfunction, w: c_int, h: c_int) -> CUresult {
    gated(LAUNCH_GRID, |real| {
        // SAFETY: the driver's cuLaunchGrid with the caller's arguments, unchanged.
        unsafe { real(f, w, h) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuLaunchGridAsync(
    f: CUfunction,
    w: c_int,
    h: c_int,
    stream: CUstream,
) -> CUresult {
    gated(LAUNCH_GRID_ASYNC, |real| {
        // SAFETY: the driver's cuLaunchGridAsync with the caller's arguments, unchanged.
        unsafe { real(f, w, h, stream) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphLaunch(exec: CUgraphExec, stream: CUstream) -> CUresult {
    gated(GRAPH_LAUNCH, |real| {
        // SAFETY: the driver's cuGraphLaunch with the caller's handles, unchanged.
        unsafe { real(exec, stream) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphLaunch_ptsz(exec: CUgraphExec, stream: CUstream) -> CUresult {
    gated(GRAPH_LAUNCH_PTSZ, |real| {
        // SAFETY: the driver's cuGraphLaunch_ptsz with the caller's handles, unchanged.
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
        unsafe { allocation_to(Kind::Device, dptr, bytes as u64, || real(dptr, bytes)) }
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
        unsafe {
            allocation_to(Kind::Device, dptr, bytes as u64, || {
                real(dptr, bytes, flags)
            })
        }
    })
}

macro_rules! mem_alloc_async {
    ($name:ident, $slot:ident, $ptsz:expr) => {
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            dptr: *mut CUdeviceptr,
            bytes: usize,
            stream: CUstream,
        ) -> CUresult {
            hook($slot, |real| {
                if capturing(stream, $ptsz) {
                    return refuse(stringify!($name), GRAPH_MEM_WHY);
                }
                // SAFETY: the driver's function of this name with the caller's arguments,
                // unchanged; on success it has written the new pointer to `dptr`.
                unsafe {
                    allocation_to(Kind::Device, dptr, bytes as u64, || {
                        real(dptr, bytes, stream)
                    })
                }
            })
        }
    };
}
mem_alloc_async!(cuMemAllocAsync, MEM_ALLOC_ASYNC, false);
mem_alloc_async!(cuMemAllocAsync_ptsz, MEM_ALLOC_ASYNC_PTSZ, true);

macro_rules! mem_alloc_from_pool {
    ($name:ident, $slot:ident, $ptsz:expr) => {
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            dptr: *mut CUdeviceptr,
            bytes: usize,
            pool: CUmemoryPool,
            stream: CUstream,
        ) -> CUresult {
            hook($slot, |real| {
                if capturing(stream, $ptsz) {
                    return refuse(stringify!($name), GRAPH_MEM_WHY);
                }
                // SAFETY: the driver's function of this name with the caller's arguments,
                // unchanged; on success it has written the new pointer to `dptr`.
                unsafe {
                    allocation_to(Kind::Device, dptr, bytes as u64, || {
                        real(dptr, bytes, pool, stream)
                    })
                }
            })
        }
    };
}
mem_alloc_from_pool!(cuMemAllocFromPoolAsync, MEM_ALLOC_FROM_POOL, false);
mem_alloc_from_pool!(cuMemAllocFromPoolAsync_ptsz, MEM_ALLOC_FROM_POOL_PTSZ, true);

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
                let size = (p as u64).saturating_mul(height as u64).min(worst);
                remember(Kind::Device, d, size);
                Some(size)
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
        let bytes = bytes as u64;
        allocation(
            bytes,
            // SAFETY: the driver's cuMemCreate with the caller's arguments, unchanged.
            || unsafe { real(handle, bytes as usize, prop, flags) },
            || {
                // SAFETY: called only after that succeeded: the driver wrote the handle.
                let h = unsafe { written(handle) }?;
                vmm(|v| {
                    v.allocations.insert(
                        h,
                        Generic {
                            bytes,
                            refs: 1,
                            maps: 0,
                        },
                    );
                    0
                });
                Some(bytes)
            },
        )
    })
}

/// Bytes of one element: the classic formats by their size and channels; any other format at
/// most 16 (four 32-bit channels, the widest element a CUDA array has).
fn element_bytes(format: CUarray_format, channels: c_uint) -> u64 {
    array_format_bytes(format).map_or(16, |b| b.saturating_mul(channels.max(1) as u64))
}

/// What an array of these dimensions takes (0 counts as 1: a dimension the array does not have).
fn array_bytes(dims: [u64; 3], format: CUarray_format, channels: c_uint) -> u64 {
    dims.iter().fold(element_bytes(format, channels), |b, &d| {
        b.saturating_mul(d.max(1))
    })
}

/// What a mipmapped array takes: every level, each half the one before in every dimension.
fn mipmapped_bytes(d: &CUDA_ARRAY3D_DESCRIPTOR, levels: c_uint) -> u64 {
    (0..levels.min(64)).fold(0u64, |sum, l| {
        let dim = |x: usize| (x as u64) >> l;
        sum.saturating_add(array_bytes(
            [dim(d.Width), dim(d.Height), dim(d.Depth)],
            d.Format,
            d.NumChannels,
        ))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuArrayCreate_v2(
    array: *mut CUarray,
    desc: *const CUDA_ARRAY_DESCRIPTOR,
) -> CUresult {
    hook(ARRAY_CREATE, |real| {
        // SAFETY: `desc` is null or points to the caller's descriptor (cuda.h's contract: a
        // `const CUDA_ARRAY_DESCRIPTOR *`), read here before the driver reads it.
        let bytes = unsafe { desc.as_ref() }.map_or(0, |d| {
            array_bytes(
                [d.Width as u64, d.Height as u64, 1],
                d.Format,
                d.NumChannels,
            )
        });
        // SAFETY: the driver's cuArrayCreate_v2 with the caller's arguments, unchanged; on
        // success it has written the new array to `array`.
        unsafe {
            allocation_to(Kind::Array, array.cast::<u64>(), bytes, || {
                real(array, desc)
            })
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuArray3DCreate_v2(
    array: *mut CUarray,
    desc: *const CUDA_ARRAY3D_DESCRIPTOR,
) -> CUresult {
    hook(ARRAY_3D_CREATE, |real| {
        // SAFETY: `desc` is null or points to the caller's `const CUDA_ARRAY3D_DESCRIPTOR *`,
        // read here before the driver reads it.
        let bytes = unsafe { desc.as_ref() }.map_or(0, |d| {
            let dims = [d.Width as u64, d.Height as u64, d.Depth as u64];
            array_bytes(dims, d.Format, d.NumChannels)
        });
        // SAFETY: the driver's cuArray3DCreate_v2 with the caller's arguments, unchanged; on
        // success it has written the new array to `array`.
        unsafe {
            allocation_to(Kind::Array, array.cast::<u64>(), bytes, || {
                real(array, desc)
            })
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMipmappedArrayCreate(
    array: *mut CUmipmappedArray,
    desc: *const CUDA_ARRAY3D_DESCRIPTOR,
    levels: c_uint,
) -> CUresult {
    hook(MIPMAPPED_CREATE, |real| {
        // SAFETY: `desc` is null or points to the caller's `const CUDA_ARRAY3D_DESCRIPTOR *`,
        // read here before the driver reads it.
        let bytes = unsafe { desc.as_ref() }.map_or(0, |d| mipmapped_bytes(d, levels));
        // SAFETY: the driver's cuMipmappedArrayCreate with the caller's arguments, unchanged;
        // on success it has written the new array to `array`.
        unsafe {
            allocation_to(Kind::Mipmapped, array.cast::<u64>(), bytes, || {
                real(array, desc, levels)
            })
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemFree_v2(dptr: CUdeviceptr) -> CUresult {
    hook(MEM_FREE, |real| {
        // SAFETY: the driver's cuMemFree_v2 with the caller's device pointer, unchanged.
        released(Kind::Device, dptr, unsafe { real(dptr) })
    })
}

macro_rules! mem_free_async {
    ($name:ident, $slot:ident, $ptsz:expr) => {
        /// A free on a stream being captured becomes a graph node that frees the memory when
        /// the graph runs, if ever: until then the reservation is kept.
        #[no_mangle]
        pub unsafe extern "C" fn $name(dptr: CUdeviceptr, stream: CUstream) -> CUresult {
            hook($slot, |real| {
                let captured = capturing(stream, $ptsz);
                // SAFETY: the driver's function of this name with the caller's arguments,
                // unchanged.
                let r = unsafe { real(dptr, stream) };
                if captured {
                    return r;
                }
                released(Kind::Device, dptr, r)
            })
        }
    };
}
mem_free_async!(cuMemFreeAsync, MEM_FREE_ASYNC, false);
mem_free_async!(cuMemFreeAsync_ptsz, MEM_FREE_ASYNC_PTSZ, true);

#[no_mangle]
pub unsafe extern "C" fn cuMemRelease(handle: CUmemGenericAllocationHandle) -> CUresult {
    hook(MEM_RELEASE, |real| {
        // SAFETY: the driver's cuMemRelease with the caller's handle, unchanged.
        let r = unsafe { real(handle) };
        if r == CUDA_SUCCESS {
            vmm(|v| {
                if let Some(g) = v.allocations.get_mut(&handle) {
                    g.refs = g.refs.saturating_sub(1);
                }
                v.settle(handle)
            });
        }
        r
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemMap(
    ptr: CUdeviceptr,
    size: usize,
    offset: usize,
    handle: CUmemGenericAllocationHandle,
    flags: u64,
) -> CUresult {
    hook(MEM_MAP, |real| {
        // SAFETY: the driver's cuMemMap with the caller's arguments, unchanged.
        let r = unsafe { real(ptr, size, offset, handle, flags) };
        if r == CUDA_SUCCESS {
            vmm(|v| {
                if let Some(g) = v.allocations.get_mut(&handle) {
                    g.maps += 1;
                    v.mappings.insert(ptr, handle);
                }
                0
            });
        }
        r
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemUnmap(ptr: CUdeviceptr, size: usize) -> CUresult {
    hook(MEM_UNMAP, |real| {
        // SAFETY: the driver's cuMemUnmap with the caller's arguments, unchanged.
        let r = unsafe { real(ptr, size) };
        if r == CUDA_SUCCESS {
            vmm(|v| {
                let end = ptr.saturating_add(size as u64);
                let unmapped: Vec<u64> = v.mappings.range(ptr..end).map(|(va, _)| *va).collect();
                let mut ended = 0u64;
                for va in unmapped {
                    if let Some(h) = v.mappings.remove(&va) {
                        if let Some(g) = v.allocations.get_mut(&h) {
                            g.maps = g.maps.saturating_sub(1);
                        }
                        ended = ended.saturating_add(v.settle(h));
                    }
                }
                ended
            });
        }
        r
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemRetainAllocationHandle(
    handle: *mut CUmemGenericAllocationHandle,
    addr: *mut c_void,
) -> CUresult {
    hook(MEM_RETAIN, |real| {
        // SAFETY: the driver's cuMemRetainAllocationHandle with the caller's arguments.
        let r = unsafe { real(handle, addr) };
        if r == CUDA_SUCCESS {
            // SAFETY: it succeeded, so it wrote the handle.
            if let Some(h) = unsafe { written(handle) } {
                vmm(|v| {
                    if let Some(g) = v.allocations.get_mut(&h) {
                        g.refs += 1;
                    }
                    0
                });
            }
        }
        r
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuArrayDestroy(array: CUarray) -> CUresult {
    hook(ARRAY_DESTROY, |real| {
        // SAFETY: the driver's cuArrayDestroy with the caller's handle, unchanged.
        released(Kind::Array, array as u64, unsafe { real(array) })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMipmappedArrayDestroy(array: CUmipmappedArray) -> CUresult {
    hook(MIPMAPPED_DESTROY, |real| {
        // SAFETY: the driver's cuMipmappedArrayDestroy with the caller's handle, unchanged.
        released(Kind::Mipmapped, array as u64, unsafe { real(array) })
    })
}

// Refused: the API before CUDA 3.2, and graph memory nodes.

#[no_mangle]
pub unsafe extern "C" fn cuMemAlloc(_dptr: *mut CUdeviceptr_v1, _bytes: c_uint) -> CUresult {
    guard(|| refuse("cuMemAlloc", V1_WHY))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocPitch(
    _dptr: *mut CUdeviceptr_v1,
    _pitch: *mut c_uint,
    _width: c_uint,
    _height: c_uint,
    _elem: c_uint,
) -> CUresult {
    guard(|| refuse("cuMemAllocPitch", V1_WHY))
}

#[no_mangle]
pub unsafe extern "C" fn cuArrayCreate(
    _array: *mut CUarray,
    _desc: *const CUDA_ARRAY_DESCRIPTOR_v1,
) -> CUresult {
    guard(|| refuse("cuArrayCreate", V1_WHY))
}

#[no_mangle]
pub unsafe extern "C" fn cuArray3DCreate(
    _array: *mut CUarray,
    _desc: *const CUDA_ARRAY3D_DESCRIPTOR_v1,
) -> CUresult {
    guard(|| refuse("cuArray3DCreate", V1_WHY))
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphAddMemAllocNode(
    _node: *mut CUgraphNode,
    _graph: CUgraph,
    _deps: *const CUgraphNode,
    _ndeps: usize,
    _params: *mut CUDA_MEM_ALLOC_NODE_PARAMS,
) -> CUresult {
    guard(|| refuse("cuGraphAddMemAllocNode", GRAPH_MEM_WHY))
}

/// Whether node parameters describe a memory-allocation node.
///
/// # Safety
/// `params` is null or points to the caller's `CUgraphNodeParams`, whose first field is the type.
unsafe fn allocates(params: *const CUgraphNodeParams) -> bool {
    // SAFETY: the caller's contract; only the leading `type` is read.
    unsafe { params.cast::<CUgraphNodeType>().as_ref() }
        .is_some_and(|&t| t == CU_GRAPH_NODE_TYPE_MEM_ALLOC)
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphAddNode(
    node: *mut CUgraphNode,
    graph: CUgraph,
    deps: *const CUgraphNode,
    ndeps: usize,
    params: *mut CUgraphNodeParams,
) -> CUresult {
    // SAFETY: `params` is the caller's `CUgraphNodeParams *` (null or readable).
    if unsafe { allocates(params) } {
        return guard(|| refuse("cuGraphAddNode", GRAPH_MEM_WHY));
    }
    hook(GRAPH_ADD_NODE, |real| {
        // SAFETY: the driver's cuGraphAddNode with the caller's arguments, unchanged.
        unsafe { real(node, graph, deps, ndeps, params) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphAddNode_v2(
    node: *mut CUgraphNode,
    graph: CUgraph,
    deps: *const CUgraphNode,
    edges: *const CUgraphEdgeData,
    ndeps: usize,
    params: *mut CUgraphNodeParams,
) -> CUresult {
    // SAFETY: `params` is the caller's `CUgraphNodeParams *` (null or readable).
    if unsafe { allocates(params) } {
        return guard(|| refuse("cuGraphAddNode_v2", GRAPH_MEM_WHY));
    }
    hook(GRAPH_ADD_NODE_V2, |real| {
        // SAFETY: the driver's cuGraphAddNode_v2 with the caller's arguments, unchanged.
        unsafe { real(node, graph, deps, edges, ndeps, params) }
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
pub unsafe extern "C" fn cuStreamSynchronize_ptsz(stream: CUstream) -> CUresult {
    hook(STREAM_SYNCHRONIZE_PTSZ, |real| {
        // SAFETY: the driver's cuStreamSynchronize_ptsz with the caller's stream, unchanged.
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

/// The name the driver exports a function under, when `p` is the start of one.
fn exported_name(p: *mut c_void) -> Option<String> {
    // SAFETY: an all-zero Dl_info (pointers null) is a valid value for dladdr to overwrite.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr only reads the loader's tables for `p` and writes `info`.
    if unsafe { libc::dladdr(p, &mut info) } == 0 || info.dli_sname.is_null() || info.dli_saddr != p
    {
        return None;
    }
    // SAFETY: dli_sname is non-null (checked) and a C string of the loader's.
    Some(
        unsafe { CStr::from_ptr(info.dli_sname) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// What `cuGetProcAddress` hands out for `symbol`, whose function the driver has just written
/// to `*pfn`: the hook of exactly the function the driver chose (by comparing it with the
/// driver's function of each hooked name of the same base, else by the name it is exported
/// under). A launch or allocation function that is none of the hooks is refused: null,
/// `CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND` in `*status` and `CUDA_ERROR_NOT_FOUND`. Anything
/// else is passed on as the driver gave it.
///
/// # Safety
/// `symbol` is null or a C string; `pfn` is null or points to a pointer that
/// `cuGetProcAddress` has just written (it succeeded); `status` is null or writable.
unsafe fn swap(
    symbol: *const c_char,
    pfn: VoidPtrPtr,
    status: *mut CUdriverProcAddressQueryResult,
) -> CUresult {
    // SAFETY: the caller's contract: `pfn` is null or readable and writable.
    let Some(pfn) = (unsafe { pfn.as_mut() }) else {
        return CUDA_SUCCESS;
    };
    if symbol.is_null() || (*pfn).is_null() {
        return CUDA_SUCCESS;
    }
    // SAFETY: `symbol` is non-null (checked), and a C string by the caller's contract.
    let name = unsafe { CStr::from_ptr(symbol) }.to_str().unwrap_or("");
    let base = base_name(name);
    let candidates: Vec<usize> = (0..SLOTS)
        .filter(|&i| base_name(HOOKS[i]) == base)
        .collect();
    let found = *pfn;
    if candidates.iter().any(|&i| hook_ptr(i) == found) {
        return CUDA_SUCCESS;
    }
    if let Some(&i) = candidates
        .iter()
        .find(|&&i| real(i, symbol_name(i)) == found)
    {
        *pfn = hook_ptr(i);
        return CUDA_SUCCESS;
    }
    let by_name = exported_name(found)
        .and_then(|n| hook_index(&n))
        .filter(|i| candidates.contains(i));
    if let Some(i) = by_name {
        let _ = REAL[i].compare_exchange(std::ptr::null_mut(), found, AcqRel, Acquire);
        if REAL[i].load(Acquire) == found {
            *pfn = hook_ptr(i);
            return CUDA_SUCCESS;
        }
    }
    if !gated_name(base) {
        return CUDA_SUCCESS;
    }
    refused(
        name,
        "the driver handed out a launch or allocation function carve does not know",
    );
    *pfn = std::ptr::null_mut();
    // SAFETY: the caller's contract: `status` is null or writable.
    if let Some(s) = unsafe { status.as_mut() } {
        *s = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    }
    CUDA_ERROR_NOT_FOUND
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
        if r != CUDA_SUCCESS {
            return r;
        }
        // SAFETY: the caller's arguments, which the driver has just accepted: `symbol` a C
        // string, `pfn` holding the entry point the driver wrote; no status.
        unsafe { swap(symbol, pfn, std::ptr::null_mut()) }
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
        if r != CUDA_SUCCESS {
            return r;
        }
        // SAFETY: the caller's arguments, which the driver has just accepted: `symbol` a C
        // string, `pfn` holding the entry point the driver wrote, `status` null or writable.
        unsafe { swap(symbol, pfn, status) }
    })
}
