//! Circuit breaker: a pure, single-owner state machine guarding calls to one AI provider.
//!
//! The owner (the provider's actor) holds a [`CircuitBreaker`] by value and drives it with
//! `&mut self` calls: [`CircuitBreaker::try_acquire`] before a call, [`CircuitBreaker::record`]
//! with the call's [`Outcome`] after it. No locks, no tasks, no timers: time is read from the
//! injected [`Clock`](crate::clock::Clock) and time-based transitions (open -> half-open, trial
//! reclaim, backoff reset) are applied lazily by whichever method runs next.
//!
//! States: `Closed` (calls flow, outcomes are counted) -> `Open` (calls rejected for the open
//! duration) -> `HalfOpen` (a bounded number of trial calls) -> `Closed` or back to `Open`; plus
//! the admin states `ForcedOpen` (reject everything) and `Disabled` (admit everything, count
//! nothing), left only by another admin action.
//!
//! What the design fixes compared with the earlier TypeScript breaker:
//! - Half-open admits at most `half_open_max_calls` *concurrent* trials. A trial whose outcome
//!   never comes back is reclaimed after `half_open_max_wait` and counted as a failed trial, so
//!   half-open can neither flood a recovering provider nor stick for ever.
//! - Every rule (consecutive failures, failure rate, slow-call rate) is evaluated after every
//!   counted outcome, success or failure: a provider that answers correctly but ever more slowly
//!   still trips the slow-call rule.
//! - Rates are counted out of the same window total, so they never exceed 1.
//! - 0 in the config turns a rule off, explicitly; it never silently becomes a default.
//! - Only provider failures count. [`Outcome::Ignored`] (a 4xx caused by the request, a cancelled
//!   job, a local bulkhead rejection) releases a trial slot and changes nothing else.
//! - Each permit carries the generation (state epoch) it was issued in; the outcome of a permit
//!   from an older generation is ignored, so a slow success of a call admitted while closed can't
//!   close a half-open breaker, and a reclaimed trial's late outcome changes nothing.
//!
//! Transitions are reported through one mechanism only: every method that changes the state
//! pushes a [`Transition`] to an internal queue, and the owner drains it with
//! [`CircuitBreaker::take_transitions`] (log, count, publish) after each call. The breaker itself
//! never logs. The queue keeps at most `MAX_PENDING_TRANSITIONS`, dropping the oldest, so an
//! owner that forgets to drain leaks nothing.
//!
//! Limits: the open duration is decided when the breaker opens (a later `set_config` applies
//! from the next opening); a permit that is dropped without `record` holds its trial slot until
//! `half_open_max_wait` reclaims it; [`CircuitBreaker::snapshot`] takes `&self` and so shows
//! the state as of the last call (an elapsed open period shows as `openForMs: 0`).

mod backoff;
mod config;
mod window;

#[cfg(test)]
mod edge_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::clock::SharedClock;

pub use backoff::open_duration_for_step;
pub use config::{
    BackoffKind, BreakerConfig, ConfigError, WindowKind, MAX_COUNT_WINDOW, MAX_TIME_WINDOW,
};
use window::Window;

/// Transitions kept for the owner before the oldest are dropped.
pub const MAX_PENDING_TRANSITIONS: usize = 1024;

/// Where the breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls flow; outcomes are counted against the trip rules.
    Closed,
    /// Calls are rejected until the open duration has elapsed.
    Open,
    /// A bounded number of trial calls decide between closing and reopening.
    HalfOpen,
    /// An operator opened the breaker; it stays open until another admin action.
    ForcedOpen,
    /// An operator turned the breaker off: every call is admitted and nothing is counted.
    Disabled,
}

impl BreakerState {
    /// Every state, e.g. to zero a per-state gauge.
    pub const ALL: [BreakerState; 5] = [
        BreakerState::Closed,
        BreakerState::Open,
        BreakerState::HalfOpen,
        BreakerState::ForcedOpen,
        BreakerState::Disabled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
            BreakerState::ForcedOpen => "forced_open",
            BreakerState::Disabled => "disabled",
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a provider call failed. Every kind counts against the breaker; the kind is for the
/// owner's metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    Timeout,
    Connection,
    /// 429 or a provider quota error: the provider is overloaded, so back off.
    RateLimited,
    ServerError,
    /// The call's task panicked.
    Panic,
    Other,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Timeout => "timeout",
            FailureKind::Connection => "connection",
            FailureKind::RateLimited => "rate_limited",
            FailureKind::ServerError => "server_error",
            FailureKind::Panic => "panic",
            FailureKind::Other => "other",
        }
    }
}

/// What became of an admitted call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// The provider failed: counts against the breaker.
    Failure(FailureKind),
    /// Not the provider's fault (a 4xx caused by the request, a cancelled job, a local bulkhead
    /// rejection): releases a trial slot and changes nothing else.
    Ignored,
}

/// Leave to make one call. Hand it back exactly once through [`CircuitBreaker::record`]; it is
/// deliberately neither `Clone` nor `Copy`.
#[must_use = "a permit must be handed back to CircuitBreaker::record"]
#[derive(Debug, PartialEq, Eq)]
pub struct CallPermit {
    /// Identifies the trial slot this permit holds in half-open.
    id: u64,
    /// When the call was admitted; its latency decides whether it was slow.
    started: Instant,
    /// Whether this is a half-open trial (holds one of the `half_open_max_calls` slots).
    trial: bool,
    /// The breaker's state epoch at admission; an outcome from an older epoch is ignored.
    generation: u64,
}

impl CallPermit {
    /// When the call was admitted (breaker clock).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Whether this call is a half-open trial.
    pub fn is_trial(&self) -> bool {
        self.trial
    }
}

/// One state change, for the owner to log and count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Transition {
    pub from: BreakerState,
    pub to: BreakerState,
    /// One of "consecutive_failures", "failure_rate", "slow_call_rate", "open_timeout_elapsed",
    /// "trial_succeeded", "trial_failed", "trial_timed_out", "forced_open", "forced_closed",
    /// "disabled", "reset".
    pub reason: &'static str,
}

/// The breaker refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker is {state}")]
pub struct Rejected {
    pub state: BreakerState,
    /// When a call may next be admitted: the rest of the open period, or for a full half-open
    /// an estimate of when a trial slot frees up. `None` when forced open (no estimate).
    pub retry_after: Option<Duration>,
}

/// Operator commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminAction {
    /// Reject everything until another admin action.
    ForceOpen,
    /// Close now and forget the window; the backoff step is kept.
    ForceClosed,
    /// Admit everything and count nothing until another admin action.
    Disable,
    /// Close now and forget the window and the backoff step.
    Reset,
}

/// Counters since the breaker was created. Every outcome handed back is counted here, including
/// stale ones and those recorded while disabled; only current-generation outcomes move the state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BreakerTotals {
    pub successes: u64,
    pub failures: u64,
    /// Calls, successful or not, slower than the slow-call limit.
    pub slow: u64,
    pub ignored: u64,
    pub rejected: u64,
    /// Outcomes from permits of an older generation, counted above but not applied.
    pub stale: u64,
}

/// A read-only view for the admin API and metrics.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BreakerSnapshot {
    pub state: BreakerState,
    pub consecutive_failures: u32,
    pub calls_in_window: u32,
    /// 0.0..=1.0.
    pub failure_rate: f64,
    /// 0.0..=1.0.
    pub slow_call_rate: f64,
    pub trials_in_flight: u32,
    pub trial_successes: u32,
    /// Remaining open time in ms while `Open`.
    pub open_for_ms: Option<u64>,
    /// Openings since the backoff last reset: the next opening lasts `duration(backoffStep)`.
    pub backoff_step: u32,
    pub totals: BreakerTotals,
}

/// An outstanding half-open trial.
#[derive(Debug, Clone, Copy)]
struct Trial {
    id: u64,
    started: Instant,
}

/// The state machine; see the module docs.
#[derive(Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    /// `config.slow_call_limit()`, computed once per config: it is read on every record.
    slow_limit: Duration,
    clock: SharedClock,
    state: BreakerState,
    /// Bumped on every state change and admin action; permits from older generations are stale.
    generation: u64,
    /// Source of permit ids.
    next_id: u64,
    /// Closed-state outcomes for the rate rules; cleared on entering `Closed`.
    window: Window,
    /// Counted failures in a row while closed.
    consecutive: u32,
    /// While `Open`: when the open period ends.
    open_until: Option<Instant>,
    /// Openings since the backoff last reset; the next opening uses this step.
    backoff_step: u32,
    /// When the breaker last entered `Closed`, for `reset_after`.
    closed_since: Instant,
    /// Outstanding half-open trials (at most `half_open_max_calls`, so a Vec scan is cheap).
    trials: Vec<Trial>,
    /// Successful trials in the current half-open period.
    trial_successes: u32,
    /// Transitions not yet taken by the owner.
    pending: VecDeque<Transition>,
    totals: BreakerTotals,
}

impl CircuitBreaker {
    /// A closed breaker. `config` is assumed to have passed [`BreakerConfig::validate`].
    pub fn new(config: BreakerConfig, clock: SharedClock) -> Self {
        let now = clock.now();
        Self {
            window: Window::new(config.window, now),
            slow_limit: config.slow_call_limit(),
            config,
            clock,
            state: BreakerState::Closed,
            generation: 0,
            next_id: 0,
            consecutive: 0,
            open_until: None,
            backoff_step: 0,
            closed_since: now,
            trials: Vec::new(),
            trial_successes: 0,
            pending: VecDeque::new(),
            totals: BreakerTotals::default(),
        }
    }

    /// Asks to make one call. `Open` turns into `HalfOpen` here once its time is up.
    pub fn try_acquire(&mut self) -> Result<CallPermit, Rejected> {
        let now = self.clock.now();
        self.tick(now);
        let trial = match self.state {
            BreakerState::Closed | BreakerState::Disabled => false,
            BreakerState::HalfOpen => {
                if self.trials.len() >= self.config.half_open_max_calls as usize {
                    let retry_after = self.trial_slot_estimate(now);
                    return Err(self.reject(Some(retry_after)));
                }
                true
            }
            BreakerState::Open => {
                let remaining = self.open_until.map(|until| until.saturating_duration_since(now));
                return Err(self.reject(remaining));
            }
            BreakerState::ForcedOpen => return Err(self.reject(None)),
        };
        let id = self.next_id;
        self.next_id += 1;
        if trial {
            self.trials.push(Trial { id, started: now });
        }
        Ok(CallPermit { id, started: now, trial, generation: self.generation })
    }

    /// Hands back a permit with the call's outcome. Any transition goes to the queue read by
    /// [`take_transitions`](Self::take_transitions).
    pub fn record(&mut self, permit: CallPermit, outcome: Outcome) {
        let now = self.clock.now();
        let slow = now.saturating_duration_since(permit.started) > self.slow_limit;
        match outcome {
            Outcome::Success => self.totals.successes += 1,
            Outcome::Failure(_) => self.totals.failures += 1,
            Outcome::Ignored => self.totals.ignored += 1,
        }
        if slow && outcome != Outcome::Ignored {
            self.totals.slow += 1;
        }
        // Reclaiming expired trials first means a trial that outlived half_open_max_wait has
        // already reopened the breaker (new generation), so its late outcome lands as stale.
        self.tick(now);
        if permit.generation != self.generation {
            self.totals.stale += 1;
            return;
        }
        match self.state {
            BreakerState::Closed => self.record_closed(now, outcome, slow),
            BreakerState::HalfOpen => self.record_trial(now, &permit, outcome, slow),
            // Disabled counts nothing; Open and ForcedOpen issue no permits in their generation.
            BreakerState::Disabled | BreakerState::Open | BreakerState::ForcedOpen => {}
        }
    }

    /// The current state, after applying any time-based transition that is due.
    pub fn state(&mut self) -> BreakerState {
        let now = self.clock.now();
        self.tick(now);
        self.state
    }

    /// Every transition since the last call, oldest first; each is returned exactly once.
    pub fn take_transitions(&mut self) -> Vec<Transition> {
        self.pending.drain(..).collect()
    }

    /// Applies an operator command. Outstanding permits become stale.
    pub fn force(&mut self, action: AdminAction) {
        let now = self.clock.now();
        self.tick(now);
        match action {
            AdminAction::ForceOpen => self.enter(BreakerState::ForcedOpen, "forced_open", now),
            AdminAction::ForceClosed => self.enter(BreakerState::Closed, "forced_closed", now),
            AdminAction::Disable => self.enter(BreakerState::Disabled, "disabled", now),
            AdminAction::Reset => {
                self.backoff_step = 0;
                self.enter(BreakerState::Closed, "reset", now);
            }
        }
    }

    /// Opens the breaker for its current backoff period on evidence from outside the call path
    /// (the owner's worker keeps crashing). Only a closed or half-open breaker moves; an
    /// operator's forced state and a disabled breaker are left alone.
    pub fn trip(&mut self, reason: &'static str) {
        let now = self.clock.now();
        self.tick(now);
        if matches!(self.state, BreakerState::Closed | BreakerState::HalfOpen) {
            self.enter(BreakerState::Open, reason, now);
        }
    }

    /// A read-only view as of the last call (lazy transitions are not applied; call
    /// [`state`](Self::state) first for an up-to-date state).
    pub fn snapshot(&self) -> BreakerSnapshot {
        let now = self.clock.now();
        let counts = self.window.peek(now);
        BreakerSnapshot {
            state: self.state,
            consecutive_failures: self.consecutive,
            calls_in_window: counts.calls,
            failure_rate: counts.failure_rate(),
            slow_call_rate: counts.slow_rate(),
            trials_in_flight: self.trials.len() as u32,
            trial_successes: self.trial_successes,
            open_for_ms: match self.state {
                BreakerState::Open => self
                    .open_until
                    .map(|until| until.saturating_duration_since(now).as_millis() as u64),
                _ => None,
            },
            backoff_step: self.backoff_step,
            totals: self.totals,
        }
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// Replaces the configuration at run time (assumed validated). The state is kept; a new
    /// window kind or size starts an empty window; the current open period keeps its end.
    pub fn set_config(&mut self, config: BreakerConfig) {
        let now = self.clock.now();
        self.tick(now);
        if config.window != self.config.window {
            self.window = Window::new(config.window, now);
        }
        self.slow_limit = config.slow_call_limit();
        self.config = config;
    }

    /// Applies the transitions that are due by `now` without anyone recording an outcome.
    fn tick(&mut self, now: Instant) {
        if self.state == BreakerState::Open && self.open_until.is_some_and(|until| now >= until) {
            self.enter(BreakerState::HalfOpen, "open_timeout_elapsed", now);
        }
        if self.state == BreakerState::HalfOpen {
            let max_wait = self.config.half_open_max_wait;
            if self.trials.iter().any(|t| now.saturating_duration_since(t.started) > max_wait) {
                self.enter(BreakerState::Open, "trial_timed_out", now);
            }
        }
        if self.state == BreakerState::Closed
            && self.backoff_step > 0
            && now.saturating_duration_since(self.closed_since) >= self.config.reset_after
        {
            self.backoff_step = 0;
        }
    }

    fn record_closed(&mut self, now: Instant, outcome: Outcome, slow: bool) {
        let failed = match outcome {
            Outcome::Ignored => return,
            Outcome::Success => false,
            Outcome::Failure(_) => true,
        };
        self.consecutive = if failed { self.consecutive.saturating_add(1) } else { 0 };
        self.window.record(now, failed, slow);
        if let Some(reason) = self.trip_reason(now) {
            self.enter(BreakerState::Open, reason, now);
        }
    }

    /// The first enabled rule that the closed-state counts break, if any.
    fn trip_reason(&mut self, now: Instant) -> Option<&'static str> {
        let cfg = &self.config;
        if cfg.consecutive_failures > 0 && self.consecutive >= cfg.consecutive_failures {
            return Some("consecutive_failures");
        }
        if !cfg.rate_rules_on() {
            return None;
        }
        let counts = self.window.counts(now);
        if counts.calls == 0 || counts.calls < cfg.minimum_calls {
            return None;
        }
        let failure_rate = counts.failure_rate();
        if cfg.failure_rate_threshold > 0.0 && failure_rate >= cfg.failure_rate_threshold {
            return Some("failure_rate");
        }
        if cfg.slow_call_rate_threshold > 0.0 && counts.slow_rate() >= cfg.slow_call_rate_threshold
        {
            return Some("slow_call_rate");
        }
        None
    }

    fn record_trial(&mut self, now: Instant, permit: &CallPermit, outcome: Outcome, slow: bool) {
        let Some(index) = self.trials.iter().position(|t| t.id == permit.id) else {
            // Not a trial of this half-open period (cannot happen within one generation, but a
            // foreign permit must not free someone else's slot).
            return;
        };
        self.trials.swap_remove(index);
        let slow_counts = slow && self.config.slow_call_rate_threshold > 0.0;
        match outcome {
            Outcome::Ignored => {}
            Outcome::Failure(_) => self.enter(BreakerState::Open, "trial_failed", now),
            // A slow trial means the provider is still degraded: closing now would only trip the
            // slow-call rule again a window later.
            Outcome::Success if slow_counts => self.enter(BreakerState::Open, "trial_failed", now),
            Outcome::Success => {
                self.trial_successes += 1;
                if self.trial_successes >= self.config.half_open_successes {
                    self.enter(BreakerState::Closed, "trial_succeeded", now);
                }
            }
        }
    }

    /// Moves to `to`, starting a new generation, and queues the transition if the state changed.
    fn enter(&mut self, to: BreakerState, reason: &'static str, now: Instant) {
        let from = self.state;
        self.state = to;
        self.generation += 1;
        self.trials.clear();
        self.trial_successes = 0;
        self.open_until = None;
        match to {
            BreakerState::Closed => {
                self.window.clear(now);
                self.consecutive = 0;
                self.closed_since = now;
            }
            BreakerState::Open => {
                let planned = open_duration_for_step(&self.config, self.backoff_step);
                let cap = self.config.max_open_duration;
                let open_for =
                    backoff::jittered(planned, self.config.jitter, cap, &mut rand::thread_rng());
                self.open_until = Some(now + open_for);
                self.backoff_step = self.backoff_step.saturating_add(1);
            }
            BreakerState::HalfOpen | BreakerState::ForcedOpen | BreakerState::Disabled => {}
        }
        if from != to {
            if self.pending.len() == MAX_PENDING_TRANSITIONS {
                self.pending.pop_front();
            }
            self.pending.push_back(Transition { from, to, reason });
        }
    }

    fn reject(&mut self, retry_after: Option<Duration>) -> Rejected {
        self.totals.rejected += 1;
        Rejected { state: self.state, retry_after }
    }

    /// When a half-open trial slot should free up: a trial normally ends within the provider's
    /// target time, and at the latest when the oldest trial is reclaimed.
    fn trial_slot_estimate(&self, now: Instant) -> Duration {
        let reclaim = self
            .trials
            .iter()
            .map(|t| (t.started + self.config.half_open_max_wait).saturating_duration_since(now))
            .min()
            .unwrap_or_default();
        match self.config.slow_call_target {
            target if target.is_zero() => reclaim,
            target => target.min(reclaim),
        }
    }
}
