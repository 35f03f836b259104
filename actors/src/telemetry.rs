//! Metrics: the Prometheus registry and the actor that owns it.
//!
//! Every component reports what happened as a [`TelemetryEvent`], sent fire-and-forget so that
//! measuring never slows the work down or fails it. The [`TelemetryActor`] turns events into
//! Prometheus series. All metrics are registered here, in one place, with units in their names.
//! Series whose labels are known at start (each provider's breaker states, each bulkhead, each
//! stage) are created at zero so alerts can see them before the first event.

use std::time::Duration;

use actix::prelude::*;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::breaker::BreakerState;
use crate::report::{FileType, ThreatLevel};

/// Something worth counting. Label values are `&'static str` where the set is closed, so a
/// client can never create unbounded series.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub enum TelemetryEvent {
    JobSubmitted,
    JobFinished {
        outcome: &'static str,
        from_cache: bool,
        duration: Duration,
    },
    StageFinished {
        stage: &'static str,
        outcome: &'static str,
        duration: Duration,
    },
    ProviderCall {
        provider: String,
        outcome: &'static str,
        latency: Duration,
    },
    /// A provider call is tried again after a transient failure.
    ProviderRetry {
        provider: String,
        reason: &'static str,
    },
    /// Chaos testing failed a provider call on purpose.
    ChaosInjection {
        provider: String,
    },
    BreakerTransition {
        provider: String,
        from: BreakerState,
        to: BreakerState,
        reason: &'static str,
    },
    BulkheadGauges {
        service: String,
        active: usize,
        queued: usize,
    },
    BulkheadAdmitted {
        service: String,
        waited: Duration,
    },
    BulkheadRejected {
        service: String,
        reason: &'static str,
    },
    BulkheadFinished {
        service: String,
        ran: Duration,
    },
    CacheRequest {
        tier: &'static str,
        result: &'static str,
    },
    SupervisorRestart {
        service: String,
    },
    /// A delivery from the Redis job queue was settled on this node.
    QueueDelivery {
        outcome: &'static str,
    },
    FlagChanged {
        flag: &'static str,
        source: &'static str,
    },
    SampleAnalysed {
        file_type: FileType,
    },
    Verdict {
        level: ThreatLevel,
    },
}

/// A cheap, cloneable handle for emitting events.
#[derive(Clone, Default)]
pub struct Telemetry {
    addr: Option<Addr<TelemetryActor>>,
}

impl Telemetry {
    /// A handle that drops every event: for components built outside a running engine.
    pub fn disabled() -> Self {
        Telemetry { addr: None }
    }

    pub fn emit(&self, event: TelemetryEvent) {
        if let Some(addr) = &self.addr {
            addr.do_send(event);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub async fn gather(&self) -> String {
        match &self.addr {
            Some(addr) => addr.send(Gather).await.unwrap_or_default(),
            None => String::new(),
        }
    }
}

/// Label values known before the first event, so their series start at zero.
#[derive(Debug, Clone, Default)]
pub struct KnownSeries {
    pub providers: Vec<String>,
    pub services: Vec<String>,
}

/// Every collector, registered once.
struct Metrics {
    jobs_submitted: IntCounter,
    jobs_completed: IntCounterVec,
    job_duration: HistogramVec,
    stage_duration: HistogramVec,
    provider_calls: IntCounterVec,
    provider_latency: HistogramVec,
    provider_retries: IntCounterVec,
    chaos_injections: IntCounterVec,
    breaker_state: IntGaugeVec,
    breaker_transitions: IntCounterVec,
    bulkhead_active: IntGaugeVec,
    bulkhead_queued: IntGaugeVec,
    bulkhead_rejected: IntCounterVec,
    bulkhead_timed_out: IntCounterVec,
    bulkhead_wait: HistogramVec,
    bulkhead_run: HistogramVec,
    cache_requests: IntCounterVec,
    queue_deliveries: IntCounterVec,
    supervisor_restarts: IntCounterVec,
    flag_changes: IntCounterVec,
    samples_analysed: IntCounterVec,
    verdicts: IntCounterVec,
    start_time: Gauge,
}

/// Every `reason` of `athena_provider_retries_total` (see `provider::retry::retry_reason`).
pub(crate) const RETRY_REASONS: [&str; 5] =
    ["timeout", "connection", "request_timeout", "rate_limited", "server_error"];

/// Every `outcome` of `athena_queue_deliveries_total` (see `distributed::worker`).
pub(crate) const QUEUE_OUTCOMES: [&str; 7] =
    ["completed", "retried", "dead_lettered", "refused", "reclaimed", "duplicate", "missing"];

/// Buckets from 1 ms to 2 minutes: static analysis is milliseconds, AI calls are seconds.
const DURATION_BUCKETS: &[f64] =
    &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter definition");
    registry.register(Box::new(c.clone())).expect("metric registered once");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge definition");
    registry.register(Box::new(g.clone())).expect("metric registered once");
    g
}

fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec());
    let h = HistogramVec::new(opts, labels).expect("valid histogram definition");
    registry.register(Box::new(h.clone())).expect("metric registered once");
    h
}

impl Metrics {
    fn register(registry: &Registry) -> Self {
        let jobs_submitted =
            IntCounter::new("athena_jobs_submitted_total", "Jobs accepted for analysis.")
                .expect("valid counter");
        registry.register(Box::new(jobs_submitted.clone())).expect("metric registered once");
        let start_time = Gauge::new(
            "athena_process_start_time_seconds",
            "Start time of the engine since the Unix epoch, in seconds.",
        )
        .expect("valid gauge");
        registry.register(Box::new(start_time.clone())).expect("metric registered once");
        let r = registry;
        Metrics {
            jobs_submitted,
            jobs_completed: counter(
                r,
                "athena_jobs_completed_total",
                "Jobs finished, by outcome and whether the result came from the cache.",
                &["outcome", "from_cache"],
            ),
            job_duration: histogram(
                r,
                "athena_job_duration_seconds",
                "Time from admission to the end of a job, in seconds.",
                &["outcome"],
            ),
            stage_duration: histogram(
                r,
                "athena_stage_duration_seconds",
                "Time spent in one stage of a job, in seconds.",
                &["stage", "outcome"],
            ),
            provider_calls: counter(
                r,
                "athena_provider_calls_total",
                "Calls to AI providers, by provider and outcome.",
                &["provider", "outcome"],
            ),
            provider_latency: histogram(
                r,
                "athena_provider_latency_seconds",
                "Latency of AI provider calls, in seconds.",
                &["provider"],
            ),
            provider_retries: counter(
                r,
                "athena_provider_retries_total",
                "Provider calls tried again within the same provider, by failure reason.",
                &["provider", "reason"],
            ),
            chaos_injections: counter(
                r,
                "athena_chaos_injections_total",
                "Provider calls failed on purpose by chaos testing (X-Simulate-Failure).",
                &["provider"],
            ),
            breaker_state: gauge(
                r,
                "athena_breaker_state",
                "Circuit breaker state: 1 for the current state, 0 for the others.",
                &["provider", "state"],
            ),
            breaker_transitions: counter(
                r,
                "athena_breaker_transitions_total",
                "Circuit breaker state changes.",
                &["provider", "from", "to", "reason"],
            ),
            bulkhead_active: gauge(
                r,
                "athena_bulkhead_active",
                "Work items running inside a service's bulkhead.",
                &["service"],
            ),
            bulkhead_queued: gauge(
                r,
                "athena_bulkhead_queued",
                "Work items waiting in a service's bulkhead queue.",
                &["service"],
            ),
            bulkhead_rejected: counter(
                r,
                "athena_bulkhead_rejected_total",
                "Work items a bulkhead turned away, by reason.",
                &["service", "reason"],
            ),
            bulkhead_timed_out: counter(
                r,
                "athena_bulkhead_timed_out_total",
                "Work items that waited past the queue timeout.",
                &["service"],
            ),
            bulkhead_wait: histogram(
                r,
                "athena_bulkhead_wait_seconds",
                "Time a work item waited for a bulkhead slot, in seconds.",
                &["service"],
            ),
            bulkhead_run: histogram(
                r,
                "athena_bulkhead_run_seconds",
                "Time a work item held its bulkhead slot, in seconds.",
                &["service"],
            ),
            cache_requests: counter(
                r,
                "athena_cache_requests_total",
                "Result cache lookups and writes, by tier and result.",
                &["tier", "result"],
            ),
            queue_deliveries: counter(
                r,
                "athena_queue_deliveries_total",
                "Deliveries from the Redis job queue handled by this node, by outcome.",
                &["outcome"],
            ),
            supervisor_restarts: counter(
                r,
                "athena_supervisor_restarts_total",
                "Worker actors restarted by their supervisor.",
                &["service"],
            ),
            flag_changes: counter(
                r,
                "athena_flag_changes_total",
                "Feature flag changes, by flag and source.",
                &["flag", "source"],
            ),
            samples_analysed: counter(
                r,
                "athena_samples_analysed_total",
                "Samples through static analysis, by detected file type.",
                &["file_type"],
            ),
            verdicts: counter(
                r,
                "athena_verdicts_total",
                "Verdicts reached, by threat level.",
                &["threat_level"],
            ),
            start_time,
        }
    }

    fn initialise(&self, known: &KnownSeries) {
        for provider in &known.providers {
            for state in BreakerState::ALL {
                let value = i64::from(state == BreakerState::Closed);
                self.breaker_state.with_label_values(&[provider, state.as_str()]).set(value);
            }
            self.provider_latency.with_label_values(&[provider]);
            for outcome in ["success", "failure", "rejected"] {
                self.provider_calls.with_label_values(&[provider, outcome]);
            }
            for reason in RETRY_REASONS {
                self.provider_retries.with_label_values(&[provider, reason]);
            }
            self.chaos_injections.with_label_values(&[provider]);
        }
        for service in &known.services {
            self.bulkhead_active.with_label_values(&[service]).set(0);
            self.bulkhead_queued.with_label_values(&[service]).set(0);
            self.bulkhead_timed_out.with_label_values(&[service]);
            self.bulkhead_wait.with_label_values(&[service]);
            self.bulkhead_run.with_label_values(&[service]);
            self.supervisor_restarts.with_label_values(&[service]);
            for reason in ["full", "queue_timeout", "draining"] {
                self.bulkhead_rejected.with_label_values(&[service, reason]);
            }
        }
        for outcome in ["completed", "failed"] {
            for from_cache in ["true", "false"] {
                self.jobs_completed.with_label_values(&[outcome, from_cache]);
            }
            self.job_duration.with_label_values(&[outcome]);
        }
        for result in ["hit", "miss", "write"] {
            self.cache_requests.with_label_values(&["memory", result]);
        }
        for result in crate::distributed::cache_tier::RESULTS {
            self.cache_requests.with_label_values(&["redis", result]);
        }
        for outcome in QUEUE_OUTCOMES {
            self.queue_deliveries.with_label_values(&[outcome]);
        }
        for file_type in FileType::ALL {
            self.samples_analysed.with_label_values(&[file_type.as_str()]);
        }
        for level in ThreatLevel::ALL {
            self.verdicts.with_label_values(&[level.as_str()]);
        }
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        self.start_time.set(now.as_secs_f64());
    }

    fn record(&self, event: TelemetryEvent) {
        use TelemetryEvent as E;
        match event {
            E::JobSubmitted => self.jobs_submitted.inc(),
            E::JobFinished { outcome, from_cache, duration } => {
                let cached = if from_cache { "true" } else { "false" };
                self.jobs_completed.with_label_values(&[outcome, cached]).inc();
                self.job_duration.with_label_values(&[outcome]).observe(duration.as_secs_f64());
            }
            E::StageFinished { stage, outcome, duration } => {
                let h = self.stage_duration.with_label_values(&[stage, outcome]);
                h.observe(duration.as_secs_f64());
            }
            E::ProviderCall { provider, outcome, latency } => {
                self.provider_calls.with_label_values(&[&provider, outcome]).inc();
                if outcome != "rejected" {
                    let h: Histogram = self.provider_latency.with_label_values(&[&provider]);
                    h.observe(latency.as_secs_f64());
                }
            }
            E::ProviderRetry { provider, reason } => {
                self.provider_retries.with_label_values(&[&provider, reason]).inc();
            }
            E::ChaosInjection { provider } => {
                self.chaos_injections.with_label_values(&[&provider]).inc();
            }
            E::BreakerTransition { provider, from, to, reason } => {
                self.breaker_transitions
                    .with_label_values(&[&provider, from.as_str(), to.as_str(), reason])
                    .inc();
                for state in BreakerState::ALL {
                    let g = self.breaker_state.with_label_values(&[&provider, state.as_str()]);
                    g.set(i64::from(state == to));
                }
            }
            E::BulkheadGauges { service, active, queued } => {
                self.bulkhead_active.with_label_values(&[&service]).set(active as i64);
                self.bulkhead_queued.with_label_values(&[&service]).set(queued as i64);
            }
            E::BulkheadAdmitted { service, waited } => {
                self.bulkhead_wait.with_label_values(&[&service]).observe(waited.as_secs_f64());
            }
            E::BulkheadRejected { service, reason } => {
                self.bulkhead_rejected.with_label_values(&[&service, reason]).inc();
                if reason == "queue_timeout" {
                    self.bulkhead_timed_out.with_label_values(&[&service]).inc();
                }
            }
            E::BulkheadFinished { service, ran } => {
                self.bulkhead_run.with_label_values(&[&service]).observe(ran.as_secs_f64());
            }
            E::CacheRequest { tier, result } => {
                self.cache_requests.with_label_values(&[tier, result]).inc();
            }
            E::QueueDelivery { outcome } => {
                self.queue_deliveries.with_label_values(&[outcome]).inc();
            }
            E::SupervisorRestart { service } => {
                self.supervisor_restarts.with_label_values(&[&service]).inc();
            }
            E::FlagChanged { flag, source } => {
                self.flag_changes.with_label_values(&[flag, source]).inc();
            }
            E::SampleAnalysed { file_type } => {
                self.samples_analysed.with_label_values(&[file_type.as_str()]).inc();
            }
            E::Verdict { level } => self.verdicts.with_label_values(&[level.as_str()]).inc(),
        }
    }
}

/// Owns the registry; turns events into series.
pub struct TelemetryActor {
    registry: Registry,
    metrics: Metrics,
}

impl TelemetryActor {
    pub fn new(known: &KnownSeries) -> Self {
        let registry = Registry::new();
        let metrics = Metrics::register(&registry);
        metrics.initialise(known);
        TelemetryActor { registry, metrics }
    }

    /// Starts the actor and returns the handle components emit through.
    pub fn start_with(known: &KnownSeries) -> Telemetry {
        Telemetry { addr: Some(TelemetryActor::new(known).start()) }
    }
}

impl Actor for TelemetryActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Bursts of events from many jobs must not be refused: the mailbox grows instead.
        ctx.set_mailbox_capacity(crate::MAILBOX_CAPACITY);
    }
}

impl Handler<TelemetryEvent> for TelemetryActor {
    type Result = ();

    fn handle(&mut self, event: TelemetryEvent, _: &mut Self::Context) {
        self.metrics.record(event);
    }
}

/// Renders the registry in the Prometheus text format.
#[derive(Message)]
#[rtype(result = "String")]
pub struct Gather;

impl Handler<Gather> for TelemetryActor {
    type Result = String;

    fn handle(&mut self, _: Gather, _: &mut Self::Context) -> String {
        let mut out = Vec::new();
        let families = self.registry.gather();
        if let Err(err) = TextEncoder::new().encode(&families, &mut out) {
            tracing::warn!(cause = %err, "metrics encoding failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn known_series_exist_at_zero_and_breaker_gauge_is_one_hot() {
        let known =
            KnownSeries { providers: vec!["claude".into()], services: vec!["static".into()] };
        let telemetry = TelemetryActor::start_with(&known);
        let text = telemetry.gather().await;
        assert!(text.contains(r#"athena_breaker_state{provider="claude",state="closed"} 1"#));
        assert!(text.contains(r#"athena_breaker_state{provider="claude",state="open"} 0"#));
        assert!(text.contains(r#"athena_bulkhead_active{service="static"} 0"#));
        assert!(text.contains(r#"athena_verdicts_total{threat_level="critical"} 0"#));
        assert!(text.contains(r#"athena_cache_requests_total{result="skipped",tier="redis"} 0"#));

        telemetry.emit(TelemetryEvent::BreakerTransition {
            provider: "claude".into(),
            from: BreakerState::Closed,
            to: BreakerState::Open,
            reason: "consecutive_failures",
        });
        telemetry.emit(TelemetryEvent::JobSubmitted);
        let text = telemetry.gather().await;
        assert!(text.contains(r#"athena_breaker_state{provider="claude",state="closed"} 0"#));
        assert!(text.contains(r#"athena_breaker_state{provider="claude",state="open"} 1"#));
        assert!(text.contains("athena_jobs_submitted_total 1"));
        assert!(text.contains(concat!(
            r#"athena_breaker_transitions_total{from="closed",provider="claude","#,
            r#"reason="consecutive_failures",to="open"} 1"#
        )));
    }
}
