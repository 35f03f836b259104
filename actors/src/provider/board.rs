//! The breaker board: every provider slot's latest breaker snapshot, readable by anyone.
//!
//! Breaker state is owned by the provider actors; the board is a published copy. The router
//! reads it to skip a provider whose every slot would reject the call at once, and
//! `/api/status` reports it. A copy can be a moment stale; the actor's own breaker is the one
//! that admits or rejects, so a stale read costs at most one fast rejection.

use std::sync::Arc;
use std::time::Instant;

use dashmap::DashMap;
use serde::Serialize;

use crate::breaker::{BreakerSnapshot, BreakerState};

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BreakerView {
    pub provider: String,
    pub slot: usize,
    #[serde(flatten)]
    pub snapshot: BreakerSnapshot,
    /// When an open breaker lets a trial through again.
    #[serde(skip)]
    pub reopens_at: Option<Instant>,
}

#[derive(Debug, Clone, Default)]
pub struct BreakerBoard {
    slots: Arc<DashMap<(String, usize), BreakerView>>,
}

impl BreakerBoard {
    pub fn publish(&self, provider: &str, slot: usize, snapshot: BreakerSnapshot) {
        let reopens_at = match snapshot.state {
            BreakerState::Open => {
                snapshot.open_for_ms.map(|ms| Instant::now() + std::time::Duration::from_millis(ms))
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
                BreakerState::Open => view.reopens_at.is_none_or(|at| at > Instant::now()),
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
