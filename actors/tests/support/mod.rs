//! What the Redis-backed tests of this crate share: a key prefix of their own and a
//! connection handle on it.

use std::time::Duration;

use athena_actors::distributed::{Redis, RedisConfig};

/// How long one command may take before it counts as Redis being away.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);

/// A prefix no other test (or test run) shares.
pub fn unique_prefix(test: &str) -> String {
    format!("athena-test:{}:{:x}:{test}:", std::process::id(), rand::random::<u64>())
}

/// A node's handle on the Redis at `url`, under `prefix`, with quick timeouts.
pub fn redis(url: &str, prefix: &str) -> Redis {
    let config = RedisConfig {
        url: url.to_string(),
        key_prefix: prefix.to_string(),
        pool_size: 1,
        connect_timeout: Duration::from_millis(500),
        command_timeout: COMMAND_TIMEOUT,
    };
    Redis::connect(&config).unwrap()
}
