//! The tenancy file: the fleet (nodes and their GPUs) and the tenants, read with the position of
//! every value and checked against the catalog. Pure: text in, model or located errors out.
//!
//! ```yaml
//! fleet:
//!   - node: node-a
//!     platform: kubernetes          # kubernetes | vsphere | bare-metal
//!     gpus: [H100-80GB, 2xA100-40GB, {model: L40S, memory_gb: 48}]
//!     licence: vcs                  # vGPU edition on hypervisor nodes (optional)
//! tenants:
//!   - name: search
//!     workload: inference           # inference | training | interactive | desktop | dev | batch
//!     memory_gb: 10                 # per replica
//!     replicas: 2
//!     slo: strict                   # strict | relaxed (or p95_ms: 50)
//! ```

use crate::plan::Platform;
use carve_migparted::marker_pos;
use carve_model::suggest::did_you_mean;
use carve_model::{Catalog, SourcePos, MAX_GPUS_PER_NODE};
use marked_yaml::{FromYamlError, Spanned};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;

/// A located problem with the tenancy file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InputError {
    /// Where, when the YAML reader knows.
    pub pos: Option<SourcePos>,
    pub message: String,
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pos {
            Some(p) => write!(f, "{p}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Workload {
    Inference,
    Training,
    Interactive,
    Desktop,
    Dev,
    Batch,
}

impl Workload {
    pub const ALL: [Workload; 6] = [
        Workload::Inference,
        Workload::Training,
        Workload::Interactive,
        Workload::Desktop,
        Workload::Dev,
        Workload::Batch,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Workload::Inference => "inference",
            Workload::Training => "training",
            Workload::Interactive => "interactive",
            Workload::Desktop => "desktop",
            Workload::Dev => "dev",
            Workload::Batch => "batch",
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The latency objective.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Slo {
    Strict,
    Relaxed,
    /// A p95 latency target in milliseconds (counts as strict).
    P95Ms(f64),
}

impl Slo {
    /// Strict, or a latency target.
    pub fn is_strict(self) -> bool {
        !matches!(self, Slo::Relaxed)
    }
}

impl fmt::Display for Slo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Slo::Strict => f.write_str("strict"),
            Slo::Relaxed => f.write_str("relaxed"),
            Slo::P95Ms(ms) => write!(f, "p95 ≤ {ms} ms"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    Hard,
    Soft,
}

/// One GPU of the fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetGpu {
    /// Index into the catalog, for MIG-capable models.
    pub model: Option<usize>,
    /// Catalog key, or the name given for a GPU outside the catalog.
    pub name: String,
    pub memory_mib: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FleetNode {
    pub name: String,
    pub platform: Platform,
    /// Canonical licence edition name (`vCS`).
    pub licence: Option<String>,
    pub gpus: Vec<FleetGpu>,
    pub pos: Option<SourcePos>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    pub name: String,
    pub workload: Workload,
    /// Memory per replica, MiB (from `memory_gb`, or the named profile's nominal size).
    pub memory_mib: Option<u64>,
    /// Compute slices wanted.
    pub compute: Option<u8>,
    /// A MIG profile named directly.
    pub profile: Option<String>,
    /// GPU-time share (0, 1].
    pub share: Option<f64>,
    pub replicas: u32,
    pub slo: Slo,
    pub isolation: Isolation,
    pub vm: bool,
    pub media: bool,
    pub spread: bool,
    /// The request load, for `carve simulate` (a default by workload when not given).
    pub load: Option<LoadSpec>,
    pub pos: Option<SourcePos>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tenancy {
    pub nodes: Vec<FleetNode>,
    pub tenants: Vec<Tenant>,
}

impl Tenancy {
    /// Every GPU as (node index, GPU index on the node, GPU).
    pub fn gpus(&self) -> impl Iterator<Item = (usize, u32, &FleetGpu)> {
        self.nodes.iter().enumerate().flat_map(|(n, node)| {
            node.gpus
                .iter()
                .enumerate()
                .map(move |(i, g)| (n, i as u32, g))
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The file as written.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    fleet: Spanned<Vec<Spanned<RawNode>>>,
    tenants: Spanned<Vec<Spanned<RawTenant>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    node: Spanned<String>,
    #[serde(default)]
    platform: Option<Spanned<String>>,
    gpus: Spanned<Vec<Spanned<RawGpu>>>,
    #[serde(default, alias = "license")]
    licence: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawGpu {
    Name(String),
    // Untagged content reaches these as text (YAML scalars), so numbers are parsed here.
    Custom {
        model: String,
        memory_gb: String,
        #[serde(default)]
        count: Option<String>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    name: Spanned<String>,
    workload: Spanned<String>,
    #[serde(default)]
    memory_gb: Option<Spanned<f64>>,
    #[serde(default)]
    compute: Option<Spanned<i64>>,
    #[serde(default)]
    profile: Option<Spanned<String>>,
    #[serde(default)]
    share: Option<Spanned<f64>>,
    #[serde(default)]
    replicas: Option<Spanned<i64>>,
    #[serde(default)]
    slo: Option<Spanned<String>>,
    #[serde(default)]
    p95_ms: Option<Spanned<f64>>,
    #[serde(default)]
    isolation: Option<Spanned<String>>,
    #[serde(default)]
    vm: Option<bool>,
    #[serde(default)]
    media: Option<bool>,
    #[serde(default)]
    spread: Option<bool>,
    #[serde(default)]
    load: Option<Spanned<RawLoad>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLoad {
    #[serde(default)]
    arrival: Option<Spanned<String>>,
    #[serde(default)]
    rate: Option<f64>,
    #[serde(default)]
    on_s: Option<f64>,
    #[serde(default)]
    off_s: Option<f64>,
    #[serde(default)]
    clients: Option<u32>,
    #[serde(default)]
    think_ms: Option<f64>,
    work_ms: f64,
    #[serde(default)]
    service: Option<Spanned<String>>,
    #[serde(default)]
    cv: Option<f64>,
    #[serde(default)]
    memory_bound: Option<f64>,
}

/// How requests arrive (per tenant, all replicas together).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ArrivalSpec {
    Poisson { rate: f64 },
    Bursty { rate: f64, on_s: f64, off_s: f64 },
    Closed { clients: u32, think_ms: f64 },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ServiceSpec {
    Deterministic,
    Exponential,
    Lognormal { cv: f64 },
}

/// A tenant's request load for the simulator.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadSpec {
    pub arrival: ArrivalSpec,
    /// Mean GPU work per request on a whole GPU, ms.
    pub work_ms: f64,
    pub service: ServiceSpec,
    pub memory_bound: f64,
}

impl LoadSpec {
    /// The load assumed for a workload when the tenancy file gives none.
    pub fn default_for(w: Workload) -> LoadSpec {
        let (arrival, work_ms, service) = match w {
            Workload::Inference => (
                ArrivalSpec::Poisson { rate: 10.0 },
                4.0,
                ServiceSpec::Lognormal { cv: 0.5 },
            ),
            Workload::Interactive | Workload::Dev => (
                ArrivalSpec::Bursty {
                    rate: 20.0,
                    on_s: 5.0,
                    off_s: 25.0,
                },
                10.0,
                ServiceSpec::Exponential,
            ),
            Workload::Desktop => (
                ArrivalSpec::Poisson { rate: 60.0 },
                2.0,
                ServiceSpec::Deterministic,
            ),
            Workload::Training | Workload::Batch => (
                ArrivalSpec::Closed {
                    clients: 1,
                    think_ms: 0.0,
                },
                50.0,
                ServiceSpec::Deterministic,
            ),
        };
        LoadSpec {
            arrival,
            work_ms,
            service,
            memory_bound: 0.3,
        }
    }
}

fn load_spec(raw: &Spanned<RawLoad>, errors: &mut Vec<InputError>) -> Option<LoadSpec> {
    let p = pos(raw);
    let bad = |errors: &mut Vec<InputError>, m: String| {
        errors.push(InputError { pos: p, message: m });
        None
    };
    let pos_num = |x: f64| x.is_finite() && x > 0.0;
    if !pos_num(raw.work_ms) || raw.work_ms > 3.6e6 {
        return bad(
            errors,
            format!(
                "load: work_ms must be a positive number of ms, not {}",
                raw.work_ms
            ),
        );
    }
    let kinds = [("poisson", 0u8), ("bursty", 1), ("closed", 2)];
    let kind = match &raw.arrival {
        Some(a) => one_of(a, "arrival", &kinds, errors)?,
        None => 0,
    };
    let rate = raw.rate.unwrap_or(0.0);
    let arrival = match kind {
        0 | 1 if !(pos_num(rate) && rate <= 1e6) => {
            return bad(
                errors,
                "load: poisson and bursty arrivals need a positive rate (per second)".into(),
            )
        }
        0 => ArrivalSpec::Poisson { rate },
        1 => {
            let (on, off) = (raw.on_s.unwrap_or(1.0), raw.off_s.unwrap_or(1.0));
            if !(pos_num(on) && off.is_finite() && off >= 0.0) {
                return bad(
                    errors,
                    "load: on_s must be positive and off_s not negative".into(),
                );
            }
            ArrivalSpec::Bursty {
                rate,
                on_s: on,
                off_s: off,
            }
        }
        _ => {
            let clients = raw.clients.unwrap_or(1);
            let think = raw.think_ms.unwrap_or(0.0);
            if clients == 0 || clients > 100_000 || !(think.is_finite() && think >= 0.0) {
                return bad(
                    errors,
                    "load: a closed loop needs 1 to 100000 clients and a think_ms ≥ 0".into(),
                );
            }
            ArrivalSpec::Closed {
                clients,
                think_ms: think,
            }
        }
    };
    let svc = [("exponential", 0u8), ("deterministic", 1), ("lognormal", 2)];
    let service = match raw
        .service
        .as_ref()
        .map(|s| one_of(s, "service distribution", &svc, errors))
    {
        Some(None) => return None,
        Some(Some(1)) => ServiceSpec::Deterministic,
        Some(Some(2)) => {
            let cv = raw.cv.unwrap_or(1.0);
            if !(pos_num(cv) && cv <= 100.0) {
                return bad(errors, format!("load: cv must be positive, not {cv}"));
            }
            ServiceSpec::Lognormal { cv }
        }
        _ => ServiceSpec::Exponential,
    };
    let mb = raw.memory_bound.unwrap_or(0.3);
    if !(0.0..=1.0).contains(&mb) {
        return bad(
            errors,
            format!("load: memory_bound must be between 0 and 1, not {mb}"),
        );
    }
    Some(LoadSpec {
        arrival,
        work_ms: raw.work_ms,
        service,
        memory_bound: mb,
    })
}

/// Most replicas of one tenant (keeps input sane). A node's GPUs are limited by
/// [`carve_model::MAX_GPUS_PER_NODE`], as everywhere GPU lists are read.
pub const MAX_REPLICAS: i64 = 1_000_000;

fn pos<T>(s: &Spanned<T>) -> Option<SourcePos> {
    s.span().start().map(marker_pos)
}

fn unknown_field(field: &str, expected: &[&str]) -> String {
    match did_you_mean(field, expected.iter().copied()).first() {
        Some(best) => format!("unknown field `{field}`; did you mean `{}`?", best.name),
        None => format!(
            "unknown field `{field}`; expected one of {}",
            expected.join(", ")
        ),
    }
}

/// Where `key:` first appears as a mapping key (for errors the YAML reader gives no position).
fn key_pos(text: &str, key: &str) -> Option<SourcePos> {
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start().trim_start_matches("- ");
        let indent = line.len() - t.len();
        if let Some(rest) = t.strip_prefix(key) {
            if rest.trim_start().starts_with(':') {
                return Some(SourcePos::new(i + 1, indent + 1));
            }
        }
    }
    None
}

fn yaml_error(e: FromYamlError, text: &str) -> InputError {
    match e {
        FromYamlError::ParseYaml(le) => {
            let d = carve_migparted::load_error(&le);
            InputError {
                pos: Some(d.pos),
                message: d.message,
            }
        }
        FromYamlError::FromNode(ne) => {
            let pos = ne.start_mark().map(|m| marker_pos(&m));
            let message = match &*ne {
                marked_yaml::spanned_serde::Error::UnknownFieldError(field, expected, _) => {
                    if pos.is_none() {
                        return InputError {
                            pos: key_pos(text, field),
                            message: unknown_field(field, expected),
                        };
                    }
                    let mut m = format!("unknown field `{field}`");
                    match did_you_mean(field, expected.iter().copied()).first() {
                        Some(best) => m.push_str(&format!("; did you mean `{}`?", best.name)),
                        None => m.push_str(&format!("; expected one of {}", expected.join(", "))),
                    }
                    m
                }
                other => match ne.path() {
                    Some(p) if !p.is_empty() && p != "." => format!("{p}: {other}"),
                    _ => other.to_string(),
                },
            };
            InputError { pos, message }
        }
    }
}

fn one_of<T: Copy>(
    s: &Spanned<String>,
    what: &str,
    options: &[(&'static str, T)],
    errors: &mut Vec<InputError>,
) -> Option<T> {
    let v = s.trim().to_ascii_lowercase();
    if let Some((_, t)) = options.iter().find(|(n, _)| *n == v) {
        return Some(*t);
    }
    let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
    let hint = did_you_mean(&v, names.iter().copied())
        .first()
        .map(|b| format!("did you mean `{}`?", b.name))
        .unwrap_or_else(|| format!("expected one of {}", names.join(", ")));
    errors.push(InputError {
        pos: pos(s),
        message: format!("unknown {what} `{}`; {hint}", s.as_str()),
    });
    None
}

fn gib_to_mib(gb: f64) -> u64 {
    (gb * 1024.0).round() as u64
}

/// Reads and checks a tenancy file. All errors found are returned, each located.
pub fn parse(text: &str, catalog: &Catalog) -> Result<Tenancy, Vec<InputError>> {
    let opts = marked_yaml::LoaderOptions::default()
        .error_on_duplicate_keys(true)
        .toplevel_mapping();
    let raw: RawFile = marked_yaml::from_yaml_with_options(0, text, opts)
        .map_err(|e| vec![yaml_error(e, text)])?;
    let mut errors = Vec::new();
    let platforms = [
        ("kubernetes", Platform::Kubernetes),
        ("k8s", Platform::Kubernetes),
        ("vsphere", Platform::Vsphere),
        ("bare-metal", Platform::BareMetal),
        ("baremetal", Platform::BareMetal),
    ];

    // Fleet.
    let mut nodes: Vec<FleetNode> = Vec::new();
    if raw.fleet.is_empty() {
        errors.push(InputError {
            pos: pos(&raw.fleet),
            message: "the fleet has no nodes".into(),
        });
    }
    for rn in raw.fleet.iter() {
        let name = rn.node.trim().to_string();
        if name.is_empty() {
            errors.push(InputError {
                pos: pos(&rn.node),
                message: "a node needs a name".into(),
            });
        }
        if let Some(prev) = nodes.iter().find(|n| n.name == name) {
            errors.push(InputError {
                pos: pos(&rn.node),
                message: format!(
                    "node `{name}` is listed twice (first at line {})",
                    prev.pos.map_or(0, |p| p.line)
                ),
            });
        }
        let platform = match &rn.platform {
            Some(p) => {
                one_of(p, "platform", &platforms, &mut errors).unwrap_or(Platform::Kubernetes)
            }
            None => Platform::Kubernetes,
        };
        let licence = rn.licence.as_ref().and_then(|l| match catalog.edition(l) {
            Ok(e) => Some(e.name.clone()),
            Err(e) => {
                errors.push(InputError {
                    pos: pos(l),
                    message: e.to_string(),
                });
                None
            }
        });
        let mut gpus = Vec::new();
        if rn.gpus.is_empty() {
            errors.push(InputError {
                pos: pos(&rn.gpus),
                message: format!("node `{name}` has no GPUs"),
            });
        }
        for g in rn.gpus.iter() {
            let p = pos(g);
            // Whole entries only: a node never holds more than the limit.
            let room = |count: u32, errors: &mut Vec<InputError>, gpus: &Vec<FleetGpu>| {
                let ok = gpus.len() + count as usize <= MAX_GPUS_PER_NODE as usize;
                if !ok {
                    errors.push(InputError {
                        pos: p,
                        message: format!(
                            "node `{name}` has more than {MAX_GPUS_PER_NODE} GPUs, the most one node holds"
                        ),
                    });
                }
                ok
            };
            match &**g {
                RawGpu::Name(s) => {
                    let (count, model) = match carve_model::split_count(s) {
                        Ok(c) => c,
                        Err(e) => {
                            errors.push(InputError {
                                pos: p,
                                message: format!(
                                    "`{}`: the GPU count must be 1 to {MAX_GPUS_PER_NODE}",
                                    e.entry
                                ),
                            });
                            continue;
                        }
                    };
                    if !room(count, &mut errors, &gpus) {
                        break;
                    }
                    match catalog.gpu(model) {
                        Ok(m) => {
                            let idx = catalog.gpus.iter().position(|x| x.key == m.key);
                            for _ in 0..count {
                                gpus.push(FleetGpu {
                                    model: idx,
                                    name: m.key.clone(),
                                    memory_mib: m.memory_gb as u64 * 1024,
                                });
                            }
                        }
                        Err(e) => errors.push(InputError {
                            pos: p,
                            message: format!(
                                "{e} (a GPU without MIG is written {{model: NAME, memory_gb: N}})"
                            ),
                        }),
                    }
                }
                RawGpu::Custom {
                    model,
                    memory_gb,
                    count,
                } => {
                    let count = match count.as_deref().map(|c| c.trim().parse::<u32>()) {
                        None => 1,
                        Some(Ok(c)) => c,
                        Some(Err(_)) => 0,
                    };
                    let memory_gb = &memory_gb.trim().parse::<f64>().unwrap_or(f64::NAN);
                    if !(1..=MAX_GPUS_PER_NODE).contains(&count) {
                        errors.push(InputError {
                            pos: p,
                            message: format!("`count` must be 1 to {MAX_GPUS_PER_NODE}"),
                        });
                        continue;
                    }
                    if !(memory_gb.is_finite() && *memory_gb > 0.0 && *memory_gb <= 100_000.0) {
                        errors.push(InputError {
                            pos: p,
                            message: format!("`{model}`: memory_gb must be positive"),
                        });
                        continue;
                    }
                    if !room(count, &mut errors, &gpus) {
                        break;
                    }
                    // A catalog model written as a map keeps its MIG abilities.
                    let idx = catalog
                        .gpu(model)
                        .ok()
                        .and_then(|m| catalog.gpus.iter().position(|x| x.key == m.key));
                    for _ in 0..count {
                        gpus.push(FleetGpu {
                            model: idx,
                            name: idx
                                .map(|i| catalog.gpus[i].key.clone())
                                .unwrap_or_else(|| model.trim().to_string()),
                            memory_mib: gib_to_mib(*memory_gb),
                        });
                    }
                }
            }
        }
        nodes.push(FleetNode {
            name,
            platform,
            licence,
            gpus,
            pos: pos(rn),
        });
    }

    // Tenants.
    let fleet_models: Vec<usize> = {
        let mut v: Vec<usize> = nodes
            .iter()
            .flat_map(|n| n.gpus.iter().filter_map(|g| g.model))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let workloads: Vec<(&'static str, Workload)> =
        Workload::ALL.iter().map(|w| (w.as_str(), *w)).collect();
    let mut tenants: Vec<Tenant> = Vec::new();
    let mut seen: BTreeMap<String, Option<SourcePos>> = BTreeMap::new();
    if raw.tenants.is_empty() {
        errors.push(InputError {
            pos: pos(&raw.tenants),
            message: "there are no tenants".into(),
        });
    }
    for rt in raw.tenants.iter() {
        let tp = pos(rt);
        let name = rt.name.trim().to_string();
        if name.is_empty() || name.chars().any(|c| c.is_control()) {
            errors.push(InputError {
                pos: pos(&rt.name),
                message: "a tenant needs a name (printable, not empty)".into(),
            });
        }
        if let Some(prev) = seen.get(&name) {
            errors.push(InputError {
                pos: pos(&rt.name),
                message: format!(
                    "tenant `{name}` is listed twice (first at line {})",
                    prev.map_or(0, |p| p.line)
                ),
            });
        }
        seen.insert(name.clone(), pos(&rt.name));
        let workload = one_of(&rt.workload, "workload", &workloads, &mut errors);
        let memory_mib = match &rt.memory_gb {
            Some(m) if m.is_finite() && **m > 0.0 && **m <= 100_000.0 => Some(gib_to_mib(**m)),
            Some(m) => {
                errors.push(InputError {
                    pos: pos(m),
                    message: format!("memory_gb must be a positive size, not {}", **m),
                });
                None
            }
            None => None,
        };
        let compute = match &rt.compute {
            Some(c) if (1..=32).contains(&**c) => Some(**c as u8),
            Some(c) => {
                errors.push(InputError {
                    pos: pos(c),
                    message: format!("compute must be 1 to 32 compute slices, not {}", **c),
                });
                None
            }
            None => None,
        };
        let profile = match &rt.profile {
            Some(p) => {
                let q = p.trim();
                let known = fleet_models
                    .iter()
                    .any(|&m| catalog.gpus[m].profile_index(q).is_some());
                if known {
                    Some(q.to_string())
                } else {
                    let names: Vec<&str> = fleet_models
                        .iter()
                        .flat_map(|&m| catalog.gpus[m].profiles.iter().map(|p| p.name.as_str()))
                        .collect();
                    let hint = did_you_mean(q, names.iter().copied())
                        .first()
                        .map(|b| format!("; did you mean `{}`?", b.name))
                        .unwrap_or_default();
                    errors.push(InputError {
                        pos: pos(p),
                        message: if fleet_models.is_empty() {
                            format!("profile `{q}`: no GPU in the fleet supports MIG")
                        } else {
                            format!("unknown MIG profile `{q}` for the GPUs of this fleet{hint}")
                        },
                    });
                    None
                }
            }
            None => None,
        };
        let share = match &rt.share {
            Some(s) if s.is_finite() && **s > 0.0 && **s <= 1.0 => Some(**s),
            Some(s) => {
                errors.push(InputError {
                    pos: pos(s),
                    message: format!("share must be in (0, 1], not {}", **s),
                });
                None
            }
            None => None,
        };
        let replicas = match &rt.replicas {
            Some(r) if (1..=MAX_REPLICAS).contains(&**r) => **r as u32,
            Some(r) => {
                errors.push(InputError {
                    pos: pos(r),
                    message: format!("replicas must be 1 to {MAX_REPLICAS}, not {}", **r),
                });
                1
            }
            None => 1,
        };
        let mut slo = match &rt.slo {
            Some(s) => one_of(
                s,
                "slo",
                &[("strict", Slo::Strict), ("relaxed", Slo::Relaxed)],
                &mut errors,
            )
            .unwrap_or(Slo::Relaxed),
            None => Slo::Relaxed,
        };
        if let Some(p) = &rt.p95_ms {
            if p.is_finite() && **p > 0.0 {
                slo = Slo::P95Ms(**p);
            } else {
                errors.push(InputError {
                    pos: pos(p),
                    message: format!(
                        "p95_ms must be a positive number of milliseconds, not {}",
                        **p
                    ),
                });
            }
        }
        let isolation = match &rt.isolation {
            Some(s) => one_of(
                s,
                "isolation",
                &[("hard", Isolation::Hard), ("soft", Isolation::Soft)],
                &mut errors,
            )
            .unwrap_or(Isolation::Soft),
            None => Isolation::Soft,
        };
        // Only when neither is written: a `profile` or `memory_gb` that is written but wrong has
        // its own error, at its own place, and is the cause to show (this error, at the tenant's
        // start, would sort before it).
        if rt.memory_gb.is_none() && rt.profile.is_none() {
            errors.push(InputError {
                pos: tp,
                message: format!("tenant `{name}` needs `memory_gb` (per replica) or a `profile`"),
            });
        }
        // A named profile's nominal memory stands in for memory_gb.
        let memory_mib = memory_mib.or_else(|| {
            profile.as_deref().and_then(|p| {
                carve_model::profile::ProfileName::parse(p).map(|n| n.memory_gb as u64 * 1024)
            })
        });
        if let Some(w) = workload {
            tenants.push(Tenant {
                name,
                workload: w,
                memory_mib,
                compute,
                profile,
                share,
                replicas,
                slo,
                isolation,
                vm: rt.vm.unwrap_or(false),
                media: rt.media.unwrap_or(false),
                spread: rt.spread.unwrap_or(false),
                load: rt.load.as_ref().and_then(|l| load_spec(l, &mut errors)),
                pos: tp,
            });
        }
    }
    if errors.is_empty() {
        Ok(Tenancy { nodes, tenants })
    } else {
        errors.sort_by_key(|e| e.pos);
        Err(errors)
    }
}
