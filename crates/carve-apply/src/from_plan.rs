//! Targets from a carve plan (`plan.json`, written by `carve plan`).
//!
//! A plan places every MIG instance explicitly, so nothing is chosen here: each GPU of the node
//! gets exactly the planned instances at the planned placements (one full compute instance each),
//! after checking that the plan describes this node (GPU indices and models) and that every
//! layout is valid for its model. GPUs that the plan time-slices or dedicates get MIG disabled;
//! unused GPUs, and GPUs the plan does not name, are left untouched.

use crate::{ApplyError, GpuTarget, Observed, TargetInstance};
use carve_model::geometry::{self, Instance};
use carve_model::suggest::did_you_mean;
use carve_model::Catalog;
use carve_plan::plan::{Plan, PlannedGpu};

/// The node names of a plan: its `nodes`, then any node only its GPUs name.
pub fn plan_node_names(plan: &Plan) -> Vec<&str> {
    let mut names: Vec<&str> = Vec::new();
    let all = plan
        .nodes
        .iter()
        .map(|n| n.name.as_str())
        .chain(plan.gpus.iter().map(|g| g.node.as_str()));
    for n in all {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    names
}

/// This machine's hostname, for choosing its node of a plan.
pub fn hostname() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Chooses the node of `plan` to apply: `requested` (`--node`) when given; else the plan's only
/// node; else the node named like this machine (`hostname`, or its first label).
pub fn plan_node<'p>(
    plan: &'p Plan,
    requested: Option<&str>,
    hostname: Option<&str>,
) -> Result<&'p str, ApplyError> {
    let names = plan_node_names(plan);
    if names.is_empty() {
        return Err(ApplyError::Input("the plan has no nodes".into()));
    }
    let list = names.join(", ");
    if let Some(r) = requested {
        if let Some(n) = names.iter().find(|n| **n == r) {
            return Ok(n);
        }
        let mut m = format!("the plan has no node '{r}'");
        match did_you_mean(r, names.iter().copied()).as_slice() {
            [] => {}
            [one] => m.push_str(&format!("; did you mean '{}'?", one.name)),
            many => {
                let s: Vec<String> = many.iter().map(|s| format!("'{}'", s.name)).collect();
                m.push_str(&format!("; did you mean {}?", s.join(" or ")));
            }
        }
        m.push_str(&format!(" (its nodes: {list})"));
        return Err(ApplyError::Input(m));
    }
    if let [only] = names.as_slice() {
        return Ok(only);
    }
    let host = hostname.map(str::trim).filter(|h| !h.is_empty());
    if let Some(h) = host {
        let short = h.split('.').next().unwrap_or(h);
        if let Some(n) = names.iter().find(|n| **n == h || **n == short) {
            return Ok(n);
        }
    }
    Err(ApplyError::Input(format!(
        "the plan has {} nodes ({list}){}; choose one with --node",
        names.len(),
        match host {
            Some(h) => format!(" and none is named like this machine ('{h}')"),
            None => String::new(),
        }
    )))
}

/// The node `carve up` takes a plan's part of: `requested`, else as [`plan_node`] chooses
/// (the only node, or the one named like this machine), else the first Kubernetes node with GPUs
/// in use, else the first node.
pub fn up_node<'p>(
    plan: &'p Plan,
    requested: Option<&str>,
    hostname: Option<&str>,
) -> Result<&'p str, ApplyError> {
    if requested.is_some() {
        return plan_node(plan, requested, None);
    }
    if let Ok(n) = plan_node(plan, None, hostname) {
        return Ok(n);
    }
    let kubernetes = plan.nodes.iter().find(|n| {
        n.platform == carve_plan::plan::Platform::Kubernetes
            && plan.node_gpus(&n.name).any(|g| g.is_used())
    });
    kubernetes
        .or(plan.nodes.first())
        .map(|n| n.name.as_str())
        .ok_or_else(|| ApplyError::Input("the fleet has no nodes".into()))
}

/// Turns the part of `plan` for `node` into targets for the observed GPUs (plan GPU index `i` is
/// the node's GPU with index `i`). Every check happens before anything is returned, so invalid
/// input never reaches a GPU.
pub fn targets_from_plan(
    plan: &Plan,
    node: &str,
    observed: &[Observed],
    catalog: &Catalog,
) -> Result<Vec<GpuTarget>, ApplyError> {
    let bad = |m: String| ApplyError::Input(m);
    let mut gpus: Vec<&PlannedGpu> = plan.node_gpus(node).collect();
    if gpus.is_empty() && !plan_node_names(plan).contains(&node) {
        return Err(bad(format!("the plan has no node '{node}'")));
    }
    gpus.sort_by_key(|g| g.index);
    if let Some(w) = gpus.windows(2).find(|w| w[0].index == w[1].index) {
        return Err(bad(format!("{node} GPU {} is planned twice", w[0].index)));
    }
    let mut targets = Vec::new();
    for g in gpus {
        let idx = g.index;
        let Some(o) = observed.iter().find(|o| o.info.index == idx) else {
            let have = match observed.len() {
                0 => "no GPUs".to_string(),
                1 => "1 GPU (index 0)".to_string(),
                n => format!("{n} GPUs (indices 0-{})", n - 1),
            };
            return Err(bad(format!(
                "{node} GPU {idx} is planned as {}, this node has {have}",
                g.model
            )));
        };
        // The plan names catalog keys; a GPU without MIG may carry a free-form name.
        let planned = catalog.gpu(&g.model).ok();
        let here = o.model.as_deref().unwrap_or(&o.info.name);
        let same = match (planned, o.model.as_deref()) {
            (Some(p), Some(k)) => p.key == k,
            (None, None) => true,
            _ => false,
        };
        if !same {
            return Err(bad(format!(
                "{node} GPU {idx} is planned as {}, this node's GPU {idx} is {here}",
                g.model
            )));
        }
        let Some(want_mig) = g.mode.mig_enabled() else {
            // Unused: left as it is.
            continue;
        };
        if !want_mig {
            if !g.instances.is_empty() {
                return Err(bad(format!(
                    "{node} GPU {idx} is {} but lists {} MIG instance(s)",
                    g.mode,
                    g.instances.len()
                )));
            }
            targets.push(GpuTarget {
                gpu_uuid: o.info.uuid.clone(),
                gpu_index: idx,
                model: o.model.clone().unwrap_or_else(|| g.model.clone()),
                mig_enabled: false,
                instances: Vec::new(),
            });
            continue;
        }
        let Some(model) = planned else {
            return Err(bad(format!(
                "{node} GPU {idx}: {} is not in the catalog, so it cannot be partitioned with MIG",
                g.model
            )));
        };
        if o.info.mig.is_none() {
            return Err(bad(format!(
                "{node} GPU {idx} is planned as {} (MIG), but this node's GPU {idx} ({}) does not support MIG",
                g.mode, o.info.name
            )));
        }
        let mut layout = Vec::with_capacity(g.instances.len());
        let mut instances = Vec::with_capacity(g.instances.len());
        for inst in &g.instances {
            let at = format!("{node} GPU {idx} ({})", model.key);
            let p = model
                .resolve_profile(&inst.profile)
                .map_err(|e| bad(format!("{at}: {e}")))?;
            let prof = &model.profiles[p];
            if !prof.name.eq_ignore_ascii_case(inst.profile.trim()) {
                return Err(bad(format!(
                    "{at}: '{}' is not a GPU-instance profile (a plan places whole GPU instances, e.g. {})",
                    inst.profile, prof.name
                )));
            }
            if inst.size != prof.slots {
                return Err(bad(format!(
                    "{at}: {} at {} has size {}, but {} takes {} memory slot{}",
                    prof.name,
                    inst.start,
                    inst.size,
                    prof.name,
                    prof.slots,
                    if prof.slots == 1 { "" } else { "s" }
                )));
            }
            if !prof.starts.contains(&inst.start) {
                let a: Vec<String> = prof.starts.iter().map(|s| s.to_string()).collect();
                return Err(bad(format!(
                    "{at}: {} cannot start at memory slot {}; allowed starts are {}",
                    prof.name,
                    inst.start,
                    a.join(",")
                )));
            }
            layout.push(Instance {
                profile: p,
                start: inst.start,
            });
            instances.push(TargetInstance {
                profile: prof.name.clone(),
                nvml: prof.nvml,
                start: inst.start,
                size: prof.slots,
                compute_instances: vec![prof.compute],
            });
        }
        geometry::check(model, &layout).map_err(|v| {
            bad(format!(
                "{node} GPU {idx} ({}): invalid layout: {v}",
                model.key
            ))
        })?;
        instances.sort_by_key(|t| t.start);
        targets.push(GpuTarget {
            gpu_uuid: o.info.uuid.clone(),
            gpu_index: idx,
            model: model.key.clone(),
            mig_enabled: true,
            instances,
        });
    }
    Ok(targets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{diff, execute, interrupted, observe, Interrupted, Op};
    use carve_backend::engine::InMemory;
    use carve_backend::Backend;
    use serde_json::json;

    fn plan(gpus: serde_json::Value) -> Plan {
        let v = json!({
            "version": 1,
            "nodes": [{"name": "node-a", "platform": "bare-metal"}, {"name": "node-b", "platform": "kubernetes"}],
            "gpus": gpus,
            "tenants": [],
            "gpus_used": 2,
            "lower_bound_gpus": 2,
            "optimal": true,
            "complete": true,
            "stats": {"dedicated_gpus": 0, "time_sliced_gpus": 0, "mig_gpus": 2, "mig_optimal": true,
                      "mig_lower_bound": 2, "time_sliced_lower_bound": 0, "plan_ms": 0.1}
        });
        Plan::from_json(&v.to_string()).unwrap()
    }

    fn gpu(
        node: &str,
        index: u32,
        model: &str,
        mode: &str,
        inst: &[(&str, u8, u8)],
    ) -> serde_json::Value {
        let instances: Vec<_> = inst
            .iter()
            .map(|(p, s, z)| json!({"profile": p, "start": s, "size": z, "tenant": "t", "replica": 0}))
            .collect();
        json!({"node": node, "index": index, "model": model, "memory_mib": 81920, "mig_capable": true,
               "mode": mode, "instances": instances})
    }

    fn node() -> (Catalog, InMemory) {
        let catalog = Catalog::embedded();
        let h = catalog.gpu("H100-80GB").unwrap().clone();
        let b = InMemory::new(catalog.clone(), &[&h, &h], 3);
        (catalog, b)
    }

    #[test]
    fn planned_instances_are_placed_exactly_and_modes_follow() {
        let (catalog, mut b) = node();
        let p = plan(json!([
            gpu(
                "node-a",
                0,
                "H100-80GB",
                "mig",
                &[("3g.40gb", 4, 4), ("1g.10gb", 0, 1), ("2g.20gb", 2, 2)]
            ),
            gpu("node-a", 1, "H100-80GB", "time-sliced", &[]),
            gpu("node-b", 0, "A100-40GB", "mig", &[("7g.40gb", 0, 8)]),
        ]));
        let observed = observe(&mut b, &catalog).unwrap();
        let t = targets_from_plan(&p, "node-a", &observed, &catalog).unwrap();
        assert_eq!(t.len(), 2);
        let placed: Vec<(&str, u8, Vec<u8>)> = t[0]
            .instances
            .iter()
            .map(|i| (i.profile.as_str(), i.start, i.compute_instances.clone()))
            .collect();
        assert_eq!(
            placed,
            [
                ("1g.10gb", 0, vec![1]),
                ("2g.20gb", 2, vec![2]),
                ("3g.40gb", 4, vec![3])
            ]
        );
        assert!(t[0].mig_enabled && !t[1].mig_enabled);
        // Applying converges; applying again is a no-op.
        let dir =
            std::env::temp_dir().join(format!("carve-apply-from-plan-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = carve_state::Store::open(&dir).unwrap();
        let d = diff(&observed, &t).unwrap();
        assert!(d.ops.iter().any(|o| matches!(
            o,
            Op::SetMigMode {
                gpu: 1,
                enabled: false
            }
        )));
        execute(&mut b, &store, &t, &d, false, &[], &[], &mut |_, _, _| {}).unwrap();
        let observed = observe(&mut b, &catalog).unwrap();
        assert_eq!(
            interrupted(&store, &observed).unwrap(),
            Interrupted::default()
        );
        assert!(diff(&observed, &t).unwrap().ops.is_empty());
        let starts: Vec<u8> = b
            .gpu_instances(0)
            .unwrap()
            .iter()
            .map(|g| g.start)
            .collect();
        assert_eq!(starts.len(), 3);
        assert!(starts.contains(&0) && starts.contains(&2) && starts.contains(&4));
        assert!(observed[1].info.mig.is_some_and(|m| !m.current));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_plan_that_does_not_fit_the_node_is_bad_input() {
        let (catalog, mut b) = node();
        let observed = observe(&mut b, &catalog).unwrap();
        let err = |gpus: serde_json::Value| {
            targets_from_plan(&plan(gpus), "node-a", &observed, &catalog)
                .unwrap_err()
                .to_string()
        };
        let cases = [
            (
                gpu("node-a", 2, "H100-80GB", "mig", &[]),
                "node-a GPU 2 is planned as H100-80GB, this node has 2 GPUs",
            ),
            (
                gpu("node-a", 1, "A100-40GB", "unused", &[]),
                "node-a GPU 1 is planned as A100-40GB, this node's GPU 1 is H100-80GB",
            ),
            (
                gpu("node-a", 0, "H100-80GB", "mig", &[("3g.40g", 0, 4)]),
                "did you mean '3g.40gb'",
            ),
            (
                gpu("node-a", 0, "H100-80GB", "mig", &[("3g.40gb", 0, 2)]),
                "has size 2, but 3g.40gb takes 4",
            ),
            (
                gpu("node-a", 0, "H100-80GB", "mig", &[("3g.40gb", 2, 4)]),
                "cannot start at memory slot 2",
            ),
            (
                gpu(
                    "node-a",
                    0,
                    "H100-80GB",
                    "mig",
                    &[("4g.40gb", 0, 4), ("3g.40gb", 4, 4), ("1g.10gb", 6, 1)],
                ),
                "invalid layout",
            ),
            (
                gpu("node-a", 0, "H100-80GB", "dedicated", &[("1g.10gb", 0, 1)]),
                "dedicated but lists 1 MIG instance",
            ),
        ];
        for (g, want) in cases {
            let e = err(json!([g]));
            assert!(e.contains(want), "{e}\n  wanted: {want}");
        }
    }

    #[test]
    fn up_takes_the_first_kubernetes_node_in_use() {
        let mut p = plan(json!([
            gpu("node-a", 0, "H100-80GB", "unused", &[]),
            gpu("node-b", 0, "H100-80GB", "mig", &[("7g.80gb", 0, 8)]),
        ]));
        assert_eq!(up_node(&p, None, Some("elsewhere")).unwrap(), "node-b");
        assert_eq!(up_node(&p, None, Some("node-a")).unwrap(), "node-a");
        assert_eq!(up_node(&p, Some("node-a"), None).unwrap(), "node-a");
        assert!(up_node(&p, Some("node-c"), None).is_err());
        p.gpus[1].mode = carve_plan::plan::GpuMode::Unused;
        assert_eq!(up_node(&p, None, None).unwrap(), "node-a");
    }

    #[test]
    fn node_choice() {
        let p = plan(json!([gpu("node-a", 0, "H100-80GB", "unused", &[])]));
        assert_eq!(plan_node(&p, Some("node-b"), None).unwrap(), "node-b");
        assert_eq!(
            plan_node(&p, None, Some("node-b.example.com")).unwrap(),
            "node-b"
        );
        let e = plan_node(&p, None, Some("elsewhere"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("node-a, node-b") && e.contains("--node"), "{e}");
        let e = plan_node(&p, Some("node-c"), None).unwrap_err().to_string();
        assert!(e.contains("did you mean"), "{e}");
    }
}
