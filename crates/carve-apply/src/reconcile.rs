//! The one apply pipeline: recover → observe → targets → diff → record → execute. `carve apply`,
//! `carve apply --boot`, the node agent (at start, on `POST /v1/plan`, every resync) all run
//! [`reconcile`]; `carve assert` and dry runs run [`compare`], its read-only half.

use crate::{
    diff, execute, observe, recover, ApplyError, Changes, Desired, GpuTarget, NodePlan, Observed,
    Op, Outcome,
};
use carve_backend::Backend;
use carve_model::Catalog;
use carve_state::Store;

/// How to reconcile.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyOptions {
    /// Compute the changes and stop: no lock, no recovery, nothing written.
    pub dry_run: bool,
    /// Destroy instances in use too (the driver still refuses while processes run).
    pub force: bool,
}

/// What is happening, for progress lines and logs.
#[derive(Debug)]
pub enum Event<'a> {
    /// Another apply holds the node's lock; this one waits for it.
    Waiting,
    /// An apply that a crash interrupted is finished first: its operations.
    Recovering { ops: usize },
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
    /// Interrupted applies that were finished first.
    pub recovered: Vec<Outcome>,
    /// The targets of the desired state for the GPUs present.
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
/// taken for it). Then, under the node's apply lock: interrupted applies are finished; the
/// targets are recomputed from what the GPUs hold; the desired state and the plan the node
/// follows are recorded (one transaction) and the operations journaled and run. Instances in use
/// are never destroyed without `force`.
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
        let (targets, changes) = compare_with(catalog, store, desired, &observed)?;
        return Ok(Reconciled {
            recovered: Vec::new(),
            targets,
            changes,
            outcome: None,
            observed,
            plan,
        });
    }
    // One apply at a time per node; the lock dies with the process.
    let _lock = store.lock_apply(|| on(Event::Waiting))?;
    let recovered = recover(backend, catalog, store, opts.force, &mut |i, n, op| {
        on(Event::Op { i, n, op })
    })?;
    for r in &recovered {
        on(Event::Recovering { ops: r.ops.len() });
    }
    let observed = observe(backend, catalog)?;
    let (targets, changes) = compare_with(catalog, store, desired, &observed)?;
    let record = desired.record();
    if targets.is_empty() && record.is_empty() {
        return Ok(Reconciled {
            recovered,
            targets,
            changes,
            outcome: None,
            observed,
            plan,
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
        &mut |i, n, op| on(Event::Op { i, n, op }),
    )?;
    let observed = if outcome.ops.is_empty() {
        observed
    } else {
        observe(backend, catalog)?
    };
    Ok(Reconciled {
        recovered,
        targets,
        changes,
        outcome: Some(outcome),
        observed,
        plan,
    })
}

/// The read-only half: the targets of `desired` for the GPUs as they are, and the changes that
/// would bring them there (empty when the GPUs match). For `carve assert` and dry runs.
pub fn compare(
    backend: &mut dyn Backend,
    catalog: &Catalog,
    store: &Store,
    desired: &Desired,
) -> Result<(Vec<GpuTarget>, Changes), ApplyError> {
    let observed = observe(backend, catalog)?;
    compare_with(catalog, store, desired, &observed)
}

fn compare_with(
    catalog: &Catalog,
    store: &Store,
    desired: &Desired,
    observed: &[Observed],
) -> Result<(Vec<GpuTarget>, Changes), ApplyError> {
    let targets = desired.targets(catalog, store, observed)?;
    let changes = diff(observed, &targets)?;
    Ok((targets, changes))
}
