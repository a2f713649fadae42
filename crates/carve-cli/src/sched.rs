//! `carve sched` (the time-slice scheduler daemon and its status) and `carve run` (a command under
//! the shim).

use crate::input::read_input;
use crate::output::{table, Failure, Out};
use carve_plan::plan::Sniff;
use carve_sched::config::DaemonConfig;
use carve_sched::tokens::Readers;
use carve_sched_proto::{self as proto, ENV_FAIL, ENV_SCHED_SOCKET, ENV_TENANT, ENV_TOKEN_FILE};
use clap::Subcommand;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Subcommand)]
pub enum SchedCommand {
    /// Run the scheduler for one GPU (or one MIG instance) until interrupted.
    Serve {
        /// A scheduler configuration (YAML: policy, slice_ms, tenants with share, memory limit
        /// and identity), or a carve plan (plan.json): the schedule of one of its time-sliced
        /// GPUs, as the node agent would run it.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// With a plan: its node (default: the only one).
        #[arg(long)]
        node: Option<String>,
        /// With a plan: the GPU index on the node (default: its only time-sliced GPU).
        #[arg(long)]
        gpu: Option<u32>,
        /// With a plan: a directory of per-tenant token files (created 0600 when missing).
        #[arg(long, value_name = "DIR")]
        tokens: Option<PathBuf>,
        #[arg(long, value_name = "PATH", default_value = proto::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Per-tenant shares, GPU time, throttling and memory of a running scheduler.
    Status {
        #[arg(long, value_name = "PATH", default_value = proto::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Release);
}

pub fn sched_cmd(cmd: SchedCommand, json: bool) -> Result<Out, Failure> {
    match cmd {
        SchedCommand::Serve {
            file,
            node,
            gpu,
            tokens,
            socket,
        } => {
            let text = read_input(&file)?;
            let name = file.display();
            let plan = match carve_plan::Plan::sniff(&text) {
                Sniff::Plan(p) => Some(p.map_err(|e| Failure::bad(format!("{name}:{e}")))?),
                Sniff::OtherJson | Sniff::NotJson(_) => None,
            };
            let cfg = match plan {
                Some(plan) => {
                    let (_, _, schedule) = carve_plan::schedule::pick(&plan, node.as_deref(), gpu)
                        .map_err(|e| Failure::bad(format!("{name}: {e}")))?;
                    let dir = tokens.unwrap_or_else(|| PathBuf::from("/run/carve/tokens"));
                    carve_sched::tokens::identities(schedule, &dir, Readers::Owner)
                        .map_err(|e| Failure::failed(e.to_string()))?
                }
                None => {
                    if node.is_some() || gpu.is_some() || tokens.is_some() {
                        return Err(Failure::bad(format!(
                            "{name} is a scheduler configuration: --node, --gpu and --tokens pick a GPU of a carve plan (plan.json)"
                        )));
                    }
                    let base = file.parent().unwrap_or(Path::new("."));
                    DaemonConfig::from_yaml(&text, base)
                        .map_err(|e| Failure::bad(format!("{name}:{e}")))?
                }
            };
            let server =
                carve_sched::server::Server::start(cfg.clone(), &socket).map_err(|e| match e {
                    carve_sched::server::StartError::Settings(e) => {
                        Failure::bad(format!("{name}: {e}"))
                    }
                    other => Failure::failed(other.to_string()),
                })?;
            // SAFETY: installing async-signal-safe handlers that only store an atomic.
            unsafe {
                libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
                libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
            }
            eprintln!(
                "carve sched: {} with {} tenant(s) on {} (Ctrl-C stops)",
                cfg.settings.policy,
                cfg.tenants.len(),
                socket.display()
            );
            server.wait(&STOP);
            Ok(Out::ok(String::new()))
        }
        SchedCommand::Status { socket } => {
            let st = proto::status(&socket).map_err(|e| Failure::failed(e.to_string()))?;
            if json {
                return Ok(Out::json(&st, 0));
            }
            let mut rows = vec![vec![
                "TENANT".to_string(),
                "TARGET".into(),
                "ACHIEVED".into(),
                "GPU TIME".into(),
                "TURNS".into(),
                "THROTTLED".into(),
                "MEMORY".into(),
                "CLIENTS".into(),
            ]];
            for t in &st.tenants {
                rows.push(vec![
                    t.name.clone(),
                    format!("{:.1}%", t.target_share * 100.0),
                    format!("{:.1}%", t.achieved_share * 100.0),
                    format!("{:.1} s", t.gpu_time_ns as f64 / 1e9),
                    t.launches.to_string(),
                    format!("{:.1} s", t.throttled_ns as f64 / 1e9),
                    match t.memory_limit_mib {
                        Some(l) => format!("{:.0}/{:.0} MiB", t.memory_used_mib, l),
                        None => format!("{:.0} MiB", t.memory_used_mib),
                    },
                    t.clients.to_string(),
                ]);
            }
            Ok(Out::ok(format!(
                "{} policy, {} ms slices, up {:.1} s\n{}",
                st.policy,
                st.slice_ms,
                st.uptime_ns as f64 / 1e9,
                table(&rows)
            )))
        }
    }
}

/// Why the shim library was not found.
pub(crate) enum ShimError {
    /// `$CARVE_SHIM_LIB` names a file that is not there: the environment is wrong.
    Env(PathBuf),
    /// Not in any of the places carve looks (listed): it was not built or installed.
    Missing(Vec<PathBuf>),
}

impl ShimError {
    pub(crate) fn message(&self) -> String {
        match self {
            ShimError::Env(p) => format!(
                "CARVE_SHIM_LIB={} is not a file (unset it, or point it at libcarve_shim.so)",
                p.display()
            ),
            ShimError::Missing(looked) => format!(
                "cannot find libcarve_shim.so (looked at {}): build it with `cargo build -p carve-shim`, install carve with `deploy/install.sh`, or set CARVE_SHIM_LIB",
                looked
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// Where the shim library is, in this order: `$CARVE_SHIM_LIB` (which must then exist); an
/// installed layout, `PREFIX/lib/carve/libcarve_shim.so` for `PREFIX/bin/carve`
/// (`deploy/install.sh`); beside the `carve` executable (cargo's `target/<profile>/`); and, for
/// a binary in cargo's `deps/` or `examples/`, the profile directory above it.
pub(crate) fn find_shim() -> Result<PathBuf, ShimError> {
    if let Some(p) = std::env::var_os("CARVE_SHIM_LIB").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return match p.canonicalize() {
            Ok(c) if c.is_file() => Ok(c),
            _ => Err(ShimError::Env(p)),
        };
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().unwrap_or(Path::new("."));
    let mut looked = vec![
        dir.join("../lib/carve/libcarve_shim.so"),
        dir.join("libcarve_shim.so"),
    ];
    if dir
        .file_name()
        .is_some_and(|n| n == "deps" || n == "examples")
    {
        looked.push(dir.join("../libcarve_shim.so"));
    }
    for cand in &looked {
        if cand.is_file() {
            return Ok(cand.canonicalize().unwrap_or_else(|_| cand.clone()));
        }
    }
    Err(ShimError::Missing(
        looked.into_iter().map(|p| normalise(&p)).collect(),
    ))
}

/// `a/b/../c` → `a/c`, for messages (the path need not exist).
fn normalise(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir if out.file_name().is_some() => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// The shim for `carve run`: not finding it is a failure (exit 3).
pub(crate) fn shim_path() -> Result<PathBuf, Failure> {
    find_shim().map_err(|e| Failure::failed(e.message()))
}

/// `carve run`: runs a command with the shim preloaded, as a tenant of a scheduler. The shim
/// is configured through the environment, which is only as trustworthy as whoever starts the
/// command (the operator of a bare-metal host); in containers the agent mounts a read-only
/// configuration file and `/etc/ld.so.preload` instead.
pub fn run_cmd(
    tenant: &str,
    socket: &Path,
    token_file: Option<&Path>,
    fail: &str,
    command: &[String],
) -> Result<Out, Failure> {
    use std::os::unix::process::CommandExt;
    let Some((prog, args)) = command.split_first() else {
        return Err(Failure::bad(
            "nothing to run: carve run --tenant NAME -- COMMAND [ARGS...]",
        ));
    };
    if fail != proto::FAIL_OPEN && fail != proto::FAIL_CLOSED {
        return Err(Failure::bad(format!(
            "--fail must be open or closed, not {fail}"
        )));
    }
    let shim = shim_path()?;
    let mut preload = shim.display().to_string();
    if let Some(old) = std::env::var_os("LD_PRELOAD").filter(|p| !p.is_empty()) {
        preload = format!("{preload}:{}", old.to_string_lossy());
    }
    if Path::new(proto::SHIM_CONFIG).exists() {
        // The shim reads that file instead of the environment (see carve-shim).
        eprintln!(
            "carve run: {} exists and configures the shim; --tenant, --socket, --token-file and --fail are not used",
            proto::SHIM_CONFIG
        );
    }
    let mut cmd = std::process::Command::new(prog);
    cmd.args(args)
        .env_remove(proto::ENV_SHIM_CONFIG)
        .env("LD_PRELOAD", preload)
        .env(ENV_SCHED_SOCKET, socket)
        .env(ENV_TENANT, tenant)
        .env(ENV_FAIL, fail);
    match token_file {
        Some(t) => {
            cmd.env(ENV_TOKEN_FILE, t);
        }
        None => {
            cmd.env_remove(ENV_TOKEN_FILE);
        }
    }
    let err = cmd.exec();
    Err(Failure::bad(format!("cannot run {prog}: {err}")))
}
