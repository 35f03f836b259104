//! The stages of one run: cache, static, container, AI, assembly.
//!
//! A run is plain async code over the services' supervisors. Each stage reports progress to
//! every job of the work group and its duration to telemetry. A stage that is unavailable
//! degrades the report (and says so in it) rather than failing the job; only the static stage,
//! which every report is built on, fails a job when it cannot run.

use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;

use super::ai_stage::{self, ProviderHandle};
use super::{RunOutcome, WorkGroup};
use crate::bulkhead::BulkheadError;
use crate::cache::{CacheActor, CacheGet, CachePut};
use crate::error::StageError;
use crate::events::{EventHub, JobEvent};
use crate::flags::FlagSet;
use crate::job::{AnalysisType, JobFailure, JobSpec, JobStatus, WorkKey};
use crate::report::{AnalysisReport, ContainerReport, StaticReport, ThreatLevel};
use crate::retry_budget::RetryBudget;
use crate::sandbox::{RunSandbox, SandboxActor};
use crate::semaphore::Semaphores;
use crate::static_analyzer::{AnalyzeSample, StaticAnalyzer};
use crate::store::JobStore;
use crate::supervisor::{Dispatch, ServiceSupervisor};
use crate::telemetry::{Telemetry, TelemetryEvent};

/// The supervisors a run dispatches to, and the limits shared by every run.
#[derive(Clone)]
pub struct Services {
    pub cache: Addr<ServiceSupervisor<CacheActor>>,
    pub static_analysis: Addr<ServiceSupervisor<StaticAnalyzer>>,
    pub container: Addr<ServiceSupervisor<SandboxActor>>,
    pub providers: Arc<Vec<ProviderHandle>>,
    pub board: crate::provider::BreakerBoard,
    /// Global permits such as `ai.total_requests` and `container.total`.
    pub semaphores: Semaphores,
    /// The longest a stage waits for a global permit.
    pub semaphore_timeout: std::time::Duration,
    pub failover_budget: RetryBudget,
}

/// Everything one run needs.
pub(crate) struct Run {
    pub spec: JobSpec,
    pub key: WorkKey,
    pub flags: Arc<FlagSet>,
    pub services: Services,
    pub store: JobStore,
    pub events: EventHub,
    pub telemetry: Telemetry,
    pub group: Arc<WorkGroup>,
    /// When the job's deadline passes; failover stops trying new providers then.
    pub deadline: tokio::time::Instant,
}

/// The global permit every sandbox run holds.
pub const CONTAINER_SEMAPHORE: &str = "container.total";

/// Progress and events for every job of a group.
struct Progress<'a> {
    group: &'a WorkGroup,
    store: &'a JobStore,
    events: &'a EventHub,
}

impl Progress<'_> {
    fn stage(&self, stage: &'static str, progress: u8) {
        for id in self.group.ids() {
            self.store.update(&id, |r| {
                r.status = JobStatus::Processing;
                r.stage = Some(stage.to_string());
                r.progress = r.progress.max(progress);
            });
            self.events.publish(JobEvent {
                analysis_id: id,
                kind: "progress",
                progress,
                stage: Some(stage),
                data: None,
            });
        }
    }

    fn partial(&self, stage: &'static str, progress: u8, data: serde_json::Value) {
        for id in self.group.ids() {
            self.events.publish(JobEvent {
                analysis_id: id,
                kind: "partial_result",
                progress,
                stage: Some(stage),
                data: Some(data.clone()),
            });
        }
    }
}

/// Times a stage and reports it once, however it ends.
struct StageTimer<'a> {
    stage: &'static str,
    started: Instant,
    telemetry: &'a Telemetry,
    enabled: bool,
}

impl<'a> StageTimer<'a> {
    fn start(stage: &'static str, telemetry: &'a Telemetry, flags: &FlagSet) -> Self {
        StageTimer {
            stage,
            started: Instant::now(),
            telemetry,
            enabled: flags.enable_performance_monitoring,
        }
    }

    fn done(self, outcome: &'static str) {
        if self.enabled {
            self.telemetry.emit(TelemetryEvent::StageFinished {
                stage: self.stage,
                outcome,
                duration: self.started.elapsed(),
            });
        }
    }
}

pub(crate) async fn run(run: Run) -> RunOutcome {
    let Run { spec, key, flags, services, store, events, telemetry, group, deadline } = run;
    let progress = Progress { group: &group, store: &store, events: &events };
    let cache_key = key.to_string();
    let use_cache = flags.cache_analysis_results;

    if use_cache {
        progress.stage("cache", 5);
        let timer = StageTimer::start("cache", &telemetry, &flags);
        let lookup = CacheGet {
            key: cache_key.clone(),
            memory: flags.enable_memory_cache,
            redis: flags.enable_redis_cache,
        };
        match services.cache.send(Dispatch::new(lookup)).await {
            Ok(Ok(Some(report))) => {
                timer.done("hit");
                return Ok((report, true));
            }
            Ok(Err(err)) => {
                tracing::debug!(cause = %err, "cache lookup skipped");
                timer.done("error");
            }
            _ => timer.done("miss"),
        }
    }

    progress.stage("static", 10);
    let static_report = static_stage(&spec, &services, &telemetry, &flags).await?;
    progress.partial("static", 40, serde_json::to_value(&static_report.facts).unwrap_or_default());

    let container = if flags.enable_container_isolation && spec.analysis_type == AnalysisType::Full
    {
        progress.stage("container", 45);
        Some(container_stage(&spec, &services, &telemetry, &flags).await)
    } else {
        None
    };

    let mut ai = ai_stage::AiResult::nothing_asked();
    if spec.analysis_type.wants_ai() {
        progress.stage("ai", 60);
        let timer = StageTimer::start("ai", &telemetry, &flags);
        ai = ai_stage::run(&spec, &static_report, &services, &flags, deadline).await;
        timer.done(if ai.all_succeeded { "success" } else { "degraded" });
    }

    let report = Arc::new(assemble(static_report, container, ai.clone()));
    telemetry.emit(TelemetryEvent::Verdict { level: report.threat_level });

    // A degraded AI result is not cached: a provider that was down a minute ago must get its
    // chance on the next submission instead of the gap being served for the whole TTL.
    if use_cache && ai.cacheable {
        let put = CachePut {
            key: cache_key,
            report: report.clone(),
            memory: flags.enable_memory_cache,
            redis: flags.enable_redis_cache,
        };
        if let Err(err) = services.cache.send(Dispatch::new(put)).await {
            tracing::debug!(cause = %err, "cache write skipped");
        }
    }
    Ok((report, false))
}

async fn static_stage(
    spec: &JobSpec,
    services: &Services,
    telemetry: &Telemetry,
    flags: &FlagSet,
) -> Result<StaticReport, JobFailure> {
    let depth =
        if flags.enable_advanced_analysis { spec.depth } else { crate::analysis::Depth::Quick };
    // A worker lost to an unrelated crash is retried once; a panic on this sample is not,
    // since the same input would panic again.
    let mut attempts = 0;
    loop {
        attempts += 1;
        let timer = StageTimer::start("static", telemetry, flags);
        let msg = AnalyzeSample { sample: spec.sample.clone(), depth };
        let dispatch = Dispatch { msg, priority: spec.priority };
        let result = match services.static_analysis.send(dispatch).await {
            Ok(Ok(inner)) => inner,
            Ok(Err(dispatch)) => Err(StageError::from(dispatch)),
            Err(_) => Err(StageError::WorkerLost { service: "static".into() }),
        };
        match result {
            Ok(report) => {
                timer.done("success");
                return Ok(report);
            }
            Err(StageError::WorkerLost { .. }) if attempts < 2 => timer.done("retry"),
            Err(err) => {
                timer.done("failure");
                let code = match err {
                    StageError::Rejected(BulkheadError::Draining { .. }) => "shutting_down",
                    StageError::Rejected(_) => "overloaded",
                    _ => "static_analysis_failed",
                };
                return Err(JobFailure { code: code.into(), message: err.to_string() });
            }
        }
    }
}

async fn container_stage(
    spec: &JobSpec,
    services: &Services,
    telemetry: &Telemetry,
    flags: &FlagSet,
) -> ContainerReport {
    let timer = StageTimer::start("container", telemetry, flags);
    // The global permit bounds sandboxes across services, beyond this pool's bulkhead.
    let _permit = match services.semaphores.get(CONTAINER_SEMAPHORE) {
        Some(semaphore) => match semaphore.acquire(services.semaphore_timeout).await {
            Ok(permit) => Some(permit),
            Err(err) => {
                timer.done("rejected");
                return failed_container(err.to_string());
            }
        },
        None => None,
    };
    let msg = RunSandbox {
        sample: spec.sample.clone(),
        resource_limits: flags.enable_container_resource_limits,
    };
    let dispatch = Dispatch { msg, priority: spec.priority };
    let report = match services.container.send(dispatch).await {
        Ok(Ok(Ok(report))) => report,
        Ok(Ok(Err(err))) => failed_container(err.to_string()),
        Ok(Err(err)) => failed_container(err.to_string()),
        Err(_) => failed_container("the container service is not running".into()),
    };
    timer.done(if report.status == "failed" { "failure" } else { "success" });
    report
}

fn failed_container(detail: String) -> ContainerReport {
    ContainerReport { status: "failed".into(), detail, ..ContainerReport::default() }
}

/// Builds the report: the verdict is the static one (explainable from its indicators); the
/// AI adds code, prose and vulnerabilities, and the static deobfuscator fills in when no
/// provider produced code.
fn assemble(
    static_report: StaticReport,
    container: Option<ContainerReport>,
    ai: ai_stage::AiResult,
) -> AnalysisReport {
    let score: u32 = static_report.indicators.iter().map(|i| u32::from(i.weight)).sum();
    let threat_score = score.min(100) as u8;
    AnalysisReport {
        threat_level: ThreatLevel::from_score(threat_score),
        threat_score,
        classifications: static_report.classifications,
        recommendations: static_report.recommendations,
        indicators: static_report.indicators,
        iocs: static_report.iocs,
        static_facts: static_report.facts,
        providers: ai.attempts,
        deobfuscated_code: ai.deobfuscated_code.or(static_report.deobfuscated_code),
        analysis_report: ai.analysis_report,
        vulnerabilities: ai.vulnerabilities,
        container,
        used_fallback: ai.used_fallback,
        ai_error: ai.error,
    }
}
