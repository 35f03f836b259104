//! The worker side of the Redis queue: a node's consumer in the group.
//!
//! Four loops share one consumer name (host, process id and a random part, so a restarted
//! process never inherits a dead one's deliveries by accident):
//!
//! - **read**: XREADGROUP in batches, never more than the free slots of `queue.prefetch`,
//!   so a node only takes what it can start now and the rest stays for other nodes. Before
//!   a read it also reclaims (it owns the free slots): XAUTOCLAIM of deliveries idle longer
//!   than `queue.lease`, the jobs of a worker that died;
//! - **extend**: every third of the lease, running deliveries are claimed again by their own
//!   consumer (which resets their idle time) and their jobs' leases are extended, so a long
//!   job is never taken from a live worker;
//! - **promote**: retries whose backoff is over go from the delayed set back to the stream,
//!   and once a minute consumers of processes long gone leave the group;
//! - **finish**: finished jobs are settled in batches (see `delivery`).
//!
//! Deliveries are claimed in batches by [`scripts::CLAIM`], each runs through the local
//! router exactly as a submitted job, and is finished by [`scripts::FINISH`] (the result
//! stored, then the entry acknowledged) or [`scripts::RETRY`]. A Redis error in any loop is
//! waited out with a capped backoff and the loop carries on: a worker never stops consuming
//! because Redis went away, and a consumer group lost with a Redis that kept nothing is
//! created again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamInfoConsumersReply, StreamReadReply};
use redis::RedisResult;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use super::conn::RetryWait;
use super::delivery::{acknowledge, claim_batch, deliver, finisher_loop, FinishRequest};
use super::queue::millis;
use super::{scripts, QueueConfig, Redis};
use crate::router::JobRouter;
use crate::telemetry::{Telemetry, TelemetryEvent};

/// The longest a loop waits after a Redis error before trying again.
const MAX_ERROR_BACKOFF: Duration = Duration::from_secs(2);

/// Everything the loops and the deliveries share.
pub(super) struct Shared {
    pub(super) redis: Redis,
    pub(super) config: QueueConfig,
    /// How long a finished job's hash is kept.
    pub(super) retention: Duration,
    pub(super) router: Addr<JobRouter>,
    pub(super) telemetry: Telemetry,
    pub(super) consumer: String,
    /// Deliveries this node is running: stream entry id to job id.
    pub(super) running: Mutex<HashMap<String, String>>,
    /// One permit per job this node may run at once.
    pub(super) slots: Arc<Semaphore>,
    pub(super) stop: watch::Receiver<bool>,
    /// Finished jobs go here to be settled in batches.
    pub(super) finisher: mpsc::UnboundedSender<FinishRequest>,
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
        let (finisher, finish_requests) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            finisher,
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
            actix_rt::spawn(finisher_loop(shared.clone(), finish_requests)),
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
    pub(super) fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Sleeps for `wait`, or less when the worker is told to stop.
    pub(super) async fn pause(&self, wait: Duration) {
        let mut stop = self.stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }

    pub(super) fn count(&self, outcome: &'static str) {
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

/// The wait after a Redis error in a loop or a delivery, before it tries again.
pub(super) fn error_backoff() -> RetryWait {
    RetryWait::new(Duration::from_millis(50), MAX_ERROR_BACKOFF)
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
    let mut backoff = error_backoff();
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
                    shared.pause(backoff.next_wait()).await;
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
            shared.pause(backoff.next_wait()).await;
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
                start_batch(&shared, entries.collect(), &mut slots);
            }
            Err(e) if e.code() == Some("NOGROUP") => {
                tracing::warn!("the consumer group is gone (Redis lost its data); creating it");
                group_ready = false;
            }
            Err(e) => {
                tracing::debug!(cause = %e, "reading the job stream failed; retrying");
                shared.pause(backoff.next_wait()).await;
            }
        }
    }
}

/// Claims a batch of entries and runs each claimed delivery in the background, holding one
/// of `slots` until it is done.
fn start_batch(
    shared: &Arc<Shared>,
    entries: Vec<StreamId>,
    slots: &mut Vec<OwnedSemaphorePermit>,
) {
    let mut batch = Vec::with_capacity(entries.len());
    for entry in entries {
        let Some(slot) = slots.pop() else { break };
        let job = match entry.map.get("id").map(redis::from_redis_value_ref::<String>) {
            Some(Ok(job)) => job,
            _ => {
                tracing::warn!(entry = %entry.id, "stream entry without a job id; dropping it");
                let shared = shared.clone();
                actix_rt::spawn(async move {
                    let _ = acknowledge(&shared, &entry.id).await;
                    drop(slot);
                });
                continue;
            }
        };
        // Already running here (taken over from ourselves): the first run finishes it.
        if shared.running().insert(entry.id.clone(), job.clone()).is_none() {
            batch.push((entry.id, job, slot));
        }
    }
    if batch.is_empty() {
        return;
    }
    let shared = shared.clone();
    actix_rt::spawn(async move {
        let ids: Vec<(String, String)> =
            batch.iter().map(|(entry, job, _)| (entry.clone(), job.clone())).collect();
        let mut backoff = error_backoff();
        let claims = loop {
            match claim_batch(&shared, &ids).await {
                Ok(claims) => break claims,
                Err(e) if shared.stopped() => {
                    // Unclaimed: the entries stay pending and their lease hands them on.
                    tracing::debug!(cause = %e, "claims abandoned at shutdown");
                    for (entry, _) in &ids {
                        shared.running().remove(entry);
                    }
                    return;
                }
                Err(e) => {
                    tracing::debug!(cause = %e, "claiming deliveries failed; retrying");
                    shared.pause(backoff.next_wait()).await;
                }
            }
        };
        for (claim, (entry, _, slot)) in claims.into_iter().zip(batch) {
            let shared = shared.clone();
            actix_rt::spawn(async move {
                deliver(&shared, claim).await;
                shared.running().remove(&entry);
                drop(slot);
            });
        }
    });
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
        for _ in &reply.claimed {
            shared.count("reclaimed");
        }
        start_batch(shared, reply.claimed, slots);
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
        let mut invocation = scripts::EXTEND.prepare_invoke();
        for (_, job) in &running {
            invocation.key(keys.job(job));
        }
        invocation.arg(&shared.consumer).arg(millis(shared.config.lease));
        if let Err(e) = shared.redis.script::<u64>(&invocation).await {
            tracing::debug!(cause = %e, "extending run leases failed");
        }
    }
}

async fn promote_loop(shared: Arc<Shared>) {
    let keys = shared.redis.keys().clone();
    let every = (shared.config.retry_backoff / 4)
        .clamp(Duration::from_millis(20), Duration::from_millis(250));
    let mut last_sweep = tokio::time::Instant::now();
    while !shared.stopped() {
        shared.pause(every).await;
        let mut invocation = scripts::PROMOTE.prepare_invoke();
        invocation.key(keys.delayed()).key(keys.stream()).arg(1000);
        match shared.redis.script::<u64>(&invocation).await {
            Ok(0) => {}
            Ok(moved) => tracing::debug!(moved, "retries due moved back to the stream"),
            Err(e) => tracing::debug!(cause = %e, "moving due retries failed"),
        }
        if last_sweep.elapsed() >= CONSUMER_SWEEP_EVERY {
            last_sweep = tokio::time::Instant::now();
            forget_stale_consumers(&shared).await;
        }
    }
}

/// How often a worker looks for consumers of processes that are gone.
const CONSUMER_SWEEP_EVERY: Duration = Duration::from_secs(60);

/// A consumer with nothing pending that has not read for this long belongs to a process
/// that is gone (every run has its own name); it is removed so the group does not grow with
/// every restart. A live consumer removed by mistake is re-created by its next read.
const STALE_CONSUMER: Duration = Duration::from_secs(3600);

async fn forget_stale_consumers(shared: &Shared) {
    let keys = shared.redis.keys();
    let mut cmd = redis::cmd("XINFO");
    cmd.arg("CONSUMERS").arg(keys.stream()).arg(keys.group());
    let Ok(reply) = shared.redis.query::<StreamInfoConsumersReply>(&cmd).await else { return };
    let stale_ms = STALE_CONSUMER.as_millis() as usize;
    for consumer in reply.consumers {
        if consumer.name != shared.consumer && consumer.pending == 0 && consumer.idle > stale_ms {
            let mut cmd = redis::cmd("XGROUP");
            cmd.arg("DELCONSUMER").arg(keys.stream()).arg(keys.group()).arg(&consumer.name);
            if shared.redis.query::<u64>(&cmd).await.is_ok() {
                tracing::info!(consumer = %consumer.name, "removed a consumer that is gone");
            }
        }
    }
}
