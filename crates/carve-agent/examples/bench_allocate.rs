//! Allocate latency under concurrency: an agent on a simulated 8-GPU node (MIG slices and
//! time-sliced shares), 100 concurrent callers, each with its own connection to the plugin
//! socket, as many kubelet-side callers would. Prints p50/p99/max for Allocate on MIG devices and
//! on time-sliced shares, and for the empty `GetDevicePluginOptions` call measured in the same run
//! (the baseline: what gRPC over a unix socket costs by itself). Target: Allocate p99 < 1 ms.
//!
//! `cargo run --release -p carve-agent --example bench_allocate [-- CALLERS CALLS_EACH]`

use carve_agent::agent::{self, Desired, Node};
use carve_agent::inventory::Options;
use carve_agent::plugin::unix_channel;
use carve_agent::proto::device_plugin_client::DevicePluginClient;
use carve_agent::proto::{AllocateRequest, ContainerAllocateRequest, Empty};
use carve_model::Catalog;
use carve_sim::SimBackend;
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
    let cfg = agent::Config {
        device_plugin_dir: dir.join("dp"),
        cdi_dir: None,
        labels_file: None,
        run_dir: dir.join("run"),
        listen: None,
        api_token: "z".repeat(32),
        shim: Some(shim),
        options: Options::default(),
        desired: Desired::Plan {
            plan: Box::new(plan),
            node: "bench".into(),
        },
        sim_health: None,
        poll: Duration::from_millis(100),
    };
    let node = Node {
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
        "Allocate latency: {callers} concurrent callers × {calls} calls each, per kind; agent on a simulated 8×H100 node ({} MIG devices, {} time-sliced shares)",
        targets[0].1.len(),
        targets[1].1.len()
    );
    let mut rows = Vec::new();
    for (label, which) in [
        ("GetDevicePluginOptions (baseline)", None),
        ("Allocate, MIG device", Some(0usize)),
        ("Allocate, time-sliced share", Some(1)),
    ] {
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..callers {
            let (sock, ids) = targets[which.unwrap_or(0)].clone();
            tasks.push(tokio::spawn(async move {
                let mut cl = DevicePluginClient::new(
                    unix_channel(std::path::Path::new(&sock)).await.unwrap(),
                );
                let mut lat = Vec::with_capacity(calls);
                for k in 0..calls {
                    let t = Instant::now();
                    match which {
                        None => {
                            cl.get_device_plugin_options(Empty {}).await.unwrap();
                        }
                        Some(_) => {
                            let id = ids[(c * 7 + k) % ids.len()].clone();
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
                    lat.push(t.elapsed());
                }
                lat
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let wall = t0.elapsed();
        let n = all.len();
        let p50 = pct(&mut all, 0.50);
        let p99 = pct(&mut all, 0.99);
        let max = *all.last().unwrap();
        rows.push((label, p50, p99, max, n as f64 / wall.as_secs_f64()));
    }
    println!(
        "{:<36} {:>9} {:>9} {:>9} {:>11}  {:>14}",
        "call", "p50", "p99", "max", "calls/s", "p99 / baseline"
    );
    let base = rows[0].2;
    for (label, p50, p99, max, rate) in &rows {
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
    let worst = rows[1..].iter().map(|r| r.2).max().unwrap();
    println!(
        "Allocate p99 {} the 1 ms target ({})",
        if worst < Duration::from_millis(1) {
            "meets"
        } else {
            "misses"
        },
        us(worst)
    );
    h.shutdown().await;
}
