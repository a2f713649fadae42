//! Which GPUs the commands work on: the simulated node or NVML (`--backend`, `--sim`), and the
//! state directory and database.

use crate::input::read_input;
use crate::output::Failure;
use carve_backend::{Backend, BackendError};
use carve_model::Catalog;
use carve_simnode::SimBackend;
use carve_state::Store;
use clap::ValueEnum;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    Auto,
    Sim,
    Nvml,
}

pub struct Ctx {
    pub state: Option<PathBuf>,
    pub backend: BackendChoice,
    pub sim: Option<String>,
    pub json: bool,
}

/// The state directory: --state, $CARVE_STATE_DIR, or the user's data dir.
pub(crate) fn state_dir(ctx: &Ctx) -> PathBuf {
    ctx.state
        .clone()
        .or_else(|| std::env::var_os("CARVE_STATE_DIR").map(PathBuf::from))
        .or_else(|| {
            directories::ProjectDirs::from("", "", "carve").map(|d| d.data_dir().to_path_buf())
        })
        .unwrap_or_else(|| PathBuf::from(".carve"))
}

pub(crate) fn open_store(ctx: &Ctx) -> Result<Store, Failure> {
    Store::open(&state_dir(ctx)).map_err(|e| Failure::failed(e.to_string()))
}

/// `--sim` takes a spec (`2xH100-80GB,A30`) or a node file: one spec per line, `#` comments.
fn sim_spec(arg: &str) -> Result<String, Failure> {
    let path = Path::new(arg);
    if !path.is_file() {
        return Ok(arg.to_string());
    }
    let text = read_input(path)?;
    let parts: Vec<&str> = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .collect();
    if parts.is_empty() {
        return Err(Failure::bad(format!(
            "{arg}: the node file names no GPUs (e.g. a line 2xH100-80GB)"
        )));
    }
    Ok(parts.join(","))
}

pub fn open_sim(ctx: &Ctx, catalog: &Catalog) -> Result<(SimBackend, String), Failure> {
    let spec = ctx.sim.as_deref().map(sim_spec).transpose()?;
    let (mut sim, fresh) = SimBackend::open(open_store(ctx)?, catalog.clone(), spec.as_deref())
        .map_err(|e| match e {
            carve_simnode::OpenError::Spec(e) => Failure::bad(format!("--sim: {e}")),
            other => Failure::failed(other.to_string()),
        })?;
    let crash = std::env::var("CARVE_SIM_CRASH_AFTER")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok());
    sim.crash_after(crash);
    let spec = sim.spec().map_err(|e| Failure::failed(e.to_string()))?;
    let note = format!(
        "simulated node {spec}{} (state: {})",
        if fresh { ", new" } else { "" },
        sim.store().path().display()
    );
    Ok((sim, note))
}

/// The backend to use, and a line saying which.
pub fn open_backend(
    ctx: &Ctx,
    catalog: &Catalog,
) -> Result<(Box<dyn Backend + Send>, String), Failure> {
    let choice = if ctx.sim.is_some() {
        BackendChoice::Sim
    } else {
        ctx.backend
    };
    match choice {
        BackendChoice::Sim => {
            let (sim, note) = open_sim(ctx, catalog)?;
            Ok((Box::new(sim), note))
        }
        BackendChoice::Nvml => {
            let mut b =
                crate::backend::open_nvml().map_err(|e| Failure::failed(format!("NVML: {e}")))?;
            let n = b.gpus().map(|g| g.len()).unwrap_or(0);
            Ok((b, format!("NVML ({n} GPUs)")))
        }
        BackendChoice::Auto => {
            if let Ok(mut b) = crate::backend::open_nvml() {
                if let Ok(g) = b.gpus() {
                    if !g.is_empty() {
                        return Ok((b, format!("NVML ({} GPUs)", g.len())));
                    }
                }
            }
            let (sim, note) = open_sim(ctx, catalog)?;
            Ok((Box::new(sim), note))
        }
    }
}

/// The NVML backend (`libnvidia-ml.so.1`, or `$CARVE_NVML_LIB`).
pub fn open_nvml() -> Result<Box<dyn Backend + Send>, BackendError> {
    Ok(Box::new(carve_nvml::NvmlBackend::open()?))
}
