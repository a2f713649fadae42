//! Node labels like GPU Feature Discovery's (`nvidia.com/…`), plus carve's own (`carve.dev/…`).
//! Pure; the agent writes them to a file (`key=value` lines, GFD's output format).
//!
//! The labels say what the node offers, as its inventory has it:
//! - GFD's `nvidia.com/gpu.replicas` and `nvidia.com/gpu.sharing-strategy` describe the
//!   `nvidia.com/gpu` resource (or `nvidia.com/gpu.shared`), as GFD does: the most time-sliced
//!   replicas of one GPU offered under it (the agent's `--replicas`), and `time-slicing` when
//!   there are any; else `1` and `none`. A plan's time-sliced shares are offered under each
//!   tenant's own `carve.dev/<tenant>` resource, not as `nvidia.com/gpu` replicas, so they leave
//!   these two as they are.
//! - carve's own, for every GPU carve's scheduler time-slices (a plan's time-sliced GPU, or one
//!   split into `--replicas`): `carve.dev/time-sliced-gpus` (how many), and per GPU `<i>` (its
//!   index) `carve.dev/gpu-<i>.policy` (`best-effort`, `equal-share`, `fixed-share`),
//!   `carve.dev/gpu-<i>.slice-ms` (the slice its scheduler runs: the planned one, else vGPU's
//!   default for its tenant count), `carve.dev/gpu-<i>.work-conserving` (`true`/`false`),
//!   `carve.dev/gpu-<i>.tenants` (its scheduler's tenants) and `carve.dev/gpu-<i>.shares` (the
//!   devices offered on it); per planned tenant `carve.dev/tenant.<name>` (its resource's
//!   devices on the node); `carve.dev/agent` and `carve.dev/plan-node`.

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
    // GFD's sharing labels: `nvidia.com/gpu` replicas only.
    let mut replicas = BTreeMap::<u32, u32>::new();
    for r in inv
        .resources
        .iter()
        .filter(|r| r.name == "nvidia.com/gpu" || r.name == "nvidia.com/gpu.shared")
    {
        for d in r
            .devices
            .iter()
            .filter(|d| matches!(d.kind, DeviceKind::Share { .. }))
        {
            *replicas.entry(d.gpu_index).or_default() += 1;
        }
    }
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
    // carve's: what each time-sliced GPU's scheduler runs.
    put("carve.dev/agent", "true".into());
    put("carve.dev/time-sliced-gpus", inv.shared.len().to_string());
    for g in &inv.shared {
        let st = &g.schedule.settings;
        let slice_ns = st
            .slice_ns
            .unwrap_or_else(|| carve_timeslice::default_slice_ns(g.schedule.tenants.len()));
        let shares = inv
            .devices()
            .filter(|(_, d)| {
                d.gpu_index == g.gpu_index && matches!(d.kind, DeviceKind::Share { .. })
            })
            .count();
        let key = |what: &str| format!("carve.dev/gpu-{}.{what}", g.gpu_index);
        put(&key("policy"), st.policy.as_str().into());
        put(&key("slice-ms"), (slice_ns / 1_000_000).to_string());
        put(&key("work-conserving"), st.work_conserving.to_string());
        put(&key("tenants"), g.schedule.tenants.len().to_string());
        put(&key("shares"), shares.to_string());
    }
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
