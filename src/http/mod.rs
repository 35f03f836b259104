//! The HTTP API: routes, shared state, and the server's life cycle.
//!
//! Routes follow the original Athena clients. Extractor failures (bad JSON, wrong path
//! parameters, oversized bodies) are turned into the same `{"error": {...}}` shape as every
//! other error, and unknown routes answer 404 in that shape too.

mod admin;
mod analysis;
pub mod error;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix_web::dev::ServerHandle;
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpResponse, HttpServer, ResponseError};
use athena_actors::distributed::flags::ClusterFlags;
use athena_actors::distributed::{RedisQueue, WorkerHandle};
use athena_actors::engine::Engine;
use athena_actors::events::EventHub;

use error::ApiError;

/// The parts of a node the HTTP layer serves.
#[derive(Clone)]
pub struct Node {
    pub engine: Engine,
    /// The Redis queue, in distributed mode: submissions go there and status comes from it.
    pub queue: Option<RedisQueue>,
    /// The events clients stream: the engine's own hub in embedded mode, the events heard
    /// from every worker over Redis in distributed mode.
    pub events: EventHub,
    pub cluster_flags: Option<ClusterFlags>,
    /// This node's consumer of the Redis queue, when it runs jobs from it.
    pub worker: Option<Arc<WorkerHandle>>,
    /// Whether the node serves the API (a worker node serves `/metrics` and `/readyz` only).
    pub api: bool,
}

impl Node {
    /// One process doing everything, with no Redis.
    pub fn embedded(engine: Engine) -> Node {
        Node {
            events: engine.events.clone(),
            engine,
            queue: None,
            cluster_flags: None,
            worker: None,
            api: true,
        }
    }
}

/// What every handler can reach.
pub struct AppState {
    pub engine: Engine,
    pub node: Node,
    pub max_body_bytes: usize,
    /// Set when shutdown begins, so `/readyz` turns traffic away first.
    pub draining: Arc<AtomicBool>,
}

/// Every path served, for the check that the OpenAPI document covers them all.
pub const ROUTES: &[&str] = &[
    "/api/health",
    "/readyz",
    "/metrics",
    "/api/openapi.json",
    "/api/status",
    "/api/analysis/submit",
    "/api/analysis/status/{id}",
    "/api/analysis/{id}/events",
    "/api/flags",
    "/api/flags/audit",
    "/api/flags/{name}",
    "/api/admin/pools/{service}",
    "/api/admin/breakers/{provider}",
];

/// Registers every route on an app; shared by the server and the tests.
pub fn configure(cfg: &mut web::ServiceConfig, max_body_bytes: usize) {
    let json = web::JsonConfig::default().limit(64 * 1024).error_handler(|err, _| {
        if err.status_code() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(64 * 1024).into()
        } else {
            ApiError::bad_request(format!("malformed JSON body: {err}")).into()
        }
    });
    let path = web::PathConfig::default()
        .error_handler(|err, _| ApiError::bad_request(format!("bad path parameter: {err}")).into());
    let _ = max_body_bytes;

    cfg.app_data(json)
        .app_data(path)
        .route("/api/health", web::get().to(admin::health))
        .route("/readyz", web::get().to(admin::readyz))
        .route("/metrics", web::get().to(admin::metrics))
        .route("/api/openapi.json", web::get().to(openapi))
        .route("/api/status", web::get().to(admin::status))
        .route("/api/analysis/submit", web::post().to(analysis::submit))
        .route("/api/analysis/status/{id}", web::get().to(analysis::status))
        .route("/api/analysis/{id}/events", web::get().to(analysis::events))
        .route("/api/flags", web::get().to(admin::list_flags))
        .route("/api/flags/audit", web::get().to(admin::flag_audit))
        .route("/api/flags/{name}", web::put().to(admin::set_flag))
        .route("/api/admin/pools/{service}", web::put().to(admin::resize_pool))
        .route("/api/admin/breakers/{provider}", web::post().to(admin::control_breaker));
}

/// The routes of a worker node: readiness and metrics, nothing that takes work.
pub fn configure_worker(cfg: &mut web::ServiceConfig) {
    cfg.route("/readyz", web::get().to(admin::readyz))
        .route("/metrics", web::get().to(admin::metrics));
}

/// The OpenAPI document of every route above, kept beside the code in `docs/openapi.json`.
pub const OPENAPI: &str = include_str!("../../docs/openapi.json");

async fn openapi() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(OPENAPI)
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found("not_found", "no such route"))
}

/// A running HTTP server and the node behind it.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub handle: ServerHandle,
    pub engine: Engine,
    pub node: Node,
    pub draining: Arc<AtomicBool>,
    task: actix_rt::task::JoinHandle<std::io::Result<()>>,
}

impl RunningServer {
    /// Waits until the server has stopped (see [`RunningServer::shutdown`]).
    pub async fn stopped(self) -> std::io::Result<()> {
        self.task.await.unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }

    /// Turns readiness off, stops the HTTP side, and lets accepted jobs finish. A worker
    /// stops reading the queue first; what it cannot finish in time is taken over by another
    /// worker once its lease runs out.
    pub async fn shutdown(&self, grace: std::time::Duration) -> usize {
        self.draining.store(true, Ordering::Relaxed);
        self.handle.stop(true).await;
        let left = match &self.node.worker {
            Some(worker) => worker.shutdown(grace).await,
            None => 0,
        };
        left + self.engine.shutdown(grace).await
    }
}

/// Binds the listener and starts serving on the current actix system.
pub fn bind(
    node: Node,
    listener: TcpListener,
    workers: usize,
    max_body_bytes: usize,
) -> std::io::Result<RunningServer> {
    let addr = listener.local_addr()?;
    let draining = Arc::new(AtomicBool::new(false));
    let engine = node.engine.clone();
    let api = node.api;
    let state = web::Data::new(AppState {
        engine: engine.clone(),
        node: node.clone(),
        max_body_bytes,
        draining: draining.clone(),
    });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .configure(
                |cfg| {
                    if api {
                        configure(cfg, max_body_bytes)
                    } else {
                        configure_worker(cfg)
                    }
                },
            )
            .default_service(web::to(not_found))
    })
    .workers(workers)
    .disable_signals()
    .listen(listener)?
    .run();
    let handle = server.handle();
    let task = actix_rt::spawn(server);
    Ok(RunningServer { addr, handle, engine, node, draining, task })
}
