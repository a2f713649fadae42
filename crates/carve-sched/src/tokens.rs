//! Tenant tokens: a secret per tenant in a file in a directory only its owner can enter. The scheduler recognises
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

/// Who may read a token file. Either way it lies in a directory only its owner can enter
/// (0700, checked), so no other user of the machine reaches it by its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readers {
    /// 0600: the owner only (`carve sched serve plan.json`, the agent's API token); whoever
    /// hands it to a tenant copies it.
    Owner,
    /// 0644: the file is handed to containers by a bind mount, where it is read by whatever user
    /// the pod runs as (its directory's mode does not apply there); the node agent's tokens.
    Mounted,
}

impl Readers {
    fn mode(self) -> u32 {
        match self {
            Readers::Owner => 0o600,
            Readers::Mounted => 0o644,
        }
    }
}

/// The token of a tenant in `dir` (`dir/<tenant>`), created when missing, its file given the
/// mode `readers` asks for and `dir` made owner-only (refused when another user owns it).
pub fn token_for(dir: &Path, tenant: &str, readers: Readers) -> Result<String, TokenError> {
    let path = token_path(dir, tenant);
    let fail = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| TokenError { what, path, source }
    };
    std::fs::create_dir_all(dir).map_err(fail("cannot create", dir))?;
    owner_only(dir).map_err(fail("cannot keep tokens in", dir))?;
    let mode = std::fs::Permissions::from_mode(readers.mode());
    if let Ok(t) = std::fs::read_to_string(&path) {
        std::fs::set_permissions(&path, mode).map_err(fail("cannot set the mode of", &path))?;
        return Ok(t.trim().to_string());
    }
    let tok = new_token().map_err(fail("cannot make a token for", &path))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(fail("cannot create", &path))?;
    std::io::Write::write_all(&mut f, tok.as_bytes()).map_err(fail("cannot write", &path))?;
    // Set after writing (the creation mode is masked by the umask).
    f.set_permissions(mode)
        .map_err(fail("cannot set the mode of", &path))?;
    Ok(tok)
}

/// Makes `dir` owner-only (0700); an error when another user owns it.
fn owner_only(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(dir)?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if !meta.is_dir() || meta.uid() != me {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "not a directory of user {me} (it belongs to user {})",
                meta.uid()
            ),
        ));
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Identities by token for a schedule's tenants: each tenant's token file in `dir`, made when
/// missing and readable by `readers` (the node agent and `carve sched serve plan.json` hand
/// these files to the tenants).
pub fn identities(
    schedule: Schedule,
    dir: &Path,
    readers: Readers,
) -> Result<DaemonConfig, TokenError> {
    DaemonConfig::new(schedule, |t| {
        Ok(Identity {
            token: Some(token_for(dir, &t.name, readers)?),
            ..Identity::default()
        })
    })
}
