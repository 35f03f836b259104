//! Bulkhead: bounds how many jobs run at once against one service, with a small priority queue.
//!
//! Each service's supervisor owns a [`Bulkhead`] (cheap to clone, shared by its workers). A job
//! calls [`Bulkhead::acquire`] and holds the returned [`BulkheadPermit`] while it runs; dropping
//! the permit (also during a panic's unwinding) frees the slot. When every slot is busy the job
//! waits in one of three lanes (high, normal, low) for at most `queue_timeout`; when the queue is
//! full it is rejected at once with a `retry_after` hint so the caller can requeue it rather than
//! pile up.
//!
//! Design:
//! - One `std::sync::Mutex` guards the counts and the lanes. It is never held across an `.await`
//!   and critical sections are a few instructions, so an uncontended admit-and-release costs two
//!   short lock round trips.
//! - A released slot is handed directly to the next waiter through its oneshot channel (the
//!   active count does not dip), so a newcomer cannot barge past the queue.
//! - Lanes are served strictly by priority, except that a lower lane passed over
//!   `starvation_limit` times in a row while it waited is served once (0 = strict priority).
//! - Cancellation-safe: dropping an `acquire` future removes its waiter; a slot already sent to a
//!   waiter that is gone travels inside a `Slot` guard whose drop passes it on, so no slot is
//!   ever lost or duplicated.
//! - A bulkhead rejection is local back-pressure, not a provider failure: callers should record
//!   it on the circuit breaker as `Outcome::Ignored` (never as a failure).
//!
//! Limits: `max_queued` bounds all lanes together, and a full queue rejects even a high-priority
//! job (no eviction). Shrinking `max_concurrent` never interrupts running work; it takes effect as
//! permits are released. `retry_after` is an estimate from the recent average run time.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

/// Bounds for the `retry_after` hint.
const MIN_RETRY_AFTER: Duration = Duration::from_millis(100);
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// `retry_after` of a draining bulkhead: the service is going away; requeue, don't spin.
const DRAINING_RETRY_AFTER: Duration = Duration::from_secs(1);

mod types;

pub use types::{
    BulkheadConfig, BulkheadError, BulkheadObserver, BulkheadStats, LaneCounts, NoopObserver,
    Priority,
};

/// What a waiter receives.
enum Grant {
    Slot(Slot),
    Draining,
}

/// A slot on its way to a waiter. If the waiter is gone (its future dropped after the slot was
/// sent), dropping the channel drops this, and the slot is released to the next waiter.
struct Slot {
    /// `None` once the slot has been turned into a permit or was never delivered.
    inner: Option<Arc<Inner>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            inner.release(None);
        }
    }
}

struct Waiter {
    /// Lets a cancelled or timed-out waiter find and remove itself.
    id: u64,
    tx: oneshot::Sender<Grant>,
}

struct State {
    config: BulkheadConfig,
    /// Slots in use, including slots sent to waiters that have not picked them up yet.
    active: usize,
    lanes: [VecDeque<Waiter>; 3],
    /// Sum of the lane lengths.
    queued: usize,
    /// Off = admit everything at once (the enable_bulkhead flag), still counting.
    enabled: bool,
    /// Set by `drain`: admit nothing until `resume`.
    draining: bool,
    /// Per lane: grants in a row to a higher lane while this lane waited (anti-starvation).
    passed_over: [u32; 3],
    next_waiter_id: u64,
    /// Moving average of run time in ns, for `retry_after` hints.
    avg_run_nanos: u64,
}

impl State {
    /// Whether a free slot may be taken right now.
    fn has_room(&self) -> bool {
        !self.enabled || self.active < self.config.max_concurrent
    }

    /// The lane to serve next, if any waits.
    fn next_lane(&self) -> Option<usize> {
        let limit = self.config.starvation_limit;
        if limit > 0 {
            // Lowest starved lane first: it has waited longest relative to its priority.
            if let Some(lane) =
                (1..3).rev().find(|&l| !self.lanes[l].is_empty() && self.passed_over[l] >= limit)
            {
                return Some(lane);
            }
        }
        (0..3).find(|&l| !self.lanes[l].is_empty())
    }

    fn note_grant(&mut self, lane: usize) {
        self.passed_over[lane] = 0;
        for lower in lane + 1..3 {
            self.passed_over[lower] =
                if self.lanes[lower].is_empty() { 0 } else { self.passed_over[lower] + 1 };
        }
    }

    fn remove_waiter(&mut self, lane: usize, id: u64) -> bool {
        match self.lanes[lane].iter().position(|w| w.id == id) {
            Some(index) => {
                self.lanes[lane].remove(index);
                self.queued -= 1;
                true
            }
            None => false,
        }
    }

    /// An estimate of when a slot frees up for a newcomer: the average run time for every
    /// "round" of `max_concurrent` jobs ahead of it.
    fn retry_hint(&self) -> Duration {
        let average = Duration::from_nanos(self.avg_run_nanos);
        let hint = if average.is_zero() {
            self.config.queue_timeout
        } else {
            let rounds = (self.queued / self.config.max_concurrent.max(1)) as u32 + 1;
            average.saturating_mul(rounds)
        };
        hint.clamp(MIN_RETRY_AFTER, MAX_RETRY_AFTER)
    }

    fn lane_counts(&self) -> LaneCounts {
        LaneCounts {
            high: self.lanes[0].len(),
            normal: self.lanes[1].len(),
            low: self.lanes[2].len(),
        }
    }
}

struct Inner {
    service: String,
    observer: Arc<dyn BulkheadObserver>,
    state: Mutex<State>,
    // Counters outside the lock: read by stats(), bumped after the lock is released.
    executed: AtomicU64,
    rejected: AtomicU64,
    timed_out: AtomicU64,
    /// Woken when `active` reaches 0 while draining.
    idle: Notify,
}

impl Inner {
    /// A poisoned lock only means an observer panicked mid-update; the counts are still whole.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn gauges(&self, state: &State) {
        self.observer.gauges(&self.service, state.active, state.queued);
    }

    /// Frees one slot: hands it to the next waiter, or returns it to the pool.
    fn release(self: &Arc<Self>, ran: Option<Duration>) {
        let mut state = self.lock();
        if let Some(ran) = ran {
            let ran = u64::try_from(ran.as_nanos()).unwrap_or(u64::MAX);
            let avg = state.avg_run_nanos;
            state.avg_run_nanos = if avg == 0 { ran } else { avg - avg / 8 + ran / 8 };
        }
        state.active = state.active.saturating_sub(1);
        self.dispatch(&mut state);
        self.gauges(&state);
        let wake_drain = state.draining && state.active == 0;
        drop(state);
        if wake_drain {
            self.idle.notify_waiters();
        }
    }

    /// Hands free slots to waiters, best lane first, while there is room.
    fn dispatch(self: &Arc<Self>, state: &mut State) {
        while state.has_room() {
            let Some(lane) = state.next_lane() else {
                return;
            };
            let Some(waiter) = state.lanes[lane].pop_front() else {
                return;
            };
            state.queued -= 1;
            let slot = Slot { inner: Some(Arc::clone(self)) };
            match waiter.tx.send(Grant::Slot(slot)) {
                Ok(()) => {
                    state.active += 1;
                    state.note_grant(lane);
                }
                // The receiver is gone. Defensive: a waiter leaves its lane before its receiver
                // is dropped, so this should not happen. Defuse the slot (we hold the lock and
                // `active` was not bumped) and try the next waiter.
                Err(Grant::Slot(mut slot)) => slot.inner = None,
                Err(Grant::Draining) => {}
            }
        }
    }

    fn admit(self: Arc<Self>, waited: Duration) -> BulkheadPermit {
        self.executed.fetch_add(1, Ordering::Relaxed);
        self.observer.admitted(&self.service, waited);
        BulkheadPermit { inner: self, started: Instant::now() }
    }

    fn reject(&self, error: BulkheadError) -> BulkheadError {
        match error {
            BulkheadError::QueueTimeout { .. } => &self.timed_out,
            _ => &self.rejected,
        }
        .fetch_add(1, Ordering::Relaxed);
        self.observer.rejected(&self.service, error.reason());
        error
    }

    fn draining_error(&self) -> BulkheadError {
        self.reject(BulkheadError::Draining { service: self.service.clone() })
    }
}

/// Removes a waiter whose `acquire` future is dropped before it was settled. Its receiver is
/// a field, so it is dropped after `drop` has released the lock: a slot already sent to it is
/// then released (and passed on) without re-entering the lock.
struct Waiting<'a> {
    inner: &'a Inner,
    lane: usize,
    id: u64,
    rx: oneshot::Receiver<Grant>,
    settled: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if !self.settled {
            let mut state = self.inner.lock();
            if state.remove_waiter(self.lane, self.id) {
                self.inner.gauges(&state);
            }
        }
    }
}

/// A concurrency limiter with a priority queue; see the module docs.
#[derive(Clone)]
pub struct Bulkhead {
    inner: Arc<Inner>,
}

impl fmt::Debug for Bulkhead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bulkhead").field("stats", &self.stats()).finish()
    }
}

impl Bulkhead {
    /// A bulkhead for `service`. `config` is assumed to have passed
    /// [`BulkheadConfig::validate`]; a `max_concurrent` of 0 is treated as 1.
    pub fn new(
        service: impl Into<String>,
        config: BulkheadConfig,
        observer: Arc<dyn BulkheadObserver>,
    ) -> Self {
        let config = BulkheadConfig { max_concurrent: config.max_concurrent.max(1), ..config };
        let state = State {
            config,
            active: 0,
            lanes: Default::default(),
            queued: 0,
            enabled: true,
            draining: false,
            passed_over: [0; 3],
            next_waiter_id: 0,
            avg_run_nanos: 0,
        };
        Self {
            inner: Arc::new(Inner {
                service: service.into(),
                observer,
                state: Mutex::new(state),
                executed: AtomicU64::new(0),
                rejected: AtomicU64::new(0),
                timed_out: AtomicU64::new(0),
                idle: Notify::new(),
            }),
        }
    }

    pub fn service(&self) -> &str {
        &self.inner.service
    }

    /// Waits for a slot in `priority`'s lane, at most `queue_timeout`. Fails at once when the
    /// queue is full or the bulkhead is draining. Cancellation-safe.
    pub async fn acquire(&self, priority: Priority) -> Result<BulkheadPermit, BulkheadError> {
        let lane = priority.lane();
        let (id, rx, timeout) = {
            let mut state = self.inner.lock();
            if state.draining {
                drop(state);
                return Err(self.inner.draining_error());
            }
            if state.has_room() && state.queued == 0 {
                state.active += 1;
                self.inner.gauges(&state);
                drop(state);
                return Ok(Arc::clone(&self.inner).admit(Duration::ZERO));
            }
            if state.queued >= state.config.max_queued {
                let error = self.full(&state);
                drop(state);
                return Err(self.inner.reject(error));
            }
            let (tx, rx) = oneshot::channel();
            let id = state.next_waiter_id;
            state.next_waiter_id += 1;
            if state.lanes[lane].is_empty() {
                state.passed_over[lane] = 0;
            }
            state.lanes[lane].push_back(Waiter { id, tx });
            state.queued += 1;
            self.inner.gauges(&state);
            (id, rx, state.config.queue_timeout)
        };
        let enqueued = Instant::now();
        let mut waiting = Waiting { inner: &self.inner, lane, id, rx, settled: false };
        let grant = match tokio::time::timeout(timeout, &mut waiting.rx).await {
            Ok(received) => received.ok(),
            Err(_elapsed) => {
                let (removed, retry_after) = {
                    let mut state = self.inner.lock();
                    let removed = state.remove_waiter(lane, id);
                    if removed {
                        self.inner.gauges(&state);
                    }
                    (removed, state.retry_hint())
                };
                if removed {
                    waiting.settled = true;
                    let waited = enqueued.elapsed();
                    let service = self.inner.service.clone();
                    return Err(self.inner.reject(BulkheadError::QueueTimeout {
                        service,
                        waited,
                        retry_after,
                    }));
                }
                // Not in its lane any more: a grant was sent under the lock just as the timer
                // fired, so it is in the channel now. Take it rather than bounce it.
                waiting.rx.try_recv().ok()
            }
        };
        waiting.settled = true;
        match grant {
            Some(Grant::Slot(mut slot)) => match slot.inner.take() {
                Some(inner) => Ok(inner.admit(enqueued.elapsed())),
                None => Err(self.inner.draining_error()),
            },
            // Drain rejected the waiter (or dropped its sender).
            Some(Grant::Draining) | None => Err(self.inner.draining_error()),
        }
    }

    /// Takes a slot only if one is free now and nobody is waiting; never queues.
    pub fn try_acquire(&self) -> Result<BulkheadPermit, BulkheadError> {
        let mut state = self.inner.lock();
        if state.draining {
            drop(state);
            return Err(self.inner.draining_error());
        }
        if state.has_room() && state.queued == 0 {
            state.active += 1;
            self.inner.gauges(&state);
            drop(state);
            return Ok(Arc::clone(&self.inner).admit(Duration::ZERO));
        }
        let error = self.full(&state);
        drop(state);
        Err(self.inner.reject(error))
    }

    /// Off: admit everything at once (counts still kept), releasing every waiter now. On again:
    /// the limit applies to new admissions; running work above it finishes normally.
    pub fn set_enabled(&self, enabled: bool) {
        let mut state = self.inner.lock();
        state.enabled = enabled;
        self.inner.dispatch(&mut state);
        self.inner.gauges(&state);
    }

    /// Resizes at run time: growing admits waiters now, shrinking lets running work finish.
    /// 0 is treated as 1.
    pub fn set_max_concurrent(&self, n: usize) {
        let mut state = self.inner.lock();
        state.config.max_concurrent = n.max(1);
        self.inner.dispatch(&mut state);
        self.inner.gauges(&state);
    }

    pub fn stats(&self) -> BulkheadStats {
        let state = self.inner.lock();
        let max_concurrent = state.config.max_concurrent;
        BulkheadStats {
            service: self.inner.service.clone(),
            max_concurrent,
            max_queued: state.config.max_queued,
            active: state.active,
            queued: state.queued,
            queued_by_lane: state.lane_counts(),
            executed: self.inner.executed.load(Ordering::Relaxed),
            rejected: self.inner.rejected.load(Ordering::Relaxed),
            timed_out: self.inner.timed_out.load(Ordering::Relaxed),
            saturated: state.active >= max_concurrent
                && (state.queued > 0 || state.config.max_queued == 0),
            enabled: state.enabled,
            draining: state.draining,
        }
    }

    /// Stops admitting (new acquires fail with `Draining`), rejects every waiting job with
    /// `Draining` so its caller can requeue it, then waits until no job runs. The bulkhead keeps
    /// rejecting until [`resume`](Self::resume).
    pub async fn drain(&self) {
        {
            let mut state = self.inner.lock();
            state.draining = true;
            for lane in &mut state.lanes {
                for waiter in lane.drain(..) {
                    // A waiter that is already gone is simply skipped.
                    let _ = waiter.tx.send(Grant::Draining);
                }
            }
            tracing::debug!(
                service = %self.inner.service,
                rejected_waiters = state.queued,
                running = state.active,
                "bulkhead draining"
            );
            state.queued = 0;
            self.inner.gauges(&state);
        }
        loop {
            let idle = self.inner.idle.notified();
            tokio::pin!(idle);
            // Registered before the check, so a release between the check and the await
            // still wakes us.
            idle.as_mut().enable();
            if self.inner.lock().active == 0 {
                return;
            }
            idle.await;
        }
    }

    /// Admits again after [`drain`](Self::drain).
    pub fn resume(&self) {
        self.inner.lock().draining = false;
    }

    fn full(&self, state: &State) -> BulkheadError {
        BulkheadError::Full {
            service: self.inner.service.clone(),
            active: state.active,
            queued: state.queued,
            retry_after: state.retry_hint(),
        }
    }
}

/// A running slot; released on drop (also while unwinding from a panic).
#[must_use = "the slot is released as soon as the permit is dropped"]
pub struct BulkheadPermit {
    inner: Arc<Inner>,
    /// For the `finished` run time and the retry estimate.
    started: Instant,
}

impl BulkheadPermit {
    /// How long the job has held its slot.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

impl fmt::Debug for BulkheadPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkheadPermit").field("service", &self.inner.service).finish()
    }
}

impl Drop for BulkheadPermit {
    fn drop(&mut self) {
        let ran = self.started.elapsed();
        self.inner.release(Some(ran));
        self.inner.observer.finished(&self.inner.service, ran);
    }
}

#[cfg(test)]
mod tests;
