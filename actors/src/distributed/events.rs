//! Job events across nodes: Redis pub/sub between the worker that runs a job and the API
//! node a client watches it from.
//!
//! A worker forwards the progress and partial results its router publishes, in batches (one
//! message per batch, so a busy worker sends a few messages a millisecond, not one per
//! event). The final `complete` or `error` event is published by the finish script, in the
//! same step that stores the result, so a client that sees it can read the result at once.
//! Every API node listens and republishes what it hears into its own hub, which its
//! streaming routes read.
//!
//! Pub/sub is fire-and-forget: a node that is disconnected misses events. The job record in
//! Redis stays the truth for the final state, and the listener reconnects by itself.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::broadcast;

use super::Redis;
use crate::events::{EventHub, JobEvent};
use crate::job::JobId;

/// Events sent in one message at most.
const BATCH: usize = 256;

/// A job event as it travels between nodes.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireEvent {
    analysis_id: JobId,
    #[serde(rename = "type")]
    kind: String,
    progress: u8,
    #[serde(default)]
    stage: Option<String>,
    #[serde(default)]
    data: Option<Value>,
}

/// The message body for a batch of events.
pub fn encode(events: &[JobEvent]) -> String {
    serde_json::to_string(events).unwrap_or_else(|_| "[]".into())
}

/// Events of a message; kinds and stages this node does not know are dropped.
pub fn decode(payload: &str) -> Vec<JobEvent> {
    let wire: Vec<WireEvent> = match serde_json::from_str(payload) {
        Ok(wire) => wire,
        Err(e) => {
            tracing::debug!(cause = %e, "ignoring a malformed event message");
            return Vec::new();
        }
    };
    wire.into_iter()
        .filter_map(|w| {
            let kind = JobEvent::KINDS.iter().find(|k| **k == w.kind)?;
            let stage = match w.stage {
                Some(s) => Some(*JobEvent::STAGES.iter().find(|k| **k == s)?),
                None => None,
            };
            Some(JobEvent {
                analysis_id: w.analysis_id,
                kind,
                progress: w.progress,
                stage,
                data: w.data,
            })
        })
        .collect()
}

/// Forwards a worker's progress events to Redis until the hub closes.
pub fn spawn_forwarder(local: &EventHub, redis: Redis) -> actix_rt::task::JoinHandle<()> {
    let mut rx = local.subscribe();
    actix_rt::spawn(async move {
        let channel = redis.keys().events_channel();
        loop {
            let first = match rx.recv().await {
                Ok(event) => event,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::debug!(missed = n, "event forwarder fell behind");
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            // The final event travels with the stored result (see the finish script).
            let mut batch = Vec::with_capacity(16);
            if !first.is_final() {
                batch.push(first);
            }
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(event) if !event.is_final() => batch.push(event),
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                continue;
            }
            let mut cmd = redis::cmd("PUBLISH");
            cmd.arg(&channel).arg(encode(&batch));
            // Progress is best effort: a lost batch is not worth holding the worker up.
            let _ = redis.query::<i64>(&cmd).await;
        }
    })
}

/// Republishes every job event heard on Redis into `hub`, reconnecting whenever the
/// subscription drops.
pub fn spawn_listener(redis: Redis, hub: EventHub) -> actix_rt::task::JoinHandle<()> {
    let channel = redis.keys().events_channel();
    // Events missed while disconnected are gone: the records hold the final states.
    super::conn::follow(
        redis,
        channel,
        || async {},
        move |payload| {
            for event in decode(&payload) {
                hub.publish(event);
            }
            async {}
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_survive_the_trip_and_unknown_kinds_are_dropped() {
        let id = JobId::new();
        let event = JobEvent {
            analysis_id: id,
            kind: "progress",
            progress: 40,
            stage: Some("static"),
            data: Some(serde_json::json!({"a": 1})),
        };
        let decoded = decode(&encode(&[event]));
        assert_eq!(decoded.len(), 1);
        assert_eq!(
            (decoded[0].kind, decoded[0].stage, decoded[0].progress),
            ("progress", Some("static"), 40)
        );
        let odd = format!(r#"[{{"analysisId":"{id}","type":"explode","progress":1}}]"#);
        assert!(decode(&odd).is_empty());
        assert!(decode("not json").is_empty());
    }
}
