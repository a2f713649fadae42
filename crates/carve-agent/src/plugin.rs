//! One kubelet device plugin per resource: the `v1beta1.DevicePlugin` gRPC service on a unix
//! socket in the device-plugin directory, and its registration with the kubelet.

use crate::allocate::{self, AllocError};
use crate::error::RegisterError;
use crate::inventory;
use crate::proto::device_plugin_server::{DevicePlugin, DevicePluginServer};
use crate::proto::registration_client::RegistrationClient;
use crate::proto::{
    AllocateRequest, AllocateResponse, CdiDevice, ContainerAllocateResponse,
    ContainerPreferredAllocationResponse, Device, DevicePluginOptions, Empty, ListAndWatchResponse,
    Mount, NumaNode, PreStartContainerRequest, PreStartContainerResponse,
    PreferredAllocationRequest, PreferredAllocationResponse, RegisterRequest, TopologyInfo,
};
use crate::state::AgentState;
use futures_util::{Stream, StreamExt};
use hyper_util::rt::TokioIo;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Request, Response, Status};

pub const API_VERSION: &str = "v1beta1";
pub const HEALTHY: &str = "Healthy";
pub const UNHEALTHY: &str = "Unhealthy";
/// The kubelet's registration socket, in the device-plugin directory.
pub const KUBELET_SOCKET: &str = "kubelet.sock";

/// The service for one resource.
pub struct Plugin {
    resource: String,
    state: Arc<AgentState>,
    /// Set when this plugin instance stops: open ListAndWatch streams end.
    stop: watch::Receiver<bool>,
}

impl Plugin {
    pub fn new(resource: &str, state: Arc<AgentState>, stop: watch::Receiver<bool>) -> Plugin {
        Plugin {
            resource: resource.to_string(),
            state,
            stop,
        }
    }

    /// The device list of this resource as the kubelet wants it.
    fn devices(&self) -> Vec<Device> {
        let inv = self.state.inventory();
        let host = self.state.host_paths();
        inv.resource(&self.resource)
            .map(|r| {
                r.devices
                    .iter()
                    .map(|d| Device {
                        id: d.id.clone(),
                        health: if d.healthy { HEALTHY } else { UNHEALTHY }.into(),
                        topology: host.nodes.numa.get(&d.gpu_index).map(|n| TopologyInfo {
                            nodes: vec![NumaNode { id: *n }],
                        }),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

type DeviceStream = Pin<Box<dyn Stream<Item = Result<ListAndWatchResponse, Status>> + Send>>;

fn status_of(e: AllocError) -> Status {
    match e {
        AllocError::Unknown(m) => Status::not_found(m),
        AllocError::Unhealthy(m) => Status::failed_precondition(m),
        AllocError::Invalid(m) => Status::invalid_argument(m),
        AllocError::Unavailable(m) => Status::unavailable(m),
    }
}

#[tonic::async_trait]
impl DevicePlugin for Plugin {
    async fn get_device_plugin_options(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<DevicePluginOptions>, Status> {
        Ok(Response::new(options()))
    }

    type ListAndWatchStream = DeviceStream;

    async fn list_and_watch(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<Self::ListAndWatchStream>, Status> {
        let mut changes = self.state.subscribe();
        let mut stop = self.stop.clone();
        let me = Plugin {
            resource: self.resource.clone(),
            state: self.state.clone(),
            stop: self.stop.clone(),
        };
        let s = async_stream(move |tx| async move {
            let mut last: Option<Vec<Device>> = None;
            loop {
                let now = me.devices();
                if last.as_ref() != Some(&now) {
                    if tx
                        .send(Ok(ListAndWatchResponse {
                            devices: now.clone(),
                        }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    last = Some(now);
                }
                tokio::select! {
                    r = changes.changed() => if r.is_err() { return },
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        });
        Ok(Response::new(s))
    }

    async fn get_preferred_allocation(
        &self,
        req: Request<PreferredAllocationRequest>,
    ) -> Result<Response<PreferredAllocationResponse>, Status> {
        let inv = self.state.inventory();
        let r = inv
            .resource(&self.resource)
            .ok_or_else(|| Status::not_found(format!("no resource {}", self.resource)))?;
        // Devices pack onto (or spread over) the GPUs they are on.
        let gpu_of = |id: &str| r.devices.iter().find(|d| d.id == id).map(|d| d.gpu_index);
        let mut out = Vec::new();
        for c in &req.get_ref().container_requests {
            let size = usize::try_from(c.allocation_size)
                .map_err(|_| Status::invalid_argument("allocation_size is negative"))?;
            let ids = inventory::prefer(
                &c.available_device_i_ds,
                &c.must_include_device_i_ds,
                size,
                &gpu_of,
                self.state.options().preference,
            );
            out.push(ContainerPreferredAllocationResponse { device_i_ds: ids });
        }
        Ok(Response::new(PreferredAllocationResponse {
            container_responses: out,
        }))
    }

    async fn allocate(
        &self,
        req: Request<AllocateRequest>,
    ) -> Result<Response<AllocateResponse>, Status> {
        let t0 = Instant::now();
        let inv = self.state.inventory();
        let host = self.state.host_paths();
        let mut out = Vec::new();
        for c in &req.get_ref().container_requests {
            match allocate::allocate(&inv, &self.resource, &c.devices_ids, &host) {
                Ok(a) => out.push(ContainerAllocateResponse {
                    envs: a.envs.into_iter().collect(),
                    mounts: a
                        .mounts
                        .into_iter()
                        .map(|m| Mount {
                            container_path: m.container,
                            host_path: m.host.display().to_string(),
                            read_only: m.read_only,
                        })
                        .collect(),
                    devices: Vec::new(),
                    annotations: Default::default(),
                    cdi_devices: a
                        .cdi_devices
                        .into_iter()
                        .map(|name| CdiDevice { name })
                        .collect(),
                }),
                Err(e) => {
                    self.state.metrics.allocate_error(&self.resource);
                    return Err(status_of(e));
                }
            }
        }
        self.state
            .metrics
            .allocated(&self.resource, out.len(), t0.elapsed());
        Ok(Response::new(AllocateResponse {
            container_responses: out,
        }))
    }

    async fn pre_start_container(
        &self,
        _: Request<PreStartContainerRequest>,
    ) -> Result<Response<PreStartContainerResponse>, Status> {
        Ok(Response::new(PreStartContainerResponse {}))
    }
}

pub fn options() -> DevicePluginOptions {
    DevicePluginOptions {
        pre_start_required: false,
        get_preferred_allocation_available: true,
    }
}

/// A stream fed by a task through a small channel.
fn async_stream<F, Fut>(f: F) -> DeviceStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<ListAndWatchResponse, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(f(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
}

/// A running plugin server.
pub struct Running {
    pub resource: String,
    pub socket: PathBuf,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops serving and removes the socket.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Serves `resource` on `dir/endpoint` (owner-only socket).
pub fn serve(
    state: Arc<AgentState>,
    dir: &Path,
    resource: &str,
    endpoint: &str,
) -> std::io::Result<Running> {
    std::fs::create_dir_all(dir)?;
    let socket = dir.join(endpoint);
    match std::fs::remove_file(&socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(&socket)?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let plugin = Plugin::new(resource, state, stop_rx.clone());
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let mut stop = stop_rx;
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        let r = tonic::transport::Server::builder()
            .add_service(DevicePluginServer::new(plugin))
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        if let Err(e) = r {
            tracing::warn!("device plugin server ended: {e}");
        }
    });
    Ok(Running {
        resource: resource.to_string(),
        socket,
        stop: stop_tx,
        task,
    })
}

/// What happened in the device-plugin directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirEvent {
    /// `kubelet.sock` was made (or moved) there: a kubelet (re)started, whatever the new file's
    /// inode (a new socket may reuse the old one's).
    KubeletSocket,
    /// Something else was made or removed there (a plugin socket the kubelet wiped, say).
    Other,
}

/// The device-plugin directory's events (inotify), as NVIDIA's device plugin watches for
/// `kubelet.sock`'s creation.
pub struct DirWatch {
    events: inotify::EventStream<Vec<u8>>,
}

impl DirWatch {
    /// Watches `dir` for files made, moved in or removed. Needs a tokio runtime.
    pub fn new(dir: &Path) -> std::io::Result<DirWatch> {
        use inotify::{Inotify, WatchMask};
        let ino = Inotify::init()?;
        ino.watches().add(
            dir,
            WatchMask::CREATE | WatchMask::MOVED_TO | WatchMask::DELETE | WatchMask::MOVED_FROM,
        )?;
        Ok(DirWatch {
            events: ino.into_event_stream(vec![0u8; 4096])?,
        })
    }

    /// The next event; `None` when the watch broke (the directory went away, or reading
    /// failed).
    pub async fn next(&mut self) -> Option<DirEvent> {
        use inotify::EventMask;
        let e = self.events.next().await?.ok()?;
        if e.mask.contains(EventMask::IGNORED) {
            return None;
        }
        let made = e.mask.intersects(EventMask::CREATE | EventMask::MOVED_TO);
        Some(
            if made && e.name.as_deref() == Some(std::ffi::OsStr::new(KUBELET_SOCKET)) {
                DirEvent::KubeletSocket
            } else {
                DirEvent::Other
            },
        )
    }
}

/// A gRPC channel over a unix socket.
pub async fn unix_channel(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_path_buf();
    // The URI is required by the API and ignored by the connector.
    Endpoint::try_from("http://[::1]:50051")?
        .connect_timeout(Duration::from_secs(1))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
}

/// Registers `resource` served at `endpoint` with the kubelet at `kubelet`.
pub async fn register(kubelet: &Path, resource: &str, endpoint: &str) -> Result<(), RegisterError> {
    let ch = unix_channel(kubelet)
        .await
        .map_err(|source| RegisterError::Connect {
            kubelet: kubelet.to_path_buf(),
            source,
        })?;
    let mut c = RegistrationClient::new(ch);
    let req = RegisterRequest {
        version: API_VERSION.into(),
        endpoint: endpoint.into(),
        resource_name: resource.into(),
        options: Some(options()),
    };
    tokio::time::timeout(Duration::from_secs(5), c.register(req))
        .await
        .map_err(|_| RegisterError::Timeout)?
        .map_err(|s| RegisterError::Refused {
            resource: resource.to_string(),
            message: s.message().to_string(),
        })?;
    Ok(())
}
