//! Software time-slicing end to end, without a GPU: `carve sched serve`, tenants running
//! `carve-workload` under `carve run` (the shim preloaded) against the stand-in `libcuda.so.1` on the
//! library path. Shares, memory limits, identity refusal, fail-open and fail-closed.

use carve_test_support::cli::success_json;
use carve_test_support::fake_cuda::{
    gpu_state_dir, install_libcuda, stand_artifacts as artifacts, FAKE_CUDA_LIB, SHIM_LIB,
    WORKLOAD_BIN,
};
use carve_test_support::{fresh_dir, wait_for};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Node {
    dir: PathBuf,
    /// The stand-in GPU's shared state (`CARVE_FAKE_CUDA_DIR`).
    gpu: PathBuf,
    socket: PathBuf,
    sched: Option<Child>,
}

impl Node {
    fn new(tag: &str) -> Node {
        let name = format!("carve-sched-cli-{tag}");
        let dir = fresh_dir(&name);
        install_libcuda(&dir, &artifacts().join(FAKE_CUDA_LIB));
        for t in ["a", "b", "c"] {
            std::fs::write(
                dir.join(format!("{t}.tok")),
                format!("{t}-secret-0123456789abcdef\n"),
            )
            .unwrap();
        }
        // The stand-in's shared state in memory where there is a tmpfs.
        let gpu = gpu_state_dir(&name, &dir);
        Node {
            socket: dir.join("sched.sock"),
            dir,
            gpu,
            sched: None,
        }
    }

    fn cmd(&self, prog: &Path) -> Command {
        let mut c = Command::new(prog);
        c.env("LD_LIBRARY_PATH", self.dir.join("lib"))
            .env("CARVE_FAKE_CUDA_DIR", &self.gpu)
            .env("CARVE_SHIM_LIB", artifacts().join(SHIM_LIB))
            .env_remove("LD_PRELOAD");
        c
    }

    fn carve(&self) -> Command {
        self.cmd(Path::new(env!("CARGO_BIN_EXE_carve")))
    }

    fn serve(&mut self, config: &str) {
        std::fs::write(self.dir.join("sched.yaml"), config).unwrap();
        let child = self
            .carve()
            .args(["sched", "serve"])
            .arg(self.dir.join("sched.yaml"))
            .arg("--socket")
            .arg(&self.socket)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.sched = Some(child);
        wait_for(Duration::from_secs(10), Duration::from_millis(20), || {
            if self.socket.exists() {
                Ok(())
            } else {
                Err("the scheduler did not start".to_string())
            }
        });
    }

    /// `carve run --tenant T -- carve-workload ...`, started.
    fn spin(&self, tenant: &str, token: &str, fail: &str, spin_args: &[&str]) -> Child {
        self.carve()
            .args(["run", "--tenant", tenant, "--fail", fail, "--socket"])
            .arg(&self.socket)
            .arg("--token-file")
            .arg(self.dir.join(format!("{token}.tok")))
            .arg("--")
            .arg(artifacts().join(WORKLOAD_BIN))
            .args(spin_args)
            .arg("--json")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.sched.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(&self.gpu);
    }
}

fn finish(c: Child) -> (i32, Value, String) {
    let out = c.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), v, err)
}

/// The timing tests run one at a time: their spinning kernels need the CPUs.
static TIMING: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn fixed_shares_hold_under_the_shim() {
    let _one = TIMING.lock().unwrap_or_else(|p| p.into_inner());
    let mut n = Node::new("fixed");
    n.serve(
        "policy: fixed-share\nslice_ms: 4\ntenants:\n  - {name: a, share: 0.7, token_file: a.tok}\n  - {name: b, share: 0.3, token_file: b.tok}\n",
    );
    let args = ["--kernel-us", "500", "--seconds", "3"];
    let a = n.spin("a", "a", "open", &args);
    let b = n.spin("b", "b", "open", &args);
    let (ra, va, ea) = finish(a);
    let (rb, vb, eb) = finish(b);
    assert_eq!((ra, rb), (0, 0), "{ea}\n{eb}");
    let (sa, sb) = (va["share"].as_f64().unwrap(), vb["share"].as_f64().unwrap());
    // Of the GPU time the two got, a had 70% (absolute shares shrink a little when CI's CPUs
    // are busy: a kernel's thread can be descheduled).
    assert!((sa / (sa + sb) - 0.7).abs() < 0.06, "a {sa:.3}, b {sb:.3}");
    assert!(
        sa + sb > 0.8,
        "the GPU was mostly idle: a {sa:.3}, b {sb:.3}"
    );
    // The scheduler saw the same.
    let out = n
        .carve()
        .args(["sched", "status", "--json", "--socket"])
        .arg(&n.socket)
        .output()
        .unwrap();
    let st = success_json(&out);
    let t = st["tenants"].as_array().unwrap();
    assert_eq!(t.len(), 2);
    for k in [
        "target_share",
        "achieved_share",
        "gpu_time_ns",
        "launches",
        "throttled_ns",
        "memory_used_mib",
    ] {
        assert!(t[0].get(k).is_some(), "{k} missing: {st:#}");
    }
    let ga = t[0]["gpu_time_ns"].as_f64().unwrap();
    let gb = t[1]["gpu_time_ns"].as_f64().unwrap();
    assert!((ga / (ga + gb) - 0.7).abs() < 0.06, "daemon: {ga} vs {gb}");
}

#[test]
fn baseline_without_carve_splits_evenly() {
    // Two unscheduled spinners on the stand-in GPU take turns kernel by kernel: ~50% each,
    // whatever they would be due. (The figure the scheduler is compared against.)
    let _one = TIMING.lock().unwrap_or_else(|p| p.into_inner());
    let n = Node::new("baseline");
    let run = || {
        n.cmd(&artifacts().join(WORKLOAD_BIN))
            .args(["--kernel-us", "500", "--seconds", "2", "--json"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (run(), run());
    let (_, va, _) = finish(a);
    let (_, vb, _) = finish(b);
    let (sa, sb) = (va["share"].as_f64().unwrap(), vb["share"].as_f64().unwrap());
    assert!((sa - sb).abs() < 0.1, "{sa} {sb}");
}

#[test]
fn memory_limits_are_enforced_and_reported() {
    let mut n = Node::new("mem");
    n.serve(
        "policy: best-effort\ntenants:\n  - {name: a, token_file: a.tok, memory_limit_mib: 1024}\n",
    );
    let (code, v, err) = finish(n.spin(
        "a",
        "a",
        "closed",
        &[
            "--kernel-us",
            "100",
            "--seconds",
            "0.2",
            "--alloc-mib",
            "512",
        ],
    ));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        v["memory_total_mib"], 1024,
        "the limit is the total the program sees"
    );
    let (code, _, err) = finish(n.spin(
        "a",
        "a",
        "closed",
        &[
            "--kernel-us",
            "100",
            "--seconds",
            "0.2",
            "--alloc-mib",
            "2048",
        ],
    ));
    assert_eq!(code, 3, "over the limit is CUDA_ERROR_OUT_OF_MEMORY: {err}");
}

#[test]
fn a_client_that_cannot_prove_its_tenant_is_refused() {
    let mut n = Node::new("refuse");
    n.serve("policy: equal-share\ntenants:\n  - {name: a, token_file: a.tok}\n  - {name: b, token_file: b.tok}\n");
    // Claims a, holds b's token; even with --fail open it must not run unscheduled.
    let (code, _, err) = finish(n.spin(
        "a",
        "b",
        "open",
        &["--kernel-us", "100", "--seconds", "0.2"],
    ));
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("refused tenant 'a'"), "{err}");
    assert_eq!(
        err.matches("carve-shim:").count(),
        1,
        "one clear line: {err}"
    );
}

#[test]
fn an_unreachable_scheduler_fails_open_or_closed() {
    let n = Node::new("unreachable");
    let (code, v, err) = finish(n.spin(
        "a",
        "a",
        "open",
        &["--kernel-us", "100", "--seconds", "0.3"],
    ));
    assert_eq!(code, 0, "{err}");
    assert!(v["kernels"].as_u64().unwrap() > 0);
    assert!(err.contains("failing open"), "{err}");
    assert_eq!(err.matches("carve-shim:").count(), 1);
    let (code, _, err) = finish(n.spin(
        "a",
        "a",
        "closed",
        &["--kernel-us", "100", "--seconds", "0.3"],
    ));
    assert_ne!(code, 0);
    assert!(err.contains("failing closed"), "{err}");
}

/// An interactive tenant (a kernel, then a pause longer than the scheduler's grace) is charged
/// for the GPU time it used, not for its pauses: the daemon closes its idle turn by grace, and
/// the shim's report on its return counts only work still running.
#[test]
fn an_idle_tenant_is_not_charged_for_its_pauses() {
    let _one = TIMING.lock().unwrap_or_else(|p| p.into_inner());
    let mut n = Node::new("idle");
    n.serve(
        "policy: fixed-share\nslice_ms: 2\ntenants:\n  - {name: a, share: 0.5, token_file: a.tok}\n  - {name: b, share: 0.5, token_file: b.tok}\n",
    );
    // 500 µs of work every ~20 ms: about 2.5% of the GPU.
    let a = n.spin(
        "a",
        "a",
        "closed",
        &[
            "--kernel-us",
            "500",
            "--gap-us",
            "20000",
            "--seconds",
            "1.5",
        ],
    );
    let (ra, va, ea) = finish(a);
    assert_eq!(ra, 0, "{ea}");
    let out = n
        .carve()
        .args(["sched", "status", "--json", "--socket"])
        .arg(&n.socket)
        .output()
        .unwrap();
    let st = success_json(&out);
    let t = st["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "a")
        .unwrap();
    let charged = t["gpu_time_ns"].as_f64().unwrap() / 1e9;
    let used = va["gpu_s"].as_f64().unwrap();
    let wall = va["wall_s"].as_f64().unwrap();
    eprintln!("idle tenant: charged {charged:.3} s for {used:.3} s of work in {wall:.2} s");
    // Each turn may be charged up to its slice (2 ms) for 0.5 ms of work; never the pauses.
    assert!(
        charged < 0.25 * wall,
        "charged {charged:.3} s of GPU time for {used:.3} s of work in {wall:.2} s: {t}"
    );
    assert!(
        charged >= used * 0.9,
        "charged {charged:.3} s < used {used:.3} s"
    );
}
