//! Node labels onto the Node object, through the Kubernetes API (kube-rs; feature `kube`).
//!
//! Server-side apply under the field manager `carve-agent`: the API server keeps our labels as
//! ours, so a label carve set before and no longer sets is removed, and labels that others own
//! are left alone.

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use std::collections::BTreeMap;
use std::path::Path;

pub const FIELD_MANAGER: &str = "carve-agent";

/// A client from `kubeconfig`, else the in-cluster service account or `$KUBECONFIG`/~/.kube.
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, String> {
    let config = match kubeconfig {
        Some(p) => {
            let kc = kube::config::Kubeconfig::read_from(p)
                .map_err(|e| format!("{}: {e}", p.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| format!("{}: {e}", p.display()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| format!("no Kubernetes configuration: {e}"))?,
    };
    kube::Client::try_from(config).map_err(|e| e.to_string())
}

/// Applies `labels` to Node `node`.
pub async fn apply_labels(
    client: kube::Client,
    node: &str,
    labels: &BTreeMap<String, String>,
) -> Result<(), String> {
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
    .map_err(|e| format!("cannot label node {node}: {e}"))
}
