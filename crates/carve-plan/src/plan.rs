//! The plan: what `carve plan` writes to `plan.json` and what `carve apply` reads back.
//!
//! Everything a renderer (report, SVG, mig-parted, Kubernetes, vGPU sheet, scheduler settings)
//! needs is in here, so that renderers take a [`Plan`] and the catalog and nothing else.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The plan format version written to `plan.json`.
pub const PLAN_VERSION: u32 = 1;

/// The resource a time-sliced tenant's pods request on a Kubernetes node, served by the carve
/// agent: `carve.dev/<tenant>` (the name made a valid resource name, at most 63 characters).
pub fn tenant_resource(tenant: &str) -> String {
    const PREFIX: &str = "carve.dev/";
    let mut name: String = tenant
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    name.truncate(63 - PREFIX.len());
    let name = name.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if name.is_empty() {
        return format!("{PREFIX}tenant");
    }
    format!("{PREFIX}{name}")
}

/// How a tenant shares GPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// A MIG slice of its own (Kubernetes or bare metal).
    Mig,
    /// A MIG-backed vGPU (a VM on a hypervisor node gets one MIG slice).
    VgpuMig,
    /// A time-sliced vGPU under the hypervisor's scheduler.
    VgpuTimeSliced,
    /// Time-sliced on a whole GPU (Kubernetes / bare metal), enforced by `carve sched`.
    TimeSliced,
    /// A whole GPU per replica.
    Dedicated,
}

impl Mode {
    pub const ALL: [Mode; 5] = [
        Mode::Mig,
        Mode::VgpuMig,
        Mode::VgpuTimeSliced,
        Mode::TimeSliced,
        Mode::Dedicated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Mig => "mig",
            Mode::VgpuMig => "vgpu-mig",
            Mode::VgpuTimeSliced => "vgpu-time-sliced",
            Mode::TimeSliced => "time-sliced",
            Mode::Dedicated => "dedicated",
        }
    }

    /// Runs in a VM on a hypervisor node.
    pub fn is_vgpu(self) -> bool {
        matches!(self, Mode::VgpuMig | Mode::VgpuTimeSliced)
    }

    /// Gets a MIG slice.
    pub fn is_mig(self) -> bool {
        matches!(self, Mode::Mig | Mode::VgpuMig)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a GPU is used for in the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GpuMode {
    /// MIG enabled, instances listed.
    Mig,
    /// MIG enabled, each instance a MIG-backed vGPU.
    VgpuMig,
    /// MIG disabled, time-sliced vGPUs.
    VgpuTimeSliced,
    /// MIG disabled, tenants time-share the GPU under `carve sched`.
    TimeSliced,
    /// MIG disabled, one tenant replica owns it.
    Dedicated,
    /// Not used by the plan; `carve apply` leaves it as it is.
    Unused,
}

impl GpuMode {
    pub fn as_str(self) -> &'static str {
        match self {
            GpuMode::Mig => "mig",
            GpuMode::VgpuMig => "vgpu-mig",
            GpuMode::VgpuTimeSliced => "vgpu-time-sliced",
            GpuMode::TimeSliced => "time-sliced",
            GpuMode::Dedicated => "dedicated",
            GpuMode::Unused => "unused",
        }
    }

    /// MIG mode the GPU must be in, when the plan cares.
    pub fn mig_enabled(self) -> Option<bool> {
        match self {
            GpuMode::Mig | GpuMode::VgpuMig => Some(true),
            GpuMode::VgpuTimeSliced | GpuMode::TimeSliced | GpuMode::Dedicated => Some(false),
            GpuMode::Unused => None,
        }
    }
}

impl fmt::Display for GpuMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A node's platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Platform {
    Kubernetes,
    Vsphere,
    BareMetal,
}

impl Platform {
    pub const ALL: [Platform; 3] = [Platform::Kubernetes, Platform::Vsphere, Platform::BareMetal];

    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Kubernetes => "kubernetes",
            Platform::Vsphere => "vsphere",
            Platform::BareMetal => "bare-metal",
        }
    }

    /// Runs VMs with vGPU (only vSphere among the supported platforms).
    pub fn is_hypervisor(self) -> bool {
        matches!(self, Platform::Vsphere)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Time-slice scheduling policy: the policy core's own type (`best-effort`, `equal-share`,
/// `fixed-share`), so that a plan, a scheduler configuration and the simulator cannot disagree.
pub use carve_timeslice::Policy;

/// One MIG instance of the plan, at an explicit placement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedInstance {
    /// GPU-instance profile name (`3g.40gb`).
    pub profile: String,
    /// Placement start (memory slot) and size.
    pub start: u8,
    pub size: u8,
    pub tenant: String,
    pub replica: u32,
    /// For `vgpu-mig` GPUs: the MIG-backed vGPU type (`H100-3-40C`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vgpu_type: Option<String>,
}

/// One tenant replica's share of a time-sliced (or dedicated) GPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedShare {
    pub tenant: String,
    pub replica: u32,
    /// GPU-time share (0..=1]. For equal share and best effort it is the nominal 1/N.
    pub share: f64,
    /// Memory limit for the replica.
    pub memory_mib: u64,
    /// For `vgpu-time-sliced` GPUs: the vGPU type (`H100-10C`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vgpu_type: Option<String>,
}

/// Time-slice settings of a GPU (time-sliced and vGPU time-sliced GPUs). What `carve sched`, the
/// agent and the simulator run is made from these by [`crate::schedule`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedScheduler {
    pub policy: Policy,
    /// Time slice in milliseconds (1..=30).
    pub slice_ms: u32,
    /// Whether time an idle tenant is owed goes to tenants with work (equal and fixed share). The
    /// planner decides it ([`crate::schedule::WORK_CONSERVING`]); plans written before it was
    /// recorded read as `false`, what they ran under.
    #[serde(default)]
    pub work_conserving: bool,
    /// Why this policy and slice.
    pub reason: String,
    /// For hypervisor nodes: the `RmPVMRL` registry value (`0x00020011`), in a documented form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rmpvmrl: Option<String>,
}

/// One GPU of the fleet in the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedGpu {
    pub node: String,
    /// Index of the GPU on its node (the order of the tenancy file's `gpus:` list).
    pub index: u32,
    /// Catalog key (`H100-80GB`), or the name given for a GPU without MIG.
    pub model: String,
    /// Memory of the GPU in MiB.
    pub memory_mib: u64,
    /// Whether the model supports MIG.
    pub mig_capable: bool,
    pub mode: GpuMode,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<PlannedInstance>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shares: Vec<PlannedShare>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<PlannedScheduler>,
}

impl PlannedGpu {
    pub fn is_used(&self) -> bool {
        self.mode != GpuMode::Unused
    }
}

/// A mode the planner did not choose for a tenant, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    pub mode: Mode,
    pub why: String,
}

/// Where one replica of a tenant went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub replica: u32,
    pub node: String,
    pub gpu: u32,
    /// MIG profile, for MIG modes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Placement start, for MIG modes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<u8>,
}

/// A tenant's decision and where its replicas are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedTenant {
    pub name: String,
    /// The workload named in the tenancy file (`inference`, `dev`, ...).
    pub workload: String,
    pub mode: Mode,
    /// The rule of the decision table that chose the mode (`slo-or-hard-isolation`, ...).
    pub rule: String,
    /// Why this mode, in a sentence.
    pub reason: String,
    /// The other modes and why not.
    pub rejected: Vec<Rejected>,
    pub replicas: u32,
    /// Memory per replica in MiB.
    pub memory_mib: u64,
    /// GPU-time share asked for (time-sliced modes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<f64>,
    /// MIG profile per GPU model the tenant may land on (`{"H100-80GB": "1g.10gb"}`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub profiles: std::collections::BTreeMap<String, String>,
    /// Spread replicas over different GPUs.
    pub spread: bool,
    pub placements: Vec<Placement>,
    /// Replicas that found no room (only in a partial plan).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unplaced: u32,
    /// The Kubernetes resource its pods request (`nvidia.com/mig-1g.10gb`), for Kubernetes nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// vGPU licence edition needed (hypervisor modes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub licence: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A node of the fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedNode {
    pub name: String,
    pub platform: Platform,
    /// vGPU licence edition available on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub licence: Option<String>,
}

/// What would make an infeasible plan fit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shortfall {
    /// `more GPUs of this model` on a node of this kind.
    pub model: String,
    pub more_gpus: u32,
    /// `kubernetes/bare-metal` or `vsphere`.
    pub pool: String,
}

/// How the GPU count compares with what is possible.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackingStats {
    /// GPUs per part of the plan.
    pub dedicated_gpus: u32,
    pub time_sliced_gpus: u32,
    pub mig_gpus: u32,
    /// The MIG packing is a proven optimum (integer programme solved to optimality).
    pub mig_optimal: bool,
    /// Lower bound of the MIG part (LP relaxation, or the optimum when proven).
    pub mig_lower_bound: u32,
    /// Lower bound of the time-sliced part (memory and share totals).
    pub time_sliced_lower_bound: u32,
    /// Milliseconds spent planning.
    pub plan_ms: f64,
}

/// What [`Plan::sniff`] found.
#[derive(Debug)]
pub enum Sniff {
    /// Not JSON: it does not start with `{`, or it does but does not parse (the error, located
    /// `line:col: ...`, for callers whose other format cannot start with `{`).
    NotJson(Option<String>),
    /// JSON, but not a plan.
    OtherJson,
    /// A plan, or why it is not a valid one (located `line:col: ...` where there is a position).
    Plan(Result<Plan, String>),
}

/// The whole plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub version: u32,
    pub nodes: Vec<PlannedNode>,
    /// Every GPU of the fleet, used or not, in fleet order.
    pub gpus: Vec<PlannedGpu>,
    pub tenants: Vec<PlannedTenant>,
    pub gpus_used: u32,
    /// No plan can use fewer GPUs than this.
    pub lower_bound_gpus: u32,
    /// `gpus_used == lower_bound_gpus`, i.e. the plan is a proven optimum.
    pub optimal: bool,
    /// Everything found a place.
    pub complete: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shortfall: Vec<Shortfall>,
    pub stats: PackingStats,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl Plan {
    pub fn tenant(&self, name: &str) -> Option<&PlannedTenant> {
        self.tenants.iter().find(|t| t.name == name)
    }

    pub fn node(&self, name: &str) -> Option<&PlannedNode> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The GPUs of one node, in index order.
    pub fn node_gpus<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a PlannedGpu> + 'a {
        self.gpus.iter().filter(move |g| g.node == node)
    }

    /// Reads a `plan.json`.
    pub fn from_json(text: &str) -> Result<Plan, String> {
        let plan: Plan = serde_json::from_str(text)
            .map_err(|e| format!("{}:{}: not a carve plan: {e}", e.line(), e.column()))?;
        Plan::check_version(plan)
    }

    /// Tells whether `text` is a carve plan, reading it once: a plan is a JSON object with
    /// `version` and `gpus`, decoded from the JSON value already parsed (only an invalid plan is
    /// parsed again, for its error's line and column). Commands that take a plan or another
    /// format (`carve apply`, `carve sched serve`) decide with this, and read the other format
    /// only when it is not a plan.
    pub fn sniff(text: &str) -> Sniff {
        if !text.trim_start().starts_with('{') {
            return Sniff::NotJson(None);
        }
        let value = match serde_json::from_str::<serde_json::Value>(text) {
            Ok(v) if v.get("version").is_some() && v.get("gpus").is_some() => v,
            Ok(_) => return Sniff::OtherJson,
            Err(e) => {
                let msg = e.to_string();
                let suffix = format!(" at line {} column {}", e.line(), e.column());
                return Sniff::NotJson(Some(format!(
                    "{}:{}: not valid JSON: {}",
                    e.line(),
                    e.column(),
                    msg.strip_suffix(&suffix).unwrap_or(&msg)
                )));
            }
        };
        Sniff::Plan(match serde_json::from_value::<Plan>(value) {
            Ok(plan) => Plan::check_version(plan),
            Err(_) => Plan::from_json(text),
        })
    }

    /// A decoded plan, if this carve reads its version.
    pub fn check_version(plan: Plan) -> Result<Plan, String> {
        if plan.version != PLAN_VERSION {
            return Err(format!(
                "plan version {} is not supported (this carve reads version {PLAN_VERSION})",
                plan.version
            ));
        }
        Ok(plan)
    }
}
