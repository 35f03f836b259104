//! Feature flags shared by every node: a hash in Redis holds the values set through the API,
//! and a channel tells the nodes when one changed.
//!
//! The hash (`flags`) maps a canonical flag name to its JSON value; the channel
//! (`flags:changed`) carries the name of a flag just written. A node that changes a flag
//! through its API applies it locally first (so validation happens where the operator gets
//! the answer) and then calls [`ClusterFlags::publish`], which writes the value and announces
//! it in one MULTI.
//!
//! # Why a message makes a node re-read the whole hash
//!
//! Pub/sub delivers at most once and only to connected subscribers, so a message alone is not
//! enough to keep a node right. The message is only a wake-up: the node then reads the whole
//! hash (a few dozen small fields) and hands it to the flags actor as one [`SyncFlags`]. That
//! read is idempotent, so a duplicate, a reordering or a burst of messages does no harm, and a
//! missed one is made up by the next read. Reads happen:
//! - on every message, well under a second after the change in the normal case;
//! - after every (re)connection of the subscription, since messages sent while it was down are
//!   gone: a node that was cut off converges as soon as it is back;
//! - every 5 seconds regardless, as a safety net for a subscription that died silently.
//!
//! # Which value wins
//!
//! Flags set in a node's config file or environment stay local to that node. A value in the
//! hash, set through the API of any node, overrides them on every node, and keeps overriding
//! them after a restart. Removing a field from the hash does not restore the local values on
//! running nodes: to go back, set the value wanted through the API.
//!
//! # When Redis is away
//!
//! Nothing here blocks a node's start: [`ClusterFlags::new`] does no I/O, [`ClusterFlags::load`]
//! fails after the command timeout, and [`ClusterFlags::spawn`] retries in the background
//! (100 ms doubling to 2 s between attempts). Until Redis answers, a node runs on its local
//! layers, then converges at its first successful read.
//!
//! A change whose [`ClusterFlags::publish`] fails stays on the node that made it only until
//! that node's next successful read, which brings back the cluster's value: the caller should
//! report the failure so the operator sets it again. A periodic read that lands between a
//! local change and its publication likewise restores the old value for the few milliseconds
//! until the change's own message arrives.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::Addr;
use futures_util::{FutureExt, StreamExt};
use redis::RedisResult;
use serde_json::Value;

use super::conn::RetryWait;
use super::Redis;
use crate::flags::{FlagError, FlagSet, FlagsActor, SyncFlags, SyncReport};

/// How often a node re-reads the hash even when no message came.
pub const RESYNC_EVERY: Duration = Duration::from_secs(5);

/// Wait before the first reconnection attempt; doubles up to [`LAST_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(100);
const LAST_RETRY: Duration = Duration::from_secs(2);

/// One node's side of the shared flags; cheap to clone.
#[derive(Clone)]
pub struct ClusterFlags {
    redis: Redis,
    flags: Addr<FlagsActor>,
    resync_every: Duration,
    /// Refusals already logged: the same unknown flag is read again on every sync, and one
    /// warning per new refusal is enough.
    refusals: Arc<Mutex<Vec<String>>>,
}

/// Why following the channel stopped.
#[derive(Debug)]
enum Ended {
    /// Redis did not answer or the subscription broke: reconnect after a wait.
    Redis(String),
    /// The flags actor stopped, so the node is shutting down: nothing left to follow for.
    ActorGone,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Redis(cause) => f.write_str(cause),
            Ended::ActorGone => f.write_str("the flags actor has stopped"),
        }
    }
}

impl ClusterFlags {
    pub fn new(redis: Redis, flags: Addr<FlagsActor>) -> Self {
        ClusterFlags { redis, flags, resync_every: RESYNC_EVERY, refusals: Arc::default() }
    }

    /// Changes the period of the safety-net read ([`RESYNC_EVERY`] by default).
    pub fn resync_every(mut self, every: Duration) -> Self {
        self.resync_every = every;
        self
    }

    /// Shares a value this node has just applied: stores it and tells the other nodes.
    pub async fn publish(&self, name: &str, value: &Value) -> Result<(), String> {
        let (name, value) = FlagSet::normalize(name, value).map_err(|e| e.to_string())?;
        let keys = self.redis.keys();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HSET")
            .arg(keys.flags())
            .arg(name)
            .arg(value.to_string())
            .ignore()
            .cmd("PUBLISH")
            .arg(keys.flags_channel())
            .arg(name)
            .ignore();
        self.redis
            .pipe::<()>(&pipe)
            .await
            .map_err(|e| format!("sharing flag {name} through redis: {e}"))
    }

    /// Reads the values set on any node and applies them; answers how many were accepted.
    /// Meant for a node's start, so it begins with the cluster's flags rather than converging
    /// a moment later. Fails after the command timeout when Redis is away.
    pub async fn load(&self) -> Result<usize, String> {
        let report = self.sync().await?;
        tracing::info!(
            applied = report.applied,
            changed = report.changed.len(),
            refused = report.refused.len(),
            "flags loaded from the cluster"
        );
        Ok(report.applied)
    }

    /// Reads the hash once and applies it, with the details: what changed, what was refused.
    pub async fn sync(&self) -> Result<SyncReport, String> {
        self.read_and_apply().await.map_err(|e| e.to_string())
    }

    /// Follows changes in the background until the flags actor stops. Must run on an actix
    /// (or tokio local) runtime.
    pub fn spawn(&self) -> actix_rt::task::JoinHandle<()> {
        let this = self.clone();
        actix_rt::spawn(async move { this.follow_forever().await })
    }

    async fn follow_forever(self) {
        let mut backoff = RetryWait::new(FIRST_RETRY, LAST_RETRY);
        let mut failing = false;
        loop {
            let Err(ended) = self.follow(&mut backoff, &mut failing).await;
            match ended {
                Ended::ActorGone => {
                    tracing::debug!("flags actor stopped; no longer following flag changes");
                    return;
                }
                Ended::Redis(cause) if !failing => {
                    failing = true;
                    tracing::warn!(
                        cause = %cause,
                        "not following flag changes from other nodes; retrying"
                    );
                }
                Ended::Redis(cause) => tracing::debug!(cause = %cause, "flag channel still down"),
            }
            tokio::time::sleep(backoff.next_wait()).await;
            // While Redis is away no read reaches the actor, so its end is noticed here.
            if !self.flags.connected() {
                return;
            }
        }
    }

    /// Subscribes, reads the hash, then re-reads it on each message and every
    /// `resync_every`, until something breaks.
    async fn follow(
        &self,
        backoff: &mut RetryWait,
        failing: &mut bool,
    ) -> Result<Infallible, Ended> {
        let channel = self.redis.keys().flags_channel();
        let config = self.redis.config();
        let subscribing = async {
            let mut pubsub = self.redis.client().get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok(pubsub)
        };
        let (mut sink, mut messages) = self
            .redis
            .timed(config.connect_timeout + config.command_timeout, subscribing)
            .await
            .map_err(|e| Ended::Redis(format!("subscribing to {channel}: {e}")))?
            .split();

        // Read only once subscribed: a change made after this read still arrives as a message.
        self.read_and_apply().await?;
        backoff.reset();
        if std::mem::take(failing) {
            tracing::info!("following flag changes from other nodes again");
        } else {
            tracing::debug!("following flag changes from other nodes");
        }

        let start = tokio::time::Instant::now() + self.resync_every;
        let mut safety_net = tokio::time::interval_at(start, self.resync_every);
        safety_net.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else {
                        return Err(Ended::Redis(format!("subscription to {channel} closed")));
                    };
                    let flag: String = message.get_payload().unwrap_or_default();
                    tracing::debug!(flag = %flag, "a node changed a flag");

                    // A burst of changes needs one read, not one per message.
                    let mut closed = false;
                    loop {
                        match messages.next().now_or_never() {
                            Some(Some(_)) => continue,
                            Some(None) => closed = true,
                            None => {}
                        }
                        break;
                    }
                    self.read_and_apply().await?;
                    if closed {
                        return Err(Ended::Redis(format!("subscription to {channel} closed")));
                    }
                }
                _ = safety_net.tick() => {
                    // A connection can die without closing (a peer that vanished); a ping on
                    // it finds out, where waiting for messages never would.
                    let ping: RedisResult<redis::Value> =
                        self.redis.timed(config.command_timeout, sink.ping()).await;
                    ping.map_err(|e| Ended::Redis(format!("ping on {channel}: {e}")))?;
                    self.read_and_apply().await?;
                }
            }
        }
    }

    async fn read_and_apply(&self) -> Result<SyncReport, Ended> {
        let key = self.redis.keys().flags();
        // Bytes, not strings: one field of junk must be refused alone, not fail every read.
        let stored: HashMap<Vec<u8>, Vec<u8>> = self
            .redis
            .query(redis::cmd("HGETALL").arg(&key))
            .await
            .map_err(|e| Ended::Redis(format!("reading {key}: {e}")))?;

        let mut values = BTreeMap::new();
        let mut unreadable = Vec::new();
        for (name, value) in stored {
            let name = String::from_utf8_lossy(&name).into_owned();
            match serde_json::from_slice::<Value>(&value) {
                Ok(value) => {
                    values.insert(name, value);
                }
                Err(e) => unreadable.push(FlagError::InvalidValue {
                    flag: name,
                    reason: format!("stored value is not JSON: {e}"),
                }),
            }
        }

        let mut report = self.flags.send(SyncFlags(values)).await.map_err(|_| Ended::ActorGone)?;
        report.refused.extend(unreadable);
        self.warn_new_refusals(&report.refused);
        Ok(report)
    }

    fn warn_new_refusals(&self, refused: &[FlagError]) {
        let now: Vec<String> = refused.iter().map(ToString::to_string).collect();
        let mut logged = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        for reason in now.iter().filter(|r| !logged.contains(r)) {
            tracing::warn!(reason = %reason, "a flag value from the cluster is refused here");
        }
        *logged = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnection_waits_double_up_to_a_cap_and_reset_on_success() {
        let mut backoff = RetryWait::new(FIRST_RETRY, LAST_RETRY);
        let waits: Vec<u128> = (0..7).map(|_| backoff.next_wait().as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 2000, 2000]);
        backoff.reset();
        assert_eq!(backoff.next_wait(), FIRST_RETRY);
    }
}
