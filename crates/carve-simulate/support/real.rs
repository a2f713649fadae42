//! The simulator against the real thing: a workload run on the stand-in GPU
//! (`crates/carve-fake-cuda`) under the real scheduler daemon (`carve_sched::server::Server`, the
//! code `carve sched serve` runs) with `carve-workload` tenants under the shim (`LD_PRELOAD` of
//! `libcarve_shim.so`, as `carve run` sets it up), then the same workload through
//! [`carve_simulate::simulate`]. Shared by `examples/sim_vs_real.rs` and `tests/sim_vs_real.rs`
//! (`#[path = "../support/real.rs"] mod real;`).
//!
//! The workload: per tenant one `carve-workload` process, one stream, kernels of a fixed length back
//! to back with at most two in flight (it waits for the older one, then launches). Its latency is
//! from the launch call to the completion it observes. In the simulator that is
//! a pipeline of depth two (`Arrivals::Pipeline`) with deterministic service of the same length.
//! `CARVE_SIM_VS_REAL_STATUS=1` prints the daemon's status (turns, GPU time) after each real run.

#![allow(dead_code)]

use carve_sched::config::{Config, Identity, PolicyName, TenantConfig};
use carve_sched::server::Server;
use carve_sched_proto as proto;
use carve_simulate::{simulate, Arrivals, Load, Placement, Service, Slicing, Tenant};
use carve_timeslice::Policy;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

#[path = "../../../support/cargo_build.rs"]
mod cargo_build;

/// Kernels in flight per `carve-workload` stream.
pub const IN_FLIGHT: u32 = 2;

/// Simulated seconds per scenario (the simulator is deterministic; a long run settles its
/// percentiles).
pub const SIM_SECONDS: f64 = 60.0;

pub struct Scenario {
    pub name: &'static str,
    pub policy: PolicyName,
    /// Per tenant: its share (fixed share only) and its kernel length in µs.
    pub tenants: Vec<(Option<f64>, u64)>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Figures {
    /// Kernels completed per second.
    pub per_s: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
}

#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: &'static str,
    pub tenant: String,
    pub kernel_us: u64,
    pub real: Figures,
    pub sim: Figures,
}

impl Row {
    /// (simulated − real) / real of the p95, in %.
    pub fn p95_error_pct(&self) -> f64 {
        (self.sim.p95_ms - self.real.p95_ms) / self.real.p95_ms.max(1e-9) * 100.0
    }
}

/// The scenarios of the comparison.
pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "fixed 0.7/0.3",
            policy: PolicyName::FixedShare,
            tenants: vec![(Some(0.7), 500), (Some(0.3), 500)],
        },
        Scenario {
            name: "equal x2",
            policy: PolicyName::EqualShare,
            tenants: vec![(None, 500), (None, 500)],
        },
        Scenario {
            name: "best effort x2",
            policy: PolicyName::BestEffort,
            tenants: vec![(None, 500), (None, 500)],
        },
        Scenario {
            name: "best effort x4",
            policy: PolicyName::BestEffort,
            tenants: vec![(None, 500); 4],
        },
        Scenario {
            name: "equal 200us/2ms",
            policy: PolicyName::EqualShare,
            tenants: vec![(None, 200), (None, 2000)],
        },
    ]
}

/// Built artifacts and a scratch directory (removed on drop).
pub struct Stand {
    bin: PathBuf,
    root: PathBuf,
    /// Where the stand-in GPU keeps its shared state: in memory (`/dev/shm`) where there is one.
    /// The stand-in writes its statistics file (a write and a rename) at every synchronisation,
    /// and the shim synchronises at every switch; on a disk file system the rename alone can take
    /// a millisecond, which would be measured as part of every switch.
    gpu_root: PathBuf,
    runs: std::cell::Cell<u32>,
}

impl Stand {
    /// Builds the shim, the stand-in libcuda and `carve-workload` (with the caller's profile).
    pub fn new(tag: &str) -> Stand {
        let bin = cargo_build::build(
            &["carve-shim", "carve-fake-cuda", "carve-workload"],
            &[
                "libcarve_shim.so",
                "libcarve_fake_cuda.so",
                "carve-workload",
            ],
        );
        let root = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("lib")).expect("scratch directory");
        std::os::unix::fs::symlink(
            bin.join("libcarve_fake_cuda.so"),
            root.join("lib/libcuda.so.1"),
        )
        .expect("link libcuda.so.1");
        let shm = PathBuf::from("/dev/shm");
        let gpu_root = if shm.is_dir() {
            shm.join(format!("{tag}-{}", std::process::id()))
        } else {
            root.join("gpu")
        };
        std::fs::create_dir_all(&gpu_root).expect("GPU directory");
        Stand {
            bin,
            root,
            gpu_root,
            runs: std::cell::Cell::new(0),
        }
    }

    fn token(i: usize) -> String {
        format!("t{i}-sim-vs-real-0123456789abcdef")
    }

    /// Runs the scenario for real: the daemon, one `carve-workload` per tenant under the shim.
    pub fn real(&self, s: &Scenario, seconds: f64) -> Vec<Figures> {
        let run = self.runs.get() + 1;
        self.runs.set(run);
        let gpu = self.gpu_root.join(format!("gpu-{run}"));
        std::fs::create_dir_all(&gpu).expect("GPU directory");
        let config = Config {
            policy: s.policy,
            slice_ms: None,
            work_conserving: false,
            averaging_factor: 33,
            tenants: s
                .tenants
                .iter()
                .enumerate()
                .map(|(i, (share, _))| TenantConfig {
                    name: format!("t{i}"),
                    share: *share,
                    memory_limit_bytes: None,
                    identity: Identity {
                        token: Some(Stand::token(i)),
                        ..Identity::default()
                    },
                })
                .collect(),
        };
        let sock = self.root.join(format!("sched-{run}.sock"));
        let server = Server::start(config, &sock).expect("start the scheduler");
        let kids: Vec<Child> = s
            .tenants
            .iter()
            .enumerate()
            .map(|(i, (_, us))| {
                let tok = self.root.join(format!("t{i}.tok"));
                std::fs::write(&tok, format!("{}\n", Stand::token(i))).expect("token file");
                Command::new(self.bin.join("carve-workload"))
                    .args(["--kernel-us", &us.to_string(), "--seconds"])
                    .arg(seconds.to_string())
                    .arg("--json")
                    .env("LD_PRELOAD", self.bin.join("libcarve_shim.so"))
                    .env("LD_LIBRARY_PATH", self.root.join("lib"))
                    .env("CARVE_FAKE_CUDA_DIR", &gpu)
                    .env(proto::ENV_SCHED_SOCKET, &sock)
                    .env(proto::ENV_TENANT, format!("t{i}"))
                    .env(proto::ENV_TOKEN_FILE, &tok)
                    .env(proto::ENV_FAIL, proto::FAIL_CLOSED)
                    .stdout(Stdio::piped())
                    .spawn()
                    .expect("carve-workload")
            })
            .collect();
        let out: Vec<Figures> = kids
            .into_iter()
            .enumerate()
            .map(|(i, k)| {
                let o = k.wait_with_output().expect("wait for carve-workload");
                assert!(
                    o.status.success(),
                    "tenant t{i}: carve-workload {}",
                    o.status
                );
                let v: serde_json::Value =
                    serde_json::from_slice(&o.stdout).expect("carve-workload --json");
                let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
                Figures {
                    per_s: f("kernels") / f("wall_s"),
                    p50_ms: f("p50_ms"),
                    p95_ms: f("p95_ms"),
                    p99_ms: f("p99_ms"),
                }
            })
            .collect();
        if std::env::var_os("CARVE_SIM_VS_REAL_STATUS").is_some() {
            eprintln!("{:#?}", server.status());
        }
        server.stop();
        let _ = std::fs::remove_dir_all(&gpu);
        out
    }

    /// Runs the scenario and its simulation; one row per tenant.
    pub fn compare(&self, s: &Scenario, seconds: f64) -> Vec<Row> {
        let real = self.real(s, seconds);
        let sim = simulated(s, SIM_SECONDS, 1);
        real.into_iter()
            .zip(sim)
            .enumerate()
            .map(|(i, (real, sim))| Row {
                scenario: s.name,
                tenant: format!("t{i}"),
                kernel_us: s.tenants[i].1,
                real,
                sim,
            })
            .collect()
    }
}

impl Drop for Stand {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.gpu_root);
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The scenario through the simulator, with the default (carve sched on bare metal) switch.
pub fn simulated(s: &Scenario, seconds: f64, seed: u64) -> Vec<Figures> {
    let tenants: Vec<Tenant> = s
        .tenants
        .iter()
        .enumerate()
        .map(|(i, (share, us))| Tenant {
            name: format!("t{i}"),
            load: Load {
                arrivals: Arrivals::Pipeline { depth: IN_FLIGHT },
                work_ms: *us as f64 / 1e3,
                service: Service::Deterministic,
                memory_bound: 0.0,
            },
            placement: Placement::TimeShared,
            share: *share,
        })
        .collect();
    let slicing = Slicing {
        policy: match s.policy {
            PolicyName::BestEffort => Policy::BestEffort,
            PolicyName::EqualShare => Policy::EqualShare,
            PolicyName::FixedShare => Policy::FixedShare,
        },
        slice_ms: None,
        ..Slicing::default()
    };
    simulate(&tenants, &slicing, seconds, seed)
        .tenants
        .into_iter()
        .map(|t| Figures {
            per_s: t.throughput_per_s,
            p50_ms: t.p50_ms,
            p95_ms: t.p95_ms,
            p99_ms: t.p99_ms,
        })
        .collect()
}

/// The table's header.
pub fn header() -> String {
    format!(
        "{:<16} {:<6} {:>7}   {:>8} {:>7} {:>7} {:>6}   {:>7} {:>7} {:>7} {:>6}   {:>8}",
        "scenario",
        "tenant",
        "kernel",
        "real p50",
        "p95",
        "p99",
        "k/s",
        "sim p50",
        "p95",
        "p99",
        "k/s",
        "p95 err"
    )
}

/// One row of the table.
pub fn line(r: &Row) -> String {
    format!(
        "{:<16} {:<6} {:>5}us   {:>8.3} {:>7.3} {:>7.3} {:>6.0}   {:>7.3} {:>7.3} {:>7.3} {:>6.0}   {:>+7.1}%",
        r.scenario,
        r.tenant,
        r.kernel_us,
        r.real.p50_ms,
        r.real.p95_ms,
        r.real.p99_ms,
        r.real.per_s,
        r.sim.p50_ms,
        r.sim.p95_ms,
        r.sim.p99_ms,
        r.sim.per_s,
        r.p95_error_pct()
    )
}
