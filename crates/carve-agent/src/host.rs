//! The driver's device nodes on this host, for the CDI spec: a GPU's minor number
//! (`/proc/driver/nvidia/gpus/<pci>/information`, "Device Minor") and the capability device of
//! each MIG GPU and compute instance (`/proc/driver/nvidia-caps/mig-minors`, lines like
//! `gpu0/gi1/access 21` and `gpu0/gi1/ci0/access 22`, devices `/dev/nvidia-caps/nvidia-cap<N>`).
//! The GPU's NUMA node comes from sysfs. Parsing is pure; reading is one function. On a node without the driver nothing is found and
//! the CDI spec falls back to `/dev/nvidia<index>` without capability devices.

use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceNodes {
    /// GPU index → its device minor (`/dev/nvidia<minor>`).
    pub gpu_minor: BTreeMap<u32, u32>,
    /// `gpu<minor>/gi<id>/access` and `gpu<minor>/gi<id>/ci<id>/access` → capability minor.
    pub mig_caps: BTreeMap<String, u32>,
    /// GPU index → its NUMA node (`/sys/bus/pci/devices/<pci>/numa_node`, when not -1).
    pub numa: BTreeMap<u32, i64>,
}

/// `mig-minors`: one `<path> <minor>` per line; anything else is skipped.
pub fn parse_mig_minors(text: &str) -> BTreeMap<String, u32> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (k, v) = (it.next()?, it.next()?);
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// The "Device Minor:" of a GPU's `information` file.
pub fn parse_device_minor(text: &str) -> Option<u32> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == "Device Minor")
            .then(|| v.trim().parse().ok())
            .flatten()
    })
}

/// NVML's bus id (`00000000:17:00.0`) as the driver's proc directory names it (`0000:17:00.0`).
pub fn proc_pci_id(bus_id: &str) -> String {
    let b = bus_id.trim().to_ascii_lowercase();
    match b.split_once(':') {
        Some((domain, rest)) if domain.len() > 4 => {
            format!("{}:{rest}", &domain[domain.len() - 4..])
        }
        _ => b,
    }
}

impl DeviceNodes {
    /// Reads the driver's files under `proc` (normally `/proc`) and the PCI devices' NUMA nodes
    /// under `sys` (normally `/sys`) for GPUs `(index, bus id)`.
    pub fn read(proc: &Path, sys: &Path, gpus: &[(u32, String)]) -> DeviceNodes {
        let mut n = DeviceNodes::default();
        for (index, bus) in gpus {
            let numa = sys
                .join("bus/pci/devices")
                .join(proc_pci_id(bus))
                .join("numa_node");
            if let Some(v) = std::fs::read_to_string(numa)
                .ok()
                .and_then(|t| t.trim().parse::<i64>().ok())
                .filter(|v| *v >= 0)
            {
                n.numa.insert(*index, v);
            }
            let info = proc
                .join("driver/nvidia/gpus")
                .join(proc_pci_id(bus))
                .join("information");
            if let Some(m) = std::fs::read_to_string(info)
                .ok()
                .as_deref()
                .and_then(parse_device_minor)
            {
                n.gpu_minor.insert(*index, m);
            }
        }
        if let Ok(t) = std::fs::read_to_string(proc.join("driver/nvidia-caps/mig-minors")) {
            n.mig_caps = parse_mig_minors(&t);
        }
        n
    }

    /// `/dev/nvidia<minor>` of GPU `index` (the index when the minor is unknown).
    pub fn gpu_node(&self, index: u32) -> String {
        format!(
            "/dev/nvidia{}",
            self.gpu_minor.get(&index).copied().unwrap_or(index)
        )
    }

    /// The capability devices a MIG device needs (its GPU instance's and compute instance's),
    /// when the driver lists them.
    pub fn mig_nodes(&self, index: u32, gi: u32, ci: u32) -> Vec<String> {
        let Some(minor) = self.gpu_minor.get(&index) else {
            return Vec::new();
        };
        [
            format!("gpu{minor}/gi{gi}/access"),
            format!("gpu{minor}/gi{gi}/ci{ci}/access"),
        ]
        .iter()
        .filter_map(|k| self.mig_caps.get(k))
        .map(|m| format!("/dev/nvidia-caps/nvidia-cap{m}"))
        .collect()
    }
}
