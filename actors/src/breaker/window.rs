//! The sliding window behind the failure-rate and slow-call-rate rules.
//!
//! Both kinds keep running totals so that recording a call and reading the rates are O(1)
//! (amortised for the time window), and both have bounded memory: a count window holds one byte
//! per call (at most `MAX_COUNT_WINDOW`), a time window one bucket per second (at most
//! `MAX_TIME_WINDOW`). Failures and slow calls are counted out of the same total, so neither rate
//! can exceed 1.

use std::collections::VecDeque;
use std::time::Instant;

use super::config::WindowKind;

const FAILED: u8 = 1;
const SLOW: u8 = 2;

/// Totals over the calls currently in the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub calls: u32,
    pub failures: u32,
    pub slow: u32,
}

impl Counts {
    fn add(&mut self, failed: bool, slow: bool) {
        self.calls += 1;
        self.failures += u32::from(failed);
        self.slow += u32::from(slow);
    }

    fn remove(&mut self, other: Counts) {
        // Saturating: the totals are always the sum of what is stored, but a bug here should
        // skew a rate, not panic the provider's actor.
        self.calls = self.calls.saturating_sub(other.calls);
        self.failures = self.failures.saturating_sub(other.failures);
        self.slow = self.slow.saturating_sub(other.slow);
    }

    /// failures / calls, 0 for an empty window; never above 1 because failures <= calls.
    pub fn failure_rate(&self) -> f64 {
        ratio(self.failures, self.calls)
    }

    /// slow / calls, 0 for an empty window.
    pub fn slow_rate(&self) -> f64 {
        ratio(self.slow, self.calls)
    }
}

fn ratio(part: u32, whole: u32) -> f64 {
    if whole == 0 {
        0.0
    } else {
        (f64::from(part) / f64::from(whole)).min(1.0)
    }
}

/// One second of a time window.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Bucket {
    /// Which second (since the window's origin) these counts belong to; a bucket whose second has
    /// slid out of the window is stale and reads as empty.
    second: u64,
    counts: Counts,
}

#[derive(Debug, Clone)]
pub(crate) enum Window {
    Count {
        /// One byte of `FAILED | SLOW` flags per call, oldest first.
        calls: VecDeque<u8>,
        /// 0 means the window keeps nothing (only valid while no rate rule is on).
        size: usize,
        totals: Counts,
    },
    Time {
        /// Ring of per-second buckets indexed by `second % len`.
        buckets: Vec<Bucket>,
        /// Seconds are counted from here, so the window needs no wall clock.
        origin: Instant,
        /// The latest second recorded; buckets up to it have been cleared as time moved on.
        head: u64,
        totals: Counts,
    },
}

impl Window {
    pub fn new(kind: WindowKind, now: Instant) -> Self {
        match kind {
            WindowKind::Count { size } => {
                let size = size as usize;
                Window::Count {
                    calls: VecDeque::with_capacity(size),
                    size,
                    totals: Counts::default(),
                }
            }
            WindowKind::Time { duration } => {
                // Round up so a 1.5 s window keeps 2 buckets rather than 1.
                let secs = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
                Window::Time {
                    buckets: vec![Bucket::default(); secs.max(1) as usize],
                    origin: now,
                    head: 0,
                    totals: Counts::default(),
                }
            }
        }
    }

    /// Forgets every call.
    pub fn clear(&mut self, now: Instant) {
        match self {
            Window::Count { calls, totals, .. } => {
                calls.clear();
                *totals = Counts::default();
            }
            Window::Time { buckets, origin, head, totals } => {
                buckets.fill(Bucket::default());
                *origin = now;
                *head = 0;
                *totals = Counts::default();
            }
        }
    }

    pub fn record(&mut self, now: Instant, failed: bool, slow: bool) {
        let flags = if failed { FAILED } else { 0 } | if slow { SLOW } else { 0 };
        match self {
            Window::Count { calls, size, totals } => {
                if *size == 0 {
                    return;
                }
                if calls.len() == *size {
                    if let Some(old) = calls.pop_front() {
                        totals.remove(flag_counts(old));
                    }
                }
                calls.push_back(flags);
                totals.add(failed, slow);
            }
            Window::Time { .. } => {
                self.advance(now);
                if let Window::Time { buckets, origin, totals, .. } = self {
                    let second = second_of(*origin, now);
                    let len = buckets.len() as u64;
                    let bucket = &mut buckets[(second % len) as usize];
                    bucket.second = second;
                    bucket.counts.add(failed, slow);
                    totals.add(failed, slow);
                }
            }
        }
    }

    /// The totals as of `now`, sliding a time window forward first.
    pub fn counts(&mut self, now: Instant) -> Counts {
        self.advance(now);
        match self {
            Window::Count { totals, .. } | Window::Time { totals, .. } => *totals,
        }
    }

    /// The totals as of `now` without changing anything (for snapshots); O(buckets).
    pub fn peek(&self, now: Instant) -> Counts {
        match self {
            Window::Count { totals, .. } => *totals,
            Window::Time { buckets, origin, .. } => {
                let current = second_of(*origin, now);
                let oldest = (current + 1).saturating_sub(buckets.len() as u64);
                let mut sum = Counts::default();
                let live = |b: &&Bucket| (oldest..=current).contains(&b.second);
                for bucket in buckets.iter().filter(live) {
                    sum.calls += bucket.counts.calls;
                    sum.failures += bucket.counts.failures;
                    sum.slow += bucket.counts.slow;
                }
                sum
            }
        }
    }

    /// Clears the buckets of every second that slid out of a time window since the last call.
    /// At most one pass over the ring however long the gap, so amortised O(1).
    fn advance(&mut self, now: Instant) {
        if let Window::Time { buckets, origin, head, totals } = self {
            let current = second_of(*origin, now);
            if current <= *head {
                return;
            }
            let len = buckets.len() as u64;
            if current - *head >= len {
                buckets.fill(Bucket::default());
                *totals = Counts::default();
            } else {
                for second in (*head + 1)..=current {
                    let bucket = &mut buckets[(second % len) as usize];
                    totals.remove(bucket.counts);
                    *bucket = Bucket { second, counts: Counts::default() };
                }
            }
            *head = current;
        }
    }
}

fn second_of(origin: Instant, now: Instant) -> u64 {
    now.saturating_duration_since(origin).as_secs()
}

fn flag_counts(flags: u8) -> Counts {
    Counts {
        calls: 1,
        failures: u32::from(flags & FAILED != 0),
        slow: u32::from(flags & SLOW != 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn count_window_keeps_the_last_n_calls() {
        let now = Instant::now();
        let mut w = Window::new(WindowKind::Count { size: 3 }, now);
        w.record(now, true, false);
        w.record(now, true, true);
        w.record(now, false, false);
        assert_eq!(w.counts(now), Counts { calls: 3, failures: 2, slow: 1 });
        w.record(now, false, false);
        w.record(now, false, false);
        assert_eq!(w.counts(now), Counts { calls: 3, failures: 0, slow: 0 });
    }

    #[test]
    fn time_window_forgets_calls_older_than_its_duration() {
        let t0 = Instant::now();
        let mut w = Window::new(WindowKind::Time { duration: Duration::from_secs(10) }, t0);
        w.record(t0, true, false);
        w.record(t0 + Duration::from_secs(5), true, true);
        assert_eq!(w.counts(t0 + Duration::from_secs(9)).calls, 2);
        assert_eq!(w.peek(t0 + Duration::from_secs(9)).calls, 2);
        // Second 0 slides out at second 10; second 5 stays until second 15.
        let c = w.counts(t0 + Duration::from_secs(10));
        assert_eq!(c, Counts { calls: 1, failures: 1, slow: 1 });
        assert_eq!(w.peek(t0 + Duration::from_secs(10)), c);
        assert_eq!(w.counts(t0 + Duration::from_secs(15)).calls, 0);
        // A gap longer than the window clears it in one pass.
        w.record(t0 + Duration::from_secs(16), false, false);
        assert_eq!(w.counts(t0 + Duration::from_secs(1000)).calls, 0);
        assert_eq!(w.peek(t0 + Duration::from_secs(1000)).calls, 0);
    }

    #[test]
    fn rates_never_exceed_one() {
        let c = Counts { calls: 2, failures: 2, slow: 2 };
        assert_eq!(c.failure_rate(), 1.0);
        assert_eq!(Counts::default().failure_rate(), 0.0);
    }
}
