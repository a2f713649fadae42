//! The simulated GPU engine: a node of MIG-capable GPUs as an NVML driver would keep it, as a
//! pure value (serde-serialisable). Geometry is enforced with the catalog; ids and UUIDs follow
//! the driver's conventions. Persistence and fault injection live with its users. A node's GPUs
//! are given as a list from [`Catalog::gpu_list`] (`A100-40GB,2xH100-80GB`).

use crate::{BackendError, ComputeInstance, GpuInfo, GpuInstance, MigMode, Process, Result};
use carve_model::geometry::{self, Instance};
use carve_model::profile::ci_max_count;
use carve_model::{Catalog, GpuModel, NvmlGiProfile};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimCi {
    pub id: u32,
    pub slices: u8,
    pub uuid: String,
    #[serde(default)]
    pub processes: Vec<Process>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimGi {
    pub id: u32,
    pub profile: NvmlGiProfile,
    pub start: u8,
    pub cis: Vec<SimCi>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimGpu {
    pub index: u32,
    pub uuid: String,
    /// Catalog key of the model.
    pub model: String,
    pub name: String,
    pub pci_device_id: u16,
    pub memory_mib: u64,
    pub mig: MigMode,
    /// MIG mode survives reboot and needs a reset to change (Ampere).
    pub persistent_mode: bool,
    pub gis: Vec<SimGi>,
}

/// A simulated node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimNode {
    pub gpus: Vec<SimGpu>,
    /// Seed for UUIDs, fixed at creation.
    pub seed: u64,
    /// UUIDs issued so far.
    pub issued: u64,
}

/// SplitMix64: a small, well-mixed generator for UUID bits.
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn uuid_from(seed: u64, n: u64) -> String {
    let a = splitmix(seed ^ n.wrapping_mul(0xA24B_AED4_963E_E407));
    let b = splitmix(a ^ n);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        (a & 0x0fff) | 0x4000,
        ((b >> 48) & 0x3fff) | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

/// The GI id a driver gives a placement (the pattern seen on A100/H100: 7g→0, 4-slot at 0/4→1/2,
/// 2-slot at 0/2/4/6→3/4/5/6, 1-slot at s→7+s); other grids take the lowest free id.
fn driver_gi_id(slots: u8, size: u8, start: u8, taken: &[u32]) -> u32 {
    let pattern = if slots == 8 {
        match size {
            8 => Some(0),
            4 => Some(1 + start as u32 / 4),
            2 => Some(3 + start as u32 / 2),
            1 => Some(7 + start as u32),
            _ => None,
        }
    } else {
        None
    };
    match pattern {
        Some(id) if !taken.contains(&id) => id,
        _ => (0..).find(|i| !taken.contains(i)).expect("free id"),
    }
}

impl SimNode {
    /// A node with the given models, MIG enabled on every GPU, no instances.
    pub fn new(models: &[&GpuModel], seed: u64) -> SimNode {
        let mut node = SimNode {
            gpus: Vec::new(),
            seed,
            issued: 0,
        };
        for (i, m) in models.iter().enumerate() {
            let uuid = format!("GPU-{}", node.next_uuid());
            node.gpus.push(SimGpu {
                index: i as u32,
                uuid,
                model: m.key.clone(),
                name: m
                    .aliases
                    .iter()
                    .find(|a| a.starts_with("NVIDIA "))
                    .cloned()
                    .unwrap_or_else(|| format!("NVIDIA {}", m.key)),
                pci_device_id: m.pci_ids.first().copied().unwrap_or(0),
                memory_mib: m.memory_gb as u64 * 1024,
                mig: MigMode {
                    current: true,
                    pending: true,
                },
                persistent_mode: m.mig_mode_persistent,
                gis: Vec::new(),
            });
        }
        node
    }

    fn next_uuid(&mut self) -> String {
        self.issued += 1;
        uuid_from(self.seed, self.issued)
    }

    fn gpu_mut(&mut self, gpu: u32) -> Result<&mut SimGpu> {
        self.gpus
            .get_mut(gpu as usize)
            .ok_or_else(|| BackendError::NotFound(format!("no GPU {gpu}")))
    }

    fn gpu_ref(&self, gpu: u32) -> Result<&SimGpu> {
        self.gpus
            .get(gpu as usize)
            .ok_or_else(|| BackendError::NotFound(format!("no GPU {gpu}")))
    }

    fn model<'c>(catalog: &'c Catalog, g: &SimGpu) -> Result<&'c GpuModel> {
        catalog
            .gpu(&g.model)
            .map_err(|e| BackendError::Other(format!("GPU {}: {e}", g.index)))
    }

    pub fn gpu_infos(&self) -> Vec<GpuInfo> {
        self.gpus
            .iter()
            .map(|g| GpuInfo {
                index: g.index,
                uuid: g.uuid.clone(),
                name: g.name.clone(),
                pci_device_id: g.pci_device_id,
                pci_bus_id: format!("00000000:{:02X}:00.0", 0x17 + g.index * 0x10),
                memory_mib: g.memory_mib,
                mig: Some(g.mig),
            })
            .collect()
    }

    pub fn mig_mode(&self, gpu: u32) -> Result<MigMode> {
        Ok(self.gpu_ref(gpu)?.mig)
    }

    /// NVML `SetMigMode`: Hopper and later switch at once; Ampere only sets the pending mode.
    /// Refused while any GI exists.
    pub fn set_mig_mode(&mut self, gpu: u32, enabled: bool) -> Result<MigMode> {
        let g = self.gpu_mut(gpu)?;
        if !g.gis.is_empty() && !enabled {
            return Err(BackendError::InUse(format!(
                "GPU {gpu} still has {} GPU instances",
                g.gis.len()
            )));
        }
        g.mig.pending = enabled;
        if !g.persistent_mode {
            g.mig.current = enabled;
        }
        Ok(g.mig)
    }

    /// A GPU reset: pending MIG mode takes effect, every instance is gone.
    pub fn reset(&mut self, gpu: u32) -> Result<()> {
        let g = self.gpu_mut(gpu)?;
        if g.gis
            .iter()
            .any(|gi| gi.cis.iter().any(|c| !c.processes.is_empty()))
        {
            return Err(BackendError::InUse(format!(
                "GPU {gpu} has running processes"
            )));
        }
        g.mig.current = g.mig.pending;
        g.gis.clear();
        Ok(())
    }

    /// A reboot: every instance is gone; MIG mode survives only where it is persistent (Ampere).
    pub fn reboot(&mut self) {
        for g in &mut self.gpus {
            g.gis.clear();
            if g.persistent_mode {
                g.mig.current = g.mig.pending;
            } else {
                g.mig = MigMode {
                    current: false,
                    pending: false,
                };
            }
        }
    }

    pub fn gpu_instances(&self, catalog: &Catalog, gpu: u32) -> Result<Vec<GpuInstance>> {
        let g = self.gpu_ref(gpu)?;
        if !g.mig.current {
            return Err(BackendError::NotSupported(format!(
                "MIG mode is disabled on GPU {gpu}"
            )));
        }
        let model = Self::model(catalog, g)?;
        let mut out = Vec::new();
        for gi in &g.gis {
            let p = model
                .profile_by_nvml(gi.profile)
                .ok_or_else(|| BackendError::Other(format!("unknown profile {}", gi.profile)))?;
            out.push(GpuInstance {
                id: gi.id,
                profile: gi.profile,
                profile_id: p.id.unwrap_or(gi.profile.value()),
                start: gi.start,
                size: p.slots,
                memory_mib: p
                    .mib
                    .map(u64::from)
                    .unwrap_or(g.memory_mib * p.slots as u64 / model.memory_slots as u64),
                compute_instances: gi
                    .cis
                    .iter()
                    .map(|c| ComputeInstance {
                        id: c.id,
                        slices: c.slices,
                        uuid: c.uuid.clone(),
                        processes: c.processes.clone(),
                    })
                    .collect(),
            });
        }
        out.sort_by_key(|gi| gi.start);
        Ok(out)
    }

    /// NVML `CreateGpuInstanceWithPlacement`.
    pub fn create_gpu_instance(
        &mut self,
        catalog: &Catalog,
        gpu: u32,
        profile: NvmlGiProfile,
        start: u8,
    ) -> Result<u32> {
        let g = self.gpu_ref(gpu)?;
        if !g.mig.current {
            return Err(BackendError::NotSupported(format!(
                "MIG mode is disabled on GPU {gpu}"
            )));
        }
        let model = Self::model(catalog, g)?;
        let pidx = model.profile_index_by_nvml(profile).ok_or_else(|| {
            BackendError::NotSupported(format!("{} has no profile {profile}", model.key))
        })?;
        if !model.profiles[pidx].starts.contains(&start) {
            return Err(BackendError::InvalidArgument(format!(
                "{} cannot start at {start}",
                model.profiles[pidx].name
            )));
        }
        let mut layout: Vec<Instance> = Vec::new();
        for gi in &g.gis {
            let i = model
                .profile_index_by_nvml(gi.profile)
                .ok_or_else(|| BackendError::Other(format!("unknown profile {}", gi.profile)))?;
            layout.push(Instance {
                profile: i,
                start: gi.start,
            });
        }
        layout.push(Instance {
            profile: pidx,
            start,
        });
        if let Err(v) = geometry::check(model, &layout) {
            return Err(BackendError::InsufficientResources(v.to_string()));
        }
        let taken: Vec<u32> = g.gis.iter().map(|gi| gi.id).collect();
        let id = driver_gi_id(
            model.memory_slots,
            model.profiles[pidx].slots,
            start,
            &taken,
        );
        let g = self.gpu_mut(gpu)?;
        g.gis.push(SimGi {
            id,
            profile,
            start,
            cis: Vec::new(),
        });
        Ok(id)
    }

    fn gi_mut(&mut self, gpu: u32, gi: u32) -> Result<&mut SimGi> {
        self.gpu_mut(gpu)?
            .gis
            .iter_mut()
            .find(|g| g.id == gi)
            .ok_or_else(|| BackendError::NotFound(format!("no GPU instance {gi} on GPU {gpu}")))
    }

    /// NVML `GpuInstanceCreateComputeInstance`.
    pub fn create_compute_instance(
        &mut self,
        catalog: &Catalog,
        gpu: u32,
        gi: u32,
        slices: u8,
    ) -> Result<u32> {
        let g = self.gpu_ref(gpu)?;
        let model = Self::model(catalog, g)?;
        let sim_gi =
            g.gis.iter().find(|x| x.id == gi).ok_or_else(|| {
                BackendError::NotFound(format!("no GPU instance {gi} on GPU {gpu}"))
            })?;
        let gi_slices = model
            .profile_by_nvml(sim_gi.profile)
            .map(|p| p.compute)
            .unwrap_or(0);
        let max = if slices == gi_slices {
            1
        } else {
            ci_max_count(gi_slices, slices).unwrap_or(0)
        };
        if max == 0 {
            return Err(BackendError::NotSupported(format!(
                "a {gi_slices}-slice GPU instance has no {slices}-slice compute instance"
            )));
        }
        let used: u32 = sim_gi.cis.iter().map(|c| c.slices as u32).sum();
        let same = sim_gi.cis.iter().filter(|c| c.slices == slices).count();
        if used + slices as u32 > gi_slices as u32 || same >= max as usize {
            return Err(BackendError::InsufficientResources(format!(
                "GPU instance {gi} has no room for a {slices}-slice compute instance"
            )));
        }
        let uuid = format!("MIG-{}", self.next_uuid());
        let sim_gi = self.gi_mut(gpu, gi)?;
        let id = (0..)
            .find(|i| !sim_gi.cis.iter().any(|c| c.id == *i))
            .expect("free");
        sim_gi.cis.push(SimCi {
            id,
            slices,
            uuid,
            processes: Vec::new(),
        });
        Ok(id)
    }

    /// NVML `ComputeInstanceDestroy`: IN_USE while processes run on it.
    pub fn destroy_compute_instance(&mut self, gpu: u32, gi: u32, ci: u32) -> Result<()> {
        let sim_gi = self.gi_mut(gpu, gi)?;
        let pos = sim_gi.cis.iter().position(|c| c.id == ci).ok_or_else(|| {
            BackendError::NotFound(format!("no compute instance {ci} in GPU instance {gi}"))
        })?;
        if !sim_gi.cis[pos].processes.is_empty() {
            return Err(BackendError::InUse(format!(
                "compute instance {ci} of GPU instance {gi} runs {} process(es)",
                sim_gi.cis[pos].processes.len()
            )));
        }
        sim_gi.cis.remove(pos);
        Ok(())
    }

    /// NVML `GpuInstanceDestroy`: IN_USE while it has compute instances or processes.
    pub fn destroy_gpu_instance(&mut self, gpu: u32, gi: u32) -> Result<()> {
        let g = self.gpu_mut(gpu)?;
        let pos =
            g.gis.iter().position(|x| x.id == gi).ok_or_else(|| {
                BackendError::NotFound(format!("no GPU instance {gi} on GPU {gpu}"))
            })?;
        if !g.gis[pos].cis.is_empty() {
            return Err(BackendError::InUse(format!(
                "GPU instance {gi} still has {} compute instance(s)",
                g.gis[pos].cis.len()
            )));
        }
        g.gis.remove(pos);
        Ok(())
    }

    /// Finds the CI with a MIG UUID: (gpu, gi, ci).
    pub fn find_mig(&self, uuid: &str) -> Option<(u32, u32, u32)> {
        self.gpus.iter().find_map(|g| {
            g.gis.iter().find_map(|gi| {
                gi.cis
                    .iter()
                    .find(|c| c.uuid.eq_ignore_ascii_case(uuid))
                    .map(|c| (g.index, gi.id, c.id))
            })
        })
    }

    /// Marks a MIG device busy with a process, or idle (`None`).
    pub fn set_busy(&mut self, uuid: &str, process: Option<Process>) -> Result<()> {
        let (gpu, gi, ci) = self
            .find_mig(uuid)
            .ok_or_else(|| BackendError::NotFound(format!("no MIG device {uuid}")))?;
        let c = self
            .gi_mut(gpu, gi)?
            .cis
            .iter_mut()
            .find(|c| c.id == ci)
            .expect("found");
        match process {
            Some(p) => c.processes.push(p),
            None => c.processes.clear(),
        }
        Ok(())
    }
}

/// The engine as a [`crate::Backend`] held in memory: for tests, benchmarks and embedding.
pub struct InMemory {
    pub node: SimNode,
    pub catalog: Catalog,
    /// Mutating calls made so far.
    pub mutations: u64,
}

impl InMemory {
    pub fn new(catalog: Catalog, models: &[&GpuModel], seed: u64) -> InMemory {
        InMemory {
            node: SimNode::new(models, seed),
            catalog,
            mutations: 0,
        }
    }
}

impl crate::Backend for InMemory {
    fn kind(&self) -> &'static str {
        "sim"
    }
    fn gpus(&mut self) -> Result<Vec<GpuInfo>> {
        Ok(self.node.gpu_infos())
    }
    fn mig_mode(&mut self, gpu: u32) -> Result<MigMode> {
        self.node.mig_mode(gpu)
    }
    fn set_mig_mode(&mut self, gpu: u32, enabled: bool) -> Result<MigMode> {
        self.mutations += 1;
        self.node.set_mig_mode(gpu, enabled)
    }
    fn gpu_instances(&mut self, gpu: u32) -> Result<Vec<GpuInstance>> {
        self.node.gpu_instances(&self.catalog, gpu)
    }
    fn create_gpu_instance(&mut self, gpu: u32, profile: NvmlGiProfile, start: u8) -> Result<u32> {
        self.mutations += 1;
        self.node
            .create_gpu_instance(&self.catalog, gpu, profile, start)
    }
    fn create_compute_instance(&mut self, gpu: u32, gi: u32, slices: u8) -> Result<u32> {
        self.mutations += 1;
        self.node
            .create_compute_instance(&self.catalog, gpu, gi, slices)
    }
    fn destroy_compute_instance(&mut self, gpu: u32, gi: u32, ci: u32) -> Result<()> {
        self.mutations += 1;
        self.node.destroy_compute_instance(gpu, gi, ci)
    }
    fn destroy_gpu_instance(&mut self, gpu: u32, gi: u32) -> Result<()> {
        self.mutations += 1;
        self.node.destroy_gpu_instance(gpu, gi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> (Catalog, SimNode) {
        let c = Catalog::embedded();
        let models = c.gpu_list("H100-80GB,A100-40GB").unwrap();
        let n = SimNode::new(&models, 42);
        (c, n)
    }

    #[test]
    fn driver_style_ids_and_uuids() {
        let (c, mut n) = node();
        assert!(n.gpus[0].uuid.starts_with("GPU-") && n.gpus[0].uuid.len() == 40);
        let gi = n
            .create_gpu_instance(&c, 0, NvmlGiProfile::Slice3, 4)
            .unwrap();
        assert_eq!(gi, 2);
        let gi1 = n
            .create_gpu_instance(&c, 0, NvmlGiProfile::Slice1, 1)
            .unwrap();
        assert_eq!(gi1, 8);
        let ci = n.create_compute_instance(&c, 0, 2, 3).unwrap();
        assert_eq!(ci, 0);
        let list = n.gpu_instances(&c, 0).unwrap();
        assert!(list[1].compute_instances[0].uuid.starts_with("MIG-"));
        assert_eq!(list[1].profile_id, 9);
    }

    #[test]
    fn nvml_errors() {
        let (c, mut n) = node();
        n.create_gpu_instance(&c, 0, NvmlGiProfile::Slice4, 0)
            .unwrap();
        assert!(matches!(
            n.create_gpu_instance(&c, 0, NvmlGiProfile::Slice3, 0),
            Err(BackendError::InsufficientResources(_))
        ));
        assert!(matches!(
            n.create_gpu_instance(&c, 0, NvmlGiProfile::Slice3, 2),
            Err(BackendError::InvalidArgument(_))
        ));
        n.create_compute_instance(&c, 0, 1, 4).unwrap();
        assert!(matches!(
            n.destroy_gpu_instance(c_gpu(), 1),
            Err(BackendError::InUse(_))
        ));
        let uuid = n.gpu_instances(&c, 0).unwrap()[0].compute_instances[0]
            .uuid
            .clone();
        n.set_busy(
            &uuid,
            Some(Process {
                pid: 7,
                name: "python".into(),
            }),
        )
        .unwrap();
        assert!(matches!(
            n.destroy_compute_instance(0, 1, 0),
            Err(BackendError::InUse(_))
        ));
        n.set_busy(&uuid, None).unwrap();
        n.destroy_compute_instance(0, 1, 0).unwrap();
        n.destroy_gpu_instance(0, 1).unwrap();
        assert!(n.gpu_instances(&c, 0).unwrap().is_empty());
    }

    fn c_gpu() -> u32 {
        0
    }

    #[test]
    fn reboot_forgets_instances_and_hopper_mode() {
        let (c, mut n) = node();
        n.create_gpu_instance(&c, 0, NvmlGiProfile::Slice7, 0)
            .unwrap();
        n.create_gpu_instance(&c, 1, NvmlGiProfile::Slice7, 0)
            .unwrap();
        n.reboot();
        assert!(!n.gpus[0].mig.current, "Hopper forgets MIG mode");
        assert!(n.gpus[1].mig.current, "Ampere keeps it");
        assert!(n.gpus.iter().all(|g| g.gis.is_empty()));
        // Ampere: enabling needs a reset.
        n.set_mig_mode(1, false).unwrap();
        assert_eq!(
            n.mig_mode(1).unwrap(),
            MigMode {
                current: true,
                pending: false
            }
        );
        n.reset(1).unwrap();
        assert!(!n.mig_mode(1).unwrap().current);
    }
}
