//! A retry budget: failover may add at most a fixed fraction of load on top of first calls.
//!
//! Counting retries per job ("at most 2 retries") multiplies load exactly when providers are
//! failing: every job retries, so an outage triples the traffic sent to the ones still
//! standing. A budget bounds retries across all jobs instead: each first call deposits
//! `ratio` tokens, each retry withdraws one, and a small floor per second lets a quiet
//! system still fail over. Time comes from the injected clock.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::clock::SharedClock;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RetryBudgetConfig {
    /// Retries allowed per first call (0.2 = failover adds at most 20% load).
    pub ratio: f64,
    /// Retries always allowed per second, however few first calls there were.
    pub min_per_second: f64,
    /// The most retries that can be saved up.
    pub max_balance: f64,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        RetryBudgetConfig { ratio: 0.2, min_per_second: 10.0, max_balance: 100.0 }
    }
}

impl RetryBudgetConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=10.0).contains(&self.ratio) {
            return Err("ratio must be between 0 and 10".into());
        }
        if self.min_per_second < 0.0 {
            return Err("min_per_second must not be negative".into());
        }
        if self.max_balance < 1.0 {
            return Err("max_balance must be at least 1".into());
        }
        Ok(())
    }
}

#[derive(Debug)]
struct State {
    balance: f64,
    refilled: Instant,
}

/// Shared by every run of the router; cheap to clone.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    config: RetryBudgetConfig,
    clock: SharedClock,
    state: Arc<Mutex<State>>,
}

impl RetryBudget {
    pub fn new(config: RetryBudgetConfig, clock: SharedClock) -> Self {
        let now = clock.now();
        // Start with one second's floor so the first failure can fail over.
        let balance = config.min_per_second.min(config.max_balance);
        RetryBudget { config, clock, state: Arc::new(Mutex::new(State { balance, refilled: now })) }
    }

    fn with_state<T>(&self, f: impl FnOnce(&mut State, &RetryBudgetConfig) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.clock.now();
        let elapsed = now.saturating_duration_since(state.refilled).as_secs_f64();
        state.balance =
            (state.balance + elapsed * self.config.min_per_second).min(self.config.max_balance);
        state.refilled = now;
        f(&mut state, &self.config)
    }

    /// A first call was made.
    pub fn deposit(&self) {
        self.with_state(|s, c| s.balance = (s.balance + c.ratio).min(c.max_balance));
    }

    /// Asks to retry; answers whether the budget allows it (and spends it if so).
    pub fn try_withdraw(&self) -> bool {
        self.with_state(|s, _| {
            // Deposits of 0.2 add up to 0.999...; a whole retry must not be lost to rounding.
            if s.balance >= 1.0 - 1e-9 {
                s.balance = (s.balance - 1.0).max(0.0);
                true
            } else {
                false
            }
        })
    }

    pub fn balance(&self) -> f64 {
        self.with_state(|s, _| s.balance)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::clock::ManualClock;

    fn budget(clock: &ManualClock) -> RetryBudget {
        let config = RetryBudgetConfig { ratio: 0.2, min_per_second: 0.5, max_balance: 10.0 };
        RetryBudget::new(config, Arc::new(clock.clone()))
    }

    #[test]
    fn retries_are_bounded_by_a_fraction_of_first_calls() {
        let clock = ManualClock::new();
        let budget = budget(&clock);
        assert!(!budget.try_withdraw(), "half a token at start is not a retry");
        for _ in 0..100 {
            budget.deposit();
        }
        // 100 calls at 0.2 would be 20 retries, but the balance is capped at 10.
        let allowed = (0..50).filter(|_| budget.try_withdraw()).count();
        assert_eq!(allowed, 10);
        for _ in 0..10 {
            budget.deposit();
        }
        assert_eq!((0..50).filter(|_| budget.try_withdraw()).count(), 2);
    }

    #[test]
    fn the_floor_refills_with_time() {
        let clock = ManualClock::new();
        let budget = budget(&clock);
        assert!(!budget.try_withdraw());
        clock.advance(Duration::from_secs(1));
        assert!(budget.try_withdraw(), "0.5 at start plus 0.5 per second");
        assert!(!budget.try_withdraw());
        clock.advance(Duration::from_secs(3600));
        assert!((budget.balance() - 10.0).abs() < 1e-9, "capped at max_balance");
    }

    #[test]
    fn invalid_settings_are_refused() {
        let bad = RetryBudgetConfig { ratio: -1.0, ..RetryBudgetConfig::default() };
        assert!(bad.validate().unwrap_err().contains("ratio"));
        let bad = RetryBudgetConfig { max_balance: 0.5, ..RetryBudgetConfig::default() };
        assert!(bad.validate().unwrap_err().contains("max_balance"));
    }
}
