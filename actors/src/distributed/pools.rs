//! Worker pool sizes across a fleet.
//!
//! Worker nodes serve no admin API, so a pool resized on an API node
//! (`PUT /api/admin/pools/{service}`) is resized on every node: the size goes into the
//! `pools` hash and its service name onto the `pools` channel, and every node resizes its
//! own pool of that service. A node that starts later, or that was cut off from Redis when
//! the change went out, reads the hash when it (re)subscribes. Sizes from the hash override
//! a node's configured ones, as runtime changes do.

use std::collections::HashMap;

use super::Redis;
use crate::engine::Engine;

/// Stores a pool size for the whole fleet and tells every node.
pub async fn publish(redis: &Redis, service: &str, workers: usize) -> Result<(), String> {
    let mut pipe = redis::pipe();
    pipe.atomic();
    pipe.cmd("HSET").arg(redis.keys().pools()).arg(service).arg(workers).ignore();
    pipe.cmd("PUBLISH").arg(redis.keys().pools_channel()).arg(service).ignore();
    redis.pipe::<()>(&pipe).await.map_err(|e| e.to_string())
}

/// Applies every stored size to this node's pools.
async fn apply_all(redis: &Redis, engine: &Engine) {
    let sizes: HashMap<String, usize> =
        match redis.query(redis::cmd("HGETALL").arg(redis.keys().pools())).await {
            Ok(sizes) => sizes,
            Err(e) => {
                tracing::debug!(cause = %e, "cannot read the fleet's pool sizes");
                return;
            }
        };
    for (service, workers) in sizes {
        match engine.resize(&service, workers).await {
            Ok(_) => tracing::debug!(%service, workers, "pool resized from the fleet setting"),
            // A pool this node does not have (another node's provider): not ours to size.
            Err(e) => tracing::debug!(%service, cause = %e, "pool size not applied here"),
        }
    }
}

/// Follows pool size changes for as long as the node runs.
pub fn spawn_listener(redis: Redis, engine: Engine) -> actix_rt::task::JoinHandle<()> {
    let channel = redis.keys().pools_channel();
    let node = (redis.clone(), engine);
    let on_connect = {
        let node = node.clone();
        move || {
            let (redis, engine) = node.clone();
            async move { apply_all(&redis, &engine).await }
        }
    };
    // Re-reading every size is idempotent, and a burst of changes settles on the last value.
    let on_message = move |_service: String| {
        let (redis, engine) = node.clone();
        async move { apply_all(&redis, &engine).await }
    };
    super::conn::follow(redis, channel, on_connect, on_message)
}
