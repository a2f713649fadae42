//! The one apply pipeline: observe → targets → diff → record → execute, taking over the applies
//! a crash interrupted. `carve apply`, `carve apply --boot`, the node agent (at start, on `POST
//! /v1/plan`, every resync) all run [`reconcile`]; `carve assert` runs [`compare`], its
//! read-only half.

use crate::{
    diff, execute, interrupted, observe, ApplyError, Changes, Desired, GpuTarget, NodePlan,
    Observed, Op, Outcome,
};
use carve_backend::Backend;
use carve_model::Catalog;
use carve_state::Store;

/// How to reconcile.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyOptions {
    /// Compute the changes and stop: no lock, nothing written. What it reports (operations,
    /// interrupted applies superseded) is what a real run from the same state does.
    pub dry_run: bool,
    /// Destroy instances in use too (the driver still refuses while processes run).
    pub force: bool,
}

/// What is happening, for progress lines and logs.
#[derive(Debug)]
pub enum Event<'a> {
    /// Another apply holds the node's lock; this one waits for it.
    Waiting,
    /// Applies that a crash interrupted (their journal ids) are taken over: not replayed, but
    /// superseded by this apply, which goes straight from what the GPUs hold to its targets.
    Superseding { journal_ids: &'a [i64] },
    /// The changes are known and about to be made (not sent on a dry run).
    Applying {
        targets: &'a [GpuTarget],
        changes: &'a Changes,
    },
    /// Operation `i` of `n` starts.
    Op { i: usize, n: usize, op: &'a Op },
}

/// What a reconcile found and did.
#[derive(Debug, Clone)]
pub struct Reconciled {
    /// The journal ids of the interrupted applies this one superseded (on a dry run: would
    /// supersede).
    pub superseded: Vec<i64>,
    /// The targets: the desired state's for the GPUs it covers, and for any other GPU an
    /// interrupted apply was changing, that apply's.
    pub targets: Vec<GpuTarget>,
    /// The changes from what the GPUs held to the targets (on a dry run: what would be done).
    pub changes: Changes,
    /// What ran (`None` on a dry run, or with no targets).
    pub outcome: Option<Outcome>,
    /// The GPUs afterwards.
    pub observed: Vec<Observed>,
    /// The plan the node follows now, and its node.
    pub plan: Option<NodePlan>,
}

/// Brings the GPUs to `desired` with the fewest changes, crash-safely. Before anything changes,
/// the desired state is checked against the GPUs (invalid input changes nothing, and no lock is
/// taken for it). Then, under the node's apply lock, the targets are computed from what the GPUs
/// hold now; applies that a crash interrupted are not replayed: the GPUs they were changing that
/// `desired` does not cover keep their targets, and this apply supersedes them. The desired
/// state, the plan the node follows, the journal entry and the superseding are recorded in one
/// transaction before the first operation. Instances in use are never destroyed without `force`.
/// A dry run computes the same from the same state and writes nothing.
pub fn reconcile(
    backend: &mut dyn Backend,
    catalog: &Catalog,
    store: &Store,
    desired: &Desired,
    opts: ApplyOptions,
    on: &mut dyn FnMut(Event<'_>),
) -> Result<Reconciled, ApplyError> {
    let observed = observe(backend, catalog)?;
    desired.targets(catalog, store, &observed)?;
    let plan = desired.plan(store)?;
    if opts.dry_run {
        let w = work(catalog, store, desired, &observed)?;
        return Ok(Reconciled {
            superseded: w.superseded,
            targets: w.targets,
            changes: w.changes,
            outcome: None,
            observed,
            plan,
        });
    }
    // One apply at a time per node; the lock dies with the process.
    let _lock = store.lock_apply(|| on(Event::Waiting))?;
    let observed = observe(backend, catalog)?;
    let Work {
        targets,
        changes,
        superseded,
    } = work(catalog, store, desired, &observed)?;
    let record = desired.record();
    if targets.is_empty() && record.is_empty() && superseded.is_empty() {
        return Ok(Reconciled {
            superseded,
            targets,
            changes,
            outcome: None,
            observed,
            plan,
        });
    }
    if !superseded.is_empty() {
        on(Event::Superseding {
            journal_ids: &superseded,
        });
    }
    on(Event::Applying {
        targets: &targets,
        changes: &changes,
    });
    let outcome = execute(
        backend,
        store,
        &targets,
        &changes,
        opts.force,
        &record,
        &superseded,
        &mut |i, n, op| on(Event::Op { i, n, op }),
    )?;
    let observed = if outcome.ops.is_empty() {
        observed
    } else {
        observe(backend, catalog)?
    };
    Ok(Reconciled {
        superseded,
        targets,
        changes,
        outcome: Some(outcome),
        observed,
        plan,
    })
}

/// What an apply of a desired state does from the GPUs observed.
struct Work {
    targets: Vec<GpuTarget>,
    changes: Changes,
    superseded: Vec<i64>,
}

/// The one computation behind a real run and a dry run: the desired state's targets from what
/// the GPUs hold, plus, for every GPU present that an interrupted apply was changing and the
/// desired state does not cover, that apply's target (so superseding it leaves no GPU
/// part-way); the fewest changes to them; and the interrupted applies superseded.
fn work(
    catalog: &Catalog,
    store: &Store,
    desired: &Desired,
    observed: &[Observed],
) -> Result<Work, ApplyError> {
    let mut targets = desired.targets(catalog, store, observed)?;
    let interrupted = interrupted(store, observed)?;
    for t in interrupted.targets {
        if !targets.iter().any(|d| d.gpu_uuid == t.gpu_uuid) {
            targets.push(t);
        }
    }
    targets.sort_by_key(|t| t.gpu_index);
    let changes = diff(observed, &targets)?;
    Ok(Work {
        targets,
        changes,
        superseded: interrupted.ids,
    })
}

/// The read-only half, for `carve assert`: the targets of `desired` alone for the GPUs as they
/// are, and the changes that would bring them there (empty when the GPUs match). A dry run of
/// [`reconcile`] also counts what interrupted applies leave to do.
pub fn compare(
    backend: &mut dyn Backend,
    catalog: &Catalog,
    store: &Store,
    desired: &Desired,
) -> Result<(Vec<GpuTarget>, Changes), ApplyError> {
    let observed = observe(backend, catalog)?;
    let targets = desired.targets(catalog, store, &observed)?;
    let changes = diff(&observed, &targets)?;
    Ok((targets, changes))
}
