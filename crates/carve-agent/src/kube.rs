//! Node labels onto the Node object, through the Kubernetes API (kube-rs; feature `kube`).
//!
//! Server-side apply under the field manager `carve-agent`: the API server keeps our labels as
//! ours, so a label carve set before and no longer sets is removed, and labels that others own
//! are left alone.

use crate::error::KubeError;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use std::collections::BTreeMap;
use std::path::Path;

pub const FIELD_MANAGER: &str = "carve-agent";

/// A client from `kubeconfig`, else the in-cluster service account or `$KUBECONFIG`/~/.kube.
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, KubeError> {
    let config = match kubeconfig {
        Some(p) => {
            let bad = |e: &dyn std::fmt::Display| KubeError::Kubeconfig {
                path: p.to_path_buf(),
                message: e.to_string(),
            };
            let kc = kube::config::Kubeconfig::read_from(p).map_err(|e| bad(&e))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| bad(&e))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| KubeError::NoConfig(e.to_string()))?,
    };
    kube::Client::try_from(config).map_err(|e| KubeError::Client(e.to_string()))
}

/// Applies `labels` to Node `node`.
pub async fn apply_labels(
    client: kube::Client,
    node: &str,
    labels: &BTreeMap<String, String>,
) -> Result<(), KubeError> {
    let api: Api<Node> = Api::all(client);
    let body = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "name": node, "labels": labels },
    });
    api.patch(
        node,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map(|_| ())
    .map_err(|e| KubeError::Label {
        node: node.to_string(),
        message: e.to_string(),
    })
}
