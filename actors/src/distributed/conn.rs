//! The Redis connection of one node, and whether Redis is reachable.
//!
//! Commands go over a few multiplexed connections (`redis.pool_size`): concurrent requests
//! share a socket and are pipelined by the client, so a busy node needs no more sockets than
//! that. Each connection is a [`ConnectionManager`]: it is made lazily, so a node starts while
//! Redis is down, and it reconnects by itself after an I/O error. Every command runs under
//! `redis.command_timeout`, so a caller fails fast while Redis is away instead of hanging.
//!
//! Blocking reads (XREADGROUP with BLOCK) get a connection of their own, since a blocked
//! command would hold up everything pipelined behind it on a shared one.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, RedisError, RedisResult};

use super::{Keys, RedisConfig};

/// Whether the last command reached Redis, and why not when it did not.
#[derive(Debug, Clone, Default)]
pub struct RedisHealth {
    down: Arc<AtomicBool>,
    reason: Arc<Mutex<Option<String>>>,
}

impl RedisHealth {
    /// `None` while Redis answers; the last error otherwise.
    pub fn problem(&self) -> Option<String> {
        if !self.down.load(Ordering::Relaxed) {
            return None;
        }
        self.reason.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn record(&self, error: Option<&RedisError>) {
        match error {
            None => {
                if self.down.swap(false, Ordering::Relaxed) {
                    tracing::info!("redis is reachable again");
                }
            }
            // A script or type error is an answer: Redis itself is up.
            Some(e) if !is_unreachable(e) => {}
            Some(e) => {
                *self.reason.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(format!("redis is unreachable: {e}"));
                if !self.down.swap(true, Ordering::Relaxed) {
                    tracing::warn!(cause = %e, "redis is unreachable");
                }
            }
        }
    }
}

/// Errors that say Redis was not reached, as opposed to an answer that was an error.
pub fn is_unreachable(e: &RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal()
}

/// Waits between attempts to reach Redis again: short at first, so a blip heals at once,
/// doubling up to a cap, so a long outage costs one attempt per cap.
#[derive(Debug, Clone)]
pub struct RetryWait {
    first: Duration,
    cap: Duration,
    next: Duration,
}

impl RetryWait {
    pub fn new(first: Duration, cap: Duration) -> Self {
        RetryWait { first, cap, next: first }
    }

    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.cap);
        wait
    }

    /// After a success: the next failure starts again from the first wait.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// One node's handle on Redis; cheap to clone.
#[derive(Clone)]
pub struct Redis {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    pool: Vec<ConnectionManager>,
    next: AtomicUsize,
    config: RedisConfig,
    keys: Keys,
    health: RedisHealth,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis").field("url", &self.inner.config.redacted_url()).finish()
    }
}

impl Redis {
    /// Prepares the connections without waiting for Redis. Must run inside a tokio runtime.
    pub fn connect(config: &RedisConfig) -> Result<Redis, String> {
        config.validate()?;
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| format!("redis.url {:?}: {e}", config.redacted_url()))?;
        let pool = (0..config.pool_size)
            .map(|_| manager(&client, config, config.command_timeout))
            .collect::<RedisResult<Vec<_>>>()
            .map_err(|e| format!("redis: {e}"))?;
        Ok(Redis {
            inner: Arc::new(Inner {
                client,
                pool,
                next: AtomicUsize::new(0),
                config: config.clone(),
                keys: Keys::new(&config.key_prefix),
                health: RedisHealth::default(),
            }),
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    pub fn client(&self) -> &redis::Client {
        &self.inner.client
    }

    pub fn health(&self) -> &RedisHealth {
        &self.inner.health
    }

    /// A shared connection, round robin over the pool.
    pub fn conn(&self) -> ConnectionManager {
        let i = self.inner.next.fetch_add(1, Ordering::Relaxed) % self.inner.pool.len();
        self.inner.pool[i].clone()
    }

    /// A connection of its own for commands that block up to `longest_block`.
    pub fn dedicated(&self, longest_block: Duration) -> RedisResult<ConnectionManager> {
        let timeout = self.inner.config.command_timeout + longest_block;
        manager(&self.inner.client, &self.inner.config, timeout)
    }

    /// Runs a command on a shared connection under the command timeout, noting the outcome
    /// in [`RedisHealth`].
    pub async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> RedisResult<T> {
        let mut conn = self.conn();
        self.timed(self.inner.config.command_timeout, cmd.query_async(&mut conn)).await
    }

    /// Runs a pipeline on a shared connection, as [`Redis::query`].
    pub async fn pipe<T: FromRedisValue>(&self, pipe: &redis::Pipeline) -> RedisResult<T> {
        let mut conn = self.conn();
        self.timed(self.inner.config.command_timeout, pipe.query_async(&mut conn)).await
    }

    /// Runs a script on a shared connection, as [`Redis::query`].
    pub async fn script<T: FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> RedisResult<T> {
        let mut conn = self.conn();
        self.timed(self.inner.config.command_timeout, invocation.invoke_async(&mut conn)).await
    }

    /// Awaits `work` for at most `limit`, and notes whether Redis answered.
    pub async fn timed<T>(
        &self,
        limit: Duration,
        work: impl std::future::Future<Output = RedisResult<T>>,
    ) -> RedisResult<T> {
        let result = match tokio::time::timeout(limit, work).await {
            Ok(result) => result,
            Err(_) => Err(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {limit:?}"),
            ))),
        };
        self.inner.health.record(result.as_ref().err());
        result
    }

    /// Pings Redis every `every` so health (and `/readyz`) follows it even on an idle node,
    /// and so a dropped connection is re-made before the next job needs it.
    pub fn spawn_monitor(&self, every: Duration) -> actix_rt::task::JoinHandle<()> {
        let redis = self.clone();
        actix_rt::spawn(async move {
            loop {
                let _: RedisResult<String> = redis.query(&redis::cmd("PING")).await;
                tokio::time::sleep(every).await;
            }
        })
    }
}

fn manager(
    client: &redis::Client,
    config: &RedisConfig,
    response_timeout: Duration,
) -> RedisResult<ConnectionManager> {
    // Few quick retries per reconnection: the callers have their own deadline and the next
    // command starts another attempt, so a long outage never leaves a connection given up on.
    let settings = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(500))
        .set_pipeline_buffer_size(4096);
    client.get_connection_manager_lazy(settings)
}

/// Follows a pub/sub channel for as long as the task lives: subscribes on a connection of
/// its own, calls `on_message` with each payload, and when the subscription drops (Redis
/// restarted, the network went away) subscribes again with a capped backoff. `on_connect`
/// runs after every subscription, so a follower can read what it missed meanwhile.
pub fn follow<C, CF, M, MF>(
    redis: Redis,
    channel: String,
    on_connect: C,
    on_message: M,
) -> actix_rt::task::JoinHandle<()>
where
    C: Fn() -> CF + 'static,
    CF: std::future::Future<Output = ()>,
    M: Fn(String) -> MF + 'static,
    MF: std::future::Future<Output = ()>,
{
    use futures_util::StreamExt;

    actix_rt::spawn(async move {
        let mut wait = RetryWait::new(Duration::from_millis(50), Duration::from_secs(2));
        loop {
            let limit = redis.config().connect_timeout;
            let subscribed = async {
                let mut pubsub = redis.timed(limit, redis.client().get_async_pubsub()).await?;
                redis.timed(limit, pubsub.subscribe(&channel)).await?;
                Ok::<_, RedisError>(pubsub)
            };
            match subscribed.await {
                Ok(mut pubsub) => {
                    wait.reset();
                    on_connect().await;
                    let mut messages = pubsub.on_message();
                    while let Some(message) = messages.next().await {
                        if let Ok(payload) = message.get_payload::<String>() {
                            on_message(payload).await;
                        }
                    }
                    tracing::debug!(%channel, "subscription dropped; subscribing again");
                }
                Err(e) => tracing::debug!(%channel, cause = %e, "cannot subscribe yet"),
            }
            tokio::time::sleep(wait.next_wait()).await;
        }
    })
}
