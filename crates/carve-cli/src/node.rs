//! Commands that work on the node's GPUs through a backend: apply, status, assert, export, sim.
//! `apply` and `assert` take a mig-parted config or a carve plan (`plan.json`).

use crate::backend::{open_backend, open_sim, open_store, Ctx};
use crate::input::read_input;
use crate::output::{backend_failure, table, Failure, Out};
use carve_apply::{Changes, Desired, Event, GpuTarget, Observed};
use carve_backend::Process;
use carve_model::geometry::{self, Instance};
use carve_model::Catalog;
use clap::Subcommand;
use serde_json::json;
use std::path::Path;

#[derive(Subcommand, Debug)]
pub enum SimCommand {
    /// Show the simulated node (same as `carve --backend sim status`).
    Show,
    /// Mark a MIG device busy, as if a process ran on it.
    Busy {
        /// The MIG device UUID (MIG-...).
        uuid: String,
        #[arg(long, default_value_t = 4242)]
        pid: u32,
        #[arg(long, default_value = "sim-workload")]
        name: String,
    },
    /// Mark a MIG device idle again.
    Idle { uuid: String },
    /// Make the Nth GPU mutation from now fail with an NVML error.
    Fail {
        /// Which mutation, counting from 1.
        nth: u64,
        /// in-use, insufficient-resources, not-supported, no-permission, not-found,
        /// invalid-argument, reset-required, unavailable or unknown.
        error: String,
    },
    /// Report an XID on a GPU or MIG device (a running agent marks it unhealthy; XIDs 13, 31,
    /// 43, 45, 68 and 109 are the application's and are ignored), or clear it with --clear.
    Xid {
        /// GPU-... or MIG-... UUID, or a GPU index.
        device: String,
        /// The XID (79: fallen off the bus, 48: double-bit ECC, ...).
        #[arg(required_unless_present = "clear")]
        xid: Option<u64>,
        /// Mark the device healthy again.
        #[arg(long, conflicts_with = "xid")]
        clear: bool,
    },
    /// Simulate a reboot: every instance is gone; Hopper and later forget MIG mode.
    Reboot,
    /// Simulate a GPU reset: a pending MIG mode change takes effect.
    Reset { gpu: u32 },
}

/// Reads a mig-parted config or a carve plan (`-` is standard input); picks the config (`-c`) or
/// the node (`--node`).
pub(crate) fn load_desired(
    file: &Path,
    config: Option<&str>,
    node: Option<&str>,
) -> Result<Desired, Failure> {
    let text = read_input(file)?;
    Desired::read(&text, &file.display().to_string(), config, node).map_err(Failure::from)
}

fn draw_observed(catalog: &Catalog, o: &Observed) -> Option<String> {
    let model = catalog.gpu(o.model.as_deref()?).ok()?;
    let layout: Vec<Instance> = o
        .instances
        .iter()
        .filter_map(|gi| {
            Some(Instance {
                profile: model.profile_index_by_nvml(gi.profile)?,
                start: gi.start,
            })
        })
        .collect();
    Some(geometry::draw(
        model,
        &layout,
        if model.memory_slots > 8 { 3 } else { 7 },
    ))
}

fn status_text(catalog: &Catalog, observed: &[Observed]) -> String {
    let mut s = String::new();
    for o in observed {
        let mig = match o.info.mig {
            None => "MIG not supported".to_string(),
            Some(m) if m.current == m.pending => {
                format!("MIG {}", if m.current { "on" } else { "off" })
            }
            Some(m) => format!(
                "MIG {} (pending {} after reset)",
                if m.current { "on" } else { "off" },
                if m.pending { "on" } else { "off" }
            ),
        };
        s.push_str(&format!(
            "GPU {}  {}  {}  {}\n",
            o.info.index,
            o.model.as_deref().unwrap_or(&o.info.name),
            o.info.uuid,
            mig
        ));
        if o.instances.is_empty() {
            if o.info.mig.is_some_and(|m| m.current) {
                s.push_str("  no GPU instances\n");
            }
            continue;
        }
        if let Some(d) = draw_observed(catalog, o) {
            s.push_str(&format!("  {d}\n"));
        }
        let mut rows = vec![vec![
            "  GI".to_string(),
            "PROFILE".into(),
            "PLACEMENT".into(),
            "CI".into(),
            "MIG DEVICE".into(),
            "PROCESSES".into(),
        ]];
        for (gi, name) in o.instances.iter().map(|i| (&i.gi, &i.profile_name)) {
            let place = format!("{}:{}", gi.start, gi.size);
            if gi.compute_instances.is_empty() {
                rows.push(vec![
                    format!("  {}", gi.id),
                    name.clone(),
                    place.clone(),
                    "-".into(),
                    "(no compute instance)".into(),
                    String::new(),
                ]);
            }
            for ci in &gi.compute_instances {
                let procs: Vec<String> = ci
                    .processes
                    .iter()
                    .map(|p| format!("{} ({})", p.name, p.pid))
                    .collect();
                rows.push(vec![
                    format!("  {}", gi.id),
                    if ci.slices == gi.compute_instances.iter().map(|c| c.slices).sum::<u8>()
                        && gi.compute_instances.len() == 1
                    {
                        name.clone()
                    } else {
                        format!("{}c.{name}", ci.slices)
                    },
                    place.clone(),
                    ci.id.to_string(),
                    ci.uuid.clone(),
                    procs.join(", "),
                ]);
            }
        }
        s.push_str(&table(&rows));
    }
    s
}

pub fn status_cmd(ctx: &Ctx, catalog: Catalog) -> Result<Out, Failure> {
    let (mut backend, note) = open_backend(ctx, &catalog)?;
    let observed = carve_apply::observe(backend.as_mut(), &catalog).map_err(Failure::from)?;
    let store = open_store(ctx)?;
    let unfinished = store
        .journal_unfinished()
        .map_err(|e| Failure::failed(e.to_string()))?;
    if ctx.json {
        return Ok(Out::json(
            &json!({ "backend": backend.kind(), "gpus": observed, "interrupted_applies": unfinished.len() }),
            0,
        ));
    }
    let mut s = format!("{note}\n\n{}", status_text(&catalog, &observed));
    if !unfinished.is_empty() {
        let ids: Vec<String> = unfinished.iter().map(|e| format!("#{}", e.id)).collect();
        let what = if ids.len() == 1 {
            "an apply was"
        } else {
            "applies were"
        };
        s.push_str(&format!(
            "\nwarning: {what} interrupted (journal {}): the GPUs may be part-way. The next `carve apply` goes straight from what they hold to its desired state, and `carve apply --boot` to the interrupted apply's.\n",
            ids.join(", ")
        ));
    }
    Ok(Out::ok(s))
}

fn summarize(targets: &[GpuTarget], changes: &Changes) -> String {
    let mut s = String::new();
    for g in changes.per_gpu(targets) {
        s.push_str(&format!(
            "GPU {} ({}): keep {}, destroy {}, create {}{}\n",
            g.gpu,
            g.model,
            g.keep,
            g.destroy,
            g.create,
            if g.unchanged() {
                " (already as wanted)"
            } else {
                ""
            }
        ));
    }
    s
}

/// The line saying that interrupted applies are (or, on a dry run, would be) superseded; empty
/// when there are none.
fn superseding(journal_ids: &[i64], desired: &Desired, dry_run: bool) -> String {
    if journal_ids.is_empty() {
        return String::new();
    }
    let ids: Vec<String> = journal_ids.iter().map(|id| format!("#{id}")).collect();
    let (what, verb) = match (journal_ids.len(), dry_run) {
        (1, false) => ("apply", "is"),
        (_, false) => ("applies", "are"),
        (1, true) => ("apply", "would be"),
        (_, true) => ("applies", "would be"),
    };
    format!(
        "interrupted {what} {} {verb} superseded, not replayed: going straight to {} from what the GPUs hold\n",
        ids.join(", "),
        desired.describe()
    )
}

#[allow(clippy::too_many_arguments)] // one per flag of `carve apply`
pub fn apply_cmd(
    ctx: &Ctx,
    catalog: Catalog,
    file: Option<&Path>,
    config: Option<&str>,
    node: Option<&str>,
    boot: bool,
    dry_run: bool,
    force: bool,
) -> Result<Out, Failure> {
    // Bad input is found before any GPU is touched.
    let desired = match (boot, file) {
        (false, Some(f)) => load_desired(f, config, node)?,
        (false, None) => {
            return Err(Failure::bad(
                "apply needs a mig-parted config file or a carve plan, or --boot",
            ))
        }
        (true, _) => Desired::Recorded,
    };
    let (mut backend, note) = open_backend(ctx, &catalog)?;
    let store = open_store(ctx)?;
    let json = ctx.json;
    let mut log = String::new();
    let r = carve_apply::reconcile(
        backend.as_mut(),
        &catalog,
        &store,
        &desired,
        carve_apply::ApplyOptions { dry_run, force },
        &mut |e| match e {
            Event::Waiting => eprintln!("carve: another apply is running; waiting for it"),
            Event::Superseding { journal_ids } => {
                log.push_str(&superseding(journal_ids, &desired, false));
            }
            Event::Applying { targets, changes } if !json => {
                eprintln!("carve: applying {} on {note}", desired.describe());
                eprint!("{}", summarize(targets, changes));
            }
            Event::Op { i, n, op } if !json => eprintln!("  [{}/{}] {op}", i + 1, n),
            _ => {}
        },
    )
    .map_err(Failure::from)?;
    if dry_run {
        if json {
            return Ok(Out::json(
                &json!({ "dry_run": true, "backend": backend.kind(), "superseded": r.superseded, "targets": r.targets, "ops": r.changes.ops, "kept": r.changes.kept, "blocked": r.changes.blockers }),
                0,
            ));
        }
        eprintln!("carve: applying {} on {note}", desired.describe());
        eprint!("{}", summarize(&r.targets, &r.changes));
        let mut s = log;
        s.push_str(&superseding(&r.superseded, &desired, true));
        if r.targets.is_empty() {
            s.push_str("no GPU is selected: nothing to do.\n");
        }
        s.push_str(&format!(
            "dry run: {} operation(s), nothing changed\n",
            r.changes.ops.len()
        ));
        for op in &r.changes.ops {
            s.push_str(&format!("  {op}\n"));
        }
        for b in &r.changes.blockers {
            s.push_str(&format!("  blocked: {b}\n"));
        }
        return Ok(Out::ok(s));
    }
    let (ops, kept, journal_id) = match &r.outcome {
        Some(o) => (o.ops.clone(), o.kept.clone(), o.journal_id),
        None => (Vec::new(), Vec::new(), None),
    };
    if json {
        return Ok(Out::json(
            &json!({ "dry_run": false, "backend": backend.kind(), "journal_id": journal_id, "superseded": r.superseded, "targets": r.targets, "ops": ops, "kept": kept }),
            0,
        ));
    }
    if r.targets.is_empty() {
        log.push_str("no GPU is selected: nothing to do.\n");
    }
    log.push_str(&format!(
        "done: {} operation(s); {} MIG device(s) kept untouched.\n",
        ops.len(),
        kept.len()
    ));
    Ok(Out::ok(log))
}

pub fn assert_cmd(
    ctx: &Ctx,
    catalog: Catalog,
    file: Option<&Path>,
    config: Option<&str>,
    node: Option<&str>,
) -> Result<Out, Failure> {
    // A mig-parted config compares counts, as mig-parted does (any placement of the wanted
    // profiles); a plan places every instance, so its placements are compared.
    let desired = match file {
        Some(f) => load_desired(f, config, node)?,
        None => Desired::Recorded,
    };
    let (mut backend, _) = open_backend(ctx, &catalog)?;
    let store = open_store(ctx)?;
    let (targets, changes) = carve_apply::compare(backend.as_mut(), &catalog, &store, &desired)
        .map_err(Failure::from)?;
    let matches = changes.ops.is_empty();
    if ctx.json {
        return Ok(Out::json(
            &json!({ "matches": matches, "differences": changes.ops }),
            if matches { 0 } else { 1 },
        ));
    }
    if matches {
        Ok(Out::ok(format!(
            "the GPUs match ({} GPU(s) checked)\n",
            targets.len()
        )))
    } else {
        let mut s = format!(
            "the GPUs differ: {} operation(s) would be needed:\n",
            changes.ops.len()
        );
        for op in &changes.ops {
            s.push_str(&format!("  {op}\n"));
        }
        Ok(Out::no(s))
    }
}

pub fn export_cmd(ctx: &Ctx, catalog: Catalog, label: &str) -> Result<Out, Failure> {
    if label.is_empty() || label.contains(char::is_whitespace) || label.contains(':') {
        return Err(Failure::bad(format!(
            "--label '{label}' must be a single word"
        )));
    }
    let (mut backend, _) = open_backend(ctx, &catalog)?;
    let observed = carve_apply::observe(backend.as_mut(), &catalog).map_err(Failure::from)?;
    let yaml = carve_apply::export::to_migparted(&catalog, &observed, label);
    if ctx.json {
        return Ok(Out::json(&json!({ "config": label, "yaml": yaml }), 0));
    }
    Ok(Out::ok(yaml))
}

pub fn sim_cmd(ctx: &Ctx, catalog: Catalog, cmd: SimCommand) -> Result<Out, Failure> {
    let (mut sim, note) = open_sim(ctx, &catalog)?;
    let done = |what: String| -> Result<Out, Failure> {
        if ctx.json {
            Ok(Out::json(&json!({ "ok": true, "did": what }), 0))
        } else {
            Ok(Out::ok(format!("{what}\n")))
        }
    };
    match cmd {
        SimCommand::Show => {
            let observed = carve_apply::observe(&mut sim, &catalog).map_err(Failure::from)?;
            if ctx.json {
                let fault = sim.fault().map_err(backend_failure)?;
                return Ok(Out::json(
                    &json!({ "spec": sim.spec().map_err(backend_failure)?, "gpus": observed, "fault": fault }),
                    0,
                ));
            }
            let mut s = format!("{note}\n\n{}", status_text(&catalog, &observed));
            if let Some(f) = sim.fault().map_err(backend_failure)? {
                s.push_str(&format!(
                    "\nfault armed: mutation #{} from now fails with {}\n",
                    f.countdown, f.kind
                ));
            }
            Ok(Out::ok(s))
        }
        SimCommand::Busy { uuid, pid, name } => {
            sim.set_busy(
                &uuid,
                Some(Process {
                    pid,
                    name: name.clone(),
                }),
            )
            .map_err(backend_failure)?;
            done(format!("{uuid} is busy: {name} (pid {pid})"))
        }
        SimCommand::Idle { uuid } => {
            sim.set_busy(&uuid, None).map_err(backend_failure)?;
            done(format!("{uuid} is idle"))
        }
        SimCommand::Fail { nth, error } => {
            sim.inject_fault(nth, &error).map_err(|e| match e {
                carve_simnode::FaultError::State(e) => Failure::failed(e.to_string()),
                other => Failure::bad(other.to_string()),
            })?;
            done(format!(
                "GPU mutation #{nth} from now will fail with {error}"
            ))
        }
        SimCommand::Xid { device, xid, clear } => {
            let observed = carve_apply::observe(&mut sim, &catalog).map_err(Failure::from)?;
            let mut known: Vec<String> = Vec::new();
            for o in &observed {
                known.push(o.info.uuid.clone());
                for gi in &o.instances {
                    known.extend(gi.compute_instances.iter().map(|c| c.uuid.clone()));
                }
            }
            let uuid = match device.parse::<u32>() {
                Ok(i) => observed
                    .iter()
                    .find(|o| o.info.index == i)
                    .map(|o| o.info.uuid.clone())
                    .ok_or_else(|| Failure::bad(format!("the simulated node has no GPU {i}")))?,
                Err(_) if known.contains(&device) => device.clone(),
                Err(_) => {
                    let hint = carve_model::suggest::did_you_mean(
                        &device,
                        known.iter().map(String::as_str),
                    )
                    .first()
                    .map(|s| format!("; did you mean '{}'?", s.name))
                    .unwrap_or_default();
                    return Err(Failure::bad(format!(
                        "the simulated node has no device '{device}'{hint}"
                    )));
                }
            };
            let mut store = open_store(ctx)?;
            let xid = if clear { None } else { xid };
            carve_agent::inject_xid(&mut store, &uuid, xid)
                .map_err(|e| Failure::failed(e.to_string()))?;
            match xid {
                Some(x) => done(format!("XID {x} reported on {uuid}")),
                None => done(format!("{uuid} is healthy again")),
            }
        }
        SimCommand::Reboot => {
            sim.reboot().map_err(backend_failure)?;
            done("rebooted: every GPU instance is gone; Hopper and later GPUs have MIG off".into())
        }
        SimCommand::Reset { gpu } => {
            sim.reset(gpu).map_err(backend_failure)?;
            done(format!("GPU {gpu} reset"))
        }
    }
}
