//! The job router: owns the life of every job.
//!
//! Admission (maintenance mode, draining, the bound on jobs in progress), single-flight
//! (identical work in flight runs once and every job that asked for it shares the outcome),
//! the stages (see [`pipeline`]), the deadline, and the final record, cache write, events and
//! telemetry. Flags are read from the latest snapshot the flags actor pushed, never fetched
//! per job, so a change applies from the next job on.

mod ai_stage;
mod pipeline;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::SubmitError;
use crate::events::{EventHub, JobEvent};
use crate::flags::{FlagSet, FlagsChanged};
use crate::job::{JobFailure, JobId, JobRecord, JobSpec, JobStatus, WorkKey};
use crate::report::AnalysisReport;
use crate::retry_budget::RetryBudgetConfig;
use crate::store::JobStore;
use crate::telemetry::{Telemetry, TelemetryEvent};

pub use ai_stage::ProviderHandle;
pub use pipeline::Services;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RouterConfig {
    /// A job still running after this long fails with `deadline_exceeded`.
    #[serde(with = "humantime_serde")]
    pub job_deadline: Duration,
    /// Jobs accepted and not finished, beyond which submissions get 503.
    pub max_active_jobs: usize,
    /// How long finished job records are kept.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Job records kept at most; beyond it the oldest finished ones go first.
    pub max_records: usize,
    /// Bounds failover retries across all jobs.
    pub failover_budget: RetryBudgetConfig,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            job_deadline: Duration::from_secs(300),
            max_active_jobs: 10_000,
            retention: Duration::from_secs(24 * 3600),
            max_records: 200_000,
            failover_budget: RetryBudgetConfig::default(),
        }
    }
}

/// How often finished records past retention or past the record bound are removed.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// The jobs sharing one run: the first asked, the others joined while it was in flight.
#[derive(Debug, Default)]
pub(crate) struct WorkGroup {
    members: Mutex<Vec<(JobId, Instant)>>,
}

impl WorkGroup {
    pub(crate) fn ids(&self) -> Vec<JobId> {
        self.lock().iter().map(|(id, _)| *id).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(JobId, Instant)>> {
        self.members.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How a run ended, for every job of its group.
pub type RunOutcome = Result<(Arc<AnalysisReport>, bool), JobFailure>;

pub struct JobRouter {
    flags: Arc<FlagSet>,
    services: Services,
    store: JobStore,
    events: EventHub,
    telemetry: Telemetry,
    config: RouterConfig,
    in_flight: HashMap<WorkKey, Arc<WorkGroup>>,
    /// Callers of [`ExecuteJob`] waiting for their job's outcome.
    waiters: HashMap<JobId, tokio::sync::oneshot::Sender<RunOutcome>>,
    /// `Idempotency-Key` values seen within retention, and the job each one created.
    idempotency: HashMap<String, (JobId, Instant)>,
    active_jobs: usize,
    draining: bool,
}

impl JobRouter {
    pub fn new(
        config: RouterConfig,
        flags: Arc<FlagSet>,
        services: Services,
        store: JobStore,
        events: EventHub,
        telemetry: Telemetry,
    ) -> Self {
        JobRouter {
            flags,
            services,
            store,
            events,
            telemetry,
            config,
            in_flight: HashMap::new(),
            waiters: HashMap::new(),
            idempotency: HashMap::new(),
            active_jobs: 0,
            draining: false,
        }
    }

    fn admit(&mut self) -> Result<(), SubmitError> {
        if self.draining {
            return Err(SubmitError::ShuttingDown);
        }
        if self.flags.maintenance_mode {
            return Err(SubmitError::Maintenance);
        }
        if self.active_jobs >= self.config.max_active_jobs {
            return Err(SubmitError::Overloaded {
                in_progress: self.active_jobs,
                retry_after: Duration::from_secs(5),
            });
        }
        Ok(())
    }

    fn finish(&mut self, key: WorkKey, group: Arc<WorkGroup>, outcome: RunOutcome) {
        self.in_flight.remove(&key);
        let members = std::mem::take(&mut *group.lock());
        let now = SystemTime::now();
        for (id, submitted) in members {
            self.active_jobs = self.active_jobs.saturating_sub(1);
            let duration = submitted.elapsed();
            // A job run for the Redis queue has its record there; a local copy would only
            // fill this node's memory.
            if let Some(waiter) = self.waiters.remove(&id) {
                let _ = waiter.send(outcome.clone());
                self.store.remove(&id);
            }
            match &outcome {
                Ok((report, from_cache)) => {
                    self.store.update(&id, |r| {
                        r.status = JobStatus::Completed;
                        r.progress = 100;
                        r.from_cache = *from_cache;
                        r.results = Some(report.clone());
                        r.finished_at = Some(now);
                    });
                    self.events.publish(JobEvent {
                        analysis_id: id,
                        kind: "complete",
                        progress: 100,
                        stage: None,
                        data: serde_json::to_value(report.as_ref()).ok(),
                    });
                    self.telemetry.emit(TelemetryEvent::JobFinished {
                        outcome: "completed",
                        from_cache: *from_cache,
                        duration,
                    });
                }
                Err(failure) => {
                    self.store.update(&id, |r| {
                        r.status = JobStatus::Failed;
                        r.error = Some(failure.clone());
                        r.finished_at = Some(now);
                    });
                    self.events.publish(JobEvent {
                        analysis_id: id,
                        kind: "error",
                        progress: 100,
                        stage: None,
                        data: serde_json::to_value(failure).ok(),
                    });
                    self.telemetry.emit(TelemetryEvent::JobFinished {
                        outcome: "failed",
                        from_cache: false,
                        duration,
                    });
                }
            }
        }
    }
}

impl Actor for JobRouter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(crate::MAILBOX_CAPACITY);
        ctx.run_interval(SWEEP_EVERY, |act, _| {
            let retention = act.config.retention;
            // A key outlives neither retention nor its job's record (which max_records bounds).
            let store = &act.store;
            act.idempotency.retain(|_, (id, at)| at.elapsed() < retention && store.contains(id));
            let removed = act.store.sweep(act.config.retention, act.config.max_records);
            if removed > 0 {
                tracing::debug!(removed, "swept finished job records past retention");
            }
        });
    }
}

/// Submit a job; answers its id once it is recorded as pending.
#[derive(Debug, Message)]
#[rtype(result = "Result<JobId, SubmitError>")]
pub struct SubmitJob(pub JobSpec);

impl Handler<SubmitJob> for JobRouter {
    type Result = Result<JobId, SubmitError>;

    fn handle(&mut self, SubmitJob(spec): SubmitJob, ctx: &mut Self::Context) -> Self::Result {
        self.admit()?;
        let id = JobId::new();
        self.start(id, spec, ctx);
        Ok(id)
    }
}

/// Submits a job under a client's idempotency key: the first submission with a key creates
/// the job, later ones (within retention) answer that same job and `false`.
#[derive(Debug, Message)]
#[rtype(result = "Result<(JobId, bool), SubmitError>")]
pub struct SubmitIdempotent {
    pub key: String,
    pub spec: JobSpec,
}

impl Handler<SubmitIdempotent> for JobRouter {
    type Result = Result<(JobId, bool), SubmitError>;

    fn handle(&mut self, msg: SubmitIdempotent, ctx: &mut Self::Context) -> Self::Result {
        if let Some((id, at)) = self.idempotency.get(&msg.key) {
            if at.elapsed() < self.config.retention {
                return Ok((*id, false));
            }
        }
        self.admit()?;
        let id = JobId::new();
        self.idempotency.insert(msg.key, (id, Instant::now()));
        self.start(id, msg.spec, ctx);
        Ok((id, true))
    }
}

/// Runs a job whose id was given elsewhere (a worker node running a job from the Redis
/// queue) and answers its outcome once it finishes. The job passes through admission,
/// single-flight and the stages exactly as a submitted one does.
#[derive(Debug, Message)]
#[rtype(result = "Result<RunOutcome, SubmitError>")]
pub struct ExecuteJob {
    pub id: JobId,
    pub spec: JobSpec,
}

impl Handler<ExecuteJob> for JobRouter {
    type Result = ResponseFuture<Result<RunOutcome, SubmitError>>;

    fn handle(
        &mut self,
        ExecuteJob { id, spec }: ExecuteJob,
        ctx: &mut Self::Context,
    ) -> Self::Result {
        if let Err(err) = self.admit() {
            return Box::pin(async move { Err(err) });
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.waiters.insert(id, tx);
        self.start(id, spec, ctx);
        Box::pin(async move { rx.await.map_err(|_| SubmitError::ShuttingDown) })
    }
}

impl JobRouter {
    /// Records a job as pending and runs it, or joins identical work already in flight.
    fn start(&mut self, id: JobId, spec: JobSpec, ctx: &mut Context<Self>) {
        self.store.insert(JobRecord::pending(id, &spec));
        self.active_jobs += 1;
        self.telemetry.emit(TelemetryEvent::JobSubmitted);

        let key = spec.work_key();
        if let Some(group) = self.in_flight.get(&key) {
            tracing::debug!(job = %id, work = %key, "joined identical work in flight");
            group.lock().push((id, Instant::now()));
            return;
        }
        let group = Arc::new(WorkGroup::default());
        group.lock().push((id, Instant::now()));
        self.in_flight.insert(key.clone(), group.clone());

        let deadline = self.config.job_deadline;
        let run = pipeline::run(pipeline::Run {
            spec,
            key: key.clone(),
            flags: self.flags.clone(),
            services: self.services.clone(),
            store: self.store.clone(),
            events: self.events.clone(),
            telemetry: self.telemetry.clone(),
            group: group.clone(),
            deadline: tokio::time::Instant::now() + deadline,
        });
        let bounded = async move {
            match tokio::time::timeout(deadline, run).await {
                Ok(outcome) => outcome,
                Err(_) => Err(JobFailure {
                    code: "deadline_exceeded".into(),
                    message: format!("the job did not finish within its deadline of {deadline:?}"),
                }),
            }
        };
        ctx.spawn(
            bounded.into_actor(self).map(move |outcome, act, _| act.finish(key, group, outcome)),
        );
    }
}

impl Handler<FlagsChanged> for JobRouter {
    type Result = ();

    fn handle(&mut self, msg: FlagsChanged, _: &mut Self::Context) {
        self.flags = msg.0;
    }
}

/// The router's own numbers.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouterStatus {
    pub active_jobs: usize,
    pub runs_in_flight: usize,
    pub max_active_jobs: usize,
    pub draining: bool,
}

#[derive(Debug, Message)]
#[rtype(result = "RouterStatus")]
pub struct GetRouterStatus;

impl Handler<GetRouterStatus> for JobRouter {
    type Result = MessageResult<GetRouterStatus>;

    fn handle(&mut self, _: GetRouterStatus, _: &mut Self::Context) -> Self::Result {
        MessageResult(RouterStatus {
            active_jobs: self.active_jobs,
            runs_in_flight: self.in_flight.len(),
            max_active_jobs: self.config.max_active_jobs,
            draining: self.draining,
        })
    }
}

/// Stops admitting jobs; running ones go on. The caller waits for `activeJobs` to reach zero.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct DrainRouter;

impl Handler<DrainRouter> for JobRouter {
    type Result = ();

    fn handle(&mut self, _: DrainRouter, _: &mut Self::Context) {
        self.draining = true;
    }
}
