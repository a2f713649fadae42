//! Running changes crash-safely: the desired state and the plan the node follows recorded, the
//! operations journaled and the applies a crash interrupted marked superseded, all before the
//! first operation and in one transaction; each operation's progress after it.

use crate::{ApplyError, Changes, GpuTarget, Observed, Op};
use carve_backend::{Backend, BackendError};
use carve_state::{status, NewEntry, Store};
use serde::Serialize;

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

/// Runs `changes` crash-safely. Before the first operation, in one transaction: the targets
/// become the desired state (with the documents in `record`: the plan the node follows), the
/// operations are journaled (when there are any), and the interrupted applies in `supersedes`
/// (their journal ids) are marked superseded — the targets must cover their GPUs (see
/// [`interrupted`]). Then each operation's progress is journaled after it. `progress(i, n, op)`
/// is called before each operation.
#[allow(clippy::too_many_arguments)] // the pipeline's steps, each given once
pub fn execute(
    backend: &mut dyn Backend,
    store: &Store,
    targets: &[GpuTarget],
    changes: &Changes,
    force: bool,
    record: &[(&str, Option<serde_json::Value>)],
    supersedes: &[i64],
    progress: &mut dyn FnMut(usize, usize, &Op),
) -> Result<Outcome, ApplyError> {
    if !changes.blockers.is_empty() && !force {
        return Err(ApplyError::InUse(changes.blockers.clone()));
    }
    let desired: Vec<(String, serde_json::Value)> = targets
        .iter()
        .map(|t| (t.gpu_uuid.clone(), json_of(t)))
        .collect();
    let (target_json, ops_json) = (json_of(targets), json_of(&changes.ops));
    let entry = (!changes.ops.is_empty()).then_some(NewEntry {
        backend: backend.kind(),
        target: &target_json,
        ops: &ops_json,
    });
    let journal_id = store.begin_apply(&desired, record, entry, supersedes)?;
    let outcome = Outcome {
        journal_id,
        ops: changes.ops.clone(),
        kept: changes.kept.clone(),
    };
    let Some(id) = journal_id else {
        return Ok(outcome);
    };
    for (i, op) in changes.ops.iter().enumerate() {
        progress(i, changes.ops.len(), op);
        if let Err(error) = run_op(backend, op) {
            store.journal_finish(id, status::FAILED)?;
            return Err(ApplyError::Backend {
                op: op.to_string(),
                error,
            });
        }
        store.journal_progress(id, i as i64 + 1)?;
    }
    store.journal_finish(id, status::DONE)?;
    Ok(outcome)
}

/// A value of this crate's own types as JSON (they always serialise).
fn json_of<T: Serialize + ?Sized>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

/// The applies a crash interrupted (journal entries still running), for the next apply to take
/// over: it supersedes them rather than replaying them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Interrupted {
    /// Their journal ids, oldest first.
    pub ids: Vec<i64>,
    /// What they were bringing the GPUs present to: per GPU, the newest entry's target.
    pub targets: Vec<GpuTarget>,
}

/// The applies a crash interrupted and their targets for the GPUs present now (read only).
pub fn interrupted(store: &Store, observed: &[Observed]) -> Result<Interrupted, ApplyError> {
    let mut out = Interrupted::default();
    for entry in store.journal_unfinished()? {
        let targets: Vec<GpuTarget> =
            serde_json::from_value(entry.target.clone()).map_err(|e| {
                ApplyError::Input(format!("journal entry {} is unreadable: {e}", entry.id))
            })?;
        for t in targets {
            if !observed.iter().any(|o| o.info.uuid == t.gpu_uuid) {
                continue;
            }
            // Entries come oldest first: a newer one's target replaces an older one's.
            out.targets.retain(|o| o.gpu_uuid != t.gpu_uuid);
            out.targets.push(t);
        }
        out.ids.push(entry.id);
    }
    out.targets.sort_by_key(|t| t.gpu_index);
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
