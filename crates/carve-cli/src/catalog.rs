//! The commands. Each returns what to print and its status, or a bad-input failure.

use crate::input::{read_input, write_svg};
use crate::output::{excerpt, table, Failure, Out};
use crate::svg;
use carve_migparted as migparted;
use carve_model::geometry::{self, describe_counts, Infeasible, Instance, PlacedInstance};
use carve_model::{Catalog, GpuListError, GpuModel};
use serde::Serialize;
use serde_json::json;
use std::path::{Path, PathBuf};

fn unconfirmed_line(gpu: &GpuModel) -> Option<String> {
    (!gpu.unconfirmed.is_empty()).then(|| format!("unconfirmed: {}", gpu.unconfirmed.join("; ")))
}

// ------------------------------------------------------------------------------------------------

pub fn catalog_cmd(catalog: &Catalog, note: Option<String>, json: bool) -> Result<Out, Failure> {
    if json {
        #[derive(Serialize)]
        struct J<'a> {
            gpus: &'a [GpuModel],
            editions: &'a [carve_model::LicenceEdition],
            #[serde(skip_serializing_if = "Option::is_none")]
            user_catalog: Option<String>,
        }
        return Ok(Out::json(
            &J {
                gpus: &catalog.gpus,
                editions: &catalog.editions,
                user_catalog: note,
            },
            0,
        ));
    }
    let mut rows = vec![vec![
        "GPU".into(),
        "ARCH".into(),
        "MEMORY".into(),
        "COMPUTE".into(),
        "SLOTS".into(),
        "MAX GI".into(),
        "PROFILES".into(),
        "PCI IDS".into(),
        "DATA".into(),
    ]];
    for g in &catalog.gpus {
        rows.push(vec![
            g.key.clone(),
            g.architecture.to_string(),
            format!("{} GB", g.memory_gb),
            g.compute_slices.to_string(),
            g.memory_slots.to_string(),
            g.max_instances.to_string(),
            g.profiles.len().to_string(),
            g.pci_ids
                .iter()
                .map(|i| format!("0x{i:04X}"))
                .collect::<Vec<_>>()
                .join(" "),
            if g.is_confirmed() {
                "confirmed".into()
            } else {
                "partly unconfirmed".into()
            },
        ]);
    }
    let mut s = table(&rows);
    s.push_str(&format!(
        "\n{} GPU models. `carve profiles <GPU>` shows one; a GPU may be named by key, NVML name or PCI id.\n",
        catalog.gpus.len()
    ));
    let editions: Vec<String> = catalog
        .editions
        .iter()
        .map(|e| format!("{} ({}-series)", e.name, e.series.join("/")))
        .collect();
    s.push_str(&format!("vGPU licence editions: {}\n", editions.join(", ")));
    if let Some(n) = note {
        s.push_str(&format!("user catalog {n}\n"));
    }
    Ok(Out::ok(s))
}

// ------------------------------------------------------------------------------------------------

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

pub fn profiles_cmd(gpu: &GpuModel, catalog: &Catalog, json: bool) -> Result<Out, Failure> {
    if json {
        #[derive(Serialize)]
        struct P<'a> {
            #[serde(flatten)]
            profile: &'a carve_model::GiProfile,
            nvml_constant: String,
            nvml_value: u32,
            attribute: carve_model::Attribute,
        }
        let profiles: Vec<P> = gpu
            .profiles
            .iter()
            .map(|p| P {
                profile: p,
                nvml_constant: p.nvml.macro_name(),
                nvml_value: p.nvml.value(),
                attribute: p.attribute(),
            })
            .collect();
        return Ok(Out::json(
            &json!({
                "gpu": gpu.key,
                "name": gpu.name,
                "architecture": gpu.architecture,
                "memory_gb": gpu.memory_gb,
                "compute_slices": gpu.compute_slices,
                "memory_slots": gpu.memory_slots,
                "max_instances": gpu.max_instances,
                "mig_mode_persistent": gpu.mig_mode_persistent,
                "confirmed": gpu.is_confirmed(),
                "unconfirmed": gpu.unconfirmed,
                "profiles": profiles,
                "vgpu": gpu.vgpu,
            }),
            0,
        ));
    }
    let mut s = format!(
        "{} — {}\n{}, {} GB; {} compute slices, {} memory slots, at most {} GPU instances.\n",
        gpu.key,
        gpu.name,
        gpu.architecture,
        gpu.memory_gb,
        gpu.compute_slices,
        gpu.memory_slots,
        gpu.max_instances
    );
    s.push_str(if gpu.mig_mode_persistent {
        "MIG mode survives reboots (InfoROM) and switching it resets the GPU; instances never survive a reboot.\n"
    } else {
        "MIG mode switches without a reset but is lost on reboot or driver reload, as are all instances.\n"
    });
    if let Some(d) = &gpu.min_driver {
        s.push_str(&format!("Minimum driver: {d}.\n"));
    }
    s.push('\n');
    let mut rows = vec![[
        "PROFILE",
        "NVML CONSTANT",
        "ID",
        "C",
        "SLOTS",
        "STARTS",
        "MAX",
        "SM",
        "MiB",
        "CE",
        "DEC",
        "ENC",
        "JPG",
        "OFA",
    ]
    .iter()
    .map(|h| h.to_string())
    .collect::<Vec<_>>()];
    for p in &gpu.profiles {
        rows.push(vec![
            p.name.clone(),
            p.nvml.macro_name(),
            opt(p.id),
            p.compute.to_string(),
            p.slots.to_string(),
            p.starts
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(","),
            p.max.to_string(),
            opt(p.sm),
            opt(p.mib),
            opt(p.ce),
            opt(p.dec),
            opt(p.enc),
            opt(p.jpg),
            opt(p.ofa),
        ]);
    }
    s.push_str(&table(&rows));
    s.push_str("\nC = compute slices; SLOTS = memory slots taken (placement size); STARTS = allowed first slots. ID is the driver's profile id as nvidia-smi prints it: carve queries it at run time.\n");
    if !gpu.vgpu.is_empty() {
        let c_editions: Vec<&str> = catalog
            .editions
            .iter()
            .filter(|e| e.series.iter().any(|x| x == "C"))
            .map(|e| e.name.as_str())
            .collect();
        s.push_str(&format!(
            "\nvGPU profiles (C-series; licence: {}):\n",
            c_editions.join(" or ")
        ));
        let mut rows = vec![vec![
            "VGPU TYPE".to_string(),
            "KIND".into(),
            "FRAMEBUFFER".into(),
            "MAX/GPU".into(),
            "MIG PROFILE".into(),
        ]];
        for v in &gpu.vgpu {
            rows.push(vec![
                v.name.clone(),
                match v.kind {
                    carve_model::VgpuKind::TimeSliced => "time-sliced".into(),
                    carve_model::VgpuKind::Mig => "MIG-backed".into(),
                },
                format!("{} GB", v.framebuffer_gb),
                v.max.to_string(),
                v.profile.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
        s.push_str(&table(&rows));
    }
    if let Some(u) = unconfirmed_line(gpu) {
        s.push_str(&format!("\nwarning: {u}\n"));
    }
    if !gpu.sources.is_empty() {
        s.push_str(&format!("sources: {}\n", gpu.sources.join("; ")));
    }
    Ok(Out::ok(s))
}

// ------------------------------------------------------------------------------------------------

pub fn layouts_cmd(
    gpu: &GpuModel,
    all: bool,
    svg_path: Option<PathBuf>,
    json: bool,
) -> Result<Out, Failure> {
    let placed = geometry::enumerate(gpu).len();
    let combos = geometry::combinations(gpu);
    let maximal = combos.iter().filter(|c| c.maximal).count();
    let shown: Vec<&geometry::Combination> = combos.iter().filter(|c| all || c.maximal).collect();
    if let Some(p) = &svg_path {
        let rows: Vec<(String, Vec<Instance>)> = shown
            .iter()
            .map(|c| (describe_counts(gpu, &c.counts), c.layout.clone()))
            .collect();
        write_svg(p, &svg::layouts(gpu, &rows))?;
    }
    if json {
        let list: Vec<_> = shown
            .iter()
            .map(|c| {
                let profiles: serde_json::Map<String, serde_json::Value> = c
                    .counts
                    .iter()
                    .enumerate()
                    .filter(|(_, &n)| n > 0)
                    .map(|(i, &n)| (gpu.profiles[i].name.clone(), json!(n)))
                    .collect();
                json!({
                    "profiles": profiles,
                    "maximal": c.maximal,
                    "placements": c.placements,
                    "instances": c.layout.iter().map(|i| geometry::placed(gpu, i)).collect::<Vec<_>>(),
                })
            })
            .collect();
        return Ok(Out::json(
            &json!({
                "gpu": gpu.key,
                "confirmed": gpu.is_confirmed(),
                "placed_layouts": placed,
                "combinations": combos.len(),
                "maximal": maximal,
                "layouts": list,
            }),
            0,
        ));
    }
    let mut s = format!(
        "{}: {} valid placed layouts, {} profile combinations, {} maximal (nothing more fits).\n",
        gpu.key,
        placed,
        combos.len(),
        maximal
    );
    s.push_str(if all {
        "Every combination, one placement each:\n\n"
    } else {
        "The maximal combinations, one placement each (--all for every one):\n\n"
    });
    let cell = cell_width(gpu);
    s.push_str(&format!("{}\n", slot_ruler(gpu, cell)));
    for c in &shown {
        s.push_str(&format!(
            "{}  {}\n",
            geometry::draw(gpu, &c.layout, cell),
            describe_counts(gpu, &c.counts)
        ));
    }
    if let Some(p) = svg_path {
        s.push_str(&format!("\npicture: {}\n", p.display()));
    }
    if let Some(u) = unconfirmed_line(gpu) {
        s.push_str(&format!("\nwarning: {u}\n"));
    }
    Ok(Out::ok(s))
}

fn cell_width(gpu: &GpuModel) -> usize {
    if gpu.memory_slots > 8 {
        3
    } else {
        7
    }
}

/// Slot numbers above a drawing.
fn slot_ruler(gpu: &GpuModel, cell: usize) -> String {
    let mut s = String::from(" ");
    for i in 0..gpu.memory_slots {
        s.push_str(&format!("{:^cell$} ", i));
    }
    s.trim_end().to_string()
}

// ------------------------------------------------------------------------------------------------

/// Parses `PROFILE` or `PROFILE=N` into (profile index, count).
fn parse_profile_arg(gpu: &GpuModel, arg: &str) -> Result<(usize, u32), Failure> {
    let (name, count) = match arg.split_once('=') {
        Some((n, c)) => {
            let count = c.trim().parse::<u32>().map_err(|_| {
                Failure::bad(format!(
                    "'{arg}': the count after '=' must be a non-negative integer"
                ))
            })?;
            (n, count)
        }
        None => (arg, 1),
    };
    if count > 64 {
        return Err(Failure::bad(format!(
            "'{arg}': {count} instances of one profile cannot fit on any GPU (at most {} on {})",
            gpu.max_instances, gpu.key
        )));
    }
    Ok((gpu.resolve_profile(name)?, count))
}

fn parse_used_arg(gpu: &GpuModel, arg: &str) -> Result<Instance, Failure> {
    let (name, start) = arg.split_once('@').ok_or_else(|| {
        Failure::bad(format!(
            "'{arg}': --used takes PROFILE@START, e.g. 3g.40gb@4"
        ))
    })?;
    let profile = gpu.resolve_profile(name)?;
    let start = start.trim().parse::<u8>().map_err(|_| {
        Failure::bad(format!(
            "'{arg}': the start after '@' must be a memory-slot index (0..{})",
            gpu.memory_slots - 1
        ))
    })?;
    Ok(Instance { profile, start })
}

pub fn fit_cmd(
    gpu: &GpuModel,
    args: &[String],
    used: &[String],
    svg_path: Option<PathBuf>,
    json: bool,
) -> Result<Out, Failure> {
    let mut counts = vec![0u32; gpu.profiles.len()];
    for a in args {
        let (i, n) = parse_profile_arg(gpu, a)?;
        counts[i] = counts[i].saturating_add(n);
    }
    let existing: Vec<Instance> = used
        .iter()
        .map(|u| parse_used_arg(gpu, u))
        .collect::<Result<_, _>>()?;
    if let Err(v) = geometry::check(gpu, &existing) {
        return Err(Failure::bad(format!(
            "--used instances are not a valid layout: {v}"
        )));
    }
    let result = geometry::fit(gpu, &counts, &existing);
    // `PROFILE=0` asks for none: with every count 0 there is nothing to place, which fits.
    let nothing = counts.iter().all(|&c| c == 0);
    let what = if nothing {
        "nothing to place".to_string()
    } else {
        describe_counts(gpu, &counts)
    };
    match result {
        Ok(layout) => {
            let free: Vec<(String, Vec<u8>)> = (0..gpu.profiles.len())
                .map(|p| {
                    (
                        gpu.profiles[p].name.clone(),
                        geometry::free_starts(gpu, &layout, p),
                    )
                })
                .filter(|(_, s)| !s.is_empty())
                .collect();
            if let Some(p) = &svg_path {
                write_svg(p, &svg::layouts(gpu, &[(what.clone(), layout.clone())]))?;
            }
            let mut sorted = layout.clone();
            sorted.sort_by_key(|i| i.start);
            let instances: Vec<PlacedInstance> =
                sorted.iter().map(|i| geometry::placed(gpu, i)).collect();
            if json {
                let room: serde_json::Map<String, serde_json::Value> =
                    free.iter().map(|(n, s)| (n.clone(), json!(s))).collect();
                return Ok(Out::json(
                    &json!({
                        "gpu": gpu.key,
                        "feasible": true,
                        "instances": instances,
                        "existing": existing.len(),
                        "room": room,
                        "confirmed": gpu.is_confirmed(),
                    }),
                    0,
                ));
            }
            let cell = cell_width(gpu);
            let mut s = if nothing {
                format!("{}: nothing to place (every count is 0).\n\n", gpu.key)
            } else {
                format!("{}: {what} fits.\n\n", gpu.key)
            };
            s.push_str(&format!(
                "{}\n{}\n\n",
                slot_ruler(gpu, cell),
                geometry::draw(gpu, &layout, cell)
            ));
            let mut rows = vec![vec![
                "PROFILE".to_string(),
                "START".into(),
                "SIZE".into(),
                "SLOTS".into(),
                "".into(),
            ]];
            for (inst, i) in sorted.iter().zip(&instances) {
                rows.push(vec![
                    i.profile.clone(),
                    i.start.to_string(),
                    i.size.to_string(),
                    if i.size == 1 {
                        i.start.to_string()
                    } else {
                        format!("{}-{}", i.start, i.start + i.size - 1)
                    },
                    if existing.contains(inst) {
                        "(already there)".into()
                    } else {
                        String::new()
                    },
                ]);
            }
            s.push_str(&table(&rows));
            if free.is_empty() {
                s.push_str("\nThe GPU is full: no other instance fits.\n");
            } else {
                let f: Vec<String> = free
                    .iter()
                    .map(|(n, st)| {
                        format!(
                            "{n} at {}",
                            st.iter()
                                .map(|x| x.to_string())
                                .collect::<Vec<_>>()
                                .join(",")
                        )
                    })
                    .collect();
                s.push_str(&format!("\nRoom for one more: {}.\n", f.join("; ")));
            }
            if let Some(p) = svg_path {
                s.push_str(&format!("picture: {}\n", p.display()));
            }
            if let Some(u) = unconfirmed_line(gpu) {
                s.push_str(&format!("warning: {u}\n"));
            }
            Ok(Out::ok(s))
        }
        Err(e) => {
            let reason = migparted::infeasible_text(gpu, &e);
            let kind = match &e {
                Infeasible::Existing(_) => "existing",
                Infeasible::Rule(_) => "rule",
                Infeasible::NoPlacement { .. } => "placement",
            };
            if json {
                let mut v = json!({
                    "gpu": gpu.key,
                    "feasible": false,
                    "reason": reason,
                    "proof": kind,
                });
                if let Infeasible::NoPlacement { explored, .. } = e {
                    v["explored"] = json!(explored);
                }
                return Ok(Out::json(&v, 1));
            }
            Ok(Out::no(format!(
                "{}: {what} does not fit: {reason}.\n",
                gpu.key
            )))
        }
    }
}

// ------------------------------------------------------------------------------------------------

/// Parses `8xH100-80GB` or `A100-40GB,2xH100-80GB` into the node's GPUs by index.
fn parse_node<'c>(catalog: &'c Catalog, spec: &str) -> Result<Vec<&'c GpuModel>, Failure> {
    catalog.gpu_list(spec).map_err(|e| match e {
        GpuListError::Unknown(e) => Failure::from(e),
        GpuListError::Empty => Failure::bad("--gpus: no GPUs given (e.g. --gpus 8xH100-80GB)"),
        other => Failure::bad(format!("--gpus: {other}")),
    })
}

pub fn validate_cmd(
    catalog: &Catalog,
    file: &Path,
    node: Option<&str>,
    json: bool,
) -> Result<Out, Failure> {
    let node = node.map(|n| parse_node(catalog, n)).transpose()?;
    let text = read_input(file)?;
    let name = if file == Path::new("-") {
        "<stdin>".to_string()
    } else {
        file.display().to_string()
    };
    let (diags, report) = match migparted::parse(&text) {
        Err(diags) => (diags, None),
        Ok((cfg, parse_diags)) => {
            let mut r = migparted::check(&cfg, catalog, node.as_deref());
            r.diagnostics.extend(parse_diags);
            r.diagnostics.sort_by_key(|d| d.pos);
            (r.diagnostics.clone(), Some(r))
        }
    };
    let errors = diags
        .iter()
        .filter(|d| d.severity == migparted::Severity::Error)
        .count();
    if errors > 0 {
        let mut leading = Vec::new();
        for d in &diags {
            leading.push(format!("{name}:{d}"));
            leading.extend(excerpt(&text, d.pos.line, d.pos.column));
        }
        return Err(Failure::BadInput {
            message: format!(
                "{name} is not valid: {errors} error{}",
                if errors == 1 { "" } else { "s" }
            ),
            detail: leading,
            suggestions: Vec::new(),
            diagnostics: Some(Box::new(json!({
                "file": name,
                "valid": false,
                "diagnostics": diags,
                "entries": report.as_ref().map(|r| &r.entries),
            }))),
        });
    }
    let report = report.expect("no errors means parsed");
    if json {
        return Ok(Out::json(
            &json!({ "file": name, "valid": true, "diagnostics": diags, "entries": report.entries }),
            0,
        ));
    }
    let mut s = String::new();
    for d in &diags {
        s.push_str(&format!("{name}:{d}\n"));
    }
    let mut configs: Vec<&str> = report.entries.iter().map(|e| e.config.as_str()).collect();
    configs.dedup();
    s.push_str(&format!(
        "{name}: valid ({} config(s), {} entr{}).\n",
        configs.len(),
        report.entries.len(),
        if report.entries.len() == 1 {
            "y"
        } else {
            "ies"
        }
    ));
    for e in &report.entries {
        let models: Vec<String> = e
            .models
            .iter()
            .map(|m| {
                let g = catalog.gpu(&m.gpu).expect("from catalog");
                if m.instances.is_empty() {
                    m.gpu.clone()
                } else {
                    format!("{} {}", m.gpu, geometry::draw(g, &m.layout, 2))
                }
            })
            .collect();
        s.push_str(&format!(
            "  {} #{} (line {}): {}\n",
            e.config,
            e.entry + 1,
            e.pos.line,
            if models.is_empty() {
                format!("targets no GPU model ({})", e.targets)
            } else {
                format!("ok on {}", models.join(", "))
            }
        ));
    }
    Ok(Out::ok(s))
}
