//! Configuration: embedded defaults, an optional file, then the environment.
//!
//! `config/default.toml` is compiled into the binary, so `athena` runs from any directory with
//! no file at all. `--config FILE` overrides it key by key, and environment variables override
//! both: `ATHENA__SECTION__KEY` for any key, plus the variable names the original deployment
//! used (`OPENAI_API_KEY`, `CLAUDE_API_KEY`, `DEEPSEEK_API_KEY`, `*_API_BASE_URL`,
//! `FEATURE_<FLAGNAME>`). Durations read as `30s` or `2m`. A bad value is an error that names
//! its key; secrets are redacted whenever the configuration is shown.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use athena_actors::cache::CacheConfig;
use athena_actors::distributed::{QueueConfig, RedisConfig};
use athena_actors::engine::{EngineConfig, FlagLayers, SemaphoresConfig, ServicesConfig};
use athena_actors::flags::FLAGS;
use athena_actors::provider::ProviderConfig;
use athena_actors::router::RouterConfig;
use athena_actors::sandbox::SandboxConfig;
use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The defaults, compiled in.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Original variable names for provider settings: (variable, provider, key).
const LEGACY_PROVIDER_VARS: &[(&str, &str, &str)] = &[
    ("CLAUDE_API_KEY", "claude", "api_key"),
    ("ANTHROPIC_API_KEY", "claude", "api_key"),
    ("OPENAI_API_KEY", "openai", "api_key"),
    ("DEEPSEEK_API_KEY", "deepseek", "api_key"),
    ("CLAUDE_API_BASE_URL", "claude", "base_url"),
    ("OPENAI_API_BASE_URL", "openai", "base_url"),
    ("DEEPSEEK_API_BASE_URL", "deepseek", "base_url"),
];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Listen address, `host:port`; port 0 picks a free one.
    pub bind: String,
    /// Largest accepted request body, in bytes (a sample plus its encoding).
    pub max_body_bytes: usize,
    /// HTTP worker threads.
    pub http_workers: usize,
    /// How long shutdown waits for accepted jobs to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter, e.g. `info` or `athena=debug,info`; `RUST_LOG` overrides it.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub log: LogConfig,
    pub router: RouterConfig,
    pub cache: CacheConfig,
    pub services: ServicesConfig,
    pub sandbox: SandboxConfig,
    pub semaphores: SemaphoresConfig,
    #[serde(default)]
    pub queue: QueueConfig,
    #[serde(default)]
    pub redis: RedisConfig,
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Flag values from the file; see `athena_actors::flags`.
    #[serde(default)]
    pub flags: BTreeMap<String, Value>,
}

/// A configuration that cannot be used, with the key at fault.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

/// The loaded configuration and the flag values the environment set.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub env_flags: BTreeMap<String, Value>,
}

impl Loaded {
    pub fn flag_layers(&self) -> FlagLayers {
        FlagLayers { config: self.config.flags.clone(), environment: self.env_flags.clone() }
    }
}

impl Config {
    pub fn engine(&self) -> EngineConfig {
        EngineConfig {
            router: self.router.clone(),
            cache: self.cache.clone(),
            services: self.services.clone(),
            sandbox: self.sandbox.clone(),
            semaphores: self.semaphores.clone(),
            providers: self.providers.clone(),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.server.bind.parse::<std::net::SocketAddr>().is_err()
            && !self.server.bind.contains(':')
        {
            return Err(ConfigError(format!(
                "server.bind: {:?} is not a host:port address",
                self.server.bind
            )));
        }
        if self.server.max_body_bytes == 0 {
            return Err(ConfigError("server.max_body_bytes: must be at least 1".into()));
        }
        if self.server.http_workers == 0 {
            return Err(ConfigError("server.http_workers: must be at least 1".into()));
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(ConfigError(format!(
                "log.format: {:?} is not one of text, json",
                self.log.format
            )));
        }
        self.queue.validate().map_err(ConfigError)?;
        self.redis.validate().map_err(ConfigError)?;
        self.engine().validate().map_err(|e| ConfigError(e.to_string()))
    }

    /// The effective configuration as TOML, every secret replaced.
    pub fn redacted_toml(&self) -> String {
        let mut shown = self.clone();
        for provider in shown.providers.values_mut() {
            if provider.has_credentials() {
                provider.api_key = Some(athena_actors::provider::Secret::new("<redacted>"));
            }
        }
        shown.redis.url = shown.redis.redacted_url();
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// Loads the layered configuration from the process environment.
pub fn load(file: Option<&Path>) -> Result<Loaded, ConfigError> {
    load_from(file, std::env::vars().collect())
}

/// Loads the layered configuration from the given environment (tests pass their own).
pub fn load_from(
    file: Option<&Path>,
    env: BTreeMap<String, String>,
) -> Result<Loaded, ConfigError> {
    let mut figment = Figment::new().merge(Toml::string(DEFAULT_TOML));
    if let Some(path) = file {
        if !path.exists() {
            return Err(ConfigError(format!("--config: file {} does not exist", path.display())));
        }
        figment = figment.merge(Toml::file_exact(path));
    }

    let mut legacy = toml::Table::new();
    for (var, provider, key) in LEGACY_PROVIDER_VARS {
        if let Some(value) = env.get(*var).filter(|v| !v.is_empty()) {
            let providers = legacy.entry("providers").or_insert_with(|| toml::Table::new().into());
            if let Some(providers) = providers.as_table_mut() {
                let entry = providers.entry(*provider).or_insert_with(|| toml::Table::new().into());
                if let Some(entry) = entry.as_table_mut() {
                    entry.insert((*key).into(), toml::Value::String(value.clone()));
                }
            }
        }
    }
    legacy_redis(&env, &mut legacy)?;
    figment = figment.merge(Serialized::defaults(legacy));

    figment = figment.merge(EnvSnapshot { env: env.clone() });

    let config: Config = figment.extract().map_err(|e| ConfigError(render_figment_error(e)))?;
    let env_flags = flags_from_env(&env)?;
    config.validate()?;
    Ok(Loaded { config, env_flags })
}

/// The original deployment's Redis variables: `REDIS_ENABLED` picks the queue backend,
/// `REDIS_URL` or `REDIS_HOST`, `REDIS_PORT`, `REDIS_PASSWORD` and `REDIS_DB` make the URL,
/// `REDIS_KEY_PREFIX` the prefix. `ATHENA__QUEUE__*` and `ATHENA__REDIS__*` override them.
fn legacy_redis(
    env: &BTreeMap<String, String>,
    legacy: &mut toml::Table,
) -> Result<(), ConfigError> {
    let get = |name: &str| env.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
    if let Some(enabled) = get("REDIS_ENABLED") {
        let backend = match enabled.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => "redis",
            "false" | "0" | "no" | "off" => "memory",
            other => {
                return Err(ConfigError(format!("REDIS_ENABLED: {other:?} is not true or false")))
            }
        };
        let mut queue = toml::Table::new();
        queue.insert("backend".into(), backend.into());
        legacy.insert("queue".into(), queue.into());
    }
    let mut redis = toml::Table::new();
    let parts = ["REDIS_HOST", "REDIS_PORT", "REDIS_PASSWORD", "REDIS_DB"];
    if let Some(url) = get("REDIS_URL") {
        redis.insert("url".into(), url.into());
    } else if parts.iter().any(|p| get(p).is_some()) {
        let host = get("REDIS_HOST").unwrap_or("127.0.0.1");
        let port = get("REDIS_PORT").unwrap_or("6379");
        if port.parse::<u16>().is_err() {
            return Err(ConfigError(format!("REDIS_PORT: {port:?} is not a port number")));
        }
        let db = get("REDIS_DB").unwrap_or("0");
        if db.parse::<u32>().is_err() {
            return Err(ConfigError(format!("REDIS_DB: {db:?} is not a database number")));
        }
        let auth = get("REDIS_PASSWORD").map(|p| format!(":{}@", encode_userinfo(p)));
        let url = format!("redis://{}{host}:{port}/{db}", auth.unwrap_or_default());
        redis.insert("url".into(), url.into());
    }
    if let Some(prefix) = get("REDIS_KEY_PREFIX") {
        redis.insert("key_prefix".into(), prefix.into());
    }
    if !redis.is_empty() {
        legacy.insert("redis".into(), redis.into());
    }
    Ok(())
}

/// Percent-encodes what a password may hold that a URL's user part may not.
fn encode_userinfo(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn render_figment_error(err: figment::Error) -> String {
    err.into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let kind = e.kind.to_string();
            if key.is_empty() {
                kind
            } else {
                format!("{key}: {kind}")
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Flag values from `ATHENA__FLAGS__<NAME>` and `FEATURE_<CAMELNAME>` variables.
fn flags_from_env(env: &BTreeMap<String, String>) -> Result<BTreeMap<String, Value>, ConfigError> {
    let mut flags = BTreeMap::new();
    for (var, value) in env {
        if let Some(name) = var.strip_prefix("FEATURE_") {
            match FLAGS.iter().find(|f| f.alias.eq_ignore_ascii_case(name)) {
                Some(flag) => {
                    flags.insert(flag.name.to_string(), Value::String(value.clone()));
                }
                None => tracing::warn!(variable = %var, "ignoring unknown feature variable"),
            }
        }
    }
    for (var, value) in env {
        if let Some(name) = var.strip_prefix("ATHENA__FLAGS__") {
            let name = name.to_ascii_lowercase();
            if !FLAGS.iter().any(|f| f.name == name) {
                return Err(ConfigError(format!("{var}: unknown flag {name:?}")));
            }
            flags.insert(name, Value::String(value.clone()));
        }
    }
    Ok(flags)
}

/// `ATHENA__SECTION__KEY` variables from a given map (figment's `Env` reads the process
/// environment only), so that loading is a pure function of its inputs and tests need not
/// mutate the process environment.
struct EnvSnapshot {
    env: BTreeMap<String, String>,
}

impl figment::Provider for EnvSnapshot {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("environment variable(s)")
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        let mut dict = figment::value::Dict::new();
        for (var, value) in &self.env {
            let Some(rest) = var.strip_prefix("ATHENA__") else { continue };
            if rest.to_ascii_lowercase().starts_with("flags__") {
                continue;
            }
            let path: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
            let parsed: figment::value::Value =
                value.parse().unwrap_or_else(|_| value.clone().into());
            insert_path(&mut dict, &path, parsed);
        }
        Ok(figment::Profile::Default.collect(dict))
    }
}

fn insert_path(dict: &mut figment::value::Dict, path: &[String], value: figment::value::Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry =
                dict.entry(first.clone()).or_insert_with(|| figment::value::Dict::new().into());
            if let figment::value::Value::Dict(_, inner) = entry {
                insert_path(inner, rest, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use athena_actors::flags::FlagSet;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_embedded_defaults_load_and_agree_with_the_code() {
        let loaded = load_from(None, BTreeMap::new()).unwrap();
        let config = &loaded.config;
        assert_eq!(config.server.bind, "127.0.0.1:8080");
        assert_eq!(config.server.max_body_bytes, 50 * 1024 * 1024);
        assert_eq!(config.providers.len(), 3);
        assert!(config.providers.values().all(|p| !p.has_credentials()));
        // The file's flag table restates the built-in defaults; they must not drift apart.
        let defaults = FlagSet::default();
        for (name, value) in &config.flags {
            assert_eq!(defaults.get(name).as_ref(), Some(value), "flag {name}");
        }
        assert_eq!(config.flags.len(), athena_actors::flags::FLAGS.len());
        // So are the engine's own defaults, used when it is embedded without this file.
        let code = EngineConfig::default();
        let file = config.engine();
        assert_eq!(file.router, code.router);
        assert_eq!(file.cache, code.cache);
        assert_eq!(file.services, code.services);
        assert_eq!(file.sandbox, code.sandbox);
        assert_eq!(file.semaphores, code.semaphores);
        assert_eq!(config.queue, athena_actors::distributed::QueueConfig::default());
        assert_eq!(config.redis, athena_actors::distributed::RedisConfig::default());
        for provider in config.providers.values() {
            assert_eq!(
                provider.breaker,
                athena_actors::breaker::BreakerConfig {
                    slow_call_target: provider.breaker.slow_call_target,
                    ..Default::default()
                }
            );
        }
    }

    #[test]
    fn a_file_then_the_environment_override_the_defaults() {
        let dir = std::env::temp_dir().join(format!("athena-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("override.toml");
        let text = "[server]\nbind = \"0.0.0.0:9000\"\nhttp_workers = 4\n\
                    [router]\njob_deadline = \"2m\"\n";
        std::fs::write(&file, text).unwrap();
        let loaded = load_from(
            Some(&file),
            env(&[
                ("ATHENA__SERVER__HTTP_WORKERS", "8"),
                ("ATHENA__PROVIDERS__OPENAI__MODEL", "gpt-4o-mini"),
                ("OPENAI_API_KEY", "sk-test"),
                ("DEEPSEEK_API_BASE_URL", "http://127.0.0.1:11434/v1"),
                ("FEATURE_ENABLEREDISCACHE", "false"),
                ("ATHENA__FLAGS__MAINTENANCE_MODE", "true"),
            ]),
        )
        .unwrap();
        let c = &loaded.config;
        assert_eq!(c.server.bind, "0.0.0.0:9000");
        assert_eq!(c.server.http_workers, 8, "environment beats the file");
        assert_eq!(c.router.job_deadline, Duration::from_secs(120));
        assert_eq!(c.providers["openai"].model, "gpt-4o-mini");
        assert!(c.providers["openai"].has_credentials());
        assert_eq!(c.providers["deepseek"].base_url, "http://127.0.0.1:11434/v1");
        assert_eq!(loaded.env_flags["enable_redis_cache"], Value::String("false".into()));
        assert_eq!(loaded.env_flags["maintenance_mode"], Value::String("true".into()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_shipped_example_files_load() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let production = load_from(Some(&root.join("production.toml")), BTreeMap::new()).unwrap();
        assert_eq!(production.config.log.format, "json");
        let flags = load_from(Some(&root.join("flags.example.toml")), BTreeMap::new()).unwrap();
        assert_eq!(
            flags.config.flags["ai_provider_priority"],
            serde_json::json!(["claude", "deepseek"])
        );
    }

    #[test]
    fn mistakes_name_their_key() {
        let err = load_from(None, env(&[("ATHENA__SERVER__HTTP_WORKERS", "many")])).unwrap_err();
        assert!(err.to_string().contains("server.http_workers"), "{err}");
        let err = load_from(None, env(&[("ATHENA__ROUTER__JOB_DEADLINE", "soon")])).unwrap_err();
        assert!(err.to_string().contains("router.job_deadline"), "{err}");
        let err = load_from(None, env(&[("ATHENA__SERVER__NO_SUCH_KEY", "1")])).unwrap_err();
        assert!(err.to_string().contains("no_such_key"), "{err}");
        let err = load_from(
            None,
            env(&[("ATHENA__PROVIDERS__CLAUDE__BREAKER__HALF_OPEN_MAX_CALLS", "0")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("providers.claude.breaker"), "{err}");
        assert!(err.to_string().contains("half_open_max_calls"), "{err}");
        let err = load_from(None, env(&[("ATHENA__FLAGS__NOT_A_FLAG", "1")])).unwrap_err();
        assert!(err.to_string().contains("NOT_A_FLAG"), "{err}");
        let missing = Path::new("/nonexistent/athena.toml");
        assert!(load_from(Some(missing), BTreeMap::new())
            .unwrap_err()
            .to_string()
            .contains("does not exist"));
    }

    #[test]
    fn the_original_redis_variables_are_honoured() {
        let loaded = load_from(
            None,
            env(&[
                ("REDIS_ENABLED", "true"),
                ("REDIS_HOST", "cache.internal"),
                ("REDIS_PORT", "6380"),
                ("REDIS_PASSWORD", "p@ss/word"),
                ("REDIS_DB", "2"),
                ("REDIS_KEY_PREFIX", "athena-prod:"),
            ]),
        )
        .unwrap();
        let c = &loaded.config;
        assert_eq!(c.queue.backend, athena_actors::distributed::QueueBackend::Redis);
        assert_eq!(c.redis.url, "redis://:p%40ss%2Fword@cache.internal:6380/2");
        assert_eq!(c.redis.key_prefix, "athena-prod:");
        assert!(!c.redacted_toml().contains("p%40ss"), "the password is never shown");

        let both = env(&[("REDIS_URL", "redis://a:1/0"), ("ATHENA__REDIS__URL", "redis://b:2/0")]);
        assert_eq!(load_from(None, both).unwrap().config.redis.url, "redis://b:2/0");
        let memory = load_from(None, env(&[("REDIS_ENABLED", "false")])).unwrap();
        assert_eq!(memory.config.queue.backend.as_str(), "memory");
        assert_eq!(
            load_from(None, BTreeMap::new()).unwrap().config.queue.backend.as_str(),
            "memory"
        );
        let err = load_from(None, env(&[("REDIS_PORT", "sixty")])).unwrap_err();
        assert!(err.to_string().contains("REDIS_PORT"), "{err}");
        let err = load_from(None, env(&[("ATHENA__QUEUE__BACKEND", "kafka")])).unwrap_err();
        assert!(err.to_string().contains("queue.backend"), "{err}");
    }

    #[test]
    fn secrets_never_appear_in_the_rendered_configuration() {
        let loaded = load_from(None, env(&[("CLAUDE_API_KEY", "sk-ant-very-secret")])).unwrap();
        let shown = loaded.config.redacted_toml();
        assert!(!shown.contains("sk-ant-very-secret"));
        assert!(shown.contains("<redacted>"));
        assert!(
            !format!("{:?}", loaded.config.providers["claude"].client()).contains("very-secret")
        );
    }
}
