//! The observed state as a mig-parted config (`carve export`).

use crate::Observed;
use carve_model::Catalog;
use std::collections::BTreeMap;

/// One `mig-devices` map per GPU: profile string → count (`1c.3g.40gb` when a compute instance is
/// smaller than its GPU instance). `None` when MIG is off.
fn devices_of(catalog: &Catalog, o: &Observed) -> Option<BTreeMap<String, u32>> {
    if !o.info.mig.is_some_and(|m| m.current) {
        return None;
    }
    let model = o.model.as_deref().and_then(|k| catalog.gpu(k).ok());
    let mut map = BTreeMap::new();
    for gi in &o.instances {
        let name = &gi.profile_name;
        let full = model
            .and_then(|m| m.profile_by_nvml(gi.profile))
            .map(|p| p.compute)
            .unwrap_or(0);
        if gi.compute_instances.is_empty() {
            *map.entry(name.clone()).or_default() += 1;
        }
        for ci in &gi.compute_instances {
            let key = if ci.slices == full {
                name.clone()
            } else {
                format!("{}c.{name}", ci.slices)
            };
            *map.entry(key).or_default() += 1;
        }
    }
    Some(map)
}

/// Renders the observed GPUs as a mig-parted `version: v1` config with one config, `label`. GPUs
/// with the same layout share an entry.
pub fn to_migparted(catalog: &Catalog, observed: &[Observed], label: &str) -> String {
    type Devices = Option<BTreeMap<String, u32>>;
    let mut groups: Vec<(Devices, Vec<u32>)> = Vec::new();
    for o in observed {
        let d = devices_of(catalog, o);
        match groups.iter_mut().find(|(g, _)| *g == d) {
            Some((_, idx)) => idx.push(o.info.index),
            None => groups.push((d, vec![o.info.index])),
        }
    }
    let mut s = format!("version: v1\nmig-configs:\n  {label}:\n");
    for (devices, idx) in groups {
        let list: Vec<String> = idx.iter().map(|i| i.to_string()).collect();
        let devs = if idx.len() == observed.len() {
            "all".to_string()
        } else {
            format!("[{}]", list.join(", "))
        };
        s.push_str(&format!("    - devices: {devs}\n"));
        match devices {
            None => s.push_str("      mig-enabled: false\n"),
            Some(map) => {
                s.push_str("      mig-enabled: true\n");
                if map.is_empty() {
                    s.push_str("      mig-devices: {}\n");
                } else {
                    s.push_str("      mig-devices:\n");
                    for (k, v) in map {
                        s.push_str(&format!("        \"{k}\": {v}\n"));
                    }
                }
            }
        }
    }
    s
}
