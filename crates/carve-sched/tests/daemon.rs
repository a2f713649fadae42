//! The daemon through its socket, with test clients playing the shim's side of the protocol:
//! identity checks (by token, and by user from another user's process), the socket's mode,
//! shares under fixed and equal share, GPU time checked against the turns granted, memory
//! limits, status, disconnects, and a client that sends a request line without end.

use carve_sched::config::{DaemonConfig, Identity, TenantConfig};
use carve_sched::server::Server;
use carve_sched_proto::{self as proto, Reply, Request};
use carve_timeslice::{Policy, ScheduledTenant, Settings};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn sock(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("carve-sched-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d.join("sched.sock")
}

fn token(i: usize) -> String {
    format!("token-{i:02}-0123456789abcdef")
}

fn config(
    policy: Policy,
    shares: &[Option<f64>],
    slice_ms: u32,
    mem_mib: Option<f64>,
) -> DaemonConfig {
    DaemonConfig {
        settings: Settings {
            policy,
            slice_ns: Some(carve_timeslice::slice_ns_from_ms(slice_ms)),
            ..Settings::default()
        },
        tenants: shares
            .iter()
            .enumerate()
            .map(|(i, s)| TenantConfig {
                tenant: ScheduledTenant {
                    name: format!("t{i}"),
                    share: *s,
                    memory_limit_bytes: mem_mib.map(|m| (m * 1024.0 * 1024.0) as u64),
                },
                identity: Identity {
                    token: Some(token(i)),
                    ..Identity::default()
                },
            })
            .collect(),
        access: None,
    }
}

/// A test client: the protocol's own client, failing the test on transport errors.
struct Client(proto::Client);

impl Client {
    fn connect(path: &Path) -> Client {
        Client(proto::Client::connect(path).unwrap())
    }

    fn call(&mut self, req: &Request) -> Reply {
        self.0.call(req).unwrap_or_else(|e| panic!("{req:?}: {e}"))
    }

    fn hello(path: &Path, tenant: &str, tok: Option<String>) -> (Client, Reply) {
        let mut c = Client::connect(path);
        let r = c.call(&Request::Hello {
            version: proto::VERSION,
            tenant: tenant.into(),
            token: tok,
        });
        (c, r)
    }
}

#[test]
fn unknown_and_unproven_clients_are_refused() {
    let p = sock("ident");
    let _s = Server::start(config(Policy::EqualShare, &[None, None], 2, None), &p).unwrap();
    // An unknown name and an unproven claim are refused alike, naming no tenant there is.
    let (_, unknown) = Client::hello(&p, "t9", Some(token(0)));
    let Reply::Error { message: unknown } = unknown else {
        panic!("{unknown:?}")
    };
    assert!(
        unknown.contains("not recognised as tenant 't9'"),
        "{unknown}"
    );
    assert!(
        !unknown.contains("t0") && !unknown.contains("t1"),
        "{unknown}"
    );
    let (_, r) = Client::hello(&p, "t0", Some(token(1)));
    assert!(
        matches!(r, Reply::Error { ref message } if message.contains("not recognised")),
        "{r:?}"
    );
    let (_, r) = Client::hello(&p, "t0", None);
    assert!(matches!(r, Reply::Error { .. }), "{r:?}");
    let (mut c, r) = Client::hello(&p, "t1", Some(token(1)));
    assert!(matches!(r, Reply::Welcome { .. }), "{r:?}");
    // A second hello, or a request before hello, is an error.
    assert!(matches!(
        c.call(&Request::Hello {
            version: 1,
            tenant: "t1".into(),
            token: Some(token(1))
        }),
        Reply::Error { .. }
    ));
    let mut anon = Client::connect(&p);
    assert!(matches!(anon.call(&Request::Acquire), Reply::Error { .. }));
    // The socket is owner-only.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

/// The pids a scheduler shows as registered (what the agent's backstop checks the GPU's
/// processes against) are the kernel's peer credentials of the clients it welcomed, for as long
/// as they stay connected; a refused client is never among them.
#[test]
fn registered_pids_are_the_welcomed_clients_peers() {
    let p = sock("pids");
    let s = Server::start(config(Policy::EqualShare, &[None, None], 2, None), &p).unwrap();
    let me = std::process::id();
    let pids = |s: &Server| s.registered_pids();
    assert_eq!(pids(&s), [("t0".into(), vec![]), ("t1".into(), vec![])]);
    let (_refused, r) = Client::hello(&p, "t1", Some(token(0)));
    assert!(matches!(r, Reply::Error { .. }), "{r:?}");
    let (a, r) = Client::hello(&p, "t0", Some(token(0)));
    assert!(matches!(r, Reply::Welcome { .. }), "{r:?}");
    let (b, r) = Client::hello(&p, "t0", Some(token(0)));
    assert!(matches!(r, Reply::Welcome { .. }), "{r:?}");
    assert_eq!(
        pids(&s),
        [("t0".into(), vec![me, me]), ("t1".to_string(), vec![])]
    );
    drop(a);
    drop(b);
    let t0 = std::time::Instant::now();
    while !pids(&s)[0].1.is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", pids(&s));
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Holds the GPU (as kernels would) until `t`, without taking a CPU from the other clients.
fn sleep_until(t: u64) {
    let now = proto::now_ns();
    if t > now {
        std::thread::sleep(Duration::from_nanos(t - now));
    }
}

/// The share tests run one at a time: they measure time.
static TIMING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A busy tenant: acquire, hold the GPU for the whole grant (as kernels would), release.
fn busy(path: PathBuf, i: usize, seconds: f64) -> u64 {
    let (mut c, r) = Client::hello(&path, &format!("t{i}"), Some(token(i)));
    assert!(matches!(r, Reply::Welcome { .. }));
    let end = proto::now_ns() + (seconds * 1e9) as u64;
    let mut held = 0u64;
    while proto::now_ns() < end {
        let Reply::Grant { until_ns } = c.call(&Request::Acquire) else {
            panic!("no grant")
        };
        let start = proto::now_ns();
        sleep_until(until_ns);
        let used = proto::now_ns() - start;
        held += used;
        c.call(&Request::Release {
            used_ns: used,
            pending: true,
        });
    }
    held
}

fn shares(policy: Policy, targets: &[Option<f64>]) -> (Vec<f64>, Vec<f64>) {
    let _one = TIMING.lock().unwrap_or_else(|p| p.into_inner());
    let p = sock(&format!("share-{}", targets.len()));
    let s = Server::start(config(policy, targets, 2, None), &p).unwrap();
    let secs = 1.5;
    let hs: Vec<_> = (0..targets.len())
        .map(|i| {
            let p = p.clone();
            std::thread::spawn(move || busy(p, i, secs))
        })
        .collect();
    let held: Vec<u64> = hs.into_iter().map(|h| h.join().unwrap()).collect();
    let total: u64 = held.iter().sum();
    let st = s.status();
    let reported: Vec<f64> = st.tenants.iter().map(|t| t.gpu_time_ns as f64).collect();
    let rs: f64 = reported.iter().sum();
    (
        held.iter().map(|h| *h as f64 / total as f64).collect(),
        reported.iter().map(|r| r / rs).collect(),
    )
}

#[test]
fn fixed_shares_are_kept() {
    let (got, reported) = shares(Policy::FixedShare, &[Some(0.5), Some(0.3), Some(0.2)]);
    for (g, want) in got.iter().zip([0.5, 0.3, 0.2]) {
        assert!((g - want).abs() < 0.05, "{got:?}");
    }
    for (g, r) in got.iter().zip(&reported) {
        assert!(
            (g - r).abs() < 0.03,
            "client {got:?} vs daemon {reported:?}"
        );
    }
}

#[test]
fn equal_share_splits_evenly() {
    let (got, _) = shares(Policy::EqualShare, &[None, None, None, None]);
    for g in &got {
        assert!((g - 0.25).abs() < 0.05, "{got:?}");
    }
}

#[test]
fn memory_limits_hold_across_a_tenants_processes() {
    let p = sock("mem");
    let s = Server::start(config(Policy::BestEffort, &[None], 2, Some(100.0)), &p).unwrap();
    let mib = 1024 * 1024;
    let (mut a, _) = Client::hello(&p, "t0", Some(token(0)));
    let (mut b, _) = Client::hello(&p, "t0", Some(token(0)));
    assert!(matches!(
        a.call(&Request::Alloc { bytes: 60 * mib }),
        Reply::AllocOk { .. }
    ));
    assert!(matches!(
        b.call(&Request::Alloc { bytes: 50 * mib }),
        Reply::AllocDenied { .. }
    ));
    assert!(matches!(
        b.call(&Request::Alloc { bytes: 40 * mib }),
        Reply::AllocOk { .. }
    ));
    assert_eq!(s.status().tenants[0].memory_used_mib, 100.0);
    // Freeing more than it holds gives back only its own.
    assert!(matches!(
        b.call(&Request::Free { bytes: 90 * mib }),
        Reply::Freed { .. }
    ));
    assert_eq!(s.status().tenants[0].memory_used_mib, 60.0);
    // A process that goes away gives its memory back.
    drop(a);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(s.status().tenants[0].memory_used_mib, 0.0);
    assert_eq!(s.status().tenants[0].clients, 1);
}

#[test]
fn a_holder_that_vanishes_does_not_block_the_others() {
    let p = sock("vanish");
    let _s = Server::start(config(Policy::BestEffort, &[None, None], 5, None), &p).unwrap();
    let (mut a, _) = Client::hello(&p, "t0", Some(token(0)));
    let (mut b, _) = Client::hello(&p, "t1", Some(token(1)));
    assert!(matches!(a.call(&Request::Acquire), Reply::Grant { .. }));
    drop(a);
    let t0 = proto::now_ns();
    assert!(matches!(b.call(&Request::Acquire), Reply::Grant { .. }));
    assert!(proto::now_ns() - t0 < 200_000_000);
}

/// A tenant that behaves like the shim: renews at the end of each grant, and when told to yield
/// drains (here: a random overrun of up to `overrun_us`) before releasing.
fn shim_like(path: PathBuf, i: usize, seconds: f64, overrun_us: u64) -> u64 {
    let (mut c, r) = Client::hello(&path, &format!("t{i}"), Some(token(i)));
    assert!(matches!(r, Reply::Welcome { .. }));
    let end = proto::now_ns() + (seconds * 1e9) as u64;
    let mut held = 0u64;
    let mut seed = 0x1234_5678u64 + i as u64;
    let Reply::Grant { until_ns } = c.call(&Request::Acquire) else {
        panic!()
    };
    let mut until = until_ns;
    let mut start = proto::now_ns();
    while proto::now_ns() < end {
        sleep_until(until);
        let used = proto::now_ns() - start;
        match c.call(&Request::Renew { used_ns: used }) {
            Reply::Grant { until_ns } => {
                held += used;
                start = proto::now_ns();
                until = until_ns;
            }
            Reply::Yield => {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let drain = (seed % (overrun_us + 1)) * 1000;
                sleep_until(proto::now_ns() + drain);
                let used = proto::now_ns() - start;
                held += used;
                c.call(&Request::Release {
                    used_ns: used,
                    pending: true,
                });
                let Reply::Grant { until_ns } = c.call(&Request::Acquire) else {
                    panic!()
                };
                start = proto::now_ns();
                until = until_ns;
            }
            other => panic!("{other:?}"),
        }
    }
    held
}

#[test]
fn shares_hold_with_renewals_and_overruns() {
    let _one = TIMING.lock().unwrap_or_else(|p| p.into_inner());
    let targets = [0.4, 0.3, 0.2, 0.1];
    let p = sock("renew");
    let _s = Server::start(config(Policy::FixedShare, &targets.map(Some), 2, None), &p).unwrap();
    let hs: Vec<_> = (0..targets.len())
        .map(|i| {
            let p = p.clone();
            std::thread::spawn(move || shim_like(p, i, 2.0, 3000))
        })
        .collect();
    let held: Vec<u64> = hs.into_iter().map(|h| h.join().unwrap()).collect();
    let total: u64 = held.iter().sum();
    let got: Vec<f64> = held.iter().map(|h| *h as f64 / total as f64).collect();
    for (g, t) in got.iter().zip(targets) {
        assert!((g - t).abs() < 0.05, "{got:?}");
    }
}

#[test]
fn a_request_line_without_end_is_cut_off_and_the_others_are_served() {
    let p = sock("long");
    let s = Server::start(config(Policy::BestEffort, &[None, None], 2, None), &p).unwrap();
    // A client that identifies itself, then sends a request that never ends.
    let mut flood = UnixStream::connect(&p).unwrap();
    flood
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut replies = BufReader::new(flood.try_clone().unwrap());
    let hello = proto::encode(&Request::Hello {
        version: proto::VERSION,
        tenant: "t0".into(),
        token: Some(token(0)),
    });
    flood.write_all(hello.as_bytes()).unwrap();
    let mut welcome = String::new();
    replies.read_line(&mut welcome).unwrap();
    assert!(welcome.contains("welcome"), "{welcome}");
    let chunk = vec![b' '; 64 * 1024];
    let mut sent = 0usize;
    // Half the limit: the daemon waits for the rest of the line, serving the others meanwhile.
    while sent < proto::MAX_LINE / 2 {
        flood.write_all(&chunk).unwrap();
        sent += chunk.len();
    }
    let (mut other, r) = Client::hello(&p, "t1", Some(token(1)));
    assert!(matches!(r, Reply::Welcome { .. }), "{r:?}");
    assert!(matches!(other.call(&Request::Acquire), Reply::Grant { .. }));
    assert_eq!(s.status().tenants[0].clients, 1);
    // Past the limit the daemon hangs up: what it took (so what it may hold for the line) stays
    // near MAX_LINE (plus the sockets' buffers), however much the client goes on sending.
    let offered = 64 * proto::MAX_LINE;
    while sent < offered {
        match flood.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    assert!(
        sent < proto::MAX_LINE + 8 * 1024 * 1024,
        "the daemon took {sent} bytes of one request line"
    );
    let mut refusal = String::new();
    replies.read_line(&mut refusal).unwrap();
    let refusal: Reply = serde_json::from_str(&refusal).unwrap();
    assert!(
        matches!(refusal, Reply::Error { ref message } if message.contains("longer than")),
        "{refusal:?}"
    );
    // Its client is gone; the others are still served.
    carve_test_support::wait_for(
        Duration::from_secs(5),
        Duration::from_millis(10),
        || match s.status().tenants[0].clients {
            0 => Ok(()),
            n => Err(format!(
                "the cut-off client is still counted: {n} client(s) of t0"
            )),
        },
    );
    assert!(matches!(
        other.call(&Request::Release {
            used_ns: 1,
            pending: false
        }),
        Reply::Yield
    ));
    let (_, r) = Client::hello(&p, "t0", Some(token(0)));
    assert!(matches!(r, Reply::Welcome { .. }), "{r:?}");
}

/// A tenant that holds whole turns and reports `report(held)` for each.
fn reporting(path: PathBuf, i: usize, seconds: f64, report: fn(u64) -> u64) -> u64 {
    let (mut c, r) = Client::hello(&path, &format!("t{i}"), Some(token(i)));
    assert!(matches!(r, Reply::Welcome { .. }));
    let end = proto::now_ns() + (seconds * 1e9) as u64;
    let mut held = 0u64;
    while proto::now_ns() < end {
        let Reply::Grant { until_ns } = c.call(&Request::Acquire) else {
            panic!("no grant")
        };
        let start = proto::now_ns();
        sleep_until(until_ns);
        let used = proto::now_ns() - start;
        held += used;
        c.call(&Request::Release {
            used_ns: report(used),
            pending: true,
        });
    }
    held
}

#[test]
fn reported_gpu_time_is_checked_against_the_turns() {
    let _one = TIMING.lock().unwrap_or_else(|p| p.into_inner());
    let p = sock("cheat");
    let s = Server::start(config(Policy::EqualShare, &[None, None], 2, None), &p).unwrap();
    // t0 reports no GPU time for whole turns; t1 reports truly.
    let p0 = p.clone();
    let cheat = std::thread::spawn(move || reporting(p0, 0, 1.5, |_| 0));
    let honest = reporting(p.clone(), 1, 1.5, |u| u);
    let cheat = cheat.join().unwrap();
    let st = s.status();
    let charged = [st.tenants[0].gpu_time_ns, st.tenants[1].gpu_time_ns];
    println!(
        "t0 (reports 0) held {cheat} ns, charged {}; t1 held {honest} ns, charged {}",
        charged[0], charged[1]
    );
    // Charged the time it held its turns, as the honest one is; so it gets no more turns.
    assert!(
        charged[0] as f64 >= 0.95 * cheat as f64,
        "{charged:?} vs {cheat}"
    );
    assert!(
        charged[1] as f64 >= 0.95 * honest as f64,
        "{charged:?} vs {honest}"
    );
    let split = cheat as f64 / (cheat + honest) as f64;
    assert!(
        (split - 0.5).abs() < 0.1,
        "the under-reporter got {split} of the GPU"
    );

    // A report of more than the time since its turn began counts for that time only, and only
    // for its own tenant.
    let (mut c, _) = Client::hello(&p, "t0", Some(token(0)));
    let before = s.status();
    let t0 = proto::now_ns();
    assert!(matches!(c.call(&Request::Acquire), Reply::Grant { .. }));
    c.call(&Request::Release {
        used_ns: u64::MAX,
        pending: false,
    });
    // Late, about the same (closed) turn: again at most the time since it began.
    c.call(&Request::Release {
        used_ns: u64::MAX,
        pending: false,
    });
    let since = proto::now_ns() - t0;
    let after = s.status();
    let more = after.tenants[0].gpu_time_ns - before.tenants[0].gpu_time_ns;
    assert!(more <= since, "charged {more} ns in {since} ns");
    assert_eq!(after.tenants[1].gpu_time_ns, before.tenants[1].gpu_time_ns);
    // The daemon is still there for everyone.
    let (mut other, r) = Client::hello(&p, "t1", Some(token(1)));
    assert!(matches!(r, Reply::Welcome { .. }), "{r:?}");
    assert!(matches!(other.call(&Request::Acquire), Reply::Grant { .. }));
}

#[test]
fn the_sockets_mode_follows_how_tenants_are_recognised() {
    use carve_sched::config::SocketAccess;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    // Tokens only: owner-only (the token files are).
    let mut cfg = config(Policy::BestEffort, &[None], 2, None);
    assert_eq!(cfg.socket_access(), SocketAccess::Owner);
    let p = sock("mode-token");
    drop(Server::start(cfg.clone(), &p).unwrap());
    // By user: everyone may connect; the peer's credentials decide.
    cfg.tenants[0].identity.uids = vec![65534];
    assert_eq!(cfg.socket_access(), SocketAccess::Everyone);
    let s = Server::start(cfg.clone(), &p).unwrap();
    assert_eq!(mode(&p), 0o666);
    drop(s);
    // Set: a group.
    // SAFETY: getgid has no preconditions.
    let gid = unsafe { libc::getgid() };
    cfg.access = Some(SocketAccess::Group(gid));
    let s = Server::start(cfg, &p).unwrap();
    assert_eq!(mode(&p), 0o660);
    assert_eq!(std::fs::metadata(&p).unwrap().gid(), gid);
    drop(s);
    // A regular file at the socket's path is never removed.
    std::fs::write(&p, "keep me").unwrap();
    let e = Server::start(config(Policy::BestEffort, &[None], 2, None), &p).err();
    assert!(
        matches!(e, Some(carve_sched::server::StartError::NotASocket { .. })),
        "{e:?}"
    );
    assert_eq!(std::fs::read_to_string(&p).unwrap(), "keep me");
}

/// Another user's process says hello (root only: the test runs itself as uid 65534).
#[test]
fn a_tenant_recognised_by_user_connects_from_its_own_user() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to run a process as another user");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let p = sock("by-user");
    let dir = p.parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cfg = config(Policy::BestEffort, &[None, None], 2, None);
    cfg.tenants[0].identity = Identity {
        uids: vec![65534],
        ..Identity::default()
    };
    let s = Server::start(cfg, &p).unwrap();
    let hello = |tenant: &str| -> String {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "hello_from_this_process",
                "--nocapture",
            ])
            .env("CARVE_HELLO_SOCKET", &p)
            .env("CARVE_HELLO_TENANT", tenant)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .find(|l| l.starts_with("reply "))
            .unwrap_or_else(|| panic!("no reply: {text} {}", String::from_utf8_lossy(&out.stderr)))
            .to_string()
    };
    let as_t0 = hello("t0");
    assert!(as_t0.contains("welcome"), "{as_t0}");
    // Its user proves t0, not t1 (whose token it does not have).
    let as_t1 = hello("t1");
    assert!(as_t1.contains("not recognised"), "{as_t1}");
    drop(s);
}

/// Run by `a_tenant_recognised_by_user_connects_from_its_own_user` as another user.
#[test]
#[ignore = "run by another test as another user"]
fn hello_from_this_process() {
    let (Ok(socket), Ok(tenant)) = (
        std::env::var("CARVE_HELLO_SOCKET"),
        std::env::var("CARVE_HELLO_TENANT"),
    ) else {
        return;
    };
    let reply = proto::Client::connect(Path::new(&socket)).and_then(|mut c| {
        c.call(&Request::Hello {
            version: proto::VERSION,
            tenant,
            token: None,
        })
    });
    println!(
        "reply {}",
        serde_json::to_string(&reply.map_err(|e| e.to_string())).unwrap()
    );
}
