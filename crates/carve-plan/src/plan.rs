//! The plan: what `carve plan` writes to `plan.json` and what `carve apply` reads back.
//!
//! Everything a renderer (report, SVG, mig-parted, Kubernetes, vGPU sheet, scheduler settings)
//! needs is in here, so that renderers take a [`Plan`] and the catalog and nothing else.
//!
//! `plan.json` is an API boundary: `carve apply` and the node agent read it on other machines,
//! perhaps with another carve version. Its format changes only with a new [`PLAN_VERSION`], and
//! [`Plan::from_json`] keeps reading the older versions:
//!
//! - version 2 (written now): each replica's place is said once, by the GPU that holds it
//!   (`gpus[].instances[].tenant` / `gpus[].shares[].tenant`); [`Plan::placements`] lists a
//!   tenant's. `stats` carries the solver's branch-and-bound nodes, no time.
//!   Two optional fields came later within version 2, for partial plans only and read by
//!   nobody but people: `shortfall[].with` and `tenants[].unplaceable` (every reader of
//!   `plan.json` ignores fields it does not know, and an older file reads as having neither).
//! - version 1: also listed each tenant's `placements`, a copy of what the GPUs say, and
//!   `stats.plan_ms`. Read, the copy is checked against the GPUs (a file whose copy disagrees
//!   was edited by hand, and older carve versions would act on the copy: it is refused) and
//!   dropped, `plan_ms` is ignored, and the plan becomes a version-2 plan in memory.

use carve_model::SourcePos;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;

/// The plan format version written to `plan.json`.
pub const PLAN_VERSION: u32 = 2;

/// The oldest plan format [`Plan::from_json`] reads.
pub const OLDEST_PLAN_VERSION: u32 = 1;

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

    /// The pool of GPUs the mode's tenants are planned on, as [`Shortfall::pool`] names it.
    pub fn pool(self) -> &'static str {
        pool_name(self.is_vgpu())
    }
}

/// The name of a pool of GPUs: the hypervisor nodes' (`vsphere`) or the others'
/// (`kubernetes/bare-metal`). The planner fills each pool on its own.
pub fn pool_name(hypervisor: bool) -> &'static str {
    if hypervisor {
        "vsphere"
    } else {
        "kubernetes/bare-metal"
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

/// Where one replica of a tenant went (derived from the GPUs: [`Plan::placements`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
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

/// A tenant's decision. Where its replicas are is said by the GPUs: [`Plan::placements`].
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
    /// Replicas that found no room (only in a partial plan).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unplaced: u32,
    /// Why no GPU of the fleet's models can hold even one of its replicas, however many were
    /// added (only in a partial plan): the [`Plan::shortfall`] advice leaves such a tenant out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unplaceable: Option<String>,
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

/// One way to make room in a partial plan, found by planning again with more GPUs: with
/// `more_gpus` more GPUs of `model` (and those of `with`) on a new node of `pool`, every tenant
/// of that pool has room, except the [`PlannedTenant::unplaceable`] ones. Entries of one pool are
/// alternatives, fewest GPUs first; each pool with a tenant waiting needs one of its entries. A
/// pool with tenants waiting and no entry has no advice: not even
/// [`crate::planner::ADVICE_MAX_GPUS`] more GPUs of each of the fleet's models would do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shortfall {
    /// Catalog key, or the name of a GPU without MIG as the fleet gives it.
    pub model: String,
    pub more_gpus: u32,
    /// `kubernetes/bare-metal` or `vsphere` ([`pool_name`]).
    pub pool: String,
    /// More GPUs of other models needed together with these, when no one model would do.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub with: Vec<MoreGpus>,
}

/// More GPUs of one model, part of a [`Shortfall`] that mixes models.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoreGpus {
    pub model: String,
    pub more_gpus: u32,
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
    /// Branch-and-bound nodes the integer programmes took, all together: the planner's work, the
    /// same on every machine (0 in version-1 plans, which gave milliseconds instead).
    #[serde(default)]
    pub solver_nodes: u64,
}

/// What [`Plan::sniff`] found.
#[derive(Debug)]
pub enum Sniff {
    /// Not JSON: it does not start with `{`, or it does but does not parse (the error, located,
    /// for callers whose other format cannot start with `{`).
    NotJson(Option<PlanError>),
    /// JSON, but not a plan.
    OtherJson,
    /// A plan, or why it is not a valid one.
    Plan(Result<Plan, PlanError>),
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

    /// Where each replica of a tenant is, by replica, as the GPUs say.
    pub fn placements(&self, tenant: &str) -> Vec<Placement> {
        let mut out = Vec::new();
        for g in &self.gpus {
            push_placements(g, |t| t == tenant, |_, p| out.push(p));
        }
        out.sort_by_key(|p| p.replica);
        out
    }

    /// [`Plan::placements`] of every tenant with a replica on some GPU, in one pass over the GPUs.
    pub fn placements_by_tenant(&self) -> HashMap<&str, Vec<Placement>> {
        let mut out: HashMap<&str, Vec<Placement>> = HashMap::new();
        for g in &self.gpus {
            push_placements(g, |_| true, |t, p| out.entry(t).or_default().push(p));
        }
        for v in out.values_mut() {
            v.sort_by_key(|p| p.replica);
        }
        out
    }

    /// Reads a `plan.json` of this version or an older one (see the module documentation).
    pub fn from_json(text: &str) -> Result<Plan, PlanError> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(format_error)?;
        Plan::from_value(value, text)
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
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(v) if v.get("version").is_some() && v.get("gpus").is_some() => {
                Sniff::Plan(Plan::from_value(v, text))
            }
            Ok(_) => Sniff::OtherJson,
            Err(e) => Sniff::NotJson(Some(format_error(e))),
        }
    }

    /// A plan from the JSON value of `text`. A value that does not decode is decoded again from
    /// the text, for the error's line and column.
    fn from_value(value: serde_json::Value, text: &str) -> Result<Plan, PlanError> {
        fn decode<T: serde::de::DeserializeOwned>(
            value: serde_json::Value,
            text: &str,
        ) -> Result<T, PlanError> {
            serde_json::from_value(value).map_err(|e| match serde_json::from_str::<T>(text) {
                Err(located) => format_error(located),
                Ok(_) => PlanError::Format {
                    pos: SourcePos::new(1, 1),
                    message: e.to_string(),
                },
            })
        }
        #[derive(Deserialize)]
        struct Head {
            version: u64,
        }
        let head: Head = decode(value.clone(), text)?;
        if !(OLDEST_PLAN_VERSION as u64..=PLAN_VERSION as u64).contains(&head.version) {
            return Err(PlanError::Version {
                found: head.version,
            });
        }
        if head.version != 1 {
            return decode(value, text);
        }
        #[derive(Deserialize)]
        struct V1 {
            tenants: Vec<V1Tenant>,
        }
        #[derive(Deserialize)]
        struct V1Tenant {
            name: String,
            #[serde(default)]
            placements: Vec<Placement>,
        }
        let mut plan: Plan = decode(value.clone(), text)?;
        let v1: V1 = decode(value, text)?;
        let mut by_tenant = plan.placements_by_tenant();
        for t in v1.tenants {
            let mut said = t.placements;
            said.sort();
            let mut held = by_tenant.remove(t.name.as_str()).unwrap_or_default();
            held.sort();
            if said != held {
                return Err(PlanError::Placements { tenant: t.name });
            }
        }
        plan.version = PLAN_VERSION;
        Ok(plan)
    }
}

/// Calls `push` with each instance and share of `g` whose tenant passes `wanted`.
fn push_placements<'a>(
    g: &'a PlannedGpu,
    wanted: impl Fn(&str) -> bool,
    mut push: impl FnMut(&'a str, Placement),
) {
    for i in g.instances.iter().filter(|i| wanted(&i.tenant)) {
        push(
            &i.tenant,
            Placement {
                replica: i.replica,
                node: g.node.clone(),
                gpu: g.index,
                profile: Some(i.profile.clone()),
                start: Some(i.start),
            },
        );
    }
    for s in g.shares.iter().filter(|s| wanted(&s.tenant)) {
        push(
            &s.tenant,
            Placement {
                replica: s.replica,
                node: g.node.clone(),
                gpu: g.index,
                profile: None,
                start: None,
            },
        );
    }
}

fn format_error(e: serde_json::Error) -> PlanError {
    let msg = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    PlanError::Format {
        pos: SourcePos::new(e.line(), e.column()),
        message: msg.strip_suffix(&suffix).unwrap_or(&msg).to_string(),
    }
}

/// A `plan.json` that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// Not JSON, or JSON not in the plan format.
    #[error("{pos}: not a carve plan: {message}")]
    Format { pos: SourcePos, message: String },
    #[error("plan version {found} is not supported (this carve reads versions {OLDEST_PLAN_VERSION} to {PLAN_VERSION})")]
    Version { found: u64 },
    /// A version-1 plan whose `placements` copy of a tenant disagrees with its GPUs.
    #[error("tenant '{tenant}': its placements disagree with the GPUs' instances and shares (a version-1 plan edited by hand?)")]
    Placements { tenant: String },
}

impl PlanError {
    /// Where in the file, when the error has a place.
    pub fn pos(&self) -> Option<SourcePos> {
        match self {
            PlanError::Format { pos, .. } => Some(*pos),
            _ => None,
        }
    }
}
