//! `carve-workload` against the stand-in `libcuda.so.1` (carve-fake-cuda), found on
//! `LD_LIBRARY_PATH` as the real driver would be: kernels of all processes share one GPU, memory
//! is accounted across processes.

use carve_test_support::fake_cuda;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The tests run one at a time: their kernels spin on the CPUs, and some measure time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

struct Node {
    root: PathBuf,
}

impl Node {
    fn new(tag: &str) -> Node {
        Node {
            root: fake_cuda::driver_dir(&format!("carve-workload-{tag}")),
        }
    }

    fn gpu(&self) -> PathBuf {
        self.root.join("gpu")
    }

    fn spin(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_carve-workload"));
        c.args(args)
            .env("LD_LIBRARY_PATH", self.root.join("lib"))
            .env("CARVE_FAKE_CUDA_DIR", self.gpu())
            .env_remove("CARVE_FAKE_CUDA_MEM_MIB")
            .env_remove("LD_PRELOAD")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    fn start(&self, args: &[&str]) -> Child {
        self.spin(args).spawn().expect("start carve-workload")
    }

    /// The fake's record of a process: `{"kernels", "busy_ns", ...}`.
    fn stats(&self, pid: u32) -> Value {
        let p = self.gpu().join(format!("stats/{pid}.json"));
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_default())
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Exit code, the JSON report, stderr.
fn finish(c: Child) -> (i32, Value, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = c.wait_with_output().expect("wait for carve-workload");
    let v = serde_json::from_slice(&stdout).unwrap_or(Value::Null);
    (
        status.code().unwrap_or(-1),
        v,
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

fn share(v: &Value) -> f64 {
    v["share"]
        .as_f64()
        .unwrap_or_else(|| panic!("no share: {v}"))
}

#[test]
fn one_process_alone_gets_the_whole_gpu() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let n = Node::new("alone");
    let c = n.start(&["--kernel-us", "500", "--seconds", "1.5", "--json"]);
    let pid = c.id();
    let (code, v, err) = finish(c);
    assert_eq!(code, 0, "{err}");
    let s = share(&v);
    eprintln!("alone: share {s:.3}");
    assert!(s > 0.85, "alone, the GPU should be busy all the time: {v}");
    assert!(s < 1.02, "more GPU time than wall time: {v}");
    // The report adds up, and the fake ran what was asked.
    let kernels = v["kernels"].as_u64().unwrap();
    assert!((2500..=3000).contains(&kernels), "{v}");
    let gpu_s = v["gpu_s"].as_f64().unwrap();
    assert!((gpu_s - kernels as f64 * 500e-6).abs() < 1e-6, "{v}");
    let st = n.stats(pid);
    assert_eq!(st["kernels"].as_u64(), Some(kernels), "{st}");
    assert_eq!(st["busy_ns"].as_u64(), Some(kernels * 500_000), "{st}");
    // Two in flight: a kernel completes about one kernel after the one before it.
    let (p50, p99) = (v["p50_ms"].as_f64().unwrap(), v["p99_ms"].as_f64().unwrap());
    assert!((0.5..2.0).contains(&p50) && p99 >= p50, "{v}");
}

#[test]
fn two_processes_at_once_each_get_half() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let n = Node::new("two");
    let args = ["--kernel-us", "500", "--seconds", "2", "--json"];
    let (a, b) = (n.start(&args), n.start(&args));
    let (pa, pb) = (a.id(), b.id());
    let (ca, va, ea) = finish(a);
    let (cb, vb, eb) = finish(b);
    assert_eq!((ca, cb), (0, 0), "{ea}\n{eb}");
    let (sa, sb) = (share(&va), share(&vb));
    eprintln!("two at once: shares {sa:.3} and {sb:.3}");
    // Kernels are serialised: together they cannot have more than the one GPU, and (unless the
    // CPUs are very busy) they keep it busy ...
    assert!(sa + sb < 1.05, "kernels overlapped: {sa:.3} + {sb:.3}");
    assert!(sa + sb > 0.7, "the GPU was idle: {sa:.3} + {sb:.3}");
    // ... and they take turns, so each gets about half of it.
    assert!((sa / (sa + sb) - 0.5).abs() < 0.05, "a {sa:.3}, b {sb:.3}");
    // Waiting for the other process's kernel shows in the latency: about three kernels.
    assert!(va["p50_ms"].as_f64().unwrap() > 1.2, "{va}");
    // The fake's own records agree.
    for (pid, v) in [(pa, &va), (pb, &vb)] {
        assert_eq!(n.stats(pid)["kernels"], v["kernels"]);
    }
}

/// Waits until the fake records memory held by `pid` (its file under `mem/`).
fn wait_for_allocation(n: &Node, pid: u32, c: &mut Child) {
    let f = n.gpu().join(format!("mem/{pid}"));
    let t = Instant::now();
    while !f.exists() {
        if let Ok(Some(st)) = c.try_wait() {
            panic!("the holder exited early: {st}");
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the holder never allocated"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn memory_limits_hold_across_processes() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let n = Node::new("memory");
    // A holds 60 GiB of the 80 for a while (its kernels are short and few).
    let mut a = n.start(&[
        "--kernel-us",
        "1000",
        "--seconds",
        "1.5",
        "--alloc-mib",
        "61440",
        "--json",
    ]);
    wait_for_allocation(&n, a.id(), &mut a);
    // B sees A's use, and 30 GiB no longer fits.
    let (code, _, err) = finish(n.start(&[
        "--kernel-us",
        "100",
        "--seconds",
        "0.1",
        "--alloc-mib",
        "30720",
    ]));
    assert_eq!(code, 3, "30 GiB next to 60 GiB must fail: {err}");
    assert!(err.contains("out of device memory"), "{err}");
    assert!(err.contains("CUDA_ERROR_OUT_OF_MEMORY"), "{err}");
    // 10 GiB does fit, and the free memory B saw at its start was A's leftover.
    let (code, v, err) = finish(n.start(&[
        "--kernel-us",
        "100",
        "--seconds",
        "0.1",
        "--alloc-mib",
        "10240",
        "--json",
    ]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(v["memory_total_mib"], 81920);
    assert_eq!(v["memory_free_mib"], 81920 - 61440, "{v}");
    let (code, _, err) = finish(a);
    assert_eq!(code, 0, "{err}");
    // A's memory is back: now 30 GiB fits.
    let (code, v, err) = finish(n.start(&[
        "--kernel-us",
        "100",
        "--seconds",
        "0.1",
        "--alloc-mib",
        "30720",
        "--json",
    ]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(v["memory_free_mib"], 81920, "{v}");
}

#[test]
fn memory_of_a_killed_process_is_freed() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let n = Node::new("killed");
    let mut a = n.start(&[
        "--kernel-us",
        "1000",
        "--seconds",
        "30",
        "--alloc-mib",
        "61440",
    ]);
    wait_for_allocation(&n, a.id(), &mut a);
    a.kill().unwrap();
    a.wait().unwrap();
    // Neither its memory nor its turn on the GPU outlives it.
    let t = Instant::now();
    let (code, v, err) = finish(n.start(&[
        "--kernel-us",
        "1000",
        "--seconds",
        "0.3",
        "--alloc-mib",
        "30720",
        "--json",
    ]));
    assert_eq!(code, 0, "{err}");
    assert!(v["kernels"].as_u64().unwrap() > 100, "{v}");
    assert!(t.elapsed() < Duration::from_secs(3));
}

#[test]
fn several_streams_share_the_gpu_too() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let n = Node::new("streams");
    let (code, v, err) = finish(n.start(&[
        "--kernel-us",
        "300",
        "--kernel-us-max",
        "900",
        "--streams",
        "3",
        "--seconds",
        "0.5",
        "--json",
    ]));
    assert_eq!(code, 0, "{err}");
    let s = share(&v);
    assert!((0.7..1.02).contains(&s), "{v}");
    assert_eq!(v["streams"], 3);
}

#[test]
fn bad_arguments_and_a_missing_driver() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let n = Node::new("args");
    for bad in [
        &["--kernel-us", "0"][..],
        &["--seconds", "-1"],
        &["--streams", "0"],
        &["--kernel-us"],
        &["--frobnicate"],
        &["--alloc-mib", "lots"],
    ] {
        let (code, _, err) = finish(n.start(bad));
        assert_eq!(code, 2, "{bad:?}: {err}");
        assert!(err.contains("usage:"), "{err}");
    }
    // No libcuda.so.1 on the library path: exit 4 with the reason (unless this machine has a
    // real driver installed system-wide, which is then found instead).
    let has_driver = [
        "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
        "/usr/lib64/libcuda.so.1",
        "/usr/lib/libcuda.so.1",
    ]
    .iter()
    .any(|p| Path::new(p).exists());
    if !has_driver {
        let (code, _, err) = finish(
            n.spin(&["--seconds", "0.1"])
                .env("LD_LIBRARY_PATH", n.root.join("nowhere"))
                .spawn()
                .unwrap(),
        );
        assert_eq!(code, 4, "{err}");
        assert!(err.contains("cannot load libcuda.so.1"), "{err}");
    }
}
