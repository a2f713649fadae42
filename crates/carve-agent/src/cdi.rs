//! CDI (Container Device Interface) spec for the node's devices: what a CDI-aware runtime
//! (containerd ≥ 1.7, CRI-O ≥ 1.24) injects for `carve.dev/gpu=<name>`.
//!
//! Each GPU is named twice, by UUID and by index (`0`); each MIG device by UUID and by
//! `<gpu>:<mig index>`; each time-sliced tenant gets `tenant-<name>`, which mounts what Allocate
//! mounts (`crate::allocate`): the shim, `/etc/ld.so.preload` naming it, the shim's
//! configuration (fail closed), the scheduler socket and the tenant's token. Device nodes: `/dev/nvidia<minor>` (the driver's
//! minor number where `/proc` tells it, else the index), a MIG device's capability devices
//! (`/dev/nvidia-caps/nvidia-cap<N>`) where the driver lists them, and `/dev/nvidiactl`,
//! `/dev/nvidia-uvm` for all.

use crate::allocate::{
    HostPaths, CDI_KIND, CONTAINER_PRELOAD, CONTAINER_SCHED_SOCKET, CONTAINER_SHIM, CONTAINER_TOKEN,
};
use crate::inventory::{DeviceKind, Inventory};
use carve_sched_proto::SHIM_CONFIG;
use serde_json::{json, Value};
use std::path::Path;

/// The spec's file name in the CDI directory.
pub const SPEC_FILE: &str = "carve.dev-gpu.json";

fn node(path: &str) -> Value {
    json!({"path": path})
}

/// The CDI spec (version 0.6.0) for `inv`.
pub fn spec(inv: &Inventory, host: &HostPaths) -> Value {
    let mut devices: Vec<Value> = Vec::new();
    let mut seen_gpu: Vec<u32> = Vec::new();
    for (_, d) in inv.devices() {
        let gpu_node = host.nodes.gpu_node(d.gpu_index);
        match &d.kind {
            DeviceKind::Mig { index, gi, ci, .. } => {
                let mut nodes = vec![node(&gpu_node)];
                nodes.extend(
                    host.nodes
                        .mig_nodes(d.gpu_index, *gi, *ci)
                        .iter()
                        .map(|p| node(p)),
                );
                let edits = json!({
                    "env": [format!("NVIDIA_VISIBLE_DEVICES={}", d.uuid)],
                    "deviceNodes": nodes,
                });
                for name in [d.uuid.clone(), format!("{}:{index}", d.gpu_index)] {
                    devices.push(json!({"name": name, "containerEdits": edits.clone()}));
                }
            }
            DeviceKind::Gpu | DeviceKind::Share { .. } => {
                if seen_gpu.contains(&d.gpu_index) {
                    continue;
                }
                seen_gpu.push(d.gpu_index);
                let edits = json!({
                    "env": [format!("NVIDIA_VISIBLE_DEVICES={}", d.uuid)],
                    "deviceNodes": [node(&gpu_node)],
                });
                for name in [d.uuid.clone(), d.gpu_index.to_string()] {
                    devices.push(json!({"name": name, "containerEdits": edits.clone()}));
                }
            }
        }
    }
    if let (Some(shim), Some(preload)) = (&host.shim, &host.preload) {
        for g in &inv.shared {
            let Some(sock) = host.sched_sockets.get(&g.gpu_index) else {
                continue;
            };
            for t in g.schedule.tenants.iter().map(|t| &t.name) {
                let (Some(token), Some(config)) = (host.tokens.get(t), host.shim_configs.get(t))
                else {
                    continue;
                };
                let ro = ["ro", "nosuid", "nodev", "bind"];
                devices.push(json!({
                    "name": format!("tenant-{}", crate::cdi::safe(t)),
                    "containerEdits": {
                        "env": [format!("NVIDIA_VISIBLE_DEVICES={}", g.gpu_uuid)],
                        "deviceNodes": [node(&host.nodes.gpu_node(g.gpu_index))],
                        "mounts": [
                            {"hostPath": shim, "containerPath": CONTAINER_SHIM, "options": ro},
                            {"hostPath": preload, "containerPath": CONTAINER_PRELOAD, "options": ro},
                            {"hostPath": config, "containerPath": SHIM_CONFIG, "options": ro},
                            {"hostPath": sock, "containerPath": CONTAINER_SCHED_SOCKET, "options": ["rw", "nosuid", "nodev", "bind"]},
                            {"hostPath": token, "containerPath": CONTAINER_TOKEN, "options": ro},
                        ],
                    }
                }));
            }
        }
    }
    json!({
        "cdiVersion": "0.6.0",
        "kind": CDI_KIND,
        "devices": devices,
        "containerEdits": {
            "env": ["NVIDIA_VISIBLE_DEVICES=void"],
            "deviceNodes": [node("/dev/nvidiactl"), node("/dev/nvidia-uvm"), node("/dev/nvidia-uvm-tools")],
        }
    })
}

/// A CDI device name part: `[A-Za-z0-9_.-]`.
pub fn safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Writes `spec` into `dir` atomically (a runtime never reads half a file).
pub fn write(dir: &Path, spec: &Value) -> std::io::Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(SPEC_FILE);
    let tmp = dir.join(format!(".{SPEC_FILE}.tmp"));
    let text = serde_json::to_string_pretty(spec).expect("JSON values serialise");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}
