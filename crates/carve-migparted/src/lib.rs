//! NVIDIA mig-parted's config format (`version: v1`), read with the position of every value, and
//! checked against the carve catalog.
//!
//! ```yaml
//! version: v1
//! mig-configs:
//!   all-balanced:
//!     - device-filter: ["0x233010DE"]
//!       devices: all
//!       mig-enabled: true
//!       mig-devices:
//!         "1g.10gb": 2
//!         "2g.20gb": 1
//!         "3g.40gb": 1
//! ```
//!
//! Parsing is pure (text in, model out). [`parse`] reports every syntax and schema error it finds
//! with line and column; [`check`] says, per config entry and per GPU model it targets, whether
//! the layout fits, and why not.

use carve_model::geometry::{self, Infeasible, Layout};
use carve_model::profile::{ci_max_count, ProfileName};
use carve_model::suggest::did_you_mean;
use carve_model::{Catalog, GpuModel, LookupError, SourcePos};
use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::{LoadError, Node, Span};
use serde::Serialize;
use std::fmt;

/// Where a YAML node starts. Every node the loader returns has a start; should one not, the
/// diagnostic points at the start of the file rather than nowhere.
pub fn pos_of(span: &Span) -> SourcePos {
    span.start().map(marker_pos).unwrap_or(SourcePos::START)
}

/// A marked-yaml marker (1-based) as a source position.
pub fn marker_pos(m: &marked_yaml::Marker) -> SourcePos {
    SourcePos::new(m.line(), m.column())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One finding, located in the file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    #[serde(flatten)]
    pub pos: SourcePos,
    /// The config label it concerns, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{}: {sev}: ", self.pos)?;
        if let Some(c) = &self.config {
            write!(f, "config '{c}': ")?;
        }
        f.write_str(&self.message)
    }
}

/// Which GPUs an entry applies to, by index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Devices {
    All,
    List(Vec<u32>),
}

/// A `device-filter` value: a PCI device id, and the subsystem id when given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceFilter {
    pub raw: String,
    pub device_id: u16,
    pub pos: SourcePos,
}

/// One `mig-devices` line: a profile and how many.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigDevice {
    pub profile: String,
    pub count: u32,
    pub pos: SourcePos,
}

/// One entry of a config's list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    pub pos: SourcePos,
    pub device_filter: Vec<DeviceFilter>,
    pub devices: Devices,
    pub mig_enabled: bool,
    pub mig_devices: Vec<MigDevice>,
    /// Where `mig-devices` is, or the entry when it is absent.
    pub mig_devices_pos: SourcePos,
}

/// A named config (`mig-configs.<label>`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NamedConfig {
    pub name: String,
    pub pos: SourcePos,
    pub entries: Vec<Entry>,
}

/// A whole mig-parted config file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConfigFile {
    pub configs: Vec<NamedConfig>,
}

impl ConfigFile {
    pub fn config(&self, name: &str) -> Option<&NamedConfig> {
        self.configs.iter().find(|c| c.name == name)
    }

    /// A config by label, with a "did you mean" on failure.
    pub fn resolve(&self, name: &str) -> Result<&NamedConfig, UnknownConfig> {
        self.config(name).ok_or_else(|| UnknownConfig {
            name: name.to_string(),
            suggestion: did_you_mean(name, self.configs.iter().map(|c| c.name.as_str()))
                .first()
                .map(|s| s.name.clone()),
            labels: self.configs.iter().map(|c| c.name.clone()).collect(),
        })
    }
}

/// `-c LABEL` names no config of the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct UnknownConfig {
    pub name: String,
    /// The closest label, if one is close.
    pub suggestion: Option<String>,
    /// Every label of the file.
    pub labels: Vec<String>,
}

impl fmt::Display for UnknownConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no config named '{}' in the file", self.name)?;
        match &self.suggestion {
            Some(s) => write!(f, "; did you mean '{s}'?"),
            None => write!(f, " (it has: {})", self.labels.join(", ")),
        }
    }
}

struct Parser {
    diags: Vec<Diagnostic>,
    config: Option<String>,
}

impl Parser {
    fn err(&mut self, pos: SourcePos, message: impl Into<String>) {
        self.diags.push(Diagnostic {
            severity: Severity::Error,
            pos,
            config: self.config.clone(),
            message: message.into(),
        });
    }

    /// Rejects keys not in `known` (mig-parted rejects unknown fields).
    fn known_keys(&mut self, map: &MarkedMappingNode, known: &[&str], what: &str) {
        for key in map.keys() {
            if !known.contains(&key.as_str()) {
                let mut m = format!("unknown field '{}' in {what}", key.as_str());
                if let Some(s) = did_you_mean(key.as_str(), known.iter().copied()).first() {
                    m.push_str(&format!("; did you mean '{}'?", s.name));
                } else {
                    m.push_str(&format!(" (expected one of: {})", known.join(", ")));
                }
                self.err(pos_of(key.span()), m);
            }
        }
    }

    fn entry(&mut self, node: &Node) -> Option<Entry> {
        let pos = pos_of(node.span());
        let Some(map) = node.as_mapping() else {
            self.err(
                pos,
                "a config entry must be a mapping with devices, mig-enabled and mig-devices",
            );
            return None;
        };
        self.known_keys(
            map,
            &["device-filter", "devices", "mig-enabled", "mig-devices"],
            "a config entry",
        );
        let mut ok = true;

        let mut device_filter = Vec::new();
        match map.get_node("device-filter") {
            None => {}
            Some(Node::Scalar(s)) => ok &= self.filter(s, &mut device_filter),
            Some(Node::Sequence(seq)) => {
                for n in seq.iter() {
                    match n.as_scalar() {
                        Some(s) => ok &= self.filter(s, &mut device_filter),
                        None => {
                            self.err(
                                pos_of(n.span()),
                                "device-filter entries must be strings like \"0x233010DE\"",
                            );
                            ok = false;
                        }
                    }
                }
            }
            Some(n) => {
                self.err(
                    pos_of(n.span()),
                    "device-filter must be a string or a list of strings",
                );
                ok = false;
            }
        }

        let devices = match map.get_node("devices") {
            None => {
                self.err(
                    pos,
                    "missing field 'devices' (all, or a list of GPU indexes)",
                );
                ok = false;
                Devices::All
            }
            Some(Node::Scalar(s)) if s.as_str() == "all" => Devices::All,
            Some(Node::Sequence(seq)) => {
                let mut v = Vec::new();
                for n in seq.iter() {
                    match n.as_scalar().and_then(|s| s.as_u32()) {
                        Some(i) if v.contains(&i) => {
                            self.err(
                                pos_of(n.span()),
                                format!("device index {i} is listed twice"),
                            );
                            ok = false;
                        }
                        Some(i) => v.push(i),
                        None => {
                            self.err(
                                pos_of(n.span()),
                                "device indexes must be non-negative integers",
                            );
                            ok = false;
                        }
                    }
                }
                Devices::List(v)
            }
            Some(n) => {
                let shown = n
                    .as_scalar()
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default();
                self.err(
                    pos_of(n.span()),
                    format!("devices must be 'all' or a list of GPU indexes, not '{shown}'"),
                );
                ok = false;
                Devices::All
            }
        };

        let mig_enabled = match map.get_node("mig-enabled") {
            None => {
                self.err(pos, "missing field 'mig-enabled' (true or false)");
                ok = false;
                false
            }
            Some(n) => match n.as_scalar().and_then(|s| s.as_bool()) {
                Some(b) => b,
                None => {
                    self.err(pos_of(n.span()), "mig-enabled must be true or false");
                    ok = false;
                    false
                }
            },
        };

        let mut mig_devices = Vec::new();
        let mut mig_devices_pos = pos;
        match map.get_node("mig-devices") {
            None => {}
            Some(Node::Scalar(s)) if s.as_str().is_empty() || s.as_str() == "null" => {
                mig_devices_pos = pos_of(s.span());
            }
            Some(Node::Mapping(m)) => {
                mig_devices_pos = map
                    .keys()
                    .find(|k| k.as_str() == "mig-devices")
                    .map(|k| pos_of(k.span()))
                    .unwrap_or(pos);
                for (k, v) in m.iter() {
                    let kpos = pos_of(k.span());
                    match v.as_scalar().and_then(|s| s.as_u32()) {
                        Some(count) => mig_devices.push(MigDevice {
                            profile: k.as_str().to_string(),
                            count,
                            pos: kpos,
                        }),
                        None => {
                            self.err(
                                pos_of(v.span()),
                                format!(
                                    "the count of {} must be a non-negative integer",
                                    k.as_str()
                                ),
                            );
                            ok = false;
                        }
                    }
                }
            }
            Some(n) => {
                self.err(
                    pos_of(n.span()),
                    "mig-devices must be a mapping of profile to count",
                );
                ok = false;
            }
        }
        if !mig_enabled && mig_devices.iter().any(|d| d.count > 0) {
            self.err(
                mig_devices_pos,
                "mig-devices must be empty when mig-enabled is false",
            );
            ok = false;
        }
        ok.then_some(Entry {
            pos,
            device_filter,
            devices,
            mig_enabled,
            mig_devices,
            mig_devices_pos,
        })
    }

    fn filter(&mut self, s: &MarkedScalarNode, out: &mut Vec<DeviceFilter>) -> bool {
        let raw = s.as_str().trim();
        let hex = raw
            .strip_prefix("0x")
            .or_else(|| raw.strip_prefix("0X"))
            .unwrap_or("");
        // 0xDDDDVVVV, optionally followed by a subsystem id (mig-parted v0.15).
        let valid =
            (hex.len() == 8 || hex.len() == 16) && hex.bytes().all(|b| b.is_ascii_hexdigit());
        if !valid {
            self.err(
                pos_of(s.span()),
                format!("device-filter '{raw}' is not a PCI id of the form 0xDDDDVVVV (e.g. 0x233010DE)"),
            );
            return false;
        }
        let device_id = u16::from_str_radix(&hex[..4], 16).expect("hex checked");
        let vendor = &hex[4..8];
        if !vendor.eq_ignore_ascii_case("10de") {
            self.diags.push(Diagnostic {
                severity: Severity::Warning,
                pos: pos_of(s.span()),
                config: self.config.clone(),
                message: format!("device-filter '{raw}' has vendor 0x{vendor}, not NVIDIA (0x10DE): it matches no GPU"),
            });
        }
        out.push(DeviceFilter {
            raw: raw.to_string(),
            device_id,
            pos: pos_of(s.span()),
        });
        true
    }
}

/// Parses a mig-parted config. A YAML syntax error is fatal (`Err`); schema errors are returned
/// with the file, whose faulty entries are left out, so that [`check`] can still report the rest.
pub fn parse(text: &str) -> Result<(ConfigFile, Vec<Diagnostic>), Vec<Diagnostic>> {
    let opts = marked_yaml::LoaderOptions::default()
        .error_on_duplicate_keys(true)
        .toplevel_mapping();
    let root = match marked_yaml::parse_yaml_with_options(0, text, opts) {
        Ok(r) => r,
        Err(e) => return Err(vec![load_error(&e)]),
    };
    let mut p = Parser {
        diags: Vec::new(),
        config: None,
    };
    let top = root.as_mapping().expect("top level is a mapping");
    p.known_keys(top, &["version", "mig-configs"], "the top level");
    match top.get_node("version") {
        None => p.err(
            pos_of(top.span()),
            "missing field 'version' (only v1 exists)",
        ),
        Some(n) => {
            let v = n.as_scalar().map(|s| s.as_str()).unwrap_or("");
            if v != "v1" {
                p.err(
                    pos_of(n.span()),
                    format!("unsupported version '{v}'; mig-parted configs are version v1"),
                );
            }
        }
    }
    let mut configs = Vec::new();
    match top.get_node("mig-configs") {
        None => p.err(pos_of(top.span()), "missing field 'mig-configs'"),
        Some(Node::Mapping(m)) => {
            if m.is_empty() {
                p.err(pos_of(m.span()), "mig-configs is empty");
            }
            for (label, list) in m.iter() {
                p.config = Some(label.as_str().to_string());
                let pos = pos_of(label.span());
                let Some(seq) = list.as_sequence().filter(|s| !s.is_empty()) else {
                    p.err(pos, "a config must be a non-empty list of entries (- devices: ..., mig-enabled: ...)");
                    continue;
                };
                let entries: Vec<Entry> = seq.iter().filter_map(|n| p.entry(n)).collect();
                configs.push(NamedConfig {
                    name: label.as_str().to_string(),
                    pos,
                    entries,
                });
                p.config = None;
            }
        }
        Some(n) => p.err(
            pos_of(n.span()),
            "mig-configs must be a mapping of config names to entry lists",
        ),
    }
    Ok((ConfigFile { configs }, p.diags))
}

/// A YAML load error as a located diagnostic (shared by every carve YAML reader).
pub fn load_error(e: &LoadError) -> Diagnostic {
    let (marker, message) = match e {
        LoadError::TopLevelMustBeMapping(m) => (
            Some(*m),
            "the top level must be a mapping (version, mig-configs)".to_string(),
        ),
        LoadError::TopLevelMustBeSequence(m) => {
            (Some(*m), "the top level must be a sequence".to_string())
        }
        LoadError::UnexpectedAnchor(m) => {
            (Some(*m), "YAML anchors are not supported here".to_string())
        }
        LoadError::MappingKeyMustBeScalar(m) => {
            (Some(*m), "mapping keys must be plain strings".to_string())
        }
        LoadError::UnexpectedTag(m) => (Some(*m), "YAML tags are not supported here".to_string()),
        LoadError::ScanError(m, s) => (Some(*m), format!("YAML syntax error: {s}")),
        LoadError::DuplicateKey(d) => (
            d.key.span().start().copied(),
            format!(
                "duplicate key '{}' (first at line {})",
                d.key.as_str(),
                d.prev_key.span().start().map(|m| m.line()).unwrap_or(0)
            ),
        ),
    };
    let message = message
        .split(" at byte")
        .next()
        .unwrap_or(&message)
        .to_string();
    Diagnostic {
        severity: Severity::Error,
        pos: marker.as_ref().map(marker_pos).unwrap_or(SourcePos::START),
        config: None,
        message,
    }
}

/// A `mig-devices` map resolved on one GPU model.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// Count per GPU-instance profile (parallel to the model's profiles).
    pub counts: Vec<u32>,
    /// Compute-instance size per requested GI profile, where smaller than the GI (`1c.3g.40gb`).
    pub compute_instances: Vec<(usize, u8, u32)>,
}

/// A `mig-devices` line that does not resolve on a GPU model.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResolveError {
    /// The model has no such profile (with a "did you mean").
    #[error("{source}")]
    UnknownProfile {
        pos: SourcePos,
        #[source]
        source: LookupError,
    },
    /// `<C>c.<G>g...`: the GPU instance has no compute instance of that size.
    #[error("{profile} cannot hold a {slices}-slice compute instance")]
    ComputeInstance {
        pos: SourcePos,
        profile: String,
        slices: u8,
    },
}

impl ResolveError {
    /// The mig-devices line.
    pub fn pos(&self) -> SourcePos {
        match self {
            ResolveError::UnknownProfile { pos, .. }
            | ResolveError::ComputeInstance { pos, .. } => *pos,
        }
    }
}

/// Resolves an entry's profiles on a GPU model. Errors name the mig-devices line.
pub fn resolve(gpu: &GpuModel, entry: &Entry) -> Result<Resolved, ResolveError> {
    let mut counts = vec![0u32; gpu.profiles.len()];
    let mut cis = Vec::new();
    for d in &entry.mig_devices {
        let idx = gpu
            .resolve_profile(&d.profile)
            .map_err(|source| ResolveError::UnknownProfile { pos: d.pos, source })?;
        let Some(name) = ProfileName::parse(&d.profile) else {
            continue;
        };
        if let Some(c) = name.ci_slices.filter(|&c| c != name.gi_slices) {
            let p = &gpu.profiles[idx];
            match ci_max_count(p.compute, c) {
                Some(0) => {
                    return Err(ResolveError::ComputeInstance {
                        pos: d.pos,
                        profile: p.name.clone(),
                        slices: c,
                    })
                }
                _ => cis.push((idx, c, d.count)),
            }
        }
        counts[idx] = counts[idx].saturating_add(d.count);
    }
    Ok(Resolved {
        counts,
        compute_instances: cis,
    })
}

/// The verdict for one (entry, GPU model) pair.
#[derive(Debug, Clone, Serialize)]
pub struct ModelCheck {
    pub gpu: String,
    pub feasible: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<geometry::PlacedInstance>,
    #[serde(skip)]
    pub layout: Layout,
}

/// What was checked for one entry.
#[derive(Debug, Clone, Serialize)]
pub struct EntryCheck {
    pub config: String,
    pub entry: usize,
    #[serde(flatten)]
    pub pos: SourcePos,
    /// How the targeted GPU models were chosen.
    pub targets: String,
    pub models: Vec<ModelCheck>,
}

/// The result of checking a config file.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub valid: bool,
    pub diagnostics: Vec<Diagnostic>,
    pub entries: Vec<EntryCheck>,
}

/// Checks every config against the catalog. `node` restricts the GPU models: the models of the
/// node's GPUs (index = GPU index), as given by the user; without it, an entry with a
/// device-filter is checked on the models with those PCI ids, and one without on every catalog
/// model on which all its profile names exist.
pub fn check(file: &ConfigFile, catalog: &Catalog, node: Option<&[&GpuModel]>) -> Report {
    let mut diags = Vec::new();
    let mut entries = Vec::new();
    for cfg in &file.configs {
        for (ei, entry) in cfg.entries.iter().enumerate() {
            let mut err = |pos: SourcePos, message: String, severity: Severity| {
                diags.push(Diagnostic {
                    severity,
                    pos,
                    config: Some(cfg.name.clone()),
                    message,
                })
            };
            // Which models does the entry target?
            let mut models: Vec<&GpuModel> = Vec::new();
            let targets;
            let by_filter: Vec<&GpuModel> = {
                let mut v: Vec<&GpuModel> = Vec::new();
                for f in &entry.device_filter {
                    let found: Vec<&GpuModel> = catalog.gpus_by_pci_id(f.device_id).collect();
                    if found.is_empty() {
                        err(
                            f.pos,
                            format!(
                                "device-filter {} matches no MIG-capable GPU in the catalog",
                                f.raw
                            ),
                            Severity::Warning,
                        );
                    }
                    for g in found {
                        if !v.iter().any(|o| o.key == g.key) {
                            v.push(g);
                        }
                    }
                }
                v
            };
            if let Some(node) = node {
                let idxs: Vec<usize> = match &entry.devices {
                    Devices::All => (0..node.len()).collect(),
                    Devices::List(l) => {
                        for &i in l {
                            if i as usize >= node.len() {
                                err(
                                    entry.pos,
                                    format!(
                                        "device index {i} is out of range: the node has {} GPUs",
                                        node.len()
                                    ),
                                    Severity::Error,
                                );
                            }
                        }
                        l.iter()
                            .map(|&i| i as usize)
                            .filter(|&i| i < node.len())
                            .collect()
                    }
                };
                for i in idxs {
                    let g = node[i];
                    let passes = entry.device_filter.is_empty()
                        || g.pci_ids
                            .iter()
                            .any(|id| entry.device_filter.iter().any(|f| f.device_id == *id));
                    if passes && !models.iter().any(|o| o.key == g.key) {
                        models.push(g);
                    }
                }
                targets = "the node's GPUs".to_string();
            } else if !entry.device_filter.is_empty() {
                models = by_filter;
                targets = "device-filter".to_string();
            } else {
                models = catalog
                    .gpus
                    .iter()
                    .filter(|g| {
                        entry
                            .mig_devices
                            .iter()
                            .all(|d| g.profile_index(&d.profile).is_some())
                    })
                    .collect();
                targets = "every catalog GPU with these profiles".to_string();
                if models.is_empty() && entry.mig_enabled {
                    for d in &entry.mig_devices {
                        if catalog
                            .gpus
                            .iter()
                            .all(|g| g.profile_index(&d.profile).is_none())
                        {
                            let mut m = if ProfileName::parse(&d.profile).is_some() {
                                format!("profile '{}' exists on no GPU in the catalog", d.profile)
                            } else {
                                format!("'{}' is not a MIG profile name (<G>g.<GB>gb[+me|+me.all|-me|+gfx], or <C>c.<G>g.<GB>gb)", d.profile)
                            };
                            if let Some(s) =
                                did_you_mean(&d.profile, catalog.all_profile_names()).first()
                            {
                                m.push_str(&format!("; did you mean '{}'?", s.name));
                            }
                            err(d.pos, m, Severity::Error);
                        }
                    }
                    if entry.mig_devices.iter().all(|d| {
                        catalog
                            .gpus
                            .iter()
                            .any(|g| g.profile_index(&d.profile).is_some())
                    }) {
                        err(
                            entry.mig_devices_pos,
                            "no single GPU model has all of these profiles".into(),
                            Severity::Error,
                        );
                    }
                }
            }
            // Without a node or a device-filter the entry may be meant for any of the models
            // that have its profiles: it is an error only when it fits none of them.
            let lenient = node.is_none() && entry.device_filter.is_empty();
            let mut deferred: Vec<(SourcePos, String)> = Vec::new();
            let mut err = |pos: SourcePos, message: String, severity: Severity| {
                if lenient && severity == Severity::Error {
                    deferred.push((pos, message));
                } else {
                    err(pos, message, severity);
                }
            };
            let mut checks = Vec::new();
            for gpu in models {
                if !entry.mig_enabled {
                    checks.push(ModelCheck {
                        gpu: gpu.key.clone(),
                        feasible: true,
                        reason: None,
                        instances: vec![],
                        layout: vec![],
                    });
                    continue;
                }
                let mc = match resolve(gpu, entry) {
                    Err(e) => {
                        let m = e.to_string();
                        err(e.pos(), m.clone(), Severity::Error);
                        ModelCheck {
                            gpu: gpu.key.clone(),
                            feasible: false,
                            reason: Some(m),
                            instances: vec![],
                            layout: vec![],
                        }
                    }
                    Ok(r) => match geometry::fit(gpu, &r.counts, &[]) {
                        Ok(layout) => ModelCheck {
                            gpu: gpu.key.clone(),
                            feasible: true,
                            reason: None,
                            instances: layout.iter().map(|i| geometry::placed(gpu, i)).collect(),
                            layout,
                        },
                        Err(e) => {
                            let m = format!("{}: {}", gpu.key, infeasible_text(gpu, &e));
                            err(entry.mig_devices_pos, m.clone(), Severity::Error);
                            ModelCheck {
                                gpu: gpu.key.clone(),
                                feasible: false,
                                reason: Some(m),
                                instances: vec![],
                                layout: vec![],
                            }
                        }
                    },
                };
                checks.push(mc);
            }
            if lenient && !deferred.is_empty() {
                let any_fits = checks.iter().any(|c: &ModelCheck| c.feasible);
                for (pos, message) in deferred {
                    diags.push(Diagnostic {
                        severity: if any_fits { Severity::Warning } else { Severity::Error },
                        pos,
                        config: Some(cfg.name.clone()),
                        message: if any_fits {
                            format!("{message} (fits other GPU models; add a device-filter to target them)")
                        } else {
                            message
                        },
                    });
                }
            }
            entries.push(EntryCheck {
                config: cfg.name.clone(),
                entry: ei,
                pos: entry.pos,
                targets,
                models: checks,
            });
        }
    }
    diags.sort_by_key(|d| d.pos);
    Report {
        valid: !diags.iter().any(|d| d.severity == Severity::Error),
        diagnostics: diags,
        entries,
    }
}

/// The reason text for an infeasible layout, naming the GPU's budget.
pub fn infeasible_text(gpu: &GpuModel, e: &Infeasible) -> String {
    use carve_model::Violation;
    match e {
        Infeasible::Rule(Violation::ComputeBudget {
            needed,
            budget,
            what,
        }) => {
            format!(
                "{what} needs {needed} compute slices, {} has {budget}",
                gpu.key
            )
        }
        Infeasible::Rule(Violation::MemorySlots {
            needed,
            slots,
            what,
        }) => {
            format!(
                "{what} needs {needed} memory slots, {} has {slots}",
                gpu.key
            )
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"version: v1
mig-configs:
  all-disabled:
    - devices: all
      mig-enabled: false
  custom:
    - devices: [0, 1]
      mig-enabled: false
    - device-filter: ["0x233010DE"]
      devices: all
      mig-enabled: true
      mig-devices: {"1g.10gb": 2, "2g.20gb": 1, "3g.40gb": 1}
"#;

    #[test]
    fn parses_a_good_file() {
        let (f, warnings) = parse(GOOD).unwrap();
        assert!(warnings.is_empty());
        assert_eq!(f.configs.len(), 2);
        let c = f.config("custom").unwrap();
        assert_eq!(c.entries[0].devices, Devices::List(vec![0, 1]));
        assert_eq!(c.entries[1].device_filter[0].device_id, 0x2330);
        assert_eq!(c.entries[1].mig_devices.len(), 3);
        let r = check(&f, &Catalog::embedded(), None);
        assert!(r.valid, "{:?}", r.diagnostics);
    }

    #[test]
    fn unknown_labels_get_a_suggestion_or_the_list() {
        let (f, _) = parse(GOOD).unwrap();
        assert_eq!(
            f.resolve("custon").unwrap_err().to_string(),
            "no config named 'custon' in the file; did you mean 'custom'?"
        );
        assert_eq!(
            f.resolve("zzz").unwrap_err().to_string(),
            "no config named 'zzz' in the file (it has: all-disabled, custom)"
        );
    }

    #[test]
    fn positions_are_one_based() {
        let text = "version: v2\nmig-configs: {}\n";
        let (_, d) = parse(text).unwrap();
        assert_eq!((d[0].pos.line, d[0].pos.column), (1, 10), "{d:?}");
    }

    #[test]
    fn infeasible_layout_names_line_and_reason() {
        let text = "version: v1\nmig-configs:\n  bad:\n    - device-filter: 0x233010DE\n      devices: all\n      mig-enabled: true\n      mig-devices:\n        3g.40gb: 3\n";
        let (f, _) = parse(text).unwrap();
        let r = check(&f, &Catalog::embedded(), None);
        assert!(!r.valid);
        let d = &r.diagnostics[0];
        assert_eq!(d.pos.line, 7);
        assert_eq!(d.config.as_deref(), Some("bad"));
        assert!(d.message.contains("3g.40gb x3"), "{}", d.message);
    }

    #[test]
    fn schema_errors_are_all_reported() {
        let text = "version: v1\nmig-configs:\n  x:\n    - devices: some\n      mig-enable: true\n";
        let (_, d) = parse(text).unwrap();
        let msgs: Vec<String> = d.iter().map(|d| d.to_string()).collect();
        assert!(
            msgs.iter()
                .any(|m| m.contains("did you mean 'mig-enabled'")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.starts_with("4:") && m.contains("devices must be")),
            "{msgs:?}"
        );
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let d = parse("version: v1\nmig-configs:\n  a: [\n").unwrap_err();
        assert!(d[0].pos.line >= 3, "{d:?}");
        assert!(d[0].message.contains("YAML"), "{d:?}");
    }
}
