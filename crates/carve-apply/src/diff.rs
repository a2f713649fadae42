//! The changes from what the GPUs hold to the targets: operations in order, what stays untouched,
//! and what blocks them (instances in use).

use crate::{ApplyError, GpuTarget, Observed, TargetInstance};
use carve_backend::{GpuInstance, Process};
use carve_model::NvmlGiProfile;
use serde::{Deserialize, Serialize};
use std::fmt;

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

/// Whether an observed GI is exactly the wanted one (or the wanted one minus its CIs).
fn same_gi(gi: &GpuInstance, t: &TargetInstance) -> bool {
    let cis: Vec<u8> = gi.compute_instances.iter().map(|c| c.slices).collect();
    gi.profile == t.nvml && gi.start == t.start && (cis.is_empty() || cis == t.compute_instances)
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
