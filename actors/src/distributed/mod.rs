//! Distributed mode: API nodes and worker nodes that share jobs, samples, results, cache,
//! flags and events through Redis.
//!
//! | file | role |
//! |---|---|
//! | [`conn`] | the Redis client: multiplexed connections that reconnect by themselves, health |
//! | [`keys`] | every key name, under one configurable prefix |
//! | [`queue`] | the API side: samples, job records, idempotency keys, enqueueing, status |
//! | [`worker`] | the worker side: consumer group reads, reclaims, leases, retry promotion |
//! | `delivery` | one delivery: claim, run through the router, finish, retry or dead-letter |
//! | [`scripts`] | the Lua scripts that make a delivery's claim and a job's finish atomic |
//! | [`events`] | job events across nodes over pub/sub |
//! | [`flags`] | flags stored in a hash and propagated over a change channel |
//! | [`pools`] | worker pool sizes set once for every node of the fleet |
//! | [`cache_tier`] | the Redis tier of the result cache, behind a breaker |
//!
//! # Why Streams, and what "nothing lost" rests on
//!
//! A job is an entry in one stream read by one consumer group. Reading an entry does not
//! remove it: it stays in the group's pending list, owned by the consumer that read it, until
//! that consumer acknowledges it, which it does only after the job's result is stored. A
//! worker that dies leaves its entries pending; after their lease runs out (their idle time
//! in Redis passes `queue.lease`) another worker takes them over with XAUTOCLAIM. A worker
//! still running a long job keeps resetting that idle time, so a live job is never taken
//! from it. Every delivery is counted in the job's hash; past `queue.max_deliveries` the job
//! goes to the dead-letter stream and is marked failed with the reason.
//!
//! Redelivery makes processing at-least-once; the job's hash makes its outcome once-only.
//! A claim script refuses a job whose record is already finished or whose lease (held in
//! its hash, extended while it runs) another live worker holds, and the finish script
//! stores the record, acknowledges the entry and publishes the final event in one step,
//! only for the first finisher.

pub mod cache_tier;
pub mod conn;
mod delivery;
pub mod events;
pub mod flags;
pub mod keys;
pub mod pools;
pub mod queue;
pub mod scripts;
pub mod worker;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use conn::{Redis, RedisHealth};
pub use keys::Keys;
pub use queue::{QueueError, RedisQueue};
pub use worker::{QueueWorker, WorkerHandle};

/// Where jobs wait: in this process, or in Redis for a fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum QueueBackend {
    /// One process runs everything; nothing outside it is needed.
    #[default]
    Memory,
    /// Jobs, records, samples, cache, flags and events live in Redis.
    Redis,
}

impl QueueBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueBackend::Memory => "memory",
            QueueBackend::Redis => "redis",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    pub backend: QueueBackend,
    /// Entries a worker reads per XREADGROUP.
    pub batch: usize,
    /// How long one XREADGROUP waits for new entries before asking again.
    #[serde(with = "humantime_serde")]
    pub block: Duration,
    /// Jobs one worker node runs at once; it reads no more than that.
    pub prefetch: usize,
    /// A delivery not acknowledged and not extended for this long is taken over by another
    /// worker. Running jobs extend it every third of it.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// Deliveries after which a job goes to the dead-letter stream.
    pub max_deliveries: u32,
    /// Wait before the first retry of a failed job; doubles each time up to `retry_max_backoff`.
    #[serde(with = "humantime_serde")]
    pub retry_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max_backoff: Duration,
    /// How long a stored sample is kept; each submission of the same bytes renews it.
    #[serde(with = "humantime_serde")]
    pub sample_ttl: Duration,
    /// Entries kept in the dead-letter stream (approximately; the oldest go first).
    pub dead_letter_max: usize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            backend: QueueBackend::Memory,
            batch: 64,
            block: Duration::from_secs(1),
            prefetch: 256,
            lease: Duration::from_secs(60),
            max_deliveries: 5,
            retry_backoff: Duration::from_secs(1),
            retry_max_backoff: Duration::from_secs(60),
            sample_ttl: Duration::from_secs(24 * 3600),
            dead_letter_max: 10_000,
        }
    }
}

impl QueueConfig {
    /// The wait before retry number `attempt` (1 for the first retry).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.saturating_sub(1)).unwrap_or(u32::MAX);
        self.retry_backoff.saturating_mul(factor).min(self.retry_max_backoff)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.batch == 0 || self.prefetch == 0 {
            return Err("queue.batch and queue.prefetch must be at least 1".into());
        }
        if self.lease < Duration::from_secs(1) {
            return Err("queue.lease must be at least 1s".into());
        }
        if self.max_deliveries == 0 {
            return Err("queue.max_deliveries must be at least 1".into());
        }
        if self.block >= self.lease {
            return Err("queue.block must be shorter than queue.lease".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[:password@]host:port/db`; the password is never shown.
    pub url: String,
    /// Prepended to every key and channel, so several deployments can share one Redis.
    pub key_prefix: String,
    /// Multiplexed connections shared by the node's requests (each pipelines many commands).
    pub pool_size: usize,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// A command not answered in this long fails, and the caller degrades or answers 503.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379/0".into(),
            key_prefix: "athena:".into(),
            pool_size: 4,
            connect_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_secs(2),
        }
    }
}

impl RedisConfig {
    /// The URL with any password replaced, for logs and `check-config`.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.pool_size == 0 {
            return Err("redis.pool_size must be at least 1".into());
        }
        redis::Client::open(self.url.as_str())
            .map(|_| ())
            .map_err(|e| format!("redis.url {:?}: {e}", self.redacted_url()))
    }
}

/// Replaces the password (and a user name with it) in a `redis://` URL.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    match rest.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://<redacted>@{host}"),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show_in_the_url() {
        assert_eq!(redact_url("redis://:s3cret@h:6379/0"), "redis://<redacted>@h:6379/0");
        assert_eq!(redact_url("redis://u:p@h/1"), "redis://<redacted>@h/1");
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
    }

    #[test]
    fn retry_backoff_doubles_up_to_its_cap() {
        let config = QueueConfig {
            retry_backoff: Duration::from_millis(100),
            retry_max_backoff: Duration::from_millis(500),
            ..QueueConfig::default()
        };
        let waits: Vec<u128> = (1..=5).map(|a| config.backoff(a).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 500, 500]);
        assert_eq!(config.backoff(200), Duration::from_millis(500));
    }

    #[test]
    fn nonsense_settings_are_refused() {
        let bad = QueueConfig { lease: Duration::from_millis(10), ..QueueConfig::default() };
        assert!(bad.validate().is_err());
        assert!(QueueConfig::default().validate().is_ok());
        let url = RedisConfig { url: "http://nope".into(), ..RedisConfig::default() };
        assert!(url.validate().is_err());
    }
}
