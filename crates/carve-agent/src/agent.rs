//! The agent's control loop: reconcile the GPUs with the desired state (`carve apply`'s engine),
//! work out what the node offers, run the schedulers of time-sliced GPUs, write the CDI spec and
//! labels, serve one device plugin per resource and keep it registered with the kubelet.
//!
//! One task owns the plugins and the backend; everything else talks to it through commands.
//! The kubelet directory's events (inotify) show a `kubelet.sock` made anew (the kubelet
//! restarted, whether or not the new socket reuses the old one's inode) or a plugin socket
//! removed (the kubelet deletes them when it starts); either restarts what is needed and
//! registers again. Every `poll` (100 ms) the directory is also looked at, as a fallback (events
//! can be lost, the watch can break): a `kubelet.sock` with another device or inode, or a
//! missing plugin socket.

use crate::allocate::HostPaths;
use crate::control::{ApplySummary, Command, Control, ReconcileError};
use crate::error::{AgentError, InstallError};
use crate::inventory::{self, Inventory, Options};
use crate::plugin::{self, Running, KUBELET_SOCKET};
use crate::state::{AgentState, Sched, Xid};
use crate::{api, cdi, labels};
use carve_apply::{Desired, NodePlan, Observed};
use carve_backend::Backend;
use carve_model::Catalog;
use carve_state::Store;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub device_plugin_dir: PathBuf,
    pub cdi_dir: Option<PathBuf>,
    pub labels_file: Option<PathBuf>,
    /// Scheduler sockets and tenant tokens.
    pub run_dir: PathBuf,
    /// HTTP API and metrics; `None`: not served.
    pub listen: Option<SocketAddr>,
    /// Bearer token for the API's writes.
    pub api_token: String,
    /// The shim library, for time-sliced tenants. Without it no time-sliced share is offered
    /// (it could not be enforced).
    pub shim: Option<PathBuf>,
    pub options: Options,
    pub desired: Desired,
    /// A simulated node's state directory to watch for injected XIDs (`carve sim xid`).
    pub sim_health: Option<PathBuf>,
    /// How often the kubelet directory (and injected health) is looked at.
    pub poll: Duration,
    /// Reconcile again this often, so that the GPUs stay as desired when something else
    /// changes them (`None`: only at start and on `POST /v1/plan`).
    pub resync: Option<Duration>,
    /// Put the labels on this Node object through the Kubernetes API (feature `kube`).
    pub label_node: Option<String>,
    /// The kubeconfig for that; default: in-cluster, `$KUBECONFIG` or `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
}

impl AgentConfig {
    /// Plugins in `device_plugin_dir`, schedulers and tokens in `run_dir`, and everything
    /// optional off: no CDI spec, labels file, API (and an empty token, which no request
    /// matches), shim, injected health, resync or node labelling; default options; 100 ms poll.
    pub fn new(device_plugin_dir: PathBuf, run_dir: PathBuf, desired: Desired) -> AgentConfig {
        AgentConfig {
            device_plugin_dir,
            cdi_dir: None,
            labels_file: None,
            run_dir,
            listen: None,
            api_token: String::new(),
            shim: None,
            options: Options::default(),
            desired,
            sim_health: None,
            poll: Duration::from_millis(100),
            resync: None,
            label_node: None,
            kubeconfig: None,
        }
    }
}

/// A backend and the store its applies are journaled in, owned by the control task.
pub struct GpuNode {
    pub backend: Box<dyn Backend + Send>,
    pub store: Store,
    pub catalog: Catalog,
}

/// A running agent.
pub struct Handle {
    pub state: Arc<AgentState>,
    /// Where the HTTP API listens, when it does.
    pub api: Option<SocketAddr>,
    pub control: Control,
    task: tokio::task::JoinHandle<()>,
    stop_poll: Arc<AtomicBool>,
    api_stop: Option<watch::Sender<bool>>,
    api_task: Option<tokio::task::JoinHandle<()>>,
    backstop: Option<std::thread::JoinHandle<()>>,
}

impl Handle {
    /// Starts the backstop ([`crate::backstop`]): every `cfg.poll`, each time-sliced GPU's
    /// processes, read through `source` (a backend of its own, e.g. a second NVML handle, so
    /// that it never waits on a reconcile), are checked against the GPU's scheduler and acted
    /// on; `on_violation` hears of each violation as it is found. Runs until [`Handle::shutdown`].
    pub fn watch_processes(
        &mut self,
        cfg: crate::backstop::Config,
        mut source: Box<dyn Backend + Send>,
        on_violation: impl Fn(&crate::backstop::Violation) + Send + 'static,
    ) {
        let (state, stop) = (self.state.clone(), self.stop_poll.clone());
        self.backstop = Some(std::thread::spawn(move || {
            let targets = || backstop_targets(&state);
            crate::backstop::run(
                source.as_mut(),
                &cfg,
                &targets,
                &state.backstop,
                &on_violation,
                &stop,
            );
        }));
    }

    /// Stops everything: plugins (their sockets removed), schedulers, the API.
    pub async fn shutdown(self) {
        let _ = self.control.tx.send(Command::Stop).await;
        let _ = self.task.await;
        self.stop_poll.store(true, Ordering::Release);
        if let Some(s) = self.api_stop {
            let _ = s.send(true);
        }
        if let Some(t) = self.api_task {
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
        if let Some(t) = self.backstop {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

/// The time-sliced GPUs the node runs now, each with its schedule's tenants and limits and the
/// clients registered with its scheduler: what the backstop checks.
fn backstop_targets(state: &AgentState) -> Vec<crate::backstop::Target> {
    let inv = state.inventory();
    let scheds = state.scheds.lock().unwrap_or_else(|p| p.into_inner());
    inv.shared
        .iter()
        .map(|g| crate::backstop::Target {
            gpu: g.gpu_index,
            gpu_uuid: g.gpu_uuid.clone(),
            tenants: g
                .schedule
                .tenants
                .iter()
                .map(|t| (t.name.clone(), t.memory_limit_bytes))
                .collect(),
            registered: scheds
                .iter()
                .filter(|s| s.gpu_index == g.gpu_index)
                .flat_map(|s| s.server.registered_pids())
                .flat_map(|(name, pids)| pids.into_iter().map(move |p| (name.clone(), p)))
                .collect(),
        })
        .collect()
}

/// Brings the GPUs to `desired` (`carve apply`'s pipeline: the fewest changes from what the GPUs
/// hold, superseding interrupted applies, recording the plan the node follows). Returns the GPUs
/// afterwards, that plan, and what was done.
pub fn reconcile(
    node: &mut GpuNode,
    desired: &Desired,
) -> Result<(Vec<Observed>, Option<NodePlan>, ApplySummary), ReconcileError> {
    let r = carve_apply::reconcile(
        node.backend.as_mut(),
        &node.catalog,
        &node.store,
        desired,
        carve_apply::ApplyOptions::default(),
        &mut |e| match e {
            carve_apply::Event::Waiting => tracing::info!("waiting for another apply to finish"),
            carve_apply::Event::Superseding { journal_ids } => {
                let to = desired.describe();
                tracing::info!("interrupted apply(s) {journal_ids:?} superseded: straight to {to}")
            }
            _ => {}
        },
    )?;
    let done = ApplySummary {
        ops: r
            .outcome
            .iter()
            .flat_map(|o| o.ops.iter().map(|op| op.to_string()))
            .collect(),
        kept: r.changes.kept,
    };
    Ok((r.observed, r.plan, done))
}

/// Starts a scheduler per time-sliced GPU of `inv` (stopping the previous ones) and returns the
/// host paths Allocate hands out.
fn start_schedulers(
    state: &AgentState,
    cfg: &AgentConfig,
    inv: &Inventory,
) -> Result<HostPaths, InstallError> {
    let tokens_dir = cfg.run_dir.join("tokens");
    let shim_dir = cfg.run_dir.join("shim");
    let mut host = HostPaths {
        shim: cfg.shim.clone(),
        ..HostPaths::default()
    };
    // What the shim reads in a container: the preload list naming it and, per tenant, its
    // configuration (mounted read-only by Allocate and the CDI spec).
    let write = |path: PathBuf, text: String| -> Result<PathBuf, InstallError> {
        std::fs::create_dir_all(&shim_dir)
            .and_then(|()| std::fs::write(&path, text))
            .map_err(|e| InstallError::Write {
                path: path.clone(),
                message: e.to_string(),
            })?;
        Ok(path)
    };
    if !inv.shared.is_empty() {
        host.preload = Some(write(
            shim_dir.join("ld.so.preload"),
            crate::allocate::preload_file(),
        )?);
    }
    // Taken only now: an error above leaves the running schedulers as they were.
    let mut old: Vec<Sched> =
        std::mem::take(&mut *state.scheds.lock().unwrap_or_else(|p| p.into_inner()));
    let mut scheds: Vec<Sched> = Vec::new();
    let start = |g: &crate::inventory::SharedGpu,
                 old: &mut Vec<Sched>,
                 scheds: &mut Vec<Sched>,
                 host: &mut HostPaths|
     -> Result<(), InstallError> {
        for t in &g.schedule.tenants {
            host.tokens.insert(
                t.name.clone(),
                carve_sched::tokens::token_path(&tokens_dir, &t.name),
            );
            let mut config = carve_sched::tokens::token_path(&shim_dir, &t.name).into_os_string();
            config.push(".conf");
            let config = write(
                config.into(),
                crate::allocate::shim_config(&t.name).render(),
            )?;
            host.shim_configs.insert(t.name.clone(), config);
        }
        let cannot = |message: String| InstallError::Scheduler {
            gpu: g.gpu_index,
            message,
        };
        let mut config = carve_sched::tokens::identities(
            g.schedule.clone(),
            &tokens_dir,
            carve_sched::tokens::Readers::Mounted,
        )
        .map_err(|e| cannot(e.to_string()))?;
        // The socket is mounted into containers that run as any user: everyone may connect, and
        // the token each container is given proves its tenant.
        config.access = Some(carve_sched::config::SocketAccess::Everyone);
        config.validate().map_err(|e| cannot(e.to_string()))?;
        let socket = cfg.run_dir.join(format!("sched-gpu{}.sock", g.gpu_index));
        host.sched_sockets.insert(g.gpu_index, socket.clone());
        // A scheduler that already runs this GPU's schedule keeps running: its clients stay
        // connected and keep their turns (a restart would leave their shims unscheduled).
        if let Some(i) = old
            .iter()
            .position(|s| s.gpu_uuid == g.gpu_uuid && s.socket == socket && s.config == config)
        {
            let kept = old.swap_remove(i);
            scheds.push(Sched {
                gpu_index: g.gpu_index,
                ..kept
            });
            return Ok(());
        }
        // One that runs something else on this socket gives way first.
        if let Some(i) = old.iter().position(|s| s.socket == socket) {
            old.swap_remove(i).server.stop();
        }
        let server = carve_sched::server::Server::start(config.clone(), &socket)
            .map_err(|e| cannot(e.to_string()))?;
        scheds.push(Sched {
            gpu_index: g.gpu_index,
            gpu_uuid: g.gpu_uuid.clone(),
            socket,
            config,
            server,
        });
        Ok(())
    };
    for g in &inv.shared {
        if let Err(e) = start(g, &mut old, &mut scheds, &mut host) {
            // Nothing half-started stays running.
            for s in old.into_iter().chain(scheds) {
                s.server.stop();
            }
            return Err(e);
        }
    }
    for s in old {
        s.server.stop();
    }
    *state.scheds.lock().unwrap_or_else(|p| p.into_inner()) = scheds;
    Ok(host)
}

/// Works out and installs what the node offers for `observed`.
fn install(
    state: &AgentState,
    cfg: &AgentConfig,
    observed: Vec<Observed>,
    plan: Option<NodePlan>,
) -> Result<(), InstallError> {
    let mut inv = inventory::inventory(
        &observed,
        plan.as_ref().map(|p| (&p.plan, p.node.as_str())),
        state.options(),
    )?;
    if cfg.shim.is_none() {
        inv.withhold_shares("no shim (libcarve_shim.so) to enforce them");
    }
    for w in &inv.warnings {
        tracing::warn!("{w}");
    }
    let mut host = start_schedulers(state, cfg, &inv)?;
    let gpus: Vec<(u32, String)> = observed
        .iter()
        .map(|o| (o.info.index, o.info.pci_bus_id.clone()))
        .collect();
    host.nodes = crate::host::DeviceNodes::read(Path::new("/proc"), Path::new("/sys"), &gpus);
    let lab = labels::labels(
        &observed,
        &inv,
        state.options(),
        plan.as_ref().map(|p| p.node.as_str()),
    );
    if let Some(dir) = &cfg.cdi_dir {
        cdi::write(dir, &cdi::spec(&inv, &host)).map_err(|e| InstallError::Write {
            path: dir.join(cdi::SPEC_FILE),
            message: e.to_string(),
        })?;
    }
    if let Some(f) = &cfg.labels_file {
        if let Some(d) = f.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(d);
        }
        let tmp = f.with_extension("tmp");
        std::fs::write(&tmp, labels::to_file_text(&lab))
            .and_then(|()| std::fs::rename(&tmp, f))
            .map_err(|e| InstallError::Write {
                path: f.clone(),
                message: e.to_string(),
            })?;
    }
    state.set_node(observed, inv, host, plan, lab);
    Ok(())
}

/// Identity of the kubelet's socket (it is a new file after a kubelet restart).
fn kubelet_id(dir: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(dir.join(KUBELET_SOCKET))
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// The device plugins and their registration.
struct Plugins {
    dir: PathBuf,
    running: Vec<Running>,
    /// The kubelet socket all running plugins are registered with.
    registered_with: Option<(u64, u64)>,
    /// A `kubelet.sock` was made since the last registration (its inode may be the old one's).
    kubelet_made: bool,
}

impl Plugins {
    async fn stop_all(&mut self) {
        for r in self.running.drain(..) {
            r.stop().await;
        }
        self.registered_with = None;
    }

    async fn start_all(&mut self, state: &Arc<AgentState>) {
        self.stop_all().await;
        let inv = state.inventory();
        for r in &inv.resources {
            match plugin::serve(state.clone(), &self.dir, &r.name, &r.endpoint) {
                Ok(p) => self.running.push(p),
                Err(e) => {
                    state.metrics.error("serve");
                    tracing::error!("cannot serve {} on {}: {e}", r.name, r.endpoint);
                }
            }
        }
    }

    /// Keeps plugins served and registered: called every poll.
    async fn tend(&mut self, state: &Arc<AgentState>) {
        let missing = self.running.iter().any(|r| !r.socket.exists());
        if missing {
            tracing::info!("plugin sockets were removed (kubelet restart?): serving again");
            self.start_all(state).await;
        }
        let k = kubelet_id(&self.dir);
        if k.is_some() && (k != self.registered_with || self.kubelet_made) {
            let kubelet = self.dir.join(KUBELET_SOCKET);
            let mut ok = true;
            for r in &self.running {
                let endpoint = r
                    .socket
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                match plugin::register(&kubelet, &r.resource, &endpoint).await {
                    Ok(()) => {
                        state.metrics.registered(&r.resource);
                        tracing::info!("registered {} with the kubelet", r.resource);
                    }
                    Err(e) => {
                        ok = false;
                        state.metrics.error("register");
                        tracing::warn!("{e}");
                    }
                }
            }
            if ok {
                self.registered_with = k;
                self.kubelet_made = false;
            }
        }
    }
}

/// Watches a simulated node's store for injected XIDs.
fn watch_sim_health(state: Arc<AgentState>, dir: PathBuf, poll: Duration, stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let mut seen = 0u64;
        let mut store: Option<Store> = None;
        while !stop.load(Ordering::Acquire) {
            if store.is_none() {
                store = Store::open(&dir).ok();
            }
            if let Some(s) = &store {
                if let Ok(Some(events)) = s.get::<Vec<crate::XidRecord>>(crate::XID_KEY) {
                    let from = seen;
                    for e in events.iter().filter(|e| e.seq > from) {
                        match e.xid {
                            Some(x) => {
                                state.xid(&Xid {
                                    uuid: e.uuid.clone(),
                                    xid: x,
                                });
                            }
                            None => {
                                state.set_health(&e.uuid, None);
                            }
                        }
                        seen = seen.max(e.seq);
                    }
                }
            }
            std::thread::sleep(poll);
        }
    });
}

/// Reconciles to `desired`, then installs what the node offers when `always` or when the
/// devices differ from what is offered now. Returns what was done and whether it installed.
/// Runs on a blocking thread (it talks to the GPUs).
async fn reconcile_install(
    node: &Arc<Mutex<GpuNode>>,
    state: &Arc<AgentState>,
    cfg: &AgentConfig,
    desired: &Desired,
    always: bool,
) -> Result<(ApplySummary, bool), ReconcileError> {
    let (node, st, cfg, desired) = (node.clone(), state.clone(), cfg.clone(), desired.clone());
    let r = tokio::task::spawn_blocking(move || {
        let mut n = node.lock().unwrap_or_else(|p| p.into_inner());
        let (observed, plan, done) = reconcile(&mut n, &desired)?;
        let changed =
            !done.ops.is_empty() || observed_uuids(&observed) != observed_uuids(&st.observed());
        if always || changed {
            install(&st, &cfg, observed, plan)
                .map_err(|e| ReconcileError::Failed(e.to_string()))?;
        }
        Ok((done, always || changed))
    })
    .await
    .map_err(|e| ReconcileError::Failed(e.to_string()))
    .and_then(|r| r);
    state.metrics.reconciled(match &r {
        Ok((d, _)) if d.ops.is_empty() => "unchanged",
        Ok(_) => "changed",
        Err(_) => "failed",
    });
    r
}

/// What the agent needs from outside before it changes anything: the HTTP API's port bound, and
/// for `--label-node` a Kubernetes client. Checked first ([`Preflight::check`]), so that a start
/// that cannot succeed changes nothing: no GPU, no file.
pub struct Preflight {
    listener: Option<tokio::net::TcpListener>,
    #[cfg(feature = "kube")]
    kube_client: Option<kube::Client>,
}

impl Preflight {
    /// Binds `listen` and, with `label_node`, makes the Kubernetes client (from `kubeconfig`,
    /// else in-cluster, `$KUBECONFIG` or `~/.kube/config`). Touches nothing else.
    pub async fn check(
        listen: Option<SocketAddr>,
        label_node: Option<&str>,
        kubeconfig: Option<&Path>,
    ) -> Result<Preflight, AgentError> {
        let listener = match listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| AgentError::Listen { addr, source })?,
            ),
            None => None,
        };
        #[cfg(not(feature = "kube"))]
        if label_node.is_some() {
            let _ = kubeconfig;
            return Err(AgentError::NoKube);
        }
        #[cfg(feature = "kube")]
        let kube_client = match label_node {
            Some(_) => Some(crate::kube::client(kubeconfig).await?),
            None => None,
        };
        Ok(Preflight {
            listener,
            #[cfg(feature = "kube")]
            kube_client,
        })
    }

    /// Where the HTTP API will listen (the port chosen when it was 0).
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }
}

/// Starts the agent: checks what it needs from outside ([`Preflight`]), then reconciles, serves,
/// registers. Returns once everything is up.
pub async fn start(cfg: AgentConfig, node: GpuNode) -> Result<Handle, AgentError> {
    let pre = Preflight::check(
        cfg.listen,
        cfg.label_node.as_deref(),
        cfg.kubeconfig.as_deref(),
    )
    .await?;
    start_checked(cfg, node, pre).await
}

/// [`start`] after its [`Preflight`] (checked with `cfg`'s `listen`, `label_node` and
/// `kubeconfig`), for callers that check before they make what the agent needs (its state, its
/// API token).
pub async fn start_checked(
    cfg: AgentConfig,
    node: GpuNode,
    pre: Preflight,
) -> Result<Handle, AgentError> {
    let listener = pre.listener;
    #[cfg(feature = "kube")]
    let kube_client = pre.kube_client;
    let state = Arc::new(AgentState::new(cfg.options.clone()));
    let node = Arc::new(Mutex::new(node));
    reconcile_install(&node, &state, &cfg, &cfg.desired, true).await?;

    let label_node = {
        #[cfg(feature = "kube")]
        {
            let (client, node) = (kube_client.clone(), cfg.label_node.clone());
            move |st: Arc<AgentState>| {
                if let (Some(c), Some(n)) = (client.clone(), node.clone()) {
                    tokio::spawn(async move {
                        match crate::kube::apply_labels(c, &n, &st.labels()).await {
                            Ok(()) => st.metrics.labelled("ok"),
                            Err(e) => {
                                tracing::warn!("{e}");
                                st.metrics.labelled("failed");
                            }
                        }
                    });
                }
            }
        }
        #[cfg(not(feature = "kube"))]
        {
            |_: Arc<AgentState>| {}
        }
    };
    label_node(state.clone());

    let mut plugins = Plugins {
        dir: cfg.device_plugin_dir.clone(),
        running: Vec::new(),
        registered_with: None,
        kubelet_made: false,
    };
    plugins.start_all(&state).await;
    // Watched from before the first registration, so that no kubelet start goes unseen.
    let mut dir_watch = match plugin::DirWatch::new(&cfg.device_plugin_dir) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(
                "cannot watch {} ({e}): a kubelet restart is seen by polling only",
                cfg.device_plugin_dir.display()
            );
            None
        }
    };
    plugins.tend(&state).await;

    let stop_poll = Arc::new(AtomicBool::new(false));
    if let Some(dir) = &cfg.sim_health {
        watch_sim_health(
            state.clone(),
            dir.clone(),
            cfg.poll.min(Duration::from_millis(20)),
            stop_poll.clone(),
        );
    }

    let (tx, mut rx) = mpsc::channel::<Command>(8);
    let control = Control { tx };

    let (api, api_stop, api_task) = match listener {
        Some(listener) => {
            let bound = listener.local_addr().map_err(|source| AgentError::Listen {
                addr: cfg.listen.unwrap_or_else(|| ([127, 0, 0, 1], 0).into()),
                source,
            })?;
            if let Some(w) = api::exposure_warning(bound) {
                tracing::warn!("{w}");
            }
            let (s_tx, s_rx) = watch::channel(false);
            let limits = api::ApiLimits::default();
            let app = api::router(api::Ctx {
                state: state.clone(),
                token: cfg.api_token.clone(),
                control: control.clone(),
                limits: limits.clone(),
            });
            let task = tokio::spawn(api::serve(listener, app, limits, s_rx));
            (Some(bound), Some(s_tx), Some(task))
        }
        None => (None, None, None),
    };

    let st = state.clone();
    let poll = cfg.poll;
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A resync long enough not to fire when off.
        let mut resync =
            tokio::time::interval(cfg.resync.unwrap_or(Duration::from_secs(86_400 * 365)));
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        resync.tick().await;
        // What the GPUs should look like now: the start's desired state, then each applied plan.
        let mut desired = cfg.desired.clone();
        loop {
            let dir_event = async {
                match dir_watch.as_mut() {
                    Some(w) => w.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tick.tick() => plugins.tend(&st).await,
                e = dir_event => match e {
                    Some(e) => {
                        if e == plugin::DirEvent::KubeletSocket {
                            tracing::info!("kubelet.sock was made anew (kubelet restart): registering again");
                            plugins.kubelet_made = true;
                        }
                        plugins.tend(&st).await;
                    }
                    None => {
                        tracing::warn!(
                            "the watch of {} broke: a kubelet restart is seen by polling only",
                            cfg.device_plugin_dir.display()
                        );
                        dir_watch = None;
                    }
                },
                _ = resync.tick(), if cfg.resync.is_some() => {
                    match reconcile_install(&node, &st, &cfg, &desired, false).await {
                        Ok((_, true)) => {
                            tracing::info!("the GPUs had drifted: reconciled");
                            plugins.start_all(&st).await;
                            plugins.tend(&st).await;
                            label_node(st.clone());
                        }
                        Ok((_, false)) => {}
                        Err(e) => tracing::warn!("resync: {e}"),
                    }
                }
                cmd = rx.recv() => match cmd {
                    None | Some(Command::Stop) => break,
                    Some(Command::Apply(plan, name, reply)) => {
                        let wanted = Desired::Plan {
                            plan,
                            node: name,
                            source: "POST /v1/plan".into(),
                        };
                        let r = reconcile_install(&node, &st, &cfg, &wanted, true)
                            .await
                            .map(|(done, _)| done);
                        if r.is_ok() {
                            desired = wanted;
                            // Resources may have come or gone: serve the new set.
                            plugins.start_all(&st).await;
                            plugins.tend(&st).await;
                            label_node(st.clone());
                        }
                        let _ = reply.send(r);
                    }
                },
            }
        }
        plugins.stop_all().await;
        let scheds: Vec<Sched> =
            std::mem::take(&mut *st.scheds.lock().unwrap_or_else(|p| p.into_inner()));
        for s in scheds {
            s.server.stop();
        }
    });

    Ok(Handle {
        state,
        api,
        control,
        task,
        stop_poll,
        api_stop,
        api_task,
        backstop: None,
    })
}

/// Every GPU and MIG device UUID, in order: what changes when the devices do.
fn observed_uuids(observed: &[Observed]) -> Vec<String> {
    let mut v = Vec::new();
    for o in observed {
        v.push(o.info.uuid.clone());
        for gi in &o.instances {
            v.extend(gi.compute_instances.iter().map(|c| c.uuid.clone()));
        }
    }
    v
}

/// The list of sockets the agent serves (for printing).
pub fn sockets(state: &AgentState, dir: &Path) -> BTreeMap<String, PathBuf> {
    state
        .inventory()
        .resources
        .iter()
        .map(|r| (r.name.clone(), dir.join(&r.endpoint)))
        .collect()
}
