//! A GPU instance as observed, with the catalog name of its profile.

use crate::{backend_err, ApplyError};
use carve_backend::{Backend, ComputeInstance, GpuInfo, GpuInstance};
use carve_model::{Catalog, GpuModel};
use serde::{Serialize, Serializer};

/// A GPU instance as observed, named: the backend speaks NVML constants, people read catalog
/// names. Derefs to the [`GpuInstance`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedInstance {
    /// The catalog name of its profile (`2g.20gb`); on a GPU the catalog does not know, the NVML
    /// constant's short name (`2_SLICE`).
    pub profile_name: String,
    pub gi: GpuInstance,
}

impl ObservedInstance {
    /// Names `gi` with the catalog model of its GPU.
    pub fn new(model: Option<&GpuModel>, gi: GpuInstance) -> ObservedInstance {
        let profile_name = model
            .and_then(|m| m.profile_by_nvml(gi.profile))
            .map(|p| p.name.clone())
            .unwrap_or_else(|| gi.profile.short_name().to_string());
        ObservedInstance { profile_name, gi }
    }
}

impl std::ops::Deref for ObservedInstance {
    type Target = GpuInstance;
    fn deref(&self) -> &GpuInstance {
        &self.gi
    }
}

/// In JSON, the profile is its catalog name, with the NVML constant beside it:
/// `"profile": "2g.20gb", "nvml_profile": "NVML_GPU_INSTANCE_PROFILE_2_SLICE"`.
impl Serialize for ObservedInstance {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Shown<'a> {
            id: u32,
            profile: &'a str,
            nvml_profile: String,
            profile_id: u32,
            start: u8,
            size: u8,
            memory_mib: u64,
            compute_instances: &'a [ComputeInstance],
        }
        Shown {
            id: self.gi.id,
            profile: &self.profile_name,
            nvml_profile: self.gi.profile.macro_name(),
            profile_id: self.gi.profile_id,
            start: self.gi.start,
            size: self.gi.size,
            memory_mib: self.gi.memory_mib,
            compute_instances: &self.gi.compute_instances,
        }
        .serialize(s)
    }
}

/// One GPU as observed.
#[derive(Debug, Clone, Serialize)]
pub struct Observed {
    pub info: GpuInfo,
    /// Catalog key, when the model is known.
    pub model: Option<String>,
    /// GPU instances, empty when MIG is off.
    pub instances: Vec<ObservedInstance>,
}

impl Observed {
    /// The GPU instances as the backend gave them.
    pub fn gpu_instances(&self) -> Vec<GpuInstance> {
        self.instances.iter().map(|i| i.gi.clone()).collect()
    }
}

/// Reads every GPU and its instances.
pub fn observe(backend: &mut dyn Backend, catalog: &Catalog) -> Result<Vec<Observed>, ApplyError> {
    let gpus = backend.gpus().map_err(backend_err("list GPUs"))?;
    let mut out = Vec::new();
    for info in gpus {
        let model = model_of(catalog, &info);
        let instances = match info.mig {
            Some(m) if m.current => backend
                .gpu_instances(info.index)
                .map_err(backend_err("list GPU instances"))?,
            _ => Vec::new(),
        };
        out.push(Observed {
            info,
            model: model.map(|m| m.key.clone()),
            instances: instances
                .into_iter()
                .map(|gi| ObservedInstance::new(model, gi))
                .collect(),
        });
    }
    Ok(out)
}

/// The catalog model of a GPU, by PCI device id, then by product name.
pub fn model_of<'c>(catalog: &'c Catalog, info: &GpuInfo) -> Option<&'c GpuModel> {
    catalog
        .gpus_by_pci_id(info.pci_device_id)
        .next()
        .or_else(|| catalog.gpu(&info.name).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use carve_model::{Catalog, NvmlGiProfile};

    fn gi() -> GpuInstance {
        GpuInstance {
            id: 3,
            profile: NvmlGiProfile::Slice2,
            profile_id: 14,
            start: 2,
            size: 2,
            memory_mib: 20096,
            compute_instances: Vec::new(),
        }
    }

    #[test]
    fn json_names_the_profile_with_the_constant_beside_it() {
        let c = Catalog::embedded();
        let o = ObservedInstance::new(c.gpu("H100-80GB").ok(), gi());
        assert_eq!(o.profile_name, "2g.20gb");
        assert_eq!(o.start, 2, "derefs to the GPU instance");
        let v = serde_json::to_value(&o).unwrap();
        assert_eq!(v["profile"], "2g.20gb");
        assert_eq!(v["nvml_profile"], "NVML_GPU_INSTANCE_PROFILE_2_SLICE");
        assert_eq!((v["id"].as_u64(), v["start"].as_u64()), (Some(3), Some(2)));
        // A GPU the catalog does not know: the constant's short name.
        assert_eq!(ObservedInstance::new(None, gi()).profile_name, "2_SLICE");
    }
}
