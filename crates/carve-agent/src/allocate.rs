//! What a container gets for the devices the kubelet allocated it. Pure.
//!
//! - Every device: its UUID in `NVIDIA_VISIBLE_DEVICES` (the NVIDIA container runtime's
//!   interface) and its CDI name (`carve.dev/gpu=<uuid>`) for runtimes that read CDI.
//! - A time-sliced share additionally gets, all mounted read-only but the socket: the shim,
//!   `/etc/ld.so.preload` naming it (so every process in the container loads it, whatever its
//!   environment: unsetting `LD_PRELOAD` does nothing), the shim's configuration at
//!   `carve_sched_proto::SHIM_CONFIG` (the scheduler's socket, the tenant, its token file and
//!   fail mode closed: a file the tenant cannot change, which the shim reads instead of the
//!   environment), the scheduler's socket and the tenant's token. So every CUDA launch in the
//!   container waits for its tenant's turn and its memory stays under the limit, and losing the
//!   scheduler stops the tenant's GPU work rather than freeing it.

use crate::inventory::{DeviceKind, Inventory};
use carve_sched_proto::{ShimConfig, FAIL_CLOSED, SHIM_CONFIG};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Where things are inside a container.
pub const CONTAINER_SHIM: &str = "/usr/local/carve/libcarve_shim.so";
/// The scheduler's socket: where the shim looks when `CARVE_SCHED_SOCKET` is unset.
pub const CONTAINER_SCHED_SOCKET: &str = carve_sched_proto::DEFAULT_SOCKET;
pub const CONTAINER_TOKEN: &str = "/run/carve/token";
/// The dynamic linker's list of libraries every program loads (glibc's `/etc/ld.so.preload`).
pub const CONTAINER_PRELOAD: &str = "/etc/ld.so.preload";
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
    /// The shim's configuration file of each tenant ([`shim_config`]).
    pub shim_configs: BTreeMap<String, PathBuf>,
    /// The `ld.so.preload` file naming the shim ([`preload_file`]).
    pub preload: Option<PathBuf>,
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

/// The shim's configuration in a container of `tenant`: the paths Allocate mounts, and fail
/// closed (the operator's choice for a share: losing the scheduler never frees the tenant).
pub fn shim_config(tenant: &str) -> ShimConfig {
    ShimConfig {
        socket: CONTAINER_SCHED_SOCKET.into(),
        tenant: tenant.into(),
        token_file: Some(CONTAINER_TOKEN.into()),
        fail: FAIL_CLOSED.into(),
    }
}

/// The text of the `ld.so.preload` file mounted at [`CONTAINER_PRELOAD`].
pub fn preload_file() -> String {
    format!("{CONTAINER_SHIM}\n")
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
        let config = host.shim_configs.get(t).ok_or_else(|| {
            AllocError::Unavailable(format!("no shim configuration for tenant '{t}'"))
        })?;
        let preload = host
            .preload
            .as_ref()
            .ok_or_else(|| AllocError::Unavailable("no ld.so.preload file for the shim".into()))?;
        let mount = |host: &PathBuf, container: &str, read_only: bool| Mount {
            host: host.clone(),
            container: container.into(),
            read_only,
        };
        a.mounts = vec![
            mount(shim, CONTAINER_SHIM, true),
            mount(preload, CONTAINER_PRELOAD, true),
            mount(config, SHIM_CONFIG, true),
            mount(sock, CONTAINER_SCHED_SOCKET, false),
            mount(token, CONTAINER_TOKEN, true),
        ];
    }
    Ok(a)
}
