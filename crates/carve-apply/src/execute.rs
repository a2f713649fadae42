//! Running changes crash-safely: the desired state and the plan the node follows recorded first,
//! the operations journaled before the first and their progress after each; and finishing what a
//! crash interrupted.

use crate::{diff, observe, ApplyError, Changes, GpuTarget, Observed, Op};
use carve_backend::{Backend, BackendError};
use carve_model::Catalog;
use carve_state::Store;
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
