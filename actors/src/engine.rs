//! The engine: every actor of one process, started and wired together.
//!
//! [`Engine::start`] validates the configuration, starts telemetry and flags, one supervisor
//! per service (`static`, `container`, `cache`, `ai.<provider>`), and the router, and
//! subscribes the router and the supervisors to flag changes. The HTTP layer, the CLI, the
//! tests and the benches all drive the engine through this one type.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::breaker::{AdminAction, BreakerSnapshot};
use crate::bulkhead::{Bulkhead, BulkheadConfig, BulkheadObserver};
use crate::cache::{CacheActor, CacheConfig, CacheStats, MemoryTier};
use crate::clock::SharedClock;
use crate::error::SubmitError;
use crate::events::EventHub;
use crate::flags::{FlagError, FlagsActor, Subscribe};
use crate::job::{JobId, JobRecord, JobSpec};
use crate::provider::{BreakerBoard, BreakerView, ControlBreaker, ProviderActor, ProviderConfig};
use crate::retry_budget::RetryBudget;
use crate::router::ProviderHandle;
use crate::router::{GetRouterStatus, JobRouter, RouterConfig, RouterStatus, Services, SubmitJob};
use crate::sandbox::{SandboxActor, SandboxConfig};
use crate::semaphore::{SemaphoreStats, Semaphores};
use crate::static_analyzer::StaticAnalyzer;
use crate::store::JobStore;
use crate::supervisor::{
    Broadcast, Drain, GetStatus, Resize, ServiceStatus, ServiceSupervisor, WorkerFactory,
};
use crate::telemetry::{KnownSeries, Telemetry, TelemetryActor, TelemetryEvent};

/// One service's pool and bulkhead.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceConfig {
    pub workers: usize,
    pub bulkhead: BulkheadConfig,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig { workers: 2, bulkhead: BulkheadConfig::default() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServicesConfig {
    #[serde(rename = "static")]
    pub static_analysis: ServiceConfig,
    pub container: ServiceConfig,
    pub cache: ServiceConfig,
}

fn service(
    workers: usize,
    max_concurrent: usize,
    max_queued: usize,
    timeout: u64,
) -> ServiceConfig {
    ServiceConfig {
        workers,
        bulkhead: BulkheadConfig {
            max_concurrent,
            max_queued,
            queue_timeout: Duration::from_secs(timeout),
            ..BulkheadConfig::default()
        },
    }
}

impl Default for ServicesConfig {
    /// The same values as `config/default.toml`: every accepted job fits the static queue.
    fn default() -> Self {
        ServicesConfig {
            static_analysis: service(2, 2, 10_000, 300),
            container: service(1, 2, 1_000, 300),
            cache: service(2, 64, 10_000, 5),
        }
    }
}

/// Global permits shared across services.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SemaphoresConfig {
    /// The longest a stage waits for a permit before the attempt is rejected.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Permits by name: `ai.total_requests` bounds provider calls in flight across all
    /// providers, `container.total` bounds sandbox runs.
    pub limits: BTreeMap<String, usize>,
}

impl Default for SemaphoresConfig {
    fn default() -> Self {
        let limits = [("ai.total_requests".to_string(), 16), ("container.total".to_string(), 4)];
        SemaphoresConfig { timeout: Duration::from_secs(30), limits: limits.into_iter().collect() }
    }
}

/// Everything the engine needs; the binary's config file deserialises into it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    pub router: RouterConfig,
    pub cache: CacheConfig,
    pub services: ServicesConfig,
    pub sandbox: SandboxConfig,
    pub semaphores: SemaphoresConfig,
    pub providers: BTreeMap<String, ProviderConfig>,
}

/// A configuration mistake, naming the key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError { key: key.into(), message: message.into() }
    }
}

impl EngineConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let services = [
            ("services.static", &self.services.static_analysis),
            ("services.container", &self.services.container),
            ("services.cache", &self.services.cache),
        ];
        for (key, service) in services {
            if service.workers == 0 {
                return Err(ConfigError::new(format!("{key}.workers"), "must be at least 1"));
            }
            service
                .bulkhead
                .validate()
                .map_err(|e| ConfigError::new(format!("{key}.bulkhead"), e.to_string()))?;
        }
        self.router
            .failover_budget
            .validate()
            .map_err(|e| ConfigError::new("router.failover_budget", e))?;
        Semaphores::from_config(self.semaphores.limits.clone())
            .map_err(|e| ConfigError::new("semaphores.limits", e.problem))?;
        let static_room = self.services.static_analysis.bulkhead.max_concurrent
            + self.services.static_analysis.bulkhead.max_queued;
        if static_room < self.router.max_active_jobs {
            return Err(ConfigError::new(
                "services.static.bulkhead.max_queued",
                format!(
                    "max_concurrent + max_queued ({static_room}) must hold router.max_active_jobs \
                     ({}), or an accepted job could be turned away by the static stage",
                    self.router.max_active_jobs
                ),
            ));
        }
        if self.router.max_records < self.router.max_active_jobs {
            return Err(ConfigError::new(
                "router.max_records",
                "must be at least router.max_active_jobs, so no active job's record is dropped",
            ));
        }
        if self.router.max_active_jobs == 0 {
            return Err(ConfigError::new("router.max_active_jobs", "must be at least 1"));
        }
        if self.router.job_deadline.is_zero() {
            return Err(ConfigError::new("router.job_deadline", "must be longer than zero"));
        }
        if self.sandbox.command.first().is_some_and(|c| c.trim().is_empty()) {
            return Err(ConfigError::new(
                "sandbox.command",
                "the first element must name a program",
            ));
        }
        for (name, provider) in &self.providers {
            let key = format!("providers.{name}");
            let valid_name = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
            if !valid_name {
                return Err(ConfigError::new(
                    key,
                    "provider names use lowercase letters, digits, - and _",
                ));
            }
            if !(provider.base_url.starts_with("http://")
                || provider.base_url.starts_with("https://"))
            {
                return Err(ConfigError::new(
                    format!("{key}.base_url"),
                    "must be an http:// or https:// URL",
                ));
            }
            if provider.model.trim().is_empty() {
                return Err(ConfigError::new(format!("{key}.model"), "must name a model"));
            }
            if provider.workers == 0 {
                return Err(ConfigError::new(format!("{key}.workers"), "must be at least 1"));
            }
            if provider.restart_window.is_zero() {
                return Err(ConfigError::new(
                    format!("{key}.restart_window"),
                    "must be longer than zero",
                ));
            }
            if provider.timeout.is_zero() {
                return Err(ConfigError::new(format!("{key}.timeout"), "must be longer than zero"));
            }
            if !(0.0..=2.0).contains(&provider.temperature) {
                return Err(ConfigError::new(
                    format!("{key}.temperature"),
                    "must be between 0 and 2",
                ));
            }
            provider
                .breaker
                .validate()
                .map_err(|e| ConfigError::new(format!("{key}.breaker"), e.to_string()))?;
            provider
                .bulkhead
                .validate()
                .map_err(|e| ConfigError::new(format!("{key}.bulkhead"), e.to_string()))?;
            provider.retry.validate().map_err(|e| {
                ConfigError::new(format!("{key}.retry.{}", e.key), e.message.to_string())
            })?;
        }
        Ok(())
    }

    /// Every service name, for metrics and status.
    pub fn service_names(&self) -> Vec<String> {
        let mut names: Vec<String> = vec!["static".into(), "container".into(), "cache".into()];
        names.extend(self.providers.keys().map(|p| format!("ai.{p}")));
        names
    }
}

/// The flag layers above the built-in defaults.
#[derive(Debug, Clone, Default)]
pub struct FlagLayers {
    pub config: BTreeMap<String, Value>,
    pub environment: BTreeMap<String, Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("flags: {0}")]
    Flags(#[from] FlagError),
}

/// Reports bulkhead activity to telemetry.
struct BulkheadTelemetry(Telemetry);

impl BulkheadObserver for BulkheadTelemetry {
    fn admitted(&self, service: &str, waited: Duration) {
        self.0.emit(TelemetryEvent::BulkheadAdmitted { service: service.to_string(), waited });
    }
    fn rejected(&self, service: &str, reason: &'static str) {
        self.0.emit(TelemetryEvent::BulkheadRejected { service: service.to_string(), reason });
    }
    fn finished(&self, service: &str, ran: Duration) {
        self.0.emit(TelemetryEvent::BulkheadFinished { service: service.to_string(), ran });
    }
    fn gauges(&self, service: &str, active: usize, queued: usize) {
        self.0.emit(TelemetryEvent::BulkheadGauges {
            service: service.to_string(),
            active,
            queued,
        });
    }
}

/// Why an operator command was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AdminError {
    #[error("unknown service {0:?}")]
    UnknownService(String),
    #[error("unknown provider {0:?}")]
    UnknownProvider(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the {0} supervisor is not running")]
    Unavailable(String),
}

/// A provider as `/api/health` and `/api/status` summarise it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProviderSummary {
    pub name: String,
    pub kind: crate::provider::ProviderKind,
    pub model: String,
    /// `available`, or `unavailable` with the reason.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
}

/// Everything `/api/status` shows.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EngineStatus {
    pub uptime_seconds: u64,
    pub router: Option<RouterStatus>,
    pub jobs: BTreeMap<&'static str, usize>,
    pub services: Vec<ServiceStatus>,
    pub breakers: Vec<BreakerView>,
    pub providers: Vec<ProviderSummary>,
    pub semaphores: Vec<SemaphoreStats>,
    /// Failover retries the shared budget allows right now.
    pub failover_budget: f64,
    pub cache: CacheStats,
}

#[derive(Clone)]
pub struct Engine {
    pub router: Addr<JobRouter>,
    pub flags: Addr<FlagsActor>,
    pub telemetry: Telemetry,
    pub store: JobStore,
    pub events: EventHub,
    pub board: BreakerBoard,
    services: Services,
    memory_tier: MemoryTier,
    providers: Arc<Vec<ProviderSummary>>,
    started: Instant,
}

fn bulkhead(service: &str, config: &BulkheadConfig, telemetry: &Telemetry) -> Bulkhead {
    let observer: Arc<dyn BulkheadObserver> = Arc::new(BulkheadTelemetry(telemetry.clone()));
    Bulkhead::new(service, config.clone(), observer)
}

fn supervisor<W: crate::supervisor::Worker>(
    service: &str,
    config: &ServiceConfig,
    telemetry: &Telemetry,
    factory: WorkerFactory<W>,
) -> Addr<ServiceSupervisor<W>> {
    let bulkhead = bulkhead(service, &config.bulkhead, telemetry);
    ServiceSupervisor::new(service, bulkhead, config.workers, factory, telemetry.clone()).start()
}

impl Engine {
    /// Starts every actor. Must run inside an actix system.
    pub fn start(
        config: &EngineConfig,
        layers: &FlagLayers,
        clock: SharedClock,
    ) -> Result<Engine, StartError> {
        config.validate()?;
        let provider_names: Vec<String> = config.providers.keys().cloned().collect();
        let known =
            KnownSeries { providers: provider_names.clone(), services: config.service_names() };
        let telemetry = TelemetryActor::start_with(&known);

        let flags_actor = FlagsActor::new(
            &layers.config,
            &layers.environment,
            provider_names,
            telemetry.clone(),
        )?;
        let initial_flags = flags_actor.flags();
        let flags = flags_actor.start();

        let memory_tier = MemoryTier::new(&config.cache);
        let board = BreakerBoard::with_clock(clock.clone());

        let cache = {
            let (tier, t) = (memory_tier.clone(), telemetry.clone());
            supervisor(
                "cache",
                &config.services.cache,
                &telemetry,
                Arc::new(move |_| CacheActor::new(tier.clone(), t.clone())),
            )
        };
        let static_analysis = {
            let t = telemetry.clone();
            supervisor(
                "static",
                &config.services.static_analysis,
                &telemetry,
                Arc::new(move |_| StaticAnalyzer::new(t.clone())),
            )
        };
        let container = {
            let (sandbox, t) = (config.sandbox.clone(), telemetry.clone());
            supervisor(
                "container",
                &config.services.container,
                &telemetry,
                Arc::new(move |_| SandboxActor::new(sandbox.clone(), t.clone())),
            )
        };

        let mut handles = Vec::new();
        let mut summaries = Vec::new();
        for (name, provider) in &config.providers {
            let service = format!("ai.{name}");
            let (p, n, c, b, t) =
                (provider.clone(), name.clone(), clock.clone(), board.clone(), telemetry.clone());
            let factory: WorkerFactory<ProviderActor> = Arc::new(move |slot| {
                ProviderActor::new(&n, slot, &p, c.clone(), b.clone(), t.clone())
            });
            let pool =
                ServiceConfig { workers: provider.workers, bulkhead: provider.bulkhead.clone() };
            let addr = supervisor(&service, &pool, &telemetry, factory);
            handles.push(ProviderHandle {
                name: name.clone(),
                priority: provider.priority,
                has_credentials: provider.has_credentials(),
                supervisor: addr,
            });
            summaries.push(ProviderSummary {
                name: name.clone(),
                kind: provider.kind,
                model: provider.model.clone(),
                status: if provider.has_credentials() { "available" } else { "unavailable" },
                reason: (!provider.has_credentials()).then_some("no credentials"),
            });
        }

        let semaphores = Semaphores::from_config(config.semaphores.limits.clone())
            .map_err(|e| ConfigError::new("semaphores.limits", e.problem))?;
        let services = Services {
            cache,
            static_analysis,
            container,
            providers: Arc::new(handles),
            board: board.clone(),
            semaphores,
            semaphore_timeout: config.semaphores.timeout,
            failover_budget: RetryBudget::new(config.router.failover_budget, clock.clone()),
        };
        let store = JobStore::default();
        let events = EventHub::default();
        let router = JobRouter::new(
            config.router.clone(),
            initial_flags,
            services.clone(),
            store.clone(),
            events.clone(),
            telemetry.clone(),
        )
        .start();

        flags.do_send(Subscribe(router.clone().recipient()));
        flags.do_send(Subscribe(services.cache.clone().recipient()));
        flags.do_send(Subscribe(services.static_analysis.clone().recipient()));
        flags.do_send(Subscribe(services.container.clone().recipient()));
        for handle in services.providers.iter() {
            flags.do_send(Subscribe(handle.supervisor.clone().recipient()));
        }

        tracing::info!(providers = config.providers.len(), "engine started");
        Ok(Engine {
            router,
            flags,
            telemetry,
            store,
            events,
            board,
            services,
            memory_tier,
            providers: Arc::new(summaries),
            started: Instant::now(),
        })
    }

    pub async fn submit(&self, spec: JobSpec) -> Result<JobId, SubmitError> {
        self.router.send(SubmitJob(spec)).await.unwrap_or(Err(SubmitError::ShuttingDown))
    }

    pub fn job(&self, id: &JobId) -> Option<JobRecord> {
        self.store.get(id)
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn providers(&self) -> &[ProviderSummary] {
        &self.providers
    }

    pub async fn status(&self) -> EngineStatus {
        let mut services = Vec::new();
        let pools = [
            self.services.cache.send(GetStatus).await.ok(),
            self.services.static_analysis.send(GetStatus).await.ok(),
            self.services.container.send(GetStatus).await.ok(),
        ];
        services.extend(pools.into_iter().flatten());
        for handle in self.services.providers.iter() {
            if let Ok(status) = handle.supervisor.send(GetStatus).await {
                services.push(status);
            }
        }
        EngineStatus {
            uptime_seconds: self.started.elapsed().as_secs(),
            router: self.router.send(GetRouterStatus).await.ok(),
            jobs: self.store.counts().into_iter().map(|(s, n)| (s.as_str(), n)).collect(),
            services,
            breakers: self.board.views(),
            providers: self.providers.to_vec(),
            semaphores: self.services.semaphores.stats(),
            failover_budget: self.services.failover_budget.balance(),
            cache: self.memory_tier.stats(),
        }
    }

    /// Resizes a service's worker pool.
    pub async fn resize(&self, service: &str, workers: usize) -> Result<ServiceStatus, AdminError> {
        if workers == 0 || workers > 1024 {
            return Err(AdminError::Invalid("workers must be between 1 and 1024".into()));
        }
        let msg = Resize { workers };
        let unavailable = |_| AdminError::Unavailable(service.to_string());
        match service {
            "cache" => self.services.cache.send(msg).await.map_err(unavailable),
            "static" => self.services.static_analysis.send(msg).await.map_err(unavailable),
            "container" => self.services.container.send(msg).await.map_err(unavailable),
            other => {
                let handle = other
                    .strip_prefix("ai.")
                    .and_then(|name| self.services.providers.iter().find(|h| h.name == name))
                    .ok_or_else(|| AdminError::UnknownService(other.to_string()))?;
                handle.supervisor.send(msg).await.map_err(unavailable)
            }
        }
    }

    /// Sends a message to every worker of a provider's pool.
    async fn broadcast<M>(&self, provider: &str, msg: M) -> Result<Vec<M::Result>, AdminError>
    where
        M: Message + Clone + Send + 'static,
        M::Result: Send,
        ProviderActor: Handler<M>,
    {
        let handle = self
            .services
            .providers
            .iter()
            .find(|h| h.name == provider)
            .ok_or_else(|| AdminError::UnknownProvider(provider.to_string()))?;
        handle
            .supervisor
            .send(Broadcast(msg))
            .await
            .map_err(|_| AdminError::Unavailable(format!("ai.{provider}")))
    }

    /// Applies an operator's breaker command to every slot of a provider.
    pub async fn control_breaker(
        &self,
        provider: &str,
        action: AdminAction,
    ) -> Result<Vec<BreakerSnapshot>, AdminError> {
        self.broadcast(provider, ControlBreaker(action)).await
    }

    /// Makes the next call of a provider's workers panic (supervision tests only).
    #[cfg(feature = "test-hooks")]
    pub async fn panic_provider_on_next_call(&self, provider: &str) -> Result<(), AdminError> {
        self.broadcast(provider, crate::provider::PanicOnNextCall).await.map(|_| ())
    }

    /// Stops admitting jobs, waits (up to `grace`) for accepted ones to finish, then drains
    /// every service: what is still queued is rejected, and its job fails visibly with
    /// `shutting_down` rather than vanishing with the process. Answers the jobs that were
    /// still active when the grace period ended.
    pub async fn shutdown(&self, grace: Duration) -> usize {
        let _ = self.router.send(crate::router::DrainRouter).await;
        let deadline = Instant::now() + grace;
        let active = loop {
            let active = self.router.send(GetRouterStatus).await.map_or(0, |s| s.active_jobs);
            if active == 0 || Instant::now() >= deadline {
                break active;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let _ = self.services.static_analysis.send(Drain).await;
        let _ = self.services.container.send(Drain).await;
        let _ = self.services.cache.send(Drain).await;
        for handle in self.services.providers.iter() {
            let _ = handle.supervisor.send(Drain).await;
        }
        tracing::info!(unfinished = active, "engine drained");
        active
    }
}
