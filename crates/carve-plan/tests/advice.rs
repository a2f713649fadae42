//! The advice of a partial plan (`Plan::shortfall`, `PlannedTenant::unplaceable`) is right or
//! absent, checked the way a person would check it: by writing the advised GPUs into the tenancy
//! file and planning again. The advised fleet has room for every tenant but the unplaceable
//! ones, one GPU fewer has not, an unplaceable tenant finds no room however many GPUs of the
//! fleet's models are added, and a pool without advice finds none either.

use carve_model::Catalog;
use carve_plan::plan::{pool_name, Mode, Plan, Shortfall};
use proptest::prelude::*;

/// A fleet node as the tenancy file writes it.
#[derive(Debug, Clone)]
struct Node {
    name: String,
    platform: &'static str,
    licence: Option<&'static str>,
    /// GPU entries of `gpus:` (`H100-80GB`, `{model: L40S, memory_gb: 48}`).
    gpus: Vec<String>,
}

/// The `gpus:` entry of one GPU of a model, as the plan names it.
fn entry(model: &str) -> String {
    match model {
        "L40S" => "{model: L40S, memory_gb: 48}".into(),
        m => m.into(),
    }
}

fn yaml(nodes: &[Node], tenants: &str) -> String {
    let mut s = String::from("fleet:\n");
    for n in nodes {
        s.push_str(&format!(
            "  - node: {}\n    platform: {}\n    gpus: [{}]\n",
            n.name,
            n.platform,
            n.gpus.join(", ")
        ));
        if let Some(l) = n.licence {
            s.push_str(&format!("    licence: {l}\n"));
        }
    }
    s.push_str("tenants:\n");
    s.push_str(tenants);
    s
}

fn plan_of(text: &str) -> Plan {
    let cat = Catalog::embedded();
    let t = carve_plan::parse(text, &cat).unwrap_or_else(|e| panic!("{e:?}\n{text}"));
    carve_plan::plan(&t, &cat)
}

/// The fleet with `more` GPUs (model, count) on a new node of each pool, like the pool's first
/// node.
fn with_more(nodes: &[Node], more: &[(&str, Vec<(String, u32)>)]) -> Vec<Node> {
    let mut v = nodes.to_vec();
    for (pool, gpus) in more {
        let hyp = *pool == pool_name(true);
        let like = nodes.iter().find(|n| (n.platform == "vsphere") == hyp);
        let mut entries = Vec::new();
        for (model, count) in gpus {
            for _ in 0..*count {
                entries.push(entry(model));
            }
        }
        if entries.is_empty() {
            continue;
        }
        v.push(Node {
            name: format!("more-{}", if hyp { "vsphere" } else { "host" }),
            platform: like.map_or(if hyp { "vsphere" } else { "kubernetes" }, |n| n.platform),
            licence: like.and_then(|n| n.licence),
            gpus: entries,
        });
    }
    v
}

fn gpus_of(s: &Shortfall) -> Vec<(String, u32)> {
    let mut v = vec![(s.model.clone(), s.more_gpus)];
    v.extend(s.with.iter().map(|w| (w.model.clone(), w.more_gpus)));
    v
}

/// Tenants of `pool` that are waiting and placeable.
fn waiting<'a>(plan: &'a Plan, pool: &str) -> Vec<&'a str> {
    plan.tenants
        .iter()
        .filter(|t| t.unplaced > 0 && t.unplaceable.is_none() && t.mode.pool() == pool)
        .map(|t| t.name.as_str())
        .collect()
}

/// Every tenant but the unplaceable ones (of `plan`) has room in `again`.
fn room_for_the_placeable(plan: &Plan, again: &Plan) -> Result<(), String> {
    for t in &plan.tenants {
        let now = again.tenant(&t.name).unwrap();
        if t.unplaceable.is_none() && now.unplaced > 0 {
            return Err(format!(
                "{} still has {} without room",
                t.name, now.unplaced
            ));
        }
    }
    Ok(())
}

/// Checks the advice of the plan of `nodes` and `tenants` by planning again; returns the plan.
/// `bound`: how many more GPUs of each model stand for "any number" where advice is absent.
fn check_advice(nodes: &[Node], tenants: &str, bound: u32) -> Result<Plan, String> {
    let plan = plan_of(&yaml(nodes, tenants));
    if plan.complete {
        if !plan.shortfall.is_empty() || plan.tenants.iter().any(|t| t.unplaceable.is_some()) {
            return Err("a complete plan gives no advice".into());
        }
        return Ok(plan);
    }
    let models: Vec<String> = {
        let mut v: Vec<String> = Vec::new();
        for g in &plan.gpus {
            if !v.contains(&g.model) {
                v.push(g.model.clone());
            }
        }
        v
    };
    let every = |n: u32| -> Vec<(String, u32)> { models.iter().map(|m| (m.clone(), n)).collect() };
    let pools = [pool_name(false), pool_name(true)];
    let alternatives: Vec<Vec<&Shortfall>> = pools
        .iter()
        .map(|p| plan.shortfall.iter().filter(|s| s.pool == *p).collect())
        .collect();
    for (pi, pool) in pools.iter().enumerate() {
        let alts = &alternatives[pi];
        if waiting(&plan, pool).is_empty() {
            if !alts.is_empty() {
                return Err(format!("advice for {pool}, where nobody waits"));
            }
            continue;
        }
        if alts.is_empty() {
            // Absent: not even `bound` more of every model (here and in the other pool).
            let more: Vec<(&str, Vec<(String, u32)>)> =
                pools.iter().map(|p| (*p, every(bound))).collect();
            let again = plan_of(&yaml(&with_more(nodes, &more), tenants));
            if room_for_the_placeable(&plan, &again).is_ok() {
                return Err(format!(
                    "no advice for {pool}, but {bound} more of each model fit"
                ));
            }
            continue;
        }
        for s in alts {
            // This alternative here, the first one in the other pool.
            let mut more: Vec<(&str, Vec<(String, u32)>)> = vec![(*pool, gpus_of(s))];
            let other = pools[1 - pi];
            if let Some(o) = alternatives[1 - pi].first() {
                more.push((other, gpus_of(o)));
            }
            let again = plan_of(&yaml(&with_more(nodes, &more), tenants));
            room_for_the_placeable(&plan, &again)
                .map_err(|e| format!("advised {s:?}, planned again: {e}"))?;
            if !again.complete
                && again
                    .tenants
                    .iter()
                    .any(|t| t.unplaced > 0 && t.unplaceable.is_none())
            {
                return Err(format!("advised {s:?}: the plan again is partial"));
            }
            // The fewest: one GPU less of a one-model alternative leaves someone of the pool
            // waiting.
            if s.with.is_empty() && s.more_gpus >= 1 {
                more[0].1 = vec![(s.model.clone(), s.more_gpus - 1)];
                let fewer = plan_of(&yaml(&with_more(nodes, &more), tenants));
                if fewer
                    .tenants
                    .iter()
                    .all(|t| t.mode.pool() != *pool || t.unplaced == 0 || t.unplaceable.is_some())
                    && room_for_the_placeable(&plan, &fewer).is_ok()
                {
                    return Err(format!("advised {s:?}, but one fewer fits too"));
                }
            }
        }
        // One-model alternatives come fewest first.
        let counts: Vec<u32> = alts.iter().map(|s| s.more_gpus).collect();
        if counts.windows(2).any(|w| w[0] > w[1]) {
            return Err(format!("alternatives not fewest first: {counts:?}"));
        }
    }
    // Unplaceable: nothing of the fleet's models holds them, however many are added.
    if plan.tenants.iter().any(|t| t.unplaceable.is_some()) {
        let more: Vec<(&str, Vec<(String, u32)>)> =
            pools.iter().map(|p| (*p, every(bound))).collect();
        let again = plan_of(&yaml(&with_more(nodes, &more), tenants));
        for t in plan.tenants.iter().filter(|t| t.unplaceable.is_some()) {
            if t.unplaced == 0 {
                return Err(format!("{} is placed, yet unplaceable", t.name));
            }
            if again.tenant(&t.name).unwrap().unplaced == 0 {
                return Err(format!("{} is unplaceable, yet fits {bound} more", t.name));
            }
        }
    }
    Ok(plan)
}

fn host(gpus: &[&str]) -> Node {
    Node {
        name: "a".into(),
        platform: "kubernetes",
        licence: None,
        gpus: gpus.iter().map(|g| entry(g)).collect(),
    }
}

/// The first example: a 200 GB tenant next to three 40 GB replicas on one H100. No H100
/// holds 200 GB: that tenant is unplaceable, with the reason, and the advice makes room for the
/// others.
#[test]
fn a_tenant_no_gpu_holds_is_named_not_advised_for() {
    let tenants = "  - {name: huge, workload: training, memory_gb: 200}\n  - {name: api, workload: inference, memory_gb: 40, replicas: 3, slo: strict}\n";
    let plan = check_advice(&[host(&["H100-80GB"])], tenants, 8).unwrap();
    let huge = plan.tenant("huge").unwrap();
    let why = huge.unplaceable.as_deref().expect("unplaceable");
    assert!(why.contains("200 GB") && why.contains("80 GB"), "{why}");
    assert!(
        huge.warnings.iter().any(|w| w.contains(why)),
        "{:?}",
        huge.warnings
    );
    assert!(plan.tenant("api").unwrap().unplaceable.is_none());
    assert_eq!(plan.shortfall.len(), 1);
    assert_eq!(
        (
            plan.shortfall[0].model.as_str(),
            plan.shortfall[0].more_gpus
        ),
        ("H100-80GB", 1)
    );
    let lines = carve_plan::files::shortfall_lines(&plan);
    assert_eq!(
        lines,
        vec![
            "huge: no GPU of this fleet's models holds it: it needs 200 GB per replica; the largest GPU of this fleet has 80 GB".to_string(),
            "1 more H100-80GB on a kubernetes/bare-metal node would make room for api".to_string(),
        ]
    );
}

/// The second example: time-sliced shares 0.8 and 0.7 cannot share a GPU; a second one
/// holds them.
#[test]
fn shares_that_need_two_gpus_are_advised_one_more() {
    let tenants = "  - {name: x, workload: batch, memory_gb: 10, share: 0.8}\n  - {name: y, workload: batch, memory_gb: 10, share: 0.7}\n";
    let plan = check_advice(&[host(&["H100-80GB"])], tenants, 8).unwrap();
    assert_eq!(plan.shortfall.len(), 1);
    assert_eq!(plan.shortfall[0].more_gpus, 1);
    assert_eq!(plan.shortfall[0].pool, "kubernetes/bare-metal");
    assert!(plan.tenants.iter().all(|t| t.unplaceable.is_none()));
}

/// One tenant needs an H100 (60 GB, a whole GPU), another an A100's own profile: no one model
/// makes room for both, a mix does.
#[test]
fn when_no_one_model_does_a_mix_is_advised() {
    let tenants = "  - {name: big, workload: training, memory_gb: 60, replicas: 2}\n  - {name: old, workload: inference, profile: 7g.40gb, replicas: 2}\n";
    let plan = check_advice(&[host(&["H100-80GB", "A100-40GB"])], tenants, 8).unwrap();
    assert_eq!(plan.shortfall.len(), 1, "{:?}", plan.shortfall);
    let mut mix = gpus_of(&plan.shortfall[0]);
    mix.sort();
    assert_eq!(
        mix,
        vec![("A100-40GB".to_string(), 1), ("H100-80GB".to_string(), 1)]
    );
}

/// Both pools short: each gets its advice, and both together make room.
#[test]
fn each_pool_gets_its_own_advice() {
    let nodes = [
        host(&["H100-80GB"]),
        Node {
            name: "v".into(),
            platform: "vsphere",
            licence: Some("vws"),
            gpus: vec![entry("H100-80GB")],
        },
    ];
    let tenants = "  - {name: api, workload: inference, memory_gb: 40, replicas: 3, slo: strict}\n  - {name: vm, workload: inference, memory_gb: 40, replicas: 3, vm: true, isolation: hard}\n";
    let plan = check_advice(&nodes, tenants, 8).unwrap();
    for pool in ["kubernetes/bare-metal", "vsphere"] {
        assert!(
            plan.shortfall.iter().any(|s| s.pool == pool),
            "{pool}: {:?}",
            plan.shortfall
        );
    }
    let lines = carve_plan::files::shortfall_lines(&plan);
    assert!(lines.iter().any(|l| l.starts_with("and ")), "{lines:?}");
}

const MODELS: [&str; 3] = ["H100-80GB", "A100-40GB", "L40S"];
const WORKLOADS: [&str; 6] = [
    "inference",
    "training",
    "interactive",
    "dev",
    "batch",
    "desktop",
];
const MEMORY: [u32; 7] = [5, 10, 20, 35, 60, 90, 200];

fn tenant_line(i: usize, w: usize, mem: usize, replicas: u32, extra: u8) -> String {
    let mut s = format!(
        "  - {{name: t{i}, workload: {}, memory_gb: {}, replicas: {replicas}",
        WORKLOADS[w], MEMORY[mem]
    );
    match extra % 6 {
        1 if matches!(WORKLOADS[w], "batch" | "training") => s.push_str(", share: 0.6"),
        2 => s.push_str(", slo: strict"),
        3 => s.push_str(", spread: true"),
        4 => s.push_str(", vm: true"),
        5 => s.push_str(", vm: true, isolation: hard"),
        _ => {}
    }
    s.push_str("}\n");
    s
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    /// Small random fleets and tenancies, often too big for their fleet: the advice holds when
    /// planned again, is the fewest, and is absent only where nothing would do.
    #[test]
    fn advice_holds_when_planned_again(
        host_gpus in proptest::collection::vec(0usize..3, 1..3),
        vsphere in proptest::option::of(0usize..2),
        tenants in proptest::collection::vec((0usize..6, 0usize..7, 1u32..4, 0u8..6), 1..5),
    ) {
        let mut nodes = vec![host(&host_gpus.iter().map(|&m| MODELS[m]).collect::<Vec<_>>())];
        if let Some(m) = vsphere {
            nodes.push(Node {
                name: "v".into(),
                platform: "vsphere",
                licence: Some("vws"),
                gpus: vec![entry(MODELS[m])],
            });
        }
        let text: String = tenants
            .iter()
            .enumerate()
            .map(|(i, &(w, m, r, e))| tenant_line(i, w, m, r, e))
            .collect();
        let cat = Catalog::embedded();
        prop_assume!(carve_plan::parse(&yaml(&nodes, &text), &cat).is_ok());
        if let Err(e) = check_advice(&nodes, &text, 12) {
            prop_assert!(false, "{e}\n{}", yaml(&nodes, &text));
        }
    }
}

/// A tenant every GPU of the fleet is too small for, in any mode.
#[test]
fn unplaceable_in_every_mode_says_how_much_it_needs() {
    for (workload, extra) in [
        ("training", ""),
        ("batch", ", share: 0.5"),
        ("inference", ", slo: strict"),
        ("dev", ""),
    ] {
        let tenants = format!("  - {{name: t, workload: {workload}, memory_gb: 100{extra}}}\n");
        let plan = check_advice(&[host(&["A100-40GB", "L40S"])], &tenants, 4).unwrap();
        let t = plan.tenant("t").unwrap();
        assert!(t.mode != Mode::Mig || t.unplaced == 0);
        let why = t
            .unplaceable
            .as_deref()
            .unwrap_or_else(|| panic!("{workload}: {plan:#?}"));
        assert!(why.contains("100 GB") && why.contains("48 GB"), "{why}");
        assert!(plan.shortfall.is_empty());
    }
}
