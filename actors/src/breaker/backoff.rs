//! How long the breaker stays open.
//!
//! Step k is the number of openings since the backoff last reset: the first opening uses step 0
//! (`open_duration` exactly), each reopening without a stable closed period one step more. The
//! duration grows with the step, is capped at `max_open_duration`, and then jittered; the jittered
//! value is capped again so that jitter can never push an open period past the cap. All arithmetic
//! saturates: a huge step simply sits at the cap.

use std::time::Duration;

use rand::Rng;

use super::config::{BackoffKind, BreakerConfig};

/// The open duration for backoff `step`, before jitter, capped at `max_open_duration`.
pub fn open_duration_for_step(config: &BreakerConfig, step: u32) -> Duration {
    let base = config.open_duration;
    let cap = config.max_open_duration;
    let raw = match config.backoff {
        BackoffKind::Exponential { multiplier } => {
            // powi overflows to +inf, which try_from_secs_f64 rejects: that is "past the cap".
            let exponent = i32::try_from(step).unwrap_or(i32::MAX);
            Duration::try_from_secs_f64(base.as_secs_f64() * multiplier.powi(exponent))
                .unwrap_or(Duration::MAX)
        }
        BackoffKind::Linear { step: increment } => increment
            .checked_mul(step)
            .and_then(|extra| base.checked_add(extra))
            .unwrap_or(Duration::MAX),
        BackoffKind::Fibonacci => base.checked_mul(fibonacci(step)).unwrap_or(Duration::MAX),
    };
    raw.min(cap)
}

/// fib(step + 1) for step = 0, 1, 2, ...: 1, 1, 2, 3, 5, 8, ...; saturates at u32::MAX.
fn fibonacci(step: u32) -> u32 {
    let (mut a, mut b) = (1u32, 1u32);
    for _ in 0..step {
        let next = a.saturating_add(b);
        a = b;
        b = next;
        if a == u32::MAX {
            break;
        }
    }
    a
}

/// Spreads `duration` uniformly over +-`jitter` of itself, then re-applies `cap`.
pub fn jittered(duration: Duration, jitter: f64, cap: Duration, rng: &mut impl Rng) -> Duration {
    if jitter <= 0.0 || duration.is_zero() {
        return duration.min(cap);
    }
    let jitter = jitter.min(1.0);
    let factor = 1.0 + rng.gen_range(-jitter..=jitter);
    Duration::try_from_secs_f64(duration.as_secs_f64() * factor).unwrap_or(cap).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(list: &[u64]) -> Vec<Duration> {
        list.iter().map(|s| Duration::from_secs(*s)).collect()
    }

    fn sequence(backoff: BackoffKind, steps: u32) -> Vec<Duration> {
        let config = BreakerConfig {
            open_duration: Duration::from_secs(10),
            max_open_duration: Duration::from_secs(100),
            backoff,
            ..BreakerConfig::default()
        };
        (0..steps).map(|k| open_duration_for_step(&config, k)).collect()
    }

    #[test]
    fn exponential_doubles_up_to_the_cap() {
        let got = sequence(BackoffKind::Exponential { multiplier: 2.0 }, 6);
        assert_eq!(got, secs(&[10, 20, 40, 80, 100, 100]));
        assert_eq!(
            open_duration_for_step(&BreakerConfig::default(), u32::MAX),
            BreakerConfig::default().max_open_duration
        );
    }

    #[test]
    fn linear_adds_the_step_up_to_the_cap() {
        let got = sequence(BackoffKind::Linear { step: Duration::from_secs(25) }, 6);
        assert_eq!(got, secs(&[10, 35, 60, 85, 100, 100]));
        let huge = sequence(BackoffKind::Linear { step: Duration::MAX }, 3);
        assert_eq!(huge, secs(&[10, 100, 100]));
    }

    #[test]
    fn fibonacci_follows_1_1_2_3_5_up_to_the_cap() {
        let got = sequence(BackoffKind::Fibonacci, 8);
        assert_eq!(got, secs(&[10, 10, 20, 30, 50, 80, 100, 100]));
        assert_eq!(fibonacci(200), u32::MAX);
    }

    #[test]
    fn jitter_stays_within_its_band_and_under_the_cap() {
        let mut rng = rand::thread_rng();
        let cap = Duration::from_secs(100);
        for _ in 0..1000 {
            let d = jittered(Duration::from_secs(50), 0.2, cap, &mut rng);
            assert!(d >= Duration::from_secs(40) && d <= Duration::from_secs(60), "{d:?}");
            let at_cap = jittered(cap, 1.0, cap, &mut rng);
            assert!(at_cap <= cap);
        }
        assert_eq!(jittered(Duration::from_secs(5), 0.0, cap, &mut rng), Duration::from_secs(5));
    }
}
