//! Reconciliation with the fewest changes.
//!
//! 1. [`observe`] reads the GPUs through a backend.
//! 2. [`targets_from_migparted`] turns a mig-parted config into a *placed* target per GPU, keeping
//!    as many existing GPU instances as possible where they are (busy ones first), and placing the
//!    rest around them with the exact `fit` of `carve-model`. [`targets_from_plan`] does the
//!    same for a carve plan (`plan.json`), whose placements are already explicit.
//! 3. [`diff`] lists the operations from the observed state to the targets: an instance present in
//!    both (same profile, same placement, same compute-instance split) is kept untouched.
//! 4. [`execute`] records the targets and operations in the journal, then runs the operations,
//!    recording progress after each. [`recover`] finds an apply that never finished (a crash) and
//!    converges to its targets; it is idempotent, since it recomputes the operations from what
//!    the GPUs really hold.
//!
//! [`reconcile`] is the whole pipeline for a [`Desired`] state (a mig-parted config, a plan's
//! node, the recorded state); every command and the agent go through it ([`compare`] for
//! read-only checks). The plan the node follows is recorded with the desired state and read back
//! by [`recorded_plan`].

mod desired;
pub mod export;
mod from_plan;
mod observed;
mod reconcile;

pub use desired::{recorded_plan, Desired, NodePlan};
pub use from_plan::{hostname, plan_node, plan_node_names, targets_from_plan, up_node};
pub use observed::ObservedInstance;
pub use reconcile::{compare, reconcile, Event, Options, Reconciled};

use carve_backend::{Backend, BackendError, GpuInfo, GpuInstance, Process};
use carve_migparted::{Devices, NamedConfig};
use carve_model::geometry::{self, Instance};
use carve_model::{Catalog, GpuModel, NvmlGiProfile};
use carve_state::Store;
use serde::{Deserialize, Serialize};
use std::fmt;

/// One GPU as observed.
#[derive(Debug, Clone, Serialize)]
pub struct Observed {
    pub info: GpuInfo,
    /// Catalog key, when the model is known.
    pub model: Option<String>,
    /// GPU instances, empty when MIG is off.
    pub instances: Vec<ObservedInstance>,
}

impl Observed {
    /// The GPU instances as the backend gave them.
    pub fn gpu_instances(&self) -> Vec<GpuInstance> {
        self.instances.iter().map(|i| i.gi.clone()).collect()
    }
}

/// A GPU instance as wanted: profile, placement, and its compute instances (slices each).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetInstance {
    pub profile: String,
    pub nvml: NvmlGiProfile,
    pub start: u8,
    pub size: u8,
    pub compute_instances: Vec<u8>,
}

/// The desired state of one GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuTarget {
    pub gpu_uuid: String,
    pub gpu_index: u32,
    pub model: String,
    pub mig_enabled: bool,
    pub instances: Vec<TargetInstance>,
}

/// One backend call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Op {
    SetMigMode {
        gpu: u32,
        enabled: bool,
    },
    DestroyComputeInstance {
        gpu: u32,
        gi: u32,
        ci: u32,
        uuid: String,
        profile: String,
        start: u8,
    },
    DestroyGpuInstance {
        gpu: u32,
        gi: u32,
        profile: String,
        start: u8,
    },
    CreateGpuInstance {
        gpu: u32,
        profile: String,
        nvml: NvmlGiProfile,
        start: u8,
    },
    CreateComputeInstance {
        gpu: u32,
        start: u8,
        slices: u8,
        profile: String,
    },
}

impl Op {
    pub fn gpu(&self) -> u32 {
        match self {
            Op::SetMigMode { gpu, .. }
            | Op::DestroyComputeInstance { gpu, .. }
            | Op::DestroyGpuInstance { gpu, .. }
            | Op::CreateGpuInstance { gpu, .. }
            | Op::CreateComputeInstance { gpu, .. } => *gpu,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::SetMigMode { gpu, enabled } => {
                write!(
                    f,
                    "GPU {gpu}: {} MIG mode",
                    if *enabled { "enable" } else { "disable" }
                )
            }
            Op::DestroyComputeInstance {
                gpu,
                gi,
                ci,
                uuid,
                profile,
                start,
            } => write!(
                f,
                "GPU {gpu}: destroy compute instance {ci} of {profile} at {start} (GI {gi}, {uuid})"
            ),
            Op::DestroyGpuInstance {
                gpu,
                gi,
                profile,
                start,
            } => {
                write!(
                    f,
                    "GPU {gpu}: destroy GPU instance {profile} at {start} (GI {gi})"
                )
            }
            Op::CreateGpuInstance {
                gpu,
                profile,
                start,
                ..
            } => {
                write!(f, "GPU {gpu}: create GPU instance {profile} at {start}")
            }
            Op::CreateComputeInstance {
                gpu,
                start,
                slices,
                profile,
            } => write!(
                f,
                "GPU {gpu}: create {slices}-slice compute instance in {profile} at {start}"
            ),
        }
    }
}

/// An instance the changes would destroy although processes use it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Blocker {
    pub gpu: u32,
    pub profile: String,
    pub start: u8,
    pub uuid: String,
    pub processes: Vec<Process>,
}

impl fmt::Display for Blocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let procs: Vec<String> = self
            .processes
            .iter()
            .map(|p| format!("{} (pid {})", p.name, p.pid))
            .collect();
        write!(
            f,
            "GPU {}: {} at {} ({}) is in use by {}",
            self.gpu,
            self.profile,
            self.start,
            self.uuid,
            procs.join(", ")
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The input cannot be applied to these GPUs (exit 2): nothing was changed.
    #[error("{0}")]
    Input(String),
    /// The desired layout cannot be realised (exit 1): nothing was changed.
    #[error("{0}")]
    Infeasible(String),
    /// Instances in use would be destroyed: nothing was changed.
    #[error("refusing to destroy instances in use (use --force to try anyway):\n  {}", .0.iter().map(|b| b.to_string()).collect::<Vec<_>>().join("\n  "))]
    InUse(Vec<Blocker>),
    /// A backend call failed part-way; the journal says how far it got.
    #[error("{op}: {error}")]
    Backend { op: String, error: BackendError },
    #[error("{0}")]
    State(#[from] carve_state::StateError),
}

/// What kind of failure an [`ApplyError`] is, for exit codes and HTTP statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The desired state does not fit these GPUs (wrong node, models, layout, syntax): nothing
    /// was changed.
    Input,
    /// It fits, but cannot be realised, or would destroy instances in use: nothing was changed.
    Refused,
    /// A GPU or state operation failed part-way (the journal finishes it at the next apply).
    Failed,
}

impl ApplyError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ApplyError::Input(_) => ErrorKind::Input,
            ApplyError::Infeasible(_) | ApplyError::InUse(_) => ErrorKind::Refused,
            ApplyError::Backend { .. } | ApplyError::State(_) => ErrorKind::Failed,
        }
    }
}

fn backend_err(op: &str) -> impl Fn(BackendError) -> ApplyError + '_ {
    move |error| ApplyError::Backend {
        op: op.to_string(),
        error,
    }
}

/// Reads every GPU and its instances.
pub fn observe(backend: &mut dyn Backend, catalog: &Catalog) -> Result<Vec<Observed>, ApplyError> {
    let gpus = backend.gpus().map_err(backend_err("list GPUs"))?;
    let mut out = Vec::new();
    for info in gpus {
        let model = model_of(catalog, &info);
        let instances = match info.mig {
            Some(m) if m.current => backend
                .gpu_instances(info.index)
                .map_err(backend_err("list GPU instances"))?,
            _ => Vec::new(),
        };
        out.push(Observed {
            info,
            model: model.map(|m| m.key.clone()),
            instances: instances
                .into_iter()
                .map(|gi| ObservedInstance::new(model, gi))
                .collect(),
        });
    }
    Ok(out)
}

/// The catalog model of a GPU, by PCI device id, then by product name.
pub fn model_of<'c>(catalog: &'c Catalog, info: &GpuInfo) -> Option<&'c GpuModel> {
    catalog
        .gpus_by_pci_id(info.pci_device_id)
        .next()
        .or_else(|| catalog.gpu(&info.name).ok())
}

/// A desired GI: profile index and the compute-instance size.
type Item = (usize, u8);

/// The most current instances [`choose_layout`] weighs keeping (it tries every subset).
const MAX_KEEP_CANDIDATES: usize = 16;

/// Why [`choose_layout`] found no placed target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// More than 16 current instances could stay (every subset of them is tried).
    #[error("too many GPU instances to consider")]
    TooManyInstances { candidates: usize },
    /// The wanted instances do not fit the GPU even when it is empty; `message` is `reason` in
    /// the model's words (`carve_migparted::infeasible_text`).
    #[error("{message}")]
    Infeasible {
        reason: geometry::Infeasible,
        message: String,
    },
    /// They fit an empty GPU, but not around any set of the instances that must stay.
    #[error("no layout found")]
    NoLayout,
}

/// Chooses placements for `items` on a GPU holding `current`, keeping the most current instances
/// (busy ones first). Returns the placed target, or why it cannot be placed.
pub fn choose_layout(
    model: &GpuModel,
    current: &[GpuInstance],
    items: &[Item],
) -> Result<Vec<TargetInstance>, LayoutError> {
    // Current instances that could stay: same profile as some wanted item and a compatible CI
    // split (equal, or none yet: a GI whose CI was never made).
    let cand: Vec<(usize, Item, &GpuInstance)> = current
        .iter()
        .filter_map(|gi| {
            let p = model.profile_index_by_nvml(gi.profile)?;
            let cis: Vec<u8> = gi.compute_instances.iter().map(|c| c.slices).collect();
            let item = items
                .iter()
                .find(|&&(ip, cs)| ip == p && (cis.is_empty() || cis == [cs]))?;
            Some((p, *item, gi))
        })
        .collect();
    if cand.len() > MAX_KEEP_CANDIDATES {
        return Err(LayoutError::TooManyInstances {
            candidates: cand.len(),
        });
    }
    let mut best: Option<((usize, usize, usize), Vec<TargetInstance>)> = None;
    for mask in 0u32..(1 << cand.len()) {
        let kept: Vec<&(usize, Item, &GpuInstance)> = cand
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, c)| c)
            .collect();
        let score = (
            kept.iter().filter(|c| c.2.in_use()).count(),
            kept.len(),
            kept.iter()
                .filter(|c| !c.2.compute_instances.is_empty())
                .count(),
        );
        if best.as_ref().is_some_and(|(s, _)| *s >= score) {
            continue;
        }
        // The rest of the items, after taking out the kept ones.
        let mut rest: Vec<Item> = items.to_vec();
        let mut ok = true;
        for k in &kept {
            match rest.iter().position(|i| *i == k.1) {
                Some(pos) => {
                    rest.remove(pos);
                }
                None => {
                    ok = false;
                    break;
                }
            }
        }
        if !ok {
            continue;
        }
        let existing: Vec<Instance> = kept
            .iter()
            .map(|k| Instance {
                profile: k.0,
                start: k.2.start,
            })
            .collect();
        let mut counts = vec![0u32; model.profiles.len()];
        for (p, _) in &rest {
            counts[*p] += 1;
        }
        let Ok(layout) = geometry::fit(model, &counts, &existing) else {
            continue;
        };
        // Pair placed instances with their CI sizes: kept first (in order), then the rest by profile.
        let mut rest_cis = rest.clone();
        let mut target = Vec::new();
        for (n, inst) in layout.iter().enumerate() {
            let p = &model.profiles[inst.profile];
            let ci = if n < kept.len() {
                kept[n].1 .1
            } else {
                let pos = rest_cis
                    .iter()
                    .position(|(rp, _)| *rp == inst.profile)
                    .expect("placed");
                rest_cis.remove(pos).1
            };
            target.push(TargetInstance {
                profile: p.name.clone(),
                nvml: p.nvml,
                start: inst.start,
                size: p.slots,
                compute_instances: vec![ci],
            });
        }
        target.sort_by_key(|t| t.start);
        best = Some((score, target));
    }
    if let Some((_, t)) = best {
        return Ok(t);
    }
    let mut counts = vec![0u32; model.profiles.len()];
    for (p, _) in items {
        counts[*p] += 1;
    }
    match geometry::fit(model, &counts, &[]) {
        Err(reason) => Err(LayoutError::Infeasible {
            message: carve_migparted::infeasible_text(model, &reason),
            reason,
        }),
        Ok(_) => Err(LayoutError::NoLayout),
    }
}

/// Turns mig-parted config `cfg` into targets for the observed GPUs. GPUs no entry selects are
/// left out (untouched); a GPU two entries select is an error.
pub fn targets_from_migparted(
    catalog: &Catalog,
    cfg: &NamedConfig,
    observed: &[Observed],
) -> Result<Vec<GpuTarget>, ApplyError> {
    let mut targets = Vec::new();
    for o in observed {
        let idx = o.info.index;
        let matching: Vec<(usize, &carve_migparted::Entry)> = cfg
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| {
                let dev_ok = match &e.devices {
                    Devices::All => true,
                    Devices::List(l) => l.contains(&idx),
                };
                let filter_ok = e.device_filter.is_empty()
                    || e.device_filter
                        .iter()
                        .any(|f| f.device_id == o.info.pci_device_id);
                dev_ok && filter_ok
            })
            .collect();
        let entry = match matching.as_slice() {
            [] => continue,
            [(_, e)] => *e,
            [(a, _), (b, _), ..] => {
                return Err(ApplyError::Input(format!(
                    "config '{}': GPU {idx} is selected by entries {} and {}",
                    cfg.name,
                    a + 1,
                    b + 1
                )))
            }
        };
        let Some(model) = model_of(catalog, &o.info) else {
            return Err(ApplyError::Input(format!(
                "GPU {idx} ({}, PCI id 0x{:04X}) is not in the catalog; add it with --catalog",
                o.info.name, o.info.pci_device_id
            )));
        };
        if o.info.mig.is_none() {
            return Err(ApplyError::Input(format!(
                "GPU {idx} ({}) does not support MIG",
                o.info.name
            )));
        }
        let mut items: Vec<Item> = Vec::new();
        if entry.mig_enabled {
            carve_migparted::resolve(model, entry).map_err(|e| {
                ApplyError::Input(format!("{}: config '{}': {e}", e.pos(), cfg.name))
            })?;
            for d in &entry.mig_devices {
                let p = model.profile_index(&d.profile).expect("resolved");
                let name = carve_model::ProfileName::parse(&d.profile);
                let ci = name
                    .and_then(|n| n.ci_slices)
                    .unwrap_or(model.profiles[p].compute);
                for _ in 0..d.count.min(64) {
                    items.push((p, ci));
                }
            }
        }
        let instances = choose_layout(model, &o.gpu_instances(), &items).map_err(|m| {
            ApplyError::Infeasible(format!(
                "config '{}' on GPU {idx} ({}): {m}",
                cfg.name, model.key
            ))
        })?;
        targets.push(GpuTarget {
            gpu_uuid: o.info.uuid.clone(),
            gpu_index: idx,
            model: model.key.clone(),
            mig_enabled: entry.mig_enabled,
            instances,
        });
    }
    Ok(targets)
}

/// Whether an observed GI is exactly the wanted one (or the wanted one minus its CIs).
fn same_gi(gi: &GpuInstance, t: &TargetInstance) -> bool {
    let cis: Vec<u8> = gi.compute_instances.iter().map(|c| c.slices).collect();
    gi.profile == t.nvml && gi.start == t.start && (cis.is_empty() || cis == t.compute_instances)
}

/// The changes from the observed state to the targets: operations in order, what stays, and what
/// blocks them.
#[derive(Debug, Clone, Serialize)]
pub struct Changes {
    pub ops: Vec<Op>,
    /// MIG UUIDs (or GI descriptions) kept untouched.
    pub kept: Vec<String>,
    pub blockers: Vec<Blocker>,
}

/// What a set of changes does to one GPU: instances kept, destroyed and created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuChanges {
    pub gpu: u32,
    pub model: String,
    pub keep: usize,
    pub destroy: usize,
    pub create: usize,
    /// Operations of any kind on the GPU (MIG mode included).
    pub ops: usize,
}

impl GpuChanges {
    pub fn unchanged(&self) -> bool {
        self.ops == 0
    }
}

impl Changes {
    /// Per target GPU, what the changes do to it.
    pub fn per_gpu(&self, targets: &[GpuTarget]) -> Vec<GpuChanges> {
        targets
            .iter()
            .map(|t| {
                let ops: Vec<&Op> = self.ops.iter().filter(|o| o.gpu() == t.gpu_index).collect();
                let count = |f: fn(&Op) -> bool| ops.iter().filter(|o| f(o)).count();
                let create = count(|o| matches!(o, Op::CreateGpuInstance { .. }));
                GpuChanges {
                    gpu: t.gpu_index,
                    model: t.model.clone(),
                    keep: t.instances.len().saturating_sub(create),
                    destroy: count(|o| matches!(o, Op::DestroyGpuInstance { .. })),
                    create,
                    ops: ops.len(),
                }
            })
            .collect()
    }
}

/// Operations from `observed` to `targets`.
pub fn diff(observed: &[Observed], targets: &[GpuTarget]) -> Result<Changes, ApplyError> {
    let mut changes = Changes {
        ops: Vec::new(),
        kept: Vec::new(),
        blockers: Vec::new(),
    };
    for t in targets {
        let o = observed
            .iter()
            .find(|o| o.info.uuid == t.gpu_uuid)
            .ok_or_else(|| {
                ApplyError::Input(format!(
                    "GPU {} ({}) is not present",
                    t.gpu_index, t.gpu_uuid
                ))
            })?;
        let gpu = o.info.index;
        let mode = o.info.mig.unwrap_or(carve_backend::MigMode {
            current: false,
            pending: false,
        });
        if t.mig_enabled && !mode.current {
            changes.ops.push(Op::SetMigMode { gpu, enabled: true });
        }
        let mut matched = vec![false; t.instances.len()];
        let mut to_destroy = Vec::new();
        for (gi, name) in o.instances.iter().map(|i| (&i.gi, &i.profile_name)) {
            let m = t
                .instances
                .iter()
                .enumerate()
                .find(|(i, ti)| !matched[*i] && t.mig_enabled && same_gi(gi, ti));
            match m {
                Some((i, ti)) => {
                    matched[i] = true;
                    if gi.compute_instances.is_empty() {
                        for &slices in &ti.compute_instances {
                            changes.ops.push(Op::CreateComputeInstance {
                                gpu,
                                start: ti.start,
                                slices,
                                profile: ti.profile.clone(),
                            });
                        }
                    } else {
                        changes
                            .kept
                            .extend(gi.compute_instances.iter().map(|c| c.uuid.clone()));
                    }
                }
                None => to_destroy.push((gi, name.clone())),
            }
        }
        let mut destroys = Vec::new();
        for (gi, name) in to_destroy {
            for c in &gi.compute_instances {
                if !c.processes.is_empty() {
                    changes.blockers.push(Blocker {
                        gpu,
                        profile: name.clone(),
                        start: gi.start,
                        uuid: c.uuid.clone(),
                        processes: c.processes.clone(),
                    });
                }
                destroys.push(Op::DestroyComputeInstance {
                    gpu,
                    gi: gi.id,
                    ci: c.id,
                    uuid: c.uuid.clone(),
                    profile: name.clone(),
                    start: gi.start,
                });
            }
            destroys.push(Op::DestroyGpuInstance {
                gpu,
                gi: gi.id,
                profile: name,
                start: gi.start,
            });
        }
        changes.ops.extend(destroys);
        if t.mig_enabled {
            for (i, ti) in t.instances.iter().enumerate() {
                if matched[i] {
                    continue;
                }
                changes.ops.push(Op::CreateGpuInstance {
                    gpu,
                    profile: ti.profile.clone(),
                    nvml: ti.nvml,
                    start: ti.start,
                });
                for &slices in &ti.compute_instances {
                    changes.ops.push(Op::CreateComputeInstance {
                        gpu,
                        start: ti.start,
                        slices,
                        profile: ti.profile.clone(),
                    });
                }
            }
        } else if mode.current || mode.pending {
            changes.ops.push(Op::SetMigMode {
                gpu,
                enabled: false,
            });
        }
    }
    Ok(changes)
}

/// Runs one operation.
pub fn run_op(backend: &mut dyn Backend, op: &Op) -> Result<(), BackendError> {
    match op {
        Op::SetMigMode { gpu, enabled } => {
            let m = backend.set_mig_mode(*gpu, *enabled)?;
            if m.current != *enabled {
                return Err(BackendError::ResetRequired(format!(
                    "GPU {gpu}: the MIG mode change is pending until the GPU is reset (Ampere; nvidia-smi -r -i {gpu}, or `carve sim reset {gpu}` on the simulated node), then apply again"
                )));
            }
            Ok(())
        }
        Op::DestroyComputeInstance { gpu, gi, ci, .. } => {
            backend.destroy_compute_instance(*gpu, *gi, *ci)
        }
        Op::DestroyGpuInstance { gpu, gi, .. } => backend.destroy_gpu_instance(*gpu, *gi),
        Op::CreateGpuInstance {
            gpu, nvml, start, ..
        } => backend.create_gpu_instance(*gpu, *nvml, *start).map(|_| ()),
        Op::CreateComputeInstance {
            gpu, start, slices, ..
        } => {
            let gis = backend.gpu_instances(*gpu)?;
            let gi = gis.iter().find(|g| g.start == *start).ok_or_else(|| {
                BackendError::NotFound(format!("no GPU instance at {start} on GPU {gpu}"))
            })?;
            backend
                .create_compute_instance(*gpu, gi.id, *slices)
                .map(|_| ())
        }
    }
}

/// What an apply did.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// Its journal entry (`None`: there was nothing to do, so nothing was journaled).
    pub journal_id: Option<i64>,
    pub ops: Vec<Op>,
    pub kept: Vec<String>,
}

/// Runs `changes` crash-safely: records the targets as the desired state (and, in the same
/// transaction, the documents in `record`: the plan the node follows), then, when there is
/// anything to do, the operations in the journal before the first, and each one's progress after
/// it. `progress(i, n, op)` is called before each operation.
pub fn execute(
    backend: &mut dyn Backend,
    store: &Store,
    targets: &[GpuTarget],
    changes: &Changes,
    force: bool,
    record: &[(&str, Option<serde_json::Value>)],
    progress: &mut dyn FnMut(usize, usize, &Op),
) -> Result<Outcome, ApplyError> {
    if !changes.blockers.is_empty() && !force {
        return Err(ApplyError::InUse(changes.blockers.clone()));
    }
    let desired: Vec<(String, serde_json::Value)> = targets
        .iter()
        .map(|t| (t.gpu_uuid.clone(), json_of(t)))
        .collect();
    store.set_desired(&desired, record)?;
    let mut outcome = Outcome {
        journal_id: None,
        ops: changes.ops.clone(),
        kept: changes.kept.clone(),
    };
    if changes.ops.is_empty() {
        return Ok(outcome);
    }
    let id = store.journal_begin(backend.kind(), &json_of(targets), &json_of(&changes.ops))?;
    outcome.journal_id = Some(id);
    for (i, op) in changes.ops.iter().enumerate() {
        progress(i, changes.ops.len(), op);
        if let Err(error) = run_op(backend, op) {
            store.journal_finish(id, "failed")?;
            return Err(ApplyError::Backend {
                op: op.to_string(),
                error,
            });
        }
        store.journal_progress(id, i as i64 + 1)?;
    }
    store.journal_finish(id, "done")?;
    Ok(outcome)
}

/// A value of this crate's own types as JSON (they always serialise).
fn json_of<T: Serialize + ?Sized>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

/// Finishes applies that a crash interrupted: converges each to its recorded targets. Returns
/// what was done (empty when nothing was pending).
pub fn recover(
    backend: &mut dyn Backend,
    catalog: &Catalog,
    store: &Store,
    force: bool,
    progress: &mut dyn FnMut(usize, usize, &Op),
) -> Result<Vec<Outcome>, ApplyError> {
    let mut out = Vec::new();
    for entry in store.journal_unfinished()? {
        let targets: Vec<GpuTarget> =
            serde_json::from_value(entry.target.clone()).map_err(|e| {
                ApplyError::Input(format!("journal entry {} is unreadable: {e}", entry.id))
            })?;
        let observed = observe(backend, catalog)?;
        let changes = diff(&observed, &targets)?;
        store.journal_finish(entry.id, "interrupted")?;
        out.push(execute(
            backend,
            store,
            &targets,
            &changes,
            force,
            &[],
            progress,
        )?);
    }
    Ok(out)
}

/// The recorded desired state, for GPUs present now (for `--boot`).
pub fn desired_targets(store: &Store, observed: &[Observed]) -> Result<Vec<GpuTarget>, ApplyError> {
    let mut out = Vec::new();
    for (uuid, v) in store.desired()? {
        if observed.iter().any(|o| o.info.uuid == uuid) {
            let t: GpuTarget = serde_json::from_value(v).map_err(|e| {
                ApplyError::Input(format!("stored desired state of {uuid} is unreadable: {e}"))
            })?;
            out.push(t);
        }
    }
    out.sort_by_key(|t| t.gpu_index);
    Ok(out)
}
