//! The bulkhead's public vocabulary: its settings, priority lanes, rejections, the observer
//! hooks metrics attach to, and the statistics `/api/status` shows.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::DRAINING_RETRY_AFTER;
use crate::breaker::ConfigError;

/// Settings of one bulkhead.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct BulkheadConfig {
    /// Jobs running at once. At least 1.
    pub max_concurrent: usize,
    /// Jobs waiting, all lanes together; 0 = no queue, reject when busy.
    pub max_queued: usize,
    /// The longest a job waits in the queue. Greater than 0 while `max_queued` > 0.
    #[serde(with = "humantime_serde")]
    pub queue_timeout: Duration,
    /// After this many grants in a row to a higher lane while a lower lane waits, the lower lane
    /// is served once. 0 = strict priority (a busy high lane can starve the others).
    pub starvation_limit: u32,
}

impl Default for BulkheadConfig {
    /// 4 running, 16 waiting for at most 30 s, low lanes served at least every 8th grant.
    fn default() -> Self {
        Self {
            max_concurrent: 4,
            max_queued: 16,
            queue_timeout: Duration::from_secs(30),
            starvation_limit: 8,
        }
    }
}

impl BulkheadConfig {
    /// Rejects settings that cannot work, naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_concurrent == 0 {
            return Err(ConfigError::new("max_concurrent", "must be at least 1"));
        }
        if self.max_queued > 0 && self.queue_timeout.is_zero() {
            return Err(ConfigError::new(
                "queue_timeout",
                "must be greater than 0 while max_queued is above 0",
            ));
        }
        Ok(())
    }
}

/// Which lane a job waits in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    High,
    #[default]
    Normal,
    Low,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    /// Lane index: 0 is served first.
    pub(super) fn lane(self) -> usize {
        self as usize
    }
}

/// Why a job was not admitted. Every variant is local back-pressure, not a provider failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BulkheadError {
    #[error("bulkhead {service} is full ({active} running, {queued} queued)")]
    Full { service: String, active: usize, queued: usize, retry_after: Duration },
    #[error("bulkhead {service}: no slot within {waited:?}")]
    QueueTimeout { service: String, waited: Duration, retry_after: Duration },
    #[error("bulkhead {service} is draining")]
    Draining { service: String },
}

impl BulkheadError {
    /// When to try again.
    pub fn retry_after(&self) -> Duration {
        match self {
            BulkheadError::Full { retry_after, .. }
            | BulkheadError::QueueTimeout { retry_after, .. } => *retry_after,
            BulkheadError::Draining { .. } => DRAINING_RETRY_AFTER,
        }
    }

    /// "full", "queue_timeout" or "draining", as passed to [`BulkheadObserver::rejected`].
    pub fn reason(&self) -> &'static str {
        match self {
            BulkheadError::Full { .. } => "full",
            BulkheadError::QueueTimeout { .. } => "queue_timeout",
            BulkheadError::Draining { .. } => "draining",
        }
    }
}

/// Metrics hooks. Every method has a no-op default.
///
/// `gauges` is called while the bulkhead's lock is held, so that gauge updates arrive in the
/// order the changes happened; it must be quick and must not call back into the bulkhead. The
/// other methods are called without the lock.
pub trait BulkheadObserver: Send + Sync + 'static {
    /// A job got a slot after waiting `waited` (zero on the fast path).
    fn admitted(&self, _service: &str, _waited: Duration) {}
    /// A job was turned away: "full", "queue_timeout" or "draining".
    fn rejected(&self, _service: &str, _reason: &'static str) {}
    /// A job released its slot after running for `ran`.
    fn finished(&self, _service: &str, _ran: Duration) {}
    /// The running or waiting count changed.
    fn gauges(&self, _service: &str, _active: usize, _queued: usize) {}
}

/// An observer that does nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopObserver;

impl BulkheadObserver for NoopObserver {}

/// Waiting jobs per lane.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LaneCounts {
    pub high: usize,
    pub normal: usize,
    pub low: usize,
}

/// A read-only view for the admin API and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkheadStats {
    pub service: String,
    pub max_concurrent: usize,
    pub max_queued: usize,
    pub active: usize,
    pub queued: usize,
    pub queued_by_lane: LaneCounts,
    /// Jobs admitted (fast path and from the queue).
    pub executed: u64,
    /// Jobs turned away as full or draining.
    pub rejected: u64,
    /// Jobs that gave up after `queue_timeout`.
    pub timed_out: u64,
    /// Every slot busy and jobs waiting (or no queue to wait in).
    pub saturated: bool,
    pub enabled: bool,
    pub draining: bool,
}
