//! Allocate latency under concurrency: an agent on a simulated 8-GPU node (MIG slices and
//! time-sliced shares), 100 concurrent callers, each with its own connection to the plugin
//! socket, as many kubelet-side callers would. Prints p50/p99/max for Allocate on MIG devices and
//! on time-sliced shares, and for the empty `GetDevicePluginOptions` call measured in the same run
//! (the baseline: what gRPC over a unix socket costs by itself). Target: Allocate p99 < 1 ms.
//!
//! `cargo run --release -p carve-agent --example bench_allocate [-- CALLERS CALLS_EACH]`

use carve_agent::agent::{self, GpuNode};
use carve_agent::plugin::unix_channel;
use carve_agent::proto::device_plugin_client::DevicePluginClient;
use carve_agent::proto::{AllocateRequest, ContainerAllocateRequest, Empty};
use carve_apply::Desired;
use carve_model::Catalog;
use carve_simnode::SimBackend;
use carve_state::Store;
use std::time::{Duration, Instant};

const TENANCY: &str = r#"
fleet:
  - node: bench
    platform: kubernetes
    gpus: [8xH100-80GB]
tenants:
  - name: search
    workload: inference
    memory_gb: 10
    replicas: 30
    slo: strict
  - name: notebooks
    workload: interactive
    memory_gb: 8
    replicas: 16
"#;

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort_unstable();
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let callers = args.first().copied().unwrap_or(100);
    let calls = args.get(1).copied().unwrap_or(200);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let catalog = Catalog::embedded();
    let plan = carve_plan::plan(&carve_plan::parse(TENANCY, &catalog).unwrap(), &catalog);
    assert!(plan.complete);
    let (sim, _) = SimBackend::open(
        Store::open(&dir.join("state")).unwrap(),
        catalog.clone(),
        Some("8xH100-80GB"),
    )
    .unwrap();
    let shim = dir.join("libcarve_shim.so");
    std::fs::write(&shim, b"").unwrap();
    let desired = Desired::Plan {
        plan: Box::new(plan),
        node: "bench".into(),
        source: "plan.json".into(),
    };
    let cfg = agent::AgentConfig {
        shim: Some(shim),
        ..agent::AgentConfig::new(dir.join("dp"), dir.join("run"), desired)
    };
    let node = GpuNode {
        backend: Box::new(sim),
        store: Store::open(&dir.join("state")).unwrap(),
        catalog,
    };
    let h = agent::start(cfg, node).await.unwrap();
    let inv = h.state.inventory();
    let targets: Vec<(String, Vec<String>)> = ["nvidia.com/mig-1g.10gb", "carve.dev/notebooks"]
        .iter()
        .map(|r| {
            let res = inv.resource(r).unwrap();
            (
                dir.join("dp").join(&res.endpoint).display().to_string(),
                res.devices.iter().map(|d| d.id.clone()).collect(),
            )
        })
        .collect();
    println!(
        "Allocate latency; agent on a simulated 8×H100 node ({} MIG devices, {} time-sliced shares); callers and agent in one process on {cores} cores",
        targets[0].1.len(),
        targets[1].1.len()
    );
    // Connections first (the kubelet keeps one per plugin), then the calls.
    let mut clients = Vec::new();
    for _ in 0..callers {
        let mut per = Vec::new();
        for (sock, _) in &targets {
            per.push(DevicePluginClient::new(
                unix_channel(std::path::Path::new(sock)).await.unwrap(),
            ));
        }
        clients.push(per);
    }
    let kinds: [(&str, Option<usize>); 3] = [
        ("GetDevicePluginOptions (baseline)", None),
        ("Allocate, MIG device", Some(0)),
        ("Allocate, time-sliced share", Some(1)),
    ];
    // One call, timed.
    async fn call(
        cl: &mut DevicePluginClient<tonic::transport::Channel>,
        which: Option<usize>,
        id: String,
    ) -> Duration {
        let t = Instant::now();
        match which {
            None => {
                cl.get_device_plugin_options(Empty {}).await.unwrap();
            }
            Some(_) => {
                let r = cl
                    .allocate(AllocateRequest {
                        container_requests: vec![ContainerAllocateRequest {
                            devices_ids: vec![id],
                        }],
                    })
                    .await
                    .unwrap();
                assert_eq!(r.get_ref().container_responses.len(), 1);
            }
        }
        t.elapsed()
    }
    let table = |title: &str, rows: &[(&str, Duration, Duration, Duration, f64)]| {
        println!("\n{title}");
        println!(
            "{:<36} {:>9} {:>9} {:>9} {:>11}  {:>14}",
            "call", "p50", "p99", "max", "calls/s", "p99 / baseline"
        );
        let base = rows[0].2;
        for (label, p50, p99, max, rate) in rows {
            println!(
                "{:<36} {:>9} {:>9} {:>9} {:>11.0}  {:>13.2}x",
                label,
                us(*p50),
                us(*p99),
                us(*max),
                rate,
                p99.as_secs_f64() / base.as_secs_f64()
            );
        }
    };
    let summarise = |mut all: Vec<Duration>, wall: Duration| {
        let n = all.len();
        let p50 = pct(&mut all, 0.50);
        let p99 = pct(&mut all, 0.99);
        (
            p50,
            p99,
            *all.last().unwrap(),
            n as f64 / wall.as_secs_f64(),
        )
    };

    // 1. One caller at a time: the cost of a call.
    let mut rows = Vec::new();
    for (label, which) in kinds {
        let k = which.unwrap_or(0);
        let ids = targets[k].1.clone();
        let t0 = Instant::now();
        let mut all = Vec::new();
        for i in 0..calls * 5 {
            all.push(call(&mut clients[0][k], which, ids[i % ids.len()].clone()).await);
        }
        let (p50, p99, max, rate) = summarise(all, t0.elapsed());
        rows.push((label, p50, p99, max, rate));
    }
    table("one caller, back to back:", &rows);

    // 2. Bursts: all callers call at the same moment (a node starting many pods at once).
    let bursts = calls / 4;
    let mut rows = Vec::new();
    let mut burst_p99 = Vec::new();
    for (label, which) in kinds {
        let k = which.unwrap_or(0);
        let ids = targets[k].1.clone();
        let mut all = Vec::new();
        let t0 = Instant::now();
        for b in 0..bursts {
            let start = std::sync::Arc::new(tokio::sync::Barrier::new(callers));
            let mut tasks = Vec::new();
            for (c, per) in clients.iter().enumerate() {
                let mut cl = per[k].clone();
                let id = ids[(c * 7 + b) % ids.len()].clone();
                let start = start.clone();
                tasks.push(tokio::spawn(async move {
                    start.wait().await;
                    call(&mut cl, which, id).await
                }));
            }
            for t in tasks {
                all.push(t.await.unwrap());
            }
        }
        let (p50, p99, max, rate) = summarise(all, t0.elapsed());
        burst_p99.push(p99);
        rows.push((label, p50, p99, max, rate));
    }
    table(
        &format!("{callers} callers at once, {bursts} bursts (latency of each call in a burst):"),
        &rows,
    );

    // 3. Closed loop: every caller calls again as soon as answered (saturation).
    let mut rows = Vec::new();
    for (label, which) in kinds {
        let k = which.unwrap_or(0);
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for (c, per) in clients.iter().enumerate() {
            let mut cl = per[k].clone();
            let ids = targets[k].1.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(calls);
                for i in 0..calls {
                    lat.push(call(&mut cl, which, ids[(c * 7 + i) % ids.len()].clone()).await);
                }
                lat
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let (p50, p99, max, rate) = summarise(all, t0.elapsed());
        rows.push((label, p50, p99, max, rate));
    }
    table(
        &format!("{callers} callers in a closed loop, {calls} calls each (saturation; the callers share this machine's cores):"),
        &rows,
    );
    let worst = burst_p99[1..].iter().max().copied().unwrap();
    println!(
        "\nAllocate p99 in bursts of {callers}: {} — {} the 1 ms target; an empty call's p99 in the same bursts: {}",
        us(worst),
        if worst < Duration::from_millis(1) { "meets" } else { "misses" },
        us(burst_p99[0])
    );
    h.shutdown().await;
}
