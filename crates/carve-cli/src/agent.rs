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
use carve_sched::tokens::Readers;
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

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum ViolationArg {
    /// An event: stderr, GET /v1/violations and the metrics.
    Log,
    /// The event, and SIGKILL to the process.
    Kill,
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
    /// The backstop (on GPUs, through NVML): what to do about a process on a time-sliced GPU
    /// that is not registered with its scheduler (no shim: static, setuid, `env -u LD_PRELOAD`,
    /// the shim dodged) or that puts its tenant over its memory limit.
    #[arg(long, value_enum, default_value_t = ViolationArg::Log)]
    pub on_violation: ViolationArg,
    /// How often the backstop asks the driver for the time-sliced GPUs' processes (10ms to
    /// 500ms).
    #[arg(long, value_name = "DURATION", default_value = "100ms")]
    pub backstop_poll: String,
    /// How long a process may be on a time-sliced GPU before it must be registered (the shim
    /// registers at its process's first launch or allocation); `0`: at once.
    #[arg(long, value_name = "DURATION", default_value = "500ms")]
    pub backstop_grace: String,
    /// Device memory a process may hold beyond its tenant's limit before the backstop acts:
    /// the context and modules the driver counts and the shim does not.
    #[arg(long, value_name = "MIB", default_value_t = 512)]
    pub backstop_slack_mib: u64,
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

/// The backstop's settings from the flags.
fn backstop(a: &AgentArgs) -> Result<carve_agent::backstop::Config, Failure> {
    use carve_agent::backstop::{Action, Config, MAX_POLL};
    let poll = input::parse_duration(&a.backstop_poll, "--backstop-poll", 0.5)?;
    if poll < Duration::from_millis(10) || poll > MAX_POLL {
        return Err(Failure::bad(format!(
            "--backstop-poll {}: give 10ms to 500ms",
            a.backstop_poll
        )));
    }
    let grace = match a.backstop_grace.trim() {
        "0" | "0s" | "0ms" => Duration::ZERO,
        g => input::parse_duration(g, "--backstop-grace", 60.0)?,
    };
    let slack_bytes = a
        .backstop_slack_mib
        .checked_mul(1024 * 1024)
        .ok_or_else(|| Failure::bad("--backstop-slack-mib is too large"))?;
    Ok(Config {
        poll,
        grace,
        slack_bytes,
        action: match a.on_violation {
            ViolationArg::Log => Action::Log,
            ViolationArg::Kill => Action::Kill,
        },
    })
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

/// The API token of `--api-token-file`, read and checked before anything is changed.
fn given_token(a: &AgentArgs) -> Result<Option<(String, PathBuf)>, Failure> {
    let Some(path) = a.api_token_file.clone() else {
        return Ok(None);
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
    Ok(Some((t, path)))
}

/// The API token made once in `state/api-token` (0600), as the schedulers' tenant tokens are.
fn made_token(state: &Path) -> Result<(String, PathBuf), Failure> {
    let t = carve_sched::tokens::token_for(state, "api-token", Readers::Owner)
        .map_err(|e| Failure::failed(e.to_string()))?;
    Ok((t, carve_sched::tokens::token_path(state, "api-token")))
}

/// Paths the agent uses, resolved.
struct Paths {
    plugins: PathBuf,
    cdi: PathBuf,
    labels: PathBuf,
    run: PathBuf,
    state: PathBuf,
}

/// What a failed start puts back, so that it leaves the folders as they were: the paths it made
/// are removed, the files it overwrote get their old contents back. Undone in reverse order.
#[derive(Default)]
struct Undo {
    entries: Vec<UndoEntry>,
}

enum UndoEntry {
    /// Did not exist: removed (a directory with everything in it).
    Made(PathBuf),
    /// A directory that did not exist: removed when it is empty again.
    MadeIfEmpty(PathBuf),
    /// A file that existed with these contents.
    Was(PathBuf, Vec<u8>),
}

impl Undo {
    /// `path` (a file or directory) is removed on undo unless it exists now.
    fn made(&mut self, path: &Path) {
        if std::fs::symlink_metadata(path).is_err() {
            self.entries.push(UndoEntry::Made(path.to_path_buf()));
        }
    }

    /// `path`, a directory that may hold things this start does not make, is removed on undo
    /// if it does not exist now and is empty then.
    fn made_dir(&mut self, path: &Path) {
        if std::fs::symlink_metadata(path).is_err() {
            self.entries
                .push(UndoEntry::MadeIfEmpty(path.to_path_buf()));
        }
    }

    /// `path`, a file this start (over)writes: removed, or given back its contents, on undo.
    fn written(&mut self, path: &Path) {
        match std::fs::read(path) {
            Ok(bytes) => self.entries.push(UndoEntry::Was(path.to_path_buf(), bytes)),
            Err(_) => self.made(path),
        }
    }

    fn undo(self) {
        for e in self.entries.into_iter().rev() {
            match e {
                UndoEntry::Made(p) => {
                    if p.is_dir() {
                        let _ = std::fs::remove_dir_all(&p);
                    } else {
                        let _ = std::fs::remove_file(&p);
                    }
                }
                UndoEntry::MadeIfEmpty(p) => {
                    let _ = std::fs::remove_dir(&p);
                }
                UndoEntry::Was(p, bytes) => {
                    let _ = std::fs::write(&p, bytes);
                }
            }
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .map_err(|e| Failure::failed(format!("cannot start the runtime: {e}")))
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

/// A word as a shell reads it: quoted when it has to be.
fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./:=@%+,-".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// What to run next, against this agent's node (its `--state`), with what each does.
fn next_commands(h: &Handle, p: &Paths, sim: bool) -> Vec<(String, String)> {
    // The carve people ran, as they ran it (`target/debug/carve`), else `carve`.
    let carve = std::env::args_os()
        .next()
        .map(|a| a.to_string_lossy().into_owned())
        .filter(|a| a.contains('/'))
        .unwrap_or_else(|| "carve".into());
    let base = format!(
        "{} --state {}",
        shell_word(&carve),
        shell_word(&p.state.display().to_string())
    );
    let mut v = vec![(
        format!("{base} status"),
        "the GPUs as the agent keeps them".to_string(),
    )];
    if sim {
        // A device to make unhealthy: the first MIG device, else the first GPU.
        let observed = h.state.observed();
        let device = observed
            .iter()
            .flat_map(|o| o.instances.iter())
            .flat_map(|gi| gi.compute_instances.iter())
            .map(|c| c.uuid.clone())
            .next()
            .or_else(|| observed.first().map(|o| o.info.uuid.clone()));
        if let Some(d) = device {
            v.push((
                format!("{base} sim xid {d} 79"),
                "an XID: the device turns unhealthy".into(),
            ));
            v.push((
                format!("{base} sim xid {d} --clear"),
                "healthy again".into(),
            ));
        }
    }
    if let Some(a) = h.api {
        v.push((format!("curl -s http://{a}/v1/gpus"), "the HTTP API".into()));
    }
    v
}

/// What is where, and the node's GPUs and tenants, for people.
fn summary(h: &Handle, p: &Paths, token_file: &Path, backend_note: &str, notes: &Notes) -> String {
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
        } else if inv.withheld.contains(&o.info.index) {
            "time-sliced (no shim)"
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
    for w in warnings(h, notes) {
        s.push_str(&format!("warning: {w}\n"));
    }
    s.push_str("\nTry, in another shell:\n");
    for (cmd, what) in next_commands(h, p, notes.sim) {
        s.push_str(&format!("  # {what}\n  {cmd}\n"));
    }
    s.push_str("\nCtrl-C stops the agent (its sockets are removed).\n");
    s
}

/// What the CLI adds to the agent's own account of itself.
struct Notes {
    /// The node is the simulated one (`carve sim` works on it).
    sim: bool,
    /// Why there is no shim, when there is none.
    no_shim: Option<String>,
}

/// The agent's warnings, and what to do about a missing shim when shares were not offered.
fn warnings(h: &Handle, notes: &Notes) -> Vec<String> {
    let inv = h.state.inventory();
    let mut w = inv.warnings.clone();
    if let (false, Some(why)) = (inv.withheld.is_empty(), &notes.no_shim) {
        w.push(why.clone());
    }
    // Loud: an API beyond loopback is readable by whoever reaches the node.
    w.extend(h.api.and_then(carve_agent::api::exposure_warning));
    w
}

fn up_json(
    h: &Handle,
    p: &Paths,
    token_file: &Path,
    backend_note: &str,
    notes: &Notes,
) -> serde_json::Value {
    let warnings = warnings(h, notes);
    let next: Vec<String> = next_commands(h, p, notes.sim)
        .into_iter()
        .map(|(c, _)| c)
        .collect();
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
        "state": p.state,
        "warnings": warnings,
        "next": next,
    })
}

/// What `run` starts the agent on, opened once the preflight has passed.
struct Opened {
    node: GpuNode,
    note: String,
    /// A simulated node's state directory, watched for `carve sim xid`.
    sim_health: Option<PathBuf>,
}

/// `carve up`'s plan file, written once the preflight has passed.
struct PlanFile {
    path: PathBuf,
    text: String,
}

/// How the agent is started: where, on what, and what `carve up` adds.
struct Start {
    paths: Paths,
    desired: Desired,
    /// `carve up`'s folder (removed again if the start fails and it did not exist before).
    dir: Option<PathBuf>,
    plan_file: Option<PlanFile>,
    /// Opens the node (its state database and backend); it may make the state directory.
    open: Box<dyn FnOnce() -> Result<Opened, Failure>>,
    /// The backend will be the simulated node (its state is made here, and removed again if
    /// the start fails and it did not exist before; NVML's records what was done to the GPUs).
    sim: bool,
}

/// Why the agent did not start, as an exit status.
fn start_failure(e: AgentError) -> Failure {
    match e {
        AgentError::Reconcile(ReconcileError::Input(m)) => Failure::bad(m),
        AgentError::Reconcile(ReconcileError::Refused(m)) => Failure::no(m),
        other => Failure::failed(other.to_string()),
    }
}

/// Runs the agent until stopped. Prints the summary once it is up.
///
/// Everything that can be checked is checked before anything is changed: the flags, the files
/// named (the API token), the shim when `CARVE_SHIM_LIB` names one, the API's port and the
/// Kubernetes client (`carve_agent::agent::Preflight`). A start that fails after that puts back
/// what it made ([`Undo`]): the folders are left as they were.
fn run(ctx: &Ctx, a: &AgentArgs, start: Start) -> Result<Out, Failure> {
    let opts = options(a)?;
    let listen = listen(a)?;
    let run_for = a
        .run_for
        .as_deref()
        .map(|d| input::parse_duration(d, "--run-for", 365.0 * 86400.0))
        .transpose()?;
    let resync = resync(a)?;
    let backstop = backstop(a)?;
    let given = given_token(a)?;
    // Without a shim no time-sliced share is offered (it could not be enforced); a shim that
    // CARVE_SHIM_LIB names and that is not there is a broken environment.
    let (shim, no_shim) = match crate::sched::find_shim() {
        Ok(p) => (Some(p), None),
        Err(e @ crate::sched::ShimError::Env(_)) => return Err(Failure::failed(e.message())),
        Err(e) => (None, Some(e.message())),
    };
    let rt = runtime()?;
    let pre = rt
        .block_on(agent::Preflight::check(
            listen,
            a.label_node.as_deref(),
            a.kubeconfig.as_deref(),
        ))
        .map_err(start_failure)?;

    // From here on things are made: note what, to put it back if the start fails.
    let Start {
        paths: p,
        desired,
        dir,
        plan_file,
        open,
        sim,
    } = start;
    let mut undo = Undo::default();
    if let Some(d) = &dir {
        undo.made_dir(d);
    }
    if sim {
        undo.made(&p.state);
    } else {
        undo.made_dir(&p.state);
    }
    if given.is_none() {
        undo.made(&carve_sched::tokens::token_path(&p.state, "api-token"));
    }
    undo.made(&p.plugins);
    undo.made(&p.cdi);
    undo.written(&p.cdi.join(carve_agent::cdi::SPEC_FILE));
    if let Some(parent) = p.labels.parent().filter(|d| !d.as_os_str().is_empty()) {
        undo.made_dir(parent);
    }
    undo.written(&p.labels);
    undo.made(&p.run);
    if let Some(f) = &plan_file {
        undo.written(&f.path);
    }
    let made = (|| -> Result<_, Failure> {
        if let Some(d) = &dir {
            std::fs::create_dir_all(d)
                .map_err(|e| Failure::failed(format!("cannot create {}: {e}", d.display())))?;
        }
        if let Some(f) = &plan_file {
            std::fs::write(&f.path, &f.text)
                .map_err(|e| Failure::failed(format!("cannot write {}: {e}", f.path.display())))?;
        }
        let opened = open()?;
        let (token, token_file) = match given {
            Some(t) => t,
            None => made_token(&p.state)?,
        };
        Ok((opened, token, token_file))
    })();
    let (opened, token, token_file) = match made {
        Ok(m) => m,
        Err(f) => {
            undo.undo();
            return Err(f);
        }
    };
    let nvml = opened.node.backend.kind() == "nvml";
    let notes = Notes {
        sim: opened.node.backend.kind() == "sim",
        no_shim,
    };
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
        sim_health: opened.sim_health,
        poll: Duration::from_millis(100),
        resync,
        label_node: a.label_node.clone(),
        kubeconfig: a.kubeconfig.clone(),
    };
    let json = ctx.json;
    let backend_note = opened.note;
    rt.block_on(async move {
        let mut h = match agent::start_checked(cfg, opened.node, pre).await {
            Ok(h) => h,
            Err(e) => {
                undo.undo();
                return Err(start_failure(e));
            }
        };
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
            // The backstop, on a second NVML handle: every process on a time-sliced GPU, with
            // or without the shim.
            if matches!(backstop.action, carve_agent::backstop::Action::Kill) && !host_pid_ns() {
                eprintln!(
                    "carve: warning: --on-violation kill: the agent is not in the host's pid \
                     namespace, whose pids NVML reports: a pid it cannot see is never signalled, \
                     one it can see may be another process (run it with the host's, hostPID)"
                );
            }
            match crate::backend::open_nvml() {
                Ok(source) => h.watch_processes(backstop, source, |v| {
                    eprintln!("carve: backstop: {v}");
                }),
                Err(e) => eprintln!(
                    "carve: warning: no backstop (processes on time-sliced GPUs are not \
                     watched): {e}"
                ),
            }
        }
        if json {
            println!(
                "{}",
                serde_json::to_string(&up_json(&h, &p, &token_file, &backend_note, &notes))
                    .unwrap_or_default()
            );
        } else {
            output::emit(&summary(&h, &p, &token_file, &backend_note, &notes));
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

/// Whether this process is in the initial pid namespace (`PROC_PID_INIT_INO`).
fn host_pid_ns() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/pid").is_ok_and(|m| m.ino() == 0xEFFF_FFFC)
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
    backstop(a)?;
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
    // The backend it will be, told without opening the state: the simulated node unless NVML
    // is asked for, or found with GPUs under `auto`.
    let sim = match (ctx.sim.is_some(), ctx.backend) {
        (true, _) | (false, backend::BackendChoice::Sim) => true,
        (false, backend::BackendChoice::Nvml) => false,
        (false, backend::BackendChoice::Auto) => !nvml_has_gpus(),
    };
    let octx = Ctx {
        state: Some(state.clone()),
        backend: ctx.backend,
        sim: ctx.sim.clone(),
        json: ctx.json,
    };
    let open = move || -> Result<Opened, Failure> {
        let (backend, note) = backend::open_backend(&octx, &catalog)?;
        let sim_health = (backend.kind() == "sim").then(|| state.clone());
        let store = backend::open_store(&octx)?;
        Ok(Opened {
            node: GpuNode {
                backend,
                store,
                catalog,
            },
            note,
            sim_health,
        })
    };
    run(
        ctx,
        a,
        Start {
            paths: p,
            desired,
            dir: None,
            plan_file: None,
            open: Box::new(open),
            sim,
        },
    )
}

/// Whether NVML loads and finds GPUs.
fn nvml_has_gpus() -> bool {
    crate::backend::open_nvml()
        .ok()
        .and_then(|mut b| b.gpus().ok())
        .is_some_and(|g| !g.is_empty())
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
    backstop(a)?;
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
    let state = ctx.state.clone().unwrap_or_else(|| dir.join("state"));
    let mut pj = serde_json::to_string_pretty(&plan).expect("serialisable");
    pj.push('\n');
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
    let use_nvml =
        !matches!(ctx.backend, backend::BackendChoice::Sim) && ctx.sim.is_none() && nvml_has_gpus();
    let plan_path = dir.join("plan.json");
    let desired = Desired::Plan {
        plan: Box::new(plan),
        node: chosen.clone(),
        source: plan_path.display().to_string(),
    };
    let open = move || -> Result<Opened, Failure> {
        let (backend, note, sim_health): (Box<dyn carve_backend::Backend + Send>, String, _) =
            if use_nvml {
                let (b, n) = backend::open_backend(&sub, &catalog)?;
                (b, n, None)
            } else {
                let store =
                    carve_state::Store::open(&state).map_err(|e| Failure::failed(e.to_string()))?;
                let (sim, _) = SimBackend::open(store, catalog.clone(), Some(&spec.join(",")))
                    .map_err(|e| match e {
                        carve_simnode::OpenError::Spec(e) => {
                            Failure::bad(format!("simulated node: {e}"))
                        }
                        other => Failure::failed(format!("simulated node: {other}")),
                    })?;
                (
                    Box::new(sim),
                    format!(
                        "a simulated node ({}, node '{chosen}' of the plan)",
                        spec.join(", ")
                    ),
                    Some(state.clone()),
                )
            };
        let store = carve_state::Store::open(&state).map_err(|e| Failure::failed(e.to_string()))?;
        Ok(Opened {
            node: GpuNode {
                backend,
                store,
                catalog,
            },
            note,
            sim_health,
        })
    };
    run(
        ctx,
        a,
        Start {
            paths: p,
            desired,
            dir: Some(dir.to_path_buf()),
            plan_file: Some(PlanFile {
                path: plan_path,
                text: pj,
            }),
            open: Box::new(open),
            sim: !use_nvml,
        },
    )
}
