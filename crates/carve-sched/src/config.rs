//! The scheduler's configuration: policy, slice, and per tenant its share, memory limit and how
//! its processes prove who they are. From a small YAML file, or from a plan's time-sliced GPU.

use carve_model::SourcePos;
use carve_timeslice::{Policy, Schedule, ScheduledTenant, Settings};
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};

/// How a client proves it belongs to a tenant (any one suffices).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The client presents this secret (read from a file only the tenant can read).
    pub token: Option<String>,
    /// The connecting process runs as one of these users (peer credentials).
    pub uids: Vec<u32>,
    /// The connecting process lives in a cgroup under this path (`/proc/PID/cgroup`).
    pub cgroup: Option<String>,
}

impl Identity {
    pub fn is_empty(&self) -> bool {
        self.token.is_none() && self.uids.is_empty() && self.cgroup.is_none()
    }
}

/// A tenant of the daemon: its place in the schedule, and how its processes prove who they are.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantConfig {
    pub tenant: ScheduledTenant,
    pub identity: Identity,
}

/// Who may connect to the daemon's socket (its file mode). Connecting proves nothing: a client
/// is a tenant only once its `hello` is checked against the kernel's peer credentials or a token.
/// The mode only decides whose processes get that far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketAccess {
    /// 0600: the daemon's own user only (every tenant's process runs as that user).
    Owner,
    /// 0660 and this group: the daemon's user and the group's members.
    Group(u32),
    /// 0666: any local process, including containers the socket is mounted into, whatever
    /// user they run as.
    Everyone,
}

impl SocketAccess {
    /// The socket file's permission bits.
    pub fn mode(self) -> u32 {
        match self {
            SocketAccess::Owner => 0o600,
            SocketAccess::Group(_) => 0o660,
            SocketAccess::Everyone => 0o666,
        }
    }

    /// `owner`, `everyone` or `group:<gid>` (the YAML's `socket_access`).
    pub fn parse(text: &str) -> Option<SocketAccess> {
        match text {
            "owner" => Some(SocketAccess::Owner),
            "everyone" => Some(SocketAccess::Everyone),
            _ => text
                .strip_prefix("group:")
                .and_then(|g| g.parse().ok())
                .map(SocketAccess::Group),
        }
    }
}

impl fmt::Display for SocketAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SocketAccess::Owner => f.write_str("owner"),
            SocketAccess::Group(g) => write!(f, "group:{g}"),
            SocketAccess::Everyone => f.write_str("everyone"),
        }
    }
}

/// What one `carve sched` daemon runs: a [`Schedule`] whose tenants each have an identity.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonConfig {
    pub settings: Settings,
    pub tenants: Vec<TenantConfig>,
    /// Who may connect; `None`: [`DaemonConfig::socket_access`] derives it from the identities.
    pub access: Option<SocketAccess>,
}

/// A configuration problem, located when it is one of the YAML text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub pos: Option<SourcePos>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pos {
            Some(p) => write!(f, "{p}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

fn err(message: impl Into<String>) -> ConfigError {
    ConfigError {
        pos: None,
        message: message.into(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    policy: Policy,
    #[serde(default)]
    slice_ms: Option<u32>,
    #[serde(default)]
    work_conserving: bool,
    #[serde(default)]
    averaging_factor: Option<u32>,
    #[serde(default)]
    socket_access: Option<marked_yaml::Spanned<String>>,
    tenants: Vec<RawTenant>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    name: String,
    #[serde(default)]
    share: Option<f64>,
    #[serde(default)]
    memory_limit_mib: Option<f64>,
    #[serde(default)]
    token_file: Option<PathBuf>,
    #[serde(default)]
    uids: Vec<u32>,
    #[serde(default)]
    cgroup: Option<String>,
}

impl DaemonConfig {
    /// A schedule's tenants, each with the identity `identify` gives it (e.g. a token file made
    /// for it: [`crate::tokens::identities`]).
    pub fn new<E>(
        schedule: Schedule,
        mut identify: impl FnMut(&ScheduledTenant) -> Result<Identity, E>,
    ) -> Result<DaemonConfig, E> {
        let tenants = schedule
            .tenants
            .into_iter()
            .map(|tenant| {
                Ok(TenantConfig {
                    identity: identify(&tenant)?,
                    tenant,
                })
            })
            .collect::<Result<_, E>>()?;
        Ok(DaemonConfig {
            settings: schedule.settings,
            tenants,
            access: None,
        })
    }

    /// Who may connect to the socket: the configured access, else derived from how tenants are
    /// recognised. A tenant recognised by its user or its cgroup runs as some other user than
    /// the daemon (or may: a container's), so the socket is open to everyone (0666) and the
    /// peer credentials checked at `hello` are the proof. When every tenant presents a token,
    /// the token files lie in an owner-only directory (`tokens::token_for`), so only the
    /// daemon's user can present one and the socket is owner-only (0600); whoever hands token
    /// files to other users (the node agent mounts them into containers) sets the access.
    pub fn socket_access(&self) -> SocketAccess {
        if let Some(a) = self.access {
            return a;
        }
        if self
            .tenants
            .iter()
            .any(|t| !t.identity.uids.is_empty() || t.identity.cgroup.is_some())
        {
            SocketAccess::Everyone
        } else {
            SocketAccess::Owner
        }
    }

    /// The schedule, without the identities.
    pub fn schedule(&self) -> Schedule {
        Schedule {
            settings: self.settings.clone(),
            tenants: self.tenants.iter().map(|t| t.tenant.clone()).collect(),
        }
    }

    /// Reads the YAML form. Token files are read now (relative to `base`).
    pub fn from_yaml(text: &str, base: &Path) -> Result<DaemonConfig, ConfigError> {
        let opts = marked_yaml::LoaderOptions::default()
            .error_on_duplicate_keys(true)
            .toplevel_mapping();
        let raw: RawConfig =
            marked_yaml::from_yaml_with_options(0, text, opts).map_err(|e| match e {
                marked_yaml::FromYamlError::ParseYaml(le) => {
                    let d = carve_migparted::load_error(&le);
                    ConfigError {
                        pos: Some(d.pos),
                        message: d.message,
                    }
                }
                marked_yaml::FromYamlError::FromNode(ne) => ConfigError {
                    pos: ne.start_mark().map(|m| carve_migparted::marker_pos(&m)),
                    message: ne.to_string(),
                },
            })?;
        let access = match &raw.socket_access {
            Some(a) => Some(SocketAccess::parse(a.as_str()).ok_or_else(|| ConfigError {
                pos: a.span().start().map(carve_migparted::marker_pos),
                message: format!(
                    "socket_access: '{}' is not owner, everyone or group:<gid>",
                    a.as_str()
                ),
            })?),
            None => None,
        };
        let mut tenants = Vec::new();
        for t in raw.tenants {
            let token = match &t.token_file {
                Some(p) => {
                    let p = if p.is_absolute() {
                        p.clone()
                    } else {
                        base.join(p)
                    };
                    let s = std::fs::read_to_string(&p).map_err(|e| {
                        err(format!(
                            "tenant {}: cannot read token file {}: {e}",
                            t.name,
                            p.display()
                        ))
                    })?;
                    let s = s.trim().to_string();
                    if s.len() < 16 {
                        return Err(err(format!(
                            "tenant {}: the token in {} is shorter than 16 characters",
                            t.name,
                            p.display()
                        )));
                    }
                    Some(s)
                }
                None => None,
            };
            tenants.push(TenantConfig {
                tenant: ScheduledTenant {
                    name: t.name,
                    share: t.share,
                    memory_limit_bytes: t.memory_limit_mib.map(|m| (m * 1024.0 * 1024.0) as u64),
                },
                identity: Identity {
                    token,
                    uids: t.uids,
                    cgroup: t.cgroup,
                },
            });
        }
        let c = DaemonConfig {
            settings: Settings {
                policy: raw.policy,
                slice_ns: raw.slice_ms.map(carve_timeslice::slice_ns_from_ms),
                work_conserving: raw.work_conserving,
                averaging_factor: raw
                    .averaging_factor
                    .unwrap_or(carve_timeslice::DEFAULT_AVERAGING_FACTOR),
            },
            tenants,
            access,
        };
        c.validate()?;
        Ok(c)
    }

    /// The schedule's rules ([`Schedule::validate`]), and every tenant recognisable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.schedule().validate().map_err(|e| err(e.0))?;
        for t in &self.tenants {
            if t.identity.is_empty() {
                return Err(err(format!(
                    "tenant {}: no way to recognise its processes: give token_file, uids or cgroup",
                    t.tenant.name
                )));
            }
        }
        Ok(())
    }
}
