//! The carve node agent: keeps a GPU node as planned and shows it to Kubernetes.
//!
//! - [`inventory`]: the resources and devices the node offers (pure).
//! - [`allocate`]: what a container gets for its devices (pure).
//! - [`cdi`], [`labels`]: the CDI spec and GFD-style node labels (pure, plus atomic writes);
//!   [`host`]: the driver's device nodes for the spec.
//! - [`plugin`]: the kubelet device plugin API v1beta1 (gRPC over unix sockets) per resource.
//! - [`state`]: shared state and Prometheus metrics.
//! - [`backstop`]: every process on a time-sliced GPU checked through the driver against the
//!   GPU's scheduler (unregistered, over its tenant's memory limit), and acted on.
//! - [`api`]: the HTTP API.
//! - [`agent`]: the control loop tying them together; [`control`]: the commands it takes;
//!   [`error`]: what can go wrong.
//! - `kube` (feature `kube`): the labels onto the Node object through the Kubernetes API.

pub mod agent;
pub mod allocate;
pub mod api;
pub mod backstop;
pub mod cdi;
pub mod control;
pub mod error;
pub mod host;
pub mod inventory;
#[cfg(feature = "kube")]
pub mod kube;
pub mod labels;
pub mod plugin;
pub mod state;

/// The kubelet device plugin API (`v1beta1`), generated from `proto/deviceplugin_v1beta1.proto`.
#[allow(clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("v1beta1");
}

use serde::{Deserialize, Serialize};

/// Store key of the XIDs injected into a simulated node (`carve sim xid`).
pub const XID_KEY: &str = "agent.xid-events";

/// An injected health event: `xid: None` clears the device's health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct XidRecord {
    pub seq: u64,
    pub uuid: String,
    pub xid: Option<u64>,
}

/// Records an XID (or, with `None`, a recovery) for `uuid` in a simulated node's store, where a
/// running agent picks it up.
pub fn inject_xid(
    store: &mut carve_state::Store,
    uuid: &str,
    xid: Option<u64>,
) -> Result<u64, carve_state::StateError> {
    store.update(XID_KEY, |v: &mut Option<Vec<XidRecord>>| {
        let list = v.get_or_insert_with(Vec::new);
        let seq = list.last().map_or(1, |l| l.seq + 1);
        list.push(XidRecord {
            seq,
            uuid: uuid.to_string(),
            xid,
        });
        // Keep the list short; the agent only needs what it has not seen.
        if list.len() > 256 {
            let cut = list.len() - 256;
            list.drain(..cut);
        }
        seq
    })
}
