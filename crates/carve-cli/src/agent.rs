//! `carve agent` (the node agent) and `carve up` (plan, apply and run the agent on this machine,
//! a simulated node when it has no GPU).

use crate::backend::{self, Ctx};
use crate::input;
use crate::node;
use crate::output::{self, Failure, Out};
use carve_agent::agent::{self, GpuNode, Handle};
use carve_agent::control::ReconcileError;
use carve_agent::error::AgentError;
use carve_agent::inventory::{MigStrategy, Options, Preference};
use carve_apply::Desired;
use carve_model::Catalog;
use carve_simnode::SimBackend;
use clap::{Args, ValueEnum};
use serde_json::json;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum StrategyArg {
    Mixed,
    Single,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum PreferArg {
    Spread,
    Pack,
}

/// The agent's flags (shared by `carve agent` and `carve up`).
#[derive(Args, Debug, Clone)]
pub struct AgentArgs {
    /// The kubelet's device-plugin directory, where plugin sockets go [agent default:
    /// /var/lib/kubelet/device-plugins; up: <dir>/device-plugins].
    #[arg(long, value_name = "DIR")]
    pub device_plugin_dir: Option<PathBuf>,
    /// Where the CDI spec is written [agent: /var/run/cdi; up: <dir>/cdi].
    #[arg(long, value_name = "DIR")]
    pub cdi_dir: Option<PathBuf>,
    /// Where the node labels are written, one key=value per line [agent: <state>/node-labels;
    /// up: <dir>/node-labels].
    #[arg(long, value_name = "FILE")]
    pub labels_file: Option<PathBuf>,
    /// Scheduler sockets and tenant tokens [agent: /run/carve; up: <dir>/run].
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
    /// Address of the HTTP API and /metrics (loopback by default; port 0 picks one; `off`).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9450")]
    pub listen: String,
    /// The bearer token for POST requests, read from FILE [default: made once, kept owner-only
    /// in <state>/api-token].
    #[arg(long, value_name = "FILE")]
    pub api_token_file: Option<PathBuf>,
    /// MIG devices as one resource per profile (mixed) or all as nvidia.com/gpu (single).
    #[arg(long, value_enum, default_value_t = StrategyArg::Mixed)]
    pub mig_strategy: StrategyArg,
    /// Offer time-sliced replicas as nvidia.com/gpu.shared instead of nvidia.com/gpu.
    #[arg(long)]
    pub rename_shared: bool,
    /// Replicas of each GPU that neither MIG nor the plan uses (each an equal-share tenant).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub replicas: u32,
    /// GetPreferredAllocation: spread over GPUs or pack onto few.
    #[arg(long, value_enum, default_value_t = PreferArg::Spread)]
    pub prefer: PreferArg,
    /// Reconcile again this often, so the GPUs stay as desired if something else changes them
    /// (never destroying an instance in use), e.g. 60s; `off`: only at start and on POST /v1/plan.
    #[arg(long, value_name = "DURATION", default_value = "60s")]
    pub resync: String,
    /// Also put the labels on this Node object through the Kubernetes API (in a cluster: the
    /// node's name, e.g. `--label-node $NODE_NAME` from the downward API).
    #[arg(long, value_name = "NODE")]
    pub label_node: Option<String>,
    /// The kubeconfig for --label-node (default: in-cluster, $KUBECONFIG or ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Stop after this long (for tests and demos), e.g. 30s; default: until Ctrl-C.
    #[arg(long, value_name = "DURATION", hide = true)]
    pub run_for: Option<String>,
}

fn options(a: &AgentArgs) -> Result<Options, Failure> {
    if a.replicas == 1 || a.replicas > 1024 {
        return Err(Failure::bad(format!(
            "--replicas must be 0 (whole GPUs) or 2 to 1024, not {}",
            a.replicas
        )));
    }
    Ok(Options {
        mig_strategy: match a.mig_strategy {
            StrategyArg::Mixed => MigStrategy::Mixed,
            StrategyArg::Single => MigStrategy::Single,
        },
        rename_shared: a.rename_shared,
        replicas: a.replicas,
        preference: match a.prefer {
            PreferArg::Spread => Preference::Spread,
            PreferArg::Pack => Preference::Pack,
        },
    })
}

fn resync(a: &AgentArgs) -> Result<Option<Duration>, Failure> {
    if a.resync == "off" {
        return Ok(None);
    }
    let d = input::parse_duration(&a.resync, "--resync", 86400.0)?;
    if d < Duration::from_millis(100) {
        return Err(Failure::bad("--resync must be at least 100ms"));
    }
    Ok(Some(d))
}

fn listen(a: &AgentArgs) -> Result<Option<SocketAddr>, Failure> {
    if a.listen == "off" {
        return Ok(None);
    }
    a.listen.parse().map(Some).map_err(|_| {
        Failure::bad(format!(
            "--listen: '{}' is not an address like 127.0.0.1:9450 (or off)",
            a.listen
        ))
    })
}

/// The API token: from --api-token-file, else made once in `state/api-token` (0600), as the
/// schedulers' tenant tokens are.
fn api_token(a: &AgentArgs, state: &Path) -> Result<(String, PathBuf), Failure> {
    let Some(path) = a.api_token_file.clone() else {
        let t = carve_sched::tokens::token_for(state, "api-token")
            .map_err(|e| Failure::no(e.to_string()))?;
        return Ok((t, carve_sched::tokens::token_path(state, "api-token")));
    };
    let t = std::fs::read_to_string(&path)
        .map_err(|e| Failure::bad(format!("cannot read {}: {e}", path.display())))?
        .trim()
        .to_string();
    if t.len() < 16 {
        return Err(Failure::bad(format!(
            "{}: the API token must be at least 16 characters",
            path.display()
        )));
    }
    Ok((t, path))
}

/// Paths the agent uses, resolved.
struct Paths {
    plugins: PathBuf,
    cdi: PathBuf,
    labels: PathBuf,
    run: PathBuf,
    state: PathBuf,
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .map_err(|e| Failure::no(format!("cannot start the runtime: {e}")))
}

/// Waits for Ctrl-C, SIGTERM, or the end of `run_for`.
async fn until_stopped(run_for: Option<Duration>) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let term = async move {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    let timer = async move {
        match run_for {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
        _ = timer => {}
    }
}

/// What is where, and the node's GPUs and tenants, for people.
fn summary(h: &Handle, p: &Paths, token_file: &Path, backend_note: &str) -> String {
    let mut s = String::new();
    s.push_str(&format!("carve agent is up on {backend_note}\n\n"));
    let mut rows: Vec<Vec<String>> = Vec::new();
    let sockets = agent::sockets(&h.state, &p.plugins);
    for (res, sock) in &sockets {
        rows.push(vec![format!("plugin {res}"), sock.display().to_string()]);
    }
    let kubelet = p.plugins.join("kubelet.sock");
    rows.push(vec![
        "kubelet socket".into(),
        format!(
            "{}{}",
            kubelet.display(),
            if kubelet.exists() {
                ""
            } else {
                " (none yet: the plugins register when a kubelet makes it)"
            }
        ),
    ]);
    rows.push(vec![
        "CDI spec".into(),
        p.cdi
            .join(carve_agent::cdi::SPEC_FILE)
            .display()
            .to_string(),
    ]);
    rows.push(vec!["node labels".into(), p.labels.display().to_string()]);
    for (gpu, sock) in &h.state.host_paths().sched_sockets {
        rows.push(vec![
            format!("scheduler GPU {gpu}"),
            sock.display().to_string(),
        ]);
    }
    if let Some(a) = h.api {
        rows.push(vec!["HTTP API".into(), format!("http://{a}/v1/gpus")]);
        rows.push(vec!["metrics".into(), format!("http://{a}/metrics")]);
        rows.push(vec!["API token".into(), token_file.display().to_string()]);
    }
    rows.push(vec!["state".into(), p.state.display().to_string()]);
    s.push_str(&output::table(&rows));
    s.push('\n');
    let inv = h.state.inventory();
    let mut g = vec![vec![
        "GPU".to_string(),
        "model".into(),
        "mode".into(),
        "devices (resource: tenant)".into(),
    ]];
    for o in h.state.observed().iter() {
        let mig = o.info.mig.is_some_and(|m| m.current);
        // "resource: tenant", repeated ones counted ("carve.dev/notebooks: notebooks ×4").
        let mut devs: Vec<(String, usize)> = Vec::new();
        for (r, d) in inv.devices().filter(|(_, d)| d.gpu_index == o.info.index) {
            let short = r.strip_prefix("nvidia.com/").unwrap_or(r);
            let label = format!(
                "{short}: {}{}",
                d.tenant.as_deref().unwrap_or("-"),
                if d.healthy { "" } else { " (unhealthy)" }
            );
            match devs.iter_mut().find(|(l, _)| *l == label) {
                Some((_, n)) => *n += 1,
                None => devs.push((label, 1)),
            }
        }
        let devs: Vec<String> = devs
            .into_iter()
            .map(|(l, n)| if n > 1 { format!("{l} ×{n}") } else { l })
            .collect();
        let mode = if mig {
            "MIG"
        } else if inv.shared.iter().any(|x| x.gpu_index == o.info.index) {
            "time-sliced"
        } else {
            "whole"
        };
        g.push(vec![
            o.info.index.to_string(),
            o.model.clone().unwrap_or_else(|| o.info.name.clone()),
            mode.into(),
            if devs.is_empty() {
                "(not offered)".into()
            } else {
                devs.join(", ")
            },
        ]);
    }
    s.push_str(&output::table(&g));
    let tenants = carve_agent::api::tenants_json(&h.state);
    if let Some(list) = tenants["tenants"].as_array().filter(|l| !l.is_empty()) {
        s.push('\n');
        let mut t = vec![vec![
            "tenant".to_string(),
            "mode".into(),
            "resource".into(),
            "devices".into(),
        ]];
        for x in list {
            t.push(vec![
                x["name"].as_str().unwrap_or("").into(),
                x["mode"].as_str().unwrap_or("-").into(),
                x["resource"].as_str().unwrap_or("-").into(),
                x["devices"].as_array().map_or(0, |d| d.len()).to_string(),
            ]);
        }
        s.push_str(&output::table(&t));
    }
    for w in &inv.warnings {
        s.push_str(&format!("warning: {w}\n"));
    }
    s.push_str("\nCtrl-C stops the agent (its sockets are removed).\n");
    s
}

fn up_json(h: &Handle, p: &Paths, token_file: &Path, backend_note: &str) -> serde_json::Value {
    json!({
        "ready": true,
        "backend": backend_note,
        "device_plugin_dir": p.plugins,
        "sockets": agent::sockets(&h.state, &p.plugins),
        "cdi_spec": p.cdi.join(carve_agent::cdi::SPEC_FILE),
        "labels_file": p.labels,
        "run_dir": p.run,
        "api": h.api.map(|a| format!("http://{a}")),
        "api_token_file": token_file,
        "gpus": carve_agent::api::gpus_json(&h.state)["gpus"],
        "tenants": carve_agent::api::tenants_json(&h.state)["tenants"],
    })
}

/// Runs the agent until stopped. Prints the summary once it is up.
#[allow(clippy::too_many_arguments)]
fn run(
    ctx: &Ctx,
    a: &AgentArgs,
    p: Paths,
    desired: Desired,
    node: GpuNode,
    backend_note: String,
    sim_health: Option<PathBuf>,
) -> Result<Out, Failure> {
    let nvml = node.backend.kind() == "nvml";
    let opts = options(a)?;
    let listen = listen(a)?;
    let run_for = a
        .run_for
        .as_deref()
        .map(|d| input::parse_duration(d, "--run-for", 365.0 * 86400.0))
        .transpose()?;
    let resync = resync(a)?;
    let (token, token_file) = api_token(a, &p.state)?;
    let shim = crate::sched::shim_path().ok();
    let cfg = agent::AgentConfig {
        device_plugin_dir: p.plugins.clone(),
        cdi_dir: Some(p.cdi.clone()),
        labels_file: Some(p.labels.clone()),
        run_dir: p.run.clone(),
        listen,
        api_token: token,
        shim,
        options: opts,
        desired,
        sim_health,
        poll: Duration::from_millis(100),
        resync,
        label_node: a.label_node.clone(),
        kubeconfig: a.kubeconfig.clone(),
    };
    let rt = runtime()?;
    let json = ctx.json;
    rt.block_on(async move {
        let h = agent::start(cfg, node).await.map_err(|e| match e {
            AgentError::Reconcile(ReconcileError::Input(m)) => Failure::bad(m),
            other => Failure::no(other.to_string()),
        })?;
        // On GPUs, the driver's XID events drive device health.
        let stop_xids = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        if nvml {
            let st = h.state.clone();
            match carve_nvml::watch_xids(stop_xids.clone(), move |e| {
                st.xid_at(&e.gpu_uuid, e.mig, e.xid);
            }) {
                Ok(_) => {}
                Err(e) => eprintln!("carve: warning: no XID events, so no health checks: {e}"),
            }
        }
        if json {
            println!(
                "{}",
                serde_json::to_string(&up_json(&h, &p, &token_file, &backend_note))
                    .unwrap_or_default()
            );
        } else {
            output::emit(&summary(&h, &p, &token_file, &backend_note));
        }
        until_stopped(run_for).await;
        stop_xids.store(true, std::sync::atomic::Ordering::Release);
        h.shutdown().await;
        if json {
            Ok(Out::json(&json!({"stopped": true}), 0))
        } else {
            Ok(Out::ok("carve agent stopped\n".into()))
        }
    })
}

/// `carve agent [FILE]`.
pub fn agent_cmd(
    ctx: &Ctx,
    catalog: Catalog,
    file: Option<&Path>,
    config: Option<&str>,
    node_name: Option<&str>,
    a: &AgentArgs,
) -> Result<Out, Failure> {
    // Input is checked before anything is started or changed.
    options(a)?;
    listen(a)?;
    resync(a)?;
    let desired = match file {
        None => Desired::Recorded,
        Some(f) => node::load_desired(f, config, node_name)?,
    };
    let state = backend::state_dir(ctx);
    let p = Paths {
        plugins: a
            .device_plugin_dir
            .clone()
            .unwrap_or_else(|| "/var/lib/kubelet/device-plugins".into()),
        cdi: a.cdi_dir.clone().unwrap_or_else(|| "/var/run/cdi".into()),
        labels: a
            .labels_file
            .clone()
            .unwrap_or_else(|| state.join("node-labels")),
        run: a.run_dir.clone().unwrap_or_else(|| "/run/carve".into()),
        state: state.clone(),
    };
    let (backend, note) = backend::open_backend(ctx, &catalog)?;
    let sim_health = (backend.kind() == "sim").then(|| state.clone());
    let store = backend::open_store(ctx)?;
    let node = GpuNode {
        backend,
        store,
        catalog,
    };
    run(ctx, a, p, desired, node, note, sim_health)
}

/// `carve up [TENANCY]`: plan the tenancy, take one Kubernetes node of it (this machine), and run
/// the agent for it: a simulated node of the planned GPUs when there is no GPU here.
pub fn up_cmd(
    ctx: &Ctx,
    catalog: Catalog,
    tenancy: &Path,
    node_name: Option<&str>,
    dir: &Path,
    a: &AgentArgs,
) -> Result<Out, Failure> {
    options(a)?;
    listen(a)?;
    resync(a)?;
    if !tenancy.exists() && tenancy != Path::new("-") {
        return Err(Failure::bad(format!(
            "{}: no such tenancy file (try examples/tenancy.yaml from the repository)",
            tenancy.display()
        )));
    }
    let t = crate::input::load_tenancy(&catalog, tenancy)?;
    let plan = carve_plan::plan(&t, &catalog);
    if !plan.complete {
        return Err(Failure::no(format!(
            "{}: the tenancy does not fit its fleet (see `carve plan {}`)",
            tenancy.display(),
            tenancy.display()
        )));
    }
    // The node: --node, this machine's name, or the first Kubernetes node with GPUs in use.
    let host = carve_apply::hostname();
    let chosen = carve_apply::up_node(&plan, node_name, host.as_deref())
        .map_err(|e| Failure::bad(format!("{}: {e}", tenancy.display())))?
        .to_string();
    let mut gpus: Vec<_> = plan.node_gpus(&chosen).collect();
    gpus.sort_by_key(|g| g.index);
    let spec: Vec<String> = gpus.iter().map(|g| g.model.clone()).collect();
    std::fs::create_dir_all(dir)
        .map_err(|e| Failure::bad(format!("cannot create {}: {e}", dir.display())))?;
    let state = ctx.state.clone().unwrap_or_else(|| dir.join("state"));
    let mut pj = serde_json::to_string_pretty(&plan).expect("serialisable");
    pj.push('\n');
    std::fs::write(dir.join("plan.json"), pj).map_err(|e| {
        Failure::bad(format!(
            "cannot write {}: {e}",
            dir.join("plan.json").display()
        ))
    })?;
    let p = Paths {
        plugins: a
            .device_plugin_dir
            .clone()
            .unwrap_or_else(|| dir.join("device-plugins")),
        cdi: a.cdi_dir.clone().unwrap_or_else(|| dir.join("cdi")),
        labels: a
            .labels_file
            .clone()
            .unwrap_or_else(|| dir.join("node-labels")),
        run: a.run_dir.clone().unwrap_or_else(|| dir.join("run")),
        state: state.clone(),
    };
    let sub = Ctx {
        state: Some(state.clone()),
        backend: ctx.backend,
        sim: ctx.sim.clone(),
        json: ctx.json,
    };
    // NVML when this machine has GPUs (and --backend allows), else a simulated node of the
    // planned GPUs.
    let use_nvml = !matches!(ctx.backend, backend::BackendChoice::Sim)
        && ctx.sim.is_none()
        && crate::backend::open_nvml()
            .ok()
            .and_then(|mut b| b.gpus().ok())
            .is_some_and(|g| !g.is_empty());
    let (backend, note, sim_health): (Box<dyn carve_backend::Backend + Send>, String, _) =
        if use_nvml {
            let (b, n) = backend::open_backend(&sub, &catalog)?;
            (b, n, None)
        } else {
            let store = carve_state::Store::open(&state).map_err(|e| Failure::no(e.to_string()))?;
            let (sim, _) = SimBackend::open(store, catalog.clone(), Some(&spec.join(",")))
                .map_err(|e| Failure::bad(format!("simulated node: {e}")))?;
            (
                Box::new(sim),
                format!(
                    "a simulated node ({}, node '{chosen}' of the plan)",
                    spec.join(", ")
                ),
                Some(state.clone()),
            )
        };
    let store = carve_state::Store::open(&state).map_err(|e| Failure::no(e.to_string()))?;
    let desired = Desired::Plan {
        plan: Box::new(plan),
        node: chosen,
        source: dir.join("plan.json").display().to_string(),
    };
    run(
        &sub,
        a,
        p,
        desired,
        GpuNode {
            backend,
            store,
            catalog,
        },
        note,
        sim_health,
    )
}
