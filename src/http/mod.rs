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
use athena_actors::engine::Engine;

use error::ApiError;

/// What every handler can reach.
pub struct AppState {
    pub engine: Engine,
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
        .route("/api/flags", web::get().to(admin::list_flags))
        .route("/api/flags/audit", web::get().to(admin::flag_audit))
        .route("/api/flags/{name}", web::put().to(admin::set_flag))
        .route("/api/admin/pools/{service}", web::put().to(admin::resize_pool))
        .route("/api/admin/breakers/{provider}", web::post().to(admin::control_breaker));
}

/// The OpenAPI document of every route above, kept beside the code in `docs/openapi.json`.
pub const OPENAPI: &str = include_str!("../../docs/openapi.json");

async fn openapi() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(OPENAPI)
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found("not_found", "no such route"))
}

/// A running HTTP server and the engine behind it.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub handle: ServerHandle,
    pub engine: Engine,
    pub draining: Arc<AtomicBool>,
    task: actix_rt::task::JoinHandle<std::io::Result<()>>,
}

impl RunningServer {
    /// Waits until the server has stopped (see [`RunningServer::shutdown`]).
    pub async fn stopped(self) -> std::io::Result<()> {
        self.task.await.unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }

    /// Turns readiness off, stops the HTTP side, and lets accepted jobs finish.
    pub async fn shutdown(&self, grace: std::time::Duration) -> usize {
        self.draining.store(true, Ordering::Relaxed);
        self.handle.stop(true).await;
        self.engine.shutdown(grace).await
    }
}

/// Binds the listener and starts serving on the current actix system.
pub fn bind(
    engine: Engine,
    listener: TcpListener,
    workers: usize,
    max_body_bytes: usize,
) -> std::io::Result<RunningServer> {
    let addr = listener.local_addr()?;
    let draining = Arc::new(AtomicBool::new(false));
    let state = web::Data::new(AppState {
        engine: engine.clone(),
        max_body_bytes,
        draining: draining.clone(),
    });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .configure(|cfg| configure(cfg, max_body_bytes))
            .default_service(web::to(not_found))
    })
    .workers(workers)
    .disable_signals()
    .listen(listener)?
    .run();
    let handle = server.handle();
    let task = actix_rt::spawn(server);
    Ok(RunningServer { addr, handle, engine, draining, task })
}
