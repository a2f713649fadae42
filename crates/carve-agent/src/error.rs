//! The agent's errors: why it could not start, install what the node offers, register with the
//! kubelet, or reach the Kubernetes API.

use crate::control::ReconcileError;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Why the agent did not start (nothing is left running).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Reconcile(#[from] ReconcileError),
    #[error("this carve was built without the `kube` feature: it cannot label nodes")]
    NoKube,
    #[error(transparent)]
    Kube(#[from] KubeError),
}

/// Why what the node offers could not be installed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstallError {
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    #[error("the scheduler of GPU {gpu} cannot start: {message}")]
    Scheduler { gpu: u32, message: String },
    #[error("cannot write {}: {message}", path.display())]
    Write { path: PathBuf, message: String },
}

/// A device set the kubelet could not be given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InventoryError {
    #[error("the single MIG strategy needs one kind of device on the node, found {}; use --mig-strategy mixed", kinds.join(", "))]
    MixedKinds { kinds: Vec<String> },
    #[error("'{0}' is not a valid resource name")]
    ResourceName(String),
    #[error("device ID '{0}' is longer than 63 characters")]
    DeviceId(String),
}

/// A registration the kubelet did not take.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("cannot reach the kubelet at {}: {source}", kubelet.display())]
    Connect {
        kubelet: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("the kubelet did not answer the registration in 5 s")]
    Timeout,
    #[error("the kubelet refused {resource}: {message}")]
    Refused { resource: String, message: String },
}

/// The Kubernetes API could not be used (feature `kube`).
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("{}: {message}", path.display())]
    Kubeconfig { path: PathBuf, message: String },
    #[error("no Kubernetes configuration: {0}")]
    NoConfig(String),
    #[error("Kubernetes client: {0}")]
    Client(String),
    #[error("cannot label node {node}: {message}")]
    Label { node: String, message: String },
}
