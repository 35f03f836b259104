//! AI providers: one actor per configured provider and pool slot, breaker inside.
//!
//! A [`ProviderActor`] owns its HTTP client and its circuit breaker. The breaker is plain
//! state in the actor, so no lock guards it and `Supervised::restarting` keeps it across a
//! restart: a provider that crashes its worker does not get a fresh, closed breaker for free.
//! Every breaker transition is logged once, counted, and published to the shared
//! [`BreakerBoard`], which the router reads to skip providers that would reject at once and
//! which `/api/status` reports.
//!
//! A call is retried inside the actor (see [`retry`]) and the retried call as a whole is one
//! outcome for the breaker. A call marked `simulate_failure` (chaos testing) fails at once,
//! before the breaker, without a request: it tests the failover, not this provider.

mod board;
mod client;
mod prompt;
pub mod retry;

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::FutureExt;
use serde::{Deserialize, Serialize};

pub use board::{BreakerBoard, BreakerView};
pub use client::{Prompt, ProviderClient, ProviderError, ProviderKind};
pub use prompt::PromptRequest;
pub use prompt::{build_prompt, parse_prompt, parse_reply, AiOutput, AiTask, AiTaskKind};
pub use retry::{RetryConfig, RetryConfigError};

use crate::breaker::{
    AdminAction, BreakerConfig, BreakerSnapshot, CircuitBreaker, FailureKind, Outcome,
};
use crate::bulkhead::BulkheadConfig;
use crate::clock::SharedClock;
use crate::flags::FlagsChanged;
use crate::supervisor::{Retire, WorkerBook};
use crate::telemetry::{Telemetry, TelemetryEvent};

/// One provider's settings, from `[providers.<name>]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    /// API root with its version, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    pub model: String,
    /// Empty or absent means the provider is unavailable and never called.
    #[serde(default)]
    pub api_key: Option<Secret>,
    #[serde(with = "humantime_serde", default = "default_timeout")]
    pub timeout: Duration,
    /// Lower is tried first when the priority flag does not order this provider.
    #[serde(default)]
    pub priority: u32,
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// Provider actors in the pool; each holds its own breaker.
    #[serde(default = "default_workers")]
    pub workers: usize,
    #[serde(default)]
    pub breaker: BreakerConfig,
    #[serde(default)]
    pub bulkhead: BulkheadConfig,
    /// More worker restarts than this within `restart_window` open the breaker instead of
    /// restarting in a loop.
    #[serde(default = "default_restart_limit")]
    pub restart_limit: u32,
    #[serde(with = "humantime_serde", default = "default_restart_window")]
    pub restart_window: Duration,
    /// Retries of transient failures within this provider, before failover.
    #[serde(default)]
    pub retry: RetryConfig,
}

/// A credential: serialises as itself (configuration files need it), but never prints, so a
/// `{:?}` of a configuration in a log line cannot leak it.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

fn default_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_max_tokens() -> u32 {
    4096
}
fn default_temperature() -> f64 {
    0.1
}
fn default_workers() -> usize {
    1
}
fn default_restart_limit() -> u32 {
    3
}
fn default_restart_window() -> Duration {
    Duration::from_secs(60)
}

impl ProviderConfig {
    pub fn client(&self) -> ProviderClient {
        ProviderClient::new(
            self.kind,
            &self.base_url,
            &self.model,
            self.api_key.as_ref().map(|k| k.expose().to_string()),
            self.timeout,
            self.max_tokens,
            self.temperature,
        )
        .with_retry(self.retry.clone())
    }

    pub fn has_credentials(&self) -> bool {
        self.api_key.as_ref().is_some_and(|k| !k.expose().trim().is_empty())
    }
}

/// Ask a provider for one analysis.
#[derive(Debug, Message)]
#[rtype(result = "Result<AiOutput, ProviderError>")]
pub struct CallProvider {
    pub task: AiTask,
    /// `enable_circuit_breaker` of the asking job: off sends the call past the breaker.
    pub use_breaker: bool,
    /// The job's deadline: no retry wait and no attempt reaches past it.
    pub deadline: Option<Instant>,
    /// Chaos testing: fail this call at once, without a request and without the breaker.
    pub simulate_failure: bool,
}

/// An operator's breaker command.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "BreakerSnapshot")]
pub struct ControlBreaker(pub AdminAction);

/// Worker of an `ai.<provider>` service.
pub struct ProviderActor {
    name: String,
    slot: usize,
    client: ProviderClient,
    breaker: CircuitBreaker,
    /// The breaker settings as configured; the adaptive flag may switch the slow-call rule off.
    configured: BreakerConfig,
    /// Recent restarts, to stop a crash loop by opening the breaker.
    restarts: VecDeque<Instant>,
    restart_limit: u32,
    restart_window: Duration,
    clock: SharedClock,
    board: BreakerBoard,
    telemetry: Telemetry,
    book: WorkerBook,
    /// Set by the `test-hooks` feature only: the next call panics inside the worker.
    panic_next: bool,
}

/// Makes the next call of every worker of a provider panic (supervision tests only).
#[cfg(feature = "test-hooks")]
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct PanicOnNextCall;

#[cfg(feature = "test-hooks")]
impl Handler<PanicOnNextCall> for ProviderActor {
    type Result = ();

    fn handle(&mut self, _: PanicOnNextCall, _: &mut Self::Context) {
        self.panic_next = true;
    }
}

impl ProviderActor {
    pub fn new(
        name: &str,
        slot: usize,
        config: &ProviderConfig,
        clock: SharedClock,
        board: BreakerBoard,
        telemetry: Telemetry,
    ) -> Self {
        let breaker = CircuitBreaker::new(config.breaker.clone(), clock.clone());
        let mut actor = ProviderActor {
            name: name.to_string(),
            slot,
            client: config.client(),
            breaker,
            configured: config.breaker.clone(),
            restarts: VecDeque::new(),
            restart_limit: config.restart_limit,
            restart_window: config.restart_window,
            clock,
            board,
            telemetry,
            book: WorkerBook::new(format!("ai.{name}")),
            panic_next: false,
        };
        actor.publish();
        actor
    }

    /// Logs, counts and publishes every transition the breaker made since the last call.
    fn publish(&mut self) {
        for t in self.breaker.take_transitions() {
            tracing::info!(
                provider = %self.name,
                slot = self.slot,
                from = t.from.as_str(),
                to = t.to.as_str(),
                reason = t.reason,
                "circuit breaker transition"
            );
            self.telemetry.emit(TelemetryEvent::BreakerTransition {
                provider: self.name.clone(),
                from: t.from,
                to: t.to,
                reason: t.reason,
            });
        }
        let snapshot = self.breaker.snapshot();
        self.board.publish(&self.name, self.slot, snapshot);
    }
}

fn failure_kind(err: &ProviderError) -> FailureKind {
    match err {
        ProviderError::Timeout(_) => FailureKind::Timeout,
        ProviderError::Connection(_) => FailureKind::Connection,
        ProviderError::Status { status: 408, .. } => FailureKind::Timeout,
        ProviderError::Status { status: 429, .. } => FailureKind::RateLimited,
        ProviderError::Status { .. } => FailureKind::ServerError,
        ProviderError::Panicked => FailureKind::Panic,
        _ => FailureKind::Other,
    }
}

impl Actor for ProviderActor {
    type Context = Context<Self>;
}

impl Supervised for ProviderActor {
    fn restarting(&mut self, _: &mut Self::Context) {
        self.book.restarted(&self.telemetry);
        let now = self.clock.now();
        self.restarts.push_back(now);
        while self
            .restarts
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > self.restart_window)
        {
            self.restarts.pop_front();
        }
        if self.restarts.len() > self.restart_limit as usize {
            tracing::warn!(
                provider = %self.name,
                restarts = self.restarts.len(),
                window = ?self.restart_window,
                "provider worker keeps crashing; opening its breaker"
            );
            self.breaker.trip("restart_limit");
            self.restarts.clear();
        }
        self.publish();
    }
}

impl Handler<FlagsChanged> for ProviderActor {
    type Result = ();

    fn handle(&mut self, msg: FlagsChanged, _: &mut Self::Context) {
        let mut config = self.configured.clone();
        if !msg.0.enable_adaptive_circuit_breaker {
            config.slow_call_rate_threshold = 0.0;
        }
        if &config != self.breaker.config() {
            self.breaker.set_config(config);
            self.publish();
        }
    }
}

impl Handler<CallProvider> for ProviderActor {
    type Result = ResponseActFuture<Self, Result<AiOutput, ProviderError>>;

    fn handle(&mut self, msg: CallProvider, _: &mut Self::Context) -> Self::Result {
        if msg.simulate_failure {
            tracing::debug!(provider = %self.name, "chaos testing: simulated failure");
            self.telemetry.emit(TelemetryEvent::ChaosInjection { provider: self.name.clone() });
            return Box::pin(actix::fut::ready(Err(ProviderError::Simulated)));
        }
        let permit = if msg.use_breaker {
            match self.breaker.try_acquire() {
                Ok(permit) => Some(permit),
                Err(rejected) => {
                    self.publish();
                    self.telemetry.emit(TelemetryEvent::ProviderCall {
                        provider: self.name.clone(),
                        outcome: "rejected",
                        latency: Duration::ZERO,
                    });
                    let retry_after_ms = rejected
                        .retry_after
                        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                    let err = ProviderError::BreakerOpen {
                        state: rejected.state.as_str(),
                        retry_after_ms,
                    };
                    return Box::pin(actix::fut::ready(Err(err)));
                }
            }
        } else {
            None
        };

        self.book.begin();
        let started = Instant::now();
        let client = self.client.clone();
        let task = msg.task;
        let panic_now = std::mem::take(&mut self.panic_next);
        let deadline = msg.deadline.map(tokio::time::Instant::from_std);
        let (name, telemetry) = (self.name.clone(), self.telemetry.clone());
        let call = async move {
            if panic_now {
                panic!("provider worker told to panic");
            }
            let prompt = build_prompt(&task);
            let on_retry = |n: &retry::RetryNotice<'_>| {
                tracing::debug!(
                    provider = %name,
                    attempt = n.failed_attempt,
                    reason = n.reason,
                    wait_ms = u64::try_from(n.wait.as_millis()).unwrap_or(u64::MAX),
                    cause = %n.error,
                    "retrying provider call"
                );
                telemetry.emit(TelemetryEvent::ProviderRetry {
                    provider: name.clone(),
                    reason: n.reason,
                });
            };
            let text = client.complete(&prompt, deadline, on_retry).await?;
            Ok(parse_reply(&task, &text, &client.model))
        };
        let guarded = AssertUnwindSafe(call).catch_unwind();

        Box::pin(guarded.into_actor(self).map(move |result, act, ctx| {
            act.book.end(ctx);
            let panicked = result.is_err();
            let result: Result<AiOutput, ProviderError> =
                result.unwrap_or(Err(ProviderError::Panicked));
            if let Some(permit) = permit {
                let outcome = match &result {
                    Ok(_) => Outcome::Success,
                    Err(err) if err.counts() => Outcome::Failure(failure_kind(err)),
                    Err(_) => Outcome::Ignored,
                };
                act.breaker.record(permit, outcome);
            }
            act.publish();
            let outcome = if result.is_ok() { "success" } else { "failure" };
            act.telemetry.emit(TelemetryEvent::ProviderCall {
                provider: act.name.clone(),
                outcome,
                latency: started.elapsed(),
            });
            if panicked {
                tracing::error!(provider = %act.name, "provider call panicked; restarting worker");
                ctx.stop();
            }
            result
        }))
    }
}

impl Handler<ControlBreaker> for ProviderActor {
    type Result = MessageResult<ControlBreaker>;

    fn handle(&mut self, msg: ControlBreaker, _: &mut Self::Context) -> Self::Result {
        self.breaker.force(msg.0);
        self.publish();
        MessageResult(self.breaker.snapshot())
    }
}

impl Handler<Retire> for ProviderActor {
    type Result = ();

    fn handle(&mut self, _: Retire, ctx: &mut Self::Context) {
        self.board.remove(&self.name, self.slot);
        self.book.retire(ctx);
    }
}
