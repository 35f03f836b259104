//! The `athena` binary's library: configuration, HTTP API and CLI commands, on top of the
//! `athena-actors` engine. It is a library so that the black-box tests start the very same
//! server the binary runs, and the same fake provider `athena fake-provider` serves.

pub mod cli;
pub mod config;
pub mod fake_provider;
pub mod http;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use athena_actors::clock::{self, SharedClock};
use athena_actors::distributed::{self, QueueBackend, QueueWorker, Redis, RedisQueue};
use athena_actors::engine::Engine;
use athena_actors::events::EventHub;

/// What a process does in a fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The HTTP API, and workers running jobs (the only role of the memory backend).
    All,
    /// The HTTP API only: jobs go to Redis for worker nodes (`athena serve --api-only`).
    Api,
    /// Workers only, with `/metrics` and `/readyz` (`athena worker`).
    Worker,
}

/// Starts the engine and binds the HTTP server from a loaded configuration. Must run inside
/// an actix system.
pub fn start(loaded: &config::Loaded) -> anyhow::Result<http::RunningServer> {
    start_node(loaded, Role::All, clock::system())
}

/// [`start`] with the clock the breakers read, so tests can move breaker time by hand.
pub fn start_with_clock(
    loaded: &config::Loaded,
    clock: SharedClock,
) -> anyhow::Result<http::RunningServer> {
    start_node(loaded, Role::All, clock)
}

/// Starts a node in the given role.
pub fn start_node(
    loaded: &config::Loaded,
    role: Role,
    clock: SharedClock,
) -> anyhow::Result<http::RunningServer> {
    let config = &loaded.config;
    let redis = match config.queue.backend {
        QueueBackend::Memory if role != Role::All => anyhow::bail!(
            "this role needs the Redis queue: set queue.backend = \"redis\" \
             (or REDIS_ENABLED=true) and redis.url"
        ),
        QueueBackend::Memory => None,
        QueueBackend::Redis => Some(Redis::connect(&config.redis).map_err(anyhow::Error::msg)?),
    };
    let engine =
        Engine::start_with_redis(&config.engine(), &loaded.flag_layers(), clock, redis.clone())?;
    let listener = TcpListener::bind(&config.server.bind)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.server.bind))?;

    let Some(redis) = redis else {
        let node = http::Node::embedded(engine.clone());
        return Ok(http::bind(
            node,
            listener,
            config.server.http_workers,
            config.server.max_body_bytes,
        )?);
    };

    tracing::info!(redis = %config.redis.redacted_url(), role = ?role, "joining the fleet");
    redis.spawn_monitor(Duration::from_secs(1));
    let cluster_flags = distributed::flags::ClusterFlags::new(redis.clone(), engine.flags.clone());
    cluster_flags.spawn();
    distributed::pools::spawn_listener(redis.clone(), engine.clone());

    let worker = (role != Role::Api).then(|| {
        distributed::events::spawn_forwarder(&engine.events, redis.clone());
        Arc::new(QueueWorker::start(
            redis.clone(),
            config.queue.clone(),
            config.router.retention,
            engine.router.clone(),
            engine.telemetry.clone(),
        ))
    });
    // API nodes hear every job's events, whichever worker runs it.
    let events = EventHub::default();
    if role != Role::Worker {
        distributed::events::spawn_listener(redis.clone(), events.clone());
    }
    let queue = RedisQueue::new(redis.clone(), config.router.retention, config.queue.sample_ttl);
    let node = http::Node {
        engine,
        queue: Some(queue),
        events,
        cluster_flags: Some(cluster_flags),
        worker,
        api: role != Role::Worker,
    };
    Ok(http::bind(node, listener, config.server.http_workers, config.server.max_body_bytes)?)
}
