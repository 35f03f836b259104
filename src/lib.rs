//! The `athena` binary's library: configuration, HTTP API and CLI commands, on top of the
//! `athena-actors` engine. It is a library so that the black-box tests start the very same
//! server the binary runs, and the same fake provider `athena fake-provider` serves.

pub mod cli;
pub mod config;
pub mod fake_provider;
pub mod http;

use std::net::TcpListener;

use athena_actors::clock::{self, SharedClock};
use athena_actors::engine::Engine;

/// Starts the engine and binds the HTTP server from a loaded configuration. Must run inside
/// an actix system.
pub fn start(loaded: &config::Loaded) -> anyhow::Result<http::RunningServer> {
    start_with_clock(loaded, clock::system())
}

/// [`start`] with the clock the breakers read, so tests can move breaker time by hand.
pub fn start_with_clock(
    loaded: &config::Loaded,
    clock: SharedClock,
) -> anyhow::Result<http::RunningServer> {
    let config = &loaded.config;
    let engine = Engine::start(&config.engine(), &loaded.flag_layers(), clock)?;
    let listener = TcpListener::bind(&config.server.bind)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.server.bind))?;
    let server =
        http::bind(engine, listener, config.server.http_workers, config.server.max_body_bytes)?;
    Ok(server)
}
