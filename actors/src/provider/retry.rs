//! Retries within one provider: exponential backoff with jitter, bounded by a number of
//! attempts and by the job's deadline.
//!
//! Why retry before failing over: a 429, a 503 or a dropped connection is often a blip of a
//! second or two, and the provider the operator ranked first is usually the one they want.
//! Why only a few times: a provider that keeps failing is the breaker's business, and the
//! next provider in the priority order serves the job sooner than a long wait would. So a
//! retried call is still *one* call to the breaker, classified by its last error.
//!
//! The rules:
//! - retried: timeouts, connection errors, HTTP 408, 429 and 5xx; nothing else (a 400 will
//!   fail the same way again, and a malformed reply is a model problem, not a blip);
//! - the wait doubles from `initial_backoff` up to `max_backoff`, randomised by `jitter` so
//!   that clients which failed together do not come back together;
//! - a `Retry-After` (seconds or an HTTP date) replaces the computed wait: the provider said
//!   when it will take calls again, and calling earlier would only be refused. One longer than
//!   `max_backoff` ends the retries instead, since failover is then the quicker answer;
//! - no wait ever reaches past the job's deadline: a wait that would ends the retries, and
//!   each attempt's timeout is cut to what is left of the deadline.
//!
//! What a retrying call costs: it keeps its bulkhead slot (and a half-open trial slot) while
//! it waits, and the breaker's slow-call rule sees the whole call, waits included. Both are
//! why `max_attempts` is capped and why `max_backoff` also caps how long a `Retry-After` is
//! waited out.
//!
//! Waits use tokio's timer, so tests pause time and advance it instead of sleeping.

use std::future::Future;
use std::time::{Duration, SystemTime};

use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::ProviderError;

/// `[providers.<name>.retry]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts per call, the first one included; 1 turns retries off.
    pub max_attempts: u32,
    /// The wait before the second attempt; each later wait doubles it.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// The longest computed wait, and the longest `Retry-After` that is waited out.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Each computed wait is moved by up to this fraction either way (0.0-1.0).
    pub jitter: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(10),
            jitter: 0.2,
        }
    }
}

/// A retry setting that cannot be used, naming its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct RetryConfigError {
    pub key: &'static str,
    pub message: &'static str,
}

/// Attempts above this would hold a bulkhead slot for long after failover could have served
/// the job; more is almost certainly a typo.
const MAX_ATTEMPTS_LIMIT: u32 = 10;

impl RetryConfig {
    pub fn validate(&self) -> Result<(), RetryConfigError> {
        let err = |key, message| Err(RetryConfigError { key, message });
        if !(1..=MAX_ATTEMPTS_LIMIT).contains(&self.max_attempts) {
            return err("max_attempts", "must be between 1 and 10");
        }
        if self.max_backoff < self.initial_backoff {
            return err("max_backoff", "must not be shorter than initial_backoff");
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return err("jitter", "must be between 0 and 1");
        }
        Ok(())
    }

    /// The wait after `failed` attempts (1 or more) have failed, before jitter.
    pub fn backoff(&self, failed: u32) -> Duration {
        let doublings = failed.saturating_sub(1).min(31);
        self.initial_backoff.saturating_mul(1 << doublings).min(self.max_backoff)
    }

    fn jittered(&self, wait: Duration, rng: &mut impl Rng) -> Duration {
        if self.jitter == 0.0 || wait.is_zero() {
            return wait;
        }
        let factor = rng.gen_range(1.0 - self.jitter..=1.0 + self.jitter);
        wait.mul_f64(factor).min(self.max_backoff)
    }
}

/// Why a failed attempt may be worth another, as a metric label; `None` when it is not.
pub fn retry_reason(err: &ProviderError) -> Option<&'static str> {
    match err {
        ProviderError::Timeout(_) | ProviderError::Connection(_) => Some(err.label()),
        ProviderError::Status { status, .. } if *status == 408 || *status == 429 => {
            Some(err.label())
        }
        ProviderError::Status { status, .. } if *status >= 500 => Some(err.label()),
        _ => None,
    }
}

/// Reads a `Retry-After` value: delay-seconds, or an HTTP date taken relative to `now`.
/// A date in the past means "now"; anything else unreadable is ignored.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// One failed attempt: the error, and the provider's `Retry-After` if it sent one.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptError {
    pub error: ProviderError,
    pub retry_after: Option<Duration>,
}

impl From<ProviderError> for AttemptError {
    fn from(error: ProviderError) -> Self {
        AttemptError { error, retry_after: None }
    }
}

/// What an attempt is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptContext {
    /// 1 for the first attempt.
    pub number: u32,
    /// Time left before the deadline, to cut the attempt's own timeout to.
    pub remaining: Option<Duration>,
}

/// A retry about to happen, for logs and metrics.
#[derive(Debug)]
pub struct RetryNotice<'a> {
    /// The attempt that failed (1 for the first).
    pub failed_attempt: u32,
    /// Metric label of the failure, see [`retry_reason`].
    pub reason: &'static str,
    pub wait: Duration,
    pub error: &'a ProviderError,
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Wait this long, then try again.
    Retry { wait: Duration, reason: &'static str },
    /// Give up: the last error stands. The text says why, for the debug log.
    GiveUp(&'static str),
}

/// The retry rule of the module docs, as a pure function of its inputs.
pub fn decide(
    config: &RetryConfig,
    failed: u32,
    failure: &AttemptError,
    remaining: Option<Duration>,
    rng: &mut impl Rng,
) -> Decision {
    let Some(reason) = retry_reason(&failure.error) else {
        return Decision::GiveUp("the failure is not one a retry can fix");
    };
    if failed >= config.max_attempts {
        return Decision::GiveUp("max_attempts reached");
    }
    let wait = match failure.retry_after {
        Some(asked) if asked > config.max_backoff => {
            return Decision::GiveUp("Retry-After is longer than max_backoff");
        }
        Some(asked) => asked,
        None => config.jittered(config.backoff(failed), rng),
    };
    if remaining.is_some_and(|left| wait >= left) {
        return Decision::GiveUp("the wait would reach past the job's deadline");
    }
    Decision::Retry { wait, reason }
}

/// Runs `attempt` until it succeeds or [`decide`] gives up, waiting between attempts on
/// tokio's timer. `on_retry` hears of every retry before its wait.
pub async fn run<T, F, Fut>(
    config: &RetryConfig,
    deadline: Option<Instant>,
    mut attempt: F,
    mut on_retry: impl FnMut(&RetryNotice<'_>),
) -> Result<T, ProviderError>
where
    F: FnMut(AttemptContext) -> Fut,
    Fut: Future<Output = Result<T, AttemptError>>,
{
    let left = || deadline.map(|d| d.saturating_duration_since(Instant::now()));
    let mut failed = 0;
    loop {
        let remaining = left();
        // Only the first attempt can meet a spent deadline: every wait stops short of it.
        if remaining.is_some_and(|r| r.is_zero()) {
            return Err(ProviderError::DeadlineExceeded);
        }
        let failure = match attempt(AttemptContext { number: failed + 1, remaining }).await {
            Ok(value) => return Ok(value),
            Err(failure) => failure,
        };
        failed += 1;

        let decision = decide(config, failed, &failure, left(), &mut rand::thread_rng());
        match decision {
            Decision::GiveUp(why) => {
                if failed > 1 || retry_reason(&failure.error).is_some() {
                    tracing::debug!(attempts = failed, cause = %failure.error, why, "no retry");
                }
                return Err(failure.error);
            }
            Decision::Retry { wait, reason } => {
                on_retry(&RetryNotice {
                    failed_attempt: failed,
                    reason,
                    wait,
                    error: &failure.error,
                });
                tokio::time::sleep(wait).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn config(jitter: f64) -> RetryConfig {
        RetryConfig {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(3),
            jitter,
        }
    }

    fn status(status: u16, retry_after: Option<Duration>) -> AttemptError {
        let error = ProviderError::Status { status, detail: String::new() };
        AttemptError { error, retry_after }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_jitter_stays_in_bounds() {
        let c = config(0.0);
        let waits: Vec<_> = (1..=5).map(|n| c.backoff(n).as_millis()).collect();
        assert_eq!(waits, [500, 1000, 2000, 3000, 3000]);
        assert_eq!(c.backoff(u32::MAX), Duration::from_secs(3), "no overflow on huge counts");

        let c = config(0.2);
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..200 {
            let w = c.jittered(Duration::from_millis(1000), &mut rng);
            assert!((800..=1200).contains(&w.as_millis()), "{w:?}");
            let capped = c.jittered(Duration::from_secs(3), &mut rng);
            assert!(capped <= c.max_backoff, "{capped:?}");
        }
    }

    #[test]
    fn only_transient_failures_are_retried() {
        let c = config(0.0);
        let mut rng = StdRng::seed_from_u64(1);
        for code in [408, 429, 500, 502, 503, 504] {
            let d = decide(&c, 1, &status(code, None), None, &mut rng);
            assert!(matches!(d, Decision::Retry { .. }), "{code}: {d:?}");
        }
        for code in [400, 401, 403, 404, 422] {
            let d = decide(&c, 1, &status(code, None), None, &mut rng);
            assert!(matches!(d, Decision::GiveUp(_)), "{code}: {d:?}");
        }
        let transient = [
            ProviderError::Timeout(Duration::from_secs(1)),
            ProviderError::Connection("refused".into()),
        ];
        for err in transient {
            let d = decide(&c, 1, &err.into(), None, &mut rng);
            assert!(matches!(d, Decision::Retry { .. }));
        }
        let errors = [
            status(408, None).error,
            status(429, None).error,
            status(500, None).error,
            ProviderError::Timeout(Duration::from_secs(1)),
            ProviderError::Connection("reset".into()),
        ];
        for err in errors {
            let reason = retry_reason(&err).unwrap();
            assert!(
                crate::telemetry::RETRY_REASONS.contains(&reason),
                "{reason} is pre-registered"
            );
        }
        let permanent = [
            ProviderError::Malformed("x".into()),
            ProviderError::NoCredentials,
            ProviderError::Simulated,
            ProviderError::DeadlineExceeded,
        ];
        for err in permanent {
            let d = decide(&c, 1, &err.into(), None, &mut rng);
            assert!(matches!(d, Decision::GiveUp(_)), "{d:?}");
        }
    }

    #[test]
    fn retry_after_replaces_the_backoff_and_limits_end_the_retries() {
        let c = config(0.5);
        let mut rng = StdRng::seed_from_u64(3);
        let asked = status(429, Some(Duration::from_secs(2)));
        let d = decide(&c, 1, &asked, None, &mut rng);
        assert_eq!(d, Decision::Retry { wait: Duration::from_secs(2), reason: "rate_limited" });

        let too_long = status(503, Some(Duration::from_secs(4)));
        assert!(matches!(decide(&c, 1, &too_long, None, &mut rng), Decision::GiveUp(_)));

        let left = Some(Duration::from_millis(1500));
        assert!(matches!(decide(&c, 1, &asked, left, &mut rng), Decision::GiveUp(_)));
        let d = decide(&config(0.0), 2, &status(500, None), left, &mut rng);
        assert!(matches!(d, Decision::Retry { .. }), "a 1 s backoff fits in 1.5 s: {d:?}");

        assert!(matches!(decide(&c, 4, &status(500, None), None, &mut rng), Decision::GiveUp(_)));
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(parse_retry_after(&later, now), Some(Duration::from_secs(30)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    #[test]
    fn validation_names_the_key() {
        let mut c = RetryConfig::default();
        assert_eq!(c.validate(), Ok(()));
        c.max_attempts = 0;
        assert_eq!(c.validate().unwrap_err().key, "max_attempts");
        c = RetryConfig { max_backoff: Duration::from_millis(100), ..RetryConfig::default() };
        assert_eq!(c.validate().unwrap_err().key, "max_backoff");
        c = RetryConfig { jitter: 1.5, ..RetryConfig::default() };
        assert_eq!(c.validate().unwrap_err().to_string(), "jitter: must be between 0 and 1");
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_waits_on_tokio_time_and_stops_at_the_deadline() {
        let c = RetryConfig { jitter: 0.0, ..config(0.0) };
        let start = Instant::now();
        let deadline = Some(start + Duration::from_millis(2000));
        let mut seen = Vec::new();
        let mut calls = Vec::new();
        let result: Result<(), _> = run(
            &c,
            deadline,
            |ctx| {
                calls.push((ctx.number, Instant::now() - start, ctx.remaining));
                async { Err(status(503, None)) }
            },
            |n| seen.push((n.failed_attempt, n.wait, n.reason)),
        )
        .await;
        assert_eq!(result.unwrap_err().label(), "server_error");
        // Waits of 0.5 s and 1 s fit before the deadline at 2 s; the next (2 s) would not.
        let at: Vec<_> = calls.iter().map(|(n, t, _)| (*n, t.as_millis())).collect();
        assert_eq!(at, [(1, 0), (2, 500), (3, 1500)]);
        assert_eq!(
            calls[2].2,
            Some(Duration::from_millis(500)),
            "the attempt is told what is left"
        );
        assert_eq!(
            seen,
            [
                (1, Duration::from_millis(500), "server_error"),
                (2, Duration::from_millis(1000), "server_error")
            ]
        );

        let spent = Some(Instant::now());
        let result: Result<(), _> =
            run(&c, spent, |_| async { Ok(()) }, |_| panic!("no retry")).await;
        assert_eq!(result, Err(ProviderError::DeadlineExceeded));
    }
}
