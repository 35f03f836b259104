//! Feature flags: typed values, layered sources, validation, audit, and push to subscribers.
//!
//! Flags steer a running engine without a restart. Values come in layers, each overriding the
//! one before: built-in defaults, the config file's `[flags]` table, the environment
//! (`ATHENA__FLAGS__<NAME>` and the original `FEATURE_<CAMELNAME>` variables), runtime changes
//! through the admin API, and in distributed mode the values set through the API of any node,
//! which [`crate::distributed::flags`] brings in with [`SyncFlags`]. Every flag has a
//! snake_case name and the camelCase alias the original Athena clients use. Readers never ask
//! the actor on a hot path: it pushes an immutable [`FlagSet`] snapshot to every subscriber on
//! each change, and the router keeps the latest.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;

use actix::prelude::*;
use serde::Serialize;
use serde_json::Value;

use crate::telemetry::{Telemetry, TelemetryEvent};

/// How many audit entries are kept; older ones are dropped first.
const AUDIT_CAPACITY: usize = 1000;

/// The value types a flag can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FlagKind {
    Bool,
    StringList,
}

/// Conversion between a typed flag field and JSON, with the lenient string forms that
/// environment variables need (`"true"`, `"1"`, `"claude,openai"`).
pub trait FlagType: Sized {
    const KIND: FlagKind;
    fn to_json(&self) -> Value;
    fn from_json(value: &Value) -> Result<Self, String>;
}

impl FlagType for bool {
    const KIND: FlagKind = FlagKind::Bool;

    fn to_json(&self) -> Value {
        Value::Bool(*self)
    }

    fn from_json(value: &Value) -> Result<Self, String> {
        match value {
            Value::Bool(b) => Ok(*b),
            Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(true),
                "false" | "0" | "no" | "off" => Ok(false),
                _ => Err(format!("expected a boolean, got {s:?}")),
            },
            other => Err(format!("expected a boolean, got {}", json_type(other))),
        }
    }
}

impl FlagType for Vec<String> {
    const KIND: FlagKind = FlagKind::StringList;

    fn to_json(&self) -> Value {
        Value::Array(self.iter().cloned().map(Value::String).collect())
    }

    fn from_json(value: &Value) -> Result<Self, String> {
        match value {
            Value::Array(items) => items
                .iter()
                .map(|item| match item {
                    Value::String(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
                    other => Err(format!("expected a list of names, got {}", json_type(other))),
                })
                .collect(),
            Value::String(s) => {
                let trimmed = s.trim();
                if trimmed.starts_with('[') {
                    let parsed: Value = serde_json::from_str(trimmed)
                        .map_err(|e| format!("expected a JSON list of names: {e}"))?;
                    return Self::from_json(&parsed);
                }
                Ok(trimmed
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect())
            }
            other => Err(format!("expected a list of names, got {}", json_type(other))),
        }
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A flag's description, for `GET /api/flags`.
#[derive(Debug, Clone, Serialize)]
pub struct FlagInfo {
    pub name: &'static str,
    pub alias: &'static str,
    pub kind: FlagKind,
    pub description: &'static str,
}

macro_rules! define_flags {
    ($( #[doc = $doc:literal] $name:ident / $alias:literal : $ty:ty = $default:expr; )*) => {
        /// One immutable view of every flag's value.
        #[derive(Debug, Clone, PartialEq, Serialize)]
        pub struct FlagSet {
            $( #[doc = $doc] pub $name: $ty, )*
        }

        impl Default for FlagSet {
            fn default() -> Self {
                FlagSet { $( $name: $default, )* }
            }
        }

        /// Every flag the engine knows, in declaration order.
        pub const FLAGS: &[FlagInfo] = &[
            $( FlagInfo {
                name: stringify!($name),
                alias: $alias,
                kind: <$ty as FlagType>::KIND,
                description: $doc,
            }, )*
        ];

        impl FlagSet {
            /// The value of a flag by canonical name.
            pub fn get(&self, name: &str) -> Option<Value> {
                match name {
                    $( stringify!($name) => Some(self.$name.to_json()), )*
                    _ => None,
                }
            }

            fn set_json(&mut self, name: &str, value: &Value) -> Result<(), FlagError> {
                match name {
                    $( stringify!($name) => {
                        self.$name = <$ty as FlagType>::from_json(value).map_err(|reason| {
                            FlagError::InvalidValue { flag: name.to_string(), reason }
                        })?;
                        Ok(())
                    } )*
                    _ => Err(FlagError::Unknown(name.to_string())),
                }
            }
        }
    };
}

define_flags! {
    /// Use the Redis tier of the result cache (distributed mode).
    enable_redis_cache / "enableRedisCache": bool = true;
    /// Use the in-memory tier of the result cache.
    enable_memory_cache / "enableMemoryCache": bool = true;
    /// Look results up in the cache and store new ones; off means every job runs.
    cache_analysis_results / "cacheAnalysisResults": bool = true;
    /// Send metrics to the StatsD sink as well as Prometheus.
    enable_apm / "enableAPM": bool = false;
    /// Record per-stage durations.
    enable_performance_monitoring / "enablePerformanceMonitoring": bool = true;
    /// Stream job progress to SSE and WebSocket subscribers.
    enable_streaming_analysis / "enableStreamingAnalysis": bool = true;
    /// Accept batch submissions.
    enable_batch_analysis / "enableBatchAnalysis": bool = true;
    /// Order in which AI providers are tried.
    ai_provider_priority / "aiProviderPriority": Vec<String> =
        vec!["claude".into(), "openai".into(), "deepseek".into()];
    /// Try the next provider when one fails.
    enable_ai_failover / "enableAIFailover": bool = true;
    /// Guard provider calls with circuit breakers; off means calls bypass the breakers.
    enable_circuit_breaker / "enableCircuitBreaker": bool = true;
    /// Let slow calls trip a breaker (the slow-call-rate rule).
    enable_adaptive_circuit_breaker / "enableAdaptiveCircuitBreaker": bool = true;
    /// Bound each service's concurrency and queue; off admits everything at once.
    enable_bulkhead / "enableBulkhead": bool = true;
    /// Run samples in the sandbox stage when a sandbox runtime is configured.
    enable_container_isolation / "enableContainerIsolation": bool = true;
    /// Pass memory and CPU limits to the sandbox runtime.
    enable_container_resource_limits / "enableContainerResourceLimits": bool = true;
    /// Ask providers for Metasploit modules matching listed vulnerabilities.
    enable_metasploit_integration / "enableMetasploitIntegration": bool = true;
    /// Allow providers whose base URL points at a local model server.
    enable_local_models / "enableLocalModels": bool = false;
    /// Run the deeper static passes (deobfuscation, archive listing) on every job.
    enable_advanced_analysis / "enableAdvancedAnalysis": bool = true;
    /// Refuse new jobs with 503 while running ones finish.
    maintenance_mode / "maintenanceMode": bool = false;
    /// Honour `X-Simulate-Failure: primary` (load tests force a failover with it); off ignores it.
    chaos_testing / "chaosTesting": bool = false;
}

impl FlagSet {
    /// Resolves a snake_case name or a camelCase alias (case-insensitively) to the canonical name.
    pub fn canonical_name(name: &str) -> Option<&'static str> {
        FLAGS
            .iter()
            .find(|f| f.name == name || f.alias.eq_ignore_ascii_case(name))
            .or_else(|| FLAGS.iter().find(|f| f.name.eq_ignore_ascii_case(name)))
            .map(|f| f.name)
    }

    /// The canonical name and value of a flag, as every node stores and compares them:
    /// `"enableBulkhead"` and `"true"` become `enable_bulkhead` and `true`. Checks the type only;
    /// the checks that depend on a node's configuration happen when the value is applied.
    pub fn normalize(name: &str, value: &Value) -> Result<(&'static str, Value), FlagError> {
        let canonical =
            Self::canonical_name(name).ok_or_else(|| FlagError::Unknown(name.to_string()))?;
        let mut scratch = FlagSet::default();
        scratch.set_json(canonical, value)?;
        Ok((canonical, scratch.get(canonical).unwrap_or(Value::Null)))
    }

    /// All values as a JSON object keyed by canonical name.
    pub fn to_json(&self) -> BTreeMap<&'static str, Value> {
        FLAGS.iter().filter_map(|f| Some((f.name, self.get(f.name)?))).collect()
    }
}

/// Where a value came from, recorded in the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FlagSource {
    Default,
    Config,
    Environment,
    Api,
    /// A value set through the API of another node (or this one), read back from Redis.
    Cluster,
}

impl FlagSource {
    pub fn as_str(self) -> &'static str {
        match self {
            FlagSource::Default => "default",
            FlagSource::Config => "config",
            FlagSource::Environment => "environment",
            FlagSource::Api => "api",
            FlagSource::Cluster => "cluster",
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FlagError {
    #[error("unknown flag {0:?}")]
    Unknown(String),
    #[error("invalid value for flag {flag}: {reason}")]
    InvalidValue { flag: String, reason: String },
}

/// One change of one flag.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    pub flag: &'static str,
    pub old_value: Value,
    pub new_value: Value,
    #[serde(with = "humantime_serde")]
    pub at: SystemTime,
    pub source: FlagSource,
}

/// Pushed to subscribers after every change, and once when they subscribe.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct FlagsChanged(pub Arc<FlagSet>);

/// Owns the flags; the only writer.
pub struct FlagsActor {
    flags: Arc<FlagSet>,
    audit: VecDeque<AuditEntry>,
    subscribers: Vec<Recipient<FlagsChanged>>,
    /// Provider names a priority list may mention; others are rejected as typos.
    known_providers: Vec<String>,
    telemetry: Telemetry,
}

impl FlagsActor {
    /// Builds the effective flags from the config and environment layers. A bad value in
    /// either is an error naming the flag: a typo must not silently fall back to a default.
    pub fn new(
        config_layer: &BTreeMap<String, Value>,
        env_layer: &BTreeMap<String, Value>,
        known_providers: Vec<String>,
        telemetry: Telemetry,
    ) -> Result<Self, FlagError> {
        let mut actor = FlagsActor {
            flags: Arc::new(FlagSet::default()),
            audit: VecDeque::new(),
            subscribers: Vec::new(),
            known_providers,
            telemetry,
        };
        for (layer, source) in
            [(config_layer, FlagSource::Config), (env_layer, FlagSource::Environment)]
        {
            for (name, value) in layer {
                actor.apply(name, value, source, false)?;
            }
        }
        Ok(actor)
    }

    pub fn flags(&self) -> Arc<FlagSet> {
        self.flags.clone()
    }

    /// Validates and applies one value. A layer that restates the current value leaves no audit
    /// entry unless `always_audit` (an operator's explicit request is always recorded).
    fn apply(
        &mut self,
        name: &str,
        value: &Value,
        source: FlagSource,
        always_audit: bool,
    ) -> Result<AuditEntry, FlagError> {
        let canonical =
            FlagSet::canonical_name(name).ok_or_else(|| FlagError::Unknown(name.to_string()))?;
        let mut next = (*self.flags).clone();
        next.set_json(canonical, value)?;
        self.validate(&next, canonical)?;

        let entry = AuditEntry {
            flag: canonical,
            old_value: self.flags.get(canonical).unwrap_or(Value::Null),
            new_value: next.get(canonical).unwrap_or(Value::Null),
            at: SystemTime::now(),
            source,
        };
        if entry.old_value == entry.new_value && !always_audit {
            return Ok(entry);
        }
        self.flags = Arc::new(next);
        if self.audit.len() == AUDIT_CAPACITY {
            self.audit.pop_front();
        }
        self.audit.push_back(entry.clone());
        self.telemetry
            .emit(TelemetryEvent::FlagChanged { flag: canonical, source: source.as_str() });
        Ok(entry)
    }

    fn validate(&self, flags: &FlagSet, changed: &str) -> Result<(), FlagError> {
        if changed == "ai_provider_priority" {
            let mut seen = Vec::new();
            for name in &flags.ai_provider_priority {
                if !self.known_providers.iter().any(|p| p == name) {
                    return Err(FlagError::InvalidValue {
                        flag: changed.to_string(),
                        reason: format!(
                            "unknown provider {name:?}; configured providers: {}",
                            self.known_providers.join(", ")
                        ),
                    });
                }
                if seen.contains(&name) {
                    return Err(FlagError::InvalidValue {
                        flag: changed.to_string(),
                        reason: format!("provider {name:?} is listed twice"),
                    });
                }
                seen.push(name);
            }
        }
        Ok(())
    }

    fn publish(&mut self) {
        let snapshot = FlagsChanged(self.flags.clone());
        self.subscribers.retain(|s| s.try_send(snapshot.clone()).is_ok() || s.connected());
    }
}

impl Actor for FlagsActor {
    type Context = Context<Self>;
}

/// Reads the current flags.
#[derive(Message)]
#[rtype(result = "Arc<FlagSet>")]
pub struct GetFlags;

impl Handler<GetFlags> for FlagsActor {
    type Result = Arc<FlagSet>;

    fn handle(&mut self, _: GetFlags, _: &mut Self::Context) -> Self::Result {
        self.flags.clone()
    }
}

/// Changes one flag at runtime.
#[derive(Message)]
#[rtype(result = "Result<AuditEntry, FlagError>")]
pub struct SetFlag {
    pub name: String,
    pub value: Value,
    pub source: FlagSource,
}

impl Handler<SetFlag> for FlagsActor {
    type Result = Result<AuditEntry, FlagError>;

    fn handle(&mut self, msg: SetFlag, _: &mut Self::Context) -> Self::Result {
        let entry = self.apply(&msg.name, &msg.value, msg.source, true)?;
        tracing::info!(
            flag = entry.flag,
            old = %entry.old_value,
            new = %entry.new_value,
            source = msg.source.as_str(),
            "flag changed"
        );
        self.publish();
        Ok(entry)
    }
}

/// The audit trail, newest last.
#[derive(Message)]
#[rtype(result = "Vec<AuditEntry>")]
pub struct GetAudit;

impl Handler<GetAudit> for FlagsActor {
    type Result = MessageResult<GetAudit>;

    fn handle(&mut self, _: GetAudit, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.audit.iter().cloned().collect())
    }
}

/// Applies the values the cluster agreed on (every value in Redis, not only the changed ones).
/// A value equal to the current one is not a change: it leaves no audit entry and pushes
/// nothing, so re-reading the whole set after each change costs the node nothing.
#[derive(Debug, Message)]
#[rtype(result = "SyncReport")]
pub struct SyncFlags(pub BTreeMap<String, Value>);

/// What a [`SyncFlags`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SyncReport {
    /// Values accepted, whether or not they differed from the current ones.
    pub applied: usize,
    /// Flags whose value changed.
    pub changed: Vec<&'static str>,
    /// Values this node refused, each with why: a flag from a newer node, a value invalid
    /// here (a provider this node lacks). One refusal does not stop the others.
    pub refused: Vec<FlagError>,
}

impl Handler<SyncFlags> for FlagsActor {
    type Result = MessageResult<SyncFlags>;

    fn handle(&mut self, msg: SyncFlags, _: &mut Self::Context) -> Self::Result {
        let mut report = SyncReport::default();
        for (name, value) in &msg.0 {
            match self.apply(name, value, FlagSource::Cluster, false) {
                Ok(entry) => {
                    report.applied += 1;
                    if entry.old_value != entry.new_value {
                        tracing::info!(
                            flag = entry.flag,
                            old = %entry.old_value,
                            new = %entry.new_value,
                            source = FlagSource::Cluster.as_str(),
                            "flag changed"
                        );
                        report.changed.push(entry.flag);
                    }
                }
                Err(refused) => report.refused.push(refused),
            }
        }
        if !report.changed.is_empty() {
            self.publish();
        }
        MessageResult(report)
    }
}

/// Registers a subscriber; it gets the current snapshot at once.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe(pub Recipient<FlagsChanged>);

impl Handler<Subscribe> for FlagsActor {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, _: &mut Self::Context) {
        msg.0.do_send(FlagsChanged(self.flags.clone()));
        self.subscribers.push(msg.0);
    }
}

#[cfg(test)]
mod tests;
