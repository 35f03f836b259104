//! Global semaphores: engine-wide budgets shared by every service.
//!
//! Bulkheads bound each service on its own; a budget bounds a resource that several services
//! share, e.g. "ai.total_requests" = 10 across all AI providers, or "container.total" = 4 sandbox
//! containers. A job takes a permit from each budget it needs, after its bulkhead slot, and the
//! permit is released on drop, also while unwinding from a panic.
//!
//! Built on `tokio::sync::Semaphore`, which is fair (FIFO) and cancellation-safe. Waiting is
//! bounded by a timeout so a job never hangs on a budget; the caller requeues it instead.
//!
//! Resizing at run time: growing adds permits at once. Shrinking removes free permits at once
//! and, when too few are free, records the rest as a debt that permits pay off as they are
//! released (they are forgotten instead of returned), so running work is never interrupted and
//! the new capacity holds once it finishes. A semaphore of 0 permits admits nothing: every
//! acquire times out (the config loader rejects 0, see [`Semaphores::from_config`]).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::breaker::ConfigError;

/// A budget could not be had in time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SemaphoreError {
    #[error("no {name} permit within {waited:?}")]
    Timeout { name: String, waited: Duration },
}

/// A read-only view for the admin API and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SemaphoreStats {
    pub name: String,
    pub capacity: usize,
    pub available: usize,
    pub in_use: usize,
}

struct Shared {
    name: String,
    semaphore: Arc<Semaphore>,
    /// The configured capacity. The lock also serialises resizes.
    capacity: Mutex<usize>,
    /// Permits to forget on release, owed by a shrink that found too few free.
    debt: AtomicUsize,
}

impl Shared {
    /// Takes one unit of debt, if any is owed.
    fn take_debt(&self) -> bool {
        self.debt.fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1)).is_ok()
    }
}

/// One named budget; clones share it.
#[derive(Clone)]
pub struct GlobalSemaphore {
    shared: Arc<Shared>,
}

impl fmt::Debug for GlobalSemaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GlobalSemaphore").field("stats", &self.stats()).finish()
    }
}

impl GlobalSemaphore {
    /// A budget of `permits` (capped at tokio's `Semaphore::MAX_PERMITS`).
    pub fn new(name: impl Into<String>, permits: usize) -> Self {
        let permits = permits.min(Semaphore::MAX_PERMITS);
        Self {
            shared: Arc::new(Shared {
                name: name.into(),
                semaphore: Arc::new(Semaphore::new(permits)),
                capacity: Mutex::new(permits),
                debt: AtomicUsize::new(0),
            }),
        }
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Waits up to `timeout` for a permit, first come first served. A free permit is taken
    /// even with a zero timeout.
    pub async fn acquire(&self, timeout: Duration) -> Result<SemaphorePermit, SemaphoreError> {
        let started = tokio::time::Instant::now();
        let semaphore = Arc::clone(&self.shared.semaphore);
        match tokio::time::timeout(timeout, semaphore.acquire_owned()).await {
            Ok(Ok(permit)) => Ok(self.wrap(permit)),
            // The semaphore is never closed, so the only failure is the timeout.
            Ok(Err(_)) | Err(_) => Err(SemaphoreError::Timeout {
                name: self.shared.name.clone(),
                waited: started.elapsed(),
            }),
        }
    }

    /// Takes a permit only if one is free now.
    pub fn try_acquire(&self) -> Option<SemaphorePermit> {
        let semaphore = Arc::clone(&self.shared.semaphore);
        semaphore.try_acquire_owned().ok().map(|permit| self.wrap(permit))
    }

    fn wrap(&self, permit: OwnedSemaphorePermit) -> SemaphorePermit {
        SemaphorePermit { permit: Some(permit), shared: Arc::clone(&self.shared) }
    }

    pub fn stats(&self) -> SemaphoreStats {
        let capacity = *self.shared.capacity.lock().unwrap_or_else(|e| e.into_inner());
        let available = self.shared.semaphore.available_permits();
        let debt = self.shared.debt.load(Ordering::Acquire);
        SemaphoreStats {
            name: self.shared.name.clone(),
            capacity,
            // Permits handed out = all permits in circulation (capacity + those still owed)
            // minus the free ones.
            in_use: (capacity + debt).saturating_sub(available),
            available,
        }
    }

    /// Changes the capacity at run time; see the module docs for how shrinking works.
    pub fn resize(&self, permits: usize) {
        let permits = permits.min(Semaphore::MAX_PERMITS);
        let mut capacity = self.shared.capacity.lock().unwrap_or_else(|e| e.into_inner());
        if permits > *capacity {
            let mut grow = permits - *capacity;
            // Cancel debt first: those permits simply stay in circulation.
            while grow > 0 && self.shared.take_debt() {
                grow -= 1;
            }
            self.shared.semaphore.add_permits(grow);
        } else {
            let shrink = *capacity - permits;
            let removed = self.shared.semaphore.forget_permits(shrink);
            self.shared.debt.fetch_add(shrink - removed, Ordering::AcqRel);
        }
        *capacity = permits;
    }
}

/// A held budget unit; released on drop.
#[must_use = "the permit is released as soon as it is dropped"]
pub struct SemaphorePermit {
    /// Always `Some` until drop.
    permit: Option<OwnedSemaphorePermit>,
    shared: Arc<Shared>,
}

impl fmt::Debug for SemaphorePermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SemaphorePermit").field("name", &self.shared.name).finish()
    }
}

impl Drop for SemaphorePermit {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            if self.shared.take_debt() {
                // Pays off a shrink: the permit leaves circulation instead of going back.
                permit.forget();
            }
            // Otherwise dropping the tokio permit returns it to the semaphore.
        }
    }
}

/// All budgets by name.
#[derive(Debug, Clone, Default)]
pub struct Semaphores {
    by_name: BTreeMap<String, GlobalSemaphore>,
}

impl Semaphores {
    /// Builds the budgets from a config map (name -> permits). 0 permits is rejected: such a
    /// budget would make every job that needs it time out.
    pub fn from_config<I, S>(config: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (S, usize)>,
        S: Into<String>,
    {
        let mut by_name = BTreeMap::new();
        for (name, permits) in config {
            let name = name.into();
            if permits == 0 {
                return Err(ConfigError::new(
                    "semaphores",
                    format!("entry {name:?} must have at least 1 permit"),
                ));
            }
            by_name.insert(name.clone(), GlobalSemaphore::new(name, permits));
        }
        Ok(Self { by_name })
    }

    pub fn get(&self, name: &str) -> Option<&GlobalSemaphore> {
        self.by_name.get(name)
    }

    /// Every budget, by name.
    pub fn iter(&self) -> impl Iterator<Item = &GlobalSemaphore> {
        self.by_name.values()
    }

    pub fn stats(&self) -> Vec<SemaphoreStats> {
        self.iter().map(GlobalSemaphore::stats).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn acquire_times_out_when_the_budget_is_spent() {
        let s = GlobalSemaphore::new("ai.total_requests", 1);
        let held = s.acquire(Duration::ZERO).await.expect("a free permit needs no wait");
        let err = s.acquire(Duration::from_secs(3)).await.unwrap_err();
        assert_eq!(
            err,
            SemaphoreError::Timeout {
                name: "ai.total_requests".into(),
                waited: Duration::from_secs(3)
            }
        );
        let waiter = {
            let s = s.clone();
            tokio::spawn(async move { s.acquire(Duration::from_secs(10)).await.is_ok() })
        };
        tokio::task::yield_now().await;
        drop(held);
        assert!(waiter.await.unwrap(), "a release wakes the waiter before its timeout");
        assert_eq!(s.stats().in_use, 0);
    }

    #[tokio::test]
    async fn permits_are_released_when_the_holder_panics() {
        let s = GlobalSemaphore::new("container.total", 2);
        let task = {
            let s = s.clone();
            tokio::spawn(async move {
                let _permit = s.acquire(Duration::ZERO).await.unwrap();
                let _other = s.try_acquire().unwrap();
                panic!("deliberate test panic");
            })
        };
        assert!(task.await.unwrap_err().is_panic());
        assert_eq!(
            s.stats(),
            SemaphoreStats { name: "container.total".into(), capacity: 2, available: 2, in_use: 0 }
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_permit_is_lost_under_many_tasks() {
        let s = GlobalSemaphore::new("load", 3);
        let (running, peak, granted) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        let mut tasks = Vec::new();
        for t in 0..48usize {
            let (s, running, peak, granted) =
                (s.clone(), running.clone(), peak.clone(), granted.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..100usize {
                    // Some waits are cut short (and so cancelled) at arbitrary points.
                    let timeout = Duration::from_micros(((t + i) % 4) as u64 * 100);
                    if let Ok(permit) = s.acquire(timeout).await {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        granted.fetch_add(1, Ordering::SeqCst);
                        tokio::task::yield_now().await;
                        running.fetch_sub(1, Ordering::SeqCst);
                        drop(permit);
                    }
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert!(peak.load(Ordering::SeqCst) <= 3);
        assert!(granted.load(Ordering::SeqCst) > 0);
        let stats = s.stats();
        assert_eq!((stats.available, stats.in_use), (3, 0));
    }

    #[tokio::test]
    async fn resize_grows_at_once_and_shrinks_as_permits_come_back() {
        let s = GlobalSemaphore::new("r", 2);
        let a = s.try_acquire().unwrap();
        let b = s.try_acquire().unwrap();
        s.resize(1); // nothing free: one permit owed
        assert_eq!((s.stats().capacity, s.stats().in_use, s.stats().available), (1, 2, 0));
        drop(a); // pays the debt
        assert_eq!((s.stats().in_use, s.stats().available), (1, 0));
        assert!(s.try_acquire().is_none());
        drop(b);
        assert_eq!(s.stats().available, 1);
        s.resize(3);
        let held: Vec<_> = (0..3).map(|_| s.try_acquire().unwrap()).collect();
        assert!(s.try_acquire().is_none());
        s.resize(1);
        s.resize(2); // cancels one unit of the 2 owed
        drop(held);
        assert_eq!((s.stats().available, s.stats().in_use, s.stats().capacity), (2, 0, 2));
    }

    #[test]
    fn budgets_are_built_from_config() {
        let set =
            Semaphores::from_config([("ai.total_requests", 10), ("container.total", 4)]).unwrap();
        assert_eq!(set.get("ai.total_requests").unwrap().stats().capacity, 10);
        assert_eq!(set.get("container.total").unwrap().name(), "container.total");
        assert!(set.get("missing").is_none());
        assert_eq!(set.stats().len(), 2);
        let err = Semaphores::from_config([("container.total", 0)]).unwrap_err();
        assert_eq!(err.key, "semaphores");
        assert!(err.to_string().contains("container.total"));
    }
}
