//! The worker side of the Redis queue: a node's consumer in the group.
//!
//! Three loops share one consumer name (host, process id and a random part, so a restarted
//! process never inherits a dead one's deliveries by accident):
//!
//! - **read**: XREADGROUP in batches, never more than the free slots of `queue.prefetch`,
//!   so a node only takes what it can start now and the rest stays for other nodes;
//! - **reclaim**: XAUTOCLAIM of deliveries idle longer than `queue.lease`, the jobs of a
//!   worker that died; done by the reader before each read, as it owns the free slots;
//! - **extend**: every third of the lease, running deliveries are claimed again by their own
//!   consumer (which resets their idle time) and their run locks are extended, so a long job
//!   is never taken from a live worker;
//! - **promote**: retries whose backoff is over go from the delayed set back to the stream.
//!
//! Each delivery is claimed by [`scripts::CLAIM`], run through the local router exactly as a
//! submitted job, and finished by [`scripts::FINISH`] (the result stored, then the entry
//! acknowledged) or [`scripts::RETRY`]. A Redis error in any loop is waited out with a capped
//! backoff and the loop carries on: a worker never stops consuming because Redis went away,
//! and a consumer group lost with a Redis that kept nothing is created again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use redis::RedisResult;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use super::queue::{finished, millis, JobEnvelope};
use super::{scripts, QueueConfig, Redis};
use crate::error::SubmitError;
use crate::events::JobEvent;
use crate::job::{JobFailure, JobId, JobRecord};
use crate::router::{ExecuteJob, JobRouter, RunOutcome};
use crate::telemetry::{Telemetry, TelemetryEvent};

/// The longest a loop waits after a Redis error before trying again.
const MAX_ERROR_BACKOFF: Duration = Duration::from_secs(2);

/// Everything the loops share.
struct Shared {
    redis: Redis,
    config: QueueConfig,
    /// How long a finished job's hash is kept.
    retention: Duration,
    router: Addr<JobRouter>,
    telemetry: Telemetry,
    consumer: String,
    /// Deliveries this node is running: stream entry id to job id.
    running: Mutex<HashMap<String, String>>,
    /// One permit per job this node may run at once.
    slots: Arc<Semaphore>,
    stop: watch::Receiver<bool>,
}

/// Starts a node's consumer.
pub struct QueueWorker;

impl QueueWorker {
    /// Starts the loops on the current actix system; jobs run through `router`.
    pub fn start(
        redis: Redis,
        config: QueueConfig,
        retention: Duration,
        router: Addr<JobRouter>,
        telemetry: Telemetry,
    ) -> WorkerHandle {
        let (stop_tx, stop) = watch::channel(false);
        let shared = Arc::new(Shared {
            consumer: consumer_name(),
            slots: Arc::new(Semaphore::new(config.prefetch)),
            redis,
            config,
            retention,
            router,
            telemetry,
            running: Mutex::new(HashMap::new()),
            stop,
        });
        tracing::info!(consumer = %shared.consumer, "queue worker started");
        let tasks = vec![
            actix_rt::spawn(read_loop(shared.clone())),
            actix_rt::spawn(extend_loop(shared.clone())),
            actix_rt::spawn(promote_loop(shared.clone())),
        ];
        WorkerHandle { shared, stop: stop_tx, tasks: Mutex::new(tasks) }
    }
}

/// A running consumer: its name, what it runs, and its shutdown.
pub struct WorkerHandle {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<actix_rt::task::JoinHandle<()>>>,
}

impl WorkerHandle {
    pub fn consumer(&self) -> &str {
        &self.shared.consumer
    }

    /// Jobs this node is running now.
    pub fn in_flight(&self) -> usize {
        self.shared.running().len()
    }

    /// Stops taking jobs and waits up to `grace` for the running ones to finish. What is
    /// still running then stays pending in the group, and another worker takes it over once
    /// its lease runs out. Answers how many were left.
    pub async fn shutdown(&self, grace: Duration) -> usize {
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + grace;
        while self.in_flight() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for task in self.tasks.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            task.abort();
        }
        let left = self.in_flight();
        tracing::info!(consumer = %self.shared.consumer, left, "queue worker stopped");
        left
    }
}

impl Shared {
    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Sleeps for `wait`, or less when the worker is told to stop.
    async fn pause(&self, wait: Duration) {
        let mut stop = self.stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }

    fn count(&self, outcome: &'static str) {
        self.telemetry.emit(TelemetryEvent::QueueDelivery { outcome });
    }
}

fn consumer_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into());
    format!("{host}-{}-{:08x}", std::process::id(), rand::random::<u32>())
}

/// A capped doubling wait for loops that met a Redis error.
struct ErrorBackoff(Duration);

impl ErrorBackoff {
    fn new() -> Self {
        ErrorBackoff(Duration::from_millis(50))
    }
    fn next(&mut self) -> Duration {
        let wait = self.0;
        self.0 = (self.0 * 2).min(MAX_ERROR_BACKOFF);
        wait
    }
    fn reset(&mut self) {
        self.0 = Duration::from_millis(50);
    }
}

async fn ensure_group(shared: &Shared) -> RedisResult<()> {
    let keys = shared.redis.keys();
    let mut cmd = redis::cmd("XGROUP");
    // From id 0: entries queued before any worker existed are read too.
    cmd.arg("CREATE").arg(keys.stream()).arg(keys.group()).arg("0").arg("MKSTREAM");
    match shared.redis.query::<()>(&cmd).await {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

async fn read_loop(shared: Arc<Shared>) {
    let keys = shared.redis.keys().clone();
    let block = shared.config.block;
    let mut conn = None;
    let mut backoff = ErrorBackoff::new();
    let mut group_ready = false;
    // Deliveries idle past the lease are looked for every quarter lease (and at least once
    // per blocking read, which is shorter than the lease).
    let reclaim_every = shared.config.lease / 4;
    let mut last_reclaim = tokio::time::Instant::now() - reclaim_every;
    while !shared.stopped() {
        if !group_ready {
            match ensure_group(&shared).await {
                Ok(()) => group_ready = true,
                Err(e) => {
                    tracing::debug!(cause = %e, "cannot create the consumer group yet");
                    shared.pause(backoff.next()).await;
                    continue;
                }
            }
        }
        // Take only as many entries as there are free slots, waiting for the first.
        let mut stop = shared.stop.clone();
        let first = tokio::select! {
            permit = shared.slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = stop.wait_for(|s| *s) => return,
        };
        let mut slots = vec![first];
        while slots.len() < shared.config.batch {
            match shared.slots.clone().try_acquire_owned() {
                Ok(p) => slots.push(p),
                Err(_) => break,
            }
        }
        // The reader owns the slots, so it also takes over dead workers' deliveries, first.
        if last_reclaim.elapsed() >= reclaim_every {
            last_reclaim = tokio::time::Instant::now();
            reclaim(&shared, &mut slots).await;
            if slots.is_empty() {
                continue;
            }
        }
        if conn.is_none() {
            conn = shared.redis.dedicated(block).ok();
        }
        let Some(c) = conn.as_mut() else {
            shared.pause(backoff.next()).await;
            continue;
        };
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP").arg(keys.group()).arg(&shared.consumer);
        cmd.arg("COUNT").arg(slots.len()).arg("BLOCK").arg(millis(block));
        cmd.arg("STREAMS").arg(keys.stream()).arg(">");
        let limit = shared.redis.config().command_timeout + block;
        let read = shared.redis.timed(limit, cmd.query_async::<Option<StreamReadReply>>(c));
        let reply = tokio::select! {
            reply = read => reply,
            _ = stop.wait_for(|s| *s) => return,
        };
        match reply {
            Ok(reply) => {
                backoff.reset();
                let entries = reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids);
                for entry in entries {
                    let Some(slot) = slots.pop() else { break };
                    start_delivery(&shared, entry, slot);
                }
            }
            Err(e) if e.code() == Some("NOGROUP") => {
                tracing::warn!("the consumer group is gone (Redis lost its data); creating it");
                group_ready = false;
            }
            Err(e) => {
                tracing::debug!(cause = %e, "reading the job stream failed; retrying");
                shared.pause(backoff.next()).await;
            }
        }
    }
}

/// Runs one delivery in the background, holding its slot until it is done.
fn start_delivery(shared: &Arc<Shared>, entry: StreamId, slot: OwnedSemaphorePermit) {
    let job = match entry.map.get("id").map(redis::from_redis_value_ref::<String>) {
        Some(Ok(job)) => job,
        _ => {
            tracing::warn!(entry = %entry.id, "stream entry without a job id; dropping it");
            let shared = shared.clone();
            actix_rt::spawn(async move {
                let _ = acknowledge(&shared, &entry.id).await;
                drop(slot);
            });
            return;
        }
    };
    if shared.running().insert(entry.id.clone(), job.clone()).is_some() {
        // Already running here (reclaimed from ourselves); the first run finishes it.
        return;
    }
    let shared = shared.clone();
    actix_rt::spawn(async move {
        deliver(&shared, &entry.id, &job).await;
        shared.running().remove(&entry.id);
        drop(slot);
    });
}

async fn acknowledge(shared: &Shared, entry: &str) -> RedisResult<()> {
    let keys = shared.redis.keys();
    let mut pipe = redis::pipe();
    pipe.cmd("XACK").arg(keys.stream()).arg(keys.group()).arg(entry).ignore();
    pipe.cmd("XDEL").arg(keys.stream()).arg(entry).ignore();
    shared.redis.pipe(&pipe).await
}

/// The claim script's answer.
struct Claim {
    verdict: String,
    deliveries: u32,
    spec: String,
    record: String,
    last_error: String,
}

async fn claim(shared: &Shared, job: &str) -> RedisResult<Claim> {
    let keys = shared.redis.keys();
    let mut invocation = scripts::CLAIM.prepare_invoke();
    invocation
        .key(keys.job(job))
        .key(keys.lock(job))
        .arg(&shared.consumer)
        .arg(millis(shared.config.lease))
        .arg(shared.config.max_deliveries);
    let (verdict, deliveries, spec, record, last_error): (String, String, String, String, String) =
        shared.redis.script(&invocation).await?;
    Ok(Claim { verdict, deliveries: deliveries.parse().unwrap_or(0), spec, record, last_error })
}

/// Claims, runs and finishes one delivery. Redis errors are retried here until the delivery
/// is settled one way or another, or the worker stops (then the lease hands it on).
async fn deliver(shared: &Shared, entry: &str, job: &str) {
    let mut backoff = ErrorBackoff::new();
    let claim = loop {
        match claim(shared, job).await {
            Ok(c) => break c,
            Err(e) if shared.stopped() => {
                tracing::debug!(cause = %e, job, "claim abandoned at shutdown");
                return;
            }
            Err(e) => {
                tracing::debug!(cause = %e, job, "claim failed; retrying");
                shared.pause(backoff.next()).await;
            }
        }
    };
    let settle = match claim.verdict.as_str() {
        "missing" | "finished" => {
            // Expired, or finished by an earlier delivery: only the entry is left to clear.
            shared.count(if claim.verdict == "finished" { "duplicate" } else { "missing" });
            Settle::Acknowledge
        }
        // Another live worker runs it; this delivery stays pending and is looked at again.
        "locked" => return,
        "exhausted" => {
            let reason = if claim.last_error.is_empty() {
                "the job was delivered too many times without finishing".to_string()
            } else {
                claim.last_error.clone()
            };
            let failure = JobFailure {
                code: "dead_lettered".into(),
                message: format!(
                    "gave up after {} deliveries: {reason}",
                    claim.deliveries.saturating_sub(1)
                ),
            };
            Settle::Finish { outcome: Err(failure), dead: Some(reason) }
        }
        _ => run(shared, job, &claim).await,
    };
    loop {
        let done = match &settle {
            Settle::Acknowledge => acknowledge(shared, entry).await,
            Settle::Finish { outcome, dead } => {
                finish(shared, entry, job, &claim, outcome, dead.as_deref()).await
            }
            Settle::Retry { delay, error, counted } => {
                retry(shared, entry, job, *delay, error, *counted).await
            }
        };
        match done {
            Ok(()) => return,
            Err(e) if shared.stopped() => {
                tracing::debug!(cause = %e, job, "settling abandoned at shutdown");
                return;
            }
            Err(e) => {
                tracing::debug!(cause = %e, job, "storing the outcome failed; retrying");
                shared.pause(backoff.next()).await;
            }
        }
    }
}

/// How a delivery ends.
enum Settle {
    Acknowledge,
    Finish { outcome: RunOutcome, dead: Option<String> },
    Retry { delay: Duration, error: String, counted: bool },
}

async fn run(shared: &Shared, job: &str, claim: &Claim) -> Settle {
    let fail = |code: &str, message: String| Settle::Finish {
        outcome: Err(JobFailure { code: code.into(), message }),
        dead: None,
    };
    let Ok(id) = job.parse::<JobId>() else {
        return fail("invalid_job", format!("{job:?} is not a job id"));
    };
    let envelope: JobEnvelope = match serde_json::from_str(&claim.spec) {
        Ok(e) => e,
        Err(e) => return fail("invalid_job", format!("the stored job cannot be read: {e}")),
    };
    let sample_key = shared.redis.keys().sample(&envelope.sha256);
    let bytes: Option<Vec<u8>> = match shared.redis.query(redis::cmd("GET").arg(sample_key)).await {
        Ok(bytes) => bytes,
        Err(e) => {
            return Settle::Retry { delay: Duration::ZERO, error: e.to_string(), counted: false }
        }
    };
    let Some(bytes) = bytes else {
        return fail("sample_expired", "the sample expired before the job ran".into());
    };
    let spec = match envelope.into_spec(bytes) {
        Ok(spec) => spec,
        Err(e) => return fail("invalid_job", e),
    };

    match shared.router.send(ExecuteJob { id, spec }).await {
        Ok(Ok(Ok(done))) => {
            shared.count("completed");
            Settle::Finish { outcome: Ok(done), dead: None }
        }
        Ok(Ok(Err(failure))) => {
            let error = format!("{}: {}", failure.code, failure.message);
            if claim.deliveries >= shared.config.max_deliveries {
                shared.count("dead_lettered");
                let dead = Some(error);
                return Settle::Finish { outcome: Err(dead_letter(failure, claim)), dead };
            }
            shared.count("retried");
            tracing::debug!(job, attempt = claim.deliveries, cause = %error, "job failed; retrying");
            Settle::Retry { delay: shared.config.backoff(claim.deliveries), error, counted: true }
        }
        // The node cannot take it now (draining, maintenance, overloaded): back to the queue
        // for any node, without counting against the job.
        Ok(Err(refused)) => {
            shared.count("refused");
            let delay = match refused {
                SubmitError::Overloaded { retry_after, .. } => retry_after,
                _ => shared.config.retry_backoff,
            };
            Settle::Retry { delay, error: refused.to_string(), counted: false }
        }
        Err(_) => Settle::Retry {
            delay: Duration::ZERO,
            error: "the router stopped".into(),
            counted: false,
        },
    }
}

fn dead_letter(last: JobFailure, claim: &Claim) -> JobFailure {
    JobFailure {
        code: "dead_lettered".into(),
        message: format!(
            "failed on each of {} deliveries; last: {}: {}",
            claim.deliveries, last.code, last.message
        ),
    }
}

async fn finish(
    shared: &Shared,
    entry: &str,
    job: &str,
    claim: &Claim,
    outcome: &RunOutcome,
    dead: Option<&str>,
) -> RedisResult<()> {
    let keys = shared.redis.keys();
    let now = SystemTime::now();
    let record = match serde_json::from_str::<JobRecord>(&claim.record) {
        Ok(record) => finished(record, outcome, now),
        Err(_) => return acknowledge(shared, entry).await,
    };
    let (kind, data, status) = match outcome {
        Ok((report, _)) => ("complete", serde_json::to_value(report.as_ref()).ok(), "completed"),
        Err(failure) => ("error", serde_json::to_value(failure).ok(), "failed"),
    };
    let event =
        JobEvent { analysis_id: record.analysis_id, kind, progress: 100, stage: None, data };
    let record_json = serde_json::to_string(&record).unwrap_or_default();
    let event_json = super::events::encode(&[event]);
    let mut invocation = scripts::FINISH.prepare_invoke();
    invocation
        .key(keys.job(job))
        .key(keys.lock(job))
        .key(keys.stream())
        .key(keys.dead())
        .arg(entry)
        .arg(keys.group())
        .arg(record_json)
        .arg(status)
        .arg(millis(shared.retention))
        .arg(keys.events_channel())
        .arg(event_json)
        .arg(&shared.consumer)
        .arg(dead.unwrap_or(""))
        .arg(claim.deliveries)
        .arg(shared.config.dead_letter_max)
        .arg(job);
    let first: u8 = shared.redis.script(&invocation).await?;
    if first == 0 {
        tracing::debug!(job, "job was already finished by another delivery");
    } else if dead.is_some() {
        tracing::warn!(job, deliveries = claim.deliveries, "job moved to the dead-letter stream");
    }
    Ok(())
}

async fn retry(
    shared: &Shared,
    entry: &str,
    job: &str,
    delay: Duration,
    error: &str,
    counted: bool,
) -> RedisResult<()> {
    let keys = shared.redis.keys();
    let mut invocation = scripts::RETRY.prepare_invoke();
    invocation
        .key(keys.job(job))
        .key(keys.lock(job))
        .key(keys.stream())
        .key(keys.delayed())
        .arg(entry)
        .arg(keys.group())
        .arg(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX))
        .arg(job)
        .arg(&shared.consumer)
        .arg(error)
        .arg(if counted { "1" } else { "0" });
    shared.redis.script::<u8>(&invocation).await.map(|_| ())
}

/// Takes over deliveries idle past their lease (their worker died), as many as `slots`
/// allows; the slots used go with the deliveries started.
async fn reclaim(shared: &Arc<Shared>, slots: &mut Vec<OwnedSemaphorePermit>) {
    let keys = shared.redis.keys();
    let mut cursor = "0-0".to_string();
    while !slots.is_empty() && !shared.stopped() {
        let mut cmd = redis::cmd("XAUTOCLAIM");
        cmd.arg(keys.stream()).arg(keys.group()).arg(&shared.consumer);
        cmd.arg(millis(shared.config.lease)).arg(&cursor).arg("COUNT").arg(slots.len());
        let reply: StreamAutoClaimReply = match shared.redis.query(&cmd).await {
            Ok(reply) => reply,
            Err(e) => {
                tracing::debug!(cause = %e, "reclaiming stale deliveries failed");
                return;
            }
        };
        for deleted in &reply.deleted_ids {
            let _ = acknowledge(shared, deleted).await;
        }
        if !reply.claimed.is_empty() {
            tracing::info!(count = reply.claimed.len(), "took over deliveries past their lease");
        }
        for entry in reply.claimed {
            shared.count("reclaimed");
            let Some(slot) = slots.pop() else { break };
            start_delivery(shared, entry, slot);
        }
        cursor = reply.next_stream_id;
        if cursor == "0-0" {
            return;
        }
    }
}

async fn extend_loop(shared: Arc<Shared>) {
    let keys = shared.redis.keys().clone();
    let every = (shared.config.lease / 3).max(Duration::from_millis(100));
    while !shared.stopped() {
        shared.pause(every).await;
        let running: Vec<(String, String)> =
            shared.running().iter().map(|(e, j)| (e.clone(), j.clone())).collect();
        if running.is_empty() {
            continue;
        }
        // XCLAIM by the owner with JUSTID resets the entry's idle time without counting a
        // delivery: the lease starts again.
        let mut cmd = redis::cmd("XCLAIM");
        cmd.arg(keys.stream()).arg(keys.group()).arg(&shared.consumer).arg(0);
        for (entry, _) in &running {
            cmd.arg(entry);
        }
        cmd.arg("JUSTID");
        if let Err(e) = shared.redis.query::<redis::Value>(&cmd).await {
            tracing::debug!(cause = %e, "extending leases failed");
            continue;
        }
        let extensions = running.iter().map(|(_, job)| {
            let mut invocation = scripts::EXTEND_LOCK.prepare_invoke();
            invocation.key(keys.lock(job)).arg(&shared.consumer).arg(millis(shared.config.lease));
            let redis = shared.redis.clone();
            async move { redis.script::<u8>(&invocation).await }
        });
        futures_util::future::join_all(extensions).await;
    }
}

async fn promote_loop(shared: Arc<Shared>) {
    let keys = shared.redis.keys().clone();
    let every = (shared.config.retry_backoff / 4)
        .clamp(Duration::from_millis(20), Duration::from_millis(250));
    while !shared.stopped() {
        shared.pause(every).await;
        let mut invocation = scripts::PROMOTE.prepare_invoke();
        invocation.key(keys.delayed()).key(keys.stream()).arg(1000);
        match shared.redis.script::<u64>(&invocation).await {
            Ok(0) => {}
            Ok(moved) => tracing::debug!(moved, "retries due moved back to the stream"),
            Err(e) => tracing::debug!(cause = %e, "moving due retries failed"),
        }
    }
}
