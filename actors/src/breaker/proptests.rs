//! Property tests of the breaker: random sequences of calls, outcomes, clock moves and
//! operator commands, checked against the invariants that matter in production.

use std::time::Duration;

use proptest::prelude::*;

use super::tests::{breaker, FAIL};
use super::*;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

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
