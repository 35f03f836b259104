//! Deterministic tests of the breaker (ManualClock, no sleeping); property tests are in
//! `proptests.rs`.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::clock::ManualClock;

pub(super) const FAIL: Outcome = Outcome::Failure(FailureKind::ServerError);

pub(super) fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Only the consecutive rule on, no jitter, one trial at a time.
pub(super) fn base() -> BreakerConfig {
    BreakerConfig {
        consecutive_failures: 3,
        failure_rate_threshold: 0.0,
        slow_call_rate_threshold: 0.0,
        window: WindowKind::Count { size: 10 },
        minimum_calls: 5,
        slow_call_target: secs(1),
        slow_call_multiplier: 2.0,
        half_open_max_calls: 1,
        half_open_successes: 1,
        half_open_max_wait: secs(30),
        open_duration: secs(10),
        max_open_duration: secs(100),
        backoff: BackoffKind::Exponential { multiplier: 2.0 },
        jitter: 0.0,
        reset_after: secs(60),
    }
}

pub(super) fn breaker(config: BreakerConfig) -> (CircuitBreaker, ManualClock) {
    config.validate().expect("test config is valid");
    let clock = ManualClock::new();
    (CircuitBreaker::new(config, Arc::new(clock.clone())), clock)
}

/// Acquires and records one call.
pub(super) fn call(b: &mut CircuitBreaker, outcome: Outcome) {
    let permit = b.try_acquire().expect("admitted");
    b.record(permit, outcome);
}

pub(super) fn reasons(b: &mut CircuitBreaker) -> Vec<&'static str> {
    b.take_transitions().into_iter().map(|t| t.reason).collect()
}

pub(super) fn open_for(b: &CircuitBreaker) -> Duration {
    Duration::from_millis(b.snapshot().open_for_ms.expect("open"))
}

/// Trips a closed breaker with the consecutive rule (3 failures).
pub(super) fn trip(b: &mut CircuitBreaker) {
    for _ in 0..3 {
        call(b, FAIL);
    }
    assert_eq!(b.state(), BreakerState::Open);
}

#[test]
fn consecutive_failures_trip_and_a_success_resets_the_run() {
    let (mut b, _clock) = breaker(base());
    call(&mut b, FAIL);
    call(&mut b, FAIL);
    call(&mut b, Outcome::Success);
    call(&mut b, FAIL);
    call(&mut b, FAIL);
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(b.snapshot().consecutive_failures, 2);
    call(&mut b, FAIL);
    assert_eq!(b.state(), BreakerState::Open);
    let t = b.take_transitions();
    assert_eq!(
        t,
        vec![Transition {
            from: BreakerState::Closed,
            to: BreakerState::Open,
            reason: "consecutive_failures"
        }]
    );
    assert!(b.take_transitions().is_empty(), "each transition is taken once");
    let rejected = b.try_acquire().unwrap_err();
    assert_eq!(rejected.state, BreakerState::Open);
    assert_eq!(rejected.retry_after, Some(secs(10)));
}

#[test]
fn failure_rate_trips_only_once_minimum_calls_are_in_the_window() {
    let (mut b, _clock) = breaker(BreakerConfig {
        consecutive_failures: 0,
        failure_rate_threshold: 0.5,
        minimum_calls: 6,
        ..base()
    });
    // 4 failures out of 5 calls: 80%, but below minimum_calls.
    for outcome in [FAIL, Outcome::Success, FAIL, FAIL, FAIL] {
        call(&mut b, outcome);
    }
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(b.snapshot().failure_rate, 0.8);
    call(&mut b, Outcome::Success); // 4/6 = 67% with 6 calls
    assert_eq!(b.state(), BreakerState::Open);
    assert_eq!(reasons(&mut b), ["failure_rate"]);
}

#[test]
fn failure_rate_below_threshold_does_not_trip() {
    let (mut b, _clock) = breaker(BreakerConfig {
        consecutive_failures: 0,
        failure_rate_threshold: 0.5,
        minimum_calls: 4,
        ..base()
    });
    // At most 4 failures in any 10 consecutive calls of S S F S S F ...: below 50%.
    for _ in 0..20 {
        call(&mut b, Outcome::Success);
        call(&mut b, Outcome::Success);
        call(&mut b, FAIL);
    }
    assert_eq!(b.state(), BreakerState::Closed);
    let snap = b.snapshot();
    assert_eq!(snap.calls_in_window, 10);
    assert!(snap.failure_rate < 0.5 && snap.failure_rate > 0.2);
}

#[test]
fn time_window_forgets_old_outcomes() {
    let (mut b, clock) = breaker(BreakerConfig {
        consecutive_failures: 0,
        failure_rate_threshold: 0.5,
        minimum_calls: 4,
        window: WindowKind::Time { duration: secs(10) },
        ..base()
    });
    for _ in 0..3 {
        call(&mut b, FAIL);
    }
    clock.advance(secs(11));
    assert_eq!(b.snapshot().calls_in_window, 0);
    // Had the three old failures stayed, 4/4 would trip; in the window it is 1 of 1 call.
    call(&mut b, FAIL);
    assert_eq!(b.state(), BreakerState::Closed);
    for _ in 0..3 {
        call(&mut b, FAIL);
    }
    assert_eq!(b.state(), BreakerState::Open);
    assert_eq!(reasons(&mut b), ["failure_rate"]);
}

#[test]
fn slow_successes_trip_the_slow_call_rule() {
    // The old breaker only ran its adaptive check after successes; here slow *successes* alone
    // must trip, and slow failures count as slow too.
    let (mut b, clock) = breaker(BreakerConfig {
        consecutive_failures: 0,
        slow_call_rate_threshold: 0.5,
        minimum_calls: 4,
        ..base()
    });
    let slow_call = |b: &mut CircuitBreaker, outcome| {
        let p = b.try_acquire().expect("admitted");
        clock.advance(Duration::from_millis(2001)); // target 1 s x 2 = 2 s
        b.record(p, outcome);
    };
    call(&mut b, Outcome::Success);
    call(&mut b, Outcome::Success);
    slow_call(&mut b, Outcome::Success);
    assert_eq!(b.state(), BreakerState::Closed, "3 calls is below minimum_calls");
    slow_call(&mut b, Outcome::Success);
    assert_eq!(b.state(), BreakerState::Open);
    assert_eq!(reasons(&mut b), ["slow_call_rate"]);
    assert_eq!(b.snapshot().totals.slow, 2);
}

#[test]
fn slow_failures_trip_the_slow_call_rule_too() {
    // Failure-rate and consecutive rules off: only the slow rule can trip, and it must be
    // evaluated after a failure as well as after a success.
    let (mut b, clock) = breaker(BreakerConfig {
        consecutive_failures: 0,
        slow_call_rate_threshold: 0.5,
        minimum_calls: 4,
        ..base()
    });
    call(&mut b, Outcome::Success);
    call(&mut b, Outcome::Success);
    for _ in 0..2 {
        let p = b.try_acquire().expect("admitted");
        clock.advance(secs(3));
        b.record(p, Outcome::Failure(FailureKind::Timeout));
    }
    assert_eq!(b.state(), BreakerState::Open);
    assert_eq!(reasons(&mut b), ["slow_call_rate"]);
}

#[test]
fn a_call_exactly_at_the_slow_limit_is_not_slow() {
    let (mut b, clock) = breaker(BreakerConfig {
        consecutive_failures: 0,
        slow_call_rate_threshold: 0.1,
        minimum_calls: 1,
        ..base()
    });
    let p = b.try_acquire().unwrap();
    clock.advance(secs(2));
    b.record(p, Outcome::Success);
    assert_eq!(b.state(), BreakerState::Closed);
}

#[test]
fn half_open_admits_at_most_max_calls_concurrent_trials() {
    let (mut b, clock) =
        breaker(BreakerConfig { half_open_max_calls: 3, half_open_successes: 5, ..base() });
    trip(&mut b);
    clock.advance(secs(10));
    let mut permits = Vec::new();
    let mut rejected = 0;
    for _ in 0..100 {
        match b.try_acquire() {
            Ok(p) => permits.push(p),
            Err(r) => {
                assert_eq!(r.state, BreakerState::HalfOpen);
                assert_eq!(r.retry_after, Some(secs(1)), "slow_call_target bounds the estimate");
                rejected += 1;
            }
        }
    }
    assert_eq!(permits.len(), 3);
    assert_eq!(rejected, 97);
    assert!(permits.iter().all(CallPermit::is_trial));
    assert_eq!(b.snapshot().trials_in_flight, 3);
    // A finished trial frees exactly one slot.
    b.record(permits.pop().unwrap(), Outcome::Success);
    assert!(b.try_acquire().is_ok());
    assert!(b.try_acquire().is_err());
}

#[test]
fn half_open_closes_after_m_successes_and_forgets_the_window() {
    let (mut b, clock) =
        breaker(BreakerConfig { half_open_max_calls: 2, half_open_successes: 3, ..base() });
    trip(&mut b);
    clock.advance(secs(10));
    assert_eq!(b.state(), BreakerState::HalfOpen);
    assert_eq!(reasons(&mut b), ["consecutive_failures", "open_timeout_elapsed"]);
    call(&mut b, Outcome::Success);
    call(&mut b, Outcome::Success);
    assert_eq!(b.state(), BreakerState::HalfOpen);
    assert_eq!(b.snapshot().trial_successes, 2);
    call(&mut b, Outcome::Success);
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(reasons(&mut b), ["trial_succeeded"]);
    let snap = b.snapshot();
    assert_eq!((snap.calls_in_window, snap.consecutive_failures), (0, 0));
}

#[test]
fn half_open_reopens_on_the_first_failed_trial_one_backoff_step_up() {
    let (mut b, clock) = breaker(BreakerConfig { half_open_max_calls: 2, ..base() });
    trip(&mut b);
    assert_eq!(open_for(&b), secs(10));
    clock.advance(secs(10));
    let ok = b.try_acquire().unwrap();
    let bad = b.try_acquire().unwrap();
    b.record(bad, Outcome::Failure(FailureKind::Timeout));
    assert_eq!(b.state(), BreakerState::Open);
    assert_eq!(open_for(&b), secs(20));
    // The other trial belongs to the previous half-open period: its success changes nothing.
    b.record(ok, Outcome::Success);
    assert_eq!(b.state(), BreakerState::Open);
    assert_eq!(b.snapshot().totals.stale, 1);
    assert_eq!(reasons(&mut b), ["consecutive_failures", "open_timeout_elapsed", "trial_failed"]);
}

#[test]
fn slow_trial_counts_as_failed_while_the_slow_rule_is_on() {
    let (mut b, clock) =
        breaker(BreakerConfig { slow_call_rate_threshold: 0.9, minimum_calls: 10, ..base() });
    trip(&mut b);
    clock.advance(secs(10));
    let p = b.try_acquire().unwrap();
    clock.advance(secs(3));
    b.record(p, Outcome::Success);
    assert_eq!(b.state(), BreakerState::Open);
}

#[test]
fn an_unanswered_trial_is_reclaimed_after_max_wait_and_its_late_outcome_ignored() {
    let (mut b, clock) = breaker(base());
    trip(&mut b);
    clock.advance(secs(10));
    let lost = b.try_acquire().unwrap();
    assert!(b.try_acquire().is_err());
    clock.advance(secs(30));
    assert_eq!(b.state(), BreakerState::HalfOpen, "not reclaimed before max wait");
    clock.advance(Duration::from_millis(1));
    assert_eq!(b.state(), BreakerState::Open, "reclaimed: half-open never sticks");
    assert_eq!(open_for(&b), secs(20));
    assert_eq!(reasons(&mut b).last(), Some(&"trial_timed_out"));
    b.record(lost, Outcome::Success);
    assert_eq!(b.state(), BreakerState::Open);
    clock.advance(secs(20));
    assert_eq!(b.state(), BreakerState::HalfOpen);
    assert_eq!(b.snapshot().trials_in_flight, 0);
    assert!(b.try_acquire().is_ok());
}

#[test]
fn reclaim_also_happens_on_try_acquire() {
    let (mut b, clock) = breaker(base());
    trip(&mut b);
    clock.advance(secs(10));
    let _lost = b.try_acquire().unwrap();
    clock.advance(secs(31));
    let r = b.try_acquire().unwrap_err();
    assert_eq!(r.state, BreakerState::Open);
    assert_eq!(r.retry_after, Some(secs(20)));
}

/// Opens, then fails the trial `n` times, returning each open period.
fn open_periods(config: BreakerConfig, n: usize) -> Vec<Duration> {
    let (mut b, clock) = breaker(config);
    trip(&mut b);
    let mut periods = vec![open_for(&b)];
    for _ in 1..n {
        // +1 ms: open_for_ms truncates a jittered period to whole milliseconds.
        clock.advance(open_for(&b) + Duration::from_millis(1));
        call(&mut b, FAIL);
        periods.push(open_for(&b));
    }
    periods
}

#[test]
fn backoff_sequences_for_the_three_strategies_stop_at_the_cap() {
    let s = |v: &[u64]| v.iter().map(|x| secs(*x)).collect::<Vec<_>>();
    let exp = open_periods(base(), 6);
    assert_eq!(exp, s(&[10, 20, 40, 80, 100, 100]));
    let lin = open_periods(
        BreakerConfig { backoff: BackoffKind::Linear { step: secs(30) }, ..base() },
        5,
    );
    assert_eq!(lin, s(&[10, 40, 70, 100, 100]));
    let fib = open_periods(BreakerConfig { backoff: BackoffKind::Fibonacci, ..base() }, 8);
    assert_eq!(fib, s(&[10, 10, 20, 30, 50, 80, 100, 100]));
}

#[test]
fn jitter_never_exceeds_the_cap() {
    for _ in 0..50 {
        let periods =
            open_periods(BreakerConfig { jitter: 1.0, max_open_duration: secs(40), ..base() }, 6);
        assert!(periods.iter().all(|p| *p <= secs(40)), "{periods:?}");
    }
}

#[test]
fn flapping_keeps_climbing_and_a_stable_closed_period_resets_the_step() {
    let (mut b, clock) = breaker(base());
    trip(&mut b);
    clock.advance(secs(10));
    call(&mut b, Outcome::Success); // closes
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(b.snapshot().backoff_step, 1);
    clock.advance(secs(59));
    trip(&mut b); // within reset_after: one step up
    assert_eq!(open_for(&b), secs(20));
    clock.advance(secs(20));
    call(&mut b, Outcome::Success);
    clock.advance(secs(60));
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(b.snapshot().backoff_step, 0, "reset after 60 s closed");
    trip(&mut b);
    assert_eq!(open_for(&b), secs(10));
}
