//! The NVML backend: MIG GPU instances and compute instances through `libnvidia-ml.so.1`,
//! loaded at run time with nvml-wrapper (so carve builds and starts on machines without a
//! driver; [`NvmlBackend::open`] then fails with [`BackendError::Unavailable`]).
//!
//! nvml-wrapper 0.12 wraps MIG mode, device identity and profile info, but not GI/CI
//! enumeration, creation or destruction; those go through the raw `nvml-wrapper-sys` function
//! table (`Nvml::lib()`) with the device handle (`Device::handle()`). Two details of that API
//! matter here:
//! - The *profile index* (`NVML_GPU_INSTANCE_PROFILE_*`, what [`NvmlGiProfile::value`] gives) is
//!   only the argument of `nvmlDeviceGetGpuInstanceProfileInfo`; every other call takes the
//!   device-specific `info.id` it returns.
//! - nvml-wrapper's `possible_placements()` always returns an empty list (it never sets the
//!   Vec's length), so placements are read with the raw call.
//!
//! The raw function table is read field by field: a function the installed library lacks is
//! reported as [`BackendError::Unavailable`] naming it, never a panic (the `NvmlLib` convenience
//! methods would panic). Every error names the NVML call that failed.
//!
//! `CARVE_NVML_LIB` overrides the library path (tests point it at the stand-in library built by
//! `carve-fake-nvml`).

use carve_backend::{
    Backend, BackendError, ComputeInstance, GpuInfo, GpuInstance, GpuProcess, MigMode, Process,
    Result,
};
use carve_model::NvmlGiProfile;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;
use nvml_wrapper_sys::bindings::*;
use std::collections::HashMap;
use std::ffi::{CStr, OsString};
use std::os::raw::{c_char, c_uint};

/// Environment variable naming the NVML library to load instead of `libnvidia-ml.so.1`.
pub const ENV_LIB: &str = "CARVE_NVML_LIB";

/// `NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED`.
const CI_ENGINE_PROFILE_SHARED: c_uint = 0;
/// Upper bound on GI profile indices probed (NVML stops us earlier with INVALID_ARGUMENT).
const GI_PROFILE_SCAN: c_uint = 64;
/// CI profile indices probed (`NVML_COMPUTE_INSTANCE_PROFILE_COUNT` is 9 in NVML 13).
const CI_PROFILE_SCAN: c_uint = 16;
/// Upper bound on any count the driver reports, to keep buffers sane.
const MAX_COUNT: c_uint = 4096;

/// The NVML return codes this crate distinguishes.
const SUCCESS: nvmlReturn_t = nvmlReturn_enum_NVML_SUCCESS;
const ERROR_INVALID_ARGUMENT: nvmlReturn_t = nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT;
const ERROR_NOT_SUPPORTED: nvmlReturn_t = nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED;
const ERROR_NOT_FOUND: nvmlReturn_t = nvmlReturn_enum_NVML_ERROR_NOT_FOUND;
const ERROR_INSUFFICIENT_SIZE: nvmlReturn_t = nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE;

/// The symbolic name of an NVML return code.
#[allow(non_upper_case_globals)] // bindgen's constant names
pub fn return_code_name(rc: nvmlReturn_t) -> &'static str {
    match rc {
        nvmlReturn_enum_NVML_SUCCESS => "NVML_SUCCESS",
        nvmlReturn_enum_NVML_ERROR_UNINITIALIZED => "NVML_ERROR_UNINITIALIZED",
        nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT => "NVML_ERROR_INVALID_ARGUMENT",
        nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED => "NVML_ERROR_NOT_SUPPORTED",
        nvmlReturn_enum_NVML_ERROR_NO_PERMISSION => "NVML_ERROR_NO_PERMISSION",
        nvmlReturn_enum_NVML_ERROR_ALREADY_INITIALIZED => "NVML_ERROR_ALREADY_INITIALIZED",
        nvmlReturn_enum_NVML_ERROR_NOT_FOUND => "NVML_ERROR_NOT_FOUND",
        nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE => "NVML_ERROR_INSUFFICIENT_SIZE",
        nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_POWER => "NVML_ERROR_INSUFFICIENT_POWER",
        nvmlReturn_enum_NVML_ERROR_DRIVER_NOT_LOADED => "NVML_ERROR_DRIVER_NOT_LOADED",
        nvmlReturn_enum_NVML_ERROR_TIMEOUT => "NVML_ERROR_TIMEOUT",
        nvmlReturn_enum_NVML_ERROR_IRQ_ISSUE => "NVML_ERROR_IRQ_ISSUE",
        nvmlReturn_enum_NVML_ERROR_LIBRARY_NOT_FOUND => "NVML_ERROR_LIBRARY_NOT_FOUND",
        nvmlReturn_enum_NVML_ERROR_FUNCTION_NOT_FOUND => "NVML_ERROR_FUNCTION_NOT_FOUND",
        nvmlReturn_enum_NVML_ERROR_CORRUPTED_INFOROM => "NVML_ERROR_CORRUPTED_INFOROM",
        nvmlReturn_enum_NVML_ERROR_GPU_IS_LOST => "NVML_ERROR_GPU_IS_LOST",
        nvmlReturn_enum_NVML_ERROR_RESET_REQUIRED => "NVML_ERROR_RESET_REQUIRED",
        nvmlReturn_enum_NVML_ERROR_OPERATING_SYSTEM => "NVML_ERROR_OPERATING_SYSTEM",
        nvmlReturn_enum_NVML_ERROR_LIB_RM_VERSION_MISMATCH => "NVML_ERROR_LIB_RM_VERSION_MISMATCH",
        nvmlReturn_enum_NVML_ERROR_IN_USE => "NVML_ERROR_IN_USE",
        nvmlReturn_enum_NVML_ERROR_MEMORY => "NVML_ERROR_MEMORY",
        nvmlReturn_enum_NVML_ERROR_NO_DATA => "NVML_ERROR_NO_DATA",
        nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_RESOURCES => "NVML_ERROR_INSUFFICIENT_RESOURCES",
        nvmlReturn_enum_NVML_ERROR_ARGUMENT_VERSION_MISMATCH => {
            "NVML_ERROR_ARGUMENT_VERSION_MISMATCH"
        }
        nvmlReturn_enum_NVML_ERROR_UNKNOWN => "NVML_ERROR_UNKNOWN",
        _ => "unrecognised NVML error",
    }
}

/// Maps an NVML return code from `call` to a backend error; `ctx` says what it was about.
#[allow(non_upper_case_globals)] // bindgen's constant names
pub fn map_return_code(rc: nvmlReturn_t, call: &str, ctx: &str) -> BackendError {
    let ctx = if ctx.is_empty() {
        String::new()
    } else {
        format!(" ({ctx})")
    };
    let detail = format!("{call}{ctx}: {} ({rc})", return_code_name(rc));
    match rc {
        nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_RESOURCES => {
            BackendError::InsufficientResources(detail)
        }
        nvmlReturn_enum_NVML_ERROR_IN_USE => BackendError::InUse(detail),
        nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED => BackendError::NotSupported(detail),
        nvmlReturn_enum_NVML_ERROR_NO_PERMISSION => BackendError::NoPermission(detail),
        nvmlReturn_enum_NVML_ERROR_NOT_FOUND => BackendError::NotFound(detail),
        nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT => BackendError::InvalidArgument(detail),
        nvmlReturn_enum_NVML_ERROR_RESET_REQUIRED | nvmlReturn_enum_NVML_ERROR_GPU_IS_LOST => {
            BackendError::ResetRequired(detail)
        }
        nvmlReturn_enum_NVML_ERROR_UNINITIALIZED
        | nvmlReturn_enum_NVML_ERROR_DRIVER_NOT_LOADED
        | nvmlReturn_enum_NVML_ERROR_LIBRARY_NOT_FOUND
        | nvmlReturn_enum_NVML_ERROR_FUNCTION_NOT_FOUND
        | nvmlReturn_enum_NVML_ERROR_LIB_RM_VERSION_MISMATCH => BackendError::Unavailable(detail),
        _ => BackendError::Other(format!("NVML error {rc} in {call}{ctx}")),
    }
}

/// Maps an error of nvml-wrapper's safe API from `call`.
fn map_nvml_error(e: NvmlError, call: &str, ctx: &str) -> BackendError {
    let where_ = if ctx.is_empty() {
        call.to_string()
    } else {
        format!("{call} ({ctx})")
    };
    match e {
        NvmlError::LibloadingError(e) => BackendError::Unavailable(format!("{where_}: {e}")),
        NvmlError::FailedToLoadSymbol(e) => BackendError::Unavailable(format!(
            "{where_}: the NVML library lacks this function ({e})"
        )),
        e @ (NvmlError::Utf8Error(_)
        | NvmlError::NulError(_)
        | NvmlError::StringTooLong { .. }
        | NvmlError::IncorrectBits(_)
        | NvmlError::SetReleaseFailed
        | NvmlError::GetPciInfoFailed
        | NvmlError::PciInfoToCFailed) => BackendError::Other(format!("{where_}: {e}")),
        e => map_return_code(e.into(), call, ctx),
    }
}

/// A function from the raw table, or `Unavailable` naming it when the library lacks it.
fn sym<T: Copy, E: std::fmt::Display>(
    f: &std::result::Result<T, E>,
    name: &'static str,
) -> Result<T> {
    f.as_ref().copied().map_err(|e| {
        BackendError::Unavailable(format!(
            "{name}: the NVML library lacks this function ({e})"
        ))
    })
}

/// `(function pointer, name)` of a raw NVML function.
macro_rules! func {
    ($lib:expr, $name:ident) => {
        (sym(&$lib.$name, stringify!($name))?, stringify!($name))
    };
}

/// `Ok` on NVML_SUCCESS, else the mapped error.
fn check(rc: nvmlReturn_t, call: &str, ctx: impl FnOnce() -> String) -> Result<()> {
    if rc == SUCCESS {
        Ok(())
    } else {
        Err(map_return_code(rc, call, &ctx()))
    }
}

/// A NUL-terminated string the driver wrote into `buf`.
fn c_string(buf: &[c_char], call: &str) -> Result<String> {
    let bytes: Vec<u8> = buf.iter().map(|&c| c as u8).collect();
    let s = CStr::from_bytes_until_nul(&bytes)
        .map_err(|_| BackendError::Other(format!("{call}: unterminated string")))?;
    Ok(s.to_string_lossy().into_owned())
}

/// The name of a process: `/proc/<pid>/comm`, else `pid N`.
fn process_name(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end_matches('\n').to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("pid {pid}"))
}

/// One GI profile the device offers: its index and `nvmlDeviceGetGpuInstanceProfileInfo`.
#[derive(Debug, Clone, Copy)]
struct GiProfileInfo {
    index: u32,
    info: nvmlGpuInstanceProfileInfo_t,
}

/// What is known of a MIG device (one per CI).
#[derive(Debug, Default)]
struct MigDevice {
    uuid: String,
    processes: Vec<Process>,
}

/// The NVML backend. Holds the library open (and NVML initialised) for its lifetime.
pub struct NvmlBackend {
    nvml: Nvml,
    /// GPU → the GI profiles it offers (fixed while the MIG mode stays as is).
    gi_profiles: HashMap<u32, Vec<GiProfileInfo>>,
    /// (GPU, GI profile index) → CI profiles a GI of that profile offers.
    ci_profiles: HashMap<(u32, u32), Vec<nvmlComputeInstanceProfileInfo_t>>,
}

impl std::fmt::Debug for NvmlBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlBackend").finish_non_exhaustive()
    }
}

impl NvmlBackend {
    /// Loads NVML (`$CARVE_NVML_LIB`, else `libnvidia-ml.so.1` from the library search path) and
    /// initialises it. Any failure is [`BackendError::Unavailable`].
    pub fn open() -> Result<NvmlBackend> {
        let path: Option<OsString> = std::env::var_os(ENV_LIB).filter(|p| !p.is_empty());
        let mut builder = Nvml::builder();
        if let Some(p) = &path {
            builder.lib_path(p);
        }
        let shown = path
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|| "libnvidia-ml.so.1".to_string());
        let nvml = builder.init().map_err(|e| {
            BackendError::Unavailable(format!("cannot initialise NVML from {shown}: {e}"))
        })?;
        Ok(NvmlBackend {
            nvml,
            gi_profiles: HashMap::new(),
            ci_profiles: HashMap::new(),
        })
    }

    /// The nvml-wrapper handle, for callers that need more than the backend interface.
    pub fn nvml(&self) -> &Nvml {
        &self.nvml
    }

    fn device(&self, gpu: u32) -> Result<nvmlDevice_t> {
        let d = self.nvml.device_by_index(gpu).map_err(|e| {
            map_nvml_error(e, "nvmlDeviceGetHandleByIndex_v2", &format!("GPU {gpu}"))
        })?;
        // SAFETY: the handle stays valid while `self.nvml` is initialised; it is only passed
        // back to NVML.
        Ok(unsafe { d.handle() })
    }

    /// The GI profiles of a GPU: profile indices 0, 1, … until INVALID_ARGUMENT, skipping
    /// NOT_SUPPORTED. Cached per GPU.
    fn gi_profile_table(&mut self, gpu: u32, dev: nvmlDevice_t) -> Result<Vec<GiProfileInfo>> {
        if let Some(t) = self.gi_profiles.get(&gpu) {
            return Ok(t.clone());
        }
        let (f, name) = func!(self.nvml.lib(), nvmlDeviceGetGpuInstanceProfileInfo);
        let mut table = Vec::new();
        for index in 0..GI_PROFILE_SCAN {
            // SAFETY: a plain C struct of integers.
            let mut info: nvmlGpuInstanceProfileInfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: valid device handle and out-pointer.
            let rc = unsafe { f(dev, index, &mut info) };
            match rc {
                SUCCESS => table.push(GiProfileInfo { index, info }),
                ERROR_NOT_SUPPORTED => continue,
                ERROR_INVALID_ARGUMENT => break,
                _ => {
                    return Err(map_return_code(
                        rc,
                        name,
                        &format!("GPU {gpu}, profile index {index}"),
                    ))
                }
            }
        }
        if !table.is_empty() {
            self.gi_profiles.insert(gpu, table.clone());
        }
        Ok(table)
    }

    /// The CI profiles a GI offers (engine profile SHARED), cached per (GPU, GI profile index).
    fn ci_profile_table(
        &mut self,
        gpu: u32,
        gi_profile_index: Option<u32>,
        gi: nvmlGpuInstance_t,
        gi_id: u32,
    ) -> Result<Vec<nvmlComputeInstanceProfileInfo_t>> {
        if let Some(t) = gi_profile_index.and_then(|i| self.ci_profiles.get(&(gpu, i))) {
            return Ok(t.clone());
        }
        let (f, name) = func!(
            self.nvml.lib(),
            nvmlGpuInstanceGetComputeInstanceProfileInfo
        );
        let mut table = Vec::new();
        for index in 0..CI_PROFILE_SCAN {
            // SAFETY: a plain C struct of integers.
            let mut info: nvmlComputeInstanceProfileInfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: valid GI handle and out-pointer.
            let rc = unsafe { f(gi, index, CI_ENGINE_PROFILE_SHARED, &mut info) };
            match rc {
                SUCCESS => table.push(info),
                // Not offered by this GI, or past the driver's last profile.
                ERROR_NOT_SUPPORTED | ERROR_INVALID_ARGUMENT => continue,
                _ => {
                    return Err(map_return_code(
                        rc,
                        name,
                        &format!("GPU {gpu}, GPU instance {gi_id}, CI profile index {index}"),
                    ))
                }
            }
        }
        if let Some(i) = gi_profile_index.filter(|_| !table.is_empty()) {
            self.ci_profiles.insert((gpu, i), table.clone());
        }
        Ok(table)
    }

    fn gi_info(&self, gi: nvmlGpuInstance_t, ctx: &str) -> Result<nvmlGpuInstanceInfo_t> {
        let (f, name) = func!(self.nvml.lib(), nvmlGpuInstanceGetInfo);
        // SAFETY: a plain C struct (pointers and integers).
        let mut info: nvmlGpuInstanceInfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid GI handle and out-pointer.
        let rc = unsafe { f(gi, &mut info) };
        check(rc, name, || ctx.to_string())?;
        Ok(info)
    }

    fn ci_info(&self, ci: nvmlComputeInstance_t, ctx: &str) -> Result<nvmlComputeInstanceInfo_t> {
        let (f, name) = func!(self.nvml.lib(), nvmlComputeInstanceGetInfo_v2);
        // SAFETY: a plain C struct (pointers and integers).
        let mut info: nvmlComputeInstanceInfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid CI handle and out-pointer.
        let rc = unsafe { f(ci, &mut info) };
        check(rc, name, || ctx.to_string())?;
        Ok(info)
    }

    fn gi_by_id(&self, gpu: u32, dev: nvmlDevice_t, gi: u32) -> Result<nvmlGpuInstance_t> {
        let (f, name) = func!(self.nvml.lib(), nvmlDeviceGetGpuInstanceById);
        let mut h: nvmlGpuInstance_t = std::ptr::null_mut();
        // SAFETY: valid device handle and out-pointer.
        let rc = unsafe { f(dev, gi, &mut h) };
        check(rc, name, || format!("GPU {gpu}, GPU instance {gi}"))?;
        Ok(h)
    }

    /// Allowed placements of a GI profile (by `info.id`), read with the raw call.
    fn placements(
        &self,
        gpu: u32,
        dev: nvmlDevice_t,
        profile_id: u32,
    ) -> Result<Vec<nvmlGpuInstancePlacement_t>> {
        let (f, name) = func!(
            self.nvml.lib(),
            nvmlDeviceGetGpuInstancePossiblePlacements_v2
        );
        let ctx = || format!("GPU {gpu}, profile id {profile_id}");
        let mut count: c_uint = 0;
        // SAFETY: NULL asks for the count only.
        let rc = unsafe { f(dev, profile_id, std::ptr::null_mut(), &mut count) };
        check(rc, name, ctx)?;
        if count == 0 {
            return Ok(Vec::new());
        }
        let cap = count.min(MAX_COUNT) as usize;
        let mut v: Vec<nvmlGpuInstancePlacement_t> = Vec::with_capacity(cap);
        let mut n: c_uint = cap as c_uint;
        // SAFETY: the buffer holds `cap` placements, the count the driver just gave.
        let rc = unsafe { f(dev, profile_id, v.as_mut_ptr(), &mut n) };
        check(rc, name, ctx)?;
        // SAFETY: the driver initialised the first `n` entries (never more than `cap`).
        unsafe { v.set_len((n as usize).min(cap)) };
        Ok(v)
    }

    /// The compute processes on a (MIG) device as the driver lists them, v3 of the call where
    /// the library has it, else v2 (one entry per process and MIG device it runs on).
    fn process_infos(&self, dev: nvmlDevice_t, ctx: &str) -> Result<Vec<nvmlProcessInfo_v2_t>> {
        let lib = self.nvml.lib();
        let (f, name) = match &lib.nvmlDeviceGetComputeRunningProcesses_v3 {
            Ok(f) => (*f, "nvmlDeviceGetComputeRunningProcesses_v3"),
            Err(_) => func!(lib, nvmlDeviceGetComputeRunningProcesses_v2),
        };
        let mut cap: usize = 0;
        for _ in 0..5 {
            let mut buf: Vec<nvmlProcessInfo_v2_t> = Vec::with_capacity(cap);
            let mut count: c_uint = cap as c_uint;
            let ptr = if cap == 0 {
                std::ptr::null_mut()
            } else {
                buf.as_mut_ptr()
            };
            // SAFETY: `ptr` is NULL with count 0, or a buffer of `cap` entries.
            let rc = unsafe { f(dev, &mut count, ptr) };
            match rc {
                SUCCESS => {
                    // SAFETY: the driver initialised the first `count` entries (never more
                    // than `cap`, the room it was given).
                    unsafe { buf.set_len((count as usize).min(cap)) };
                    return Ok(buf);
                }
                // More processes than room: retry with room for them (and a few newcomers).
                ERROR_INSUFFICIENT_SIZE => cap = count.min(MAX_COUNT) as usize + 8,
                _ => return Err(map_return_code(rc, name, ctx)),
            }
        }
        Err(BackendError::Other(format!(
            "{name} ({ctx}): the process list kept growing"
        )))
    }

    /// Processes on a (MIG) device, each once, with their names.
    fn processes(&self, dev: nvmlDevice_t, ctx: &str) -> Result<Vec<Process>> {
        let mut out: Vec<Process> = Vec::new();
        for p in self.process_infos(dev, ctx)? {
            if !out.iter().any(|o| o.pid == p.pid) {
                out.push(Process {
                    pid: p.pid,
                    name: process_name(p.pid),
                });
            }
        }
        Ok(out)
    }

    /// MIG devices of a GPU by (GI id, CI id): UUID and processes.
    fn mig_devices(&self, gpu: u32, dev: nvmlDevice_t) -> Result<HashMap<(u32, u32), MigDevice>> {
        let lib = self.nvml.lib();
        let (max_f, max_name) = func!(lib, nvmlDeviceGetMaxMigDeviceCount);
        let (by_index, by_index_name) = func!(lib, nvmlDeviceGetMigDeviceHandleByIndex);
        let (gi_id_f, gi_id_name) = func!(lib, nvmlDeviceGetGpuInstanceId);
        let (ci_id_f, ci_id_name) = func!(lib, nvmlDeviceGetComputeInstanceId);
        let (uuid_f, uuid_name) = func!(lib, nvmlDeviceGetUUID);
        let mut max: c_uint = 0;
        // SAFETY: valid device handle and out-pointer.
        let rc = unsafe { max_f(dev, &mut max) };
        check(rc, max_name, || format!("GPU {gpu}"))?;
        let mut out = HashMap::new();
        for i in 0..max.min(MAX_COUNT) {
            let ctx = || format!("GPU {gpu}, MIG device index {i}");
            let mut mig: nvmlDevice_t = std::ptr::null_mut();
            // SAFETY: valid device handle and out-pointer.
            let rc = unsafe { by_index(dev, i, &mut mig) };
            match rc {
                SUCCESS => {}
                // No MIG device at this index.
                ERROR_NOT_FOUND | ERROR_INVALID_ARGUMENT => continue,
                _ => return Err(map_return_code(rc, by_index_name, &ctx())),
            }
            let (mut gi, mut ci): (c_uint, c_uint) = (0, 0);
            // SAFETY: valid MIG device handle and out-pointers.
            let rc = unsafe { gi_id_f(mig, &mut gi) };
            check(rc, gi_id_name, ctx)?;
            // SAFETY: as above.
            let rc = unsafe { ci_id_f(mig, &mut ci) };
            check(rc, ci_id_name, ctx)?;
            let mut buf = [0 as c_char; NVML_DEVICE_UUID_V2_BUFFER_SIZE as usize];
            // SAFETY: the buffer is as long as we say.
            let rc = unsafe { uuid_f(mig, buf.as_mut_ptr(), buf.len() as c_uint) };
            check(rc, uuid_name, ctx)?;
            let uuid = c_string(&buf, uuid_name)?;
            let processes = self.processes(
                mig,
                &format!("GPU {gpu}, GPU instance {gi}, compute instance {ci}"),
            )?;
            out.insert((gi, ci), MigDevice { uuid, processes });
        }
        Ok(out)
    }

    /// GI handles of one profile on a GPU.
    fn gi_handles(
        &self,
        gpu: u32,
        dev: nvmlDevice_t,
        p: &GiProfileInfo,
    ) -> Result<Vec<nvmlGpuInstance_t>> {
        let (f, name) = func!(self.nvml.lib(), nvmlDeviceGetGpuInstances);
        let cap = p.info.instanceCount.clamp(1, MAX_COUNT) as usize;
        let mut v: Vec<nvmlGpuInstance_t> = vec![std::ptr::null_mut(); cap];
        let mut count: c_uint = cap as c_uint;
        // SAFETY: the buffer holds `instanceCount` handles, as the call requires.
        let rc = unsafe { f(dev, p.info.id, v.as_mut_ptr(), &mut count) };
        check(rc, name, || format!("GPU {gpu}, profile id {}", p.info.id))?;
        v.truncate(count as usize);
        Ok(v)
    }

    /// CIs of a GI with their MIG devices (taken out of `migs`).
    fn compute_instances(
        &mut self,
        gpu: u32,
        gi_profile_index: u32,
        gi: nvmlGpuInstance_t,
        gi_id: u32,
        migs: &mut HashMap<(u32, u32), MigDevice>,
    ) -> Result<Vec<ComputeInstance>> {
        let table = self.ci_profile_table(gpu, Some(gi_profile_index), gi, gi_id)?;
        let (f, name) = func!(self.nvml.lib(), nvmlGpuInstanceGetComputeInstances);
        let mut out: Vec<ComputeInstance> = Vec::new();
        for cp in table {
            let cap = cp.instanceCount.clamp(1, MAX_COUNT) as usize;
            let mut v: Vec<nvmlComputeInstance_t> = vec![std::ptr::null_mut(); cap];
            let mut count: c_uint = cap as c_uint;
            // SAFETY: the buffer holds `instanceCount` handles, as the call requires.
            let rc = unsafe { f(gi, cp.id, v.as_mut_ptr(), &mut count) };
            check(rc, name, || {
                format!("GPU {gpu}, GPU instance {gi_id}, CI profile id {}", cp.id)
            })?;
            v.truncate(count as usize);
            for ci in v {
                let info = self.ci_info(ci, &format!("GPU {gpu}, GPU instance {gi_id}"))?;
                if out.iter().any(|c| c.id == info.id) {
                    continue;
                }
                let slices = u8::try_from(cp.sliceCount).map_err(|_| {
                    BackendError::Other(format!(
                        "{name}: CI profile {} has {} slices",
                        cp.id, cp.sliceCount
                    ))
                })?;
                let mig = migs.remove(&(gi_id, info.id)).unwrap_or_default();
                out.push(ComputeInstance {
                    id: info.id,
                    slices,
                    uuid: mig.uuid,
                    processes: mig.processes,
                });
            }
        }
        out.sort_by_key(|c| c.id);
        Ok(out)
    }

    fn mode(&self, gpu: u32) -> std::result::Result<MigMode, BackendError> {
        let d = self.nvml.device_by_index(gpu).map_err(|e| {
            map_nvml_error(e, "nvmlDeviceGetHandleByIndex_v2", &format!("GPU {gpu}"))
        })?;
        let m = d
            .mig_mode()
            .map_err(|e| map_nvml_error(e, "nvmlDeviceGetMigMode", &format!("GPU {gpu}")))?;
        Ok(MigMode {
            current: m.current == NVML_DEVICE_MIG_ENABLE,
            pending: m.pending == NVML_DEVICE_MIG_ENABLE,
        })
    }

    fn memory_mib(&self, gpu: u32, d: &nvml_wrapper::Device<'_>) -> Result<u64> {
        let ctx = format!("GPU {gpu}");
        match d.memory_info() {
            Ok(m) => Ok(m.total / (1024 * 1024)),
            // Older drivers lack the v2 call: fall back to v1.
            Err(NvmlError::FailedToLoadSymbol(_)) => {
                let (f, name) = func!(self.nvml.lib(), nvmlDeviceGetMemoryInfo);
                // SAFETY: a plain C struct of integers.
                let mut m: nvmlMemory_t = unsafe { std::mem::zeroed() };
                // SAFETY: valid device handle and out-pointer.
                let rc = unsafe { f(d.handle(), &mut m) };
                check(rc, name, || ctx.clone())?;
                Ok(m.total / (1024 * 1024))
            }
            Err(e) => Err(map_nvml_error(e, "nvmlDeviceGetMemoryInfo_v2", &ctx)),
        }
    }
}

/// An XID reported by the driver: on a GPU, or on the MIG device (GPU instance `gi`, compute
/// instance `ci`) of a GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XidEvent {
    pub gpu_index: u32,
    pub gpu_uuid: String,
    pub mig: Option<(u32, u32)>,
    pub xid: u64,
}

/// `nvmlEventData_t.gpuInstanceId` when the event is not about one MIG device.
use carve_backend::NVML_NO_INSTANCE as NO_INSTANCE;

/// Watches every GPU for critical XID events (`nvmlEventTypeXidCriticalError`) on a thread of
/// its own, with its own NVML handle, until `stop` is set; `on` gets each event. GPUs that do
/// not support the event are skipped. Returns once the watch is set up, or why it cannot be.
pub fn watch_xids(
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    mut on: impl FnMut(XidEvent) + Send + 'static,
) -> Result<std::thread::JoinHandle<()>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
    let t = std::thread::spawn(move || {
        let setup = || -> Result<(NvmlBackend, nvmlEventSet_t, Vec<String>)> {
            let b = NvmlBackend::open()?;
            let lib = b.nvml.lib();
            let (create, name) = func!(lib, nvmlEventSetCreate);
            let mut set: nvmlEventSet_t = std::ptr::null_mut();
            // SAFETY: NVML writes an event set handle.
            check(unsafe { create(&mut set) }, name, String::new)?;
            let (register, rname) = func!(lib, nvmlDeviceRegisterEvents);
            let n = b
                .nvml
                .device_count()
                .map_err(|e| map_nvml_error(e, "nvmlDeviceGetCount_v2", ""))?;
            let mut uuids = Vec::new();
            for i in 0..n {
                let d = b.device(i)?;
                let uuid = b
                    .nvml
                    .device_by_index(i)
                    .and_then(|d| d.uuid())
                    .unwrap_or_default();
                uuids.push(uuid);
                // SAFETY: a device handle and an event set handle NVML gave us.
                let rc = unsafe { register(d, nvmlEventTypeXidCriticalError as u64, set) };
                if rc != SUCCESS && rc != nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED {
                    return Err(map_return_code(rc, rname, &format!("GPU {i}")));
                }
            }
            Ok((b, set, uuids))
        };
        let (b, set, uuids) = match setup() {
            Ok(x) => {
                let _ = ready_tx.send(Ok(()));
                x
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        let lib = b.nvml.lib();
        let (Ok(wait), Ok(index_of)) = (
            sym(&lib.nvmlEventSetWait_v2, "nvmlEventSetWait_v2"),
            sym(&lib.nvmlDeviceGetIndex, "nvmlDeviceGetIndex"),
        ) else {
            return;
        };
        while !stop.load(std::sync::atomic::Ordering::Acquire) {
            // SAFETY: a plain C struct NVML fills in.
            let mut data: nvmlEventData_t = unsafe { std::mem::zeroed() };
            // SAFETY: the set is ours and alive; `data` is writable.
            let rc = unsafe { wait(set, &mut data, 200) };
            if rc == nvmlReturn_enum_NVML_ERROR_TIMEOUT {
                continue;
            }
            if rc != SUCCESS {
                std::thread::sleep(std::time::Duration::from_millis(200));
                continue;
            }
            let mut idx: c_uint = 0;
            // SAFETY: the device handle NVML put in the event.
            if unsafe { index_of(data.device, &mut idx) } != SUCCESS {
                continue;
            }
            on(XidEvent {
                gpu_index: idx,
                gpu_uuid: uuids.get(idx as usize).cloned().unwrap_or_default(),
                mig: (data.gpuInstanceId != NO_INSTANCE)
                    .then_some((data.gpuInstanceId, data.computeInstanceId)),
                xid: data.eventData,
            });
        }
        if let Ok(free) = sym(&lib.nvmlEventSetFree, "nvmlEventSetFree") {
            // SAFETY: freeing the set we created, once.
            unsafe { free(set) };
        }
    });
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(t),
        Ok(Err(e)) => {
            let _ = t.join();
            Err(e)
        }
        Err(_) => Err(BackendError::Other("the XID watcher died".into())),
    }
}

impl Backend for NvmlBackend {
    fn kind(&self) -> &'static str {
        "nvml"
    }

    fn gpus(&mut self) -> Result<Vec<GpuInfo>> {
        let n = self
            .nvml
            .device_count()
            .map_err(|e| map_nvml_error(e, "nvmlDeviceGetCount_v2", ""))?;
        let mut out = Vec::new();
        for index in 0..n {
            let ctx = format!("GPU {index}");
            let d = self
                .nvml
                .device_by_index(index)
                .map_err(|e| map_nvml_error(e, "nvmlDeviceGetHandleByIndex_v2", &ctx))?;
            let uuid = d
                .uuid()
                .map_err(|e| map_nvml_error(e, "nvmlDeviceGetUUID", &ctx))?;
            let name = d
                .name()
                .map_err(|e| map_nvml_error(e, "nvmlDeviceGetName", &ctx))?;
            let pci = d
                .pci_info()
                .map_err(|e| map_nvml_error(e, "nvmlDeviceGetPciInfo_v3", &ctx))?;
            let memory_mib = self.memory_mib(index, &d)?;
            let mig = match d.mig_mode() {
                Ok(m) => Some(MigMode {
                    current: m.current == NVML_DEVICE_MIG_ENABLE,
                    pending: m.pending == NVML_DEVICE_MIG_ENABLE,
                }),
                Err(NvmlError::NotSupported) => None,
                Err(e) => return Err(map_nvml_error(e, "nvmlDeviceGetMigMode", &ctx)),
            };
            out.push(GpuInfo {
                index,
                uuid,
                name,
                pci_device_id: (pci.pci_device_id >> 16) as u16,
                pci_bus_id: pci.bus_id,
                memory_mib,
                mig,
            });
        }
        Ok(out)
    }

    fn mig_mode(&mut self, gpu: u32) -> Result<MigMode> {
        self.mode(gpu)
    }

    fn set_mig_mode(&mut self, gpu: u32, enabled: bool) -> Result<MigMode> {
        {
            let ctx = format!("GPU {gpu}");
            let d = self
                .nvml
                .device_by_index(gpu)
                .map_err(|e| map_nvml_error(e, "nvmlDeviceGetHandleByIndex_v2", &ctx))?;
            // The activation status (e.g. RESET_REQUIRED) shows in the pending mode read below.
            d.set_mig_mode(enabled)
                .map_err(|e| map_nvml_error(e, "nvmlDeviceSetMigMode", &ctx))?;
        }
        // Profiles are fixed only while the mode stays as is.
        self.gi_profiles.remove(&gpu);
        self.ci_profiles.retain(|(g, _), _| *g != gpu);
        self.mode(gpu)
    }

    fn gpu_instances(&mut self, gpu: u32) -> Result<Vec<GpuInstance>> {
        let dev = self.device(gpu)?;
        if !self.mode(gpu)?.current {
            return Err(BackendError::NotSupported(format!(
                "MIG mode is disabled on GPU {gpu} (nvmlDeviceGetMigMode)"
            )));
        }
        let profiles = self.gi_profile_table(gpu, dev)?;
        let mut migs = self.mig_devices(gpu, dev)?;
        let mut out = Vec::new();
        for p in &profiles {
            let handles = self.gi_handles(gpu, dev, p)?;
            if handles.is_empty() {
                continue;
            }
            let profile = NvmlGiProfile::from_value(p.index).ok_or_else(|| {
                BackendError::NotSupported(format!(
                    "GPU {gpu} has GPU instances of profile index {} (profile id {}), which \
                     carve does not know",
                    p.index, p.info.id
                ))
            })?;
            for gi in handles {
                let info = self.gi_info(gi, &format!("GPU {gpu}, profile id {}", p.info.id))?;
                let placement = |v: c_uint, what: &str| {
                    u8::try_from(v).map_err(|_| {
                        BackendError::Other(format!(
                            "nvmlGpuInstanceGetInfo (GPU {gpu}, GPU instance {}): placement \
                             {what} {v} out of range",
                            info.id
                        ))
                    })
                };
                let start = placement(info.placement.start, "start")?;
                let size = placement(info.placement.size, "size")?;
                let compute_instances =
                    self.compute_instances(gpu, p.index, gi, info.id, &mut migs)?;
                out.push(GpuInstance {
                    id: info.id,
                    profile,
                    profile_id: p.info.id,
                    start,
                    size,
                    memory_mib: p.info.memorySizeMB,
                    compute_instances,
                });
            }
        }
        out.sort_by_key(|g| (g.start, g.id));
        Ok(out)
    }

    fn create_gpu_instance(&mut self, gpu: u32, profile: NvmlGiProfile, start: u8) -> Result<u32> {
        let dev = self.device(gpu)?;
        let table = self.gi_profile_table(gpu, dev)?;
        let p = table
            .iter()
            .find(|p| p.index == profile.value())
            .ok_or_else(|| {
                BackendError::NotSupported(format!(
                    "nvmlDeviceGetGpuInstanceProfileInfo: GPU {gpu} has no {profile} profile"
                ))
            })?;
        let placements = self.placements(gpu, dev, p.info.id)?;
        let placement = placements
            .iter()
            .find(|pl| pl.start == start as c_uint)
            .copied()
            .ok_or_else(|| {
                let starts: Vec<String> =
                    placements.iter().map(|pl| pl.start.to_string()).collect();
                BackendError::InvalidArgument(format!(
                    "nvmlDeviceGetGpuInstancePossiblePlacements_v2: {profile} (profile id {}) \
                     cannot start at memory slot {start} on GPU {gpu}; allowed starts: {}",
                    p.info.id,
                    if starts.is_empty() {
                        "none".to_string()
                    } else {
                        starts.join(", ")
                    }
                ))
            })?;
        let (f, name) = func!(self.nvml.lib(), nvmlDeviceCreateGpuInstanceWithPlacement);
        let mut gi: nvmlGpuInstance_t = std::ptr::null_mut();
        // SAFETY: valid device handle, placement and out-pointer.
        let rc = unsafe { f(dev, p.info.id, &placement, &mut gi) };
        check(rc, name, || {
            format!(
                "GPU {gpu}, {profile} (profile id {}) at {}:{}",
                p.info.id, placement.start, placement.size
            )
        })?;
        let info = self.gi_info(gi, &format!("GPU {gpu}, new GPU instance"))?;
        Ok(info.id)
    }

    fn create_compute_instance(&mut self, gpu: u32, gi: u32, slices: u8) -> Result<u32> {
        let dev = self.device(gpu)?;
        let gih = self.gi_by_id(gpu, dev, gi)?;
        let info = self.gi_info(gih, &format!("GPU {gpu}, GPU instance {gi}"))?;
        let gi_profile_index = self
            .gi_profile_table(gpu, dev)?
            .iter()
            .find(|p| p.info.id == info.profileId)
            .map(|p| p.index);
        let table = self.ci_profile_table(gpu, gi_profile_index, gih, gi)?;
        let cp = table
            .iter()
            .find(|c| c.sliceCount == slices as c_uint)
            .copied()
            .ok_or_else(|| {
                BackendError::NotSupported(format!(
                    "nvmlGpuInstanceGetComputeInstanceProfileInfo: GPU instance {gi} on GPU \
                     {gpu} has no {slices}-slice compute instance profile"
                ))
            })?;
        let (f, name) = func!(self.nvml.lib(), nvmlGpuInstanceCreateComputeInstance);
        let mut ci: nvmlComputeInstance_t = std::ptr::null_mut();
        // SAFETY: valid GI handle and out-pointer.
        let rc = unsafe { f(gih, cp.id, &mut ci) };
        check(rc, name, || {
            format!(
                "GPU {gpu}, GPU instance {gi}, {slices}-slice CI profile id {}",
                cp.id
            )
        })?;
        let ci_info = self.ci_info(ci, &format!("GPU {gpu}, GPU instance {gi}, new CI"))?;
        Ok(ci_info.id)
    }

    fn destroy_compute_instance(&mut self, gpu: u32, gi: u32, ci: u32) -> Result<()> {
        let dev = self.device(gpu)?;
        let gih = self.gi_by_id(gpu, dev, gi)?;
        let lib = self.nvml.lib();
        let (by_id, by_id_name) = func!(lib, nvmlGpuInstanceGetComputeInstanceById);
        let (destroy, destroy_name) = func!(lib, nvmlComputeInstanceDestroy);
        let ctx = || format!("GPU {gpu}, GPU instance {gi}, compute instance {ci}");
        let mut cih: nvmlComputeInstance_t = std::ptr::null_mut();
        // SAFETY: valid GI handle and out-pointer.
        let rc = unsafe { by_id(gih, ci, &mut cih) };
        check(rc, by_id_name, ctx)?;
        // SAFETY: a CI handle the driver just gave.
        let rc = unsafe { destroy(cih) };
        check(rc, destroy_name, ctx)
    }

    fn destroy_gpu_instance(&mut self, gpu: u32, gi: u32) -> Result<()> {
        let dev = self.device(gpu)?;
        let gih = self.gi_by_id(gpu, dev, gi)?;
        let (f, name) = func!(self.nvml.lib(), nvmlGpuInstanceDestroy);
        // SAFETY: a GI handle the driver just gave.
        let rc = unsafe { f(gih) };
        check(rc, name, || format!("GPU {gpu}, GPU instance {gi}"))
    }

    /// `nvmlDeviceGetComputeRunningProcesses_v3` (else `_v2`) on the whole GPU: every process
    /// with a context on it, with its `usedGpuMemory` (summed over the MIG devices a process
    /// is listed on; `NVML_VALUE_NOT_AVAILABLE` is `None`).
    fn gpu_processes(&mut self, gpu: u32) -> Result<Vec<GpuProcess>> {
        let dev = self.device(gpu)?;
        Ok(merge_processes(
            &self.process_infos(dev, &format!("GPU {gpu}"))?,
        ))
    }
}

/// NVML's `usedGpuMemory` when the driver cannot say (`NVML_VALUE_NOT_AVAILABLE`, -1).
const MEMORY_NOT_AVAILABLE: u64 = u64::MAX;

/// One [`GpuProcess`] per pid, in the driver's order: a process listed once per MIG device it
/// runs on holds the sum; memory the driver does not report on any entry is `None`.
fn merge_processes(infos: &[nvmlProcessInfo_v2_t]) -> Vec<GpuProcess> {
    let mut out: Vec<GpuProcess> = Vec::new();
    for p in infos {
        let used = (p.usedGpuMemory != MEMORY_NOT_AVAILABLE).then_some(p.usedGpuMemory);
        match out.iter_mut().find(|o| o.pid == p.pid) {
            Some(o) => {
                o.used_memory_bytes = match (o.used_memory_bytes, used) {
                    (Some(a), Some(b)) => Some(a.saturating_add(b)),
                    (a, b) => a.or(b),
                }
            }
            None => out.push(GpuProcess {
                pid: p.pid,
                used_memory_bytes: used,
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_is_send() {
        fn send<T: Send>() {}
        send::<NvmlBackend>();
    }

    #[test]
    fn missing_library_is_unavailable() {
        std::env::set_var(ENV_LIB, "/nonexistent/libnvidia-ml.so.1");
        let r = NvmlBackend::open();
        std::env::remove_var(ENV_LIB);
        match r {
            Err(BackendError::Unavailable(m)) => {
                assert!(m.contains("/nonexistent/libnvidia-ml.so.1"), "{m}")
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }

    #[test]
    fn processes_merge_per_pid_and_unknown_memory_is_none() {
        let info = |pid, used| nvmlProcessInfo_v2_t {
            pid,
            usedGpuMemory: used,
            gpuInstanceId: 0,
            computeInstanceId: 0,
        };
        let got = merge_processes(&[
            info(7, 100),
            info(9, MEMORY_NOT_AVAILABLE),
            info(7, 50),
            info(9, MEMORY_NOT_AVAILABLE),
            info(11, MEMORY_NOT_AVAILABLE),
            info(11, 5),
        ]);
        let want = |pid, used| GpuProcess {
            pid,
            used_memory_bytes: used,
        };
        assert_eq!(got, [want(7, Some(150)), want(9, None), want(11, Some(5))]);
    }

    #[test]
    fn return_codes_map_to_backend_errors() {
        let e = map_return_code(
            nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_RESOURCES,
            "nvmlDeviceCreateGpuInstanceWithPlacement",
            "GPU 0",
        );
        assert!(matches!(e, BackendError::InsufficientResources(_)));
        assert!(e
            .to_string()
            .contains("nvmlDeviceCreateGpuInstanceWithPlacement (GPU 0)"));
        for (rc, kind) in [
            (nvmlReturn_enum_NVML_ERROR_IN_USE, "in-use"),
            (nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED, "not-supported"),
            (nvmlReturn_enum_NVML_ERROR_NO_PERMISSION, "no-permission"),
            (nvmlReturn_enum_NVML_ERROR_NOT_FOUND, "not-found"),
            (
                nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT,
                "invalid-argument",
            ),
            (nvmlReturn_enum_NVML_ERROR_RESET_REQUIRED, "reset-required"),
            (nvmlReturn_enum_NVML_ERROR_UNINITIALIZED, "unavailable"),
            (nvmlReturn_enum_NVML_ERROR_LIBRARY_NOT_FOUND, "unavailable"),
            (nvmlReturn_enum_NVML_ERROR_UNKNOWN, "unknown"),
        ] {
            assert_eq!(map_return_code(rc, "f", "").kind(), kind, "{rc}");
        }
        assert_eq!(
            map_return_code(999, "nvmlGpuInstanceDestroy", "").to_string(),
            "NVML error 999 in nvmlGpuInstanceDestroy"
        );
    }
}
