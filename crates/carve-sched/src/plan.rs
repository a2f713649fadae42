//! A scheduler configuration from a plan's time-sliced GPU.

use crate::config::{Config, Identity, PolicyName, TenantConfig};
use carve_plan::plan::{GpuMode, Plan, Policy};
use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// A fresh secret: 32 hex digits from the kernel's random source.
fn new_token() -> std::io::Result<String> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Where the token of `tenant` is kept in `dir` (`dir/<tenant>`, the name made file-safe).
pub fn token_path(dir: &Path, tenant: &str) -> std::path::PathBuf {
    let safe: String = tenant
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir.join(safe)
}

/// The token of a tenant in `dir` (`dir/<tenant>`), created owner-only when missing.
pub fn token_for(dir: &Path, tenant: &str) -> Result<String, String> {
    let path = token_path(dir, tenant);
    if let Ok(t) = std::fs::read_to_string(&path) {
        return Ok(t.trim().to_string());
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    let tok = new_token().map_err(|e| format!("cannot make a token: {e}"))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    std::io::Write::write_all(&mut f, tok.as_bytes()).map_err(|e| e.to_string())?;
    Ok(tok)
}

/// The configuration for one time-sliced GPU of a plan: its policy and slice, and per tenant the
/// sum of its replicas' shares and memory on that GPU. Tenants are recognised by tokens kept in
/// `tokens` (one file per tenant, made when missing).
pub fn from_plan(
    plan: &Plan,
    node: Option<&str>,
    gpu: Option<u32>,
    tokens: &Path,
) -> Result<Config, String> {
    let node = match node {
        Some(n) => plan
            .node(n)
            .map(|x| x.name.clone())
            .ok_or_else(|| format!("the plan has no node '{n}'"))?,
        None if plan.nodes.len() == 1 => plan.nodes[0].name.clone(),
        None => return Err("the plan has several nodes: give --node".into()),
    };
    let ts: Vec<_> = plan
        .node_gpus(&node)
        .filter(|g| g.mode == GpuMode::TimeSliced)
        .collect();
    let g = match gpu {
        Some(i) => *ts
            .iter()
            .find(|g| g.index == i)
            .ok_or_else(|| format!("GPU {i} of {node} is not time-sliced in the plan"))?,
        None if ts.len() == 1 => ts[0],
        None if ts.is_empty() => return Err(format!("{node} has no time-sliced GPU in the plan")),
        None => {
            return Err(format!(
                "{node} has {} time-sliced GPUs: give --gpu",
                ts.len()
            ))
        }
    };
    let sch = g
        .scheduler
        .as_ref()
        .ok_or_else(|| format!("GPU {} of {node} has no scheduler settings", g.index))?;
    let mut tenants: Vec<TenantConfig> = Vec::new();
    for s in &g.shares {
        match tenants.iter_mut().find(|t| t.name == s.tenant) {
            Some(t) => {
                t.share = t.share.map(|x| x + s.share);
                t.memory_limit_bytes = t.memory_limit_bytes.map(|m| m + s.memory_mib * 1024 * 1024);
            }
            None => tenants.push(TenantConfig {
                name: s.tenant.clone(),
                share: Some(s.share),
                memory_limit_bytes: Some(s.memory_mib * 1024 * 1024),
                identity: Identity {
                    token: Some(token_for(tokens, &s.tenant)?),
                    ..Identity::default()
                },
            }),
        }
    }
    let policy = match sch.policy {
        Policy::BestEffort => PolicyName::BestEffort,
        Policy::EqualShare => PolicyName::EqualShare,
        Policy::FixedShare => PolicyName::FixedShare,
    };
    if policy != PolicyName::FixedShare {
        // Equal share and best effort divide time among those present; the plan's shares are
        // nominal.
        for t in &mut tenants {
            t.share = None;
        }
    }
    let c = Config {
        policy,
        slice_ms: Some(sch.slice_ms.clamp(1, 30)),
        work_conserving: false,
        averaging_factor: 33,
        tenants,
    };
    c.validate().map_err(|e| e.to_string())?;
    Ok(c)
}
