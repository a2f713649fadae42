//! A stand-in `libnvidia-ml.so` for tests: the subset of the NVML C API that `carve-nvml` (and
//! nvml-wrapper's init/shutdown path) calls, with nvml.h's ABI, struct layouts and return codes,
//! backed by carve's simulated GPU engine ([`carve_backend::engine::SimNode`]) and the embedded
//! catalog. Test-only: never ship it.
//!
//! Configuration, read by `nvmlInit*`:
//! - `CARVE_FAKE_NVML_NODE`: the node spec (`2xH100-80GB` when unset), used when no state exists.
//! - `CARVE_FAKE_NVML_STATE`: a JSON file holding the node (serde of `SimNode`). When set, the
//!   state is read from it at the start of every call and written back (temp file + rename) after
//!   every mutation, under an advisory lock on `<file>.lock`, so several processes, and a test that
//!   edits the file (for example to add processes to `gpus[..].gis[..].cis[..].processes`), share
//!   one node. Without it the node lives in this process until the last `nvmlShutdown`.
//! - `CARVE_FAKE_CUDA_DIR` (the stand-in CUDA's shared directory) and `CARVE_FAKE_NVML_CUDA_GPU`
//!   (default 0): the stand-in CUDA's processes are that GPU's compute processes, with the device
//!   memory each holds, so that the NVML view of the node shows every CUDA process on it, with
//!   or without carve's shim, as a real driver's does (see [`ENV_CUDA_DIR`]).
//!
//! Handles are opaque pointer values that encode what they name (never 0 and never
//! dereferenced): a tag (device, GPU instance, compute instance, MIG device) and the GPU index,
//! GI id and CI id. A handle whose instance was destroyed is rejected with
//! `NVML_ERROR_INVALID_ARGUMENT`, as the driver does.
//!
//! Every entry point catches panics and returns `NVML_ERROR_UNKNOWN` instead of unwinding into C.

#![allow(clippy::missing_safety_doc)]
#![allow(non_snake_case)]

use carve_backend::engine::{SimCi, SimGi, SimGpu, SimNode};
use carve_backend::BackendError;
use carve_model::profile::ci_max_count;
use carve_model::{Catalog, GiProfile, GpuModel, NvmlGiProfile};
use nvml_wrapper_sys::bindings::*;
use std::ffi::CStr;
use std::os::raw::{c_char, c_uint};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// An NVML return code.
pub type Rc = nvmlReturn_t;

pub const SUCCESS: Rc = nvmlReturn_enum_NVML_SUCCESS;
pub const ERROR_UNINITIALIZED: Rc = nvmlReturn_enum_NVML_ERROR_UNINITIALIZED;
pub const ERROR_INVALID_ARGUMENT: Rc = nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT;
pub const ERROR_NOT_SUPPORTED: Rc = nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED;
pub const ERROR_NO_PERMISSION: Rc = nvmlReturn_enum_NVML_ERROR_NO_PERMISSION;
pub const ERROR_NOT_FOUND: Rc = nvmlReturn_enum_NVML_ERROR_NOT_FOUND;
pub const ERROR_INSUFFICIENT_SIZE: Rc = nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE;
pub const ERROR_DRIVER_NOT_LOADED: Rc = nvmlReturn_enum_NVML_ERROR_DRIVER_NOT_LOADED;
pub const ERROR_RESET_REQUIRED: Rc = nvmlReturn_enum_NVML_ERROR_RESET_REQUIRED;
pub const ERROR_OPERATING_SYSTEM: Rc = nvmlReturn_enum_NVML_ERROR_OPERATING_SYSTEM;
pub const ERROR_IN_USE: Rc = nvmlReturn_enum_NVML_ERROR_IN_USE;
pub const ERROR_INSUFFICIENT_RESOURCES: Rc = nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_RESOURCES;
pub const ERROR_UNKNOWN: Rc = nvmlReturn_enum_NVML_ERROR_UNKNOWN;

/// `NVML_GPU_INSTANCE_PROFILE_COUNT` of NVML API 13 (0x12): profile indices at or above it are
/// invalid arguments.
pub const GI_PROFILE_COUNT: c_uint = 0x12;
/// `NVML_COMPUTE_INSTANCE_PROFILE_COUNT` of NVML API 13.
pub const CI_PROFILE_COUNT: c_uint = 0x9;
/// Compute slices of the `NVML_COMPUTE_INSTANCE_PROFILE_*` indices 0..=6 (`1_SLICE` ..
/// `6_SLICE`). 7 (`1_SLICE_REV1`) and 8 (`7_SLICE_NVL`) are not offered by the fake.
const CI_PROFILE_SLICES: [u8; 7] = [1, 2, 3, 4, 7, 8, 6];

/// The driver version the fake reports.
const DRIVER_VERSION: &str = "580.65.06";
const NVML_VERSION: &str = "13.580.65.06";

pub const ENV_NODE: &str = "CARVE_FAKE_NVML_NODE";
pub const ENV_STATE: &str = "CARVE_FAKE_NVML_STATE";

// ---------------------------------------------------------------------------------------------
// Handles

/// What an opaque handle names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handle {
    Device(u32),
    Gi(u32, u32),
    Ci(u32, u32, u32),
    Mig(u32, u32, u32),
}

// Layout (fits in 32 bits, so it works for any pointer width): tag in bits 28..32, GPU index in
// 20..28, GI id in 10..20, CI id in 0..10.
const TAG_SHIFT: u32 = 28;
const GPU_SHIFT: u32 = 20;
const GI_SHIFT: u32 = 10;
const GPU_MAX: u32 = 0xff;
const ID_MAX: u32 = 0x3ff;

impl Handle {
    pub fn encode(self) -> Option<usize> {
        let (tag, gpu, gi, ci) = match self {
            Handle::Device(g) => (1u32, g, 0, 0),
            Handle::Gi(g, gi) => (2, g, gi, 0),
            Handle::Ci(g, gi, ci) => (3, g, gi, ci),
            Handle::Mig(g, gi, ci) => (4, g, gi, ci),
        };
        if gpu > GPU_MAX || gi > ID_MAX || ci > ID_MAX {
            return None;
        }
        Some(((tag << TAG_SHIFT) | (gpu << GPU_SHIFT) | (gi << GI_SHIFT) | ci) as usize)
    }

    pub fn decode(v: usize) -> Option<Handle> {
        let v = u32::try_from(v).ok()?;
        let gpu = (v >> GPU_SHIFT) & GPU_MAX;
        let gi = (v >> GI_SHIFT) & ID_MAX;
        let ci = v & ID_MAX;
        match v >> TAG_SHIFT {
            1 if gi == 0 && ci == 0 => Some(Handle::Device(gpu)),
            2 if ci == 0 => Some(Handle::Gi(gpu, gi)),
            3 => Some(Handle::Ci(gpu, gi, ci)),
            4 => Some(Handle::Mig(gpu, gi, ci)),
            _ => None,
        }
    }

    fn ptr<T>(self) -> Result<*mut T, Rc> {
        // An id too large to encode is not something a test should ever meet.
        self.encode().map(|v| v as *mut T).ok_or(ERROR_UNKNOWN)
    }
}

fn decode_ptr<T>(p: *mut T) -> Result<Handle, Rc> {
    Handle::decode(p as usize).ok_or(ERROR_INVALID_ARGUMENT)
}

// ---------------------------------------------------------------------------------------------
// State

struct Fake {
    refs: u32,
    catalog: Catalog,
    node: SimNode,
    state_path: Option<PathBuf>,
}

static STATE: Mutex<Option<Fake>> = Mutex::new(None);

fn lock() -> MutexGuard<'static, Option<Fake>> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

fn err_rc(e: &BackendError) -> Rc {
    match e {
        BackendError::InsufficientResources(_) => ERROR_INSUFFICIENT_RESOURCES,
        BackendError::InUse(_) => ERROR_IN_USE,
        BackendError::NotSupported(_) => ERROR_NOT_SUPPORTED,
        BackendError::NoPermission(_) => ERROR_NO_PERMISSION,
        BackendError::NotFound(_) => ERROR_NOT_FOUND,
        BackendError::InvalidArgument(_) => ERROR_INVALID_ARGUMENT,
        BackendError::ResetRequired(_) => ERROR_RESET_REQUIRED,
        BackendError::Unavailable(_) => ERROR_DRIVER_NOT_LOADED,
        BackendError::Other(_) => ERROR_UNKNOWN,
    }
}

fn read_state(path: &Path) -> Result<Option<SimNode>, Rc> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| {
            eprintln!("carve-fake-nvml: {}: {e}", path.display());
            ERROR_UNKNOWN
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => {
            eprintln!("carve-fake-nvml: {}: {e}", path.display());
            Err(ERROR_OPERATING_SYSTEM)
        }
    }
}

fn write_state(path: &Path, node: &SimNode) -> Result<(), Rc> {
    let text = serde_json::to_string_pretty(node).map_err(|_| ERROR_UNKNOWN)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            eprintln!("carve-fake-nvml: writing {}: {e}", path.display());
            let _ = std::fs::remove_file(&tmp);
            ERROR_OPERATING_SYSTEM
        })
}

/// An exclusive advisory lock on `<state>.lock`, held across read-modify-write so that processes
/// sharing a state file do not lose each other's changes.
struct FileLock(Option<std::fs::File>);

impl FileLock {
    fn acquire(state: Option<&Path>) -> FileLock {
        let Some(state) = state else {
            return FileLock(None);
        };
        let mut p = state.as_os_str().to_owned();
        p.push(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(PathBuf::from(p));
        match file {
            Ok(f) => {
                use std::os::fd::AsRawFd;
                // SAFETY: flock on a descriptor we own; failure only loses cross-process safety.
                unsafe {
                    libc::flock(f.as_raw_fd(), libc::LOCK_EX);
                }
                FileLock(Some(f))
            }
            Err(_) => FileLock(None),
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        if let Some(f) = &self.0 {
            use std::os::fd::AsRawFd;
            // SAFETY: as above; closing the file would release it as well.
            unsafe {
                libc::flock(f.as_raw_fd(), libc::LOCK_UN);
            }
        }
    }
}

impl Fake {
    fn reload(&mut self) -> Result<(), Rc> {
        if let Some(path) = &self.state_path {
            if let Some(node) = read_state(path)? {
                self.node = node;
            }
        }
        Ok(())
    }

    fn save(&self) -> Result<(), Rc> {
        match &self.state_path {
            Some(path) => write_state(path, &self.node),
            None => Ok(()),
        }
    }

    fn gpu(&self, gpu: u32) -> Result<&SimGpu, Rc> {
        self.node
            .gpus
            .get(gpu as usize)
            .ok_or(ERROR_INVALID_ARGUMENT)
    }

    fn model(&self, gpu: u32) -> Result<&GpuModel, Rc> {
        let g = self.gpu(gpu)?;
        self.catalog.gpu(&g.model).map_err(|e| {
            eprintln!("carve-fake-nvml: GPU {gpu}: {e}");
            ERROR_UNKNOWN
        })
    }

    fn gi(&self, gpu: u32, gi: u32) -> Result<&SimGi, Rc> {
        self.gpu(gpu)?
            .gis
            .iter()
            .find(|g| g.id == gi)
            .ok_or(ERROR_INVALID_ARGUMENT)
    }

    fn ci(&self, gpu: u32, gi: u32, ci: u32) -> Result<&SimCi, Rc> {
        self.gi(gpu, gi)?
            .cis
            .iter()
            .find(|c| c.id == ci)
            .ok_or(ERROR_INVALID_ARGUMENT)
    }

    fn gi_profile(&self, gpu: u32, gi: &SimGi) -> Result<&GiProfile, Rc> {
        self.model(gpu)?
            .profile_by_nvml(gi.profile)
            .ok_or(ERROR_UNKNOWN)
    }

    /// The GPU of a full-device handle (not a MIG device), checked to exist.
    fn device(&self, h: Handle) -> Result<u32, Rc> {
        match h {
            Handle::Device(g) => self.gpu(g).map(|_| g),
            _ => Err(ERROR_INVALID_ARGUMENT),
        }
    }

    /// Any valid device handle: (gpu, Some((gi, ci)) for a MIG device).
    fn any_device(&self, h: Handle) -> Result<(u32, Option<(u32, u32)>), Rc> {
        match h {
            Handle::Device(g) => self.gpu(g).map(|_| (g, None)),
            Handle::Mig(g, gi, ci) => self.ci(g, gi, ci).map(|_| (g, Some((gi, ci)))),
            _ => Err(ERROR_INVALID_ARGUMENT),
        }
    }

    fn gi_handle(&self, h: Handle) -> Result<(u32, u32), Rc> {
        match h {
            Handle::Gi(g, gi) => self.gi(g, gi).map(|_| (g, gi)),
            _ => Err(ERROR_INVALID_ARGUMENT),
        }
    }

    fn ci_handle(&self, h: Handle) -> Result<(u32, u32, u32), Rc> {
        match h {
            Handle::Ci(g, gi, ci) => self.ci(g, gi, ci).map(|_| (g, gi, ci)),
            _ => Err(ERROR_INVALID_ARGUMENT),
        }
    }

    fn require_mig(&self, gpu: u32) -> Result<(), Rc> {
        if self.gpu(gpu)?.mig.current {
            Ok(())
        } else {
            Err(ERROR_NOT_SUPPORTED)
        }
    }

    /// The GPU of a device handle in MIG mode, and one of its GI profiles by NVML id.
    fn mig_profile(&self, h: Handle, profile_id: c_uint) -> Result<(u32, GiProfile), Rc> {
        let gpu = self.device(h)?;
        self.require_mig(gpu)?;
        let p = profile_by_id(self.model(gpu)?, profile_id).ok_or(ERROR_INVALID_ARGUMENT)?;
        Ok((gpu, p.clone()))
    }

    /// MIG devices of a GPU, one per CI: (gi, ci), GIs and CIs by id.
    fn mig_devices(&self, gpu: u32) -> Result<Vec<(u32, u32)>, Rc> {
        let g = self.gpu(gpu)?;
        let mut gis: Vec<&SimGi> = g.gis.iter().collect();
        gis.sort_by_key(|gi| gi.id);
        let mut out = Vec::new();
        for gi in gis {
            let mut cis: Vec<u32> = gi.cis.iter().map(|c| c.id).collect();
            cis.sort_unstable();
            out.extend(cis.into_iter().map(|c| (gi.id, c)));
        }
        Ok(out)
    }

    fn gi_memory_mib(&self, gpu: u32, p: &GiProfile) -> Result<u64, Rc> {
        let g = self.gpu(gpu)?;
        let slots = self.model(gpu)?.memory_slots.max(1) as u64;
        Ok(p.mib
            .map(u64::from)
            .unwrap_or(g.memory_mib * p.slots as u64 / slots))
    }
}

/// The device-specific profile id (`info.id`): the catalog's, else the enum value.
fn profile_id(p: &GiProfile) -> c_uint {
    p.id.unwrap_or_else(|| p.nvml.value())
}

fn profile_by_id(model: &GpuModel, id: c_uint) -> Option<&GiProfile> {
    model.profiles.iter().find(|p| profile_id(p) == id)
}

/// CI profile index → slices, and whether a GI of `gi_slices` offers it (with its count).
fn ci_profile(gi_slices: u8, idx: c_uint) -> Result<(u8, u8), Rc> {
    if idx >= CI_PROFILE_COUNT {
        return Err(ERROR_INVALID_ARGUMENT);
    }
    let Some(&c) = CI_PROFILE_SLICES.get(idx as usize) else {
        return Err(ERROR_NOT_SUPPORTED);
    };
    let max = if c == gi_slices {
        1
    } else {
        ci_max_count(gi_slices, c).unwrap_or(0)
    };
    if max == 0 {
        return Err(ERROR_NOT_SUPPORTED);
    }
    Ok((c, max))
}

/// The CI profile index for a CI of `slices` compute slices.
fn ci_profile_index(slices: u8) -> c_uint {
    CI_PROFILE_SLICES
        .iter()
        .position(|&c| c == slices)
        .unwrap_or(0) as c_uint
}

// ---------------------------------------------------------------------------------------------
// Plumbing for entry points

/// Runs an entry point's body, turning a panic into `NVML_ERROR_UNKNOWN`.
fn guard(f: impl FnOnce() -> Result<(), Rc>) -> Rc {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => SUCCESS,
        Ok(Err(rc)) => rc,
        Err(_) => ERROR_UNKNOWN,
    }
}

/// Runs `f` on the initialised state with the opaque handle `p` decoded: how most entry points
/// begin.
fn query<P, T>(p: *mut P, f: impl FnOnce(&Fake, Handle) -> Result<T, Rc>) -> Result<T, Rc> {
    let h = decode_ptr(p)?;
    read(|fake| f(fake, h))
}

/// Runs `f` on the initialised state, re-read from the state file first.
fn read<T>(f: impl FnOnce(&Fake) -> Result<T, Rc>) -> Result<T, Rc> {
    let mut guard = lock();
    let fake = guard.as_mut().ok_or(ERROR_UNINITIALIZED)?;
    fake.reload()?;
    f(fake)
}

/// Runs a mutation under the state-file lock: reload, mutate, write back.
fn mutate<T>(f: impl FnOnce(&mut Fake) -> Result<T, Rc>) -> Result<T, Rc> {
    let mut guard = lock();
    let fake = guard.as_mut().ok_or(ERROR_UNINITIALIZED)?;
    let _file_lock = FileLock::acquire(fake.state_path.as_deref());
    fake.reload()?;
    let before = fake.node.clone();
    match f(fake) {
        Ok(v) => {
            if fake.node != before {
                fake.save()?;
            }
            Ok(v)
        }
        Err(rc) => {
            fake.node = before;
            Err(rc)
        }
    }
}

/// Writes an answer to the caller's out-parameter; a null one is `NVML_ERROR_INVALID_ARGUMENT`.
///
/// # Safety
/// `p` is null or valid for writes of a `T` (nvml.h's contract for out-parameters).
unsafe fn put<T>(p: *mut T, v: T) -> Result<(), Rc> {
    if p.is_null() {
        return Err(ERROR_INVALID_ARGUMENT);
    }
    // SAFETY: non-null (checked), hence writable by the caller's contract.
    unsafe { p.write(v) };
    Ok(())
}

/// Writes `s` and its NUL to the caller's buffer of `len` chars (`NVML_ERROR_INSUFFICIENT_SIZE`
/// when it does not fit; nothing is written then).
///
/// # Safety
/// `buf` is null or valid for writes of `len` chars.
unsafe fn put_str(buf: *mut c_char, len: c_uint, s: &str) -> Result<(), Rc> {
    if buf.is_null() {
        return Err(ERROR_INVALID_ARGUMENT);
    }
    let bytes = s.as_bytes();
    if bytes.len() + 1 > len as usize {
        return Err(ERROR_INSUFFICIENT_SIZE);
    }
    // SAFETY: `buf` is non-null (checked) and has room for `len` >= `bytes.len()` + 1 chars
    // (checked; the caller's contract), and our string does not overlap the caller's buffer.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr() as *const c_char, buf, bytes.len());
        *buf.add(bytes.len()) = 0;
    }
    Ok(())
}

/// Writes `items` to the caller's array (when it gives one) and their number to `*count`.
///
/// # Safety
/// `dst` is null or has room for `items.len()` entries; `count` is null or writable.
unsafe fn put_list<T: Copy>(dst: *mut T, count: *mut c_uint, items: &[T]) -> Result<(), Rc> {
    if !dst.is_null() {
        // SAFETY: non-null (checked), with room for every item by the caller's contract; ours
        // do not overlap it.
        unsafe { std::ptr::copy_nonoverlapping(items.as_ptr(), dst, items.len()) };
    }
    // SAFETY: the caller's contract for `count`; `put` refuses null.
    unsafe { put(count, items.len() as c_uint) }
}

fn fill_str<const N: usize>(dst: &mut [c_char; N], s: &str) {
    for (d, b) in dst.iter_mut().zip(s.bytes().take(N.saturating_sub(1))) {
        *d = b as c_char;
    }
}

// ---------------------------------------------------------------------------------------------
// Initialisation

fn init() -> Result<(), Rc> {
    let mut guard = lock();
    let path = std::env::var_os(ENV_STATE)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    if let Some(fake) = guard.as_mut() {
        if fake.state_path == path {
            fake.reload()?;
        } else {
            // A new state file: take it from here (tests point every open at their own file).
            let _file_lock = FileLock::acquire(path.as_deref());
            let node = match path.as_deref().map(read_state).transpose()? {
                Some(Some(node)) => node,
                _ => {
                    let node = fresh_node(&fake.catalog)?;
                    if let Some(p) = &path {
                        write_state(p, &node)?;
                    }
                    node
                }
            };
            fake.node = node;
            fake.state_path = path;
        }
        fake.refs += 1;
        return Ok(());
    }
    let catalog = Catalog::embedded();
    let _file_lock = FileLock::acquire(path.as_deref());
    let (node, fresh) = match path.as_deref().map(read_state).transpose()? {
        Some(Some(node)) => (node, false),
        _ => (fresh_node(&catalog)?, true),
    };
    let fake = Fake {
        refs: 1,
        catalog,
        node,
        state_path: path,
    };
    if fresh {
        fake.save()?;
    }
    *guard = Some(fake);
    Ok(())
}

fn fresh_node(catalog: &Catalog) -> Result<SimNode, Rc> {
    let spec = std::env::var(ENV_NODE)
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| carve_backend::DEFAULT_SIM_NODE.to_string());
    let models = catalog.gpu_list(&spec).map_err(|e| {
        eprintln!("carve-fake-nvml: {ENV_NODE}={spec}: {e}");
        ERROR_UNKNOWN
    })?;
    Ok(SimNode::new(&models, 1))
}

#[no_mangle]
pub unsafe extern "C" fn nvmlInit_v2() -> Rc {
    guard(init)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlInit() -> Rc {
    guard(init)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlInitWithFlags(_flags: c_uint) -> Rc {
    guard(init)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlShutdown() -> Rc {
    guard(|| {
        let mut guard = lock();
        let fake = guard.as_mut().ok_or(ERROR_UNINITIALIZED)?;
        fake.refs = fake.refs.saturating_sub(1);
        if fake.refs == 0 {
            *guard = None;
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlErrorString(result: Rc) -> *const c_char {
    catch_unwind(|| error_string(result).as_ptr()).unwrap_or(c"Unknown Error".as_ptr())
}

fn error_string(result: Rc) -> &'static CStr {
    match result {
        SUCCESS => c"Success",
        ERROR_UNINITIALIZED => c"Uninitialized",
        ERROR_INVALID_ARGUMENT => c"Invalid Argument",
        ERROR_NOT_SUPPORTED => c"Not Supported",
        ERROR_NO_PERMISSION => c"Insufficient Permissions",
        ERROR_NOT_FOUND => c"Not Found",
        ERROR_INSUFFICIENT_SIZE => c"Insufficient Size",
        ERROR_DRIVER_NOT_LOADED => c"Driver Not Loaded",
        ERROR_RESET_REQUIRED => c"GPU requires reset",
        ERROR_OPERATING_SYSTEM => c"GPU access blocked by the operating system",
        ERROR_IN_USE => c"In use by another client",
        ERROR_INSUFFICIENT_RESOURCES => c"Insufficient resources",
        _ => c"Unknown Error",
    }
}

#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetDriverVersion(version: *mut c_char, length: c_uint) -> Rc {
    guard(|| {
        read(|_| Ok(()))?;
        // SAFETY: `version` is the caller's `char *` buffer of `length` chars, or null.
        unsafe { put_str(version, length, DRIVER_VERSION) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetNVMLVersion(version: *mut c_char, length: c_uint) -> Rc {
    guard(|| {
        read(|_| Ok(()))?;
        // SAFETY: `version` is the caller's `char *` buffer of `length` chars, or null.
        unsafe { put_str(version, length, NVML_VERSION) }
    })
}

// ---------------------------------------------------------------------------------------------
// Devices

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(deviceCount: *mut c_uint) -> Rc {
    guard(|| {
        let n = read(|f| Ok(f.node.gpus.len() as c_uint))?;
        // SAFETY: `deviceCount` is the caller's `unsigned int *`: null (refused) or writable.
        unsafe { put(deviceCount, n) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(
    index: c_uint,
    device: *mut nvmlDevice_t,
) -> Rc {
    guard(|| {
        let h = read(|f| {
            f.gpu(index)?;
            Handle::Device(index).ptr()
        })?;
        // SAFETY: `device` is the caller's `nvmlDevice_t *`: null (refused) or writable.
        unsafe { put(device, h) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetIndex(device: nvmlDevice_t, index: *mut c_uint) -> Rc {
    guard(|| {
        let i = query(device, |f, h| f.device(h))?;
        // SAFETY: `index` is the caller's `unsigned int *`: null (refused) or writable.
        unsafe { put(index, i) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetName(
    device: nvmlDevice_t,
    name: *mut c_char,
    length: c_uint,
) -> Rc {
    guard(|| {
        let s = query(device, |f, h| {
            let (gpu, mig) = f.any_device(h)?;
            let g = f.gpu(gpu)?;
            Ok(match mig {
                None => g.name.clone(),
                Some((gi, _)) => {
                    let p = f.gi_profile(gpu, f.gi(gpu, gi)?)?;
                    format!("{} MIG {}", g.name, p.name)
                }
            })
        })?;
        // SAFETY: `name` is the caller's `char *` buffer of `length` chars, or null.
        unsafe { put_str(name, length, &s) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetUUID(
    device: nvmlDevice_t,
    uuid: *mut c_char,
    length: c_uint,
) -> Rc {
    guard(|| {
        let s = query(device, |f, h| {
            let (gpu, mig) = f.any_device(h)?;
            Ok(match mig {
                None => f.gpu(gpu)?.uuid.clone(),
                Some((gi, ci)) => f.ci(gpu, gi, ci)?.uuid.clone(),
            })
        })?;
        // SAFETY: `uuid` is the caller's `char *` buffer of `length` chars, or null.
        unsafe { put_str(uuid, length, &s) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPciInfo_v3(
    device: nvmlDevice_t,
    pci: *mut nvmlPciInfo_t,
) -> Rc {
    guard(|| {
        let info = query(device, |f, h| {
            let (gpu, _) = f.any_device(h)?;
            let infos = f.node.gpu_infos();
            let i = infos.get(gpu as usize).ok_or(ERROR_INVALID_ARGUMENT)?;
            // SAFETY: a plain C struct of integers and char arrays, for which zero is valid.
            let mut p: nvmlPciInfo_t = unsafe { std::mem::zeroed() };
            fill_str(&mut p.busId, &i.pci_bus_id);
            let legacy = i.pci_bus_id.get(4..).unwrap_or(&i.pci_bus_id);
            fill_str(&mut p.busIdLegacy, legacy);
            p.domain = 0;
            p.bus = 0x17 + gpu * 0x10;
            p.device = 0;
            p.pciDeviceId = ((i.pci_device_id as c_uint) << 16) | 0x10de;
            p.pciSubSystemId = 0x16c1_10de;
            Ok(p)
        })?;
        // SAFETY: `pci` is the caller's `nvmlPciInfo_t *`: null (refused) or writable.
        unsafe { put(pci, info) }
    })
}

fn memory_of(f: &Fake, h: Handle) -> Result<u64, Rc> {
    let (gpu, mig) = f.any_device(h)?;
    match mig {
        None => Ok(f.gpu(gpu)?.memory_mib),
        Some((gi, _)) => {
            let p = f.gi_profile(gpu, f.gi(gpu, gi)?)?;
            f.gi_memory_mib(gpu, p)
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo(
    device: nvmlDevice_t,
    memory: *mut nvmlMemory_t,
) -> Rc {
    guard(|| {
        let mib = query(device, memory_of)?;
        let total = mib * 1024 * 1024;
        let m = nvmlMemory_t {
            total,
            free: total,
            used: 0,
        };
        // SAFETY: `memory` is the caller's `nvmlMemory_t *`: null (refused) or writable.
        unsafe { put(memory, m) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(
    device: nvmlDevice_t,
    memory: *mut nvmlMemory_v2_t,
) -> Rc {
    guard(|| {
        let mib = query(device, memory_of)?;
        if memory.is_null() {
            return Err(ERROR_INVALID_ARGUMENT);
        }
        // SAFETY: `memory` is non-null (checked), the caller's `nvmlMemory_v2_t *`, whose
        // `version` the caller sets before the call.
        let version = unsafe { (*memory).version };
        let total = mib * 1024 * 1024;
        let m = nvmlMemory_v2_t {
            version,
            total,
            reserved: 0,
            free: total,
            used: 0,
        };
        // SAFETY: `memory` is non-null (checked) and writable (the caller's).
        unsafe { put(memory, m) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMigMode(
    device: nvmlDevice_t,
    currentMode: *mut c_uint,
    pendingMode: *mut c_uint,
) -> Rc {
    guard(|| {
        let m = query(device, |f, h| Ok(f.gpu(f.device(h)?)?.mig))?;
        // SAFETY: `currentMode` and `pendingMode` are the caller's `unsigned int *`s, each null
        // (refused) or writable.
        unsafe {
            put(currentMode, m.current as c_uint)?;
            put(pendingMode, m.pending as c_uint)
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceSetMigMode(
    device: nvmlDevice_t,
    mode: c_uint,
    activationStatus: *mut nvmlReturn_t,
) -> Rc {
    guard(|| {
        let h = decode_ptr(device)?;
        if activationStatus.is_null() || mode > 1 {
            return Err(ERROR_INVALID_ARGUMENT);
        }
        let m = mutate(|f| {
            let gpu = f.device(h)?;
            f.node.set_mig_mode(gpu, mode == 1).map_err(|e| err_rc(&e))
        })?;
        let status = if m.current == m.pending {
            SUCCESS
        } else {
            ERROR_RESET_REQUIRED
        };
        // SAFETY: `activationStatus` is the caller's `nvmlReturn_t *`: null (refused) or writable.
        unsafe { put(activationStatus, status) }
    })
}

// ---------------------------------------------------------------------------------------------
// GPU instances

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstanceProfileInfo(
    device: nvmlDevice_t,
    profile: c_uint,
    info: *mut nvmlGpuInstanceProfileInfo_t,
) -> Rc {
    guard(|| {
        let i = query(device, |f, h| {
            let gpu = f.device(h)?;
            if profile >= GI_PROFILE_COUNT {
                return Err(ERROR_INVALID_ARGUMENT);
            }
            let model = f.model(gpu)?;
            let p = NvmlGiProfile::from_value(profile)
                .and_then(|n| model.profile_by_nvml(n))
                .ok_or(ERROR_NOT_SUPPORTED)?;
            Ok(nvmlGpuInstanceProfileInfo_t {
                id: profile_id(p),
                isP2pSupported: 0,
                sliceCount: p.compute as c_uint,
                instanceCount: p.max as c_uint,
                multiprocessorCount: p.sm.unwrap_or(0),
                copyEngineCount: p.ce.unwrap_or(0) as c_uint,
                decoderCount: p.dec.unwrap_or(0) as c_uint,
                encoderCount: p.enc.unwrap_or(0) as c_uint,
                jpegCount: p.jpg.unwrap_or(0) as c_uint,
                ofaCount: p.ofa.unwrap_or(0) as c_uint,
                memorySizeMB: f.gi_memory_mib(gpu, p)?,
            })
        })?;
        // SAFETY: `info` is the caller's `nvmlGpuInstanceProfileInfo_t *`:
        // null (refused) or writable.
        unsafe { put(info, i) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstancePossiblePlacements_v2(
    device: nvmlDevice_t,
    profileId: c_uint,
    placements: *mut nvmlGpuInstancePlacement_t,
    count: *mut c_uint,
) -> Rc {
    guard(|| {
        let h = decode_ptr(device)?;
        if count.is_null() {
            return Err(ERROR_INVALID_ARGUMENT);
        }
        let list = read(|f| {
            let gpu = f.device(h)?;
            let p = profile_by_id(f.model(gpu)?, profileId).ok_or(ERROR_INVALID_ARGUMENT)?;
            Ok(p.starts
                .iter()
                .map(|&s| nvmlGpuInstancePlacement_t {
                    start: s as c_uint,
                    size: p.slots as c_uint,
                })
                .collect::<Vec<_>>())
        })?;
        // SAFETY: `placements` is the caller's array, null (only the count is asked for) or
        // with room for every placement of the profile (nvml.h); `count` is non-null (checked)
        // and writable.
        unsafe { put_list(placements, count, &list) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstanceRemainingCapacity(
    device: nvmlDevice_t,
    profileId: c_uint,
    count: *mut c_uint,
) -> Rc {
    guard(|| {
        let n = query(device, |f, h| {
            let (gpu, p) = f.mig_profile(h, profileId)?;
            // Greedy: how many more fit when placed at the lowest free starts.
            let mut node = f.node.clone();
            let mut n = 0;
            'more: loop {
                for &s in &p.starts {
                    if node.create_gpu_instance(&f.catalog, gpu, p.nvml, s).is_ok() {
                        n += 1;
                        continue 'more;
                    }
                }
                break;
            }
            Ok(n)
        })?;
        // SAFETY: `count` is the caller's `unsigned int *`: null (refused) or writable.
        unsafe { put(count, n) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceCreateGpuInstanceWithPlacement(
    device: nvmlDevice_t,
    profileId: c_uint,
    placement: *const nvmlGpuInstancePlacement_t,
    gpuInstance: *mut nvmlGpuInstance_t,
) -> Rc {
    guard(|| {
        let h = decode_ptr(device)?;
        if placement.is_null() || gpuInstance.is_null() {
            return Err(ERROR_INVALID_ARGUMENT);
        }
        // SAFETY: `placement` is non-null (checked), the caller's
        // `const nvmlGpuInstancePlacement_t *`.
        let pl = unsafe { *placement };
        let handle = mutate(|f| {
            let (gpu, p) = f.mig_profile(h, profileId)?;
            if pl.size != p.slots as c_uint {
                return Err(ERROR_INVALID_ARGUMENT);
            }
            let start = u8::try_from(pl.start).map_err(|_| ERROR_INVALID_ARGUMENT)?;
            let nvml = p.nvml;
            let id = {
                let Fake { node, catalog, .. } = f;
                node.create_gpu_instance(catalog, gpu, nvml, start)
                    .map_err(|e| err_rc(&e))?
            };
            Handle::Gi(gpu, id).ptr()
        })?;
        // SAFETY: `gpuInstance` is the caller's `nvmlGpuInstance_t *`: null (refused) or writable.
        unsafe { put(gpuInstance, handle) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceCreateGpuInstance(
    device: nvmlDevice_t,
    profileId: c_uint,
    gpuInstance: *mut nvmlGpuInstance_t,
) -> Rc {
    guard(|| {
        let h = decode_ptr(device)?;
        if gpuInstance.is_null() {
            return Err(ERROR_INVALID_ARGUMENT);
        }
        let handle = mutate(|f| {
            let (gpu, p) = f.mig_profile(h, profileId)?;
            let (nvml, starts) = (p.nvml, p.starts.clone());
            let Fake { node, catalog, .. } = f;
            let mut last = ERROR_INSUFFICIENT_RESOURCES;
            for s in starts {
                match node.create_gpu_instance(catalog, gpu, nvml, s) {
                    Ok(id) => return Handle::Gi(gpu, id).ptr(),
                    Err(e) => last = err_rc(&e),
                }
            }
            Err(last)
        })?;
        // SAFETY: `gpuInstance` is the caller's `nvmlGpuInstance_t *`: null (refused) or writable.
        unsafe { put(gpuInstance, handle) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstances(
    device: nvmlDevice_t,
    profileId: c_uint,
    gpuInstances: *mut nvmlGpuInstance_t,
    count: *mut c_uint,
) -> Rc {
    guard(|| {
        let h = decode_ptr(device)?;
        if gpuInstances.is_null() || count.is_null() {
            return Err(ERROR_INVALID_ARGUMENT);
        }
        let handles = read(|f| {
            let (gpu, p) = f.mig_profile(h, profileId)?;
            let gis = f.gpu(gpu)?.gis.iter().filter(|gi| gi.profile == p.nvml);
            handles(gis.map(|gi| gi.id), p.max, |id| Handle::Gi(gpu, id))
        })?;
        // SAFETY: `gpuInstances` (room for the profile's `instanceCount` handles, nvml.h) and
        // `count` are the caller's, both non-null (checked) and writable.
        unsafe { put_list(gpuInstances, count, &handles) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstanceById(
    device: nvmlDevice_t,
    id: c_uint,
    gpuInstance: *mut nvmlGpuInstance_t,
) -> Rc {
    guard(|| {
        let handle = query(device, |f, h| {
            let gpu = f.device(h)?;
            f.require_mig(gpu)?;
            if !f.gpu(gpu)?.gis.iter().any(|gi| gi.id == id) {
                return Err(ERROR_NOT_FOUND);
            }
            Handle::Gi(gpu, id).ptr()
        })?;
        // SAFETY: `gpuInstance` is the caller's `nvmlGpuInstance_t *`: null (refused) or writable.
        unsafe { put(gpuInstance, handle) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlGpuInstanceGetInfo(
    gpuInstance: nvmlGpuInstance_t,
    info: *mut nvmlGpuInstanceInfo_t,
) -> Rc {
    guard(|| {
        let i = query(gpuInstance, |f, h| {
            let (gpu, gi) = f.gi_handle(h)?;
            let sim = f.gi(gpu, gi)?;
            let p = f.gi_profile(gpu, sim)?;
            Ok(nvmlGpuInstanceInfo_t {
                device: Handle::Device(gpu).ptr()?,
                id: gi,
                profileId: profile_id(p),
                placement: nvmlGpuInstancePlacement_t {
                    start: sim.start as c_uint,
                    size: p.slots as c_uint,
                },
            })
        })?;
        // SAFETY: `info` is the caller's `nvmlGpuInstanceInfo_t *`: null (refused) or writable.
        unsafe { put(info, i) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlGpuInstanceDestroy(gpuInstance: nvmlGpuInstance_t) -> Rc {
    guard(|| {
        let h = decode_ptr(gpuInstance)?;
        mutate(|f| {
            let (gpu, gi) = f.gi_handle(h)?;
            f.node.destroy_gpu_instance(gpu, gi).map_err(|e| err_rc(&e))
        })
    })
}

/// The handles of instances by id, in id order and at most `max` of them (the caller's buffer
/// holds the profile's `instanceCount`).
fn handles<T>(
    ids: impl Iterator<Item = u32>,
    max: u8,
    handle: impl Fn(u32) -> Handle,
) -> Result<Vec<*mut T>, Rc> {
    let mut ids: Vec<u32> = ids.collect();
    ids.sort_unstable();
    ids.truncate(max as usize);
    ids.into_iter().map(|id| handle(id).ptr()).collect()
}

// ---------------------------------------------------------------------------------------------
// Compute instances

/// Compute slices of the GI a handle names.
fn gi_slices(f: &Fake, gpu: u32, gi: u32) -> Result<u8, Rc> {
    Ok(f.gi_profile(gpu, f.gi(gpu, gi)?)?.compute)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlGpuInstanceGetComputeInstanceProfileInfo(
    gpuInstance: nvmlGpuInstance_t,
    profile: c_uint,
    engProfile: c_uint,
    info: *mut nvmlComputeInstanceProfileInfo_t,
) -> Rc {
    guard(|| {
        let i = query(gpuInstance, |f, h| {
            let (gpu, gi) = f.gi_handle(h)?;
            // Only NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED exists.
            if engProfile != 0 {
                return Err(ERROR_INVALID_ARGUMENT);
            }
            let gp = f.gi_profile(gpu, f.gi(gpu, gi)?)?;
            let (c, max) = ci_profile(gp.compute, profile)?;
            let g = gp.compute.max(1) as u32;
            Ok(nvmlComputeInstanceProfileInfo_t {
                id: profile,
                sliceCount: c as c_uint,
                instanceCount: max as c_uint,
                multiprocessorCount: gp.sm.map(|sm| sm * c as u32 / g).unwrap_or(0),
                sharedCopyEngineCount: gp.ce.unwrap_or(0) as c_uint,
                sharedDecoderCount: gp.dec.unwrap_or(0) as c_uint,
                sharedEncoderCount: gp.enc.unwrap_or(0) as c_uint,
                sharedJpegCount: gp.jpg.unwrap_or(0) as c_uint,
                sharedOfaCount: gp.ofa.unwrap_or(0) as c_uint,
            })
        })?;
        // SAFETY: `info` is the caller's `nvmlComputeInstanceProfileInfo_t *`:
        // null (refused) or writable.
        unsafe { put(info, i) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlGpuInstanceCreateComputeInstance(
    gpuInstance: nvmlGpuInstance_t,
    profileId: c_uint,
    computeInstance: *mut nvmlComputeInstance_t,
) -> Rc {
    guard(|| {
        let h = decode_ptr(gpuInstance)?;
        if computeInstance.is_null() {
            return Err(ERROR_INVALID_ARGUMENT);
        }
        let handle = mutate(|f| {
            let (gpu, gi) = f.gi_handle(h)?;
            let (c, _) = ci_profile(gi_slices(f, gpu, gi)?, profileId)?;
            let id = {
                let Fake { node, catalog, .. } = f;
                node.create_compute_instance(catalog, gpu, gi, c)
                    .map_err(|e| err_rc(&e))?
            };
            Handle::Ci(gpu, gi, id).ptr()
        })?;
        // SAFETY: `computeInstance` is the caller's `nvmlComputeInstance_t *`:
        // null (refused) or writable.
        unsafe { put(computeInstance, handle) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlGpuInstanceGetComputeInstances(
    gpuInstance: nvmlGpuInstance_t,
    profileId: c_uint,
    computeInstances: *mut nvmlComputeInstance_t,
    count: *mut c_uint,
) -> Rc {
    guard(|| {
        let h = decode_ptr(gpuInstance)?;
        if computeInstances.is_null() || count.is_null() {
            return Err(ERROR_INVALID_ARGUMENT);
        }
        let handles = read(|f| {
            let (gpu, gi) = f.gi_handle(h)?;
            let (c, max) = ci_profile(gi_slices(f, gpu, gi)?, profileId)?;
            let cis = f.gi(gpu, gi)?.cis.iter().filter(|ci| ci.slices == c);
            handles(cis.map(|ci| ci.id), max, |id| Handle::Ci(gpu, gi, id))
        })?;
        // SAFETY: `computeInstances` (room for the profile's `instanceCount` handles, nvml.h)
        // and `count` are the caller's, both non-null (checked) and writable.
        unsafe { put_list(computeInstances, count, &handles) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlGpuInstanceGetComputeInstanceById(
    gpuInstance: nvmlGpuInstance_t,
    id: c_uint,
    computeInstance: *mut nvmlComputeInstance_t,
) -> Rc {
    guard(|| {
        let handle = query(gpuInstance, |f, h| {
            let (gpu, gi) = f.gi_handle(h)?;
            if !f.gi(gpu, gi)?.cis.iter().any(|c| c.id == id) {
                return Err(ERROR_NOT_FOUND);
            }
            Handle::Ci(gpu, gi, id).ptr()
        })?;
        // SAFETY: `computeInstance` is the caller's `nvmlComputeInstance_t *`:
        // null (refused) or writable.
        unsafe { put(computeInstance, handle) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlComputeInstanceGetInfo_v2(
    computeInstance: nvmlComputeInstance_t,
    info: *mut nvmlComputeInstanceInfo_t,
) -> Rc {
    guard(|| {
        let i = query(computeInstance, |f, h| {
            let (gpu, gi, ci) = f.ci_handle(h)?;
            let sim = f.ci(gpu, gi, ci)?;
            // CIs are packed in id order inside the GI's compute slices.
            let start: u32 = f
                .gi(gpu, gi)?
                .cis
                .iter()
                .filter(|c| c.id < ci)
                .map(|c| c.slices as u32)
                .sum();
            Ok(nvmlComputeInstanceInfo_t {
                device: Handle::Device(gpu).ptr()?,
                gpuInstance: Handle::Gi(gpu, gi).ptr()?,
                id: ci,
                profileId: ci_profile_index(sim.slices),
                placement: nvmlComputeInstancePlacement_t {
                    start,
                    size: sim.slices as c_uint,
                },
            })
        })?;
        // SAFETY: `info` is the caller's `nvmlComputeInstanceInfo_t *`: null (refused) or writable.
        unsafe { put(info, i) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlComputeInstanceDestroy(computeInstance: nvmlComputeInstance_t) -> Rc {
    guard(|| {
        let h = decode_ptr(computeInstance)?;
        mutate(|f| {
            let (gpu, gi, ci) = f.ci_handle(h)?;
            f.node
                .destroy_compute_instance(gpu, gi, ci)
                .map_err(|e| err_rc(&e))
        })
    })
}

// ---------------------------------------------------------------------------------------------
// MIG devices

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMaxMigDeviceCount(
    device: nvmlDevice_t,
    count: *mut c_uint,
) -> Rc {
    guard(|| {
        let n = query(device, |f, h| {
            let gpu = f.device(h)?;
            if !f.gpu(gpu)?.mig.current {
                return Ok(0);
            }
            let m = f.model(gpu)?;
            let max = m.compute_slices.max(m.max_instances) as usize;
            Ok(max.max(f.mig_devices(gpu)?.len()) as c_uint)
        })?;
        // SAFETY: `count` is the caller's `unsigned int *`: null (refused) or writable.
        unsafe { put(count, n) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMigDeviceHandleByIndex(
    device: nvmlDevice_t,
    index: c_uint,
    migDevice: *mut nvmlDevice_t,
) -> Rc {
    guard(|| {
        let handle = query(device, |f, h| {
            let gpu = f.device(h)?;
            f.require_mig(gpu)?;
            let list = f.mig_devices(gpu)?;
            let (gi, ci) = *list.get(index as usize).ok_or(ERROR_NOT_FOUND)?;
            Handle::Mig(gpu, gi, ci).ptr()
        })?;
        // SAFETY: `migDevice` is the caller's `nvmlDevice_t *`: null (refused) or writable.
        unsafe { put(migDevice, handle) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceIsMigDeviceHandle(
    device: nvmlDevice_t,
    isMigDevice: *mut c_uint,
) -> Rc {
    guard(|| {
        let (_, mig) = query(device, |f, h| f.any_device(h))?;
        // SAFETY: `isMigDevice` is the caller's `unsigned int *`: null (refused) or writable.
        unsafe { put(isMigDevice, mig.is_some() as c_uint) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetDeviceHandleFromMigDeviceHandle(
    migDevice: nvmlDevice_t,
    device: *mut nvmlDevice_t,
) -> Rc {
    guard(|| {
        let handle = query(migDevice, |f, h| match f.any_device(h)? {
            (gpu, Some(_)) => Handle::Device(gpu).ptr(),
            (_, None) => Err(ERROR_INVALID_ARGUMENT),
        })?;
        // SAFETY: `device` is the caller's `nvmlDevice_t *`: null (refused) or writable.
        unsafe { put(device, handle) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstanceId(device: nvmlDevice_t, id: *mut c_uint) -> Rc {
    guard(|| {
        let gi = query(device, |f, h| match f.any_device(h)? {
            (_, Some((gi, _))) => Ok(gi),
            (_, None) => Err(ERROR_NOT_SUPPORTED),
        })?;
        // SAFETY: `id` is the caller's `unsigned int *`: null (refused) or writable.
        unsafe { put(id, gi) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetComputeInstanceId(
    device: nvmlDevice_t,
    id: *mut c_uint,
) -> Rc {
    guard(|| {
        let ci = query(device, |f, h| match f.any_device(h)? {
            (_, Some((_, ci))) => Ok(ci),
            (_, None) => Err(ERROR_NOT_SUPPORTED),
        })?;
        // SAFETY: `id` is the caller's `unsigned int *`: null (refused) or writable.
        unsafe { put(id, ci) }
    })
}

// ---------------------------------------------------------------------------------------------
// Processes

/// Processes on a device: those of one CI for a MIG device, all of them for a full GPU (the
/// stand-in CUDA's among them, when it is bridged to this GPU: [`cuda_processes`]).
fn processes_of(f: &Fake, h: Handle) -> Result<Vec<nvmlProcessInfo_v2_t>, Rc> {
    let (gpu, mig) = f.any_device(h)?;
    let mut out = Vec::new();
    if mig.is_none() && !f.gpu(gpu)?.mig.current && cuda_gpu() == Some(gpu) {
        out.extend(
            cuda_processes()
                .into_iter()
                .map(|(pid, bytes)| nvmlProcessInfo_v2_t {
                    pid,
                    usedGpuMemory: bytes,
                    gpuInstanceId: NO_INSTANCE,
                    computeInstanceId: NO_INSTANCE,
                }),
        );
    }
    for gi in &f.gpu(gpu)?.gis {
        for ci in &gi.cis {
            if mig.is_some_and(|m| m != (gi.id, ci.id)) {
                continue;
            }
            out.extend(ci.processes.iter().map(|p| nvmlProcessInfo_v2_t {
                pid: p.pid,
                usedGpuMemory: 0,
                gpuInstanceId: gi.id,
                computeInstanceId: ci.id,
            }));
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// The stand-in CUDA's processes, so that one node-wide view exists, as on a real driver: with
// `CARVE_FAKE_CUDA_DIR` set, the stand-in CUDA's one GPU (`carve-fake-cuda`, whose processes
// share that directory) is this library's GPU `$CARVE_FAKE_NVML_CUDA_GPU` (0 when unset), and
// its processes are that GPU's compute processes, whoever launched them, with or without carve's
// shim: those that hold device memory (`mem/<pid>`, "<bytes> <start time>", as the stand-in CUDA
// writes it: the start time, field 22 of `/proc/<pid>/stat`, tells a reused pid) with that
// memory, and those that have run a kernel (they map its `gpu.tickets` page) with what they
// hold, maybe nothing. A real driver lists a process from its context's creation; the stand-in
// from its first allocation or kernel. A GPU in MIG mode shows none of them (the stand-in CUDA
// has no MIG devices). Read-only: nothing here changes the stand-in CUDA's files.

/// The stand-in CUDA's shared directory (`carve-fake-cuda`'s own variable).
pub const ENV_CUDA_DIR: &str = "CARVE_FAKE_CUDA_DIR";
/// Which GPU of this library the stand-in CUDA's GPU is (default 0).
pub const ENV_CUDA_GPU: &str = "CARVE_FAKE_NVML_CUDA_GPU";

fn cuda_dir() -> Option<PathBuf> {
    std::env::var_os(ENV_CUDA_DIR)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The GPU the stand-in CUDA's processes run on, when it is bridged.
fn cuda_gpu() -> Option<u32> {
    cuda_dir()?;
    match std::env::var(ENV_CUDA_GPU) {
        Ok(v) => v.trim().parse().ok(),
        Err(_) => Some(0),
    }
}

/// Field 22 of `/proc/<pid>/stat` (the start time), `None` for a process that is gone or a
/// zombie.
fn start_time(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command (field 2) is in parentheses and may hold anything; the fields after it are
    // plain: the state (3), then the start time 19 fields later.
    let rest = &s[s.rfind(')')? + 1..];
    let mut f = rest.split_ascii_whitespace();
    if matches!(f.next()?, "Z" | "X") {
        return None;
    }
    f.nth(18)?.parse().ok()
}

/// (pid, bytes) of every live process of the stand-in CUDA, by pid.
fn cuda_processes() -> Vec<(u32, u64)> {
    let Some(dir) = cuda_dir() else {
        return Vec::new();
    };
    let mut out: std::collections::BTreeMap<u32, u64> = std::collections::BTreeMap::new();
    if let Ok(rd) = std::fs::read_dir(dir.join("mem")) {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(text) = std::fs::read_to_string(e.path()) else {
                continue;
            };
            let mut w = text.split_ascii_whitespace();
            let Some(bytes) = w.next().and_then(|b| b.parse::<u64>().ok()) else {
                continue;
            };
            let started: Option<u64> = w.next().and_then(|s| s.parse().ok());
            let live = match (start_time(pid), started) {
                (Some(now), Some(then)) => now == then,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if live && bytes > 0 {
                out.insert(pid, bytes);
            }
        }
    }
    // Processes that ran a kernel map the ticket page (as a real GPU's have its device open).
    let tickets = std::fs::canonicalize(dir.join("gpu.tickets")).ok();
    if let (Some(t), Ok(rd)) = (tickets, std::fs::read_dir("/proc")) {
        let t = t.to_string_lossy().into_owned();
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if out.contains_key(&pid) {
                continue;
            }
            let Ok(maps) = std::fs::read_to_string(e.path().join("maps")) else {
                continue;
            };
            if maps.lines().any(|l| l.ends_with(t.as_str())) && start_time(pid).is_some() {
                out.insert(pid, 0);
            }
        }
    }
    out.into_iter().collect()
}

/// `nvmlDeviceGetComputeRunningProcesses`: `*infoCount` is the room in `infos` on the way in
/// and the number of processes on the way out; `NVML_ERROR_INSUFFICIENT_SIZE` (with the number)
/// when they do not fit.
///
/// # Safety
/// `infoCount` is null or readable and writable; `infos` is null or has room for
/// `*infoCount` entries.
unsafe fn running_processes(
    device: nvmlDevice_t,
    infoCount: *mut c_uint,
    infos: *mut nvmlProcessInfo_v2_t,
) -> Rc {
    guard(|| {
        let h = decode_ptr(device)?;
        // SAFETY: the caller's contract for `infoCount`: null (refused) or readable and writable.
        let count = unsafe { infoCount.as_mut() }.ok_or(ERROR_INVALID_ARGUMENT)?;
        let list = read(|f| processes_of(f, h))?;
        let room = *count as usize;
        *count = list.len() as c_uint;
        if list.is_empty() {
            return Ok(());
        }
        if infos.is_null() || room < list.len() {
            return Err(ERROR_INSUFFICIENT_SIZE);
        }
        // SAFETY: `infos` is non-null (checked) with room for `room` >= `list.len()` entries
        // (checked; the caller's contract); ours do not overlap it.
        unsafe { std::ptr::copy_nonoverlapping(list.as_ptr(), infos, list.len()) };
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses_v3(
    device: nvmlDevice_t,
    infoCount: *mut c_uint,
    infos: *mut nvmlProcessInfo_t,
) -> Rc {
    // SAFETY: the caller's `unsigned int *infoCount` and `nvmlProcessInfo_t *infos` (room for
    // `*infoCount` entries), as nvml.h defines them.
    unsafe { running_processes(device, infoCount, infos) }
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses_v2(
    device: nvmlDevice_t,
    infoCount: *mut c_uint,
    infos: *mut nvmlProcessInfo_v2_t,
) -> Rc {
    // SAFETY: the caller's `unsigned int *infoCount` and `nvmlProcessInfo_v2_t *infos` (room
    // for `*infoCount` entries), as nvml.h defines them.
    unsafe { running_processes(device, infoCount, infos) }
}

// ---------------------------------------------------------------------------------------------
// Events: XIDs a test writes, one JSON object per line, into the file named by
// `CARVE_FAKE_NVML_EVENTS`: `{"gpu": 0, "xid": 79}`, with `"gi"` and `"ci"` for a MIG device.
// An event set sees the lines written after it was created, for the GPUs registered with it
// for `nvmlEventTypeXidCriticalError`.

pub const ENV_EVENTS: &str = "CARVE_FAKE_NVML_EVENTS";
/// `nvmlEventData_t.gpuInstanceId` when the event is not about a MIG device.
use carve_backend::NVML_NO_INSTANCE as NO_INSTANCE;

struct EventSet {
    /// GPUs registered for XID events.
    gpus: Vec<u32>,
    /// How far into the events file this set has read.
    offset: u64,
}

static EVENT_SETS: Mutex<Vec<Option<EventSet>>> = Mutex::new(Vec::new());

fn event_sets() -> MutexGuard<'static, Vec<Option<EventSet>>> {
    EVENT_SETS.lock().unwrap_or_else(|e| e.into_inner())
}

fn events_path() -> Option<PathBuf> {
    std::env::var_os(ENV_EVENTS)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

fn set_index(set: nvmlEventSet_t) -> Result<usize, Rc> {
    (set as usize)
        .checked_sub(1)
        .filter(|i| event_sets().get(*i).is_some_and(Option::is_some))
        .ok_or(ERROR_INVALID_ARGUMENT)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlEventSetCreate(set: *mut nvmlEventSet_t) -> Rc {
    guard(|| {
        read(|_| Ok(()))?;
        let offset = events_path()
            .and_then(|p| std::fs::metadata(p).ok())
            .map_or(0, |m| m.len());
        let mut sets = event_sets();
        sets.push(Some(EventSet {
            gpus: Vec::new(),
            offset,
        }));
        // SAFETY: `set` is the caller's `nvmlEventSet_t *`: null (refused) or writable.
        unsafe { put(set, sets.len() as nvmlEventSet_t) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetSupportedEventTypes(
    device: nvmlDevice_t,
    types: *mut std::os::raw::c_ulonglong,
) -> Rc {
    guard(|| {
        query(device, |f, h| f.device(h))?;
        let xid = nvmlEventTypeXidCriticalError as std::os::raw::c_ulonglong;
        // SAFETY: `types` is the caller's `unsigned long long *`: null (refused) or writable.
        unsafe { put(types, xid) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceRegisterEvents(
    device: nvmlDevice_t,
    types: std::os::raw::c_ulonglong,
    set: nvmlEventSet_t,
) -> Rc {
    guard(|| {
        let gpu = query(device, |f, h| f.device(h))?;
        let i = set_index(set)?;
        if types & !(nvmlEventTypeXidCriticalError as std::os::raw::c_ulonglong) != 0 {
            return Err(ERROR_NOT_SUPPORTED);
        }
        if let Some(Some(s)) = event_sets().get_mut(i) {
            if !s.gpus.contains(&gpu) {
                s.gpus.push(gpu);
            }
        }
        Ok(())
    })
}

/// The next event for set `i` in the events file, advancing past what it read.
fn next_event(i: usize) -> Result<Option<(u32, u64, c_uint, c_uint)>, Rc> {
    let Some(path) = events_path() else {
        return Ok(None);
    };
    let Ok(text) = std::fs::read(&path) else {
        return Ok(None);
    };
    let mut sets = event_sets();
    let s = sets
        .get_mut(i)
        .and_then(Option::as_mut)
        .ok_or(ERROR_INVALID_ARGUMENT)?;
    while (s.offset as usize) < text.len() {
        let rest = &text[s.offset as usize..];
        // Only whole lines: a writer may be half-way through one.
        let Some(end) = rest.iter().position(|b| *b == b'\n') else {
            break;
        };
        s.offset += end as u64 + 1;
        let line = String::from_utf8_lossy(&rest[..end]);
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line.trim()) else {
            continue;
        };
        let (Some(gpu), Some(xid)) = (v["gpu"].as_u64(), v["xid"].as_u64()) else {
            continue;
        };
        let gpu = gpu as u32;
        if !s.gpus.contains(&gpu) {
            continue;
        }
        let id = |k: &str| v[k].as_u64().map_or(NO_INSTANCE, |x| x as c_uint);
        return Ok(Some((gpu, xid, id("gi"), id("ci"))));
    }
    Ok(None)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlEventSetWait_v2(
    set: nvmlEventSet_t,
    data: *mut nvmlEventData_t,
    timeoutms: c_uint,
) -> Rc {
    guard(|| {
        let i = set_index(set)?;
        if data.is_null() {
            return Err(ERROR_INVALID_ARGUMENT);
        }
        let deadline =
            std::time::Instant::now() + std::time::Duration::from_millis(timeoutms as u64);
        loop {
            if let Some((gpu, xid, gi, ci)) = next_event(i)? {
                let event = nvmlEventData_t {
                    device: Handle::Device(gpu).ptr()?,
                    eventType: nvmlEventTypeXidCriticalError as std::os::raw::c_ulonglong,
                    eventData: xid,
                    gpuInstanceId: gi,
                    computeInstanceId: ci,
                };
                // SAFETY: `data` is the caller's `nvmlEventData_t *`, non-null (checked) and
                // writable.
                return unsafe { put(data, event) };
            }
            if std::time::Instant::now() >= deadline {
                return Err(nvmlReturn_enum_NVML_ERROR_TIMEOUT);
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlEventSetFree(set: nvmlEventSet_t) -> Rc {
    guard(|| {
        let i = set_index(set)?;
        event_sets()[i] = None;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_round_trip_and_are_never_null() {
        for h in [
            Handle::Device(0),
            Handle::Device(63),
            Handle::Gi(1, 0),
            Handle::Gi(1, 13),
            Handle::Ci(0, 2, 0),
            Handle::Mig(7, 9, 3),
        ] {
            let v = h.encode().unwrap();
            assert_ne!(v, 0);
            assert_eq!(Handle::decode(v), Some(h));
        }
        assert_eq!(Handle::decode(0), None);
        assert_eq!(Handle::Gi(0, 5000).encode(), None);
    }

    #[test]
    fn return_codes_are_nvml_values() {
        assert_eq!(ERROR_INVALID_ARGUMENT, 2);
        assert_eq!(ERROR_NOT_SUPPORTED, 3);
        assert_eq!(ERROR_NOT_FOUND, 6);
        assert_eq!(ERROR_INSUFFICIENT_SIZE, 7);
        assert_eq!(ERROR_IN_USE, 19);
        assert_eq!(ERROR_INSUFFICIENT_RESOURCES, 23);
        assert_eq!(ERROR_UNKNOWN, 999);
    }

    #[test]
    fn ci_profiles_follow_the_guide() {
        assert_eq!(ci_profile(3, 0), Ok((1, 3)));
        assert_eq!(ci_profile(3, 1), Ok((2, 1)));
        assert_eq!(ci_profile(3, 2), Ok((3, 1)));
        assert_eq!(ci_profile(3, 3), Err(ERROR_NOT_SUPPORTED));
        assert_eq!(ci_profile(7, 4), Ok((7, 1)));
        assert_eq!(ci_profile(7, 7), Err(ERROR_NOT_SUPPORTED));
        assert_eq!(ci_profile(7, CI_PROFILE_COUNT), Err(ERROR_INVALID_ARGUMENT));
    }

    /// The C entry points against the in-memory node (no state file), in one test since they
    /// share the process-wide state.
    #[test]
    fn entry_points_in_process() {
        // SAFETY: every call gets live out-pointers, and buffers of the lengths it is given.
        unsafe {
            std::env::remove_var(ENV_STATE);
            std::env::remove_var(ENV_NODE);
            assert_eq!(nvmlShutdown(), ERROR_UNINITIALIZED);
            let mut n = 0;
            assert_eq!(nvmlDeviceGetCount_v2(&mut n), ERROR_UNINITIALIZED);
            assert_eq!(nvmlInit_v2(), SUCCESS);
            assert_eq!(nvmlDeviceGetCount_v2(&mut n), SUCCESS);
            assert_eq!(n, 2);
            let mut dev: nvmlDevice_t = std::ptr::null_mut();
            assert_eq!(nvmlDeviceGetHandleByIndex_v2(0, &mut dev), SUCCESS);
            assert_eq!(
                nvmlDeviceGetHandleByIndex_v2(2, &mut dev),
                ERROR_INVALID_ARGUMENT
            );
            assert_eq!(nvmlDeviceGetHandleByIndex_v2(0, &mut dev), SUCCESS);
            let mut info: nvmlGpuInstanceProfileInfo_t = std::mem::zeroed();
            assert_eq!(
                nvmlDeviceGetGpuInstanceProfileInfo(dev, 2, &mut info),
                SUCCESS
            );
            assert_eq!((info.id, info.sliceCount, info.instanceCount), (9, 3, 2));
            assert_eq!(
                nvmlDeviceGetGpuInstanceProfileInfo(dev, 5, &mut info),
                ERROR_NOT_SUPPORTED
            );
            assert_eq!(
                nvmlDeviceGetGpuInstanceProfileInfo(dev, 0x12, &mut info),
                ERROR_INVALID_ARGUMENT
            );
            let mut count = 0;
            assert_eq!(
                nvmlDeviceGetGpuInstancePossiblePlacements_v2(
                    dev,
                    9,
                    std::ptr::null_mut(),
                    &mut count
                ),
                SUCCESS
            );
            assert_eq!(count, 2);
            let mut gi: nvmlGpuInstance_t = std::ptr::null_mut();
            let pl = nvmlGpuInstancePlacement_t { start: 4, size: 4 };
            assert_eq!(
                nvmlDeviceCreateGpuInstanceWithPlacement(dev, 9, &pl, &mut gi),
                SUCCESS
            );
            let mut gi_info: nvmlGpuInstanceInfo_t = std::mem::zeroed();
            assert_eq!(nvmlGpuInstanceGetInfo(gi, &mut gi_info), SUCCESS);
            assert_eq!((gi_info.id, gi_info.profileId), (2, 9));
            assert_eq!(gi_info.placement.start, 4);
            assert_eq!(
                nvmlDeviceCreateGpuInstanceWithPlacement(dev, 9, &pl, &mut gi),
                ERROR_INSUFFICIENT_RESOURCES
            );
            let mut ci: nvmlComputeInstance_t = std::ptr::null_mut();
            assert_eq!(
                nvmlGpuInstanceCreateComputeInstance(gi, 2, &mut ci),
                SUCCESS
            );
            assert_eq!(nvmlGpuInstanceDestroy(gi), ERROR_IN_USE);
            let mut max = 0;
            assert_eq!(nvmlDeviceGetMaxMigDeviceCount(dev, &mut max), SUCCESS);
            assert_eq!(max, 7);
            let mut mig: nvmlDevice_t = std::ptr::null_mut();
            assert_eq!(
                nvmlDeviceGetMigDeviceHandleByIndex(dev, 0, &mut mig),
                SUCCESS
            );
            assert_eq!(
                nvmlDeviceGetMigDeviceHandleByIndex(dev, 1, &mut mig),
                ERROR_NOT_FOUND
            );
            let mut uuid = [0 as c_char; 96];
            assert_eq!(nvmlDeviceGetUUID(mig, uuid.as_mut_ptr(), 96), SUCCESS);
            let uuid = CStr::from_ptr(uuid.as_ptr()).to_str().unwrap();
            assert!(uuid.starts_with("MIG-"), "{uuid}");
            let mut pc = 0;
            assert_eq!(
                nvmlDeviceGetComputeRunningProcesses_v3(mig, &mut pc, std::ptr::null_mut()),
                SUCCESS
            );
            assert_eq!(pc, 0);
            assert_eq!(nvmlComputeInstanceDestroy(ci), SUCCESS);
            assert_eq!(nvmlComputeInstanceDestroy(ci), ERROR_INVALID_ARGUMENT);
            assert_eq!(nvmlGpuInstanceDestroy(gi), SUCCESS);
            assert_eq!(nvmlShutdown(), SUCCESS);
            assert_eq!(nvmlShutdown(), ERROR_UNINITIALIZED);
            let s = CStr::from_ptr(nvmlErrorString(ERROR_IN_USE));
            assert_eq!(s.to_str().unwrap(), "In use by another client");
        }
    }
}
