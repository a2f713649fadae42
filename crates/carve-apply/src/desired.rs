//! What the GPUs should look like: a config of a mig-parted file, this node's part of a carve
//! plan, what the last apply recorded, or nothing (leave them). [`Desired::read`] tells the file
//! formats apart, in one place; [`Desired::targets`] turns any of them into placed targets for
//! the GPUs observed now, checking everything first.

use crate::{targets_from_migparted, targets_from_plan, ApplyError, GpuTarget, Observed};
use carve_migparted::{NamedConfig, Severity};
use carve_model::Catalog;
use carve_plan::plan::{PlanError, Sniff};
use carve_plan::Plan;
use carve_state::Store;

/// The state-store keys of the plan the node follows (set by every apply of a plan, removed by
/// an apply of a mig-parted config, in the same transaction as the desired state).
pub(crate) const PLAN_KEY: &str = "plan";
pub(crate) const PLAN_NODE_KEY: &str = "plan-node";

/// The plan a node follows: the whole plan, and which of its nodes this one is.
#[derive(Debug, Clone, PartialEq)]
pub struct NodePlan {
    pub plan: Plan,
    pub node: String,
}

/// What the GPUs should look like.
#[derive(Debug, Clone)]
pub enum Desired {
    /// This node's part of a carve plan; `source` names where it came from (a file, the API).
    Plan {
        plan: Box<Plan>,
        node: String,
        source: String,
    },
    /// One config of a mig-parted file.
    MigParted {
        config: Box<NamedConfig>,
        source: String,
    },
    /// The desired state the last apply recorded (re-applied at boot), with its plan if it had
    /// one.
    Recorded,
    /// Leave the GPUs as they are.
    AsIs,
}

impl Desired {
    /// Reads a mig-parted config or a carve plan from `text` (named `source` in messages) and
    /// picks its config (`config`, `-c`) or its node (`node`, `--node`; else the plan's only node
    /// or the one named like this machine). A carve plan is a JSON object with `version` and
    /// `gpus`; anything else is read as mig-parted YAML (whose flow style may also start with
    /// `{`). Every error is bad input ([`ApplyError::Input`]) naming `source`, and line and column
    /// where there are some.
    pub fn read(
        text: &str,
        source: &str,
        config: Option<&str>,
        node: Option<&str>,
    ) -> Result<Desired, ApplyError> {
        let bad = |m: String| ApplyError::Input(m);
        let (plan, yaml) = match read_plan(text, source)? {
            Format::Plan(plan) => (Some(plan), None),
            Format::MigParted(parsed) => (None, parsed),
        };
        if let Some(plan) = plan {
            if config.is_some() {
                return Err(bad(format!(
                    "{source} is a carve plan: -c/--config picks a config of a mig-parted file (use --node to pick a node of the plan)"
                )));
            }
            let host = if node.is_none() {
                crate::hostname()
            } else {
                None
            };
            let chosen = crate::plan_node(&plan, node, host.as_deref())
                .map_err(|e| bad(format!("{source}: {e}")))?
                .to_string();
            return Ok(Desired::Plan {
                plan: Box::new(plan),
                node: chosen,
                source: source.to_string(),
            });
        }
        if node.is_some() {
            return Err(bad(format!(
                "{source} is a mig-parted config: --node picks a node of a carve plan (plan.json)"
            )));
        }
        let (file, diags) = yaml
            .unwrap_or_else(|| carve_migparted::parse(text))
            .map_err(|d| {
                bad(format!(
                    "{source}:{}",
                    d.first().map(|d| d.to_string()).unwrap_or_default()
                ))
            })?;
        if let Some(d) = diags.iter().find(|d| d.severity == Severity::Error) {
            return Err(bad(format!("{source}:{d}")));
        }
        let chosen = match config {
            Some(c) => file.resolve(c).map_err(|m| bad(format!("{source}: {m}")))?,
            None if file.configs.len() == 1 => &file.configs[0],
            None => {
                let names: Vec<&str> = file.configs.iter().map(|c| c.name.as_str()).collect();
                return Err(bad(format!(
                    "{source} has {} configs; choose one with -c ({})",
                    names.len(),
                    names.join(", ")
                )));
            }
        };
        Ok(Desired::MigParted {
            config: Box::new(chosen.clone()),
            source: source.to_string(),
        })
    }

    /// In words, for progress lines: `config 'balanced'`, `plan plan.json (node node-a)`.
    pub fn describe(&self) -> String {
        match self {
            Desired::Plan { node, source, .. } => format!("plan {source} (node {node})"),
            Desired::MigParted { config, .. } => format!("config '{}'", config.name),
            Desired::Recorded => "the last desired state".into(),
            Desired::AsIs => "the GPUs as they are".into(),
        }
    }

    /// Placed targets for the GPUs observed now. Everything is checked here, before any GPU is
    /// touched: a mig-parted config against the node's GPU models (every error with its line and
    /// column), a plan against the node's GPU indices, models and layouts.
    pub fn targets(
        &self,
        catalog: &Catalog,
        store: &Store,
        observed: &[Observed],
    ) -> Result<Vec<GpuTarget>, ApplyError> {
        match self {
            Desired::MigParted { config, source } => {
                check_on_node(catalog, config, source, observed)?;
                targets_from_migparted(catalog, config, observed)
            }
            Desired::Plan { plan, node, source } => {
                targets_from_plan(plan, node, observed, catalog).map_err(|e| match e {
                    ApplyError::Input(m) => ApplyError::Input(format!("{source}: {m}")),
                    other => other,
                })
            }
            Desired::Recorded => crate::desired_targets(store, observed),
            Desired::AsIs => Ok(Vec::new()),
        }
    }

    /// The plan the node follows once this desired state is applied, and its node: a given plan;
    /// the recorded one for [`Desired::Recorded`]; none for a mig-parted config or as-is.
    pub fn plan(&self, store: &Store) -> Result<Option<NodePlan>, ApplyError> {
        match self {
            Desired::Plan { plan, node, .. } => Ok(Some(NodePlan {
                plan: (**plan).clone(),
                node: node.clone(),
            })),
            Desired::Recorded => recorded_plan(store),
            Desired::MigParted { .. } | Desired::AsIs => Ok(None),
        }
    }

    /// What an apply of this desired state records beside the targets: the plan and its node
    /// (a plan), their removal (a mig-parted config), or nothing (recorded, as-is).
    pub(crate) fn record(&self) -> Vec<(&'static str, Option<serde_json::Value>)> {
        match self {
            Desired::Plan { plan, node, .. } => vec![
                (PLAN_KEY, serde_json::to_value(plan).ok()),
                (PLAN_NODE_KEY, Some(serde_json::Value::from(node.as_str()))),
            ],
            Desired::MigParted { .. } => vec![(PLAN_KEY, None), (PLAN_NODE_KEY, None)],
            Desired::Recorded | Desired::AsIs => Vec::new(),
        }
    }
}

/// The plan the last apply recorded, and its node.
pub fn recorded_plan(store: &Store) -> Result<Option<NodePlan>, ApplyError> {
    let plan: Option<Plan> = store.get(PLAN_KEY)?;
    let node: Option<String> = store.get(PLAN_NODE_KEY)?;
    Ok(plan.zip(node).map(|(plan, node)| NodePlan { plan, node }))
}

/// A mig-parted file as `carve_migparted::parse` reads it.
type Parsed = Result<
    (
        carve_migparted::ConfigFile,
        Vec<carve_migparted::Diagnostic>,
    ),
    Vec<carve_migparted::Diagnostic>,
>;

/// Which format a file is in, decided once.
enum Format {
    Plan(Plan),
    /// Mig-parted YAML, already parsed when deciding needed it.
    MigParted(Option<Parsed>),
}

/// Tells a carve plan from mig-parted YAML ([`Plan::sniff`]), reading the text once on every
/// successful path: YAML in flow style starts with `{` too, so text that is not JSON but is valid
/// mig-parted YAML is handed over already parsed; if it is neither, the JSON error is reported.
fn read_plan(text: &str, source: &str) -> Result<Format, ApplyError> {
    let located = |e: PlanError| {
        // Syntax and schema errors come as "line:col: ...", others without a position.
        let sep = if e.pos().is_some() { "" } else { " " };
        ApplyError::Input(format!("{source}:{sep}{e}"))
    };
    match Plan::sniff(text) {
        Sniff::Plan(plan) => plan.map(Format::Plan).map_err(located),
        Sniff::OtherJson | Sniff::NotJson(None) => Ok(Format::MigParted(None)),
        Sniff::NotJson(Some(json_error)) => {
            let yaml = carve_migparted::parse(text);
            let yaml_ok = yaml
                .as_ref()
                .is_ok_and(|(_, d)| !d.iter().any(|d| d.severity == Severity::Error));
            if yaml_ok {
                Ok(Format::MigParted(Some(yaml)))
            } else {
                Err(located(json_error))
            }
        }
    }
}

/// Checks a config against the node's GPUs (by index); any error is bad input.
fn check_on_node(
    catalog: &Catalog,
    cfg: &NamedConfig,
    source: &str,
    observed: &[Observed],
) -> Result<(), ApplyError> {
    let mut models = Vec::new();
    for o in observed {
        match o.model.as_deref().and_then(|k| catalog.gpu(k).ok()) {
            Some(m) => models.push(m),
            // Unknown models are reported when an entry selects them.
            None => return Ok(()),
        }
    }
    let one = carve_migparted::ConfigFile {
        configs: vec![cfg.clone()],
    };
    let report = carve_migparted::check(&one, catalog, Some(&models));
    match report
        .diagnostics
        .iter()
        .find(|d| d.severity == Severity::Error)
    {
        Some(d) => Err(ApplyError::Input(format!("{source}:{d}"))),
        None => Ok(()),
    }
}
