//! One delivery of the Redis queue, from claim to settlement.
//!
//! Deliveries are claimed in batches ([`scripts::CLAIM`]: counted and leased, or refused
//! when the job is finished, leased by a live worker, or past its delivery limit), each is run
//! through the local router exactly as a submitted job, and settled: finished (the result
//! stored, then the entry acknowledged, by [`scripts::FINISH`] for every job ready at that
//! moment), put back with a backoff ([`scripts::RETRY`]), or acknowledged alone when nothing
//! is left to do. Redis errors while settling are retried until the delivery is settled or
//! the worker stops; then the lease hands it to another worker, and the claim script makes
//! sure it is not run twice.

use std::time::{Duration, SystemTime};

use redis::RedisResult;
use tokio::sync::{mpsc, oneshot};

use super::queue::{millis, JobEnvelope};
use super::scripts;
use super::worker::{error_backoff, Shared};
use crate::error::SubmitError;
use crate::events::JobEvent;
use crate::job::{JobFailure, JobId, JobRecord, JobStatus};
use crate::router::{ExecuteJob, RunOutcome};

/// Jobs settled by one finish script call at most.
const FINISH_BATCH: usize = 256;

pub(super) async fn acknowledge(shared: &Shared, entry: &str) -> RedisResult<()> {
    let keys = shared.redis.keys();
    let mut pipe = redis::pipe();
    pipe.cmd("XACK").arg(keys.stream()).arg(keys.group()).arg(entry).ignore();
    pipe.cmd("XDEL").arg(keys.stream()).arg(entry).ignore();
    shared.redis.pipe(&pipe).await
}

/// A claimed delivery.
pub(super) struct Claim {
    pub entry: String,
    pub job: String,
    verdict: String,
    deliveries: u32,
    spec: String,
    record: String,
    last_error: String,
    /// The sample's bytes for a job to run; `Ok(None)` when it expired, `Err` when it could
    /// not be read.
    sample: Result<Option<Vec<u8>>, String>,
}

/// Claims a batch of deliveries (stream entry id, job id) in one script call, then reads
/// the samples of those to run in one MGET.
pub(super) async fn claim_batch(
    shared: &Shared,
    batch: &[(String, String)],
) -> RedisResult<Vec<Claim>> {
    let keys = shared.redis.keys();
    let mut invocation = scripts::CLAIM.prepare_invoke();
    for (_, job) in batch {
        invocation.key(keys.job(job));
    }
    invocation
        .arg(&shared.consumer)
        .arg(millis(shared.config.lease))
        .arg(shared.config.max_deliveries);
    let answers: Vec<String> = shared.redis.script(&invocation).await?;
    let mut claims: Vec<Claim> = batch
        .iter()
        .zip(answers.chunks(5))
        .map(|((entry, job), a)| Claim {
            entry: entry.clone(),
            job: job.clone(),
            verdict: a[0].clone(),
            deliveries: a[1].parse().unwrap_or(0),
            spec: a[2].clone(),
            record: a[3].clone(),
            last_error: a[4].clone(),
            sample: Ok(None),
        })
        .collect();

    // The samples of the jobs to run. A job whose spec cannot be read fails when it runs.
    let wanted: Vec<(usize, String)> = claims
        .iter()
        .enumerate()
        .filter(|(_, c)| c.verdict == "run")
        .filter_map(|(i, c)| {
            let envelope: JobEnvelope = serde_json::from_str(&c.spec).ok()?;
            Some((i, keys.sample(&envelope.sha256)))
        })
        .collect();
    if !wanted.is_empty() {
        let mut mget = redis::cmd("MGET");
        for (_, key) in &wanted {
            mget.arg(key);
        }
        match shared.redis.query::<Vec<Option<Vec<u8>>>>(&mget).await {
            Ok(samples) => {
                for ((i, _), bytes) in wanted.iter().zip(samples) {
                    claims[*i].sample = Ok(bytes);
                }
            }
            Err(e) => {
                for (i, _) in &wanted {
                    claims[*i].sample = Err(e.to_string());
                }
            }
        }
    }
    Ok(claims)
}

/// Runs and settles one claimed delivery. Redis errors are retried here until the delivery
/// is settled one way or another, or the worker stops (then the lease hands it on).
pub(super) async fn deliver(shared: &Shared, claim: Claim) {
    let job = claim.job.as_str();
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
            shared.count("dead_lettered");
            let failure = JobFailure {
                code: "dead_lettered".into(),
                message: format!(
                    "gave up after {} deliveries: {reason}",
                    claim.deliveries.saturating_sub(1)
                ),
            };
            Settle::Finish { outcome: Err(failure), dead: Some(reason) }
        }
        _ => run(shared, &claim).await,
    };
    let mut backoff = error_backoff();
    loop {
        let done = match &settle {
            Settle::Acknowledge => acknowledge(shared, &claim.entry).await,
            Settle::Finish { outcome, dead } => {
                finish(shared, &claim, outcome, dead.as_deref()).await
            }
            Settle::Retry { delay, error, counted } => {
                retry(shared, &claim.entry, job, *delay, error, *counted).await
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
                shared.pause(backoff.next_wait()).await;
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

async fn run(shared: &Shared, claim: &Claim) -> Settle {
    let job = claim.job.as_str();
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
    let bytes = match &claim.sample {
        Ok(bytes) => bytes.clone(),
        Err(e) => return Settle::Retry { delay: Duration::ZERO, error: e.clone(), counted: false },
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
            let attempt = claim.deliveries;
            tracing::debug!(job, attempt, cause = %error, "job failed; retrying");
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
    claim: &Claim,
    outcome: &RunOutcome,
    dead: Option<&str>,
) -> RedisResult<()> {
    let record = match serde_json::from_str::<JobRecord>(&claim.record) {
        Ok(record) => finished(record, outcome, SystemTime::now()),
        Err(_) => return acknowledge(shared, &claim.entry).await,
    };
    let (kind, status) =
        if outcome.is_ok() { ("complete", "completed") } else { ("error", "failed") };
    // The final event names the job and its end; the result is in the record stored with
    // it, which a streaming API node reads (events stay small however large the report).
    let event =
        JobEvent { analysis_id: record.analysis_id, kind, progress: 100, stage: None, data: None };
    let (done, answer) = oneshot::channel();
    let request = FinishRequest {
        job: claim.job.clone(),
        entry: claim.entry.clone(),
        record: serde_json::to_string(&record).unwrap_or_default(),
        status,
        event: serde_json::to_string(&event).unwrap_or_default(),
        dead: dead.unwrap_or("").to_string(),
        deliveries: claim.deliveries,
        done,
    };
    if shared.finisher.send(request).is_err() {
        return Err(std::io::Error::other("the finisher stopped").into());
    }
    let first = answer.await.map_err(|_| std::io::Error::other("the finisher stopped"))??;
    if !first {
        tracing::debug!(job = %claim.job, "job was already finished by another delivery");
    } else if dead.is_some() {
        tracing::warn!(job = %claim.job, deliveries = claim.deliveries, "job dead-lettered");
    }
    Ok(())
}

/// A finished job waiting for the next finish script call.
pub(super) struct FinishRequest {
    job: String,
    entry: String,
    record: String,
    status: &'static str,
    event: String,
    dead: String,
    deliveries: u32,
    /// Answered with whether this call finished the job (`false`: it was already finished).
    done: oneshot::Sender<RedisResult<bool>>,
}

/// Settles finished jobs in batches: whatever is waiting when a call starts goes into it,
/// so a busy worker pays one script call for many jobs and an idle one waits for nothing.
pub(super) async fn finisher_loop(
    shared: std::sync::Arc<Shared>,
    mut requests: mpsc::UnboundedReceiver<FinishRequest>,
) {
    let keys = shared.redis.keys().clone();
    while let Some(first) = requests.recv().await {
        let mut batch = vec![first];
        while batch.len() < FINISH_BATCH {
            match requests.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let mut invocation = scripts::FINISH.prepare_invoke();
        invocation.key(keys.stream()).key(keys.dead());
        for r in &batch {
            invocation.key(keys.job(&r.job));
        }
        invocation
            .arg(keys.group())
            .arg(millis(shared.retention))
            .arg(keys.events_channel())
            .arg(shared.config.dead_letter_max);
        for r in &batch {
            invocation
                .arg(&r.entry)
                .arg(&r.record)
                .arg(r.status)
                .arg(&r.event)
                .arg(&r.dead)
                .arg(r.deliveries)
                .arg(&r.job);
        }
        match shared.redis.script::<Vec<u8>>(&invocation).await {
            Ok(firsts) => {
                for (r, first) in batch.into_iter().zip(firsts) {
                    let _ = r.done.send(Ok(first == 1));
                }
            }
            Err(e) => {
                for r in batch {
                    let _ = r.done.send(Err(e.clone()));
                }
            }
        }
    }
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
        .key(keys.stream())
        .key(keys.delayed())
        .arg(entry)
        .arg(keys.group())
        .arg(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX))
        .arg(job)
        .arg(error)
        .arg(if counted { "1" } else { "0" });
    shared.redis.script::<u8>(&invocation).await.map(|_| ())
}

/// A finished copy of a record.
fn finished(
    mut record: JobRecord,
    outcome: &crate::router::RunOutcome,
    at: SystemTime,
) -> JobRecord {
    record.finished_at = Some(at);
    match outcome {
        Ok((report, from_cache)) => {
            record.status = JobStatus::Completed;
            record.progress = 100;
            record.from_cache = *from_cache;
            record.results = Some(report.clone());
        }
        Err(failure) => {
            record.status = JobStatus::Failed;
            record.error = Some(failure.clone());
        }
    }
    record
}
