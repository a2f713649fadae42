//! What one time-shared GPU runs: the policy [`Settings`] and its tenants, each with a share
//! (used by fixed share) and a memory limit. The scheduler daemon (`carve sched`), the node
//! agent, the `carve-sched.yaml` renderer and the simulator all take a [`Schedule`];
//! `carve_plan::schedule` makes one from a plan, the daemon's YAML reader from a file. One set of
//! rules checks it, [`Schedule::validate`], wherever it comes from.

use crate::{Policy, Settings, SettingsError};
use serde::{Deserialize, Serialize};

/// One tenant of a time-shared GPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduledTenant {
    pub name: String,
    /// Its share of GPU time, in (0, 1]. Fixed share only: tenants without one split what the
    /// others leave; equal share and best effort ignore it.
    pub share: Option<f64>,
    /// Device memory all its processes together may hold, bytes (`None`: no limit).
    pub memory_limit_bytes: Option<u64>,
}

/// A time-shared GPU's scheduler: settings and tenants, in scheduling order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub settings: Settings,
    pub tenants: Vec<ScheduledTenant>,
}

impl Schedule {
    /// The rules every schedule keeps: valid settings (slice 1–30 ms, averaging factor 1–60), at
    /// least one tenant, names given and unique, shares in (0, 1] adding up to at most 1,
    /// memory limits positive.
    pub fn validate(&self) -> Result<(), SettingsError> {
        self.settings.validate()?;
        if self.tenants.is_empty() {
            return Err(SettingsError("no tenants".into()));
        }
        let mut sum = 0.0;
        for (i, t) in self.tenants.iter().enumerate() {
            if t.name.trim().is_empty() {
                return Err(SettingsError("a tenant needs a name".into()));
            }
            if self.tenants[..i].iter().any(|o| o.name == t.name) {
                return Err(SettingsError(format!("tenant {} is listed twice", t.name)));
            }
            if let Some(s) = t.share {
                if !(s.is_finite() && s > 0.0 && s <= 1.0) {
                    return Err(SettingsError(format!(
                        "tenant {}: share must be in (0, 1], not {s}",
                        t.name
                    )));
                }
                sum += s;
            }
            if t.memory_limit_bytes == Some(0) {
                return Err(SettingsError(format!(
                    "tenant {}: the memory limit must be positive",
                    t.name
                )));
            }
        }
        if sum > 1.0 + 1e-9 {
            return Err(SettingsError(format!(
                "the shares add up to {sum:.3}, more than 1"
            )));
        }
        Ok(())
    }

    /// The share the policy aims to give `tenant` with every tenant registered: fixed share its
    /// share (tenants without one split what is left), equal share 1/N, best effort 1/N for
    /// reference. `None` for an unknown tenant.
    pub fn target_share(&self, tenant: &str) -> Option<f64> {
        let t = self.tenants.iter().find(|t| t.name == tenant)?;
        let n = self.tenants.len() as f64;
        Some(match self.settings.policy {
            Policy::FixedShare => match t.share {
                Some(s) => s,
                None => {
                    let given: f64 = self.tenants.iter().filter_map(|t| t.share).sum();
                    let rest = self.tenants.iter().filter(|t| t.share.is_none()).count();
                    (1.0 - given).max(0.0) / rest.max(1) as f64
                }
            },
            Policy::EqualShare | Policy::BestEffort => 1.0 / n,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(policy: Policy, shares: &[Option<f64>]) -> Schedule {
        Schedule {
            settings: Settings {
                policy,
                ..Settings::default()
            },
            tenants: shares
                .iter()
                .enumerate()
                .map(|(i, s)| ScheduledTenant {
                    name: format!("t{i}"),
                    share: *s,
                    memory_limit_bytes: None,
                })
                .collect(),
        }
    }

    #[test]
    fn rules() {
        assert!(sched(Policy::FixedShare, &[Some(0.5), None])
            .validate()
            .is_ok());
        let e = |s: Schedule| s.validate().unwrap_err().to_string();
        assert!(e(sched(Policy::FixedShare, &[])).contains("no tenants"));
        assert!(e(sched(Policy::FixedShare, &[Some(0.7), Some(0.4)])).contains("more than 1"));
        assert!(e(sched(Policy::FixedShare, &[Some(0.0)])).contains("(0, 1]"));
        assert!(e(sched(Policy::FixedShare, &[Some(f64::NAN)])).contains("(0, 1]"));
        let mut twice = sched(Policy::EqualShare, &[None, None]);
        twice.tenants[1].name = "t0".into();
        assert!(e(twice).contains("twice"));
        let mut slice = sched(Policy::EqualShare, &[None]);
        slice.settings.slice_ns = Some(31_000_000);
        assert!(e(slice).contains("1 to 30 ms"));
    }

    #[test]
    fn target_shares() {
        let s = sched(Policy::FixedShare, &[Some(0.5), None, None]);
        assert_eq!(s.target_share("t0"), Some(0.5));
        assert_eq!(s.target_share("t1"), Some(0.25));
        assert_eq!(s.target_share("nobody"), None);
        let s = sched(Policy::EqualShare, &[Some(0.5), None]);
        assert_eq!(s.target_share("t0"), Some(0.5));
        assert_eq!(s.target_share("t1"), Some(0.5));
    }

    #[test]
    fn policy_names_round_trip_and_unknown_ones_fail() {
        for p in Policy::ALL {
            assert_eq!(p.as_str().parse::<Policy>().unwrap(), p);
            let j = format!("\"{}\"", p.as_str());
            assert_eq!(serde_json_like(&j), Some(p));
        }
        let e = "equal".parse::<Policy>().unwrap_err().to_string();
        assert!(e.contains("best-effort, equal-share or fixed-share"), "{e}");
    }

    /// Deserialises a quoted policy name through serde's derive (no JSON crate here).
    fn serde_json_like(quoted: &str) -> Option<Policy> {
        use serde::de::value::{Error, StrDeserializer};
        use serde::de::IntoDeserializer;
        let d: StrDeserializer<'_, Error> = quoted.trim_matches('"').into_deserializer();
        Policy::deserialize(d).ok()
    }
}
