//! Deterministic tests (ManualClock, no sleeping) and property tests for the breaker.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::clock::ManualClock;

const FAIL: Outcome = Outcome::Failure(FailureKind::ServerError);

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Only the consecutive rule on, no jitter, one trial at a time.
fn base() -> BreakerConfig {
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

fn breaker(config: BreakerConfig) -> (CircuitBreaker, ManualClock) {
    config.validate().expect("test config is valid");
    let clock = ManualClock::new();
    (CircuitBreaker::new(config, Arc::new(clock.clone())), clock)
}

/// Acquires and records one call.
fn call(b: &mut CircuitBreaker, outcome: Outcome) {
    let permit = b.try_acquire().expect("admitted");
    b.record(permit, outcome);
}

fn reasons(b: &mut CircuitBreaker) -> Vec<&'static str> {
    b.take_transitions().into_iter().map(|t| t.reason).collect()
}

fn open_for(b: &CircuitBreaker) -> Duration {
    Duration::from_millis(b.snapshot().open_for_ms.expect("open"))
}

/// Trips a closed breaker with the consecutive rule (3 failures).
fn trip(b: &mut CircuitBreaker) {
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

#[test]
fn ignored_outcomes_change_nothing_but_free_the_trial_slot() {
    let (mut b, clock) = breaker(BreakerConfig {
        failure_rate_threshold: 0.6,
        minimum_calls: 1,
        consecutive_failures: 2,
        ..base()
    });
    call(&mut b, Outcome::Success);
    call(&mut b, FAIL);
    for _ in 0..50 {
        call(&mut b, Outcome::Ignored);
    }
    let snap = b.snapshot();
    assert_eq!((snap.calls_in_window, snap.consecutive_failures), (2, 1));
    assert_eq!(snap.totals.ignored, 50);
    assert_eq!(b.state(), BreakerState::Closed);
    call(&mut b, FAIL); // consecutive 2 (the ignored calls did not reset the run)
    assert_eq!(b.state(), BreakerState::Open);
    clock.advance(secs(10));
    for _ in 0..10 {
        call(&mut b, Outcome::Ignored);
        assert_eq!(b.state(), BreakerState::HalfOpen);
    }
    call(&mut b, Outcome::Success);
    assert_eq!(b.state(), BreakerState::Closed);
}

#[test]
fn disabled_admits_everything_and_counts_nothing() {
    let (mut b, _clock) = breaker(base());
    b.force(AdminAction::Disable);
    for _ in 0..100 {
        call(&mut b, FAIL);
    }
    assert_eq!(b.state(), BreakerState::Disabled);
    assert_eq!(b.snapshot().consecutive_failures, 0);
    assert_eq!(reasons(&mut b), ["disabled"]);
    b.force(AdminAction::ForceClosed);
    assert_eq!(b.state(), BreakerState::Closed);
}

#[test]
fn forced_open_rejects_everything_until_an_admin_action() {
    let (mut b, clock) = breaker(base());
    b.force(AdminAction::ForceOpen);
    for _ in 0..100 {
        let r = b.try_acquire().unwrap_err();
        assert_eq!(r, Rejected { state: BreakerState::ForcedOpen, retry_after: None });
        clock.advance(secs(1000));
    }
    assert_eq!(b.snapshot().totals.rejected, 100);
    b.force(AdminAction::Reset);
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(reasons(&mut b), ["forced_open", "reset"]);
}

#[test]
fn force_closed_keeps_the_backoff_step_and_reset_clears_it() {
    let (mut b, clock) = breaker(base());
    trip(&mut b);
    b.force(AdminAction::ForceClosed);
    assert_eq!(b.snapshot().backoff_step, 1);
    assert_eq!(b.snapshot().calls_in_window, 0);
    trip(&mut b);
    assert_eq!(open_for(&b), secs(20));
    b.force(AdminAction::Reset);
    assert_eq!(b.snapshot().backoff_step, 0);
    trip(&mut b);
    assert_eq!(open_for(&b), secs(10));
    clock.advance(secs(1));
    assert_eq!(
        reasons(&mut b),
        [
            "consecutive_failures",
            "forced_closed",
            "consecutive_failures",
            "reset",
            "consecutive_failures"
        ]
    );
}

#[test]
fn a_permit_from_an_older_generation_is_ignored() {
    let (mut b, clock) = breaker(base());
    let early = b.try_acquire().unwrap(); // admitted while closed
    assert!(!early.is_trial());
    trip(&mut b);
    clock.advance(secs(10));
    let trial = b.try_acquire().unwrap();
    // The late success of the closed-state call must not count as a trial success.
    b.record(early, Outcome::Success);
    assert_eq!(b.state(), BreakerState::HalfOpen);
    assert_eq!(b.snapshot().trial_successes, 0);
    assert_eq!(b.snapshot().trials_in_flight, 1);
    b.record(trial, Outcome::Success);
    assert_eq!(b.state(), BreakerState::Closed);
    // A failure from the closed generation before the admin reset doesn't count after it.
    let before = b.try_acquire().unwrap();
    b.force(AdminAction::ForceClosed);
    b.record(before, FAIL);
    assert_eq!(b.snapshot().consecutive_failures, 0);
    assert_eq!(b.snapshot().totals.stale, 2);
}

#[test]
fn failure_rate_never_exceeds_one() {
    let (mut b, clock) = breaker(BreakerConfig {
        consecutive_failures: 0,
        failure_rate_threshold: 1.0,
        minimum_calls: 10,
        window: WindowKind::Count { size: 10 },
        ..base()
    });
    let mut permits = Vec::new();
    for _ in 0..9 {
        permits.push(b.try_acquire().unwrap());
    }
    for p in permits {
        b.record(p, FAIL);
        let snap = b.snapshot();
        assert!(snap.failure_rate <= 1.0 && snap.slow_call_rate <= 1.0);
    }
    assert_eq!(b.snapshot().failure_rate, 1.0);
    clock.advance(secs(5));
    call(&mut b, FAIL);
    assert_eq!(b.state(), BreakerState::Open);
    assert_eq!(b.snapshot().failure_rate, 1.0);
}

#[test]
fn zero_turns_a_rule_off() {
    // Consecutive rule off: 50 failures in a row do nothing while the rate rule needs 100 calls.
    let (mut b, _clock) = breaker(BreakerConfig {
        consecutive_failures: 0,
        failure_rate_threshold: 0.5,
        window: WindowKind::Count { size: 100 },
        minimum_calls: 100,
        ..base()
    });
    for _ in 0..50 {
        call(&mut b, FAIL);
    }
    assert_eq!(b.state(), BreakerState::Closed);
    // minimum_calls 0: the rate rule runs from the first call.
    let (mut b, _clock) = breaker(BreakerConfig {
        consecutive_failures: 0,
        failure_rate_threshold: 0.5,
        minimum_calls: 0,
        ..base()
    });
    call(&mut b, FAIL);
    assert_eq!(b.state(), BreakerState::Open);
    // reset_after 0: every trip from closed starts from open_duration again.
    let (mut b, clock) = breaker(BreakerConfig { reset_after: Duration::ZERO, ..base() });
    trip(&mut b);
    clock.advance(secs(10));
    call(&mut b, Outcome::Success);
    trip(&mut b);
    assert_eq!(open_for(&b), secs(10));
}

#[test]
fn validate_names_the_offending_key() {
    let cases: Vec<(BreakerConfig, &str)> = vec![
        (BreakerConfig { half_open_max_calls: 0, ..base() }, "half_open_max_calls"),
        (BreakerConfig { half_open_successes: 0, ..base() }, "half_open_successes"),
        (BreakerConfig { half_open_max_wait: Duration::ZERO, ..base() }, "half_open_max_wait"),
        (BreakerConfig { open_duration: Duration::ZERO, ..base() }, "open_duration"),
        (BreakerConfig { max_open_duration: secs(5), ..base() }, "max_open_duration"),
        (BreakerConfig { failure_rate_threshold: 1.5, ..base() }, "failure_rate_threshold"),
        (BreakerConfig { failure_rate_threshold: f64::NAN, ..base() }, "failure_rate_threshold"),
        (BreakerConfig { slow_call_rate_threshold: -0.1, ..base() }, "slow_call_rate_threshold"),
        (BreakerConfig { jitter: 2.0, ..base() }, "jitter"),
        (BreakerConfig { slow_call_multiplier: 0.5, ..base() }, "slow_call_multiplier"),
        (
            BreakerConfig { backoff: BackoffKind::Exponential { multiplier: 0.9 }, ..base() },
            "backoff.multiplier",
        ),
        (
            BreakerConfig {
                failure_rate_threshold: 0.5,
                window: WindowKind::Count { size: 0 },
                minimum_calls: 0,
                ..base()
            },
            "window.size",
        ),
        (
            BreakerConfig { failure_rate_threshold: 0.5, minimum_calls: 11, ..base() },
            "minimum_calls",
        ),
        (
            BreakerConfig {
                slow_call_rate_threshold: 0.5,
                window: WindowKind::Time { duration: Duration::from_millis(500) },
                ..base()
            },
            "window.duration",
        ),
        (
            BreakerConfig {
                slow_call_rate_threshold: 0.5,
                slow_call_target: Duration::ZERO,
                ..base()
            },
            "slow_call_target",
        ),
        (BreakerConfig { consecutive_failures: 0, ..base() }, "consecutive_failures"),
    ];
    for (config, key) in cases {
        let err = config.validate().expect_err(key);
        assert_eq!(err.key, key);
        assert!(err.to_string().starts_with(key), "{err}");
    }
    assert_eq!(
        BreakerConfig { half_open_max_calls: 0, ..base() }.validate().unwrap_err().to_string(),
        "half_open_max_calls must be at least 1"
    );
    // Zero where it means "off" is valid; so is a count window of 0 while no rate rule uses it.
    let off = BreakerConfig {
        failure_rate_threshold: 0.0,
        slow_call_rate_threshold: 0.0,
        minimum_calls: 0,
        window: WindowKind::Count { size: 0 },
        reset_after: Duration::ZERO,
        jitter: 0.0,
        ..base()
    };
    assert_eq!(off.validate(), Ok(()));
    assert_eq!(BreakerConfig::default().validate(), Ok(()));
}

#[test]
fn config_serde_shape() {
    let json = r#"{
        "consecutive_failures": 0,
        "failure_rate_threshold": 0.25,
        "window": { "kind": "time", "duration": "1m" },
        "open_duration": "15s",
        "backoff": { "kind": "linear", "step": "5s" }
    }"#;
    let config: BreakerConfig = serde_json::from_str(json).unwrap();
    assert_eq!(config.consecutive_failures, 0, "an explicit 0 stays 0");
    assert_eq!(config.window, WindowKind::Time { duration: secs(60) });
    assert_eq!(config.backoff, BackoffKind::Linear { step: secs(5) });
    assert_eq!(config.open_duration, secs(15));
    assert_eq!(config.half_open_max_calls, BreakerConfig::default().half_open_max_calls);
    let count: WindowKind = serde_json::from_str(r#"{ "kind": "count", "size": 20 }"#).unwrap();
    assert_eq!(count, WindowKind::Count { size: 20 });
    let fib: BackoffKind = serde_json::from_str(r#"{ "kind": "fibonacci" }"#).unwrap();
    assert_eq!(fib, BackoffKind::Fibonacci);
    let typo = serde_json::from_str::<BreakerConfig>(r#"{ "half_open_max_call": 3 }"#);
    assert!(typo.unwrap_err().to_string().contains("unknown field"));
    let back: BreakerConfig =
        serde_json::from_str(&serde_json::to_string(&BreakerConfig::default()).unwrap()).unwrap();
    assert_eq!(back, BreakerConfig::default());
}

#[test]
fn snapshot_serialises_in_camel_case() {
    let (mut b, _clock) = breaker(base());
    trip(&mut b);
    let value = serde_json::to_value(b.snapshot()).unwrap();
    assert_eq!(value["state"], "open");
    assert_eq!(value["openForMs"], 10_000);
    assert_eq!(value["consecutiveFailures"], 3);
    assert_eq!(value["totals"]["failures"], 3);
    assert_eq!(BreakerState::ALL.map(BreakerState::as_str)[2], "half_open");
}

#[test]
fn set_config_applies_at_run_time() {
    let (mut b, _clock) = breaker(base());
    call(&mut b, FAIL);
    call(&mut b, FAIL);
    b.set_config(BreakerConfig { consecutive_failures: 10, ..base() });
    call(&mut b, FAIL);
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(b.config().consecutive_failures, 10);
    b.set_config(BreakerConfig { consecutive_failures: 3, ..base() });
    call(&mut b, FAIL);
    assert_eq!(b.state(), BreakerState::Open);
}

// ---------------------------------------------------------------------------------------------
// Property tests

#[derive(Debug, Clone)]
enum Op {
    Acquire,
    /// Records the outstanding permit at `index % len`.
    Record(usize, Recorded),
    Advance(u64),
    Force(AdminAction),
    State,
}

#[derive(Debug, Clone, Copy)]
enum Recorded {
    Success,
    Failure,
    Ignored,
    /// A success that took longer than the slow-call limit.
    Slow,
}

fn op() -> impl Strategy<Value = Op> {
    let recorded = prop_oneof![
        Just(Recorded::Success),
        Just(Recorded::Failure),
        Just(Recorded::Ignored),
        Just(Recorded::Slow),
    ];
    let action = prop_oneof![
        Just(AdminAction::ForceOpen),
        Just(AdminAction::ForceClosed),
        Just(AdminAction::Disable),
        Just(AdminAction::Reset),
    ];
    prop_oneof![
        6 => Just(Op::Acquire),
        6 => (any::<usize>(), recorded).prop_map(|(i, r)| Op::Record(i, r)),
        3 => (0u64..40_000).prop_map(Op::Advance),
        1 => action.prop_map(Op::Force),
        1 => Just(Op::State),
    ]
}

fn config_strategy() -> impl Strategy<Value = BreakerConfig> {
    let backoff = prop_oneof![
        (1.0f64..4.0).prop_map(|multiplier| BackoffKind::Exponential { multiplier }),
        (0u64..20).prop_map(|s| BackoffKind::Linear { step: secs(s) }),
        Just(BackoffKind::Fibonacci),
    ];
    let window = prop_oneof![
        (5u32..20).prop_map(|size| WindowKind::Count { size }),
        (5u64..60).prop_map(|s| WindowKind::Time { duration: secs(s) }),
    ];
    (
        (0u32..5, prop_oneof![Just(0.0), 0.2f64..1.0], prop_oneof![Just(0.0), 0.2f64..1.0]),
        (window, 0u32..5),
        (1u32..4, 1u32..4, 1u64..60),
        (1u64..20, 1u64..10, backoff, 0u64..120),
    )
        .prop_map(|(rules, (window, minimum_calls), half_open, open)| BreakerConfig {
            consecutive_failures: rules.0,
            failure_rate_threshold: rules.1,
            slow_call_rate_threshold: rules.2,
            window,
            minimum_calls,
            slow_call_target: secs(1),
            slow_call_multiplier: 2.0,
            half_open_max_calls: half_open.0,
            half_open_successes: half_open.1,
            half_open_max_wait: secs(half_open.2),
            open_duration: secs(open.0),
            max_open_duration: secs(open.0 * open.1),
            backoff: open.2,
            jitter: 0.0,
            reset_after: secs(open.3),
        })
        .prop_filter("valid", |c| c.validate().is_ok())
}

fn legal(t: &Transition) -> bool {
    use BreakerState::*;
    if t.from == t.to {
        return false;
    }
    match (t.from, t.to) {
        // Admin actions may leave any state.
        (_, ForcedOpen) => t.reason == "forced_open",
        (_, Disabled) => t.reason == "disabled",
        (_, Closed) if ["forced_closed", "reset"].contains(&t.reason) => true,
        (Closed, Open) => {
            ["consecutive_failures", "failure_rate", "slow_call_rate"].contains(&t.reason)
        }
        (Open, HalfOpen) => t.reason == "open_timeout_elapsed",
        (HalfOpen, Closed) => t.reason == "trial_succeeded",
        (HalfOpen, Open) => ["trial_failed", "trial_timed_out"].contains(&t.reason),
        _ => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn breaker_invariants_hold_under_random_use(
        config in config_strategy(),
        ops in prop::collection::vec(op(), 1..300),
    ) {
        let (mut b, clock) = breaker(config.clone());
        let slow = config.slow_call_limit() + Duration::from_millis(1);
        let mut outstanding: Vec<CallPermit> = Vec::new();
        // The last open period since the breaker was last closed: reopenings must not shrink.
        let mut last_open: Option<Duration> = None;
        for op in ops {
            match op {
                Op::Acquire => {
                    if let Ok(p) = b.try_acquire() {
                        outstanding.push(p);
                    }
                }
                Op::Record(i, r) if !outstanding.is_empty() => {
                    let p = outstanding.swap_remove(i % outstanding.len());
                    let outcome = match r {
                        Recorded::Success => Outcome::Success,
                        Recorded::Failure => FAIL,
                        Recorded::Ignored => Outcome::Ignored,
                        Recorded::Slow => {
                            clock.advance(slow);
                            Outcome::Success
                        }
                    };
                    b.record(p, outcome);
                }
                Op::Record(..) => {}
                Op::Advance(ms) => clock.advance(Duration::from_millis(ms)),
                Op::Force(action) => b.force(action),
                Op::State => { b.state(); }
            }
            let snap = b.snapshot();
            let transitions = b.take_transitions();
            let count = transitions.len();
            for (i, t) in transitions.into_iter().enumerate() {
                prop_assert!(legal(&t), "illegal transition {:?}", t);
                match t.to {
                    // The period can be read only if nothing moved on within the same step (a
                    // Force after a lazy reclaim can).
                    BreakerState::Open if i + 1 == count => {
                        prop_assert_eq!(snap.state, BreakerState::Open);
                        let open = Duration::from_millis(snap.open_for_ms.unwrap());
                        prop_assert!(open <= config.max_open_duration);
                        prop_assert!(open >= config.open_duration);
                        if let Some(previous) = last_open {
                            prop_assert!(open >= previous, "{:?} after {:?}", open, previous);
                        }
                        last_open = Some(open);
                    }
                    BreakerState::Closed => last_open = None,
                    _ => {}
                }
            }
            prop_assert!(snap.failure_rate <= 1.0 && snap.slow_call_rate <= 1.0);
            if snap.state == BreakerState::HalfOpen {
                prop_assert!(snap.trials_in_flight <= config.half_open_max_calls);
            } else {
                prop_assert_eq!(snap.trials_in_flight, 0);
            }
            let trials = outstanding.iter().filter(|p| p.is_trial()).count();
            prop_assert!(snap.trials_in_flight as usize <= trials);
        }
    }
}

#[test]
fn trip_opens_a_closed_breaker_for_its_backoff_and_leaves_operator_states_alone() {
    let clock = ManualClock::new();
    let mut breaker = CircuitBreaker::new(BreakerConfig::default(), Arc::new(clock.clone()));
    breaker.trip("restart_limit");
    assert_eq!(breaker.state(), BreakerState::Open);
    let transitions = breaker.take_transitions();
    assert_eq!(transitions.len(), 1);
    assert_eq!(transitions[0].reason, "restart_limit");
    assert!(breaker.snapshot().open_for_ms.is_some());

    breaker.force(AdminAction::ForceOpen);
    breaker.trip("restart_limit");
    assert_eq!(breaker.state(), BreakerState::ForcedOpen);
    breaker.force(AdminAction::Disable);
    breaker.trip("restart_limit");
    assert_eq!(breaker.state(), BreakerState::Disabled);
}
