//! Files made from a plan, for people and for the tools they use: `report.md`, `layout.svg`,
//! `pod-resources.yaml`, and per node `mig-parted.yaml`, `device-plugin.yaml`, `carve-sched.yaml`
//! and `vgpu.md`. Pure: a plan and the catalog in, text out.

use crate::plan::{GpuMode, Mode, Plan, PlannedGpu, Platform, Policy};
use carve_model::Catalog;
use std::collections::BTreeMap;
use std::fmt::Write;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// YAML double-quoted string.
fn q(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c if c.is_control() => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// A Markdown table cell: a `|` would end the cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// A word for a shell command line, quoted when it needs to be.
fn sh_word(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.,:/@+=".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// A node name as a path component.
pub fn path_name(node: &str) -> String {
    let s: String = node
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.chars().all(|c| c == '.') {
        "_".into()
    } else {
        s
    }
}

fn gib(mib: u64) -> String {
    let g = mib as f64 / 1024.0;
    if (g - g.round()).abs() < 0.05 {
        format!("{:.0} GB", g)
    } else {
        format!("{g:.1} GB")
    }
}

// ---------------------------------------------------------------------------------------------
// mig-parted

/// A mig-parted (v1) config for one node, config name `carve`; `None` when the plan uses none of
/// its GPUs.
pub fn mig_parted(plan: &Plan, node: &str) -> Option<String> {
    let gpus: Vec<&PlannedGpu> = plan.node_gpus(node).filter(|g| g.is_used()).collect();
    if gpus.is_empty() {
        return None;
    }
    let mut s = String::new();
    let _ = writeln!(s, "# mig-parted config for node {node}, from carve's plan.");
    let _ = writeln!(
        s,
        "# mig-parted cannot express placements; `carve apply plan.json --node {node}` applies them"
    );
    let _ = writeln!(s, "# exactly, and changes only what must change.");
    let _ = writeln!(s, "version: v1\nmig-configs:\n  carve:");
    for g in gpus {
        let _ = writeln!(s, "    - devices: [{}]", g.index);
        match g.mode.mig_enabled() {
            Some(true) => {
                let _ = writeln!(s, "      mig-enabled: true\n      mig-devices:");
                let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
                for i in &g.instances {
                    *counts.entry(&i.profile).or_default() += 1;
                }
                for (p, n) in counts {
                    let _ = writeln!(s, "        {}: {n}", q(p));
                }
            }
            _ => {
                let _ = writeln!(s, "      mig-enabled: false");
            }
        }
    }
    Some(s)
}

// ---------------------------------------------------------------------------------------------
// Kubernetes

/// The NVIDIA device plugin's config for a Kubernetes node.
pub fn device_plugin(plan: &Plan, node: &str) -> Option<String> {
    if plan.node(node)?.platform != Platform::Kubernetes {
        return None;
    }
    let gpus: Vec<&PlannedGpu> = plan.node_gpus(node).filter(|g| g.is_used()).collect();
    if gpus.is_empty() {
        return None;
    }
    let mig = gpus.iter().any(|g| g.mode == GpuMode::Mig);
    let sliced: Vec<&&PlannedGpu> = gpus
        .iter()
        .filter(|g| g.mode == GpuMode::TimeSliced)
        .collect();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# NVIDIA k8s-device-plugin config for node {node}, from carve's plan."
    );
    let _ = writeln!(
        s,
        "version: v1\nflags:\n  migStrategy: {}",
        if mig { "mixed" } else { "none" }
    );
    let replicas = sliced.iter().map(|g| g.shares.len()).max().unwrap_or(0);
    if replicas >= 2 {
        let _ = writeln!(
            s,
            "# The plugin applies one replica count to every GPU of the node; carve's own agent\n# exposes per-GPU shares and enforces them with `carve sched`."
        );
        let dedicated: Vec<String> = gpus
            .iter()
            .filter(|g| g.mode == GpuMode::Dedicated)
            .map(|g| g.index.to_string())
            .collect();
        if !dedicated.is_empty() {
            let _ = writeln!(
                s,
                "# Warning: GPU {} is dedicated in the plan, but the plugin replicates it too: a pod asking\n# for nvidia.com/gpu: 1 may land on a replica of it, next to another pod.",
                dedicated.join(", ")
            );
        }
        let _ = writeln!(
            s,
            "sharing:\n  timeSlicing:\n    renameByDefault: false\n    failRequestsGreaterThanOne: true\n    resources:\n      - name: nvidia.com/gpu\n        replicas: {replicas}"
        );
    }
    Some(s)
}

/// Per tenant on Kubernetes nodes, the resource limits its pods carry.
pub fn pod_resources(plan: &Plan) -> String {
    let mut s = String::from("# Resource limits per tenant's pods, from carve's plan.\n");
    let mut any = false;
    for t in &plan.tenants {
        let Some(r) = &t.resource else { continue };
        any = true;
        let _ = writeln!(s, "{}:", q(&t.name));
        if matches!(t.mode, Mode::TimeSliced) {
            let _ = writeln!(
                s,
                "  # time-sliced: run the workload under the shim, e.g. `carve run --tenant {} -- CMD`",
                sh_word(&t.name)
            );
        }
        let _ = writeln!(s, "  resources:\n    limits:\n      {}: 1", q(r));
    }
    if !any {
        s.push_str("{}\n");
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Scheduler and vGPU

/// carve's time-slice scheduler settings for the node's time-sliced GPUs: for each, the
/// [`crate::schedule::gpu_schedule`] that `carve sched` and the agent run.
pub fn sched_config(plan: &Plan, node: &str) -> Option<String> {
    let gpus: Vec<&PlannedGpu> = plan
        .node_gpus(node)
        .filter(|g| g.mode == GpuMode::TimeSliced)
        .collect();
    if gpus.is_empty() {
        return None;
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# carve sched settings for node {node}, one scheduler per GPU (the node agent runs them;"
    );
    let _ = writeln!(
        s,
        "# by hand: carve sched serve plan.json --node {node} --gpu N)."
    );
    let _ = writeln!(
        s,
        "# policy: best-effort | equal-share | fixed-share; slice_ms: time slice (1-30);"
    );
    let _ = writeln!(
        s,
        "# work_conserving: idle tenants' time goes to tenants with work; averaging_factor: overrun"
    );
    let _ = writeln!(
        s,
        "# compensation (1-60); share: GPU-time share (fixed share only); memory_limit_mib: device"
    );
    let _ = writeln!(s, "# memory cap for the tenant.");
    let _ = writeln!(s, "gpus:");
    for g in gpus {
        let sched = match crate::schedule::gpu_schedule(g) {
            Ok(Some(sched)) => sched,
            Ok(None) => continue,
            Err(e) => {
                let _ = writeln!(s, "  # {e}");
                continue;
            }
        };
        let st = &sched.settings;
        let _ = writeln!(
            s,
            "  - gpu: {}\n    policy: {}\n    slice_ms: {}\n    work_conserving: {}\n    averaging_factor: {}\n    tenants:",
            g.index,
            st.policy,
            st.slice_ns.unwrap_or(0) / 1_000_000,
            st.work_conserving,
            st.averaging_factor
        );
        for t in &sched.tenants {
            let _ = writeln!(s, "      - name: {}", q(&t.name));
            if let Some(share) = t.share {
                let _ = writeln!(s, "        share: {share:.4}");
            }
            if let Some(b) = t.memory_limit_bytes {
                let _ = writeln!(s, "        memory_limit_mib: {}", b / (1024 * 1024));
            }
        }
    }
    Some(s)
}

/// The vGPU sheet for a hypervisor node: VMs, types, scheduler and how to set it.
pub fn vgpu_sheet(plan: &Plan, node: &str) -> Option<String> {
    let n = plan.node(node)?;
    if !n.platform.is_hypervisor() {
        return None;
    }
    let gpus: Vec<&PlannedGpu> = plan.node_gpus(node).filter(|g| g.is_used()).collect();
    if gpus.is_empty() {
        return None;
    }
    let have = n.licence.clone().unwrap_or_else(|| "none".into());
    let mut s = format!("# vGPU sheet for {node}\n\nLicence edition on this host: **{have}**.\n\n");
    s.push_str("| VM (tenant/replica) | GPU | mode | vGPU type | policy | slice | RmPVMRL | licence needed |\n|---|---|---|---|---|---|---|---|\n");
    let lic = |t: &str| {
        plan.tenant(t)
            .and_then(|t| t.licence.clone())
            .unwrap_or_default()
    };
    let flag = |need: &str| {
        if need.is_empty()
            || n.licence.as_deref().is_some_and(|h| {
                h.eq_ignore_ascii_case(need) || (need == "vCS" && h.eq_ignore_ascii_case("vWS"))
            })
        {
            need.to_string()
        } else {
            format!("{need} — **missing**")
        }
    };
    for g in &gpus {
        let (pol, slice, rm) = match &g.scheduler {
            Some(sc) => (
                sc.policy.to_string(),
                format!("{} ms", sc.slice_ms),
                sc.rmpvmrl.clone().unwrap_or_default(),
            ),
            None => ("— (MIG: dedicated hardware)".into(), "—".into(), "—".into()),
        };
        for sh in &g.shares {
            let need = lic(&sh.tenant);
            let _ = writeln!(
                s,
                "| {}/{} | {} | {} | {} | {pol} | {slice} | `{rm}` | {} |",
                cell(&sh.tenant),
                sh.replica,
                g.index,
                g.mode,
                sh.vgpu_type.as_deref().unwrap_or("(choose by memory)"),
                flag(&need)
            );
        }
        for i in &g.instances {
            let need = lic(&i.tenant);
            let _ = writeln!(
                s,
                "| {}/{} | {} | {} | {} ({}@{}) | {pol} | {slice} | — | {} |",
                cell(&i.tenant),
                i.replica,
                g.index,
                g.mode,
                i.vgpu_type.as_deref().unwrap_or("?"),
                i.profile,
                i.start,
                flag(&need)
            );
        }
    }
    let sliced: Vec<&&PlannedGpu> = gpus
        .iter()
        .filter(|g| g.scheduler.as_ref().is_some_and(|s| s.rmpvmrl.is_some()))
        .collect();
    if !sliced.is_empty() {
        s.push_str("\n## Setting the scheduler\n\nOne value per host (`NVreg_RegistryDwordsPerDevice=\"pci=<bus id>;RmPVMRL=<value>\"` sets one GPU):\n\n");
        for g in sliced {
            let sc = g.scheduler.as_ref().expect("filtered");
            let v = sc.rmpvmrl.as_deref().unwrap_or("0x00");
            let _ = writeln!(
                s,
                "- GPU {}: {} with {} ms slices → `RmPVMRL={v}`\n  - vSphere: `esxcli system module parameters set -m nvidia -p \"NVreg_RegistryDwords=RmPVMRL={v}\"`, then reboot the host\n  - Linux KVM: `options nvidia NVreg_RegistryDwords=\"RmPVMRL={v}\"` in `/etc/modprobe.d/nvidia.conf`, then reboot",
                g.index, sc.policy, sc.slice_ms
            );
        }
        s.push_str("\nCheck: `dmesg | grep NVRM | grep scheduler` shows the policy in force.\n");
        if gpus.iter().any(|g| {
            g.scheduler
                .as_ref()
                .is_some_and(|sc| sc.policy == Policy::BestEffort)
        }) {
            s.push_str("Best effort is the driver's default: `0x00` (or no key) keeps it.\n");
        }
    }
    Some(s)
}

// ---------------------------------------------------------------------------------------------
// report.md

/// What a partial plan says about the room it lacks, a sentence a line (none for a complete
/// plan): each tenant no GPU of the fleet's models holds, and why; then per pool the advice
/// ([`Plan::shortfall`]: alternatives, and for a second pool what it needs too), or that there is
/// none within [`crate::planner::ADVICE_MAX_GPUS`] more GPUs of each model. `carve plan` and
/// report.md print these.
pub fn shortfall_lines(plan: &Plan) -> Vec<String> {
    let mut lines = Vec::new();
    for t in plan.tenants.iter().filter(|t| t.unplaced > 0) {
        if let Some(why) = &t.unplaceable {
            lines.push(format!(
                "{}: no GPU of this fleet's models holds it: {why}",
                t.name
            ));
        }
    }
    let mut pools = 0;
    for hypervisor in [false, true] {
        let pool = crate::plan::pool_name(hypervisor);
        let waiting: Vec<&str> = plan
            .tenants
            .iter()
            .filter(|t| t.unplaced > 0 && t.unplaceable.is_none() && t.mode.pool() == pool)
            .map(|t| t.name.as_str())
            .collect();
        if waiting.is_empty() {
            continue;
        }
        let who = if waiting.len() > 4 {
            format!("{} and {} more", waiting[..3].join(", "), waiting.len() - 3)
        } else {
            waiting.join(", ")
        };
        let advice: Vec<&crate::plan::Shortfall> =
            plan.shortfall.iter().filter(|x| x.pool == pool).collect();
        if advice.is_empty() {
            lines.push(format!(
                "{who}: not even {} more GPUs of each of this fleet's models on a {pool} node would make room",
                crate::planner::ADVICE_MAX_GPUS
            ));
        }
        for (i, x) in advice.iter().enumerate() {
            let mut more = format!("{} more {}", x.more_gpus, x.model);
            for w in &x.with {
                let _ = write!(more, " and {} more {}", w.more_gpus, w.model);
            }
            let lead = match (i, pools) {
                (0, 0) => "",
                (0, _) => "and ",
                _ => "or ",
            };
            lines.push(format!(
                "{lead}{more} on a {pool} node would make room for {who}"
            ));
        }
        if !advice.is_empty() {
            pools += 1;
        }
    }
    lines
}

pub fn report_md(plan: &Plan, catalog: &Catalog) -> String {
    let mut s = String::from("# carve plan\n\n");
    let _ = writeln!(
        s,
        "**{} of {} GPUs used**; no plan can use fewer than **{}**{}. {}\n",
        plan.gpus_used,
        plan.gpus.len(),
        plan.lower_bound_gpus,
        if plan.optimal {
            " — this plan is a proven optimum"
        } else {
            ""
        },
        if plan.complete {
            "Every tenant has room.".to_string()
        } else {
            let missing: Vec<String> = plan
                .tenants
                .iter()
                .filter(|t| t.unplaced > 0)
                .map(|t| format!("{} ({} of {})", t.name, t.unplaced, t.replicas))
                .collect();
            let mut s = format!("**Not everything fits**: {}.\n", missing.join(", "));
            for line in shortfall_lines(plan) {
                let _ = write!(s, "\n- {line}");
            }
            s
        }
    );
    let _ = writeln!(
        s,
        "Dedicated GPUs {}, time-sliced {}, MIG {}. The MIG packing took {} branch-and-bound node{}.\n",
        plan.stats.dedicated_gpus,
        plan.stats.time_sliced_gpus,
        plan.stats.mig_gpus,
        plan.stats.solver_nodes,
        if plan.stats.solver_nodes == 1 { "" } else { "s" }
    );
    let placements = plan.placements_by_tenant();
    let none: Vec<crate::plan::Placement> = Vec::new();
    let placements_of = |t: &str| placements.get(t).unwrap_or(&none);
    s.push_str("![layout](layout.svg)\n\n## Tenants\n\n| tenant | workload | mode | replicas | memory | where |\n|---|---|---|---|---|---|\n");
    for t in &plan.tenants {
        let wh: Vec<String> = placements_of(&t.name)
            .iter()
            .map(|p| match (&p.profile, p.start) {
                (Some(pr), Some(st)) => format!("{}/{} {pr}@{st}", cell(&p.node), p.gpu),
                _ => format!("{}/{}", cell(&p.node), p.gpu),
            })
            .collect();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            cell(&t.name),
            cell(&t.workload),
            t.mode,
            t.replicas,
            gib(t.memory_mib),
            if wh.is_empty() {
                "—".into()
            } else {
                wh.join(", ")
            }
        );
    }
    for t in &plan.tenants {
        let _ = writeln!(s, "\n### {} — {}\n", t.name, t.mode);
        let _ = writeln!(s, "{}\n", t.reason);
        let _ = writeln!(s, "- Rule: `{}`", t.rule);
        if !t.profiles.is_empty() {
            let ps: Vec<String> = t
                .profiles
                .iter()
                .map(|(m, p)| format!("{p} on {m}"))
                .collect();
            let _ = writeln!(s, "- MIG profile: {}", ps.join(", "));
        }
        if let Some(r) = &t.resource {
            let _ = writeln!(s, "- Kubernetes resource: `{r}`");
        }
        if let Some(l) = &t.licence {
            let _ = writeln!(s, "- vGPU licence: {l}");
        }
        if let Some(sh) = t.share {
            let _ = writeln!(s, "- GPU-time share asked: {:.0}%", sh * 100.0);
        }
        for p in placements_of(&t.name) {
            let _ = match (&p.profile, p.start) {
                (Some(pr), Some(st)) => writeln!(
                    s,
                    "- Replica {}: {} GPU {}, {pr} at slot {st}",
                    p.replica, p.node, p.gpu
                ),
                _ => writeln!(s, "- Replica {}: {} GPU {}", p.replica, p.node, p.gpu),
            };
        }
        if t.unplaced > 0 {
            let _ = writeln!(
                s,
                "- ⚠ {} of {} replicas found no room",
                t.unplaced, t.replicas
            );
        }
        s.push_str("- Not chosen:\n");
        for r in &t.rejected {
            let _ = writeln!(s, "  - {}: {}", r.mode, r.why);
        }
        for w in &t.warnings {
            let _ = writeln!(s, "- ⚠ {w}");
        }
    }
    s.push_str("\n## GPUs\n");
    for n in &plan.nodes {
        let _ = writeln!(
            s,
            "\n### {} ({}{})\n",
            n.name,
            n.platform,
            n.licence
                .as_ref()
                .map(|l| format!(", licence {l}"))
                .unwrap_or_default()
        );
        s.push_str("| GPU | model | mode | what runs there | scheduler |\n|---|---|---|---|---|\n");
        for g in plan.node_gpus(&n.name) {
            let mut what: Vec<String> = g
                .instances
                .iter()
                .map(|i| {
                    format!(
                        "{} {}@{} ({}/{})",
                        i.profile,
                        i.start,
                        i.size,
                        cell(&i.tenant),
                        i.replica
                    )
                })
                .collect();
            what.extend(g.shares.iter().map(|x| {
                format!(
                    "{}/{} {:.0}% {}",
                    cell(&x.tenant),
                    x.replica,
                    x.share * 100.0,
                    gib(x.memory_mib)
                )
            }));
            let sch = g
                .scheduler
                .as_ref()
                .map(|x| {
                    format!(
                        "{} {} ms{}",
                        x.policy,
                        x.slice_ms,
                        x.rmpvmrl
                            .as_ref()
                            .map(|r| format!(" (RmPVMRL {r})"))
                            .unwrap_or_default()
                    )
                })
                .unwrap_or_else(|| "—".into());
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {sch} |",
                g.index,
                g.model,
                g.mode,
                if what.is_empty() {
                    "—".into()
                } else {
                    what.join("; ")
                }
            );
        }
        let mut first = true;
        for g in plan.node_gpus(&n.name) {
            if let Some(x) = &g.scheduler {
                if first {
                    s.push('\n');
                    first = false;
                }
                let _ = writeln!(
                    s,
                    "- GPU {} runs {} at {} ms: {}",
                    g.index, x.policy, x.slice_ms, x.reason
                );
            }
        }
    }
    if !plan.warnings.is_empty() {
        s.push_str("\n## Warnings\n\n");
        for w in &plan.warnings {
            let _ = writeln!(s, "- {w}");
        }
    }
    let _ = catalog;
    s
}

// ---------------------------------------------------------------------------------------------
// layout.svg

const PALETTE: [&str; 12] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac", "#86bcb6", "#d37295",
];

/// One row per GPU of the fleet: the memory slots to scale (or time shares), each tenant its
/// colour; a GPU the plan leaves unused is drawn empty, greyed and marked `unused`.
pub fn layout_svg(plan: &Plan, catalog: &Catalog) -> String {
    const LABEL_W: f64 = 330.0;
    const BAR_W: f64 = 640.0;
    const ROW_H: f64 = 34.0;
    const GAP: f64 = 10.0;
    const TOP: f64 = 40.0;
    let colour: BTreeMap<&str, &str> = plan
        .tenants
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.as_str(), PALETTE[i % PALETTE.len()]))
        .collect();
    let rows: Vec<&PlannedGpu> = plan.gpus.iter().collect();
    let legend_rows = plan.tenants.len().div_ceil(4) as f64;
    let height = TOP + rows.len() as f64 * (ROW_H + GAP) + 30.0 + legend_rows * 20.0;
    let width = LABEL_W + BAR_W + 20.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    s.push_str(r##"<defs><pattern id="free" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="6" height="6" fill="#f4f4f4"/><line x1="0" y1="0" x2="0" y2="6" stroke="#d0d0d0" stroke-width="2"/></pattern></defs>"##);
    s.push('\n');
    s.push_str("<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
    let _ = writeln!(
        s,
        r#"<text x="10" y="22" font-size="15" font-weight="bold">carve plan: {} of {} GPUs used (lower bound {}{}){}</text>"#,
        plan.gpus_used,
        plan.gpus.len(),
        plan.lower_bound_gpus,
        if plan.optimal { ", optimal" } else { "" },
        match plan.gpus.len() as u32 - plan.gpus_used.min(plan.gpus.len() as u32) {
            0 => String::new(),
            n => format!(", {n} unused"),
        }
    );
    for (r, g) in rows.iter().enumerate() {
        let y = TOP + r as f64 * (ROW_H + GAP);
        let unused = !g.is_used();
        let _ = writeln!(
            s,
            r#"<g class="gpu" data-node="{}" data-gpu="{}" data-mode="{}"><text x="10" y="{:.1}"{}>{} / GPU {} · {} · {}</text>"#,
            esc(&g.node),
            g.index,
            g.mode,
            y + ROW_H / 2.0 + 4.0,
            if unused { r##" fill="#888""## } else { "" },
            esc(&g.node),
            g.index,
            esc(&g.model),
            g.mode
        );
        let _ = writeln!(
            s,
            r##"<rect x="{LABEL_W}" y="{y:.1}" width="{BAR_W}" height="{ROW_H}" fill="url(#free)" stroke="#999"{}/>"##,
            if unused {
                r#" stroke-dasharray="4,3""#
            } else {
                ""
            }
        );
        if unused {
            let _ = writeln!(
                s,
                r##"<text class="unused" x="{:.1}" y="{:.1}" text-anchor="middle" fill="#888">unused: the plan leaves it as it is</text></g>"##,
                LABEL_W + BAR_W / 2.0,
                y + ROW_H / 2.0 + 4.0
            );
            continue;
        }
        let model = catalog.gpu(&g.model).ok();
        match (g.mode, model) {
            (GpuMode::Mig | GpuMode::VgpuMig, Some(m)) => {
                let slot_w = BAR_W / m.memory_slots as f64;
                for i in &g.instances {
                    let x = LABEL_W + i.start as f64 * slot_w;
                    let w = i.size as f64 * slot_w;
                    let c = colour.get(i.tenant.as_str()).copied().unwrap_or("#999");
                    let _ = writeln!(
                        s,
                        r##"<rect class="instance" x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" rx="3" fill="{c}" stroke="#333"><title>{} replica {}: {} at slot {} ({} slots){}</title></rect>"##,
                        x + 1.0,
                        y + 1.0,
                        w - 2.0,
                        ROW_H - 2.0,
                        esc(&i.tenant),
                        i.replica,
                        esc(&i.profile),
                        i.start,
                        i.size,
                        i.vgpu_type
                            .as_ref()
                            .map(|v| format!(", vGPU {}", esc(v)))
                            .unwrap_or_default()
                    );
                    let label = format!("{} {}", i.tenant, i.profile);
                    let fits = (label.chars().count() as f64) * 6.5 < w - 6.0;
                    let text = if fits {
                        label
                    } else if (i.tenant.chars().count() as f64) * 6.5 < w - 6.0 {
                        i.tenant.clone()
                    } else {
                        String::new()
                    };
                    if !text.is_empty() {
                        let _ = writeln!(
                            s,
                            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="white">{}</text>"#,
                            x + w / 2.0,
                            y + ROW_H / 2.0 + 4.0,
                            esc(&text)
                        );
                    }
                }
                for k in 1..m.memory_slots {
                    let x = LABEL_W + k as f64 * slot_w;
                    let _ = writeln!(
                        s,
                        r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#999" stroke-dasharray="2,3"/>"##,
                        y + ROW_H,
                        y + ROW_H + 4.0
                    );
                }
            }
            _ => {
                // Time shares (or a dedicated GPU): width by share.
                let mut x = LABEL_W;
                for sh in &g.shares {
                    let w = (sh.share.clamp(0.0, 1.0) * BAR_W).max(2.0);
                    let c = colour.get(sh.tenant.as_str()).copied().unwrap_or("#999");
                    let _ = writeln!(
                        s,
                        r##"<rect class="share" x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" rx="3" fill="{c}" stroke="#333"><title>{} replica {}: {:.0}% of GPU time, {}{}</title></rect>"##,
                        x + 1.0,
                        y + 1.0,
                        (w - 2.0).max(1.0),
                        ROW_H - 2.0,
                        esc(&sh.tenant),
                        sh.replica,
                        sh.share * 100.0,
                        gib(sh.memory_mib),
                        sh.vgpu_type
                            .as_ref()
                            .map(|v| format!(", vGPU {}", esc(v)))
                            .unwrap_or_default()
                    );
                    if (sh.tenant.chars().count() as f64) * 6.5 < w - 6.0 {
                        let _ = writeln!(
                            s,
                            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="white">{}</text>"#,
                            x + w / 2.0,
                            y + ROW_H / 2.0 + 4.0,
                            esc(&sh.tenant)
                        );
                    }
                    x += w;
                }
            }
        }
        s.push_str("</g>\n");
    }
    let ly = TOP + rows.len() as f64 * (ROW_H + GAP) + 10.0;
    for (i, t) in plan.tenants.iter().enumerate() {
        let x = 10.0 + (i % 4) as f64 * 220.0;
        let y = ly + (i / 4) as f64 * 20.0;
        let _ = writeln!(
            s,
            r#"<rect x="{x:.1}" y="{y:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{:.1}">{} ({})</text>"#,
            colour[t.name.as_str()],
            x + 16.0,
            y + 10.0,
            esc(&t.name),
            t.mode
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Every file for an output directory (besides plan.json), as (relative path, contents).
pub fn files(plan: &Plan, catalog: &Catalog) -> Vec<(String, String)> {
    let mut out = vec![
        ("report.md".to_string(), report_md(plan, catalog)),
        ("layout.svg".to_string(), layout_svg(plan, catalog)),
        ("pod-resources.yaml".to_string(), pod_resources(plan)),
    ];
    for n in &plan.nodes {
        let dir = format!("nodes/{}", path_name(&n.name));
        if let Some(t) = mig_parted(plan, &n.name) {
            out.push((format!("{dir}/mig-parted.yaml"), t));
        }
        if let Some(t) = device_plugin(plan, &n.name) {
            out.push((format!("{dir}/device-plugin.yaml"), t));
        }
        if let Some(t) = sched_config(plan, &n.name) {
            out.push((format!("{dir}/carve-sched.yaml"), t));
        }
        if let Some(t) = vgpu_sheet(plan, &n.name) {
            out.push((format!("{dir}/vgpu.md"), t));
        }
    }
    out
}
