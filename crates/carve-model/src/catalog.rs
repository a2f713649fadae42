//! The catalog: every MIG-capable GPU model, its GPU-instance profiles with their placement rules,
//! and the vGPU profiles and licence editions that go with it.
//!
//! The catalog is data (`data/catalog.toml`), embedded at build time. A user file in the same
//! format adds GPU models or replaces them by key; it is validated on load, and every error names
//! the line and column it comes from.

use crate::profile::{Attribute, NvmlGiProfile, ProfileName};
use crate::source::SourcePos;
use crate::suggest::{did_you_mean, Suggestion};
use serde::{Deserialize, Serialize};
use std::fmt;
use toml::Spanned;

/// The catalog compiled into carve.
pub const EMBEDDED_TOML: &str = include_str!("../data/catalog.toml");

/// Where a piece of catalog data came from.
pub const EMBEDDED_ORIGIN: &str = "<embedded catalog>";

/// The largest placement grid carve supports (a `u32` bitmask of memory slots).
pub const MAX_SLOTS: u8 = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Architecture {
    Ampere,
    Hopper,
    Blackwell,
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Architecture::Ampere => "Ampere",
            Architecture::Hopper => "Hopper",
            Architecture::Blackwell => "Blackwell",
        })
    }
}

/// One GPU-instance profile of one GPU model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GiProfile {
    /// Canonical name, e.g. `1g.10gb+me`.
    pub name: String,
    /// NVML profile index constant.
    pub nvml: NvmlGiProfile,
    /// Device-specific profile id (`info.id`, nvidia-smi's "Profile ID") where known. Never use
    /// it to talk to a driver: query it at run time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u32>,
    /// Compute (SM) slices.
    pub compute: u8,
    /// Memory slots occupied: the placement size.
    pub slots: u8,
    /// Allowed placement starts (memory-slot index).
    pub starts: Vec<u8>,
    /// Most instances of this profile on one GPU (`instanceCount`).
    pub max: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sm: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mib: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ce: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dec: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enc: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jpg: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ofa: Option<u8>,
}

impl GiProfile {
    pub fn attribute(&self) -> Attribute {
        self.nvml.attribute()
    }

    /// Bitmask of the memory slots a placement at `start` occupies.
    pub fn mask_at(&self, start: u8) -> u32 {
        slot_mask(start, self.slots)
    }

    /// Media engines (decoders + encoders + JPEG + OFA) where all are known.
    pub fn media_engines(&self) -> Option<u32> {
        Some(self.dec? as u32 + self.enc.unwrap_or(0) as u32 + self.jpg? as u32 + self.ofa? as u32)
    }
}

/// Memory slots `start..start+size` as a bitmask.
pub fn slot_mask(start: u8, size: u8) -> u32 {
    let ones = if size >= 32 {
        u32::MAX
    } else {
        (1u32 << size) - 1
    };
    ones.checked_shl(start as u32).unwrap_or(0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VgpuKind {
    /// Time-sliced vGPU (`A100-10C`).
    TimeSliced,
    /// MIG-backed vGPU (`H100-1-10C`): one GPU instance per VM.
    Mig,
}

/// A vGPU profile (C-series, compute).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VgpuProfile {
    pub name: String,
    pub kind: VgpuKind,
    pub framebuffer_gb: u32,
    /// Most vGPUs of this type on one GPU (equal-size mode).
    pub max: u32,
    /// For MIG-backed types: the GPU-instance profile behind it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
}

/// A vGPU licence edition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LicenceEdition {
    /// Short name, e.g. `vCS`.
    pub name: String,
    pub long_name: String,
    /// vGPU series the edition licenses (`C`, `Q`, `B`, `A`).
    pub series: Vec<String>,
    /// Whether CUDA works under this edition.
    pub cuda: bool,
    #[serde(default)]
    pub notes: String,
}

/// One MIG-capable GPU model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuModel {
    /// Canonical key, e.g. `H100-80GB`.
    pub key: String,
    /// Marketing name.
    pub name: String,
    pub architecture: Architecture,
    /// Other names: NVML product names (`NVIDIA H100 80GB HBM3`), board names.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// PCI device ids (vendor 0x10DE).
    #[serde(default)]
    pub pci_ids: Vec<u16>,
    /// Nominal memory in GB (as in profile names).
    pub memory_gb: u32,
    /// Compute (SM) slices available to MIG.
    pub compute_slices: u8,
    /// Memory slots of the placement grid.
    pub memory_slots: u8,
    /// Most GPU instances at once.
    pub max_instances: u8,
    /// MIG mode survives a reboot (Ampere: InfoROM bit) and switching it needs a GPU reset.
    #[serde(default)]
    pub mig_mode_persistent: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_driver: Option<String>,
    /// What of this entry is not confirmed on hardware or by NVIDIA documentation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unconfirmed: Vec<String>,
    /// Where the data comes from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
    pub profiles: Vec<GiProfile>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vgpu: Vec<VgpuProfile>,
}

impl GpuModel {
    pub fn is_confirmed(&self) -> bool {
        self.unconfirmed.is_empty()
    }

    /// Every memory slot as a bitmask.
    pub fn full_mask(&self) -> u32 {
        slot_mask(0, self.memory_slots)
    }

    /// Index of a profile by name, case-insensitively. Also accepts a compute-instance form
    /// (`1c.3g.40gb`), which names its GPU instance.
    pub fn profile_index(&self, name: &str) -> Option<usize> {
        let exact = |n: &str| {
            self.profiles
                .iter()
                .position(|p| p.name.eq_ignore_ascii_case(n))
        };
        exact(name.trim()).or_else(|| exact(&ProfileName::parse(name)?.gi_name()))
    }

    /// Looks up a profile, with a "did you mean" on failure.
    pub fn resolve_profile(&self, name: &str) -> Result<usize, LookupError> {
        self.profile_index(name).ok_or_else(|| LookupError {
            what: "profile",
            query: name.to_string(),
            within: Some(self.key.clone()),
            suggestions: did_you_mean(name, self.profiles.iter().map(|p| p.name.as_str())),
        })
    }

    pub fn profile(&self, name: &str) -> Option<&GiProfile> {
        self.profile_index(name).map(|i| &self.profiles[i])
    }

    /// Index of the profile with an NVML constant (what a driver or backend reports). A model has
    /// at most one profile per constant (validation checks it).
    pub fn profile_index_by_nvml(&self, nvml: NvmlGiProfile) -> Option<usize> {
        self.profiles.iter().position(|p| p.nvml == nvml)
    }

    /// The profile with an NVML constant.
    pub fn profile_by_nvml(&self, nvml: NvmlGiProfile) -> Option<&GiProfile> {
        self.profiles.iter().find(|p| p.nvml == nvml)
    }

    /// PCI ids in mig-parted's `0xDDDD10DE` form.
    pub fn device_filters(&self) -> Vec<String> {
        self.pci_ids
            .iter()
            .map(|id| format!("0x{id:04X}10DE"))
            .collect()
    }
}

/// The whole catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    pub gpus: Vec<GpuModel>,
    pub editions: Vec<LicenceEdition>,
    /// Where each GPU entry came from (parallel to `gpus`).
    #[serde(skip)]
    pub origins: Vec<String>,
}

/// The file format of a catalog file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    schema: Spanned<u32>,
    #[serde(default)]
    edition: Vec<LicenceEdition>,
    #[serde(default)]
    gpu: Vec<Spanned<GpuModel>>,
}

/// A catalog file could not be loaded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{origin}:{pos}: {message}")]
pub struct CatalogError {
    /// The file (a path, or [`EMBEDDED_ORIGIN`]).
    pub origin: String,
    pub pos: SourcePos,
    pub message: String,
}

/// A name that does not resolve.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct LookupError {
    pub what: &'static str,
    pub query: String,
    /// The GPU a profile was looked up on.
    pub within: Option<String>,
    pub suggestions: Vec<Suggestion>,
}

impl fmt::Display for LookupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown {} '{}'", self.what, self.query)?;
        if let Some(w) = &self.within {
            write!(f, " on {w}")?;
        }
        match self.suggestions.as_slice() {
            [] => Ok(()),
            [one] => write!(f, "; did you mean '{}'?", one.name),
            many => {
                let names: Vec<String> = many.iter().map(|s| format!("'{}'", s.name)).collect();
                write!(f, "; did you mean {}?", names.join(" or "))
            }
        }
    }
}

impl Catalog {
    /// The catalog compiled into carve.
    pub fn embedded() -> Catalog {
        Catalog::from_toml(EMBEDDED_TOML, EMBEDDED_ORIGIN)
            .unwrap_or_else(|e| panic!("the embedded catalog is invalid: {e}"))
    }

    /// Parses and validates a catalog file. `origin` names it in errors (a path).
    pub fn from_toml(text: &str, origin: &str) -> Result<Catalog, CatalogError> {
        let err_at = |offset: usize, message: String| CatalogError {
            origin: origin.to_string(),
            pos: SourcePos::at_offset(text, offset),
            message,
        };
        let file: CatalogFile = toml::from_str(text).map_err(|e| {
            let offset = e.span().map(|s| s.start).unwrap_or(0);
            err_at(offset, e.message().trim().to_string())
        })?;
        if *file.schema.get_ref() != 1 {
            return Err(err_at(
                file.schema.span().start,
                format!(
                    "unsupported catalog schema {}; this carve reads schema 1",
                    file.schema.get_ref()
                ),
            ));
        }
        let mut catalog = Catalog {
            gpus: Vec::new(),
            editions: file.edition,
            origins: Vec::new(),
        };
        for spanned in file.gpu {
            let start = spanned.span().start;
            let gpu = spanned.into_inner();
            validate_gpu(&gpu).map_err(|m| err_at(start, format!("GPU '{}': {m}", gpu.key)))?;
            if let Some(prev) = catalog.find_exact(&gpu.key) {
                return Err(err_at(
                    start,
                    format!(
                        "GPU key '{}' appears twice (first as '{}')",
                        gpu.key, prev.key
                    ),
                ));
            }
            catalog.gpus.push(gpu);
            catalog.origins.push(origin.to_string());
        }
        for (i, e) in catalog.editions.iter().enumerate() {
            if catalog.editions[..i]
                .iter()
                .any(|o| o.name.eq_ignore_ascii_case(&e.name))
            {
                return Err(err_at(
                    0,
                    format!("licence edition '{}' appears twice", e.name),
                ));
            }
        }
        Ok(catalog)
    }

    /// Adds the GPU models and editions of `other`; an entry with a key already present replaces
    /// it. Returns the keys that were replaced.
    pub fn merge(&mut self, other: Catalog) -> Vec<String> {
        let mut replaced = Vec::new();
        for (gpu, origin) in other.gpus.into_iter().zip(other.origins) {
            match self
                .gpus
                .iter()
                .position(|g| g.key.eq_ignore_ascii_case(&gpu.key))
            {
                Some(i) => {
                    replaced.push(gpu.key.clone());
                    self.gpus[i] = gpu;
                    self.origins[i] = origin;
                }
                None => {
                    self.gpus.push(gpu);
                    self.origins.push(origin);
                }
            }
        }
        for e in other.editions {
            match self
                .editions
                .iter()
                .position(|o| o.name.eq_ignore_ascii_case(&e.name))
            {
                Some(i) => self.editions[i] = e,
                None => self.editions.push(e),
            }
        }
        replaced
    }

    fn find_exact(&self, key: &str) -> Option<&GpuModel> {
        self.gpus.iter().find(|g| g.key.eq_ignore_ascii_case(key))
    }

    /// Finds a GPU model by key, alias (NVML product name) or PCI device id (`0x2330`, `2330`,
    /// `0x233010DE`, `10de:2330`), case-insensitively.
    pub fn gpu(&self, query: &str) -> Result<&GpuModel, LookupError> {
        let q = query.trim();
        if let Some(g) = self.find_exact(q) {
            return Ok(g);
        }
        if let Some(g) = self
            .gpus
            .iter()
            .find(|g| g.aliases.iter().any(|a| a.eq_ignore_ascii_case(q)))
        {
            return Ok(g);
        }
        if let Some(id) = parse_pci_device_id(q) {
            if let Some(g) = self.gpus.iter().find(|g| g.pci_ids.contains(&id)) {
                return Ok(g);
            }
        }
        let names = self.gpus.iter().flat_map(|g| {
            std::iter::once(g.key.as_str()).chain(g.aliases.iter().map(|a| a.as_str()))
        });
        Err(LookupError {
            what: "GPU",
            query: query.to_string(),
            within: None,
            suggestions: did_you_mean(q, names),
        })
    }

    /// The GPU models whose PCI ids include `id`.
    pub fn gpus_by_pci_id(&self, id: u16) -> impl Iterator<Item = &GpuModel> {
        self.gpus.iter().filter(move |g| g.pci_ids.contains(&id))
    }

    pub fn edition(&self, name: &str) -> Result<&LicenceEdition, LookupError> {
        self.editions
            .iter()
            .find(|e| e.name.eq_ignore_ascii_case(name.trim()))
            .ok_or_else(|| LookupError {
                what: "licence edition",
                query: name.to_string(),
                within: None,
                suggestions: did_you_mean(name, self.editions.iter().map(|e| e.name.as_str())),
            })
    }

    /// Every profile name known on any GPU (for suggestions).
    pub fn all_profile_names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .gpus
            .iter()
            .flat_map(|g| g.profiles.iter().map(|p| p.name.as_str()))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// Parses a PCI device id: `0x2330`, `2330`, `0x233010DE` (mig-parted's device-filter form, NVIDIA
/// vendor only) or `10de:2330`.
pub fn parse_pci_device_id(s: &str) -> Option<u16> {
    let s = s.trim().to_ascii_lowercase();
    if let Some(dev) = s.strip_prefix("10de:") {
        return u16::from_str_radix(dev, 16).ok().filter(|_| dev.len() == 4);
    }
    let hex = s.strip_prefix("0x").unwrap_or(&s);
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    match hex.len() {
        4 => u16::from_str_radix(hex, 16).ok(),
        8 if hex.ends_with("10de") => u16::from_str_radix(&hex[..4], 16).ok(),
        _ => None,
    }
}

/// Checks one GPU entry for internal consistency.
fn validate_gpu(g: &GpuModel) -> Result<(), String> {
    if g.key.trim().is_empty() || g.key.contains(char::is_whitespace) {
        return Err("the key must be a non-empty word without spaces".into());
    }
    if g.memory_slots == 0 || g.memory_slots > MAX_SLOTS {
        return Err(format!(
            "memory_slots must be 1..={MAX_SLOTS}, not {}",
            g.memory_slots
        ));
    }
    if g.compute_slices == 0 {
        return Err("compute_slices must be at least 1".into());
    }
    if g.max_instances == 0 {
        return Err("max_instances must be at least 1".into());
    }
    if g.profiles.is_empty() {
        return Err("no profiles".into());
    }
    for (i, p) in g.profiles.iter().enumerate() {
        let at = |m: String| format!("profile '{}': {m}", p.name);
        let parsed = ProfileName::parse(&p.name).ok_or_else(|| {
            at("not a profile name of the form <G>g.<GB>gb[+me|+me.all|-me|+gfx]".into())
        })?;
        if parsed.ci_slices.is_some() {
            return Err(at("a GPU-instance profile has no '<C>c.' part".into()));
        }
        if g.profiles[..i]
            .iter()
            .any(|o| o.name.eq_ignore_ascii_case(&p.name))
        {
            return Err(at("appears twice".into()));
        }
        if let Some(o) = g.profiles[..i].iter().find(|o| o.nvml == p.nvml) {
            return Err(at(format!(
                "NVML constant {} is already profile '{}'",
                p.nvml.short_name(),
                o.name
            )));
        }
        if parsed.attribute != p.nvml.attribute() {
            return Err(at(format!(
                "suffix '{}' does not match NVML constant {} (which means '{}')",
                parsed.attribute.suffix(),
                p.nvml.short_name(),
                p.nvml.attribute().suffix()
            )));
        }
        if parsed.gi_slices != p.compute {
            return Err(at(format!(
                "name says {}g but compute = {}",
                parsed.gi_slices, p.compute
            )));
        }
        if p.compute == 0 || p.compute > g.compute_slices {
            return Err(at(format!(
                "compute = {} is outside 1..={}",
                p.compute, g.compute_slices
            )));
        }
        if p.slots == 0 || p.slots > g.memory_slots {
            return Err(at(format!(
                "slots = {} is outside 1..={}",
                p.slots, g.memory_slots
            )));
        }
        if p.max == 0 || p.max > g.max_instances {
            return Err(at(format!(
                "max = {} is outside 1..={}",
                p.max, g.max_instances
            )));
        }
        if p.starts.is_empty() {
            return Err(at("no allowed placement starts".into()));
        }
        for (j, &s) in p.starts.iter().enumerate() {
            if s as u32 + p.slots as u32 > g.memory_slots as u32 {
                return Err(at(format!(
                    "placement {s}:{} runs past memory slot {}",
                    p.slots,
                    g.memory_slots - 1
                )));
            }
            if p.starts[..j].contains(&s) {
                return Err(at(format!("start {s} is listed twice")));
            }
        }
    }
    for v in &g.vgpu {
        if let Some(prof) = &v.profile {
            if g.profile_index(prof).is_none() {
                return Err(format!(
                    "vGPU profile '{}' names MIG profile '{prof}', which this GPU does not have",
                    v.name
                ));
            }
        }
        if (v.kind == VgpuKind::Mig) != v.profile.is_some() {
            return Err(format!(
                "vGPU profile '{}': a MIG-backed type names its GPU-instance profile, a time-sliced one does not",
                v.name
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_catalog_loads() {
        let c = Catalog::embedded();
        assert!(c.gpus.len() >= 15, "{} GPUs", c.gpus.len());
        assert_eq!(c.origins.len(), c.gpus.len());
    }

    #[test]
    fn lookup_by_key_alias_and_pci_id() {
        let c = Catalog::embedded();
        assert_eq!(c.gpu("h100-80gb").unwrap().key, "H100-80GB");
        assert_eq!(c.gpu("NVIDIA H100 80GB HBM3").unwrap().key, "H100-80GB");
        assert_eq!(c.gpu("0x2330").unwrap().key, "H100-80GB");
        assert_eq!(c.gpu("0x233010DE").unwrap().key, "H100-80GB");
        assert_eq!(c.gpu("10de:20b7").unwrap().key, "A30-24GB");
        let e = c.gpu("H100-80G").unwrap_err();
        assert!(e.to_string().contains("did you mean 'H100-80GB'"), "{e}");
    }

    #[test]
    fn pci_id_forms() {
        assert_eq!(parse_pci_device_id("0x2330"), Some(0x2330));
        assert_eq!(parse_pci_device_id("2330"), Some(0x2330));
        assert_eq!(parse_pci_device_id("0x233010de"), Some(0x2330));
        assert_eq!(parse_pci_device_id("0x23301002"), None);
        assert_eq!(parse_pci_device_id("xyz"), None);
    }

    #[test]
    fn profiles_by_nvml_constant() {
        let c = Catalog::embedded();
        for g in &c.gpus {
            for (i, p) in g.profiles.iter().enumerate() {
                assert_eq!(g.profile_index_by_nvml(p.nvml), Some(i), "{}", g.key);
                assert_eq!(g.profile_by_nvml(p.nvml), Some(p));
            }
        }
        let h100 = c.gpu("H100-80GB").unwrap();
        assert_eq!(
            h100.profile_by_nvml(NvmlGiProfile::Slice2).unwrap().name,
            "2g.20gb"
        );
        assert_eq!(h100.profile_by_nvml(NvmlGiProfile::Slice4Gfx), None);
    }

    #[test]
    fn bad_files_name_line_and_column() {
        let e = Catalog::from_toml("schema = 1\n[[gpu]]\nkey = \n", "x.toml").unwrap_err();
        assert_eq!((e.origin.as_str(), e.pos.line), ("x.toml", 3));
        let e = Catalog::from_toml("schema = 2\n", "x.toml").unwrap_err();
        assert!(e.message.contains("schema 2"));
    }
}
