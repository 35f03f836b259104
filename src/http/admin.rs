//! Flags, status, metrics and operator commands.

use actix_web::{web, HttpResponse};
use athena_actors::breaker::AdminAction;
use athena_actors::flags::{FlagSource, GetAudit, GetFlags, SetFlag, FLAGS};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::AppState;

/// Redis as health and status show it: not configured, up, or down with the reason.
fn redis_summary(state: &AppState) -> Value {
    match state.engine.redis() {
        None => json!({"status": "not_configured"}),
        Some(redis) => match redis.health().problem() {
            None => json!({"status": "up"}),
            Some(reason) => json!({"status": "down", "reason": reason}),
        },
    }
}

/// A fleet-wide setting applied here but not stored for the other nodes.
fn not_propagated(code: &'static str, what: &str) -> ApiError {
    ApiError::unavailable(
        code,
        format!(
            "{what} changed on this node only: Redis is unreachable, so other nodes keep \
             their setting; retry to propagate it"
        ),
        std::time::Duration::from_secs(5),
    )
}

pub async fn health(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "uptimeSeconds": state.engine.uptime().as_secs(),
        "queue": if state.node.queue.is_some() { "redis" } else { "memory" },
        "redis": redis_summary(&state),
        "providers": state.engine.providers(),
    }))
}

pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return HttpResponse::ServiceUnavailable()
            .json(json!({"ready": false, "reason": "the service is shutting down"}));
    }
    // A fleet node can do nothing useful without Redis: new jobs would get 503.
    if let Some(reason) = state.engine.redis().and_then(|r| r.health().problem()) {
        return HttpResponse::ServiceUnavailable().json(json!({"ready": false, "reason": reason}));
    }
    HttpResponse::Ok().json(json!({"ready": true}))
}

pub async fn status(state: web::Data<AppState>) -> HttpResponse {
    let mut status = serde_json::to_value(state.engine.status().await).unwrap_or_default();
    let queue = match &state.node.queue {
        None => json!({"backend": "memory"}),
        Some(queue) => {
            let mut shown = json!({"backend": "redis", "redis": redis_summary(&state)});
            if let Ok(stats) = queue.stats().await {
                shown["stats"] = serde_json::to_value(stats).unwrap_or_default();
            }
            if let Some(worker) = &state.node.worker {
                shown["consumer"] = json!(worker.consumer());
                shown["running"] = json!(worker.in_flight());
            }
            shown
        }
    };
    status["queue"] = queue;
    HttpResponse::Ok().json(status)
}

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.engine.telemetry.gather().await)
}

pub async fn list_flags(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let flags = state.engine.flags.send(GetFlags).await?;
    Ok(HttpResponse::Ok().json(json!({"flags": flags.to_json(), "definitions": FLAGS})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagUpdate {
    value: Value,
}

pub async fn set_flag(
    path: web::Path<String>,
    body: web::Json<FlagUpdate>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let msg = SetFlag {
        name: path.into_inner(),
        value: body.into_inner().value,
        source: FlagSource::Api,
    };
    let entry = state.engine.flags.send(msg).await??;
    if let Some(cluster) = &state.node.cluster_flags {
        if let Err(cause) = cluster.publish(entry.flag, &entry.new_value).await {
            tracing::warn!(flag = entry.flag, cause = %cause, "flag change not propagated");
            return Err(not_propagated("flags_not_propagated", &format!("flag {}", entry.flag)));
        }
    }
    Ok(HttpResponse::Ok().json(entry))
}

pub async fn flag_audit(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let entries = state.engine.flags.send(GetAudit).await?;
    Ok(HttpResponse::Ok().json(json!({"entries": entries})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolUpdate {
    workers: usize,
}

pub async fn resize_pool(
    path: web::Path<String>,
    body: web::Json<PoolUpdate>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let status = state.engine.resize(&path, body.workers).await?;
    // In a fleet every node runs this pool, and worker nodes have no admin API of their own.
    if let Some(redis) = state.engine.redis() {
        let fleet = athena_actors::distributed::pools::publish(redis, &path, body.workers).await;
        if let Err(cause) = fleet {
            tracing::warn!(service = %path, cause = %cause, "pool size not propagated");
            return Err(not_propagated("pools_not_propagated", &format!("pool {}", path.as_str())));
        }
    }
    Ok(HttpResponse::Ok().json(status))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerCommand {
    action: String,
}

pub async fn control_breaker(
    path: web::Path<String>,
    body: web::Json<BreakerCommand>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let action = match body.action.as_str() {
        "force_open" => AdminAction::ForceOpen,
        "force_closed" => AdminAction::ForceClosed,
        "disable" => AdminAction::Disable,
        "reset" => AdminAction::Reset,
        other => {
            return Err(ApiError::bad_request(format!(
                "unknown action {other:?}: expected force_open, force_closed, disable or reset"
            )))
        }
    };
    let slots = state.engine.control_breaker(&path, action).await?;
    Ok(HttpResponse::Ok().json(json!({"provider": path.as_str(), "slots": slots})))
}
