//! `carve up` end to end: the real binary plans the example tenancy, applies node-a on a
//! simulated node, and serves. The test then plays the kubelet (Allocate over the plugin socket),
//! runs a CUDA workload with exactly what Allocate handed out (the shim, the scheduler socket and
//! the tenant's token) against the stand-in libcuda, and checks the scheduler counted it for that
//! tenant; it uses the HTTP API and metrics, injects an XID with `carve sim xid`, and stops the
//! agent with SIGINT.

use carve_agent::allocate::CONTAINER_PRELOAD;
use carve_agent::plugin::unix_channel;
use carve_agent::proto::device_plugin_client::DevicePluginClient;
use carve_agent::proto::{AllocateRequest, ContainerAllocateRequest, Empty};
use carve_sched_proto::{
    ShimConfig, ENV_FAIL, ENV_SCHED_SOCKET, ENV_SHIM_CONFIG, ENV_TENANT, FAIL_CLOSED, FAIL_OPEN,
};
use carve_test_support::cli::{assert_success, read_ready, signal};
use carve_test_support::fake_cuda::WORKLOAD_BIN;
use carve_test_support::fake_cuda::{install_libcuda, stand_artifacts, FAKE_CUDA_LIB, SHIM_LIB};
use carve_test_support::http::{get_json, http};
use carve_test_support::{fresh_dir, repo_root as repo, wait_for};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn carve() -> Command {
    Command::new(env!("CARGO_BIN_EXE_carve"))
}

#[test]
fn up_serves_allocates_and_enforces() {
    let a = stand_artifacts();
    let dir = fresh_dir("carve-up");
    install_libcuda(&dir, &a.join(FAKE_CUDA_LIB));
    let mut child = carve()
        .current_dir(repo())
        .args(["up", "--json", "--listen", "127.0.0.1:0", "--dir"])
        .arg(&dir)
        .env("CARVE_SHIM_LIB", a.join(SHIM_LIB))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let ready = read_ready(&mut child);
    let (api, lines, ready) = (ready.api, ready.rest, ready.doc);
    assert_eq!(ready["ready"], true);
    let token = std::fs::read_to_string(ready["api_token_file"].as_str().unwrap()).unwrap();
    let sockets = ready["sockets"].as_object().unwrap();
    for want in [
        "carve.dev/notebooks",
        "carve.dev/ci",
        "nvidia.com/gpu",
        "nvidia.com/mig-1g.10gb",
        "nvidia.com/mig-3g.40gb",
    ] {
        assert!(sockets.contains_key(want), "{want} in {sockets:?}");
    }

    // Play the kubelet: allocate one notebooks share.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let nb_sock = PathBuf::from(sockets["carve.dev/notebooks"].as_str().unwrap());
    let resp = rt.block_on(async {
        let mut c = DevicePluginClient::new(unix_channel(&nb_sock).await.unwrap());
        let mut s = c.list_and_watch(Empty {}).await.unwrap().into_inner();
        let list = s.message().await.unwrap().unwrap();
        assert_eq!(list.devices.len(), 4);
        c.allocate(AllocateRequest {
            container_requests: vec![ContainerAllocateRequest {
                devices_ids: vec![list.devices[0].id.clone()],
            }],
        })
        .await
        .unwrap()
        .into_inner()
    });
    let r = &resp.container_responses[0];
    // The "container": carve-workload as the mounts make it. The shim comes from the mounted
    // /etc/ld.so.preload, its configuration from the mounted file, read as the shim reads it,
    // with each container path it names mapped to the host path Allocate mounts there.
    let host = |container: &str| -> String {
        r.mounts
            .iter()
            .find(|m| m.container_path == container)
            .map(|m| m.host_path.clone())
            .unwrap_or_else(|| panic!("no mount for {container}"))
    };
    let preload = std::fs::read_to_string(host(CONTAINER_PRELOAD)).unwrap();
    let mut config =
        ShimConfig::parse(&std::fs::read_to_string(host(carve_sched_proto::SHIM_CONFIG)).unwrap())
            .unwrap();
    assert_eq!(
        (config.tenant.as_str(), config.fail.as_str()),
        ("notebooks", FAIL_CLOSED)
    );
    config.socket = host(&config.socket);
    config.token_file = config.token_file.as_deref().map(host);
    std::fs::write(dir.join("shim.conf"), config.render()).unwrap();
    let spin = Command::new(a.join(WORKLOAD_BIN))
        .args(["--kernel-us", "300", "--seconds", "0.5", "--json"])
        .env("LD_LIBRARY_PATH", dir.join("lib"))
        .env("LD_PRELOAD", host(preload.trim()))
        .env(ENV_SHIM_CONFIG, dir.join("shim.conf"))
        // The tenant's own environment lies; the configuration file wins.
        .env(ENV_SCHED_SOCKET, dir.join("no-such.sock"))
        .env(ENV_TENANT, "ci")
        .env(ENV_FAIL, FAIL_OPEN)
        .env("NVIDIA_VISIBLE_DEVICES", &r.envs["NVIDIA_VISIBLE_DEVICES"])
        .output()
        .unwrap();
    assert!(
        spin.status.success(),
        "carve-workload under the shim: {}",
        String::from_utf8_lossy(&spin.stderr)
    );
    let (code, body) = http(&api, "GET", "/v1/tenants", None, "");
    assert_eq!(code, 200);
    let t: Value = serde_json::from_str(&body).unwrap();
    let nb = t["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "notebooks")
        .unwrap();
    let st = &nb["scheduler"][0]["status"];
    assert!(
        st["launches"].as_u64().unwrap() > 0,
        "the scheduler saw notebooks: {st}"
    );
    assert!(st["gpu_time_ns"].as_u64().unwrap() > 100_000_000, "{st}");
    let ci = t["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "ci")
        .unwrap();
    assert_eq!(ci["scheduler"][0]["status"]["launches"], 0);

    // Metrics: per-tenant and allocation figures.
    let (code, m) = http(&api, "GET", "/metrics", None, "");
    assert_eq!(code, 200);
    for want in [
        "carve_allocations_total{resource=\"carve.dev/notebooks\"} 1",
        "carve_tenant_share_target{gpu=\"1\",tenant=\"notebooks\"}",
        "carve_tenant_throttled_seconds_total",
        "carve_device_healthy{",
        "carve_reconciliations_total{result=\"changed\"} 1",
        "carve_allocate_duration_seconds_bucket",
        "carve_tenant_launch_wait_seconds_bucket{le=\"0.00005\",gpu=\"1\",tenant=\"notebooks\"}",
    ] {
        assert!(m.contains(want), "{want} in\n{m}");
    }
    // The notebooks' launches waited for turns (the first one at least): counted.
    let waits: u64 = m
        .lines()
        .find(|l| {
            l.starts_with("carve_tenant_launch_wait_seconds_count{gpu=\"1\",tenant=\"notebooks\"}")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(waits >= 1, "{m}");

    // Writes need the token.
    let (code, _) = http(&api, "POST", "/v1/plan", None, "{}");
    assert_eq!(code, 401);
    let (code, _) = http(
        &api,
        "POST",
        "/v1/plan",
        Some("wrong-token-wrong-token"),
        "{}",
    );
    assert_eq!(code, 401);
    let (code, body) = http(
        &api,
        "POST",
        "/v1/plan",
        Some(token.trim()),
        "{\"nope\": 1}",
    );
    assert_eq!(code, 400, "{body}");
    // The same plan again: nothing to change, every tenant keeps its slice.
    let plan = std::fs::read_to_string(dir.join("plan.json")).unwrap();
    let (code, body) = http(&api, "POST", "/v1/plan", Some(token.trim()), &plan);
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["applied"]["ops"].as_array().unwrap().len(), 0, "{body}");
    // Another node's part (three A100s) does not fit these four H100s: bad input, nothing changed.
    let before = http(&api, "GET", "/v1/gpus", None, "").1;
    let (code, body) = http(
        &api,
        "POST",
        "/v1/plan?node=node-b",
        Some(token.trim()),
        &plan,
    );
    assert_eq!(code, 400, "{body}");
    assert_eq!(http(&api, "GET", "/v1/gpus", None, "").1, before);
    let (code, body) = http(
        &api,
        "POST",
        "/v1/plan?node=node-z",
        Some(token.trim()),
        &plan,
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("did you mean"), "{body}");

    // An XID through the simulated node reaches the API.
    let gpus = get_json(&api, "/v1/gpus");
    // GPU instances by catalog name, with the NVML constant beside it.
    let gi = &gpus["gpus"][2]["instances"][0];
    assert!(gi["profile"].as_str().unwrap().contains("g."), "{gi}");
    assert!(
        gi["nvml_profile"]
            .as_str()
            .unwrap()
            .starts_with("NVML_GPU_INSTANCE_PROFILE_"),
        "{gi}"
    );
    // The ready line says what to run next against this node, `--state` and all: run exactly
    // that (as a shell would) and see the device turn unhealthy.
    let next: Vec<&str> = ready["next"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let state = dir.join("state");
    assert!(
        next.iter()
            .any(|c| c.ends_with(&format!("--state {} status", state.display()))),
        "{next:?}"
    );
    let xid = next
        .iter()
        .find(|c| c.contains(" sim xid ") && c.ends_with(" 79"))
        .unwrap_or_else(|| panic!("no sim xid command in {next:?}"));
    let mig = xid.split(' ').rev().nth(1).unwrap().to_string();
    assert!(mig.starts_with("MIG-"), "{xid}");
    let out = Command::new("sh").args(["-c", xid]).output().unwrap();
    assert_success(&out);
    let device = |g: &Value| -> Value {
        g["gpus"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["devices"].as_array().unwrap().iter())
            .find(|d| d["id"] == mig.as_str())
            .cloned()
            .unwrap_or_else(|| panic!("{mig} is not offered: {g}"))
    };
    wait_for(Duration::from_secs(2), Duration::from_millis(10), || {
        let d = device(&get_json(&api, "/v1/gpus"));
        if d["healthy"] == false {
            return Ok(());
        }
        Err(format!("XID not seen: {d}"))
    });
    let clear = next
        .iter()
        .find(|c| c.ends_with(" --clear"))
        .unwrap_or_else(|| panic!("no --clear command in {next:?}"));
    assert_success(&Command::new("sh").args(["-c", clear]).output().unwrap());
    wait_for(Duration::from_secs(2), Duration::from_millis(10), || {
        let d = device(&get_json(&api, "/v1/gpus"));
        if d["healthy"] == true {
            return Ok(());
        }
        Err(format!("--clear not seen: {d}"))
    });
    // A misspelt device is bad input with a suggestion.
    let mut wrong = mig.clone();
    wrong.pop();
    let out = carve()
        .args(["--state"])
        .arg(dir.join("state"))
        .args(["sim", "xid", &wrong, "79"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("did you mean"));

    // Labels and CDI were written.
    let labels = std::fs::read_to_string(ready["labels_file"].as_str().unwrap()).unwrap();
    assert!(
        labels.contains("nvidia.com/mig-1g.10gb.count=3\n"),
        "{labels}"
    );
    // The shares are carve.dev/<tenant> resources, not nvidia.com/gpu replicas: GFD's sharing
    // labels say so, and carve's say what the time-sliced GPU runs.
    for want in [
        "nvidia.com/gpu.sharing-strategy=none\n",
        "nvidia.com/gpu.replicas=1\n",
        "carve.dev/gpu-1.policy=equal-share\n",
        "carve.dev/gpu-1.slice-ms=1\n",
        "carve.dev/gpu-1.shares=6\n",
    ] {
        assert!(labels.contains(want), "{want}{labels}");
    }
    let cdi: Value = serde_json::from_str(
        &std::fs::read_to_string(ready["cdi_spec"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(cdi["kind"], "carve.dev/gpu");

    // Ctrl-C: a clean stop, sockets gone.
    signal(&child, libc::SIGINT);
    let status = wait_for(Duration::from_secs(10), Duration::from_millis(20), || {
        child
            .try_wait()
            .unwrap()
            .ok_or_else(|| "carve up did not stop".to_string())
    });
    assert!(status.success(), "{status}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l.contains("\"stopped\"")), "{rest:?}");
    for s in sockets.values() {
        assert!(!Path::new(s.as_str().unwrap()).exists(), "{s} left behind");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_input_changes_nothing_and_exits_2() {
    let dir = std::env::temp_dir().join(format!("carve-up-bad-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().unwrap();
    for (args, says) in [
        (
            vec!["up", "no-such-tenancy.yaml", "--dir", d],
            "no such tenancy file",
        ),
        (vec!["up", "--node", "node-c", "--dir", d], "did you mean"),
        (vec!["up", "--listen", "somewhere", "--dir", d], "--listen"),
        (vec!["up", "--replicas", "1", "--dir", d], "--replicas"),
        (vec!["up", "--resync", "10ms", "--dir", d], "--resync"),
        (
            vec!["agent", "no-such-plan.json", "--device-plugin-dir", d],
            "no-such-plan.json",
        ),
    ] {
        let out = carve().current_dir(repo()).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert!(!dir.join("device-plugins").exists(), "nothing was started");
}

/// A folder as it is: every path under it, with the contents of its files (sockets and
/// directories by name only; SQLite's shared-memory index, which readers write, by name only).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.map(Result::unwrap) {
            let p = e.path();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(p.clone());
            }
            let shm = p.to_string_lossy().ends_with("-shm");
            let bytes = (t.is_file() && !shm).then(|| std::fs::read(&p).unwrap());
            out.insert(p, bytes);
        }
    }
    out
}

/// A start that fails: exit 3, one JSON document on stdout saying so.
fn fails(cmd: &mut Command, says: &str) -> Value {
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{cmd:?}: {err}");
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{cmd:?}: not one JSON document ({e}): {err}"));
    assert_eq!(v["kind"], "failed", "{v}");
    assert_eq!(v["exit"], 3, "{v}");
    assert!(v["error"].as_str().unwrap().contains(says), "{says}: {v}");
    v
}

/// Stops a `carve up` child with SIGINT and waits for it.
fn stop(mut child: std::process::Child) {
    signal(&child, libc::SIGINT);
    let status = wait_for(Duration::from_secs(10), Duration::from_millis(20), || {
        child
            .try_wait()
            .unwrap()
            .ok_or_else(|| "carve up did not stop".to_string())
    });
    assert!(status.success(), "{status}");
}

#[test]
fn a_second_up_in_the_same_folder_fails_and_changes_nothing() {
    let dir = fresh_dir("carve-up-twice");
    let mut first = carve()
        .current_dir(repo())
        .args(["up", "--json", "--listen", "127.0.0.1:0", "--dir"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = read_ready(&mut first);
    let before = snapshot(&dir);
    assert!(before.contains_key(&dir.join("plan.json")), "{before:?}");
    // Another tenancy, so that its plan.json would differ; its port is the running agent's.
    let tenancy = dir.with_extension("tenancy.yaml");
    let text = std::fs::read_to_string(repo().join("examples/tenancy.yaml")).unwrap();
    std::fs::write(&tenancy, text.replace("name: search", "name: lookup")).unwrap();
    fails(
        carve()
            .current_dir(repo())
            .arg("up")
            .arg(&tenancy)
            .args(["--json", "--listen", &ready.api, "--dir"])
            .arg(&dir),
        "Address already in use",
    );
    assert_eq!(snapshot(&dir), before, "the running agent's folder changed");
    // And the running agent still serves.
    assert_eq!(
        get_json(&ready.api, "/v1/gpus")["gpus"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    stop(first);
    let _ = std::fs::remove_file(&tenancy);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_failed_start_leaves_the_folders_as_they_were() {
    let base = fresh_dir("carve-up-fails");
    let dir = base.join("up");
    // A port in use (held until the end of the test).
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = held.local_addr().unwrap().to_string();
    let home = base.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let up = |extra: &[&str]| {
        let mut c = carve();
        c.current_dir(repo())
            .args(["up", "--json", "--dir"])
            .arg(&dir)
            .args(extra);
        if !extra.contains(&"--listen") {
            c.args(["--listen", "127.0.0.1:0"]);
        }
        c
            // No kubeconfig anywhere: a home without one, no cluster around.
            .env("HOME", &home)
            .env_remove("KUBECONFIG")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("CARVE_SHIM_LIB");
        c
    };
    // What is checked before anything is made: the port, the Kubernetes client, the shim named.
    fails(&mut up(&["--listen", &busy]), "Address already in use");
    assert!(!dir.exists(), "a busy port made {}", dir.display());
    fails(
        &mut up(&["--label-node", "node-a"]),
        "no Kubernetes configuration",
    );
    assert!(!dir.exists(), "--label-node made {}", dir.display());
    fails(
        &mut up(&[
            "--label-node",
            "node-a",
            "--kubeconfig",
            base.join("no-kubeconfig").to_str().unwrap(),
        ]),
        "no-kubeconfig",
    );
    assert!(!dir.exists());
    fails(
        up(&[]).env("CARVE_SHIM_LIB", base.join("no-shim.so")),
        "CARVE_SHIM_LIB",
    );
    assert!(!dir.exists());
    // After the preflight: the CDI spec cannot be written (its folder is a file). The GPUs of
    // the new simulated node were laid out by then; all of it goes again.
    std::fs::write(base.join("a-file"), "").unwrap();
    let cdi = base.join("a-file/cdi");
    fails(
        &mut up(&["--cdi-dir", cdi.to_str().unwrap()]),
        "cannot write",
    );
    assert!(!dir.exists(), "{:?}", snapshot(&dir));
    // A folder with a node in it already: what the failed start wrote is put back (plan.json,
    // labels, CDI spec, token); the node's state records the reconcile, which ran.
    assert_success(&up(&["--run-for", "10ms"]).output().unwrap());
    let before = snapshot(&dir);
    // Another tenancy, whose plan.json differs.
    let other = base.join("tenancy.yaml");
    let text = std::fs::read_to_string(repo().join("examples/tenancy.yaml")).unwrap();
    std::fs::write(&other, text.replace("name: search", "name: lookup")).unwrap();
    fails(
        &mut up(&[other.to_str().unwrap(), "--cdi-dir", cdi.to_str().unwrap()]),
        "cannot write",
    );
    let state = dir.join("state");
    let outside = |m: &BTreeMap<PathBuf, Option<Vec<u8>>>| -> BTreeMap<PathBuf, Option<Vec<u8>>> {
        m.iter()
            .filter(|(p, _)| !p.starts_with(&state))
            .map(|(p, v)| (p.clone(), v.clone()))
            .collect()
    };
    assert_eq!(outside(&snapshot(&dir)), outside(&before));
    assert!(state.join("api-token").exists());

    // `carve agent` the same: a busy port makes no state database, token or folder.
    let agent_state = base.join("agent-state");
    fails(
        carve()
            .args(["agent", "--json", "--listen", &busy, "--state"])
            .arg(&agent_state)
            .arg("--device-plugin-dir")
            .arg(base.join("dp"))
            .arg("--cdi-dir")
            .arg(base.join("cdi"))
            .arg("--run-dir")
            .arg(base.join("run")),
        "Address already in use",
    );
    for p in ["agent-state", "dp", "cdi", "run"] {
        assert!(!base.join(p).exists(), "{p} was made");
    }
    // And NVML asked for where there is none: a failure too, nothing made.
    fails(
        carve()
            .args([
                "--backend",
                "nvml",
                "agent",
                "--json",
                "--listen",
                "127.0.0.1:0",
            ])
            .arg("--state")
            .arg(&agent_state)
            .arg("--device-plugin-dir")
            .arg(base.join("dp"))
            .env("CARVE_NVML_LIB", base.join("no-libnvidia-ml.so.1")),
        "NVML",
    );
    for p in ["agent-state", "dp"] {
        assert!(!base.join(p).exists(), "{p} was made");
    }
    drop(held);
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn without_the_shim_no_time_sliced_share_is_offered() {
    // A carve with no shim beside it (cargo's target directory has one): a hard link elsewhere.
    let base = fresh_dir("carve-up-noshim");
    let bin = base.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let exe = bin.join("carve");
    if std::fs::hard_link(env!("CARGO_BIN_EXE_carve"), &exe).is_err() {
        std::fs::copy(env!("CARGO_BIN_EXE_carve"), &exe).unwrap();
    }
    let up = |json: bool| {
        let mut c = Command::new(&exe);
        c.current_dir(repo())
            .args([
                "up",
                "--listen",
                "127.0.0.1:0",
                "--run-for",
                "10ms",
                "--dir",
            ])
            .arg(base.join("up"))
            .env_remove("CARVE_SHIM_LIB");
        if json {
            c.arg("--json");
        }
        c.output().unwrap()
    };
    let out = up(true);
    assert_success(&out);
    let ready: Value = serde_json::from_slice(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap()
            .as_bytes(),
    )
    .unwrap();
    let sockets = ready["sockets"].as_object().unwrap();
    for shared in ["carve.dev/notebooks", "carve.dev/ci"] {
        assert!(
            !sockets.contains_key(shared),
            "{shared} offered: {sockets:?}"
        );
    }
    // MIG devices and whole GPUs are.
    assert!(
        sockets.contains_key("nvidia.com/mig-1g.10gb"),
        "{sockets:?}"
    );
    assert!(sockets.contains_key("nvidia.com/gpu"), "{sockets:?}");
    let warnings = ready["warnings"].to_string();
    assert!(warnings.contains("not offered"), "{warnings}");
    assert!(warnings.contains("cargo build -p carve-shim"), "{warnings}");
    assert!(warnings.contains("deploy/install.sh"), "{warnings}");
    // For people: the GPU says why it offers nothing, and the warning says what to build.
    let out = up(false);
    assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("time-sliced (no shim)"), "{text}");
    assert!(
        text.contains("warning: cannot find libcarve_shim.so"),
        "{text}"
    );
    assert!(text.contains("cargo build -p carve-shim"), "{text}");
    let _ = std::fs::remove_dir_all(&base);
}
