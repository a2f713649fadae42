//! Reconciliation with the fewest changes.
//!
//! 1. [`observe`] reads the GPUs through a backend.
//! 2. [`targets_from_migparted`] turns a mig-parted config into a *placed* target per GPU, keeping
//!    as many existing GPU instances as possible where they are (busy ones first), and placing the
//!    rest around them with the exact `fit` of `carve-model`. [`targets_from_plan`] does the
//!    same for a carve plan (`plan.json`), whose placements are already explicit.
//! 3. [`diff`] lists the operations from the observed state to the targets: an instance present in
//!    both (same profile, same placement, same compute-instance split) is kept untouched.
//! 4. [`execute`] records the targets and the operations (and marks the applies it takes over
//!    superseded) in one transaction, then runs the operations, recording progress after each.
//!    An apply that never finished (a crash) is not replayed: the next apply computes its
//!    operations from what the GPUs really hold to its own targets — and, for GPUs it does not
//!    cover, to the [`interrupted`] apply's — and supersedes it.
//!
//! [`reconcile`] is the whole pipeline for a [`Desired`] state (a mig-parted config, a plan's
//! node, the recorded state); every command and the agent go through it ([`compare`] for
//! read-only checks). The plan the node follows is recorded with the desired state and read back
//! by [`recorded_plan`].

mod desired;
mod diff;
mod execute;
pub mod export;
mod from_plan;
mod observed;
mod reconcile;
mod targets;

pub use desired::{recorded_plan, Desired, NodePlan};
pub use diff::{diff, Blocker, Changes, GpuChanges, Op};
pub use execute::{desired_targets, execute, interrupted, run_op, Interrupted, Outcome};
pub use from_plan::{hostname, plan_node, plan_node_names, targets_from_plan, up_node};
pub use observed::{model_of, observe, Observed, ObservedInstance};
pub use reconcile::{compare, reconcile, ApplyOptions, Event, Reconciled};
pub use targets::{choose_layout, targets_from_migparted, LayoutError};

use carve_backend::BackendError;
use carve_model::NvmlGiProfile;
use serde::{Deserialize, Serialize};

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
    /// A GPU or state operation failed part-way (the next apply goes on from what the GPUs hold).
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

pub(crate) fn backend_err(op: &str) -> impl Fn(BackendError) -> ApplyError + '_ {
    move |error| ApplyError::Backend {
        op: op.to_string(),
        error,
    }
}
