//! The breaker board: every provider slot's latest breaker snapshot, readable by anyone.
//!
//! Breaker state is owned by the provider actors; the board is a published copy. The router
//! reads it to skip a provider whose every slot would reject the call at once, and
//! `/api/status` reports it. A copy can be a moment stale; the actor's own breaker is the one
//! that admits or rejects, so a stale read costs at most one fast rejection.
//!
//! The board reads the same clock as the breakers: when an open breaker lets a trial through
//! is a time on the breaker's clock, and a board on another clock (a test's manual clock
//! against the real one) would keep skipping a provider whose breaker already admits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use serde::Serialize;

use crate::breaker::{BreakerSnapshot, BreakerState};
use crate::clock::{self, SharedClock};

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BreakerView {
    pub provider: String,
    pub slot: usize,
    #[serde(flatten)]
    pub snapshot: BreakerSnapshot,
    /// When an open breaker lets a trial through again, on the board's clock.
    #[serde(skip)]
    pub reopens_at: Option<Instant>,
}

#[derive(Debug, Clone)]
pub struct BreakerBoard {
    slots: Arc<DashMap<(String, usize), BreakerView>>,
    clock: SharedClock,
}

impl Default for BreakerBoard {
    fn default() -> Self {
        BreakerBoard::with_clock(clock::system())
    }
}

impl BreakerBoard {
    /// A board on the clock the breakers read.
    pub fn with_clock(clock: SharedClock) -> Self {
        BreakerBoard { slots: Arc::default(), clock }
    }

    pub fn publish(&self, provider: &str, slot: usize, snapshot: BreakerSnapshot) {
        let reopens_at = match snapshot.state {
            BreakerState::Open => {
                snapshot.open_for_ms.map(|ms| self.clock.now() + Duration::from_millis(ms))
            }
            _ => None,
        };
        let view = BreakerView { provider: provider.to_string(), slot, snapshot, reopens_at };
        self.slots.insert((provider.to_string(), slot), view);
    }

    pub fn remove(&self, provider: &str, slot: usize) {
        self.slots.remove(&(provider.to_string(), slot));
    }

    /// Whether some slot of the provider would admit a call now (or has never reported).
    pub fn admits(&self, provider: &str) -> bool {
        let mut any = false;
        for entry in self.slots.iter().filter(|e| e.key().0 == provider) {
            any = true;
            let view = entry.value();
            let open = match view.snapshot.state {
                BreakerState::ForcedOpen => true,
                BreakerState::Open => view.reopens_at.is_none_or(|at| at > self.clock.now()),
                _ => false,
            };
            if !open {
                return true;
            }
        }
        !any
    }

    /// Every slot's view, ordered by provider and slot.
    pub fn views(&self) -> Vec<BreakerView> {
        let mut views: Vec<_> = self.slots.iter().map(|e| e.value().clone()).collect();
        views.sort_by(|a, b| (&a.provider, a.slot).cmp(&(&b.provider, b.slot)));
        views
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::{BreakerConfig, CircuitBreaker, FailureKind, Outcome};
    use crate::clock::ManualClock;

    #[test]
    fn an_open_breaker_is_admitted_again_on_the_breakers_clock() {
        let clock = ManualClock::new();
        let shared: SharedClock = Arc::new(clock.clone());
        let config = BreakerConfig {
            consecutive_failures: 1,
            open_duration: Duration::from_secs(30),
            jitter: 0.0,
            ..BreakerConfig::default()
        };
        let mut breaker = CircuitBreaker::new(config, shared.clone());
        let board = BreakerBoard::with_clock(shared);
        board.publish("p", 0, breaker.snapshot());
        assert!(board.admits("p"));

        let permit = breaker.try_acquire().unwrap();
        breaker.record(permit, Outcome::Failure(FailureKind::ServerError));
        board.publish("p", 0, breaker.snapshot());
        assert!(!board.admits("p"), "open: skipped without a call");
        clock.advance(Duration::from_secs(29));
        assert!(!board.admits("p"));
        clock.advance(Duration::from_secs(1));
        assert!(board.admits("p"), "the open period is over on the breaker's clock");
        assert!(breaker.try_acquire().is_ok(), "and the breaker agrees");
        assert!(BreakerBoard::default().admits("never-reported"));
    }
}
