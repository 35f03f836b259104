//! The API side of the Redis queue: what a submission writes and what a status read sees.
//!
//! A submission is one script ([`scripts::ENQUEUE`]): the sample is stored once per SHA-256
//! (its TTL renewed by each submission of the same bytes), the job hash gets the job's spec
//! and its pending record, an `Idempotency-Key` is bound to the job id, and one entry goes
//! onto the stream. Either all of it happens or none: a 201 means the job is in Redis.
//! When Redis cannot be reached the submission fails with [`QueueError::Unavailable`], which
//! the API answers with 503; nothing is accepted that is not stored.

use std::time::Duration;

use redis::streams::StreamInfoGroupsReply;
use redis::RedisError;
use serde::{Deserialize, Serialize};

use super::{scripts, Redis};
use crate::analysis::Depth;
use crate::bulkhead::Priority;
use crate::job::{AnalysisType, JobId, JobRecord, JobSpec, JobStatus, Sample};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QueueError {
    #[error("the job queue is unavailable: {0}")]
    Unavailable(String),
    #[error("the job queue answered something unexpected: {0}")]
    Corrupt(String),
}

impl From<RedisError> for QueueError {
    fn from(e: RedisError) -> Self {
        // A full Redis (noeviction) refuses writes: nothing was accepted, so it is a 503.
        if super::conn::is_unreachable(&e) || e.code() == Some("OOM") {
            QueueError::Unavailable(e.to_string())
        } else {
            QueueError::Corrupt(e.to_string())
        }
    }
}

/// A job's spec as stored in its hash; the sample is referenced by hash, not copied.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JobEnvelope {
    pub file_name: String,
    pub sha256: String,
    pub analysis_type: AnalysisType,
    pub depth: String,
    pub ai_model: Option<String>,
    pub container_config: Option<serde_json::Value>,
    pub priority: Priority,
    pub simulate_failure: bool,
}

impl JobEnvelope {
    pub fn of(spec: &JobSpec) -> Self {
        JobEnvelope {
            file_name: spec.sample.file_name.clone(),
            sha256: spec.sample.sha256.clone(),
            analysis_type: spec.analysis_type,
            depth: spec.depth.as_str().to_string(),
            ai_model: spec.ai_model.clone(),
            container_config: spec.container_config.clone(),
            priority: spec.priority,
            simulate_failure: spec.simulate_failure,
        }
    }

    /// The spec again, with the sample's bytes read back from Redis.
    pub fn into_spec(self, bytes: Vec<u8>) -> Result<JobSpec, String> {
        let sample = Sample::new(self.file_name, bytes);
        if sample.sha256 != self.sha256 {
            return Err(format!("stored sample does not hash to {}", self.sha256));
        }
        let mut spec = JobSpec::new(sample);
        spec.analysis_type = self.analysis_type;
        spec.depth = self.depth.parse::<Depth>()?;
        spec.ai_model = self.ai_model;
        spec.container_config = self.container_config;
        spec.priority = self.priority;
        spec.simulate_failure = self.simulate_failure;
        Ok(spec)
    }
}

/// Lengths of the queue's parts, for `/api/status`.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct QueueStats {
    /// Entries in the stream: waiting plus being worked on.
    pub stream: u64,
    /// Entries read by a worker and not yet acknowledged.
    pub in_progress: u64,
    /// Jobs waiting for a retry.
    pub delayed: u64,
    /// Jobs in the dead-letter stream.
    pub dead_letters: u64,
    /// Worker processes known to the consumer group.
    pub consumers: u64,
}

/// The API node's handle on the queue; cheap to clone.
#[derive(Debug, Clone)]
pub struct RedisQueue {
    redis: Redis,
    /// How long a finished job's hash (record and result) and an idempotency key are kept.
    retention: Duration,
    sample_ttl: Duration,
}

impl RedisQueue {
    pub fn new(redis: Redis, retention: Duration, sample_ttl: Duration) -> Self {
        RedisQueue { redis, retention, sample_ttl }
    }

    pub fn redis(&self) -> &Redis {
        &self.redis
    }

    /// Stores the sample and the job and queues it. With an idempotency key that was used
    /// before (within retention), answers that job instead and `false`.
    pub async fn enqueue(
        &self,
        spec: &JobSpec,
        idempotency_key: Option<&str>,
    ) -> Result<(JobId, bool), QueueError> {
        let keys = self.redis.keys();
        let id = JobId::new();
        let record = serde_json::to_string(&JobRecord::pending(id, spec))
            .map_err(|e| QueueError::Corrupt(e.to_string()))?;
        let envelope = serde_json::to_string(&JobEnvelope::of(spec))
            .map_err(|e| QueueError::Corrupt(e.to_string()))?;
        let id_text = id.to_string();
        let mut invocation = scripts::ENQUEUE.prepare_invoke();
        invocation
            .key(keys.idempotency(idempotency_key.unwrap_or("-")))
            .key(keys.sample(&spec.sample.sha256))
            .key(keys.job(&id_text))
            .key(keys.stream())
            .arg(if idempotency_key.is_some() { "1" } else { "0" })
            .arg(&id_text)
            .arg(millis(self.retention))
            .arg(millis(self.sample_ttl))
            .arg(envelope)
            .arg(record)
            .arg(&spec.sample.bytes[..]);
        let (created, job): (u8, String) = self.redis.script(&invocation).await?;
        let job = job.parse().map_err(|_| QueueError::Corrupt(format!("job id {job:?}")))?;
        Ok((job, created == 1))
    }

    /// A job's record as clients see it; `None` for an unknown (or expired) job.
    pub async fn record(&self, id: &JobId) -> Result<Option<JobRecord>, QueueError> {
        let key = self.redis.keys().job(&id.to_string());
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(key).arg("record").arg("status");
        let (record, status): (Option<String>, Option<String>) = self.redis.query(&cmd).await?;
        let Some(record) = record else { return Ok(None) };
        let mut record: JobRecord =
            serde_json::from_str(&record).map_err(|e| QueueError::Corrupt(e.to_string()))?;
        // The record is rewritten when the job finishes; in between, the hash's status field
        // says whether a worker has it.
        if !record.status.is_finished() && status.as_deref() == Some("processing") {
            record.status = JobStatus::Processing;
        }
        Ok(Some(record))
    }

    pub async fn stats(&self) -> Result<QueueStats, QueueError> {
        let keys = self.redis.keys();
        let mut pipe = redis::pipe();
        pipe.cmd("XLEN").arg(keys.stream());
        pipe.cmd("ZCARD").arg(keys.delayed());
        pipe.cmd("XLEN").arg(keys.dead());
        let (stream, delayed, dead_letters): (u64, u64, u64) = self.redis.pipe(&pipe).await?;
        let mut groups = redis::cmd("XINFO");
        groups.arg("GROUPS").arg(keys.stream());
        // No stream yet means no group yet: nothing in progress.
        let groups: StreamInfoGroupsReply = self.redis.query(&groups).await.unwrap_or_default();
        let in_progress = groups.groups.iter().map(|g| g.pending as u64).sum();
        let consumers = groups.groups.iter().map(|g| g.consumers as u64).sum();
        Ok(QueueStats { stream, in_progress, delayed, dead_letters, consumers })
    }
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}
