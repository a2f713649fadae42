//! The GPU backend interface, with NVML's semantics: GPUs, MIG mode, GPU instances (GIs) at
//! explicit placements, compute instances (CIs), and the processes that use them. Errors mirror
//! NVML's return codes.
//!
//! Two implementations exist: the simulated node (`carve-simnode`, the default where no GPU is) and
//! NVML (`carve-nvml`). Both describe profiles by their NVML constant; the catalog names them.
//! [`engine`] is the pure simulated-GPU state machine shared by the simulated node and by the
//! stand-in `libnvidia-ml.so` used to test the NVML backend without a GPU.

pub mod engine;

/// The GPUs a simulated node (the simulated backend, the stand-in NVML) starts with when nobody
/// says otherwise.
pub const DEFAULT_SIM_NODE: &str = "2xH100-80GB";

/// NVML's "no GPU instance" / "no compute instance" id (`0xFFFFFFFF`) in `nvmlEventData_t`:
/// the event is about a whole GPU, not one MIG device. nvml-wrapper-sys does not name it.
pub const NVML_NO_INSTANCE: u32 = 0xFFFF_FFFF;

use carve_model::NvmlGiProfile;
use serde::{Deserialize, Serialize};

/// NVML-style errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", content = "detail", rename_all = "kebab-case")]
pub enum BackendError {
    /// NVML_ERROR_INSUFFICIENT_RESOURCES
    #[error("insufficient resources: {0}")]
    InsufficientResources(String),
    /// NVML_ERROR_IN_USE
    #[error("in use: {0}")]
    InUse(String),
    /// NVML_ERROR_NOT_SUPPORTED
    #[error("not supported: {0}")]
    NotSupported(String),
    /// NVML_ERROR_NO_PERMISSION
    #[error("no permission: {0}")]
    NoPermission(String),
    /// NVML_ERROR_NOT_FOUND
    #[error("not found: {0}")]
    NotFound(String),
    /// NVML_ERROR_INVALID_ARGUMENT
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// NVML_ERROR_RESET_REQUIRED and other states that need an operator.
    #[error("reset required: {0}")]
    ResetRequired(String),
    /// The library or driver is missing or failed to initialise.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Anything else (NVML_ERROR_UNKNOWN and friends).
    #[error("{0}")]
    Other(String),
}

impl BackendError {
    /// The kebab-case name used in fault injection (`in-use`, `insufficient-resources`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            BackendError::InsufficientResources(_) => "insufficient-resources",
            BackendError::InUse(_) => "in-use",
            BackendError::NotSupported(_) => "not-supported",
            BackendError::NoPermission(_) => "no-permission",
            BackendError::NotFound(_) => "not-found",
            BackendError::InvalidArgument(_) => "invalid-argument",
            BackendError::ResetRequired(_) => "reset-required",
            BackendError::Unavailable(_) => "unavailable",
            BackendError::Other(_) => "unknown",
        }
    }

    /// Builds an error from its kind name (for fault injection).
    pub fn from_kind(kind: &str, detail: String) -> Option<BackendError> {
        Some(match kind {
            "insufficient-resources" => BackendError::InsufficientResources(detail),
            "in-use" => BackendError::InUse(detail),
            "not-supported" => BackendError::NotSupported(detail),
            "no-permission" => BackendError::NoPermission(detail),
            "not-found" => BackendError::NotFound(detail),
            "invalid-argument" => BackendError::InvalidArgument(detail),
            "reset-required" => BackendError::ResetRequired(detail),
            "unavailable" => BackendError::Unavailable(detail),
            "unknown" => BackendError::Other(detail),
            _ => return None,
        })
    }

    pub const KINDS: [&'static str; 9] = [
        "insufficient-resources",
        "in-use",
        "not-supported",
        "no-permission",
        "not-found",
        "invalid-argument",
        "reset-required",
        "unavailable",
        "unknown",
    ];
}

pub type Result<T> = std::result::Result<T, BackendError>;

/// MIG mode now and after the next reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigMode {
    pub current: bool,
    pub pending: bool,
}

/// One physical GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInfo {
    pub index: u32,
    /// `GPU-xxxxxxxx-...`
    pub uuid: String,
    /// The product name the driver reports (`NVIDIA H100 80GB HBM3`).
    pub name: String,
    /// PCI device id (`0x2330`).
    pub pci_device_id: u16,
    /// PCI bus id (`00000000:17:00.0`).
    pub pci_bus_id: String,
    pub memory_mib: u64,
    /// MIG mode, or `None` for a GPU without MIG.
    pub mig: Option<MigMode>,
}

/// A process using a GPU or MIG device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    pub pid: u32,
    pub name: String,
}

/// A compute process on a whole GPU as the driver reports it
/// (`nvmlDeviceGetComputeRunningProcesses`): every process with a CUDA context there, however it
/// got one (with or without carve's shim).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuProcess {
    pub pid: u32,
    /// Device memory it holds (its context included), or `None` when the driver does not say
    /// (`NVML_VALUE_NOT_AVAILABLE`).
    pub used_memory_bytes: Option<u64>,
}

/// A compute instance: the MIG device CUDA sees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComputeInstance {
    pub id: u32,
    /// Compute slices of this CI.
    pub slices: u8,
    /// `MIG-xxxxxxxx-...`, unique for the CI's lifetime.
    pub uuid: String,
    pub processes: Vec<Process>,
}

/// A GPU instance at its placement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInstance {
    /// The driver's GI id.
    pub id: u32,
    pub profile: NvmlGiProfile,
    /// The device-specific profile id (`info.id`).
    pub profile_id: u32,
    pub start: u8,
    pub size: u8,
    pub memory_mib: u64,
    pub compute_instances: Vec<ComputeInstance>,
}

impl GpuInstance {
    pub fn in_use(&self) -> bool {
        self.compute_instances
            .iter()
            .any(|c| !c.processes.is_empty())
    }
}

/// The backend interface. Every mutation is one NVML call's worth of change.
pub trait Backend {
    /// `sim` or `nvml`.
    fn kind(&self) -> &'static str;
    fn gpus(&mut self) -> Result<Vec<GpuInfo>>;
    fn mig_mode(&mut self, gpu: u32) -> Result<MigMode>;
    /// Requests a MIG mode. Returns the mode afterwards: on Ampere the change stays pending until
    /// a GPU reset.
    fn set_mig_mode(&mut self, gpu: u32, enabled: bool) -> Result<MigMode>;
    /// Every GI with its CIs and their processes.
    fn gpu_instances(&mut self, gpu: u32) -> Result<Vec<GpuInstance>>;
    /// Creates a GI of `profile` at memory slot `start`; returns its GI id.
    fn create_gpu_instance(&mut self, gpu: u32, profile: NvmlGiProfile, start: u8) -> Result<u32>;
    /// Creates a CI of `slices` compute slices in GI `gi`; returns its CI id.
    fn create_compute_instance(&mut self, gpu: u32, gi: u32, slices: u8) -> Result<u32>;
    fn destroy_compute_instance(&mut self, gpu: u32, gi: u32, ci: u32) -> Result<()>;
    fn destroy_gpu_instance(&mut self, gpu: u32, gi: u32) -> Result<()>;
    /// Every compute process on GPU `gpu` (all of its MIG devices' too) with the memory it
    /// holds. Backends without a per-process view (the simulated node) say
    /// [`BackendError::NotSupported`].
    fn gpu_processes(&mut self, gpu: u32) -> Result<Vec<GpuProcess>> {
        Err(BackendError::NotSupported(format!(
            "the {} backend has no per-process view of GPU {gpu}",
            self.kind()
        )))
    }
}
