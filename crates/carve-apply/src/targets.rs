//! Placed targets from a mig-parted config: for each GPU it selects, the instances it asks for,
//! keeping as many of the current ones where they are as the geometry allows (busy ones first).

use crate::{model_of, ApplyError, GpuTarget, Observed, TargetInstance};
use carve_backend::GpuInstance;
use carve_migparted::{Devices, NamedConfig};
use carve_model::geometry::{self, Instance};
use carve_model::{Catalog, GpuModel};

/// A desired GI: profile index and the compute-instance size.
type Item = (usize, u8);

/// The most current instances [`choose_layout`] weighs keeping (it tries every subset).
const MAX_KEEP_CANDIDATES: usize = 16;

/// Why [`choose_layout`] found no placed target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// More than 16 current instances could stay (every subset of them is tried).
    #[error("too many GPU instances to consider")]
    TooManyInstances { candidates: usize },
    /// The wanted instances do not fit the GPU even when it is empty; `message` is `reason` in
    /// the model's words (`carve_migparted::infeasible_text`).
    #[error("{message}")]
    Infeasible {
        reason: geometry::Infeasible,
        message: String,
    },
    /// They fit an empty GPU, but not around any set of the instances that must stay.
    #[error("no layout found")]
    NoLayout,
}

/// Chooses placements for `items` on a GPU holding `current`, keeping the most current instances
/// (busy ones first). Returns the placed target, or why it cannot be placed.
pub fn choose_layout(
    model: &GpuModel,
    current: &[GpuInstance],
    items: &[Item],
) -> Result<Vec<TargetInstance>, LayoutError> {
    // Current instances that could stay: same profile as some wanted item and a compatible CI
    // split (equal, or none yet: a GI whose CI was never made).
    let cand: Vec<(usize, Item, &GpuInstance)> = current
        .iter()
        .filter_map(|gi| {
            let p = model.profile_index_by_nvml(gi.profile)?;
            let cis: Vec<u8> = gi.compute_instances.iter().map(|c| c.slices).collect();
            let item = items
                .iter()
                .find(|&&(ip, cs)| ip == p && (cis.is_empty() || cis == [cs]))?;
            Some((p, *item, gi))
        })
        .collect();
    if cand.len() > MAX_KEEP_CANDIDATES {
        return Err(LayoutError::TooManyInstances {
            candidates: cand.len(),
        });
    }
    let mut best: Option<((usize, usize, usize), Vec<TargetInstance>)> = None;
    for mask in 0u32..(1 << cand.len()) {
        let kept: Vec<&(usize, Item, &GpuInstance)> = cand
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, c)| c)
            .collect();
        let score = (
            kept.iter().filter(|c| c.2.in_use()).count(),
            kept.len(),
            kept.iter()
                .filter(|c| !c.2.compute_instances.is_empty())
                .count(),
        );
        if best.as_ref().is_some_and(|(s, _)| *s >= score) {
            continue;
        }
        // The rest of the items, after taking out the kept ones.
        let mut rest: Vec<Item> = items.to_vec();
        let mut ok = true;
        for k in &kept {
            match rest.iter().position(|i| *i == k.1) {
                Some(pos) => {
                    rest.remove(pos);
                }
                None => {
                    ok = false;
                    break;
                }
            }
        }
        if !ok {
            continue;
        }
        let existing: Vec<Instance> = kept
            .iter()
            .map(|k| Instance {
                profile: k.0,
                start: k.2.start,
            })
            .collect();
        let mut counts = vec![0u32; model.profiles.len()];
        for (p, _) in &rest {
            counts[*p] += 1;
        }
        let Ok(layout) = geometry::fit(model, &counts, &existing) else {
            continue;
        };
        // Pair placed instances with their CI sizes: kept first (in order), then the rest by profile.
        let mut rest_cis = rest.clone();
        let mut target = Vec::new();
        for (n, inst) in layout.iter().enumerate() {
            let p = &model.profiles[inst.profile];
            let ci = if n < kept.len() {
                kept[n].1 .1
            } else {
                let pos = rest_cis
                    .iter()
                    .position(|(rp, _)| *rp == inst.profile)
                    .expect("placed");
                rest_cis.remove(pos).1
            };
            target.push(TargetInstance {
                profile: p.name.clone(),
                nvml: p.nvml,
                start: inst.start,
                size: p.slots,
                compute_instances: vec![ci],
            });
        }
        target.sort_by_key(|t| t.start);
        best = Some((score, target));
    }
    if let Some((_, t)) = best {
        return Ok(t);
    }
    let mut counts = vec![0u32; model.profiles.len()];
    for (p, _) in items {
        counts[*p] += 1;
    }
    match geometry::fit(model, &counts, &[]) {
        Err(reason) => Err(LayoutError::Infeasible {
            message: carve_migparted::infeasible_text(model, &reason),
            reason,
        }),
        Ok(_) => Err(LayoutError::NoLayout),
    }
}

/// Turns mig-parted config `cfg` into targets for the observed GPUs. GPUs no entry selects are
/// left out (untouched); a GPU two entries select is an error.
pub fn targets_from_migparted(
    catalog: &Catalog,
    cfg: &NamedConfig,
    observed: &[Observed],
) -> Result<Vec<GpuTarget>, ApplyError> {
    let mut targets = Vec::new();
    for o in observed {
        let idx = o.info.index;
        let matching: Vec<(usize, &carve_migparted::Entry)> = cfg
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| {
                let dev_ok = match &e.devices {
                    Devices::All => true,
                    Devices::List(l) => l.contains(&idx),
                };
                let filter_ok = e.device_filter.is_empty()
                    || e.device_filter
                        .iter()
                        .any(|f| f.device_id == o.info.pci_device_id);
                dev_ok && filter_ok
            })
            .collect();
        let entry = match matching.as_slice() {
            [] => continue,
            [(_, e)] => *e,
            [(a, _), (b, _), ..] => {
                return Err(ApplyError::Input(format!(
                    "config '{}': GPU {idx} is selected by entries {} and {}",
                    cfg.name,
                    a + 1,
                    b + 1
                )))
            }
        };
        let Some(model) = model_of(catalog, &o.info) else {
            return Err(ApplyError::Input(format!(
                "GPU {idx} ({}, PCI id 0x{:04X}) is not in the catalog; add it with --catalog",
                o.info.name, o.info.pci_device_id
            )));
        };
        if o.info.mig.is_none() {
            return Err(ApplyError::Input(format!(
                "GPU {idx} ({}) does not support MIG",
                o.info.name
            )));
        }
        let mut items: Vec<Item> = Vec::new();
        if entry.mig_enabled {
            carve_migparted::resolve(model, entry).map_err(|e| {
                ApplyError::Input(format!("{}: config '{}': {e}", e.pos(), cfg.name))
            })?;
            for d in &entry.mig_devices {
                let p = model.profile_index(&d.profile).expect("resolved");
                let name = carve_model::ProfileName::parse(&d.profile);
                let ci = name
                    .and_then(|n| n.ci_slices)
                    .unwrap_or(model.profiles[p].compute);
                for _ in 0..d.count.min(64) {
                    items.push((p, ci));
                }
            }
        }
        let instances = choose_layout(model, &o.gpu_instances(), &items).map_err(|m| {
            ApplyError::Infeasible(format!(
                "config '{}' on GPU {idx} ({}): {m}",
                cfg.name, model.key
            ))
        })?;
        targets.push(GpuTarget {
            gpu_uuid: o.info.uuid.clone(),
            gpu_index: idx,
            model: model.key.clone(),
            mig_enabled: entry.mig_enabled,
            instances,
        });
    }
    Ok(targets)
}
