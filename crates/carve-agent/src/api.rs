//! The HTTP API (loopback by default) and Prometheus metrics.
//!
//! - `GET /v1/gpus`, `GET /v1/plan`, `GET /v1/tenants`, `GET /metrics`, `GET /healthz`: open.
//! - `POST /v1/plan` (a plan, as `carve plan` writes it; `?node=` picks the node) and
//!   `POST /v1/health` (`{"uuid": "...", "xid": 79}`, or `"xid": null` to clear): need
//!   `Authorization: Bearer <token>`. A plan that does not fit this node is 400 (nothing is
//!   changed), one that would destroy instances in use 409, a failed GPU operation 500.
//! - `GET /v1/violations` (needs the token: it names every tenant's processes): the backstop's
//!   settings, the processes on the time-sliced GPUs and the violations found, oldest first.

use crate::control::{Control, ReconcileError};
use crate::state::{AgentState, Xid};
use axum::extract::{Query, State as AxState};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Clone)]
pub struct Ctx {
    pub state: Arc<AgentState>,
    pub token: String,
    pub control: Control,
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

async fn get_plan(AxState(ctx): AxState<Ctx>) -> Response {
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

async fn post_plan(
    AxState(ctx): AxState<Ctx>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    if !authorized(&ctx, &headers) {
        return error(StatusCode::UNAUTHORIZED, "a bearer token is required");
    }
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

async fn post_health(AxState(ctx): AxState<Ctx>, headers: HeaderMap, body: String) -> Response {
    if !authorized(&ctx, &headers) {
        return error(StatusCode::UNAUTHORIZED, "a bearer token is required");
    }
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
