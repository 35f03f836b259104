//! Breaker configuration: the keys, their defaults and the checks that reject bad combinations.
//!
//! Zero is a real value here, never a stand-in for "use the default": a rule whose threshold is 0
//! is off, and every key where 0 would make no sense (`half_open_max_calls`, `open_duration`, ...)
//! is rejected by [`BreakerConfig::validate`] with an error that names the key. Missing keys take
//! the defaults below (`#[serde(default)]`); unknown keys are an error so a typo cannot silently
//! leave a rule at its default.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The longest time window the breaker keeps: one bucket per second, so this bounds its memory.
pub const MAX_TIME_WINDOW: Duration = Duration::from_secs(3600);
/// The largest count window: one byte per call.
pub const MAX_COUNT_WINDOW: u32 = 100_000;

/// What the failure-rate and slow-call-rate rules look at.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum WindowKind {
    /// The last `size` recorded calls (`{ kind = "count", size = 20 }`).
    Count { size: u32 },
    /// The calls recorded in the last `duration`, kept in one-second buckets
    /// (`{ kind = "time", duration = "60s" }`).
    Time {
        #[serde(with = "humantime_serde")]
        duration: Duration,
    },
}

/// How the open period grows each time the breaker reopens without a stable closed period.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum BackoffKind {
    /// `open_duration * multiplier^step` (`{ kind = "exponential", multiplier = 2.0 }`).
    Exponential { multiplier: f64 },
    /// `open_duration + step_size * step` (`{ kind = "linear", step = "30s" }`).
    Linear {
        #[serde(with = "humantime_serde")]
        step: Duration,
    },
    /// `open_duration * fib(step + 1)`: 1, 1, 2, 3, 5, 8, ... (`{ kind = "fibonacci" }`).
    Fibonacci,
}

/// Settings of one circuit breaker. See the field docs for what 0 means on each key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Trip after this many counted failures in a row while closed; 0 turns the rule off.
    pub consecutive_failures: u32,
    /// Trip when failures / calls in the window reach this (0.0..=1.0); 0 turns the rule off.
    pub failure_rate_threshold: f64,
    /// The window the two rate rules look at.
    pub window: WindowKind,
    /// The rate rules wait for this many calls in the window, so 1 failure out of 1 call does not
    /// read as a 100% failure rate. 0 means "no minimum". Must not exceed a count window's size.
    pub minimum_calls: u32,
    /// The provider's target response time.
    #[serde(with = "humantime_serde")]
    pub slow_call_target: Duration,
    /// A call that took longer than `slow_call_target * slow_call_multiplier` is slow, whether it
    /// succeeded or failed. At least 1.
    pub slow_call_multiplier: f64,
    /// Trip when slow calls / calls in the window reach this (0.0..=1.0); 0 turns the rule off.
    /// While it is on, a slow trial in half-open also counts as a failed trial.
    pub slow_call_rate_threshold: f64,
    /// At most this many trial calls in flight at once in half-open. At least 1.
    pub half_open_max_calls: u32,
    /// Close after this many successful trials. At least 1.
    pub half_open_successes: u32,
    /// A trial outstanding longer than this is reclaimed and counted as a failed trial, so a lost
    /// permit or a hung call cannot keep the breaker half-open for ever. Greater than 0.
    #[serde(with = "humantime_serde")]
    pub half_open_max_wait: Duration,
    /// How long the first open period lasts. Greater than 0.
    #[serde(with = "humantime_serde")]
    pub open_duration: Duration,
    /// The cap on any open period, backoff and jitter included. At least `open_duration`.
    #[serde(with = "humantime_serde")]
    pub max_open_duration: Duration,
    /// How the open period grows on each reopening.
    pub backoff: BackoffKind,
    /// Randomises each open period by up to +-this fraction (0.0..=1.0) so that breakers which
    /// tripped together do not all probe the provider at the same instant. 0 = exact durations.
    pub jitter: f64,
    /// After this long closed, the backoff starts again from `open_duration`. 0 = every trip from
    /// closed starts from `open_duration`.
    #[serde(with = "humantime_serde")]
    pub reset_after: Duration,
}

impl Default for BreakerConfig {
    /// Defaults for an AI provider whose calls normally take a few seconds: trip on 5 failures in
    /// a row, or on half of the last 20 calls failing (after 10 calls), or on 80% of them taking
    /// over 3x the 10 s target. Open for 30 s, doubling up to 10 min, +-10% jitter; probe with 2
    /// concurrent trials, close after 2 successes, reclaim a trial after 2 min; forget the backoff
    /// after 5 min closed.
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_rate_threshold: 0.5,
            window: WindowKind::Count { size: 20 },
            minimum_calls: 10,
            slow_call_target: Duration::from_secs(10),
            slow_call_multiplier: 3.0,
            slow_call_rate_threshold: 0.8,
            half_open_max_calls: 2,
            half_open_successes: 2,
            half_open_max_wait: Duration::from_secs(120),
            open_duration: Duration::from_secs(30),
            max_open_duration: Duration::from_secs(600),
            backoff: BackoffKind::Exponential { multiplier: 2.0 },
            jitter: 0.1,
            reset_after: Duration::from_secs(300),
        }
    }
}

/// A configuration value that cannot work; `key` names the offending setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} {problem}")]
pub struct ConfigError {
    /// The configuration key, e.g. `half_open_max_calls` or `window.size`.
    pub key: &'static str,
    /// What is wrong with it, e.g. "must be at least 1".
    pub problem: String,
}

impl ConfigError {
    pub(crate) fn new(key: &'static str, problem: impl Into<String>) -> Self {
        Self { key, problem: problem.into() }
    }
}

/// Checks that `value` is a finite fraction in 0.0..=1.0.
fn fraction(key: &'static str, value: f64) -> Result<(), ConfigError> {
    if value.is_finite() && (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::new(key, format!("must be between 0.0 and 1.0, got {value}")))
    }
}

impl BreakerConfig {
    /// Whether either rate rule needs the window.
    pub fn rate_rules_on(&self) -> bool {
        self.failure_rate_threshold > 0.0 || self.slow_call_rate_threshold > 0.0
    }

    /// The latency above which a call is slow; a zero target means no call is slow.
    pub fn slow_call_limit(&self) -> Duration {
        if self.slow_call_target.is_zero() {
            return Duration::MAX;
        }
        // Saturates rather than panics on absurd values; validate() keeps the multiplier sane.
        let limit = self.slow_call_target.as_secs_f64() * self.slow_call_multiplier;
        Duration::try_from_secs_f64(limit).unwrap_or(Duration::MAX)
    }

    /// Rejects settings that cannot work, naming the first offending key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fraction("failure_rate_threshold", self.failure_rate_threshold)?;
        fraction("slow_call_rate_threshold", self.slow_call_rate_threshold)?;
        fraction("jitter", self.jitter)?;
        if self.consecutive_failures == 0 && !self.rate_rules_on() {
            return Err(ConfigError::new(
                "consecutive_failures",
                "is 0 and so are failure_rate_threshold and slow_call_rate_threshold: \
                 the breaker could never open (use the Disable admin action instead)",
            ));
        }
        if !(self.slow_call_multiplier.is_finite() && self.slow_call_multiplier >= 1.0) {
            return Err(ConfigError::new(
                "slow_call_multiplier",
                format!("must be at least 1.0, got {}", self.slow_call_multiplier),
            ));
        }
        if self.slow_call_rate_threshold > 0.0 && self.slow_call_target.is_zero() {
            return Err(ConfigError::new(
                "slow_call_target",
                "must be greater than 0 while slow_call_rate_threshold is on",
            ));
        }
        if self.rate_rules_on() {
            match self.window {
                WindowKind::Count { size } => {
                    if size == 0 {
                        return Err(ConfigError::new(
                            "window.size",
                            "must be at least 1 while a rate rule is on",
                        ));
                    }
                    if self.minimum_calls > size {
                        return Err(ConfigError::new(
                            "minimum_calls",
                            format!(
                                "({}) must not exceed window.size ({size}): the rate rules \
                                 could never run",
                                self.minimum_calls
                            ),
                        ));
                    }
                }
                WindowKind::Time { duration } => {
                    if duration < Duration::from_secs(1) {
                        return Err(ConfigError::new(
                            "window.duration",
                            "must be at least 1s while a rate rule is on",
                        ));
                    }
                }
            }
        }
        match self.window {
            WindowKind::Count { size } if size > MAX_COUNT_WINDOW => {
                return Err(ConfigError::new(
                    "window.size",
                    format!("must be at most {MAX_COUNT_WINDOW}"),
                ));
            }
            WindowKind::Time { duration } if duration > MAX_TIME_WINDOW => {
                return Err(ConfigError::new("window.duration", "must be at most 1h"));
            }
            _ => {}
        }
        if self.half_open_max_calls == 0 {
            return Err(ConfigError::new("half_open_max_calls", "must be at least 1"));
        }
        if self.half_open_successes == 0 {
            return Err(ConfigError::new("half_open_successes", "must be at least 1"));
        }
        if self.half_open_max_wait.is_zero() {
            return Err(ConfigError::new("half_open_max_wait", "must be greater than 0"));
        }
        if self.open_duration.is_zero() {
            return Err(ConfigError::new("open_duration", "must be greater than 0"));
        }
        if self.max_open_duration < self.open_duration {
            return Err(ConfigError::new(
                "max_open_duration",
                format!(
                    "({:?}) must be at least open_duration ({:?})",
                    self.max_open_duration, self.open_duration
                ),
            ));
        }
        if let BackoffKind::Exponential { multiplier } = self.backoff {
            if !(multiplier.is_finite() && multiplier >= 1.0) {
                return Err(ConfigError::new(
                    "backoff.multiplier",
                    format!("must be at least 1.0, got {multiplier}"),
                ));
            }
        }
        Ok(())
    }
}
