//! The engine's configuration: services, semaphores, providers, and the checks that refuse a
//! configuration naming the key at fault, before any actor starts.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::bulkhead::BulkheadConfig;
use crate::cache::CacheConfig;
use crate::provider::ProviderConfig;
use crate::router::RouterConfig;
use crate::sandbox::SandboxConfig;
use crate::semaphore::Semaphores;

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
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
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
