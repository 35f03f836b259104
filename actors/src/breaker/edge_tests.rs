//! Deterministic tests of the breaker's edges: ignored outcomes, operator commands, stale
//! permits, configuration checks and the serialised shapes.

use std::sync::Arc;
use std::time::Duration;

use super::tests::{base, breaker, call, open_for, reasons, secs, trip, FAIL};
use super::*;
use crate::clock::ManualClock;

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
