//! The agent's shared state: what the node offers now, the device health, the schedulers, and
//! the metrics. Readers take a snapshot (`Arc`) and never hold a lock across an await.

use crate::allocate::HostPaths;
use crate::inventory::{Inventory, Options, APPLICATION_XIDS};
use carve_apply::NodePlan;
use carve_apply::Observed;
use carve_sched::server::Server;
use carve_sched_proto::StatusReport;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::watch;

fn read<T: Clone>(l: &RwLock<T>) -> T {
    l.read().unwrap_or_else(|p| p.into_inner()).clone()
}

fn write<T>(l: &RwLock<T>, v: T) {
    *l.write().unwrap_or_else(|p| p.into_inner()) = v;
}

/// A scheduler of a time-sliced GPU, run in the agent's process.
pub struct Sched {
    pub gpu_index: u32,
    pub gpu_uuid: String,
    /// Its socket, and what it runs: a reinstall that would run the same keeps it running.
    pub socket: std::path::PathBuf,
    pub config: carve_sched::config::DaemonConfig,
    pub server: Server,
}

/// A health event: an XID on a GPU or MIG device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Xid {
    /// `GPU-…` or `MIG-…`.
    pub uuid: String,
    pub xid: u64,
}

pub struct AgentState {
    options: Options,
    inventory: RwLock<Arc<Inventory>>,
    observed: RwLock<Arc<Vec<Observed>>>,
    host: RwLock<Arc<HostPaths>>,
    plan: RwLock<Option<Arc<NodePlan>>>,
    labels: RwLock<Arc<BTreeMap<String, String>>>,
    /// Unhealthy device or GPU UUIDs with the XID that made them so.
    unhealthy: Mutex<BTreeMap<String, u64>>,
    changes: watch::Sender<u64>,
    pub scheds: Mutex<Vec<Sched>>,
    pub metrics: Metrics,
    /// What the backstop has seen and done (empty when it does not run).
    pub backstop: crate::backstop::Record,
}

impl AgentState {
    pub fn new(options: Options) -> AgentState {
        AgentState {
            options,
            inventory: RwLock::new(Arc::new(Inventory::default())),
            observed: RwLock::new(Arc::new(Vec::new())),
            host: RwLock::new(Arc::new(HostPaths::default())),
            plan: RwLock::new(None),
            labels: RwLock::new(Arc::new(BTreeMap::new())),
            unhealthy: Mutex::new(BTreeMap::new()),
            changes: watch::channel(0).0,
            scheds: Mutex::new(Vec::new()),
            metrics: Metrics::new(),
            backstop: crate::backstop::Record::default(),
        }
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    pub fn inventory(&self) -> Arc<Inventory> {
        read(&self.inventory)
    }

    pub fn observed(&self) -> Arc<Vec<Observed>> {
        read(&self.observed)
    }

    pub fn host_paths(&self) -> Arc<HostPaths> {
        read(&self.host)
    }

    pub fn plan(&self) -> Option<Arc<NodePlan>> {
        read(&self.plan)
    }

    pub fn labels(&self) -> Arc<BTreeMap<String, String>> {
        read(&self.labels)
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn bump(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// Installs a new view of the node (after a reconcile), keeping known health.
    pub fn set_node(
        &self,
        observed: Vec<Observed>,
        mut inv: Inventory,
        host: HostPaths,
        plan: Option<NodePlan>,
        labels: BTreeMap<String, String>,
    ) {
        let bad = self
            .unhealthy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        inv.apply_health(&bad);
        write(&self.observed, Arc::new(observed));
        write(&self.inventory, Arc::new(inv));
        write(&self.host, Arc::new(host));
        write(&self.plan, plan.map(Arc::new));
        write(&self.labels, Arc::new(labels));
        self.bump();
    }

    /// Applies an XID: application XIDs are counted and ignored; any other makes the device
    /// (or, for a GPU UUID, the GPU and everything on it) unhealthy. Returns whether device
    /// health changed.
    pub fn xid(&self, e: &Xid) -> bool {
        let app = APPLICATION_XIDS.contains(&e.xid);
        self.metrics.health_event(e.xid, app);
        if app {
            return false;
        }
        self.set_health(&e.uuid, Some(e.xid))
    }

    /// Applies an XID the driver reported on a GPU, or on its MIG device (GPU instance, compute
    /// instance). A MIG device that cannot be found takes the whole GPU down, as the NVIDIA
    /// device plugin does with events it cannot place.
    pub fn xid_at(&self, gpu_uuid: &str, mig: Option<(u32, u32)>, xid: u64) -> bool {
        let target = mig
            .and_then(|(gi, ci)| {
                self.observed()
                    .iter()
                    .find(|o| o.info.uuid == gpu_uuid)
                    .and_then(|o| o.instances.iter().find(|g| g.id == gi))
                    .and_then(|g| g.compute_instances.iter().find(|c| c.id == ci))
                    .map(|c| c.uuid.clone())
            })
            .unwrap_or_else(|| gpu_uuid.to_string());
        self.xid(&Xid { uuid: target, xid })
    }

    /// Marks `uuid` unhealthy (`Some(xid)`) or healthy again (`None`). Returns whether device
    /// health changed.
    pub fn set_health(&self, uuid: &str, xid: Option<u64>) -> bool {
        let bad = {
            let mut u = self.unhealthy.lock().unwrap_or_else(|p| p.into_inner());
            match xid {
                Some(x) => u.insert(uuid.to_string(), x),
                None => u.remove(uuid),
            };
            u.clone()
        };
        let mut inv = (*self.inventory()).clone();
        let changed = inv.apply_health(&bad);
        if changed {
            write(&self.inventory, Arc::new(inv));
            self.bump();
        }
        changed
    }

    pub fn unhealthy(&self) -> BTreeMap<String, u64> {
        self.unhealthy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The schedulers' status, by GPU index.
    pub fn sched_status(&self) -> Vec<(u32, String, StatusReport)> {
        self.scheds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|s| (s.gpu_index, s.gpu_uuid.clone(), s.server.status()))
            .collect()
    }

    /// The Prometheus text exposition, refreshed from the current state.
    pub fn render_metrics(&self) -> String {
        let snap = Snapshot::of(self);
        *self
            .metrics
            .snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = snap;
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.metrics.registry).is_err() {
            out.clear();
        }
        out
    }
}

type Labels = Vec<(String, String)>;

/// Counters kept as things happen, and a collector for what is read at scrape time.
pub struct Metrics {
    registry: Registry,
    allocations: Family<Labels, Counter>,
    allocate_errors: Family<Labels, Counter>,
    allocate_seconds: Histogram,
    health_events: Family<Labels, Counter>,
    reconciliations: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
    registrations: Family<Labels, Counter>,
    node_labelling: Family<Labels, Counter>,
    snapshot: Arc<Mutex<Snapshot>>,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("carve");
        let allocations = Family::<Labels, Counter>::default();
        let allocate_errors = Family::<Labels, Counter>::default();
        let allocate_seconds = Histogram::new([
            50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 50e-3,
        ]);
        let health_events = Family::<Labels, Counter>::default();
        let reconciliations = Family::<Labels, Counter>::default();
        let errors = Family::<Labels, Counter>::default();
        let registrations = Family::<Labels, Counter>::default();
        registry.register(
            "allocations",
            "Containers given devices by Allocate, per resource",
            allocations.clone(),
        );
        registry.register(
            "allocate_errors",
            "Allocate calls refused, per resource",
            allocate_errors.clone(),
        );
        registry.register(
            "allocate_duration_seconds",
            "Time to answer an Allocate call",
            allocate_seconds.clone(),
        );
        registry.register(
            "health_events",
            "XID events seen, by XID and whether they are the application's",
            health_events.clone(),
        );
        registry.register(
            "reconciliations",
            "Reconciliations of the GPUs with the desired state, by result",
            reconciliations.clone(),
        );
        registry.register("errors", "Errors, by kind", errors.clone());
        registry.register(
            "registrations",
            "Registrations with the kubelet, per resource",
            registrations.clone(),
        );
        let node_labelling = Family::<Labels, Counter>::default();
        registry.register(
            "node_labelling",
            "Applications of the labels to the Node object, by result",
            node_labelling.clone(),
        );
        let snapshot = Arc::new(Mutex::new(Snapshot::default()));
        registry.register_collector(Box::new(SnapshotCollector(snapshot.clone())));
        Metrics {
            registry,
            allocations,
            allocate_errors,
            allocate_seconds,
            health_events,
            reconciliations,
            errors,
            registrations,
            node_labelling,
            snapshot,
        }
    }

    fn l(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    pub fn allocated(&self, resource: &str, containers: usize, took: Duration) {
        self.allocations
            .get_or_create(&Self::l(&[("resource", resource)]))
            .inc_by(containers as u64);
        self.allocate_seconds.observe(took.as_secs_f64());
    }

    pub fn allocate_error(&self, resource: &str) {
        self.allocate_errors
            .get_or_create(&Self::l(&[("resource", resource)]))
            .inc();
    }

    fn health_event(&self, xid: u64, application: bool) {
        self.health_events
            .get_or_create(&Self::l(&[
                ("xid", &xid.to_string()),
                ("application", if application { "true" } else { "false" }),
            ]))
            .inc();
    }

    pub fn reconciled(&self, result: &str) {
        self.reconciliations
            .get_or_create(&Self::l(&[("result", result)]))
            .inc();
    }

    pub fn error(&self, kind: &str) {
        self.errors.get_or_create(&Self::l(&[("kind", kind)])).inc();
    }

    pub fn labelled(&self, result: &str) {
        self.node_labelling
            .get_or_create(&Self::l(&[("result", result)]))
            .inc();
    }

    pub fn registered(&self, resource: &str) {
        self.registrations
            .get_or_create(&Self::l(&[("resource", resource)]))
            .inc();
    }
}

/// What is read at scrape time.
#[derive(Debug, Default, Clone)]
struct Snapshot {
    gpus: Vec<Labels>,
    devices: Vec<(Labels, bool)>,
    /// Per tenant of a scheduler: labels, target, achieved, throttled s, GPU s, turns,
    /// memory used bytes, memory limit bytes, clients.
    tenants: Vec<(Labels, [f64; 6], Option<f64>)>,
    /// Per tenant: launch-wait histogram (per-bucket counts, sum in s).
    waits: Vec<(Labels, Vec<u64>, f64)>,
    /// The backstop: per GPU and tenant (registered or not), processes and device memory; its
    /// violations by GPU, kind and action; its looks by result.
    watched: Vec<(Labels, f64, f64)>,
    violations: Vec<(Labels, f64)>,
    polls: Vec<(Labels, f64)>,
}

impl Snapshot {
    fn of(s: &AgentState) -> Snapshot {
        let gpus = s
            .observed()
            .iter()
            .map(|o| {
                Metrics::l(&[
                    ("gpu", &o.info.index.to_string()),
                    ("uuid", &o.info.uuid),
                    ("model", o.model.as_deref().unwrap_or("unknown")),
                    (
                        "mig",
                        if o.info.mig.is_some_and(|m| m.current) {
                            "enabled"
                        } else {
                            "disabled"
                        },
                    ),
                ])
            })
            .collect();
        let devices = s
            .inventory()
            .devices()
            .map(|(r, d)| {
                (
                    Metrics::l(&[
                        ("resource", r),
                        ("device", &d.id),
                        ("gpu", &d.gpu_index.to_string()),
                        ("tenant", d.tenant.as_deref().unwrap_or("")),
                    ]),
                    d.healthy,
                )
            })
            .collect();
        let mut tenants = Vec::new();
        let mut waits = Vec::new();
        for (gpu, _, st) in s.sched_status() {
            for t in &st.tenants {
                tenants.push((
                    Metrics::l(&[("gpu", &gpu.to_string()), ("tenant", &t.name)]),
                    [
                        t.target_share,
                        t.achieved_share,
                        t.throttled_ns as f64 / 1e9,
                        t.gpu_time_ns as f64 / 1e9,
                        t.launches as f64,
                        t.memory_used_mib * 1024.0 * 1024.0,
                    ],
                    t.memory_limit_mib.map(|m| m * 1024.0 * 1024.0),
                ));
                waits.push((
                    Metrics::l(&[("gpu", &gpu.to_string()), ("tenant", &t.name)]),
                    t.wait_buckets.clone(),
                    t.wait_sum_ns as f64 / 1e9,
                ));
            }
        }
        let b = s.backstop.report();
        let mut per: BTreeMap<(u32, Option<String>), (f64, f64)> = BTreeMap::new();
        for w in &b.processes {
            let e = per.entry((w.gpu, w.tenant.clone())).or_default();
            e.0 += 1.0;
            e.1 += w.memory_bytes.unwrap_or(0) as f64;
        }
        let watched = per
            .into_iter()
            .map(|((gpu, tenant), (n, bytes))| {
                let l = Metrics::l(&[
                    ("gpu", &gpu.to_string()),
                    ("tenant", tenant.as_deref().unwrap_or("")),
                    (
                        "registered",
                        if tenant.is_some() { "true" } else { "false" },
                    ),
                ]);
                (l, n, bytes)
            })
            .collect();
        let violations = b
            .counts
            .iter()
            .map(|((gpu, kind, action), n)| {
                let l = Metrics::l(&[
                    ("gpu", &gpu.to_string()),
                    ("kind", kind.as_str()),
                    ("action", action),
                ]);
                (l, *n as f64)
            })
            .collect();
        let polls = b
            .polls
            .iter()
            .map(|(r, n)| (Metrics::l(&[("result", r)]), *n as f64))
            .collect();
        Snapshot {
            gpus,
            devices,
            tenants,
            waits,
            watched,
            violations,
            polls,
        }
    }
}

#[derive(Debug)]
struct SnapshotCollector(Arc<Mutex<Snapshot>>);

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(&Labels, f64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, ConstGauge::new(0.0f64).metric_type())?;
    for (l, v) in rows {
        ConstGauge::new(*v).encode(m.encode_family(*l)?)?;
    }
    Ok(())
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(&Labels, f64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, ConstCounter::new(0.0f64).metric_type())?;
    for (l, v) in rows {
        ConstCounter::new(*v).encode(m.encode_family(*l)?)?;
    }
    Ok(())
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let g: Vec<_> = s.gpus.iter().map(|l| (l, 1.0)).collect();
        gauge(&mut enc, "gpu_info", "GPUs of the node", &g)?;
        let d: Vec<_> = s
            .devices
            .iter()
            .map(|(l, h)| (l, if *h { 1.0 } else { 0.0 }))
            .collect();
        gauge(
            &mut enc,
            "device_healthy",
            "Devices offered to the kubelet: 1 healthy, 0 unhealthy",
            &d,
        )?;
        let col = |i: usize| -> Vec<(&Labels, f64)> {
            s.tenants.iter().map(|(l, v, _)| (l, v[i])).collect()
        };
        gauge(
            &mut enc,
            "tenant_share_target",
            "Share of GPU time a time-sliced tenant is due",
            &col(0),
        )?;
        gauge(
            &mut enc,
            "tenant_share_achieved",
            "Share of GPU time a time-sliced tenant got",
            &col(1),
        )?;
        counter(
            &mut enc,
            "tenant_throttled_seconds",
            "Time a tenant with work waited for its turn",
            &col(2),
        )?;
        counter(
            &mut enc,
            "tenant_gpu_seconds",
            "GPU time a tenant was given",
            &col(3),
        )?;
        counter(
            &mut enc,
            "tenant_turns",
            "Turns granted to a tenant",
            &col(4),
        )?;
        gauge(
            &mut enc,
            "tenant_memory_used_bytes",
            "Device memory a tenant holds",
            &col(5),
        )?;
        let lim: Vec<_> = s
            .tenants
            .iter()
            .filter_map(|(l, _, m)| m.map(|m| (l, m)))
            .collect();
        gauge(
            &mut enc,
            "tenant_memory_limit_bytes",
            "Device memory a tenant may hold",
            &lim,
        )?;
        let rows = |f: fn(&(Labels, f64, f64)) -> f64| -> Vec<(&Labels, f64)> {
            s.watched.iter().map(|r| (&r.0, f(r))).collect()
        };
        gauge(
            &mut enc,
            "backstop_processes",
            "Processes the driver lists on a time-sliced GPU, per tenant they are registered as \
             (registered=\"false\": with no scheduler registration)",
            &rows(|r| r.1),
        )?;
        gauge(
            &mut enc,
            "backstop_memory_bytes",
            "Device memory the driver says those processes hold",
            &rows(|r| r.2),
        )?;
        let v: Vec<_> = s.violations.iter().map(|(l, n)| (l, *n)).collect();
        counter(
            &mut enc,
            "backstop_violations",
            "Processes found unregistered or over their tenant's memory limit on a time-sliced \
             GPU, by what was done (logged, killed, gone, not-visible, kill-failed)",
            &v,
        )?;
        let p: Vec<_> = s.polls.iter().map(|(l, n)| (l, *n)).collect();
        counter(
            &mut enc,
            "backstop_polls",
            "Looks at the time-sliced GPUs' processes, by result",
            &p,
        )?;
        let mut m = enc.encode_descriptor(
            "tenant_launch_wait_seconds",
            "How long a launch that found no turn waited for its tenant's turn",
            None,
            prometheus_client::metrics::MetricType::Histogram,
        )?;
        for (l, counts, sum) in &s.waits {
            let bounds = carve_sched_proto::WAIT_BUCKETS_NS
                .iter()
                .map(|ns| *ns as f64 / 1e9)
                .chain(std::iter::once(f64::MAX));
            let buckets: Vec<(f64, u64)> = bounds.zip(counts.iter().copied()).collect();
            let count = counts.iter().sum();
            m.encode_family(l)?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    *sum, count, &buckets, None,
                )?;
        }
        Ok(())
    }
}
