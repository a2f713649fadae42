//! What a container gets for the devices the kubelet allocated it. Pure.
//!
//! - Every device: its UUID in `NVIDIA_VISIBLE_DEVICES` (the NVIDIA container runtime's
//!   interface) and its CDI name (`carve.dev/gpu=<uuid>`) for runtimes that read CDI.
//! - A time-sliced share additionally gets the shim preloaded (`LD_PRELOAD`), the scheduler's
//!   socket and its tenant's token mounted read-only, and the shim's environment
//!   (`carve_sched_proto::ENV_*`), so that every CUDA launch in the container waits for its
//!   tenant's turn and its memory stays under the limit.

use crate::inventory::{DeviceKind, Inventory};
use carve_sched_proto::{ENV_SCHED_SOCKET, ENV_TENANT, ENV_TOKEN_FILE};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Where things are inside a container.
pub const CONTAINER_SHIM: &str = "/usr/local/carve/libcarve_shim.so";
/// The scheduler's socket: where the shim looks when `CARVE_SCHED_SOCKET` is unset.
pub const CONTAINER_SCHED_SOCKET: &str = carve_sched_proto::DEFAULT_SOCKET;
pub const CONTAINER_TOKEN: &str = "/run/carve/token";
/// CDI kind of carve's devices.
pub const CDI_KIND: &str = "carve.dev/gpu";

/// Host paths Allocate needs for time-sliced shares.
#[derive(Debug, Clone, Default)]
pub struct HostPaths {
    /// The shim library on the host.
    pub shim: Option<PathBuf>,
    /// The scheduler socket of each time-sliced GPU (by GPU index).
    pub sched_sockets: BTreeMap<u32, PathBuf>,
    /// The token file of each tenant.
    pub tokens: BTreeMap<String, PathBuf>,
    /// The driver's device nodes (for the CDI spec).
    pub nodes: crate::host::DeviceNodes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub host: PathBuf,
    pub container: String,
    pub read_only: bool,
}

/// One container's answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Allocation {
    pub envs: BTreeMap<String, String>,
    pub mounts: Vec<Mount>,
    pub cdi_devices: Vec<String>,
}

/// Why an allocation is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    #[error("{0}")]
    Unknown(String),
    #[error("{0}")]
    Unhealthy(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unavailable(String),
}

/// The answer for one container asking for `ids` of `resource`.
pub fn allocate(
    inv: &Inventory,
    resource: &str,
    ids: &[String],
    host: &HostPaths,
) -> Result<Allocation, AllocError> {
    let r = inv
        .resource(resource)
        .ok_or_else(|| AllocError::Unknown(format!("this agent does not serve {resource}")))?;
    if ids.is_empty() {
        return Err(AllocError::Invalid("no devices asked for".into()));
    }
    let mut uuids: Vec<&str> = Vec::new();
    let mut tenant: Option<(&str, u32)> = None;
    for id in ids {
        let d = r.devices.iter().find(|d| &d.id == id).ok_or_else(|| {
            let names = r.devices.iter().map(|d| d.id.as_str());
            let hint = carve_model::suggest::did_you_mean(id, names)
                .first()
                .map(|s| format!("; did you mean '{}'?", s.name))
                .unwrap_or_default();
            AllocError::Unknown(format!("{resource} has no device '{id}'{hint}"))
        })?;
        if !d.healthy {
            return Err(AllocError::Unhealthy(format!("device {id} is unhealthy")));
        }
        if !uuids.contains(&d.uuid.as_str()) {
            uuids.push(&d.uuid);
        }
        if let DeviceKind::Share { .. } = d.kind {
            let t = d.tenant.as_deref().unwrap_or_default();
            match tenant {
                Some((prev, _)) if prev != t => {
                    return Err(AllocError::Invalid(format!(
                        "devices of two tenants ('{prev}' and '{t}') cannot go to one container"
                    )))
                }
                Some((_, g)) if g != d.gpu_index => {
                    return Err(AllocError::Invalid(
                        "shares of two time-sliced GPUs cannot go to one container".into(),
                    ))
                }
                _ => tenant = Some((t, d.gpu_index)),
            }
        }
    }
    let mut a = Allocation::default();
    a.envs
        .insert("NVIDIA_VISIBLE_DEVICES".into(), uuids.join(","));
    a.cdi_devices = uuids.iter().map(|u| format!("{CDI_KIND}={u}")).collect();
    if let Some((t, gpu)) = tenant {
        let shim = host.shim.as_ref().ok_or_else(|| {
            AllocError::Unavailable(
                "the shim library was not found, so a time-sliced share cannot be enforced".into(),
            )
        })?;
        let sock = host
            .sched_sockets
            .get(&gpu)
            .ok_or_else(|| AllocError::Unavailable(format!("no scheduler runs for GPU {gpu}")))?;
        let token = host
            .tokens
            .get(t)
            .ok_or_else(|| AllocError::Unavailable(format!("no token for tenant '{t}'")))?;
        a.envs.insert("LD_PRELOAD".into(), CONTAINER_SHIM.into());
        a.envs
            .insert(ENV_SCHED_SOCKET.into(), CONTAINER_SCHED_SOCKET.into());
        a.envs.insert(ENV_TENANT.into(), t.to_string());
        a.envs.insert(ENV_TOKEN_FILE.into(), CONTAINER_TOKEN.into());
        a.mounts = vec![
            Mount {
                host: shim.clone(),
                container: CONTAINER_SHIM.into(),
                read_only: true,
            },
            Mount {
                host: sock.clone(),
                container: CONTAINER_SCHED_SOCKET.into(),
                read_only: false,
            },
            Mount {
                host: token.clone(),
                container: CONTAINER_TOKEN.into(),
                read_only: true,
            },
        ];
    }
    Ok(a)
}
