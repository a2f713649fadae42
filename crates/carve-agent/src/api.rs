//! The HTTP API (loopback by default) and Prometheus metrics.
//!
//! - `GET /v1/gpus`, `GET /v1/tenants`, `GET /metrics`, `GET /healthz`: open.
//! - `GET /v1/plan` (the whole fleet's plan), `POST /v1/plan` (a plan, as `carve plan` writes
//!   it; `?node=` picks the node) and `POST /v1/health` (`{"uuid": "...", "xid": 79}`, or
//!   `"xid": null` to clear): need `Authorization: Bearer <token>`, checked before a body is
//!   read. A plan that does not fit this node is 400 (nothing is changed), one that would
//!   destroy instances in use 409, a failed GPU operation 500; a body over
//!   [`ApiLimits::max_body`] is 413, one that does not come within [`ApiLimits::body_within`]
//!   408.
//!
//! [`serve`] serves it within [`ApiLimits`]: headers within a deadline (which also closes idle
//! keep-alive connections), a cap on connections in all and per client address (at the cap, the
//! oldest connection with no request in progress makes room, so a flood of idle or slow
//! connections cannot lock out a client that sends its request at once), and a lifetime per
//! connection. Its descriptors are thus bounded, and the schedulers running in the same
//! process keep theirs.
//! - `GET /v1/violations` (needs the token: it names every tenant's processes): the backstop's
//!   settings, the processes on the time-sliced GPUs and the violations found, oldest first.

use crate::control::{Control, ReconcileError};
use crate::state::{AgentState, Xid};
use axum::body::Body;
use axum::extract::{Query, State as AxState};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

#[derive(Clone)]
pub struct Ctx {
    pub state: Arc<AgentState>,
    pub token: String,
    pub control: Control,
    /// The body limits of POST requests.
    pub limits: ApiLimits,
}

/// Bounds on what clients of the API can make the agent hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiLimits {
    /// A request's headers must be in within this (and an idle keep-alive connection is closed
    /// after it).
    pub headers_within: Duration,
    /// A request's body must be in within this.
    pub body_within: Duration,
    /// The largest body taken (a plan of a large fleet is some megabytes).
    pub max_body: usize,
    /// Connections in all.
    pub max_connections: usize,
    /// Connections from one address.
    pub max_per_address: usize,
    /// A connection is closed after this long, whatever it does.
    pub lifetime: Duration,
}

impl Default for ApiLimits {
    fn default() -> ApiLimits {
        ApiLimits {
            headers_within: Duration::from_secs(5),
            body_within: Duration::from_secs(10),
            max_body: 16 * 1024 * 1024,
            max_connections: 128,
            max_per_address: 32,
            lifetime: Duration::from_secs(300),
        }
    }
}

/// What to say when the API listens beyond loopback: anyone who reaches the address reads the
/// node's GPUs, tenants and metrics (writes and the plan still need the token, which then
/// crosses the network in clear text).
pub fn exposure_warning(addr: SocketAddr) -> Option<String> {
    if addr.ip().is_loopback() {
        return None;
    }
    Some(format!(
        "the HTTP API listens on {addr}, not loopback: anyone who can reach it reads this \
         node's GPUs, tenants and metrics, and the bearer token for writes crosses the network \
         unencrypted; listen on 127.0.0.1 (the default) and reach it through a tunnel or a \
         proxy with TLS"
    ))
}

pub fn router(ctx: Ctx) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/v1/gpus", get(gpus))
        .route("/v1/plan", get(get_plan).post(post_plan))
        .route("/v1/tenants", get(tenants))
        .route("/v1/health", post(post_health))
        .route("/v1/violations", get(violations))
        .with_state(ctx)
}

fn error(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, Json(json!({"error": msg.into()}))).into_response()
}

/// Constant-time comparison of the presented token.
fn authorized(ctx: &Ctx, headers: &HeaderMap) -> bool {
    let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(t) = v.strip_prefix("Bearer ") else {
        return false;
    };
    let (a, b) = (t.trim().as_bytes(), ctx.token.as_bytes());
    if a.len() != b.len() || b.is_empty() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn metrics(AxState(ctx): AxState<Ctx>) -> Response {
    let text = ctx.state.render_metrics();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// The GPUs as observed, with the devices offered on each.
pub fn gpus_json(state: &AgentState) -> Value {
    let inv = state.inventory();
    let unhealthy = state.unhealthy();
    let gpus: Vec<Value> = state
        .observed()
        .iter()
        .map(|o| {
            let devices: Vec<Value> = inv
                .devices()
                .filter(|(_, d)| d.gpu_index == o.info.index)
                .map(|(r, d)| {
                    let mut v = serde_json::to_value(d).unwrap_or(Value::Null);
                    v["resource"] = json!(r);
                    v
                })
                .collect();
            json!({
                "index": o.info.index,
                "uuid": o.info.uuid,
                "name": o.info.name,
                "model": o.model,
                "memory_mib": o.info.memory_mib,
                "mig": o.info.mig.map(|m| m.current),
                "instances": o.instances.iter().map(|g| json!({
                    "profile": g.profile_name, "nvml_profile": g.profile.macro_name(),
                    "start": g.start, "gi": g.id,
                    "uuids": g.compute_instances.iter().map(|c| c.uuid.clone()).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "unhealthy_xid": unhealthy.get(&o.info.uuid),
                "devices": devices,
            })
        })
        .collect();
    json!({ "gpus": gpus, "warnings": inv.warnings })
}

async fn gpus(AxState(ctx): AxState<Ctx>) -> Response {
    Json(gpus_json(&ctx.state)).into_response()
}

async fn get_plan(AxState(ctx): AxState<Ctx>, headers: HeaderMap) -> Response {
    if !authorized(&ctx, &headers) {
        return error(StatusCode::UNAUTHORIZED, "a bearer token is required");
    }
    match ctx.state.plan() {
        Some(p) => Json(json!({"node": p.node, "plan": p.plan})).into_response(),
        None => error(StatusCode::NOT_FOUND, "this agent runs without a plan"),
    }
}

/// Tenants of this node: what the plan says and, for time-sliced ones, how their scheduler sees
/// them.
pub fn tenants_json(state: &AgentState) -> Value {
    let inv = state.inventory();
    let scheds = state.sched_status();
    let mut names: Vec<String> = inv
        .devices()
        .filter_map(|(_, d)| d.tenant.clone())
        .collect();
    names.sort();
    names.dedup();
    let plan = state.plan();
    let out: Vec<Value> = names
        .iter()
        .map(|n| {
            let planned = plan.as_ref().and_then(|p| p.plan.tenant(n));
            let devices: Vec<Value> = inv
                .devices()
                .filter(|(_, d)| d.tenant.as_deref() == Some(n))
                .map(|(r, d)| json!({"resource": r, "id": d.id, "gpu": d.gpu_index, "healthy": d.healthy}))
                .collect();
            let sched: Vec<Value> = scheds
                .iter()
                .flat_map(|(g, _, st)| {
                    st.tenants
                        .iter()
                        .filter(|t| &t.name == n)
                        .map(move |t| json!({"gpu": g, "policy": st.policy, "status": t}))
                })
                .collect();
            json!({
                "name": n,
                "mode": planned.map(|t| t.mode.as_str()),
                "reason": planned.map(|t| t.reason.clone()),
                "resource": planned.and_then(|t| t.resource.clone()),
                "devices": devices,
                "scheduler": sched,
            })
        })
        .collect();
    json!({ "tenants": out })
}

async fn tenants(AxState(ctx): AxState<Ctx>) -> Response {
    Json(tenants_json(&ctx.state)).into_response()
}

/// Reads a body of at most `max_body` bytes within `body_within`, as text. One announced
/// longer is refused unread.
async fn read_body(
    limits: &ApiLimits,
    headers: &HeaderMap,
    body: Body,
) -> Result<String, Response> {
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limits.max_body as u64) {
        return Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is longer than {} bytes", limits.max_body),
        ));
    }
    let bytes = match tokio::time::timeout(
        limits.body_within,
        axum::body::to_bytes(body, limits.max_body),
    )
    .await
    {
        Err(_) => {
            return Err(error(
                StatusCode::REQUEST_TIMEOUT,
                format!("the body did not come within {:?}", limits.body_within),
            ))
        }
        Ok(Err(_)) => {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the body is longer than {} bytes (or broken off)",
                    limits.max_body
                ),
            ))
        }
        Ok(Ok(b)) => b,
    };
    String::from_utf8(bytes.to_vec())
        .map_err(|_| error(StatusCode::BAD_REQUEST, "the body is not UTF-8"))
}

async fn post_plan(
    AxState(ctx): AxState<Ctx>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if !authorized(&ctx, &headers) {
        return error(StatusCode::UNAUTHORIZED, "a bearer token is required");
    }
    let body = match read_body(&ctx.limits, &headers, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let plan = match carve_plan::plan::Plan::from_json(&body) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("not a plan: {e}")),
    };
    let current = ctx.state.plan().map(|p| p.node.clone());
    let requested = q.get("node").map(String::as_str).or(current.as_deref());
    let host = carve_apply::hostname();
    let node = match carve_apply::plan_node(&plan, requested, host.as_deref()) {
        Ok(n) => n.to_string(),
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match ctx.control.apply(plan, node.clone()).await {
        Ok(done) => Json(json!({"node": node, "applied": done})).into_response(),
        Err(e) => {
            use ReconcileError as R;
            let code = match e {
                R::Input(_) => StatusCode::BAD_REQUEST,
                R::Refused(_) => StatusCode::CONFLICT,
                R::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            error(code, e.to_string())
        }
    }
}

#[derive(serde::Deserialize)]
struct HealthBody {
    uuid: String,
    xid: Option<u64>,
}

async fn post_health(AxState(ctx): AxState<Ctx>, headers: HeaderMap, body: Body) -> Response {
    if !authorized(&ctx, &headers) {
        return error(StatusCode::UNAUTHORIZED, "a bearer token is required");
    }
    let body = match read_body(&ctx.limits, &headers, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let b: HealthBody = match serde_json::from_str(&body) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad body: {e}")),
    };
    let known = ctx
        .state
        .inventory()
        .devices()
        .any(|(_, d)| d.uuid == b.uuid || d.gpu_uuid == b.uuid);
    if !known {
        return error(
            StatusCode::NOT_FOUND,
            format!("no GPU or MIG device {}", b.uuid),
        );
    }
    let changed = match b.xid {
        Some(x) => ctx.state.xid(&Xid {
            uuid: b.uuid.clone(),
            xid: x,
        }),
        None => ctx.state.set_health(&b.uuid, None),
    };
    Json(json!({"uuid": b.uuid, "changed": changed})).into_response()
}

async fn violations(AxState(ctx): AxState<Ctx>, headers: HeaderMap) -> Response {
    if !authorized(&ctx, &headers) {
        return error(StatusCode::UNAUTHORIZED, "a bearer token is required");
    }
    Json(ctx.state.backstop.report()).into_response()
}

/// A connection being served: where from, whether a request is in progress, how to close it.
struct Slot {
    addr: IpAddr,
    busy: Arc<AtomicUsize>,
    close: Arc<Notify>,
}

/// The connections being served, oldest first.
#[derive(Default)]
struct Slots {
    next: u64,
    open: BTreeMap<u64, Slot>,
}

impl Slots {
    /// Makes room for a connection from `addr`: at a cap, the oldest idle connection (of
    /// `addr`, for the per-address cap) is closed. False when there is no room to make.
    fn make_room(&mut self, addr: IpAddr, limits: &ApiLimits) -> bool {
        let from = self.open.values().filter(|s| s.addr == addr).count();
        if from >= limits.max_per_address && !self.push_out(Some(addr)) {
            return false;
        }
        if self.open.len() >= limits.max_connections && !self.push_out(None) {
            return false;
        }
        true
    }

    /// Closes the oldest connection (of `addr`) with no request in progress.
    fn push_out(&mut self, addr: Option<IpAddr>) -> bool {
        let oldest = self
            .open
            .iter()
            .find(|(_, s)| addr.is_none_or(|a| s.addr == a) && s.busy.load(Ordering::Acquire) == 0)
            .map(|(k, _)| *k);
        match oldest.and_then(|k| self.open.remove(&k)) {
            Some(s) => {
                s.close.notify_one();
                true
            }
            None => false,
        }
    }
}

fn lock(s: &Mutex<Slots>) -> std::sync::MutexGuard<'_, Slots> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// Counts a request in progress on its connection while alive.
struct Busy(Arc<AtomicUsize>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves `app` on `listener` within `limits` until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ApiLimits,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Mutex::new(Slots::default()));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors, most likely: wait a little rather than spin.
                tracing::warn!("the HTTP API cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let busy = Arc::new(AtomicUsize::new(0));
        let close = Arc::new(Notify::new());
        let key = {
            let mut sl = lock(&slots);
            if !sl.make_room(peer.ip(), &limits) {
                // Every connection is in the middle of a request: this one waits for none.
                drop(stream);
                continue;
            }
            let key = sl.next;
            sl.next += 1;
            sl.open.insert(
                key,
                Slot {
                    addr: peer.ip(),
                    busy: busy.clone(),
                    close: close.clone(),
                },
            );
            key
        };
        let app = app.clone();
        let service =
            hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                busy.fetch_add(1, Ordering::AcqRel);
                let guard = Busy(busy.clone());
                let app = app.clone();
                async move {
                    let r = tower::ServiceExt::oneshot(app, req.map(Body::new)).await;
                    drop(guard);
                    r
                }
            });
        let slots = slots.clone();
        let mut stop = stop.clone();
        let limits = limits.clone();
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.headers_within)
                .max_buf_size(64 * 1024);
            let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::select! {
                _ = tokio::time::timeout(limits.lifetime, conn) => {}
                _ = close.notified() => {}
                _ = stop.wait_for(|s| *s) => {}
            }
            lock(&slots).open.remove(&key);
        });
    }
}
