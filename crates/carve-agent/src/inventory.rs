//! What the node offers Kubernetes: resources and their devices, worked out from the observed
//! GPUs and (when there is one) the plan. Pure: no I/O, so every rule here is tested directly.
//!
//! - A MIG device (a GPU instance's compute instance) is one device, named by its `MIG-` UUID,
//!   under `nvidia.com/mig-<profile>` (mixed strategy; `+` becomes `.`) or `nvidia.com/gpu`
//!   (single strategy: every MIG device of the node must then be the same profile).
//! - A time-sliced GPU of the plan offers one device per planned share, `GPU-<uuid>::<i>`, under
//!   the tenant's own resource when the plan gives one (`carve.dev/<tenant>`), else under
//!   `nvidia.com/gpu` (`nvidia.com/gpu.shared` when renamed).
//! - Any other GPU with MIG off is one device `GPU-<uuid>` under `nvidia.com/gpu`, or `replicas`
//!   devices `GPU-<uuid>::<i>` when replicas are asked for (each replica is then a tenant of its
//!   own under an equal-share scheduler).

use crate::error::InventoryError;
use carve_apply::Observed;
use carve_plan::plan::{GpuMode, Plan};
use carve_timeslice::Schedule;
use serde::Serialize;
use std::collections::BTreeMap;

/// How MIG devices are named, as the NVIDIA device plugin's `migStrategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MigStrategy {
    /// One resource per profile: `nvidia.com/mig-1g.10gb`.
    Mixed,
    /// Every MIG device is an `nvidia.com/gpu` (all must be the same profile).
    Single,
}

impl MigStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            MigStrategy::Mixed => "mixed",
            MigStrategy::Single => "single",
        }
    }
}

/// Which device `GetPreferredAllocation` prefers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preference {
    /// Fill GPUs that are already in use first.
    Pack,
    /// Prefer the least used GPUs.
    Spread,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub mig_strategy: MigStrategy,
    /// Time-sliced replicas under `nvidia.com/gpu.shared` instead of `nvidia.com/gpu`.
    pub rename_shared: bool,
    /// Replicas of each GPU that is neither MIG nor planned (0 or 1: whole GPUs).
    pub replicas: u32,
    pub preference: Preference,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            mig_strategy: MigStrategy::Mixed,
            rename_shared: false,
            replicas: 0,
            preference: Preference::Spread,
        }
    }
}

/// What a device is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum DeviceKind {
    /// A whole GPU.
    Gpu,
    /// A MIG device: compute instance `ci` of GPU instance `gi`, the `index`-th MIG device of
    /// its GPU (the index CUDA and `nvidia-smi` use).
    Mig {
        profile: String,
        gi: u32,
        ci: u32,
        index: u32,
        start: u8,
    },
    /// Replica `replica` of a time-sliced GPU.
    Share { replica: u32 },
}

/// One device as the kubelet sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Device {
    /// The kubelet's device ID (at most 63 characters).
    pub id: String,
    pub gpu_index: u32,
    pub gpu_uuid: String,
    /// The UUID a container is given (`GPU-…` or `MIG-…`).
    pub uuid: String,
    #[serde(flatten)]
    pub kind: DeviceKind,
    /// The tenant the plan put here (shares: whose share; MIG: whose slice).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub healthy: bool,
}

/// One extended resource, served by one plugin on one socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resource {
    /// `nvidia.com/mig-1g.10gb`.
    pub name: String,
    /// Socket file name in the device-plugin directory.
    pub endpoint: String,
    pub devices: Vec<Device>,
}

/// A time-sliced GPU: the schedule its shares run under (a planned GPU's is
/// `carve_plan::schedule::gpu_schedule`; `--replicas` GPUs get `carve_plan::schedule::replicas`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SharedGpu {
    pub gpu_index: u32,
    pub gpu_uuid: String,
    pub schedule: Schedule,
}

#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Inventory {
    pub resources: Vec<Resource>,
    pub shared: Vec<SharedGpu>,
    /// Time-sliced GPUs whose shares are not offered because they could not be enforced
    /// ([`Inventory::withhold_shares`]), by index.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub withheld: Vec<u32>,
    pub warnings: Vec<String>,
}

/// `nvidia.com/mig-1g.10gb+me` → `nvidia.com/mig-1g.10gb.me`.
pub fn mig_resource(profile: &str) -> String {
    format!("nvidia.com/mig-{}", profile.replace('+', "."))
}

/// The socket file of a resource: `carve-nvidia.com_mig-1g.10gb.sock`.
pub fn endpoint_of(resource: &str) -> String {
    let safe: String = resource
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("carve-{safe}.sock")
}

/// A resource name the kubelet accepts: `<domain>/<name>`, name a DNS label-like string, the
/// whole at most 63 characters.
pub fn valid_resource_name(name: &str) -> bool {
    let Some((domain, rest)) = name.split_once('/') else {
        return false;
    };
    let ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
            && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && s.chars().last().is_some_and(|c| c.is_ascii_alphanumeric())
    };
    name.len() <= 63 && domain.contains('.') && ok(domain) && ok(rest)
}

fn push(res: &mut Vec<Resource>, name: &str, d: Device) {
    match res.iter_mut().find(|r| r.name == name) {
        Some(r) => r.devices.push(d),
        None => res.push(Resource {
            name: name.to_string(),
            endpoint: endpoint_of(name),
            devices: vec![d],
        }),
    }
}

/// The node's resources. `plan` is the plan and the name of this node in it. Fails (input the
/// kubelet could not use) when single strategy meets mixed profiles, or a name is invalid.
pub fn inventory(
    observed: &[Observed],
    plan: Option<(&Plan, &str)>,
    opts: &Options,
) -> Result<Inventory, InventoryError> {
    let mut res: Vec<Resource> = Vec::new();
    let mut shared = Vec::new();
    let mut warnings = Vec::new();
    let shared_name = if opts.rename_shared {
        "nvidia.com/gpu.shared"
    } else {
        "nvidia.com/gpu"
    };
    for o in observed {
        let planned = plan.and_then(|(p, node)| {
            p.node_gpus(node)
                .find(|g| g.index == o.info.index)
                .map(|g| (p, g))
        });
        let mig_on = o.info.mig.is_some_and(|m| m.current);
        let gpu_dev = |id: String, kind: DeviceKind, tenant: Option<String>| Device {
            id,
            gpu_index: o.info.index,
            gpu_uuid: o.info.uuid.clone(),
            uuid: o.info.uuid.clone(),
            kind,
            tenant,
            healthy: true,
        };
        if mig_on {
            // MIG devices in the order NVML enumerates them: by GI start, then CI id.
            let mut devs: Vec<(u8, u32, u32, String, String)> = Vec::new();
            for (gi, name) in o.instances.iter().map(|i| (&i.gi, &i.profile_name)) {
                for ci in &gi.compute_instances {
                    devs.push((gi.start, gi.id, ci.id, ci.uuid.clone(), name.clone()));
                }
            }
            devs.sort();
            if devs.is_empty() {
                warnings.push(format!(
                    "GPU {} has MIG on but no MIG devices: it offers nothing",
                    o.info.index
                ));
            }
            for (index, (start, gi, ci, uuid, profile)) in devs.into_iter().enumerate() {
                let tenant = planned.and_then(|(_, g)| {
                    g.instances
                        .iter()
                        .find(|i| i.start == start && i.profile == profile)
                        .map(|i| i.tenant.clone())
                });
                let name = match opts.mig_strategy {
                    MigStrategy::Mixed => mig_resource(&profile),
                    MigStrategy::Single => "nvidia.com/gpu".to_string(),
                };
                push(
                    &mut res,
                    &name,
                    Device {
                        id: uuid.clone(),
                        gpu_index: o.info.index,
                        gpu_uuid: o.info.uuid.clone(),
                        uuid,
                        kind: DeviceKind::Mig {
                            profile,
                            gi,
                            ci,
                            index: index as u32,
                            start,
                        },
                        tenant,
                        healthy: true,
                    },
                );
            }
            continue;
        }
        match planned.map(|(p, g)| (p, g, g.mode)) {
            Some((p, g, GpuMode::TimeSliced)) => {
                let schedule = match carve_plan::schedule::gpu_schedule(g) {
                    Ok(Some(schedule)) => schedule,
                    Ok(None) => continue,
                    Err(e) => {
                        // No scheduler can run it, so no share can be enforced: none is offered.
                        warnings.push(format!("{e}: its shares are not offered"));
                        continue;
                    }
                };
                for (i, s) in g.shares.iter().enumerate() {
                    let own = p
                        .tenant(&s.tenant)
                        .and_then(|t| t.resource.clone())
                        .filter(|r| r != "nvidia.com/gpu" && r != "nvidia.com/gpu.shared");
                    let name = own.unwrap_or_else(|| shared_name.to_string());
                    push(
                        &mut res,
                        &name,
                        gpu_dev(
                            format!("{}::{i}", o.info.uuid),
                            DeviceKind::Share { replica: i as u32 },
                            Some(s.tenant.clone()),
                        ),
                    );
                }
                shared.push(SharedGpu {
                    gpu_index: o.info.index,
                    gpu_uuid: o.info.uuid.clone(),
                    schedule,
                });
            }
            Some((_, _, GpuMode::VgpuTimeSliced | GpuMode::VgpuMig)) => {
                warnings.push(format!(
                    "GPU {} is planned for vGPU (a hypervisor's): not offered to Kubernetes",
                    o.info.index
                ));
            }
            Some((_, g, GpuMode::Dedicated)) => {
                let tenant = g.shares.first().map(|s| s.tenant.clone()).or_else(|| {
                    plan.and_then(|(p, node)| {
                        p.tenants
                            .iter()
                            .find(|t| {
                                p.placements(&t.name)
                                    .iter()
                                    .any(|pl| pl.node == node && pl.gpu == g.index)
                            })
                            .map(|t| t.name.clone())
                    })
                });
                push(
                    &mut res,
                    "nvidia.com/gpu",
                    gpu_dev(o.info.uuid.clone(), DeviceKind::Gpu, tenant),
                );
            }
            _ if opts.replicas >= 2 => {
                let mut names = Vec::new();
                for i in 0..opts.replicas {
                    push(
                        &mut res,
                        shared_name,
                        gpu_dev(
                            format!("{}::{i}", o.info.uuid),
                            DeviceKind::Share { replica: i },
                            Some(format!("gpu{}-r{i}", o.info.index)),
                        ),
                    );
                    names.push(format!("gpu{}-r{i}", o.info.index));
                }
                shared.push(SharedGpu {
                    gpu_index: o.info.index,
                    gpu_uuid: o.info.uuid.clone(),
                    schedule: carve_plan::schedule::replicas(names),
                });
            }
            _ => push(
                &mut res,
                "nvidia.com/gpu",
                gpu_dev(o.info.uuid.clone(), DeviceKind::Gpu, None),
            ),
        }
    }
    if opts.mig_strategy == MigStrategy::Single {
        if let Some(r) = res.iter().find(|r| r.name == "nvidia.com/gpu") {
            let mut kinds: Vec<&str> = r
                .devices
                .iter()
                .map(|d| match &d.kind {
                    DeviceKind::Mig { profile, .. } => profile.as_str(),
                    DeviceKind::Gpu => "whole GPU",
                    DeviceKind::Share { .. } => "time-sliced share",
                })
                .collect();
            kinds.sort_unstable();
            kinds.dedup();
            if kinds.len() > 1 && kinds.iter().any(|k| !k.contains(' ')) {
                return Err(InventoryError::MixedKinds {
                    kinds: kinds.iter().map(|k| k.to_string()).collect(),
                });
            }
        }
    }
    for r in &res {
        if !valid_resource_name(&r.name) {
            return Err(InventoryError::ResourceName(r.name.clone()));
        }
        if let Some(d) = r.devices.iter().find(|d| d.id.len() > 63) {
            return Err(InventoryError::DeviceId(d.id.clone()));
        }
    }
    Ok(Inventory {
        resources: res,
        shared,
        withheld: Vec::new(),
        warnings,
    })
}

impl Inventory {
    pub fn resource(&self, name: &str) -> Option<&Resource> {
        self.resources.iter().find(|r| r.name == name)
    }

    /// Takes out every time-sliced share (planned shares and `--replicas`) and the schedules
    /// they would run under, with a warning saying `why`: a share that cannot be enforced is
    /// not offered (the agent does this when it has no shim). Whole GPUs and MIG devices stay.
    pub fn withhold_shares(&mut self, why: &str) {
        if self.shared.is_empty() {
            return;
        }
        for r in &mut self.resources {
            r.devices
                .retain(|d| !matches!(d.kind, DeviceKind::Share { .. }));
        }
        self.resources.retain(|r| !r.devices.is_empty());
        let gpus: Vec<u32> = self.shared.drain(..).map(|g| g.gpu_index).collect();
        self.warnings.push(format!(
            "time-sliced shares of GPU {} not offered: {why}",
            gpus.iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
        self.withheld.extend(gpus);
    }

    /// Marks devices by health: a device is unhealthy when its own UUID or its GPU's UUID is in
    /// `unhealthy`. Returns whether anything changed.
    pub fn apply_health(&mut self, unhealthy: &BTreeMap<String, u64>) -> bool {
        let mut changed = false;
        for r in &mut self.resources {
            for d in &mut r.devices {
                let h = !(unhealthy.contains_key(&d.uuid) || unhealthy.contains_key(&d.gpu_uuid));
                if h != d.healthy {
                    d.healthy = h;
                    changed = true;
                }
            }
        }
        changed
    }

    /// Every device of every resource with the resource's name.
    pub fn devices(&self) -> impl Iterator<Item = (&str, &Device)> {
        self.resources
            .iter()
            .flat_map(|r| r.devices.iter().map(move |d| (r.name.as_str(), d)))
    }
}

/// XIDs that are the application's fault, not the GPU's (the NVIDIA device plugin's defaults):
/// they do not make a device unhealthy.
pub const APPLICATION_XIDS: [u64; 6] = [13, 31, 43, 45, 68, 109];

/// `GetPreferredAllocation`: `size` devices out of `available`, always with `must`, packed onto
/// few GPUs or spread over many. `gpu_of` maps a device ID to its GPU; a GPU with fewer devices
/// available counts as more used. Returns fewer only when there are fewer.
pub fn prefer(
    available: &[String],
    must: &[String],
    size: usize,
    gpu_of: &dyn Fn(&str) -> Option<u32>,
    preference: Preference,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for m in must {
        if !out.contains(m) {
            out.push(m.clone());
        }
    }
    let mut pool: Vec<&String> = available.iter().filter(|a| !out.contains(a)).collect();
    pool.sort();
    pool.dedup();
    // Free devices per GPU (fewer free = more used).
    let mut free: BTreeMap<Option<u32>, usize> = BTreeMap::new();
    for a in &pool {
        *free.entry(gpu_of(a)).or_default() += 1;
    }
    while out.len() < size && !pool.is_empty() {
        let chosen_on = |g: Option<u32>| out.iter().filter(|o| gpu_of(o) == g).count();
        let key = |a: &String| {
            let g = gpu_of(a);
            let c = chosen_on(g) as i64;
            let f = free.get(&g).copied().unwrap_or(0) as i64;
            match preference {
                // Most already chosen on it, then the most used (fewest free), then lowest.
                Preference::Pack => (-c, f, g),
                // Fewest chosen on it, then the least used (most free), then lowest.
                Preference::Spread => (c, -f, g),
            }
        };
        let (i, _) = pool
            .iter()
            .enumerate()
            .min_by_key(|(_, a)| key(a))
            .expect("pool is not empty");
        let a = pool.remove(i);
        if let Some(f) = free.get_mut(&gpu_of(a)) {
            *f -= 1;
        }
        out.push(a.clone());
    }
    out
}
