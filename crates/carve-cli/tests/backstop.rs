//! The backstop end to end: `carve up` on the stand-in NVML (one H100 time-sliced between two
//! tenants with 2 GiB each), with the stand-in CUDA bridged to it (`CARVE_FAKE_CUDA_DIR`: the
//! stand-in NVML lists every stand-in CUDA process with its memory, as a real driver lists every
//! process with a context). Processes that dodge the shim are found and, with `--on-violation
//! kill`, killed within a second; a well-behaved tenant under the shim is never touched.
//!
//! The programs that dodge the shim, each what the stand-ins allow of a real escape:
//! - `carve-workload` started without `LD_PRELOAD` (as `env -u LD_PRELOAD` starts a child): the
//!   same program as the tenant's, never registered;
//! - a statically linked C program, built here with `cc -static`: the preload cannot reach it,
//!   and it cannot load a libcuda either, so it takes device memory the way a program that
//!   drives the device without libcuda would, in the stand-in's terms (its memory file);
//! - a process registered as a tenant (its own `hello`, with the tenant's token, over the
//!   scheduler socket) that then allocates through the stand-in CUDA directly, past its
//!   tenant's limit: what a program that finds the driver's real functions does under the shim.
//!
//! A pod as a CDI-aware runtime starts it, as a user of its own, is recognised as its tenant
//! through what the spec mounts alone, scheduled, and never a violation.
//!
//! Latencies are printed (`--nocapture`): from the process's first appearance on the GPU (its
//! memory file) to the event and to its death.

use carve_sched_proto::{self as proto, Request};
use carve_sched_proto::{ENV_FAIL, ENV_SCHED_SOCKET, ENV_TENANT, ENV_TOKEN_FILE};
use carve_test_support::cli::{read_ready, signal};
use carve_test_support::fake_cuda::{
    gpu_state_dir, install_libcuda, stand_artifacts, FAKE_CUDA_LIB, SHIM_LIB, WORKLOAD_BIN,
};
use carve_test_support::fake_nvml::fake_nvml_lib;
use carve_test_support::http::http;
use carve_test_support::{fresh_dir, wait_for};
use serde_json::Value;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const BACKSTOP_TENANCY: &str = "fleet:
  - node: n1
    platform: kubernetes
    gpus: [1xH100-80GB]
tenants:
  - name: alpha
    workload: interactive
    memory_gb: 2
  - name: beta
    workload: dev
    memory_gb: 2
";

/// A node: the stand-in drivers, a running `carve up` and where everything is.
struct Node {
    dir: PathBuf,
    gpu: PathBuf,
    agent: Child,
    api: String,
    token: String,
    stderr: std::sync::mpsc::Receiver<String>,
}

impl Node {
    fn up(tag: &str, extra: &[&str]) -> Node {
        let a = stand_artifacts();
        let dir = fresh_dir(&format!("carve-backstop-{tag}"));
        install_libcuda(&dir, &a.join(FAKE_CUDA_LIB));
        std::os::unix::fs::symlink(fake_nvml_lib(), dir.join("lib/libnvidia-ml.so.1")).unwrap();
        let gpu = gpu_state_dir(&format!("carve-backstop-{tag}"), &dir);
        std::fs::create_dir_all(gpu.join("mem")).unwrap();
        std::fs::write(dir.join("tenancy.yaml"), BACKSTOP_TENANCY).unwrap();
        let mut agent = Command::new(env!("CARGO_BIN_EXE_carve"))
            .current_dir(&dir)
            .env("HOME", &dir)
            .env("XDG_CONFIG_HOME", dir.join("config"))
            .env_remove("CARVE_NVML_LIB")
            .env("LD_LIBRARY_PATH", dir.join("lib"))
            .env("CARVE_FAKE_NVML_STATE", dir.join("nvml.json"))
            .env("CARVE_FAKE_NVML_NODE", "1xH100-80GB")
            .env("CARVE_FAKE_CUDA_DIR", &gpu)
            .env("CARVE_SHIM_LIB", a.join(SHIM_LIB))
            .args(["--backend", "nvml", "up", "tenancy.yaml", "--json"])
            .args(["--listen", "127.0.0.1:0", "--dir"])
            .arg(dir.join("up"))
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let err = agent.stderr.take().unwrap();
        let (tx, stderr) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("agent: {l}");
                let _ = tx.send(l);
            }
        });
        let ready = read_ready(&mut agent);
        assert_eq!(ready.doc["ready"], true, "{}", ready.doc);
        let token = std::fs::read_to_string(ready.doc["api_token_file"].as_str().unwrap())
            .unwrap()
            .trim()
            .to_string();
        Node {
            dir,
            gpu,
            agent,
            api: ready.api,
            token,
            stderr,
        }
    }

    fn run_dir(&self) -> PathBuf {
        self.dir.join("up/run")
    }

    fn socket(&self) -> PathBuf {
        self.run_dir().join("sched-gpu0.sock")
    }

    fn token_file(&self, tenant: &str) -> PathBuf {
        carve_sched::tokens::token_path(&self.run_dir().join("tokens"), tenant)
    }

    /// `carve-workload` on the stand-in GPU with nothing of carve: what a child started with
    /// `env -u LD_PRELOAD` (or a program the preload never reaches) runs as.
    fn bare_workload(&self, args: &[&str]) -> Command {
        let mut c = Command::new(stand_artifacts().join(WORKLOAD_BIN));
        c.args(args)
            .env("LD_LIBRARY_PATH", self.dir.join("lib"))
            .env("CARVE_FAKE_CUDA_DIR", &self.gpu)
            .env_remove("LD_PRELOAD")
            .env_remove(ENV_SCHED_SOCKET)
            .env_remove(ENV_TENANT)
            .env_remove(ENV_TOKEN_FILE)
            .stdout(Stdio::null());
        c
    }

    /// `carve-workload` as `tenant` under the shim, with what Allocate hands a container.
    fn tenant_workload(&self, tenant: &str, args: &[&str]) -> Command {
        let mut c = self.bare_workload(args);
        c.env("LD_PRELOAD", stand_artifacts().join(SHIM_LIB))
            .env(ENV_SCHED_SOCKET, self.socket())
            .env(ENV_TENANT, tenant)
            .env(ENV_TOKEN_FILE, self.token_file(tenant))
            .env(ENV_FAIL, proto::FAIL_CLOSED);
        c
    }

    fn violations(&self) -> Value {
        let (code, body) = http(&self.api, "GET", "/v1/violations", Some(&self.token), "");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    fn metrics(&self) -> String {
        http(&self.api, "GET", "/metrics", None, "").1
    }

    /// The file the stand-in CUDA keeps `pid`'s device memory in.
    fn mem_file(&self, pid: u32) -> PathBuf {
        self.gpu.join("mem").join(pid.to_string())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        signal(&self.agent, libc::SIGTERM);
        let _ = self.agent.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(&self.gpu);
    }
}

/// The violation of `pid`, once it is in `GET /v1/violations`.
fn violation_of(n: &Node, pid: u32) -> Value {
    wait_for(Duration::from_secs(5), Duration::from_millis(10), || {
        let v = n.violations();
        v["violations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["pid"] == pid)
            .cloned()
            .ok_or_else(|| format!("no violation for pid {pid}: {v}"))
    })
}

/// Waits until `child` has its device memory (it is on the GPU): when.
fn on_gpu(n: &Node, child: &mut Child) -> Instant {
    let f = n.mem_file(child.id());
    wait_for(Duration::from_secs(10), Duration::from_millis(1), || {
        if f.exists() {
            return Ok(Instant::now());
        }
        if let Ok(Some(s)) = child.try_wait() {
            panic!("pid {} ended before it got memory: {s}", child.id());
        }
        Err(format!("pid {} never got device memory", child.id()))
    })
}

/// Waits for `child` to end, at most `limit`: its status and when.
fn ended(child: &mut Child, limit: Duration) -> (ExitStatus, Instant) {
    wait_for(limit, Duration::from_millis(1), || {
        match child.try_wait().unwrap() {
            Some(s) => Ok((s, Instant::now())),
            None => Err(format!("pid {} still runs after {limit:?}", child.id())),
        }
    })
}

fn killed(s: ExitStatus) -> bool {
    s.signal() == Some(libc::SIGKILL)
}

/// `found_ms`/`killed_ms` of a violation, as an instant on this process's clock.
fn at(v: &Value, field: &str, now: Instant) -> Instant {
    let ms = v[field].as_u64().unwrap_or_else(|| panic!("{field}: {v}"));
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    now - Duration::from_millis(wall.saturating_sub(ms))
}

/// A statically linked program that puts `mib` MiB on the stand-in GPU without libcuda (its
/// memory file, as the stand-in CUDA writes it) and waits.
fn static_program(dir: &Path) -> PathBuf {
    let src = dir.join("static-gpu.c");
    std::fs::write(
        &src,
        r#"#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv) {
    char path[4096];
    if (argc < 3) return 2;
    snprintf(path, sizeof path, "%s/mem/%d", argv[1], (int)getpid());
    FILE *f = fopen(path, "w");
    if (!f) return 3;
    fprintf(f, "%llu\n", strtoull(argv[2], 0, 10) * 1048576ULL);
    fclose(f);
    sleep(30);
    return 0;
}
"#,
    )
    .unwrap();
    let out = dir.join("static-gpu");
    let cc = Command::new("cc")
        .args(["-static", "-O1", "-o"])
        .arg(&out)
        .arg(&src)
        .output()
        .expect("a C compiler (cc) for the statically linked program");
    assert!(
        cc.status.success(),
        "cc -static failed (it needs the static C library, e.g. libc6-dev or glibc-static): {}",
        String::from_utf8_lossy(&cc.stderr)
    );
    // Statically linked: no program interpreter (PT_INTERP), so nothing is ever preloaded.
    let elf = std::fs::read(&out).unwrap();
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[32..40].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    let interp = (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        u32::from_le_bytes(elf[o..o + 4].try_into().unwrap()) == 3
    });
    assert!(!interp, "{} has a program interpreter", out.display());
    out
}

/// A socket address for `path`.
fn sockaddr(path: &Path) -> libc::sockaddr_un {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: sockaddr_un is plain old data; all zeroes is a valid (empty) address.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let b = path.as_os_str().as_bytes();
    assert!(b.len() < a.sun_path.len(), "{}", path.display());
    for (d, s) in a.sun_path.iter_mut().zip(b) {
        *d = *s as libc::c_char;
    }
    a
}

/// Makes `cmd`'s process say hello to the scheduler at `socket` as `tenant` (with its token)
/// before it execs, keeping the connection open across the exec: the process is registered as
/// the tenant (its pid, from the kernel's peer credentials), and the program it runs can do as
/// it likes. Only system calls run between the fork and the exec.
fn registered_as(cmd: &mut Command, socket: &Path, tenant: &str, token: String) {
    let hello = proto::encode(&Request::Hello {
        version: proto::VERSION,
        tenant: tenant.into(),
        token: Some(token),
    })
    .into_bytes();
    let addr = sockaddr(socket);
    let refused = || std::io::Error::from_raw_os_error(libc::EACCES);
    let hello_then_exec = move || -> std::io::Result<()> {
        // SAFETY: plain system calls (socket, connect, write, read) on our own descriptor and
        // buffers, allocating nothing.
        unsafe {
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
            let sa = &addr as *const libc::sockaddr_un as *const libc::sockaddr;
            if libc::connect(fd, sa, len) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut sent = 0;
            while sent < hello.len() {
                let n = libc::write(fd, hello[sent..].as_ptr().cast(), hello.len() - sent);
                if n <= 0 {
                    return Err(refused());
                }
                sent += n as usize;
            }
            let mut buf = [0u8; 1024];
            let mut got = 0;
            while got < buf.len() && !buf[..got].contains(&b'\n') {
                let n = libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got);
                if n <= 0 {
                    return Err(refused());
                }
                got += n as usize;
            }
            if !buf[..got].windows(9).any(|w| w == b"\"welcome\"") {
                return Err(refused());
            }
        }
        Ok(())
    };
    // SAFETY: the closure runs between fork and exec and only makes system calls, as the
    // child of a fork may.
    unsafe {
        cmd.pre_exec(hello_then_exec);
    }
}

/// With `--on-violation kill`: an env-stripped workload, a static program and a registered
/// process past its tenant's limit are killed within a second of appearing on the GPU, while a
/// tenant under the shim, on the GPU for the whole time, is never touched.
#[test]
fn dodgers_are_killed_within_a_second_and_tenants_are_left_alone() {
    let n = Node::up("kill", &["--on-violation", "kill"]);
    // Writes, and this, need the token.
    let (code, _) = http(&n.api, "GET", "/v1/violations", None, "");
    assert_eq!(code, 401);
    let v = n.violations();
    assert_eq!(v["config"]["action"], "kill", "{v}");
    assert_eq!(v["config"]["poll_ms"], 100, "{v}");
    assert_eq!(v["config"]["grace_ms"], 500, "{v}");

    // The well-behaved tenant: beta under the shim, 512 MiB of its 2 GiB, kernels in its turns.
    let mut beta = n
        .tenant_workload(
            "beta",
            &["--kernel-us", "300", "--seconds", "6", "--alloc-mib", "512"],
        )
        .spawn()
        .unwrap();
    on_gpu(&n, &mut beta);
    wait_for(Duration::from_secs(3), Duration::from_millis(10), || {
        let v = n.violations();
        let seen = v["processes"].as_array().unwrap().iter().any(|p| {
            p["pid"] == beta.id() && p["tenant"] == "beta" && p["memory_bytes"] == 512u64 << 20
        });
        seen.then_some(())
            .ok_or(format!("beta is not seen as registered: {v}"))
    });

    let mut latencies = Vec::new();
    let mut check = |what: &str, child: &mut Child, kind: &str| {
        let appeared = on_gpu(&n, child);
        let (status, died) = ended(child, Duration::from_secs(5));
        assert!(killed(status), "{what}: {status}");
        let v = violation_of(&n, child.id());
        assert_eq!(v["kind"], kind, "{what}: {v}");
        assert_eq!(v["action"], "killed", "{what}: {v}");
        let now = Instant::now();
        let found = at(&v, "found_ms", now).saturating_duration_since(appeared);
        let death = died.duration_since(appeared);
        eprintln!(
            "{what}: found {} ms, dead {} ms after it appeared on the GPU",
            found.as_millis(),
            death.as_millis()
        );
        latencies.push((what.to_string(), death));
        v
    };

    // A workload without the shim.
    let mut bare = n
        .bare_workload(&["--kernel-us", "300", "--seconds", "20", "--alloc-mib", "64"])
        .spawn()
        .unwrap();
    let v = check("env-stripped carve-workload", &mut bare, "unregistered");
    assert_eq!(v["tenant"], Value::Null, "{v}");
    assert_eq!(v["process"], "carve-workload", "{v}");

    // A statically linked program.
    let prog = static_program(&n.dir);
    let mut stat = Command::new(&prog)
        .arg(&n.gpu)
        .arg("100")
        .env("LD_PRELOAD", stand_artifacts().join(SHIM_LIB))
        .spawn()
        .unwrap();
    check("statically linked program", &mut stat, "unregistered");

    // Registered as alpha (2 GiB), then 3 GiB through the stand-in CUDA without the shim.
    let mut over = n.bare_workload(&[
        "--kernel-us",
        "300",
        "--seconds",
        "20",
        "--alloc-mib",
        "3072",
    ]);
    let token = std::fs::read_to_string(n.token_file("alpha")).unwrap();
    registered_as(&mut over, &n.socket(), "alpha", token.trim().to_string());
    let mut over = over.spawn().unwrap();
    let v = check("registered, past its limit", &mut over, "over-memory-limit");
    assert_eq!(v["tenant"], "alpha", "{v}");
    assert_eq!(v["limit_bytes"], 2048u64 << 20, "{v}");
    assert_eq!(v["memory_bytes"], 3072u64 << 20, "{v}");

    for (what, d) in &latencies {
        assert!(
            *d < Duration::from_secs(1),
            "{what}: killed {} ms after it appeared on the GPU",
            d.as_millis()
        );
    }

    // beta ran to its end, untouched, and was never a violation.
    let (status, _) = ended(&mut beta, Duration::from_secs(15));
    assert!(status.success(), "beta: {status}");
    let v = n.violations();
    let list = v["violations"].as_array().unwrap();
    assert_eq!(list.len(), 3, "{v}");
    assert!(list.iter().all(|x| x["pid"] != beta.id()), "{v}");
    let m = n.metrics();
    for want in [
        "carve_backstop_violations_total{gpu=\"0\",kind=\"unregistered\",action=\"killed\"} 2",
        "carve_backstop_violations_total{gpu=\"0\",kind=\"over-memory-limit\",action=\"killed\"} 1",
        "carve_backstop_polls_total{result=\"ok\"}",
    ] {
        assert!(m.contains(want), "{want} in\n{m}");
    }
    let lines: Vec<String> = n.stderr.try_iter().collect();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("carve: backstop: GPU 0: pid "))
            .count(),
        3,
        "{lines:?}"
    );
}

/// By default a violation is an event only: the process runs on, the log, the API and the
/// metrics say so; and a registered tenant is never an event, however long it runs.
#[test]
fn by_default_violations_are_logged_and_nothing_is_killed() {
    let n = Node::up("log", &[]);
    let mut alpha = n
        .tenant_workload(
            "alpha",
            &["--kernel-us", "300", "--seconds", "3", "--alloc-mib", "256"],
        )
        .spawn()
        .unwrap();
    let mut bare = n
        .bare_workload(&["--kernel-us", "300", "--seconds", "2", "--alloc-mib", "64"])
        .spawn()
        .unwrap();
    on_gpu(&n, &mut bare);
    let v = violation_of(&n, bare.id());
    assert_eq!(v["kind"], "unregistered", "{v}");
    assert_eq!(v["action"], "logged", "{v}");
    let (status, _) = ended(&mut bare, Duration::from_secs(10));
    assert!(
        status.success(),
        "the unregistered workload runs on: {status}"
    );
    let (status, _) = ended(&mut alpha, Duration::from_secs(10));
    assert!(status.success(), "alpha: {status}");
    // Seen for seconds, never reported: one violation in all (the unregistered one, once).
    let v = n.violations();
    assert_eq!(v["violations"].as_array().unwrap().len(), 1, "{v}");
    let m = n.metrics();
    assert!(
        m.contains(
            "carve_backstop_violations_total{gpu=\"0\",kind=\"unregistered\",action=\"logged\"} 1"
        ),
        "{m}"
    );
    let line = wait_for(Duration::from_secs(2), Duration::from_millis(10), || {
        n.stderr
            .try_iter()
            .find(|l| l.starts_with("carve: backstop: "))
            .ok_or_else(|| "no backstop line on stderr".to_string())
    });
    assert!(
        line.contains(&format!("pid {} (carve-workload", bare.id()))
            && line.contains("is not registered with the GPU's scheduler")
            && line.ends_with(": logged"),
        "{line}"
    );
}

/// A pod as a CDI-aware runtime starts it, running as a user of its own (65534, as a pod with
/// `runAsUser` runs): in a mount namespace, the agent's CDI spec's mounts for `tenant-alpha`
/// bound read-only where it names (`/etc/ld.so.preload` in an overlay on `/etc`, `/run` and
/// `/usr/local` fresh), nothing of carve in its environment. The shim is loaded by the preload
/// file, reads its configuration and the token, is recognised as alpha, and the process runs its
/// kernels in alpha's turns and is never a violation. (Device nodes are left out: the stand-ins
/// have none.) Needs root (skipped, saying so, without).
#[test]
fn a_pod_running_as_any_user_is_scheduled_as_its_tenant() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: a container's mounts and another user need root");
        return;
    }
    let n = Node::up("pod", &[]);
    let spec: Value = serde_json::from_str(
        &std::fs::read_to_string(n.dir.join("up/cdi/carve.dev-gpu.json")).unwrap(),
    )
    .unwrap();
    let device = spec["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "tenant-alpha")
        .unwrap_or_else(|| panic!("no tenant-alpha in {spec}"));
    let edits = &device["containerEdits"];
    // What the runtime does, as a script: the container's own /etc, /run and /usr/local, then
    // each mount bound where the spec says, read-only where it says.
    let (upper, work) = (n.dir.join("etc-upper"), n.dir.join("etc-work"));
    std::fs::create_dir_all(&upper).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let mut script = format!(
        "set -e; mount -t overlay overlay -o lowerdir=/etc,upperdir={},workdir={} /etc; \
         mount -t tmpfs tmpfs /run; mount -t tmpfs tmpfs /usr/local; ",
        upper.display(),
        work.display()
    );
    for m in edits["mounts"].as_array().unwrap() {
        let (host, at) = (
            m["hostPath"].as_str().unwrap(),
            m["containerPath"].as_str().unwrap(),
        );
        let opts: Vec<&str> = m["options"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o.as_str().unwrap())
            .collect();
        script += &format!("mkdir -p \"$(dirname {at})\"; touch {at}; mount --bind {host} {at}; ");
        if opts.contains(&"ro") {
            script += &format!("mount -o remount,bind,ro,nosuid,nodev {at}; ");
        }
    }
    script += "exec setpriv --reuid 65534 --regid 65534 --clear-groups -- \"$@\"";
    // The stand-in GPU's state is written by every process on it, whatever its user.
    Command::new("chmod")
        .args(["-R", "a+rwX"])
        .arg(&n.gpu)
        .status()
        .unwrap();
    let mut env: Vec<String> = edits["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_string())
        .collect();
    env.push(format!("LD_LIBRARY_PATH={}", n.dir.join("lib").display()));
    env.push(format!("CARVE_FAKE_CUDA_DIR={}", n.gpu.display()));
    let mut pod = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            "sh",
        ])
        .args(["env", "-i"])
        .args(&env)
        .arg(stand_artifacts().join(WORKLOAD_BIN))
        .args(["--kernel-us", "300", "--seconds", "3", "--alloc-mib", "256"])
        .args(["--json"])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The backstop sees it as alpha's, with its memory, and no violation.
    on_gpu(&n, &mut pod);
    wait_for(Duration::from_secs(3), Duration::from_millis(10), || {
        let v = n.violations();
        let seen = v["processes"].as_array().unwrap().iter().any(|p| {
            p["pid"] == pod.id() && p["tenant"] == "alpha" && p["memory_bytes"] == 256u64 << 20
        });
        seen.then_some(())
            .ok_or(format!("the pod is not seen as alpha's: {v}"))
    });
    let out = pod.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the pod: {}\n{stderr}", out.status);
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert!(report["kernels"].as_u64().unwrap() > 0, "{report}");
    // Its kernels ran in alpha's turns.
    let st = proto::status(&n.socket()).unwrap();
    let alpha = st.tenants.iter().find(|t| t.name == "alpha").unwrap();
    assert!(alpha.launches > 0, "{st:?}");
    let v = n.violations();
    assert!(v["violations"].as_array().unwrap().is_empty(), "{v}");
}
