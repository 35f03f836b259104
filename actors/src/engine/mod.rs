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
use serde::Serialize;
use serde_json::Value;

use crate::breaker::{AdminAction, BreakerSnapshot};
use crate::bulkhead::{Bulkhead, BulkheadConfig, BulkheadObserver};
use crate::cache::{CacheActor, CacheStats, MemoryTier};
use crate::clock::SharedClock;
use crate::distributed::cache_tier::RedisTier;
use crate::distributed::Redis;
use crate::error::SubmitError;
use crate::events::EventHub;
use crate::flags::{FlagError, FlagsActor, Subscribe};
use crate::job::{JobId, JobRecord, JobSpec};
use crate::provider::{BreakerBoard, BreakerView, ControlBreaker, ProviderActor};
use crate::retry_budget::RetryBudget;
use crate::router::ProviderHandle;
use crate::router::{GetRouterStatus, JobRouter, RouterStatus, Services, SubmitJob};
use crate::sandbox::SandboxActor;
use crate::semaphore::{SemaphoreStats, Semaphores};
use crate::static_analyzer::StaticAnalyzer;
use crate::store::JobStore;
use crate::supervisor::{
    Broadcast, Drain, GetStatus, Resize, ServiceStatus, ServiceSupervisor, WorkerFactory,
};
use crate::telemetry::{KnownSeries, Telemetry, TelemetryActor, TelemetryEvent};

mod config;

pub use config::{ConfigError, EngineConfig, SemaphoresConfig, ServiceConfig, ServicesConfig};

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
    /// The breaker of the Redis cache tier, in distributed mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_cache: Option<BreakerSnapshot>,
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
    redis: Option<Redis>,
    redis_tier: Option<RedisTier>,
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
        Engine::start_with_redis(config, layers, clock, None)
    }

    /// [`Engine::start`] for a node of a fleet: the result cache gets a Redis tier behind
    /// the memory tier.
    pub fn start_with_redis(
        config: &EngineConfig,
        layers: &FlagLayers,
        clock: SharedClock,
        redis: Option<Redis>,
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

        // Every node of a fleet reads and writes the shared tier; its breaker lets a node
        // serve from memory while Redis is away and try Redis again by itself.
        let redis_tier = redis.as_ref().map(|redis| {
            RedisTier::new(
                redis.clone(),
                config.cache.ttl,
                RedisTier::default_breaker(),
                clock.clone(),
                telemetry.clone(),
            )
        });
        let cache = {
            let (tier, t) = (memory_tier.clone(), telemetry.clone());
            let redis_tier = redis_tier.clone();
            supervisor(
                "cache",
                &config.services.cache,
                &telemetry,
                Arc::new(move |_| CacheActor::new(tier.clone(), redis_tier.clone(), t.clone())),
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
            redis,
            redis_tier,
        })
    }

    pub async fn submit(&self, spec: JobSpec) -> Result<JobId, SubmitError> {
        self.router.send(SubmitJob(spec)).await.unwrap_or(Err(SubmitError::ShuttingDown))
    }

    /// [`Engine::submit`] under an idempotency key; answers the job and whether it is new.
    pub async fn submit_idempotent(
        &self,
        key: String,
        spec: JobSpec,
    ) -> Result<(JobId, bool), SubmitError> {
        let msg = crate::router::SubmitIdempotent { key, spec };
        self.router.send(msg).await.unwrap_or(Err(SubmitError::ShuttingDown))
    }

    pub fn job(&self, id: &JobId) -> Option<JobRecord> {
        self.store.get(id)
    }

    /// The node's Redis, in distributed mode.
    pub fn redis(&self) -> Option<&Redis> {
        self.redis.as_ref()
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
            redis_cache: self.redis_tier.as_ref().map(RedisTier::breaker_snapshot),
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
