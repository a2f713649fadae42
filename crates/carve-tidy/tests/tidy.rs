//! The tidy test: carve's conventions, checked on every `cargo test --workspace` by plain file
//! scanning (see `src/lib.rs` for the lexer). One `#[test]` per rule; a failure names the file and
//! line, what is wrong and what to do.
//!
//! Every rule keeps its table in one place below. Entries marked TEMPORARY stand for work under
//! way on other branches; each rule fails when one of its temporary entries is no longer needed,
//! so that the entry is deleted when that work is merged, not forgotten.

use carve_tidy::{
    contains_word, definitions, matching, DefKind, DepKind, Kind, Source, Token, Workspace,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

const THIS_FILE: &str = "crates/carve-tidy/tests/tidy.rs";

fn ws() -> &'static Workspace {
    static WS: OnceLock<Workspace> = OnceLock::new();
    WS.get_or_init(Workspace::load)
}

/// Fails with every problem found, then what to do about them.
fn report(rule: &str, fix: &str, problems: Vec<String>) {
    if problems.is_empty() {
        return;
    }
    panic!(
        "tidy: {rule}\n\n{}\n\nWhat to do: {fix}\n",
        problems
            .iter()
            .map(|p| format!("  {p}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The allowances of a rule: (file or crate, what, why). Records which were used, so that the
/// rule can fail on the ones no longer needed.
struct Allowances {
    table: &'static str,
    entries: &'static [(&'static str, &'static str, &'static str)],
    used: BTreeSet<usize>,
}

impl Allowances {
    fn new(
        table: &'static str,
        entries: &'static [(&'static str, &'static str, &'static str)],
    ) -> Self {
        Allowances {
            table,
            entries,
            used: BTreeSet::new(),
        }
    }

    /// Whether (`place`, `what`) is allowed; remembers it.
    fn allows(&mut self, place: &str, what: &str) -> bool {
        match self
            .entries
            .iter()
            .position(|(p, w, _)| *p == place && *w == what)
        {
            Some(i) => {
                self.used.insert(i);
                true
            }
            None => false,
        }
    }

    /// A problem for each entry that allowed nothing.
    fn stale(&self) -> Vec<String> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.used.contains(i))
            .map(|(_, (p, w, _))| {
                format!(
                    "{THIS_FILE}: {}: the allowance ({p:?}, {w:?}) is no longer needed: delete it",
                    self.table
                )
            })
            .collect()
    }
}

/// The Rust files of a crate under `dirs`, lexed.
fn sources(krate: &str, dirs: &[&str]) -> Vec<Source> {
    let c = &ws().crates[krate];
    ws().rust_files(c, dirs)
        .iter()
        .map(|f| ws().source(f))
        .collect()
}

/// Every Rust file of every crate (sources, tests, examples, benches, build scripts).
fn all_sources() -> &'static Vec<(String, Source)> {
    static ALL: OnceLock<Vec<(String, Source)>> = OnceLock::new();
    ALL.get_or_init(|| {
        let mut out = Vec::new();
        for name in ws().crates.keys() {
            for s in sources(name, &["src", "tests", "examples", "benches", "build.rs"]) {
                out.push((name.clone(), s));
            }
        }
        out
    })
}

/// `t[k]` and `t[k + 1]` are `::`.
fn path_sep(t: &[Token], k: usize) -> bool {
    t.get(k).is_some_and(|a| a.is_punct(':')) && t.get(k + 1).is_some_and(|b| b.is_punct(':'))
}

/// The names right after `t[k]::`: one identifier, or the first-level names of a `{...}` group.
fn after_path(t: &[Token], k: usize) -> Vec<&str> {
    if !path_sep(t, k + 1) {
        return Vec::new();
    }
    match t.get(k + 3) {
        Some(n) if n.kind == Kind::Ident => vec![n.text.as_str()],
        Some(n) if n.is_punct('{') => {
            let end = matching(t, k + 3);
            let mut out = Vec::new();
            let mut depth = 0;
            for j in k + 3..end {
                match t[j].text.as_str() {
                    "{" if t[j].kind == Kind::Punct => depth += 1,
                    "}" if t[j].kind == Kind::Punct => depth -= 1,
                    _ if depth == 1
                        && t[j].kind == Kind::Ident
                        && (t[j - 1].is_punct('{') || t[j - 1].is_punct(',')) =>
                    {
                        out.push(t[j].text.as_str())
                    }
                    _ => {}
                }
            }
            out
        }
        _ => Vec::new(),
    }
}

// =============================================================================================
// a. Pure code does no I/O

/// Crates whose `src/` is pure: no I/O, no clock, no environment, no threads, no printing
/// (ARCHITECTURE.md: "Text comes in, values go out"). Their `#[cfg(test)]` code may do anything.
const PURE_CRATES: &[&str] = &[
    "carve-model",
    "carve-migparted",
    "carve-timeslice",
    "carve-plan",
    "carve-simulate",
];

/// Pure files in crates that are not pure as a whole: (file, why).
#[rustfmt::skip]
const PURE_FILES: &[(&str, &str)] = &[
    ("crates/carve-backend/src/engine.rs", "ARCHITECTURE.md: the simulated GPU engine is pure, no I/O, no clock"),
    ("crates/carve-agent/src/inventory.rs", "ARCHITECTURE.md: the agent's pure parts"),
    ("crates/carve-agent/src/allocate.rs", "ARCHITECTURE.md: the agent's pure parts"),
    ("crates/carve-agent/src/labels.rs", "ARCHITECTURE.md: the agent's pure parts"),
];

/// `std::<module>` paths pure code may not name.
const IMPURE_STD_MODULES: &[&str] = &["fs", "net", "process", "env", "thread"];
/// Types pure code may not name (clocks).
const IMPURE_TYPES: &[&str] = &["Instant", "SystemTime"];
/// Macros pure code may not call (printing).
const IMPURE_MACROS: &[&str] = &["println", "eprintln", "print", "eprint", "dbg"];
/// `io::<function>`: the process's standard streams.
const IMPURE_IO: &[&str] = &["stdin", "stdout", "stderr"];

/// Exceptions: (file, what, why).
#[rustfmt::skip]
const PURE_ALLOWANCES: &[(&str, &str, &str)] = &[
];

/// What in `src` pure code may not use: (line, what).
fn impure_uses(src: &Source) -> Vec<(usize, String)> {
    let t = &src.tokens;
    let mut out = Vec::new();
    for (k, tok) in t.iter().enumerate() {
        if src.in_test[k] || tok.kind != Kind::Ident {
            continue;
        }
        let name = tok.text.as_str();
        if name == "std" {
            for m in after_path(t, k) {
                if IMPURE_STD_MODULES.contains(&m) {
                    out.push((tok.line, format!("std::{m}")));
                }
            }
        } else if name == "io" {
            for f in after_path(t, k) {
                if IMPURE_IO.contains(&f) {
                    out.push((tok.line, format!("io::{f}")));
                }
            }
        } else if IMPURE_TYPES.contains(&name) {
            out.push((tok.line, name.to_string()));
        } else if IMPURE_MACROS.contains(&name) && t.get(k + 1).is_some_and(|n| n.is_punct('!')) {
            out.push((tok.line, format!("{name}!")));
        }
    }
    out
}

#[test]
fn pure_code_does_no_io() {
    let mut allow = Allowances::new("PURE_ALLOWANCES", PURE_ALLOWANCES);
    let mut problems = Vec::new();
    let mut files: Vec<(String, String)> = Vec::new();
    for krate in PURE_CRATES {
        if !ws().crates.contains_key(*krate) {
            problems.push(format!(
                "{THIS_FILE}: PURE_CRATES names {krate}, which is not a workspace crate"
            ));
            continue;
        }
        let srcs = sources(krate, &["src"]);
        let test_files: BTreeSet<String> = srcs.iter().flat_map(|s| s.test_mod_files()).collect();
        for s in srcs {
            if !test_files.contains(&s.rel) {
                files.push((s.rel.clone(), format!("{krate} is a pure crate")));
            }
        }
    }
    for (f, why) in PURE_FILES {
        if ws().root.join(f).is_file() {
            files.push((f.to_string(), why.to_string()));
        } else {
            problems.push(format!(
                "{THIS_FILE}: PURE_FILES names {f}, which does not exist"
            ));
        }
    }
    for (f, why) in files {
        let src = ws().source(&f);
        for (line, what) in impure_uses(&src) {
            if !allow.allows(&f, &what) {
                problems.push(format!("{f}:{line}: `{what}` in pure code ({why})"));
            }
        }
    }
    problems.extend(allow.stale());
    report(
        "pure code does no I/O: no std::fs/net/process/env/thread, no Instant/SystemTime, no \
         printing, no standard streams",
        "pass what the code needs in from the caller (text, values, the time as an argument), \
         return what it finds, and let the I/O crates (the CLI, the agent, the daemon) do the \
         rest; code only tests need goes in a #[cfg(test)] module",
        problems,
    );
}

// =============================================================================================
// b. Crate floors and dependency rules

struct Floor {
    name: &'static str,
    /// A crate's normal and build dependencies on workspace crates point to lower ranks only...
    rank: u8,
    /// ...or, where this is true, to crates of the same floor.
    same_floor: bool,
    crates: &'static [&'static str],
}

/// Every workspace crate, by floor, lowest first. A new crate must be placed here.
const FLOORS: &[Floor] = &[
    // Protocols and ABIs: the names and numbers both ends of a wire or a C ABI share. Lowest, so
    // that pure crates (the simulator reads the daemon's timing figures) may use them.
    Floor {
        name: "protocols/ABI",
        rank: 0,
        same_floor: false,
        crates: &["carve-sched-proto", "carve-cuda-abi"],
    },
    // The pure domain: no I/O (rule a); they build on one another (the model under all).
    Floor {
        name: "pure domain",
        rank: 1,
        same_floor: true,
        crates: &[
            "carve-model",
            "carve-migparted",
            "carve-timeslice",
            "carve-plan",
            "carve-simulate",
        ],
    },
    // Backends: the GPU interface (and its pure engine), the state database, the simulated node
    // on top of both, NVML.
    Floor {
        name: "backends",
        rank: 2,
        same_floor: true,
        crates: &[
            "carve-backend",
            "carve-state",
            "carve-simnode",
            "carve-nvml",
        ],
    },
    // Engines: reconciliation and the time-slice daemon, independent of each other.
    Floor {
        name: "engines",
        rank: 3,
        same_floor: false,
        crates: &["carve-apply", "carve-sched"],
    },
    // The node agent, which runs the engines.
    Floor {
        name: "agent",
        rank: 4,
        same_floor: false,
        crates: &["carve-agent"],
    },
    // The CLI: a thin shell over everything below.
    Floor {
        name: "CLI",
        rank: 5,
        same_floor: false,
        crates: &["carve-cli"],
    },
    // The preloaded shim, in every CUDA process: see ONLY_DEPS.
    Floor {
        name: "shim",
        rank: 6,
        same_floor: false,
        crates: &["carve-shim"],
    },
    // Test stand-ins and tools: nothing names them but [dev-dependencies].
    Floor {
        name: "test stand-ins and tools",
        rank: 6,
        same_floor: false,
        crates: &[
            "carve-fake-cuda",
            "carve-fake-nvml",
            "carve-workload",
            "carve-test-support",
            "carve-tidy",
        ],
    },
];

/// Crates of FLOORS that work under way is creating (TEMPORARY entries): the floor is decided
/// before the crate exists. Delete each name when its crate is merged.
const NOT_YET_CREATED: &[&str] = &[];

/// Crates whose workspace dependencies (normal and build) are limited to a list: (crate,
/// allowed, why).
const ONLY_DEPS: &[(&str, &[&str], &str)] = &[
    (
        "carve-model",
        &[],
        "ARCHITECTURE.md: nothing in carve-model depends on the later parts",
    ),
    (
        "carve-shim",
        &["carve-sched-proto", "carve-cuda-abi"],
        "the shim is preloaded into every CUDA process: it takes the scheduler's protocol and \
         the driver's C ABI, nothing else of carve",
    ),
];

/// Exceptions to the floors and ONLY_DEPS: (crate, dependency, why).
#[rustfmt::skip]
const DEP_ALLOWANCES: &[(&str, &str, &str)] = &[
];

/// Crates that do I/O, run processes or threads, read clocks or the environment: no crate of
/// the pure floor depends on one, directly or through workspace crates.
const IO_CRATES: &[&str] = &[
    "tokio",
    "tokio-stream",
    "mio",
    "rusqlite",
    "libc",
    "nix",
    "libloading",
    "nvml-wrapper",
    "nvml-wrapper-sys",
    "tonic",
    "axum",
    "hyper",
    "hyper-util",
    "reqwest",
    "kube",
    "directories",
    "tempfile",
    "getrandom",
    "socket2",
    "signal-hook",
    "tracing",
    "tracing-subscriber",
    "log",
    "env_logger",
];

fn floor_of(krate: &str) -> Option<&'static Floor> {
    FLOORS.iter().find(|f| f.crates.contains(&krate))
}

#[test]
fn every_crate_has_a_floor() {
    let mut problems = Vec::new();
    for name in ws().crates.keys() {
        let n = FLOORS
            .iter()
            .filter(|f| f.crates.contains(&name.as_str()))
            .count();
        if n != 1 {
            problems.push(format!(
                "{}/Cargo.toml: {name} is in {n} floors of FLOORS ({THIS_FILE}); put it in exactly one",
                ws().crates[name].rel
            ));
        }
    }
    for f in FLOORS {
        for c in f.crates {
            let exists = ws().crates.contains_key(*c);
            let pending = NOT_YET_CREATED.contains(c);
            if !exists && !pending {
                problems.push(format!(
                    "{THIS_FILE}: FLOORS ({}) names {c}, which is not a workspace crate: remove it",
                    f.name
                ));
            }
            if exists && pending {
                problems.push(format!(
                    "{THIS_FILE}: {c} exists now: delete it from NOT_YET_CREATED"
                ));
            }
        }
    }
    report(
        "every workspace crate is placed on one floor",
        "add the crate to the floor of FLOORS it belongs to (with a comment if it needs one)",
        problems,
    );
}

#[test]
fn dependencies_point_down_the_floors() {
    let mut allow = Allowances::new("DEP_ALLOWANCES", DEP_ALLOWANCES);
    let mut problems = Vec::new();
    for c in ws().crates.values() {
        let Some(floor) = floor_of(&c.name) else {
            continue; // every_crate_has_a_floor says so.
        };
        for d in ws().deps(c) {
            if d.kind == DepKind::Dev || !ws().crates.contains_key(&d.package) {
                continue;
            }
            let Some(to) = floor_of(&d.package) else {
                continue;
            };
            let mut why = None;
            let same = std::ptr::eq(floor, to);
            if !(to.rank < floor.rank || (same && floor.same_floor)) {
                why = Some(format!(
                    "{} ({}) may not depend on {} ({}){}",
                    c.name,
                    floor.name,
                    d.package,
                    to.name,
                    if to.name == "test stand-ins and tools" {
                        ": name it under [dev-dependencies] only"
                    } else {
                        ": dependencies point to lower floors"
                    }
                ));
            }
            if let Some((_, only, reason)) = ONLY_DEPS.iter().find(|(n, _, _)| *n == c.name) {
                if !only.contains(&d.package.as_str()) {
                    why = Some(format!(
                        "{} may depend only on {only:?} among workspace crates ({reason})",
                        c.name
                    ));
                }
            }
            if let Some(why) = why {
                if !allow.allows(&c.name, &d.package) {
                    problems.push(format!("{}: [{}] {}: {why}", d.at, d.kind.table(), d.key));
                }
            }
        }
    }
    problems.extend(allow.stale());
    report(
        "a crate's normal and build dependencies on workspace crates point down the floors of \
         FLOORS (and keep to ONLY_DEPS)",
        "move the code you need to the lower crate (or to a new one on the right floor), or, for \
         test support and stand-ins, use [dev-dependencies]",
        problems,
    );
}

#[test]
fn pure_crates_depend_on_no_io_crate() {
    let pure: Vec<&str> = FLOORS
        .iter()
        .filter(|f| f.name == "pure domain")
        .flat_map(|f| f.crates.iter().copied())
        .collect();
    let mut problems = Vec::new();
    for p in pure.iter().filter(|p| ws().crates.contains_key(**p)) {
        // Through workspace crates: the path from `p` to each one reached, and where `p` names
        // the first step.
        // (path, where `p` names the first step, the features the step turns on, defaults on).
        let mut seen = BTreeSet::new();
        type Step = (Vec<String>, Option<String>, Vec<String>, bool);
        let mut todo: Vec<Step> = vec![(vec![p.to_string()], None, Vec::new(), true)];
        while let Some((path, first_at, features, default)) = todo.pop() {
            let here = path.last().unwrap().clone();
            if !seen.insert((here.clone(), features.clone(), default)) {
                continue;
            }
            let krate = &ws().crates[&here];
            // Optional dependencies count only when a feature the dependent asks for turns them on.
            let enabled = ws().enabled_optional(krate, &features, default);
            for d in ws().deps(krate) {
                if d.kind != DepKind::Normal || (d.optional && !enabled.contains(&d.key)) {
                    continue;
                }
                let at = first_at.clone().unwrap_or_else(|| d.at.clone());
                if ws().crates.contains_key(&d.package) {
                    let mut next = path.clone();
                    next.push(d.package.clone());
                    todo.push((next, Some(at), d.features.clone(), d.default_features));
                } else if IO_CRATES.contains(&d.package.as_str()) {
                    problems.push(format!(
                        "{at}: {p} (a pure crate) depends on {}: {}",
                        d.package,
                        path.iter()
                            .chain([&d.package])
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(" -> ")
                    ));
                }
            }
        }
    }
    problems.sort();
    problems.dedup();
    report(
        "pure crates depend on no I/O crate (IO_CRATES), not even through workspace crates",
        "keep the I/O in the crates above the pure floor; pass data in",
        problems,
    );
}

// =============================================================================================
// c. Unused dependencies

/// Exceptions: (crate, dependency key, why).
#[rustfmt::skip]
const UNUSED_ALLOWANCES: &[(&str, &str, &str)] = &[
    ("carve-agent", "prost", "used by the gRPC code build.rs generates (OUT_DIR), which the scan does not read"),
    ("carve-agent", "tonic-prost", "used by the gRPC code build.rs generates (OUT_DIR), which the scan does not read"),
];

#[test]
fn every_dependency_is_used() {
    let mut allow = Allowances::new("UNUSED_ALLOWANCES", UNUSED_ALLOWANCES);
    let mut problems = Vec::new();
    let mut ws_used = BTreeSet::new();
    for c in ws().crates.values() {
        let idents = |dirs: &[&str]| -> BTreeSet<String> {
            sources(&c.name, dirs)
                .into_iter()
                .flat_map(|s| s.tokens)
                .filter(|t| t.kind == Kind::Ident)
                .map(|t| t.text)
                .collect()
        };
        let normal = idents(&["src", "build.rs"]);
        let dev = idents(&["src", "tests", "examples", "benches"]);
        let build = idents(&["build.rs"]);
        for d in ws().deps(c) {
            if d.workspace {
                ws_used.insert(d.key.clone());
            }
            let (seen, place) = match d.kind {
                DepKind::Normal => (&normal, "src/ or build.rs"),
                DepKind::Dev => (&dev, "tests/, examples/, benches/ or src/"),
                DepKind::Build => (&build, "build.rs"),
            };
            let names = [d.key.replace('-', "_"), d.package.replace('-', "_")];
            if names.iter().any(|n| seen.contains(n)) {
                continue;
            }
            if !allow.allows(&c.name, &d.key) {
                problems.push(format!(
                    "{}: [{}] {} is not used in {place} of {}",
                    d.at,
                    d.kind.table(),
                    d.key,
                    c.name
                ));
            }
        }
    }
    for key in ws().workspace_deps().keys() {
        if !ws_used.contains(key) {
            let line =
                carve_tidy::manifest_line(&ws().text("Cargo.toml"), "workspace.dependencies", key);
            problems.push(format!(
                "Cargo.toml:{line}: [workspace.dependencies] {key} is used by no member"
            ));
        }
    }
    problems.extend(allow.stale());
    report(
        "every dependency is used: [dependencies] in src/ or build.rs, [dev-dependencies] in \
         tests/, examples/, benches/ or src/, [build-dependencies] in build.rs, \
         [workspace.dependencies] by some member",
        "remove the entry (and from [workspace.dependencies] when nothing else uses it)",
        problems,
    );
}

// =============================================================================================
// d. Copied constants

/// Constant names defined in more than one crate on purpose: (name, crates, why). The name may
/// be defined in these crates, no other.
#[rustfmt::skip]
const SHARED_CONST_NAMES: &[(&str, &[&str], &str)] = &[
    ("MIB", &["carve-agent", "carve-workload"], "the mebibyte, a unit both count memory in, not a figure one copies from the other"),
    ("ROW_H", &["carve-cli", "carve-plan"], "drawing metrics of two different pictures (the CLI's layouts, the plan's layout.svg)"),
    ("GAP", &["carve-cli", "carve-plan"], "drawing metrics of two different pictures (the CLI's layouts, the plan's layout.svg)"),
    ("TOP", &["carve-cli", "carve-plan"], "drawing metrics of two different pictures (the CLI's layouts, the plan's layout.svg)"),
    ("SUCCESS", &["carve-nvml", "carve-fake-nvml"], "a short local name for nvml-wrapper-sys's value (not a copy)"),
    ("ERROR_INVALID_ARGUMENT", &["carve-nvml", "carve-fake-nvml"], "a short local name for nvml-wrapper-sys's value"),
    ("ERROR_NOT_SUPPORTED", &["carve-nvml", "carve-fake-nvml"], "a short local name for nvml-wrapper-sys's value"),
    ("ERROR_NOT_FOUND", &["carve-nvml", "carve-fake-nvml"], "a short local name for nvml-wrapper-sys's value"),
    ("ERROR_INSUFFICIENT_SIZE", &["carve-nvml", "carve-fake-nvml"], "a short local name for nvml-wrapper-sys's value"),
];

/// The crate that defines the scheduler protocol's names.
const SCHED_PROTO_HOME: &str = "carve-sched-proto";

/// The environment the shim reads: spelt as string literals only in SCHED_PROTO_HOME.
const SCHED_ENV_NAMES: &[&str] = &[
    "CARVE_SCHED_SOCKET",
    "CARVE_TENANT",
    "CARVE_TOKEN_FILE",
    "CARVE_FAIL",
];

/// The protocol's figures: defined only in SCHED_PROTO_HOME.
const SCHED_CONST_NAMES: &[&str] = &[
    "GRACE_NS",
    "DRAIN_NS",
    "LATE_DRAIN_NS",
    "LEDGER_TURNS",
    "WAIT_BUCKETS_NS",
];

/// Exceptions to the home rule: (file, what, why); `what` is a figure's name, or `literals` for
/// the environment's names written as string literals.
#[rustfmt::skip]
const SCHED_NAME_ALLOWANCES: &[(&str, &str, &str)] = &[
];

/// Where the averaging factor's default (33, vGPU's) is written: only here.
const AVERAGING_FACTOR_HOME: &str = "crates/carve-timeslice/src/lib.rs";

/// Exceptions: (file, "33", why). Files take `carve_timeslice::DEFAULT_AVERAGING_FACTOR`.
#[rustfmt::skip]
const AVERAGING_FACTOR_ALLOWANCES: &[(&str, &str, &str)] = &[
];

#[test]
fn no_constant_is_defined_in_two_crates() {
    // name -> crate -> where
    let mut defs: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    for (krate, src) in all_sources() {
        for d in definitions(src) {
            if d.kind == DefKind::Const && !d.associated {
                defs.entry(d.name)
                    .or_default()
                    .entry(krate.clone())
                    .or_default()
                    .push(format!("{}:{}", src.rel, d.line));
            }
        }
    }
    let mut problems = Vec::new();
    for (name, by_crate) in &defs {
        if by_crate.len() < 2 {
            continue;
        }
        let allowed = SHARED_CONST_NAMES
            .iter()
            .find(|(n, _, _)| n == name)
            .is_some_and(|(_, crates, _)| by_crate.keys().all(|c| crates.contains(&c.as_str())));
        if !allowed {
            let places: Vec<&String> = by_crate.values().flatten().collect();
            problems.push(format!(
                "const {name} is defined in {} crates: {}",
                by_crate.len(),
                places
                    .iter()
                    .map(|p| p.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    for (name, crates, _) in SHARED_CONST_NAMES {
        let n = defs
            .get(*name)
            .map(|b| b.keys().filter(|c| crates.contains(&c.as_str())).count())
            .unwrap_or(0);
        if n < 2 {
            problems.push(format!(
                "{THIS_FILE}: SHARED_CONST_NAMES: {name} is no longer defined in two of {crates:?}: \
                 delete the entry"
            ));
        }
    }
    report(
        "a constant is defined in one crate (a copy drifts from its original)",
        "define it once, in the crate that owns it (protocol and ABI names in their protocol or \
         ABI crate), and import it elsewhere; if the names only coincide, add the name to \
         SHARED_CONST_NAMES with the reason",
        problems,
    );
}

#[test]
fn scheduler_protocol_names_live_in_their_home() {
    let mut allow = Allowances::new("SCHED_NAME_ALLOWANCES", SCHED_NAME_ALLOWANCES);
    let mut problems = Vec::new();
    if !ws().crates.contains_key(SCHED_PROTO_HOME) {
        problems.push(format!(
            "{THIS_FILE}: SCHED_PROTO_HOME is {SCHED_PROTO_HOME}, not a workspace crate"
        ));
    }
    for (krate, src) in all_sources() {
        // The home, and this file's tables.
        if krate == SCHED_PROTO_HOME || src.rel == THIS_FILE {
            continue;
        }
        let mut found: BTreeMap<&str, usize> = BTreeMap::new();
        for t in src.tokens.iter().filter(|t| t.kind == Kind::Str) {
            for name in SCHED_ENV_NAMES {
                if contains_word(&t.text, name) {
                    found.entry(name).or_insert(t.line);
                }
            }
        }
        for d in definitions(src) {
            let value = matches!(d.kind, DefKind::Const | DefKind::Static);
            if value && SCHED_CONST_NAMES.contains(&d.name.as_str()) {
                let name = SCHED_CONST_NAMES.iter().find(|n| **n == d.name).unwrap();
                found.entry(name).or_insert(d.line);
            }
        }
        for (name, line) in found {
            let literal = SCHED_ENV_NAMES.contains(&name);
            if !allow.allows(&src.rel, if literal { "literals" } else { name }) {
                let what = if literal {
                    format!("the literal \"{name}\"")
                } else {
                    format!("a definition of {name}")
                };
                problems.push(format!(
                    "{}:{line}: {what}: the scheduler protocol's names live in {SCHED_PROTO_HOME}",
                    src.rel
                ));
            }
        }
    }
    problems.extend(allow.stale());
    report(
        "the scheduler protocol's environment names and figures are spelt only in their home \
         crate (SCHED_PROTO_HOME)",
        "use the home crate's constants (tests too); never a copy or the literal",
        problems,
    );
}

#[test]
fn the_averaging_factor_default_is_written_once() {
    let mut allow = Allowances::new("AVERAGING_FACTOR_ALLOWANCES", AVERAGING_FACTOR_ALLOWANCES);
    let mut problems = Vec::new();
    for (_, src) in all_sources() {
        if src.rel == AVERAGING_FACTOR_HOME {
            continue;
        }
        let t = &src.tokens;
        let lines: BTreeSet<usize> = t
            .iter()
            .filter(|x| x.is_ident("averaging_factor"))
            .map(|x| x.line)
            .collect();
        for x in t {
            let value = x.text.split(|c: char| !c.is_ascii_digit()).next();
            if x.kind == Kind::Number && value == Some("33") && lines.contains(&x.line) {
                if !allow.allows(&src.rel, "33") {
                    problems.push(format!(
                        "{}:{}: the averaging factor's default written as 33",
                        src.rel, x.line
                    ));
                }
                break;
            }
        }
    }
    problems.extend(allow.stale());
    report(
        "the averaging factor's default is written once, in carve-timeslice",
        "use carve_timeslice::DEFAULT_AVERAGING_FACTOR",
        problems,
    );
}

// =============================================================================================
// e. ARCHITECTURE.md stays true

/// Names ARCHITECTURE.md mentions that are not defined in the workspace: (name, why).
#[rustfmt::skip]
const EXTERNAL_NAMES: &[(&str, &str)] = &[
    ("Arc", "std::sync::Arc"),
    ("String", "std's String"),
    ("NVML_VALUE_NOT_AVAILABLE", "nvml.h's \"not available\" value (nvml-wrapper-sys names it differently)"),
    ("unsafe_op_in_unsafe_fn", "a rustc lint, set in [workspace.lints]"),
    ("clippy", "clippy's lint namespace"),
    ("undocumented_unsafe_blocks", "a clippy lint, set in [workspace.lints]"),
    ("possible_placements", "nvml-wrapper's API (the bug carve-nvml works around)"),
];

/// Path prefixes outside the repository that ARCHITECTURE.md may mention.
const EXTERNAL_PATHS: &[&str] = &["shared/", "../shared/"];

/// Where a backticked span of ARCHITECTURE.md is: its line and the crates of its section.
struct Span {
    text: String,
    line: usize,
    crates: Vec<String>,
}

/// The backticked spans outside code blocks, with their sections' crates (`### `crates/<name>``
/// headings); and the headings: (line, crates named).
fn architecture_spans(text: &str) -> (Vec<Span>, Vec<(usize, Vec<String>)>) {
    let mut spans = Vec::new();
    let mut headings = Vec::new();
    let mut crates: Vec<String> = Vec::new();
    let mut fenced = false;
    let mut open: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        if line.starts_with("## ") {
            crates.clear();
        }
        if line.starts_with("### ") {
            crates = line
                .split('`')
                .skip(1)
                .step_by(2)
                .filter_map(|s| s.strip_prefix("crates/"))
                .map(String::from)
                .collect();
            headings.push((n, crates.clone()));
            continue;
        }
        for ch in line.chars() {
            if ch == '`' {
                match open.take() {
                    Some((at, s)) => spans.push(Span {
                        text: s,
                        line: at,
                        crates: crates.clone(),
                    }),
                    None => open = Some((n, String::new())),
                }
            } else if let Some((_, s)) = &mut open {
                s.push(ch);
            }
        }
        // A span may go on on the next line.
        if let Some((_, s)) = &mut open {
            s.push(' ');
        }
    }
    (spans, headings)
}

/// Whether a span names a file of the repository (and how it is written).
fn path_like(s: &str) -> bool {
    let ok_chars = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'));
    let source_ext = [".rs", ".toml", ".proto", ".md"]
        .iter()
        .any(|e| s.ends_with(e));
    let repo_dir = [
        "crates/",
        "support/",
        "proto/",
        "data/",
        "tests/",
        "examples/",
        "src/",
        "benches/",
        "deploy/",
        ".ci/",
    ]
    .iter()
    .any(|d| s.starts_with(d));
    ok_chars && !s.is_empty() && (source_ext || repo_dir)
}

/// Every name defined in the workspace (Rust items, variants, fields; the .proto files' messages,
/// services and rpcs), and every identifier and string literal the code uses.
struct Names {
    defined: BTreeSet<String>,
    used: BTreeSet<String>,
    strings: Vec<String>,
}

fn names() -> &'static Names {
    static NAMES: OnceLock<Names> = OnceLock::new();
    NAMES.get_or_init(|| {
        let mut defined = BTreeSet::new();
        let mut used = BTreeSet::new();
        let mut strings = Vec::new();
        for (krate, src) in all_sources() {
            defined.insert(krate.replace('-', "_"));
            for d in definitions(src) {
                defined.insert(d.name);
            }
            for t in &src.tokens {
                match t.kind {
                    Kind::Ident => {
                        used.insert(t.text.clone());
                    }
                    Kind::Str => strings.push(t.text.clone()),
                    _ => {}
                }
            }
        }
        for c in ws().crates.values() {
            let mut protos = Vec::new();
            collect_files(&ws().root.join(&c.rel), ".proto", &mut protos);
            for p in protos {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                let words: Vec<&str> = text.split_whitespace().collect();
                for w in words.windows(2) {
                    if matches!(w[0], "message" | "service" | "rpc" | "enum") {
                        let name: String = w[1]
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        defined.insert(name);
                    }
                }
            }
        }
        Names {
            defined,
            used,
            strings,
        }
    })
}

fn collect_files(dir: &std::path::Path, ext: &str, out: &mut Vec<std::path::PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.filter_map(|e| e.ok()) {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "target" || name.starts_with('.') {
            continue;
        }
        if p.is_dir() {
            collect_files(&p, ext, out);
        } else if name.ends_with(ext) {
            out.push(p);
        }
    }
}

/// What a backticked identifier-like span must be, if it is one (None: prose, a command, a
/// value, a path: not checked).
///
/// - `Type::item` paths: every segment is defined (or the first is a workspace crate);
/// - `CamelCase`: a defined type, variant or trait (or a .proto message/service);
/// - `snake_case` with an underscore, or any lowercase name followed by `(`: a defined fn,
///   const, field, module or macro;
/// - `SCREAMING_CASE`: a defined const, or a name the code uses (an environment variable in a
///   string literal, a libc constant);
/// - `lowerCamel` (C ABI names, `cuMemGetInfo`): a name the code defines or spells;
/// - a lone lowercase word (`fit`, `renew`, `apply`) is prose, a command or a protocol word:
///   not checked. Spans followed by `(...)`, ` { ... }` or `[...]` are checked by their name.
fn identifier_problem(span: &str) -> Option<String> {
    let s = span.trim();
    let name_end = s
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '_' || *c == ':'))
        .map(|(i, _)| i)
        .unwrap_or(s.len());
    let (name, rest) = s.split_at(name_end);
    let rest_ok = rest.is_empty()
        || rest.starts_with('(')
        || rest.starts_with(" {")
        || rest.starts_with('{')
        || (rest.starts_with('[') && rest.ends_with(']') && !rest.contains(' '));
    if !rest_ok || name.is_empty() || !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    if name.contains(':') {
        let segs: Vec<&str> = name.split("::").collect();
        if segs.iter().any(|p| p.is_empty() || p.contains(':')) {
            return None;
        }
        let missing: Vec<&&str> = segs.iter().filter(|p| !known(p)).collect();
        return (!missing.is_empty())
            .then(|| format!("`{span}`: {missing:?} defined nowhere in the workspace"));
    }
    let has_lower = name.chars().any(|c| c.is_ascii_lowercase());
    let has_upper = name.chars().any(|c| c.is_ascii_uppercase());
    let first_upper = name.starts_with(|c: char| c.is_ascii_uppercase());
    let called = rest.starts_with('(');
    let n = &names();
    let ok = if first_upper && has_lower {
        // CamelCase
        known(name)
    } else if first_upper {
        // SCREAMING_CASE
        if name.len() < 3 {
            return None;
        }
        known(name) || n.used.contains(name) || n.strings.iter().any(|s| contains_word(s, name))
    } else if has_upper {
        // lowerCamel: C ABI names
        known(name) || n.used.contains(name) || n.strings.iter().any(|s| contains_word(s, name))
    } else if name.contains('_') || called {
        known(name)
    } else {
        return None;
    };
    (!ok).then(|| format!("`{span}`: {name} is defined nowhere in the workspace"))
}

fn known(name: &str) -> bool {
    names().defined.contains(name) || EXTERNAL_NAMES.iter().any(|(n, _)| *n == name)
}

#[test]
fn architecture_md_names_what_exists() {
    let text = ws().text("ARCHITECTURE.md");
    let (spans, headings) = architecture_spans(&text);
    let mut problems = Vec::new();
    let root = &ws().root;
    for sp in &spans {
        let s = sp.text.trim();
        if path_like(s) {
            if EXTERNAL_PATHS.iter().any(|p| s.starts_with(p)) {
                continue;
            }
            let mut candidates = Vec::new();
            for c in &sp.crates {
                candidates.push(format!("crates/{c}/{s}"));
                candidates.push(format!("crates/{c}/src/{s}"));
            }
            candidates.push(s.to_string());
            candidates.push(format!("crates/{s}"));
            if !candidates.iter().any(|c| root.join(c).exists()) {
                problems.push(format!(
                    "ARCHITECTURE.md:{}: `{s}` does not exist (looked for {})",
                    sp.line,
                    candidates.join(", ")
                ));
            }
            continue;
        }
        if let Some(crate_name) = s.strip_prefix("carve-") {
            let is_crate_name = crate_name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '-');
            if is_crate_name && !ws().crates.contains_key(s) {
                problems.push(format!(
                    "ARCHITECTURE.md:{}: `{s}` is not a workspace crate",
                    sp.line
                ));
            }
            continue;
        }
        if let Some(p) = identifier_problem(s) {
            problems.push(format!("ARCHITECTURE.md:{}: {p}", sp.line));
        }
    }
    let mut mapped = BTreeSet::new();
    for (line, crates) in &headings {
        for c in crates {
            if !ws().crates.contains_key(c) {
                problems.push(format!(
                    "ARCHITECTURE.md:{line}: the section of crates/{c}, which is not a workspace crate"
                ));
            }
            mapped.insert(c.clone());
        }
    }
    for c in ws().crates.values() {
        if !mapped.contains(&c.name) {
            problems.push(format!(
                "ARCHITECTURE.md: no code-map section (### `{}`) for {}",
                c.rel, c.name
            ));
        }
    }
    report(
        "ARCHITECTURE.md names files, crates and items that exist, and maps every crate",
        "update ARCHITECTURE.md with the code (a renamed or moved file or item, a new crate's \
         section); for a name from outside the workspace, add it to EXTERNAL_NAMES",
        problems,
    );
}

// =============================================================================================
// f. Workspace lints

/// Crates that have not opted into [workspace.lints] yet (none now: every crate has). A crate
/// named here must add `[lints] workspace = true` and make its code pass; then delete its name.
#[rustfmt::skip]
const LINTS_NOT_YET: &[&str] = &[
];

#[test]
fn every_crate_opts_into_the_workspace_lints() {
    let mut problems = Vec::new();
    let has_lints = ws()
        .manifest
        .get("workspace")
        .and_then(|w| w.get("lints"))
        .is_some();
    if !has_lints {
        problems.push("Cargo.toml: no [workspace.lints]".to_string());
    }
    for c in ws().crates.values() {
        let opted = c
            .manifest
            .get("lints")
            .and_then(|l| l.get("workspace"))
            .and_then(|w| w.as_bool())
            == Some(true);
        let excused = LINTS_NOT_YET.contains(&c.name.as_str());
        if !opted && !excused {
            problems.push(format!(
                "{}/Cargo.toml: no `[lints] workspace = true`",
                c.rel
            ));
        }
        if opted && excused {
            problems.push(format!(
                "{THIS_FILE}: {} has opted in: delete it from LINTS_NOT_YET",
                c.name
            ));
        }
    }
    for n in LINTS_NOT_YET {
        if !ws().crates.contains_key(*n) {
            problems.push(format!(
                "{THIS_FILE}: LINTS_NOT_YET names {n}, not a workspace crate: delete it"
            ));
        }
    }
    report(
        "every crate opts into the house rules ([workspace.lints] of the root Cargo.toml)",
        "add `[lints]\\nworkspace = true` to the crate's Cargo.toml and fix what the lints find",
        problems,
    );
}

// =============================================================================================
// g. Other conventions

/// Shared test code lives in carve-test-support (a crate cargo sees), not in source includes.
#[test]
fn no_source_includes() {
    let mut problems = Vec::new();
    for (_, src) in all_sources() {
        let t = &src.tokens;
        for k in 0..t.len().saturating_sub(3) {
            if t[k].is_punct('#')
                && t[k + 1].is_punct('[')
                && t[k + 2].is_ident("path")
                && t[k + 3].is_punct('=')
            {
                problems.push(format!("{}:{}: #[path = ...]", src.rel, t[k].line));
            }
        }
    }
    report(
        "no source includes (#[path = ...]): cargo cannot see them",
        "put the shared code in crates/carve-test-support (tests, examples, benchmarks) or in a \
         crate of its own, and name it under [dev-dependencies]",
        problems,
    );
}

// =============================================================================================
// h. No import circles between a crate's modules

/// Module circles that are accepted: (crate, the modules of the circle sorted and joined by ` `,
/// why).
const MODULE_CYCLE_ALLOWANCES: &[(&str, &str, &str)] = &[];

/// The top-level modules of a crate's `src/` (a file `x.rs` or a directory `x/`) and, for each,
/// the other top-level modules its code names through `crate::` (`use crate::x`, `crate::x::f`).
/// The crate root (`lib.rs`, `main.rs`) declares the modules and is left out.
fn module_graph(krate: &carve_tidy::Crate) -> BTreeMap<String, BTreeSet<String>> {
    let src = format!("{}/src/", krate.rel);
    let module_of = |file: &str| -> Option<String> {
        let rest = file.strip_prefix(&src)?;
        let first = rest.split('/').next()?;
        let name = first.strip_suffix(".rs").unwrap_or(first);
        (!matches!(name, "lib" | "main")).then(|| name.to_string())
    };
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let files = ws().rust_files(krate, &["src"]);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(f)).collect();
    for file in &files {
        let Some(here) = module_of(file) else {
            continue;
        };
        let src = ws().source(file);
        let t = &src.tokens;
        let names = graph.entry(here.clone()).or_default();
        for k in 0..t.len() {
            if src.in_test[k] || !t[k].is(Kind::Ident, "crate") {
                continue;
            }
            // `crate::x`, or `crate::{x, y::z}` in a `use`.
            if !(k + 2 < t.len() && t[k + 1].is(Kind::Punct, ":") && t[k + 2].is(Kind::Punct, ":"))
            {
                continue;
            }
            let mut heads = Vec::new();
            if let Some(next) = t.get(k + 3) {
                if next.kind == Kind::Ident {
                    heads.push(next.text.clone());
                } else if next.is(Kind::Punct, "{") {
                    let mut depth = 0;
                    let mut expect = true;
                    for tok in &t[k + 3..] {
                        match (&tok.kind, tok.text.as_str()) {
                            (Kind::Punct, "{") => {
                                depth += 1;
                                expect = depth == 1;
                            }
                            (Kind::Punct, "}") => {
                                depth -= 1;
                                if depth == 0 {
                                    break;
                                }
                            }
                            (Kind::Punct, ",") if depth == 1 => expect = true,
                            (Kind::Ident, name) if expect && depth == 1 => {
                                heads.push(name.to_string());
                                expect = false;
                            }
                            _ => {}
                        }
                    }
                }
            }
            for h in heads {
                if h != here && modules.contains(&h) {
                    names.insert(h);
                }
            }
        }
    }
    graph
}

/// A circle through `start` in `graph`, if there is one (the shortest found by a breadth-first
/// search).
fn circle(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    let mut prev: BTreeMap<String, String> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start.to_string()]);
    while let Some(m) = queue.pop_front() {
        for n in graph.get(&m).into_iter().flatten() {
            if n == start {
                let mut path = vec![m.clone()];
                let mut at = m.clone();
                while let Some(p) = prev.get(&at) {
                    path.push(p.clone());
                    at = p.clone();
                }
                path.reverse();
                return Some(path);
            }
            if n != start && !prev.contains_key(n) {
                prev.insert(n.clone(), m.clone());
                queue.push_back(n.clone());
            }
        }
    }
    None
}

#[test]
fn modules_import_no_circle() {
    let mut allow = Allowances::new("MODULE_CYCLE_ALLOWANCES", MODULE_CYCLE_ALLOWANCES);
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for (name, krate) in &ws().crates {
        let graph = module_graph(krate);
        for m in graph.keys() {
            let Some(path) = circle(&graph, m) else {
                continue;
            };
            let mut key: Vec<&str> = path.iter().map(String::as_str).collect();
            key.sort_unstable();
            let key = key.join(" ");
            if !seen.insert((name.clone(), key.clone())) || allow.allows(name, &key) {
                continue;
            }
            let shown: Vec<String> = path
                .iter()
                .chain(std::iter::once(&path[0]))
                .map(|m| format!("{m}.rs"))
                .collect();
            problems.push(format!(
                "{}/src: {name}'s modules import each other in a circle: {}",
                krate.rel,
                shown.join(" -> ")
            ));
        }
    }
    problems.extend(allow.stale());
    report(
        "a crate's modules do not import each other in a circle (each idea has one home; the \
         crate reads as layers)",
        "move what both need into the lower module (or a new leaf module) and import it from there",
        problems,
    );
}
