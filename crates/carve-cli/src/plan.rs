//! `carve plan`: a tenancy file in, a plan (and the files that follow from it) out.

use crate::input::load_tenancy;
use crate::output::{table, Failure, Out};
use carve_model::Catalog;
use carve_plan::plan::{Placement, Plan, PlannedTenant};
use std::path::Path;

fn where_text(t: &PlannedTenant, placements: &[Placement]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut last: Option<(String, usize)> = None;
    for p in placements {
        let s = match (&p.profile, p.start) {
            (Some(prof), Some(s)) => format!("{}/{} {prof}@{s}", p.node, p.gpu),
            _ => format!("{}/{}", p.node, p.gpu),
        };
        match &mut last {
            Some((l, n)) if *l == s => *n += 1,
            _ => {
                if let Some((l, n)) = last.take() {
                    parts.push(if n > 1 { format!("{l} ×{n}") } else { l });
                }
                last = Some((s, 1));
            }
        }
    }
    if let Some((l, n)) = last {
        parts.push(if n > 1 { format!("{l} ×{n}") } else { l });
    }
    if parts.len() > 4 {
        let n = parts.len();
        parts.truncate(3);
        parts.push(format!("… {n} in all"));
    }
    if t.unplaced > 0 {
        parts.push(format!("{} without room", t.unplaced));
    }
    parts.join(", ")
}

/// The summary people read.
pub fn summary(plan: &Plan) -> String {
    let mut rows = vec![vec![
        "TENANT".to_string(),
        "MODE".into(),
        "RULE".into(),
        "REPLICAS".into(),
        "WHERE".into(),
    ]];
    let placements = plan.placements_by_tenant();
    for t in &plan.tenants {
        rows.push(vec![
            t.name.clone(),
            t.mode.to_string(),
            t.rule.clone(),
            t.replicas.to_string(),
            where_text(
                t,
                placements.get(t.name.as_str()).map_or(&[], Vec::as_slice),
            ),
        ]);
    }
    let mut s = table(&rows);
    let total = plan.gpus.len();
    s.push_str(&format!(
        "\nGPUs used: {} of {total} (dedicated {}, time-sliced {}, MIG {}); lower bound {}{}\n",
        plan.gpus_used,
        plan.stats.dedicated_gpus,
        plan.stats.time_sliced_gpus,
        plan.stats.mig_gpus,
        plan.lower_bound_gpus,
        if plan.optimal {
            ": a proven optimum"
        } else if plan.complete {
            ": not proven optimal"
        } else {
            ""
        }
    ));
    for w in &plan.warnings {
        s.push_str(&format!("warning: {w}\n"));
    }
    s
}

fn shortfall_text(plan: &Plan) -> String {
    let missing: Vec<String> = plan
        .tenants
        .iter()
        .filter(|t| t.unplaced > 0)
        .map(|t| format!("{} ({} of {} replicas)", t.name, t.unplaced, t.replicas))
        .collect();
    let mut lines = vec![format!("not everything fits: {}", missing.join(", "))];
    lines.extend(
        carve_plan::files::shortfall_lines(plan)
            .into_iter()
            .map(|l| {
                if l.starts_with("or ") {
                    format!("  {l}")
                } else {
                    format!("→ {l}")
                }
            }),
    );
    lines.join("\n")
}

pub fn plan_cmd(
    catalog: &Catalog,
    file: &Path,
    out: Option<&Path>,
    allow_partial: bool,
    json: bool,
) -> Result<Out, Failure> {
    let tenancy = load_tenancy(catalog, file)?;
    let replicas: u64 = tenancy.tenants.iter().map(|t| t.replicas as u64).sum();
    let gpus = tenancy.gpus().count();
    if !json && replicas > 10_000 {
        eprintln!(
            "carve: planning {} tenants ({replicas} replicas) on {gpus} GPUs…",
            tenancy.tenants.len()
        );
    }
    let plan = carve_plan::plan(&tenancy, catalog);
    let fits = plan.complete || allow_partial;
    let mut written = Vec::new();
    if let (Some(dir), true) = (out, fits) {
        let write = |rel: &str, text: &str| -> Result<(), Failure> {
            let p = dir.join(rel);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).map_err(|e| {
                    Failure::failed(format!("cannot create {}: {e}", parent.display()))
                })?;
            }
            std::fs::write(&p, text)
                .map_err(|e| Failure::failed(format!("cannot write {}: {e}", p.display())))
        };
        let mut pj = serde_json::to_string_pretty(&plan).expect("serialisable");
        pj.push('\n');
        write("plan.json", &pj)?;
        written.push("plan.json".to_string());
        for (rel, text) in carve_plan::files::files(&plan, catalog) {
            write(&rel, &text)?;
            written.push(rel);
        }
    }
    let code = if fits { 0 } else { 1 };
    if json {
        return Ok(Out::json(&plan, code));
    }
    let mut text = summary(&plan);
    if !plan.complete {
        text.push_str(&shortfall_text(&plan));
        text.push('\n');
    }
    match out {
        Some(dir) if fits => {
            text.push_str(&format!(
                "wrote {} files to {}: {}\n",
                written.len(),
                dir.display(),
                written.join(", ")
            ));
            text.push_str(&format!(
                "next: look at {}, then on each node `carve apply {} --node NAME`\n",
                dir.join("layout.svg").display(),
                dir.join("plan.json").display()
            ));
        }
        Some(_) => {
            text.push_str("nothing written (use --allow-partial to write the partial plan)\n")
        }
        None => text
            .push_str("(--out DIR writes plan.json, report.md, layout.svg and per-node configs)\n"),
    }
    Ok(Out { text, code })
}
