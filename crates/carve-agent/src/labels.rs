//! Node labels like GPU Feature Discovery's (`nvidia.com/…`), plus carve's own (`carve.dev/…`).
//! Pure; the agent writes them to a file (`key=value` lines, GFD's output format).

use crate::inventory::{DeviceKind, Inventory, Options};
use carve_apply::Observed;
use std::collections::BTreeMap;

/// A label value: `[A-Za-z0-9._-]`, at most 63 characters, alphanumeric at both ends.
pub fn value(s: &str) -> String {
    let mut v: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    v.truncate(63);
    v.trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

pub fn labels(
    observed: &[Observed],
    inv: &Inventory,
    opts: &Options,
    node: Option<&str>,
) -> BTreeMap<String, String> {
    let mut l = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        l.insert(k.to_string(), v);
    };
    put("nvidia.com/gpu.count", observed.len().to_string());
    if let Some(first) = observed.first() {
        let same = observed.iter().all(|o| o.info.name == first.info.name);
        let product = if same {
            value(&first.info.name)
        } else {
            "mixed".to_string()
        };
        put("nvidia.com/gpu.product", product);
        put("nvidia.com/gpu.memory", first.info.memory_mib.to_string());
    }
    let capable = observed.iter().any(|o| o.info.mig.is_some());
    put("nvidia.com/mig.capable", capable.to_string());
    put("nvidia.com/mig.strategy", opts.mig_strategy.as_str().into());
    // Per MIG profile: count and memory.
    let mut counts: BTreeMap<String, (u32, u64)> = BTreeMap::new();
    for o in observed {
        for (gi, name) in o.instances.iter().map(|i| (&i.gi, &i.profile_name)) {
            let e = counts.entry(name.replace('+', ".")).or_default();
            e.0 += gi.compute_instances.len() as u32;
            e.1 = gi.memory_mib;
        }
    }
    for (p, (n, mib)) in &counts {
        put(&format!("nvidia.com/mig-{p}.count"), n.to_string());
        put(&format!("nvidia.com/mig-{p}.memory"), mib.to_string());
        put(&format!("nvidia.com/mig-{p}.replicas"), "1".into());
    }
    let replicas = inv
        .resources
        .iter()
        .flat_map(|r| r.devices.iter())
        .filter(|d| matches!(d.kind, DeviceKind::Share { .. }))
        .fold(BTreeMap::<u32, u32>::new(), |mut m, d| {
            *m.entry(d.gpu_index).or_default() += 1;
            m
        });
    let per_gpu = replicas.values().copied().max().unwrap_or(1);
    put("nvidia.com/gpu.replicas", per_gpu.to_string());
    put(
        "nvidia.com/gpu.sharing-strategy",
        if replicas.is_empty() {
            "none"
        } else {
            "time-slicing"
        }
        .into(),
    );
    put("carve.dev/agent", "true".into());
    put("carve.dev/time-sliced-gpus", replicas.len().to_string());
    if let Some(n) = node {
        put("carve.dev/plan-node", value(n));
    }
    for r in &inv.resources {
        if let Some(t) = r.name.strip_prefix("carve.dev/") {
            put(
                &format!("carve.dev/tenant.{t}"),
                r.devices.len().to_string(),
            );
        }
    }
    l
}

/// GFD's file format: one `key=value` per line.
pub fn to_file_text(labels: &BTreeMap<String, String>) -> String {
    labels.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
}
