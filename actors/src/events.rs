//! Job events: progress, partial results, completion and errors, for streaming clients.
//!
//! The hub is a broadcast channel. A slow subscriber that falls behind loses the oldest
//! events (it is told how many) rather than slowing the jobs down; the job record stays the
//! source of truth for the final state.

use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast;

use crate::job::JobId;

/// Events kept per subscriber before the oldest are dropped.
const CAPACITY: usize = 4096;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobEvent {
    pub analysis_id: JobId,
    /// `progress`, `partial_result`, `complete` or `error`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub progress: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl JobEvent {
    /// Every event type, in the order a job meets them.
    pub const KINDS: [&'static str; 4] = ["progress", "partial_result", "complete", "error"];
    /// Every stage an event may name.
    pub const STAGES: [&'static str; 4] = ["cache", "static", "container", "ai"];

    /// Whether this is a job's last event.
    pub fn is_final(&self) -> bool {
        matches!(self.kind, "complete" | "error")
    }
}

#[derive(Debug, Clone)]
pub struct EventHub {
    tx: broadcast::Sender<JobEvent>,
}

impl Default for EventHub {
    fn default() -> Self {
        EventHub { tx: broadcast::channel(CAPACITY).0 }
    }
}

impl EventHub {
    pub fn publish(&self, event: JobEvent) {
        // No subscriber is not an error: events are for whoever listens now.
        let _ = self.tx.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<JobEvent> {
        self.tx.subscribe()
    }
}
