//! How the rest of the agent (the HTTP API, the caller of [`crate::agent::start`]) asks the control
//! loop to do something: one command channel to the one task that owns the GPUs and the plugins,
//! and the answers it gives.

use carve_plan::Plan;
use tokio::sync::{mpsc, oneshot};

/// What a reconcile did, as the API answers it: the operations run and the MIG devices kept.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ApplySummary {
    pub ops: Vec<String>,
    pub kept: Vec<String>,
}

/// Why a reconcile did not happen (nothing was changed unless it is `Failed`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReconcileError {
    /// The desired state does not fit these GPUs (wrong node, models, layout).
    #[error("{0}")]
    Input(String),
    /// It fits, but would destroy instances in use, or cannot be realised.
    #[error("{0}")]
    Refused(String),
    /// A GPU or state operation failed part-way (the next start goes on from what the GPUs hold).
    #[error("{0}")]
    Failed(String),
}

impl From<carve_apply::ApplyError> for ReconcileError {
    fn from(e: carve_apply::ApplyError) -> ReconcileError {
        use carve_apply::ErrorKind;
        match e.kind() {
            ErrorKind::Input => ReconcileError::Input(e.to_string()),
            ErrorKind::Refused => ReconcileError::Refused(e.to_string()),
            ErrorKind::Failed => ReconcileError::Failed(e.to_string()),
        }
    }
}

/// What the control loop is asked to do.
pub(crate) enum Command {
    Apply(
        Box<Plan>,
        String,
        oneshot::Sender<Result<ApplySummary, ReconcileError>>,
    ),
    Stop,
}

/// Asks the running agent to do something.
#[derive(Clone)]
pub struct Control {
    pub(crate) tx: mpsc::Sender<Command>,
}

impl Control {
    /// Applies a new plan (this node's part), then offers the new devices.
    pub async fn apply(&self, plan: Plan, node: String) -> Result<ApplySummary, ReconcileError> {
        let stopping = || ReconcileError::Failed("the agent is stopping".into());
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Apply(Box::new(plan), node, tx))
            .await
            .map_err(|_| stopping())?;
        rx.await.map_err(|_| stopping())?
    }
}
