//! MIG profile names and NVML GPU-instance profile constants.
//!
//! A GPU-instance (GI) profile is written `<G>g.<GB>gb[attr]`, a compute-instance (CI) profile
//! that does not fill its GI `<C>c.<G>g.<GB>gb[attr]` (MIG User Guide, "MIG Device Names").

use serde::{Deserialize, Serialize};
use std::fmt;

/// The attribute suffix of a profile name and what it means for media engines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Attribute {
    /// No suffix: the profile's ordinary share of engines.
    None,
    /// `+me`: media-extended (at least one NVDEC/NVENC/NVJPG/OFA). At most one per GPU.
    Me,
    /// `+me.all`: every media engine of the GPU; only `-me` profiles may coexist with it.
    MeAll,
    /// `-me`: no media engines at all.
    NoMe,
    /// `+gfx`: graphics APIs (Blackwell GB20x).
    Gfx,
}

impl Attribute {
    pub fn suffix(self) -> &'static str {
        match self {
            Attribute::None => "",
            Attribute::Me => "+me",
            Attribute::MeAll => "+me.all",
            Attribute::NoMe => "-me",
            Attribute::Gfx => "+gfx",
        }
    }

    /// Takes media engines exclusively (`+me`, `+me.all`): at most one such instance per GPU.
    pub fn is_media_extended(self) -> bool {
        matches!(self, Attribute::Me | Attribute::MeAll)
    }
}

/// NVML `NVML_GPU_INSTANCE_PROFILE_*` constants (nvml.h, NVML API 13). The value is the *profile
/// index* passed to `nvmlDeviceGetGpuInstanceProfileInfo`, not the device-specific profile id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NvmlGiProfile {
    #[serde(rename = "1_SLICE")]
    Slice1,
    #[serde(rename = "2_SLICE")]
    Slice2,
    #[serde(rename = "3_SLICE")]
    Slice3,
    #[serde(rename = "4_SLICE")]
    Slice4,
    #[serde(rename = "7_SLICE")]
    Slice7,
    #[serde(rename = "8_SLICE")]
    Slice8,
    #[serde(rename = "6_SLICE")]
    Slice6,
    #[serde(rename = "1_SLICE_REV1")]
    Slice1Rev1,
    #[serde(rename = "2_SLICE_REV1")]
    Slice2Rev1,
    #[serde(rename = "1_SLICE_REV2")]
    Slice1Rev2,
    #[serde(rename = "1_SLICE_GFX")]
    Slice1Gfx,
    #[serde(rename = "2_SLICE_GFX")]
    Slice2Gfx,
    #[serde(rename = "4_SLICE_GFX")]
    Slice4Gfx,
    #[serde(rename = "1_SLICE_NO_ME")]
    Slice1NoMe,
    #[serde(rename = "2_SLICE_NO_ME")]
    Slice2NoMe,
    #[serde(rename = "1_SLICE_ALL_ME")]
    Slice1AllMe,
    #[serde(rename = "2_SLICE_ALL_ME")]
    Slice2AllMe,
    #[serde(rename = "3_SLICE_GFX")]
    Slice3Gfx,
}

impl NvmlGiProfile {
    pub const ALL: [NvmlGiProfile; 18] = [
        NvmlGiProfile::Slice1,
        NvmlGiProfile::Slice2,
        NvmlGiProfile::Slice3,
        NvmlGiProfile::Slice4,
        NvmlGiProfile::Slice7,
        NvmlGiProfile::Slice8,
        NvmlGiProfile::Slice6,
        NvmlGiProfile::Slice1Rev1,
        NvmlGiProfile::Slice2Rev1,
        NvmlGiProfile::Slice1Rev2,
        NvmlGiProfile::Slice1Gfx,
        NvmlGiProfile::Slice2Gfx,
        NvmlGiProfile::Slice4Gfx,
        NvmlGiProfile::Slice1NoMe,
        NvmlGiProfile::Slice2NoMe,
        NvmlGiProfile::Slice1AllMe,
        NvmlGiProfile::Slice2AllMe,
        NvmlGiProfile::Slice3Gfx,
    ];

    /// The numeric value of the C macro.
    pub fn value(self) -> u32 {
        NvmlGiProfile::ALL
            .iter()
            .position(|p| *p == self)
            .expect("in ALL") as u32
    }

    pub fn from_value(v: u32) -> Option<Self> {
        NvmlGiProfile::ALL.get(v as usize).copied()
    }

    /// The C macro name, e.g. `NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV1`.
    pub fn macro_name(self) -> String {
        format!("NVML_GPU_INSTANCE_PROFILE_{}", self.short_name())
    }

    /// The macro name without its prefix, as written in the catalog (`1_SLICE_REV1`).
    pub fn short_name(self) -> &'static str {
        match self {
            NvmlGiProfile::Slice1 => "1_SLICE",
            NvmlGiProfile::Slice2 => "2_SLICE",
            NvmlGiProfile::Slice3 => "3_SLICE",
            NvmlGiProfile::Slice4 => "4_SLICE",
            NvmlGiProfile::Slice7 => "7_SLICE",
            NvmlGiProfile::Slice8 => "8_SLICE",
            NvmlGiProfile::Slice6 => "6_SLICE",
            NvmlGiProfile::Slice1Rev1 => "1_SLICE_REV1",
            NvmlGiProfile::Slice2Rev1 => "2_SLICE_REV1",
            NvmlGiProfile::Slice1Rev2 => "1_SLICE_REV2",
            NvmlGiProfile::Slice1Gfx => "1_SLICE_GFX",
            NvmlGiProfile::Slice2Gfx => "2_SLICE_GFX",
            NvmlGiProfile::Slice4Gfx => "4_SLICE_GFX",
            NvmlGiProfile::Slice1NoMe => "1_SLICE_NO_ME",
            NvmlGiProfile::Slice2NoMe => "2_SLICE_NO_ME",
            NvmlGiProfile::Slice1AllMe => "1_SLICE_ALL_ME",
            NvmlGiProfile::Slice2AllMe => "2_SLICE_ALL_ME",
            NvmlGiProfile::Slice3Gfx => "3_SLICE_GFX",
        }
    }

    /// The attribute a profile with this constant carries (go-nvlib's suffix rules).
    pub fn attribute(self) -> Attribute {
        match self {
            NvmlGiProfile::Slice1Rev1 | NvmlGiProfile::Slice2Rev1 => Attribute::Me,
            NvmlGiProfile::Slice1AllMe | NvmlGiProfile::Slice2AllMe => Attribute::MeAll,
            NvmlGiProfile::Slice1NoMe | NvmlGiProfile::Slice2NoMe => Attribute::NoMe,
            NvmlGiProfile::Slice1Gfx
            | NvmlGiProfile::Slice2Gfx
            | NvmlGiProfile::Slice3Gfx
            | NvmlGiProfile::Slice4Gfx => Attribute::Gfx,
            _ => Attribute::None,
        }
    }

    /// Compute slices named by the constant (`1_SLICE_REV2` is still one slice).
    pub fn slices(self) -> u8 {
        match self {
            NvmlGiProfile::Slice1
            | NvmlGiProfile::Slice1Rev1
            | NvmlGiProfile::Slice1Rev2
            | NvmlGiProfile::Slice1Gfx
            | NvmlGiProfile::Slice1NoMe
            | NvmlGiProfile::Slice1AllMe => 1,
            NvmlGiProfile::Slice2
            | NvmlGiProfile::Slice2Rev1
            | NvmlGiProfile::Slice2Gfx
            | NvmlGiProfile::Slice2NoMe
            | NvmlGiProfile::Slice2AllMe => 2,
            NvmlGiProfile::Slice3 | NvmlGiProfile::Slice3Gfx => 3,
            NvmlGiProfile::Slice4 | NvmlGiProfile::Slice4Gfx => 4,
            NvmlGiProfile::Slice6 => 6,
            NvmlGiProfile::Slice7 => 7,
            NvmlGiProfile::Slice8 => 8,
        }
    }
}

impl fmt::Display for NvmlGiProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.macro_name())
    }
}

/// A parsed profile string: `[<C>c.]<G>g.<GB>gb[attr]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProfileName {
    /// Compute slices of the compute instance, when it is smaller than the GI (`1c.3g.40gb`).
    pub ci_slices: Option<u8>,
    pub gi_slices: u8,
    pub memory_gb: u32,
    pub attribute: Attribute,
}

impl ProfileName {
    /// Parses a profile string. Returns `None` when it does not have the MIG profile shape.
    pub fn parse(s: &str) -> Option<ProfileName> {
        let s = s.trim();
        let lower = s.to_ascii_lowercase();
        let (body, attribute) = if let Some(b) = lower.strip_suffix("+me.all") {
            (b, Attribute::MeAll)
        } else if let Some(b) = lower.strip_suffix("+me") {
            (b, Attribute::Me)
        } else if let Some(b) = lower.strip_suffix("-me") {
            (b, Attribute::NoMe)
        } else if let Some(b) = lower.strip_suffix("+gfx") {
            (b, Attribute::Gfx)
        } else {
            (lower.as_str(), Attribute::None)
        };
        let parts: Vec<&str> = body.split('.').collect();
        let (ci, gi, mem) = match parts.as_slice() {
            [gi, mem] => (None, *gi, *mem),
            [ci, gi, mem] => (Some(*ci), *gi, *mem),
            _ => return None,
        };
        let num = |t: &str, suffix: &str| -> Option<u32> {
            let d = t.strip_suffix(suffix)?;
            if d.is_empty() || !d.bytes().all(|b| b.is_ascii_digit()) || d.len() > 4 {
                return None;
            }
            d.parse().ok()
        };
        let ci_slices = match ci {
            Some(c) => Some(u8::try_from(num(c, "c")?).ok()?),
            None => None,
        };
        let gi_slices = u8::try_from(num(gi, "g")?).ok()?;
        let memory_gb = num(mem, "gb")?;
        if gi_slices == 0 || ci_slices == Some(0) {
            return None;
        }
        Some(ProfileName {
            ci_slices,
            gi_slices,
            memory_gb,
            attribute,
        })
    }

    /// The GPU-instance profile this names (drops the `<C>c.` part).
    pub fn gi_name(&self) -> String {
        format!(
            "{}g.{}gb{}",
            self.gi_slices,
            self.memory_gb,
            self.attribute.suffix()
        )
    }
}

impl fmt::Display for ProfileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(c) = self.ci_slices.filter(|c| *c != self.gi_slices) {
            write!(f, "{c}c.")?;
        }
        f.write_str(&self.gi_name())
    }
}

/// Compute-instance splits NVIDIA allows inside a GI of `gi_slices` compute slices: the CI sizes
/// and how many of each fit (MIG User Guide; the same on A100 and Hopper). `None` when unknown.
pub fn ci_max_count(gi_slices: u8, ci_slices: u8) -> Option<u8> {
    let allowed: &[(u8, u8)] = match gi_slices {
        1 => &[(1, 1)],
        2 => &[(1, 2), (2, 1)],
        3 => &[(1, 3), (2, 1), (3, 1)],
        4 => &[(1, 4), (2, 2), (4, 1)],
        7 => &[(1, 7), (2, 3), (3, 2), (4, 1), (7, 1)],
        _ => return None,
    };
    Some(
        allowed
            .iter()
            .find(|(c, _)| *c == ci_slices)
            .map(|(_, n)| *n)
            .unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_shapes() {
        let p = ProfileName::parse("1g.10gb").unwrap();
        assert_eq!((p.ci_slices, p.gi_slices, p.memory_gb), (None, 1, 10));
        assert_eq!(p.attribute, Attribute::None);
        let p = ProfileName::parse("1c.3g.40gb").unwrap();
        assert_eq!((p.ci_slices, p.gi_slices, p.memory_gb), (Some(1), 3, 40));
        assert_eq!(p.gi_name(), "3g.40gb");
        assert_eq!(p.to_string(), "1c.3g.40gb");
        for (s, a) in [
            ("1g.24gb+me.all", Attribute::MeAll),
            ("1g.24gb-me", Attribute::NoMe),
            ("4g.96gb+gfx", Attribute::Gfx),
            ("1g.10gb+me", Attribute::Me),
        ] {
            let p = ProfileName::parse(s).unwrap();
            assert_eq!(p.attribute, a, "{s}");
            assert_eq!(p.to_string(), s);
        }
        for bad in [
            "",
            "1g",
            "g.10gb",
            "1g.10",
            "1x.10gb",
            "0g.5gb",
            "1g.10gb+foo",
            "a.b.c.d",
        ] {
            assert!(ProfileName::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn nvml_constants_have_header_values() {
        assert_eq!(NvmlGiProfile::Slice1.value(), 0);
        assert_eq!(NvmlGiProfile::Slice7.value(), 4);
        assert_eq!(NvmlGiProfile::Slice1Rev1.value(), 7);
        assert_eq!(NvmlGiProfile::Slice1Rev2.value(), 9);
        assert_eq!(NvmlGiProfile::Slice1NoMe.value(), 0x0d);
        assert_eq!(NvmlGiProfile::Slice2AllMe.value(), 0x10);
        assert_eq!(NvmlGiProfile::Slice3Gfx.value(), 0x11);
        for p in NvmlGiProfile::ALL {
            assert_eq!(NvmlGiProfile::from_value(p.value()), Some(p));
        }
        assert_eq!(NvmlGiProfile::from_value(0x12), None);
    }
}
