//! Tenant tokens: a secret per tenant in a file only its owner can read. The scheduler recognises
//! a tenant's processes by it; the node agent mounts the file into the tenant's containers.

use crate::config::{DaemonConfig, Identity};
use carve_timeslice::Schedule;
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

/// A token file that could not be read or made.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}: {source}", path.display())]
pub struct TokenError {
    what: &'static str,
    path: std::path::PathBuf,
    source: std::io::Error,
}

/// The token of a tenant in `dir` (`dir/<tenant>`), created owner-only when missing.
pub fn token_for(dir: &Path, tenant: &str) -> Result<String, TokenError> {
    let path = token_path(dir, tenant);
    if let Ok(t) = std::fs::read_to_string(&path) {
        return Ok(t.trim().to_string());
    }
    let fail = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| TokenError { what, path, source }
    };
    std::fs::create_dir_all(dir).map_err(fail("cannot create", dir))?;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    let tok = new_token().map_err(fail("cannot make a token for", &path))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(fail("cannot create", &path))?;
    std::io::Write::write_all(&mut f, tok.as_bytes()).map_err(fail("cannot write", &path))?;
    Ok(tok)
}

/// Identities by token for a schedule's tenants: each tenant's token file in `dir`, made
/// owner-only when missing (the node agent and `carve sched serve plan.json` hand these files to
/// the tenants).
pub fn identities(schedule: Schedule, dir: &Path) -> Result<DaemonConfig, TokenError> {
    DaemonConfig::new(schedule, |t| {
        Ok(Identity {
            token: Some(token_for(dir, &t.name)?),
            ..Identity::default()
        })
    })
}
