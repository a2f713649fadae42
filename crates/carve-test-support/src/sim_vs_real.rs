//! The real side of carve-simulate's sim-vs-real comparison (`examples/sim_vs_real.rs` there,
//! which adds the simulated side): a workload run on the stand-in GPU (`crates/carve-fake-cuda`)
//! under the real scheduler daemon (`carve_sched::server::Server`, the code `carve sched serve`
//! runs) with `carve-workload` tenants under the shim (`LD_PRELOAD` of `libcarve_shim.so`, as
//! `carve run` sets it up). Behind the `sim-vs-real` feature. This crate does not depend on
//! carve-simulate: the example is carve-simulate's own, and a dev-dependency cycle would give it
//! two copies of carve-simulate's types.
//!
//! The workload: per tenant one `carve-workload` process, one stream, kernels of a fixed length
//! back to back with at most [`IN_FLIGHT`] in flight (it waits for the older one, then launches).
//! Its latency is from the launch call to the completion it observes.
//! `CARVE_SIM_VS_REAL_STATUS=1` prints the daemon's status (turns, GPU time) after each real run.

use crate::fake_cuda;
use carve_sched::config::{DaemonConfig, Identity};
use carve_sched::server::Server;
use carve_sched_proto as proto;
use carve_timeslice::{Policy, Schedule, ScheduledTenant, Settings};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// Kernels in flight per `carve-workload` stream.
pub const IN_FLIGHT: u32 = 2;

pub struct Scenario {
    pub name: &'static str,
    pub policy: Policy,
    /// Per tenant: its share (fixed share only) and its kernel length in µs.
    pub tenants: Vec<(Option<f64>, u64)>,
}

impl Scenario {
    /// The one schedule both the daemon and the simulator run: tenants `t0`, `t1`, ...
    pub fn schedule(&self) -> Schedule {
        Schedule {
            settings: Settings {
                policy: self.policy,
                ..Settings::default()
            },
            tenants: self
                .tenants
                .iter()
                .enumerate()
                .map(|(i, (share, _))| ScheduledTenant {
                    name: format!("t{i}"),
                    share: *share,
                    memory_limit_bytes: None,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Figures {
    /// Kernels completed per second.
    pub per_s: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
}

/// The scenarios of the comparison.
pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "fixed 0.7/0.3",
            policy: Policy::FixedShare,
            tenants: vec![(Some(0.7), 500), (Some(0.3), 500)],
        },
        Scenario {
            name: "equal x2",
            policy: Policy::EqualShare,
            tenants: vec![(None, 500), (None, 500)],
        },
        Scenario {
            name: "best effort x2",
            policy: Policy::BestEffort,
            tenants: vec![(None, 500), (None, 500)],
        },
        Scenario {
            name: "best effort x4",
            policy: Policy::BestEffort,
            tenants: vec![(None, 500); 4],
        },
        Scenario {
            name: "equal 200us/2ms",
            policy: Policy::EqualShare,
            tenants: vec![(None, 200), (None, 2000)],
        },
    ]
}

/// Built artifacts and a scratch directory (removed on drop).
pub struct Stand {
    bin: PathBuf,
    root: PathBuf,
    /// Where the stand-in GPU keeps its shared state: in memory where there is a tmpfs
    /// ([`fake_cuda::gpu_state_dir`]).
    gpu_root: PathBuf,
    runs: std::cell::Cell<u32>,
}

impl Stand {
    /// Builds the shim, the stand-in libcuda and `carve-workload` (with the caller's profile).
    pub fn new(tag: &str) -> Stand {
        let bin = fake_cuda::stand_artifacts().to_path_buf();
        let root = crate::fresh_dir(tag);
        fake_cuda::install_libcuda(&root, &bin.join(fake_cuda::FAKE_CUDA_LIB));
        let gpu_root = fake_cuda::gpu_state_dir(tag, &root);
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
        let config = DaemonConfig::new(s.schedule(), |t| {
            let i: usize = t.name[1..].parse().expect("tenant t<i>");
            Ok::<_, std::convert::Infallible>(Identity {
                token: Some(Stand::token(i)),
                ..Identity::default()
            })
        })
        .expect("infallible");
        let sock = self.root.join(format!("sched-{run}.sock"));
        let server = Server::start(config, &sock).expect("start the scheduler");
        let kids: Vec<Child> = s
            .tenants
            .iter()
            .enumerate()
            .map(|(i, (_, us))| {
                let tok = self.root.join(format!("t{i}.tok"));
                std::fs::write(&tok, format!("{}\n", Stand::token(i))).expect("token file");
                Command::new(self.bin.join(fake_cuda::WORKLOAD_BIN))
                    .args(["--kernel-us", &us.to_string(), "--seconds"])
                    .arg(seconds.to_string())
                    .arg("--json")
                    .env("LD_PRELOAD", self.bin.join(fake_cuda::SHIM_LIB))
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
}

impl Drop for Stand {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.gpu_root);
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
