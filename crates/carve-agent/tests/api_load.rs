//! Load and fault tests of the agent's HTTP API, with the agent's in-process schedulers beside
//! it: 1,100 idle connections, slow headers and slow bodies (slowloris), large bodies, the plan
//! behind the token. The API and the schedulers stay up: `/healthz` answers and a time-sliced
//! tenant still gets turns. Each prints what it measured (`--nocapture`).

use carve_agent::agent::{self, GpuNode, Handle};
use carve_agent::api::{exposure_warning, ApiLimits};
use carve_apply::Desired;
use carve_model::Catalog;
use carve_sched_proto::{self as proto, Reply, Request};
use carve_simnode::SimBackend;
use carve_state::Store;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const TENANCY: &str = r#"
fleet:
  - node: k1
    platform: kubernetes
    gpus: [1xH100-80GB]
tenants:
  - name: notebooks
    workload: interactive
    memory_gb: 8
    replicas: 2
  - name: ci
    workload: dev
    memory_gb: 8
    replicas: 2
"#;

const TOKEN: &str = "api-token-0123456789abcdef";

/// The tests count the process's threads and descriptors: one at a time.
static ONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Setup {
    agent: Handle,
    api: SocketAddr,
    _tmp: tempfile::TempDir,
}

async fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let state = dir.join("state");
    let catalog = Catalog::embedded();
    let tenancy = carve_plan::parse(TENANCY, &catalog).unwrap();
    let plan = carve_plan::plan(&tenancy, &catalog);
    let (sim, _) = SimBackend::open(
        Store::open(&state).unwrap(),
        catalog.clone(),
        Some("1xH100-80GB"),
    )
    .unwrap();
    let shim = dir.join("libcarve_shim.so");
    std::fs::write(&shim, b"").unwrap();
    let cfg = agent::AgentConfig {
        listen: Some(([127, 0, 0, 1], 0).into()),
        api_token: TOKEN.into(),
        shim: Some(shim),
        ..agent::AgentConfig::new(
            dir.join("device-plugins"),
            dir.join("run"),
            Desired::Plan {
                plan: Box::new(plan),
                node: "k1".into(),
                source: "plan.json".into(),
            },
        )
    };
    let node = GpuNode {
        backend: Box::new(sim),
        store: Store::open(&state).unwrap(),
        catalog,
    };
    let agent = agent::start(cfg, node).await.expect("agent starts");
    let api = agent.api.expect("the API listens");
    Setup {
        agent,
        api,
        _tmp: tmp,
    }
}

/// One request on a fresh connection: (status, body). `None`: no answer within 2 s.
fn http(
    api: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Option<(u16, String)> {
    request(api, method, path, token, body.len(), body)
}

/// A request that announces `length` bytes of body and sends `body`.
fn request(
    api: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    length: usize,
    body: &str,
) -> Option<(u16, String)> {
    let mut c = TcpStream::connect(api).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {length}\r\nConnection: close\r\n\r\n{body}"
    );
    c.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    c.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Some((code, body))
}

/// A time-sliced tenant of the agent's scheduler says hello with its token and gets a turn;
/// returns how long that took.
fn tenant_served(h: &Handle) -> Duration {
    let inv = h.state.inventory();
    let g = inv.shared.first().expect("a time-sliced GPU");
    let tenant = g.schedule.tenants[0].name.clone();
    let host = h.state.host_paths();
    let socket: PathBuf = host.sched_sockets[&g.gpu_index].clone();
    let token = std::fs::read_to_string(&host.tokens[&tenant]).unwrap();
    let t0 = Instant::now();
    let mut c = proto::Client::connect(&socket).expect("the scheduler takes connections");
    let r = c
        .call(&Request::Hello {
            version: proto::VERSION,
            tenant,
            token: Some(token.trim().into()),
        })
        .unwrap();
    assert!(matches!(r, Reply::Welcome { .. }), "{r:?}");
    let r = c.call(&Request::Acquire).unwrap();
    assert!(matches!(r, Reply::Grant { .. }), "{r:?}");
    t0.elapsed()
}

fn proc_status(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_take_neither_the_api_nor_the_schedulers_down() {
    let _one = ONE.lock().await;
    let s = setup().await;
    let api = s.api;
    let (t0, m0, f0) = (proc_status("Threads:"), proc_status("VmRSS:"), fds());
    let idle: Vec<TcpStream> = (0..1100)
        .map(|_| TcpStream::connect(api).unwrap())
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (t1, m1, f1) = (proc_status("Threads:"), proc_status("VmRSS:"), fds());
    let held = f1 - f0 - idle.len();
    let t = Instant::now();
    let health = http(api, "GET", "/healthz", None, "");
    let health_took = t.elapsed();
    let h = &s.agent;
    let took = tenant_served(h);
    println!(
        "1100 idle API connections: the agent holds {held} of them (cap {}); threads {t0} -> \
         {t1}, RSS {m0} -> {m1} KiB; /healthz {:?} in {health_took:?}; a time-sliced tenant \
         served in {took:?}",
        ApiLimits::default().max_connections,
        health.as_ref().map(|h| h.0)
    );
    assert_eq!(health.map(|h| h.0), Some(200));
    assert!(held <= ApiLimits::default().max_connections + 4, "{held}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    drop(idle);
    s.agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_slow_bodies_and_large_bodies_are_cut_off() {
    let _one = ONE.lock().await;
    let s = setup().await;
    let api = s.api;
    let limits = ApiLimits::default();
    // Slowloris: headers a byte at a time, and a body that stops halfway.
    let slow_headers = std::thread::spawn(move || {
        let mut c = TcpStream::connect(api).unwrap();
        let t0 = Instant::now();
        let _ = c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n");
        while t0.elapsed() < Duration::from_secs(20) {
            if c.write_all(b"X").is_err() {
                break;
            }
            c.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let mut b = [0u8; 512];
            match c.read(&mut b) {
                Ok(0) => break,
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => break,
            }
        }
        t0.elapsed()
    });
    let slow_body = std::thread::spawn(move || {
        let mut c = TcpStream::connect(api).unwrap();
        let t0 = Instant::now();
        let head = format!(
            "POST /v1/health HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Length: 100\r\n\r\n{{\"uuid\":"
        );
        c.write_all(head.as_bytes()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
        (t0.elapsed(), out)
    });
    // Meanwhile the API answers and the tenant is served.
    for _ in 0..5 {
        assert_eq!(
            http(api, "GET", "/healthz", None, "").map(|h| h.0),
            Some(200)
        );
        tenant_served(&s.agent);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A large body: refused unread, without the token and with it.
    let big = limits.max_body + 1;
    let t = Instant::now();
    let unauth = request(api, "POST", "/v1/plan", None, big, "").map(|h| h.0);
    let authed = request(api, "POST", "/v1/plan", Some(TOKEN), big, "").map(|h| h.0);
    println!(
        "a {big} byte body announced: {unauth:?} without the token, {authed:?} with it, in {:?}",
        t.elapsed()
    );
    assert_eq!(unauth, Some(401));
    assert_eq!(authed, Some(413));
    let headers_took = slow_headers.join().unwrap();
    let (body_took, body_reply) = slow_body.join().unwrap();
    println!(
        "slow headers cut off after {headers_took:?} (limit {:?}); a stalled body answered after \
         {body_took:?} (limit {:?}): {}",
        limits.headers_within,
        limits.body_within,
        body_reply.lines().next().unwrap_or("")
    );
    assert!(
        headers_took < limits.headers_within + Duration::from_secs(2),
        "{headers_took:?}"
    );
    assert!(
        body_took < limits.body_within + Duration::from_secs(2),
        "{body_took:?}"
    );
    assert!(body_reply.starts_with("HTTP/1.1 408"), "{body_reply}");
    s.agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plan_is_behind_the_token() {
    let _one = ONE.lock().await;
    let s = setup().await;
    assert_eq!(
        http(s.api, "GET", "/v1/plan", None, "").map(|h| h.0),
        Some(401)
    );
    let wrong = http(
        s.api,
        "GET",
        "/v1/plan",
        Some("api-token-0123456789abcdeX"),
        "",
    );
    assert_eq!(wrong.map(|h| h.0), Some(401));
    let (code, body) = http(s.api, "GET", "/v1/plan", Some(TOKEN), "").unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"node\":\"k1\""), "{body}");
    // What stays open: health, the GPUs.
    assert_eq!(
        http(s.api, "GET", "/v1/gpus", None, "").map(|h| h.0),
        Some(200)
    );
    s.agent.shutdown().await;
}

#[test]
fn listening_beyond_loopback_is_warned_about() {
    assert_eq!(exposure_warning(([127, 0, 0, 1], 9450).into()), None);
    assert_eq!(exposure_warning("[::1]:9450".parse().unwrap()), None);
    let w = exposure_warning(([0, 0, 0, 0], 9450).into()).unwrap();
    assert!(
        w.contains("0.0.0.0:9450") && w.contains("not loopback"),
        "{w}"
    );
    assert!(exposure_warning(([10, 1, 2, 3], 9450).into()).is_some());
}
