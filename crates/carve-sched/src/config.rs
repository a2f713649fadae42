//! The scheduler's configuration: policy, slice, and per tenant its share, memory limit and how
//! its processes prove who they are. From a small YAML file, or from a plan's time-sliced GPU.

use carve_model::SourcePos;
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyName {
    BestEffort,
    EqualShare,
    FixedShare,
}

impl PolicyName {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyName::BestEffort => "best-effort",
            PolicyName::EqualShare => "equal-share",
            PolicyName::FixedShare => "fixed-share",
        }
    }
}

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

#[derive(Debug, Clone, PartialEq)]
pub struct TenantConfig {
    pub name: String,
    pub share: Option<f64>,
    pub memory_limit_bytes: Option<u64>,
    pub identity: Identity,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub policy: PolicyName,
    /// `None`: vGPU's default (2 ms up to 8 tenants, 1 ms above).
    pub slice_ms: Option<u32>,
    pub work_conserving: bool,
    pub averaging_factor: u32,
    pub tenants: Vec<TenantConfig>,
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
    policy: PolicyName,
    #[serde(default)]
    slice_ms: Option<u32>,
    #[serde(default)]
    work_conserving: bool,
    #[serde(default)]
    averaging_factor: Option<u32>,
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

impl Config {
    /// Reads the YAML form. Token files are read now (relative to `base`).
    pub fn from_yaml(text: &str, base: &Path) -> Result<Config, ConfigError> {
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
                name: t.name,
                share: t.share,
                memory_limit_bytes: t.memory_limit_mib.map(|m| (m * 1024.0 * 1024.0) as u64),
                identity: Identity {
                    token,
                    uids: t.uids,
                    cgroup: t.cgroup,
                },
            });
        }
        let c = Config {
            policy: raw.policy,
            slice_ms: raw.slice_ms,
            work_conserving: raw.work_conserving,
            averaging_factor: raw.averaging_factor.unwrap_or(33),
            tenants,
        };
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.tenants.is_empty() {
            return Err(err("no tenants"));
        }
        if let Some(s) = self.slice_ms {
            if !(1..=30).contains(&s) {
                return Err(err(format!("slice_ms must be 1 to 30, not {s}")));
            }
        }
        if !(1..=60).contains(&self.averaging_factor) {
            return Err(err(format!(
                "averaging_factor must be 1 to 60, not {}",
                self.averaging_factor
            )));
        }
        let mut sum = 0.0;
        for (i, t) in self.tenants.iter().enumerate() {
            if t.name.trim().is_empty() {
                return Err(err("a tenant needs a name"));
            }
            if self.tenants[..i].iter().any(|o| o.name == t.name) {
                return Err(err(format!("tenant {} is listed twice", t.name)));
            }
            if let Some(s) = t.share {
                if !(s > 0.0 && s <= 1.0) {
                    return Err(err(format!(
                        "tenant {}: share must be in (0, 1], not {s}",
                        t.name
                    )));
                }
                sum += s;
            }
            if let Some(m) = t.memory_limit_bytes {
                if m == 0 {
                    return Err(err(format!(
                        "tenant {}: memory_limit_mib must be positive",
                        t.name
                    )));
                }
            }
            if t.identity.is_empty() {
                return Err(err(format!(
                    "tenant {}: no way to recognise its processes: give token_file, uids or cgroup",
                    t.name
                )));
            }
        }
        if sum > 1.0 + 1e-9 {
            return Err(err(format!("the shares add up to {sum:.3}, more than 1")));
        }
        Ok(())
    }
}
