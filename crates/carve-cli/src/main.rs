//! `carve`: carve NVIDIA GPUs across many tenants. This binary is thin: it parses arguments,
//! reads files, and prints what the library crates compute.

mod agent;
mod backend;
mod catalog;
mod input;
mod node;
mod output;
mod plan;
mod sched;
mod simulate;
mod svg;

use clap::{CommandFactory, Parser, Subcommand};
use output::{Failure, Out};
use std::path::PathBuf;
use std::process::ExitCode;

/// `carve --version`: the crate's version and the commit it was built from (`build.rs`).
const VERSION_WITH_COMMIT: &str =
    concat!(env!("CARGO_PKG_VERSION"), " (", env!("CARVE_COMMIT"), ")");

#[derive(Parser, Debug)]
#[command(
    name = "carve",
    version = VERSION_WITH_COMMIT,
    about = "Carve NVIDIA GPUs across many tenants: plan sharing modes and MIG layouts, apply them with the fewest changes, time-slice CUDA processes, simulate latency.",
    after_help = "Exit status, the same for every command:
  0  success: done, or the answer is yes
  1  the answer is no (nothing was changed): `fit` found no placement, `assert` found
     differences, `plan`/`up` a tenancy that does not fit, `apply` refused (instances in use)
  2  bad input (nothing was changed): unknown names, syntax errors, invalid configs or flags,
     a named file that cannot be read
  3  could not do it: the environment (a busy port, no NVML, no kubeconfig, no shim),
     the driver (a GPU operation failed), I/O
With --json, stdout is one JSON document, also for errors: {\"error\", \"kind\", \"exit\"}."
)]
struct Cli {
    /// Print JSON for scripts instead of text for people.
    #[arg(long, global = true)]
    json: bool,
    /// A catalog file that adds GPU models or replaces them by key (also $CARVE_CATALOG, or
    /// <config dir>/carve/catalog.toml when present).
    #[arg(long, global = true, value_name = "FILE")]
    catalog: Option<PathBuf>,
    /// Where carve keeps its state database (default: the user's data dir; also $CARVE_STATE_DIR).
    #[arg(long, global = true, value_name = "DIR")]
    state: Option<PathBuf>,
    /// Which GPUs to use: nvml (the driver), sim (the simulated node), or auto (NVML when it loads
    /// and finds GPUs, else the simulated node).
    #[arg(long, global = true, value_enum, default_value_t = backend::BackendChoice::Auto)]
    backend: backend::BackendChoice,
    /// The simulated node's GPUs, e.g. 2xH100-80GB or A100-40GB,H100-80GB (default: the stored
    /// node, or 2xH100-80GB). Implies --backend sim.
    #[arg(long, global = true, value_name = "GPUS")]
    sim: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List every MIG-capable GPU model in the catalog.
    Catalog,
    /// Show a GPU model's MIG profiles, placements and vGPU profiles.
    Profiles {
        /// GPU model: key (H100-80GB), NVML name (NVIDIA H100 80GB HBM3) or PCI id (0x2330).
        gpu: String,
    },
    /// Show the profile combinations a GPU model can hold (maximal ones by default).
    Layouts {
        gpu: String,
        /// Every feasible combination, not just the maximal ones.
        #[arg(long)]
        all: bool,
        /// Also draw the layouts as an SVG picture into FILE.
        #[arg(long, value_name = "FILE")]
        svg: Option<PathBuf>,
    },
    /// Place a set of MIG profiles on one GPU, or prove that no placement exists.
    Fit {
        gpu: String,
        /// Profiles to place, each PROFILE or PROFILE=N (e.g. 3g.40gb 1g.10gb=2; N=0 places none).
        #[arg(required = true, value_name = "PROFILE[=N]")]
        profiles: Vec<String>,
        /// Instances already on the GPU, kept where they are: PROFILE@START (e.g. 3g.40gb@4).
        #[arg(long = "used", value_name = "PROFILE@START")]
        used: Vec<String>,
        /// Also draw the result as an SVG picture into FILE.
        #[arg(long, value_name = "FILE")]
        svg: Option<PathBuf>,
    },
    /// Check an NVIDIA mig-parted config file against the catalog.
    Validate {
        /// The mig-parted config (version: v1); - reads standard input.
        file: PathBuf,
        /// The node's GPUs in index order, e.g. 8xH100-80GB or A100-40GB,2xH100-80GB. Without it,
        /// each entry is checked on the models its device-filter names, or on every model that
        /// has its profiles.
        #[arg(long, value_name = "GPUS")]
        gpus: Option<String>,
    },
    /// Plan a tenancy: a sharing mode per tenant with its reason, MIG slices packed onto the
    /// fewest GPUs, and the files to use (plan.json, report.md, layout.svg, per-node configs).
    Plan {
        /// The tenancy file (YAML: fleet and tenants); - reads standard input.
        file: PathBuf,
        /// Write plan.json and the rendered files into DIR.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// When not everything fits, still write (and exit 0 with) the partial plan.
        #[arg(long)]
        allow_partial: bool,
    },
    /// Make the GPUs match a mig-parted config or a carve plan with the fewest changes;
    /// crash-safe.
    Apply {
        /// A mig-parted config (version: v1) or a carve plan (plan.json); - reads standard input.
        #[arg(value_name = "FILE", required_unless_present = "boot")]
        file: Option<PathBuf>,
        /// The config to apply (may be left out when the file has only one).
        #[arg(short = 'c', long = "config", value_name = "NAME")]
        config: Option<String>,
        /// With a plan: the node to apply (default: the plan's only node, or the one named like
        /// this machine's hostname).
        #[arg(long, value_name = "NAME")]
        node: Option<String>,
        /// Re-apply the last desired state (run at boot: partitions do not survive a reboot).
        #[arg(long, conflicts_with_all = ["file", "config", "node"])]
        boot: bool,
        /// Print the operations and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Go ahead even when instances to be destroyed are in use (the driver still refuses to
        /// destroy an instance while processes run on it).
        #[arg(long)]
        force: bool,
    },
    /// Show the GPUs, their MIG mode and instances.
    Status,
    /// Exit 0 if the GPUs match a config, a plan (or the last applied state), 1 with the
    /// differences.
    Assert {
        /// A mig-parted config or a carve plan (plan.json).
        #[arg(value_name = "FILE")]
        file: Option<PathBuf>,
        #[arg(short = 'c', long = "config", value_name = "NAME")]
        config: Option<String>,
        /// With a plan: the node to check (as for apply).
        #[arg(long, value_name = "NAME", requires = "file")]
        node: Option<String>,
    },
    /// Print the current state as a mig-parted config.
    Export {
        /// The config name to write.
        #[arg(long, default_value = "current")]
        label: String,
    },
    /// Simulate each tenant's latency under every sharing mode (as planned, time-sliced, MIG).
    Simulate {
        /// The tenancy file (tenants may carry a `load:`; defaults by workload otherwise).
        file: PathBuf,
        /// A plan to simulate (default: plan the tenancy now).
        #[arg(long, value_name = "PLAN")]
        plan: Option<PathBuf>,
        /// Simulated time: 90s, 30m, 1h.
        #[arg(long, default_value = "10m")]
        duration: String,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Write simulation.json and latency-cdf.svg into DIR.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// The time-slice scheduler for CUDA processes: `serve` runs it, `status` shows it.
    #[command(subcommand)]
    Sched(sched::SchedCommand),
    /// Run a command as a tenant of a time-slice scheduler (the shim is preloaded).
    Run {
        /// The tenant to run as; the scheduler checks the claim (token, user or cgroup).
        #[arg(long)]
        tenant: String,
        #[arg(long, value_name = "PATH", default_value = carve_sched_proto::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// File holding the tenant's token (given to the tenant by the agent).
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// When the scheduler cannot be reached: run unscheduled (open) or refuse work (closed).
        #[arg(long, default_value = carve_sched_proto::FAIL_OPEN,
              value_parser = [carve_sched_proto::FAIL_OPEN, carve_sched_proto::FAIL_CLOSED])]
        fail: String,
        /// The command and its arguments.
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Work the simulated node: busy instances, faults, XIDs, reboots.
    #[command(subcommand)]
    Sim(node::SimCommand),
    /// The node agent: keep the GPUs as planned (re-applied at start), run the schedulers of
    /// time-sliced GPUs, and serve the kubelet device plugins, CDI spec, node labels, metrics
    /// and HTTP API.
    Agent {
        /// A carve plan (plan.json) or a mig-parted config; without it, the desired state the
        /// last `carve apply` recorded.
        #[arg(value_name = "FILE")]
        file: Option<PathBuf>,
        /// The config of a mig-parted file.
        #[arg(short = 'c', long = "config", value_name = "NAME")]
        config: Option<String>,
        /// The node of a plan (default: its only node, or the one named like this machine).
        #[arg(long, value_name = "NAME")]
        node: Option<String>,
        #[command(flatten)]
        agent: agent::AgentArgs,
    },
    /// Plan a tenancy, apply this node's part and run the agent for it: on a simulated node of
    /// the planned GPUs when this machine has none. Prints where everything is; Ctrl-C stops.
    Up {
        /// The tenancy file.
        #[arg(value_name = "TENANCY", default_value = "examples/tenancy.yaml")]
        tenancy: PathBuf,
        /// The node of the fleet to be (default: the one named like this machine, else the
        /// first Kubernetes node with GPUs in use).
        #[arg(long, value_name = "NAME")]
        node: Option<String>,
        /// Where the plan, sockets, CDI spec, labels and state go.
        #[arg(long, value_name = "DIR", default_value = "carve-up")]
        dir: PathBuf,
        #[command(flatten)]
        agent: agent::AgentArgs,
    },
    /// Print a shell completion script: `carve completions bash > ~/.local/share/bash-completion/completions/carve`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `carve man > carve.1 && man ./carve.1`.
    Man,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help and version to stdout with success, usage errors with status 2.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let json = cli.json;
    match run(cli) {
        Ok(out) => {
            output::emit(&out.text);
            ExitCode::from(out.code)
        }
        Err(f) => {
            output::report_failure(&f, json);
            ExitCode::from(f.code())
        }
    }
}

/// Runs the command: each module parses its input, calls the library crates and prints.
fn run(cli: Cli) -> Result<Out, Failure> {
    let json = cli.json;
    // About carve itself: no catalog, no state.
    match cli.command {
        Command::Completions { shell } => return Ok(completions(shell, json)),
        Command::Man => return man(json),
        _ => {}
    }
    let (catalog, catalog_note) = input::load_catalog(cli.catalog.as_deref())?;
    let ctx = backend::Ctx {
        state: cli.state.clone(),
        backend: cli.backend,
        sim: cli.sim.clone(),
        json,
    };
    match cli.command {
        Command::Apply {
            file,
            config,
            node,
            boot,
            dry_run,
            force,
        } => node::apply_cmd(
            &ctx,
            catalog,
            file.as_deref(),
            config.as_deref(),
            node.as_deref(),
            boot,
            dry_run,
            force,
        ),
        Command::Plan {
            file,
            out,
            allow_partial,
        } => plan::plan_cmd(&catalog, &file, out.as_deref(), allow_partial, json),
        Command::Sched(cmd) => sched::sched_cmd(cmd, json),
        Command::Simulate {
            file,
            plan,
            duration,
            seed,
            out,
        } => simulate::simulate_cmd(
            &catalog,
            &file,
            plan.as_deref(),
            &duration,
            seed,
            out.as_deref(),
            json,
        ),
        Command::Run {
            tenant,
            socket,
            token_file,
            fail,
            command,
        } => sched::run_cmd(&tenant, &socket, token_file.as_deref(), &fail, &command),
        Command::Status => node::status_cmd(&ctx, catalog),
        Command::Assert { file, config, node } => node::assert_cmd(
            &ctx,
            catalog,
            file.as_deref(),
            config.as_deref(),
            node.as_deref(),
        ),
        Command::Export { label } => node::export_cmd(&ctx, catalog, &label),
        Command::Sim(cmd) => node::sim_cmd(&ctx, catalog, cmd),
        Command::Agent {
            file,
            config,
            node,
            agent,
        } => agent::agent_cmd(
            &ctx,
            catalog,
            file.as_deref(),
            config.as_deref(),
            node.as_deref(),
            &agent,
        ),
        Command::Up {
            tenancy,
            node,
            dir,
            agent,
        } => agent::up_cmd(&ctx, catalog, &tenancy, node.as_deref(), &dir, &agent),
        Command::Catalog => catalog::catalog_cmd(&catalog, catalog_note, json),
        Command::Profiles { gpu } => catalog::profiles_cmd(catalog.gpu(&gpu)?, &catalog, json),
        Command::Layouts { gpu, all, svg } => {
            catalog::layouts_cmd(catalog.gpu(&gpu)?, all, svg, json)
        }
        Command::Fit {
            gpu,
            profiles,
            used,
            svg,
        } => catalog::fit_cmd(catalog.gpu(&gpu)?, &profiles, &used, svg, json),
        Command::Validate { file, gpus } => {
            catalog::validate_cmd(&catalog, &file, gpus.as_deref(), json)
        }
        Command::Completions { shell } => Ok(completions(shell, json)),
        Command::Man => man(json),
    }
}

/// `carve completions SHELL`: the completion script.
fn completions(shell: clap_complete::Shell, json: bool) -> Out {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "carve", &mut script);
    let script = String::from_utf8_lossy(&script).into_owned();
    if json {
        Out::json(
            &serde_json::json!({ "shell": shell.to_string(), "script": script }),
            0,
        )
    } else {
        Out::ok(script)
    }
}

/// `carve man`: the manual page, in roff.
fn man(json: bool) -> Result<Out, Failure> {
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut page)
        .map_err(|e| Failure::failed(format!("cannot render the manual page: {e}")))?;
    let page = String::from_utf8_lossy(&page).into_owned();
    Ok(if json {
        Out::json(&serde_json::json!({ "man": page }), 0)
    } else {
        Out::ok(page)
    })
}
