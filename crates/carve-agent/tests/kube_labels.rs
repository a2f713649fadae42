//! The labels reach the Node object: a test Kubernetes API server (plain HTTP on loopback)
//! records the agent's server-side apply of the node's labels.
#![cfg(feature = "kube")]

use axum::extract::{Path as AxPath, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::patch;
use axum::{Json, Router};
use carve_agent::agent::{self, GpuNode};
use carve_apply::Desired;
use carve_model::Catalog;
use carve_simnode::SimBackend;
use carve_state::Store;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A PATCH as received: node name, query string, content type, body.
type Patch = (String, String, String, Value);

#[derive(Clone, Default)]
struct Seen {
    patches: Arc<Mutex<Vec<Patch>>>,
}

async fn patch_node(
    State(seen): State<Seen>,
    AxPath(name): AxPath<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: String,
) -> impl IntoResponse {
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    seen.patches
        .lock()
        .unwrap()
        .push((name.clone(), q.unwrap_or_default(), ct, v.clone()));
    (
        StatusCode::OK,
        Json(json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": v["metadata"]["labels"]},
        })),
    )
}

async fn wait_for(seen: &Seen, n: usize) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        if seen.patches.lock().unwrap().len() >= n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_are_applied_to_the_node_object() {
    let seen = Seen::default();
    let app = Router::new()
        .route("/api/v1/nodes/{name}", patch(patch_node))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let tmp = tempfile::tempdir().unwrap();
    let kubeconfig = tmp.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: http://{addr}\nusers:\n- name: agent\n  user: {{}}\ncontexts:\n- name: test\n  context: {{cluster: test, user: agent}}\ncurrent-context: test\n"
        ),
    )
    .unwrap();
    let catalog = Catalog::embedded();
    let state = tmp.path().join("state");
    let (sim, _) = SimBackend::open(
        Store::open(&state).unwrap(),
        catalog.clone(),
        Some("2xH100-80GB"),
    )
    .unwrap();
    let yaml = "version: v1\nmig-configs:\n  c:\n    - devices: all\n      mig-enabled: true\n      mig-devices: {\"1g.10gb\": 7}\n";
    let (cfg_parsed, _) = carve_migparted::parse(yaml).unwrap();
    let desired = Desired::MigParted {
        config: Box::new(cfg_parsed.resolve("c").unwrap().clone()),
        source: "inline".into(),
    };
    let cfg = agent::AgentConfig {
        label_node: Some("gpu-node-7".into()),
        kubeconfig: Some(kubeconfig),
        ..agent::AgentConfig::new(tmp.path().join("dp"), tmp.path().join("run"), desired)
    };
    let node = GpuNode {
        backend: Box::new(sim),
        store: Store::open(&state).unwrap(),
        catalog,
    };
    let h = agent::start(cfg, node).await.unwrap();
    assert!(wait_for(&seen, 1).await, "no PATCH reached the API server");
    let (name, query, ct, body) = seen.patches.lock().unwrap()[0].clone();
    assert_eq!(name, "gpu-node-7");
    assert_eq!(ct, "application/apply-patch+yaml");
    assert!(query.contains("fieldManager=carve-agent"), "{query}");
    assert!(query.contains("force=true"), "{query}");
    assert_eq!(body["kind"], "Node");
    assert_eq!(body["metadata"]["name"], "gpu-node-7");
    let labels = &body["metadata"]["labels"];
    assert_eq!(labels["nvidia.com/mig-1g.10gb.count"], "14");
    assert_eq!(labels["nvidia.com/gpu.count"], "2");
    assert_eq!(labels["nvidia.com/mig.strategy"], "mixed");
    assert_eq!(labels, &json!(*h.state.labels()));
    assert!(h
        .state
        .render_metrics()
        .contains("carve_node_labelling_total{result=\"ok\"} 1"));
    h.shutdown().await;
}
