//! Time-slicing benchmark on the stand-in GPU (or a real one: put the real libcuda first on the
//! library path with CARVE_BENCH_REAL_GPU=1). Prints figures, asserts nothing.
//!
//! - Fairness: 2, 4 and 8 tenants running `carve-workload` with kernels of 50 µs – 5 ms mixed, under
//!   `carve sched` with fixed shares and with equal share, against the same tenants with no carve.
//! - Overhead: time per intercepted launch when uncontended, and single-tenant throughput.
//!
//! `cargo run --release -p carve-sched --example bench_timeslice [-- --seconds 4]`

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../../../support/cargo_build.rs"]
mod cargo_build;

struct Env {
    bin: PathBuf,
    tmp: PathBuf,
    real: bool,
}

impl Env {
    fn cmd(&self, prog: &Path) -> Command {
        let mut c = Command::new(prog);
        if !self.real {
            c.env("LD_LIBRARY_PATH", self.tmp.join("lib"))
                .env("CARVE_FAKE_CUDA_DIR", self.tmp.join("gpu"));
        }
        c.env("CARVE_SHIM_LIB", self.bin.join("libcarve_shim.so"));
        c
    }

    fn spin_args(seconds: f64) -> Vec<String> {
        [
            "--kernel-us",
            "50",
            "--kernel-us-max",
            "5000",
            "--seconds",
            &seconds.to_string(),
            "--json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn bare(&self, args: &[String]) -> Child {
        self.cmd(&self.bin.join("carve-workload"))
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("carve-workload")
    }

    fn under(&self, socket: &Path, tenant: &str, args: &[String]) -> Child {
        self.cmd(&self.bin.join("carve"))
            .args(["run", "--tenant", tenant, "--fail", "closed", "--socket"])
            .arg(socket)
            .arg("--token-file")
            .arg(self.tmp.join(format!("{tenant}.tok")))
            .arg("--")
            .arg(self.bin.join("carve-workload"))
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("carve run")
    }

    fn sched(&self, config: &str, tag: &str) -> (Child, PathBuf) {
        let cfg = self.tmp.join(format!("{tag}.yaml"));
        std::fs::write(&cfg, config).unwrap();
        let sock = self.tmp.join(format!("{tag}.sock"));
        let child = self
            .cmd(&self.bin.join("carve"))
            .args(["sched", "serve", "--config"])
            .arg(&cfg)
            .arg("--socket")
            .arg(&sock)
            .stderr(Stdio::null())
            .spawn()
            .expect("carve sched");
        let t = Instant::now();
        while !sock.exists() && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        (child, sock)
    }
}

fn share_of(c: Child) -> f64 {
    let out = c.wait_with_output().expect("wait");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v["share"].as_f64().unwrap_or(0.0)
}

fn jain(x: &[f64]) -> f64 {
    let s: f64 = x.iter().sum();
    let q: f64 = x.iter().map(|v| v * v).sum();
    s * s / (x.len() as f64 * q)
}

fn main() {
    let mut seconds = 4.0;
    let a: Vec<String> = std::env::args().collect();
    if let Some(i) = a.iter().position(|x| x == "--seconds") {
        seconds = a.get(i + 1).and_then(|s| s.parse().ok()).unwrap_or(seconds);
    }
    let bin = cargo_build::build(
        &[
            "carve-cli",
            "carve-shim",
            "carve-fake-cuda",
            "carve-workload",
        ],
        &[
            "carve",
            "libcarve_shim.so",
            "libcarve_fake_cuda.so",
            "carve-workload",
        ],
    );
    let real = std::env::var_os("CARVE_BENCH_REAL_GPU").is_some();
    let tmp = std::env::temp_dir().join(format!("carve-bench-ts-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(tmp.join("lib")).unwrap();
    if !real {
        std::os::unix::fs::symlink(
            bin.join("libcarve_fake_cuda.so"),
            tmp.join("lib/libcuda.so.1"),
        )
        .unwrap();
    }
    for i in 0..8 {
        std::fs::write(
            tmp.join(format!("t{i}.tok")),
            format!("t{i}-bench-token-0123456789\n"),
        )
        .unwrap();
    }
    let env = Env {
        bin,
        tmp: tmp.clone(),
        real,
    };
    println!(
        "time-slicing on the {} GPU; kernels 50 µs – 5 ms log-uniform; {seconds} s per run",
        if real { "real" } else { "stand-in" }
    );
    println!(
        "{:<6} {:<12} {:<34} {:<34} {:>9} {:>9}",
        "tenants", "policy", "target", "achieved (of GPU time)", "max err", "baseline"
    );
    let cases: Vec<(usize, Vec<f64>)> = vec![
        (2, vec![0.7, 0.3]),
        (4, vec![0.4, 0.3, 0.2, 0.1]),
        (8, vec![0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05]),
    ];
    let args = Env::spin_args(seconds);
    for (n, shares) in &cases {
        for fixed in [true, false] {
            let mut cfg = format!(
                "policy: {}\ntenants:\n",
                if fixed { "fixed-share" } else { "equal-share" }
            );
            for (i, s) in shares.iter().enumerate() {
                if fixed {
                    cfg.push_str(&format!(
                        "  - {{name: t{i}, share: {s}, token_file: t{i}.tok}}\n"
                    ));
                } else {
                    cfg.push_str(&format!("  - {{name: t{i}, token_file: t{i}.tok}}\n"));
                }
            }
            let (mut d, sock) = env.sched(&cfg, &format!("s{n}{fixed}"));
            let kids: Vec<Child> = (0..*n)
                .map(|i| env.under(&sock, &format!("t{i}"), &args))
                .collect();
            let got: Vec<f64> = kids.into_iter().map(share_of).collect();
            let _ = d.kill();
            let _ = d.wait();
            let target: Vec<f64> = if fixed {
                shares.clone()
            } else {
                vec![1.0 / *n as f64; *n]
            };
            let total: f64 = got.iter().sum();
            // Shares of the GPU time delivered (the scheduler's job); `total` is how busy it was.
            let got: Vec<f64> = got.iter().map(|g| g / total.max(1e-9)).collect();
            let err = got
                .iter()
                .zip(&target)
                .map(|(g, t)| (g - t).abs() * 100.0)
                .fold(0.0, f64::max);
            // Baseline: the same tenants, no carve.
            let kids: Vec<Child> = (0..*n).map(|_| env.bare(&args)).collect();
            let base: Vec<f64> = kids.into_iter().map(share_of).collect();
            let btotal: f64 = base.iter().sum();
            let base: Vec<f64> = base.iter().map(|g| g / btotal.max(1e-9)).collect();
            let base_err = base
                .iter()
                .zip(&target)
                .map(|(g, t)| (g - t).abs() * 100.0)
                .fold(0.0, f64::max);
            let fmt = |v: &[f64]| {
                v.iter()
                    .map(|x| format!("{:.1}", x * 100.0))
                    .collect::<Vec<_>>()
                    .join("/")
            };
            println!(
                "{:<6} {:<12} {:<34} {:<34} {:>7.2}pp {:>7.2}pp{}",
                n,
                if fixed { "fixed-share" } else { "equal-share" },
                fmt(&target),
                fmt(&got),
                err,
                base_err,
                if fixed {
                    format!(
                        "  GPU busy {:.1}% (baseline {:.1}%)",
                        total * 100.0,
                        btotal * 100.0
                    )
                } else {
                    format!(
                        "  Jain {:.4} (baseline {:.4}); GPU busy {:.1}% (baseline {:.1}%)",
                        jain(&got),
                        jain(&base),
                        total * 100.0,
                        btotal * 100.0
                    )
                }
            );
        }
    }
    // Overhead.
    let launches = 500_000u64.to_string();
    let lb = |c: Child| -> f64 {
        let out = c.wait_with_output().unwrap();
        serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v["ns_per_launch"].as_f64())
            .unwrap_or(f64::NAN)
    };
    let la = [
        "--launch-bench".to_string(),
        launches.clone(),
        "--json".into(),
    ];
    let bare = lb(env.bare(&la));
    let (mut d, sock) = env.sched(
        "policy: best-effort\nslice_ms: 30\ntenants:\n  - {name: t0, token_file: t0.tok}\n",
        "ovh",
    );
    let shim = lb(env.under(&sock, "t0", &la));
    let one = [
        "--kernel-us".to_string(),
        "500".into(),
        "--seconds".into(),
        seconds.to_string(),
        "--json".into(),
    ];
    let thr_shim = share_of(env.under(&sock, "t0", &one));
    let _ = d.kill();
    let _ = d.wait();
    let thr_bare = share_of(env.bare(&one));
    println!(
        "\noverhead: launch {bare:.0} ns bare, {shim:.0} ns under the shim (uncontended): +{:.0} ns per launch",
        shim - bare
    );
    println!(
        "single tenant, 500 µs kernels: throughput {:.2}% bare, {:.2}% under carve: {:.2}% lost",
        thr_bare * 100.0,
        thr_shim * 100.0,
        (1.0 - thr_shim / thr_bare) * 100.0
    );
    let _ = std::fs::remove_dir_all(&tmp);
}
