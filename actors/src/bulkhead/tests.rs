//! Bulkhead tests. Queue timeouts run on tokio's paused clock; nothing sleeps on wall time to
//! wait for a state change (waits poll `stats()` while yielding to the scheduler).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use super::*;

const PANIC_MESSAGE: &str = "deliberate test panic";

fn bulkhead(max_concurrent: usize, max_queued: usize, starvation_limit: u32) -> Bulkhead {
    let config = BulkheadConfig {
        max_concurrent,
        max_queued,
        queue_timeout: Duration::from_secs(60),
        starvation_limit,
    };
    config.validate().expect("test config is valid");
    Bulkhead::new("test", config, Arc::new(NoopObserver))
}

/// Yields to the scheduler until `cond` holds (bounded, so a broken bulkhead fails the test).
async fn until(b: &Bulkhead, cond: impl Fn(&BulkheadStats) -> bool) {
    for _ in 0..10_000 {
        if cond(&b.stats()) {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("condition never met: {:?}", b.stats());
}

/// Keeps the deliberate panics of the stress tests out of the test output.
fn quiet_deliberate_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str));
            if message != Some(PANIC_MESSAGE) {
                previous(info);
            }
        }));
    });
}

/// Spawns a job that waits in `priority`'s lane, then logs `label` and releases at once.
fn queue_job(
    b: &Bulkhead,
    priority: Priority,
    label: &'static str,
    log: &Arc<Mutex<Vec<&'static str>>>,
) -> tokio::task::JoinHandle<()> {
    let (b, log) = (b.clone(), Arc::clone(log));
    tokio::spawn(async move {
        let permit = b.acquire(priority).await.expect("admitted");
        log.lock().unwrap().push(label);
        drop(permit);
    })
}

async fn served_order(b: &Bulkhead, jobs: &[(Priority, &'static str)]) -> Vec<&'static str> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let held = b.try_acquire().unwrap();
    let mut handles = Vec::new();
    for (i, (priority, label)) in jobs.iter().enumerate() {
        handles.push(queue_job(b, *priority, label, &log));
        until(b, |s| s.queued == i + 1).await;
    }
    drop(held);
    for handle in handles {
        handle.await.unwrap();
    }
    let order = log.lock().unwrap().clone();
    order
}

#[tokio::test]
async fn lanes_are_served_high_then_normal_then_low() {
    use Priority::*;
    let b = bulkhead(1, 10, 0);
    let jobs =
        [(Low, "l1"), (Normal, "n1"), (High, "h1"), (Low, "l2"), (Normal, "n2"), (High, "h2")];
    assert_eq!(served_order(&b, &jobs).await, ["h1", "h2", "n1", "n2", "l1", "l2"]);
    let s = b.stats();
    assert_eq!((s.active, s.queued, s.executed), (0, 0, 7));
}

#[tokio::test]
async fn a_passed_over_lane_is_served_after_starvation_limit_grants() {
    use Priority::*;
    let b = bulkhead(1, 10, 2);
    let jobs = [(Low, "l"), (Normal, "n"), (High, "h1"), (High, "h2"), (High, "h3"), (High, "h4")];
    assert_eq!(served_order(&b, &jobs).await, ["h1", "h2", "l", "n", "h3", "h4"]);
    // Strict priority for comparison.
    let strict = bulkhead(1, 10, 0);
    assert_eq!(served_order(&strict, &jobs).await, ["h1", "h2", "h3", "h4", "n", "l"]);
}

#[tokio::test]
async fn a_full_queue_rejects_at_once() {
    let b = bulkhead(1, 2, 0);
    let held = b.try_acquire().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let waiters =
        [queue_job(&b, Priority::Low, "a", &log), queue_job(&b, Priority::Low, "b", &log)];
    until(&b, |s| s.queued == 2).await;
    // Even high priority is rejected, without waiting.
    let err = b.acquire(Priority::High).await.unwrap_err();
    assert!(matches!(err, BulkheadError::Full { active: 1, queued: 2, .. }), "{err}");
    assert!(err.retry_after() >= MIN_RETRY_AFTER);
    assert_eq!(err.to_string(), "bulkhead test is full (1 running, 2 queued)");
    assert!(b.stats().saturated);
    // try_acquire never queues.
    assert_eq!(b.try_acquire().unwrap_err().reason(), "full");
    drop(held);
    for w in waiters {
        w.await.unwrap();
    }
    assert_eq!(b.stats().rejected, 2);
    // No queue at all: busy means full.
    let no_queue = bulkhead(1, 0, 0);
    let _held = no_queue.try_acquire().unwrap();
    assert!(matches!(no_queue.acquire(Priority::High).await, Err(BulkheadError::Full { .. })));
    assert!(no_queue.stats().saturated);
}

#[tokio::test(start_paused = true)]
async fn a_queued_job_times_out_after_queue_timeout() {
    let config = BulkheadConfig {
        max_concurrent: 1,
        max_queued: 4,
        queue_timeout: Duration::from_secs(5),
        starvation_limit: 0,
    };
    let b = Bulkhead::new("svc", config, Arc::new(NoopObserver));
    let _held = b.try_acquire().unwrap();
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move { b.acquire(Priority::Normal).await })
    };
    until(&b, |s| s.queued == 1).await;
    tokio::time::advance(Duration::from_millis(4999)).await;
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished(), "gave up before queue_timeout");
    tokio::time::advance(Duration::from_millis(1)).await;
    let err = waiter.await.unwrap().unwrap_err();
    match err {
        BulkheadError::QueueTimeout { waited, .. } => assert_eq!(waited, Duration::from_secs(5)),
        other => panic!("expected a timeout, got {other}"),
    }
    let s = b.stats();
    assert_eq!((s.queued, s.timed_out, s.active), (0, 1, 1));
}

#[tokio::test]
async fn dropping_a_waiting_acquire_loses_no_slot() {
    let b = bulkhead(1, 4, 0);
    let held = b.try_acquire().unwrap();

    // Dropped while still queued: the waiter leaves the lane.
    let mut queued = Box::pin(b.acquire(Priority::Normal));
    assert!(tokio::time::timeout(Duration::ZERO, &mut queued).await.is_err());
    assert_eq!(b.stats().queued, 1);
    drop(queued);
    assert_eq!(b.stats().queued, 0);

    // Dropped after the slot was sent to it but before it picked it up: the slot is passed on.
    let mut granted = Box::pin(b.acquire(Priority::Normal));
    assert!(tokio::time::timeout(Duration::ZERO, &mut granted).await.is_err());
    let mut next = Box::pin(b.acquire(Priority::Low));
    assert!(tokio::time::timeout(Duration::ZERO, &mut next).await.is_err());
    drop(held); // hands the slot to `granted`
    assert_eq!((b.stats().active, b.stats().queued), (1, 1));
    drop(granted); // the slot goes on to `next`
    assert_eq!((b.stats().active, b.stats().queued), (1, 0));
    let permit = next.await.expect("the passed-on slot arrives");
    assert!(b.try_acquire().is_err());
    drop(permit);
    assert_eq!(b.stats().active, 0);
    assert!(b.try_acquire().is_ok());
    // The abandoned grant was never counted as an execution.
    assert_eq!(b.stats().executed, 3);
}

#[tokio::test]
async fn drain_rejects_waiters_and_waits_for_running_work() {
    let b = bulkhead(1, 4, 0);
    let held = b.try_acquire().unwrap();
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let b = b.clone();
            tokio::spawn(async move { b.acquire(Priority::High).await })
        })
        .collect();
    until(&b, |s| s.queued == 2).await;
    let drain = {
        let b = b.clone();
        tokio::spawn(async move { b.drain().await })
    };
    for w in waiters {
        let err = w.await.unwrap().unwrap_err();
        assert_eq!(err, BulkheadError::Draining { service: "test".into() });
    }
    until(&b, |s| s.draining).await;
    assert_eq!(b.stats().queued, 0);
    assert!(matches!(b.acquire(Priority::High).await, Err(BulkheadError::Draining { .. })));
    assert!(matches!(b.try_acquire(), Err(BulkheadError::Draining { .. })));
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert!(!drain.is_finished(), "drain returned while a job was running");
    drop(held);
    drain.await.unwrap();
    assert_eq!(b.stats().active, 0);
    b.drain().await; // already idle: returns at once
    b.resume();
    assert!(b.try_acquire().is_ok());
}

#[tokio::test]
async fn growing_admits_waiters_and_shrinking_lets_work_finish() {
    let b = bulkhead(1, 8, 0);
    let first = b.try_acquire().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let jobs: Vec<_> = ["a", "b", "c"]
        .into_iter()
        .map(|label| {
            let (b, log) = (b.clone(), Arc::clone(&log));
            tokio::spawn(async move {
                let permit = b.acquire(Priority::Normal).await.unwrap();
                log.lock().unwrap().push(label);
                permit
            })
        })
        .collect();
    until(&b, |s| s.queued == 3).await;
    b.set_max_concurrent(3);
    assert_eq!((b.stats().active, b.stats().queued), (3, 1));
    let mut jobs = jobs.into_iter();
    let second = jobs.next().unwrap().await.unwrap();
    let third = jobs.next().unwrap().await.unwrap();
    b.set_max_concurrent(1);
    drop(first);
    drop(second);
    assert_eq!((b.stats().active, b.stats().queued), (1, 1), "over the new limit: no hand-off");
    drop(third);
    let last = jobs.next().unwrap().await.unwrap();
    assert_eq!((b.stats().active, b.stats().queued), (1, 0));
    drop(last);
    assert_eq!(b.stats().active, 0);
    assert_eq!(log.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn disabled_admits_everything_and_re_enabling_keeps_counts_exact() {
    let b = bulkhead(1, 2, 0);
    let held = b.try_acquire().unwrap();
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move { b.acquire(Priority::Low).await })
    };
    until(&b, |s| s.queued == 1).await;
    b.set_enabled(false);
    let waited = waiter.await.unwrap().expect("released by disabling");
    let mut extra: Vec<_> = (0..10).map(|_| b.try_acquire().unwrap()).collect();
    let s = b.stats();
    assert_eq!((s.active, s.queued, s.enabled), (12, 0, false));
    b.set_enabled(true);
    assert!(b.try_acquire().is_err(), "over the limit again");
    drop(held);
    drop(waited);
    extra.truncate(1);
    assert_eq!(b.stats().active, 1);
    assert!(b.try_acquire().is_err());
    extra.clear();
    assert_eq!(b.stats().active, 0);
    let one = b.try_acquire().expect("exactly max_concurrent slots are left");
    assert!(b.try_acquire().is_err());
    drop(one);
}

#[derive(Default)]
struct Counting {
    admitted: AtomicUsize,
    rejected: Mutex<Vec<&'static str>>,
    finished: AtomicUsize,
    last_gauges: Mutex<(usize, usize)>,
}

impl BulkheadObserver for Counting {
    fn admitted(&self, _: &str, _: Duration) {
        self.admitted.fetch_add(1, Ordering::SeqCst);
    }
    fn rejected(&self, _: &str, reason: &'static str) {
        self.rejected.lock().unwrap().push(reason);
    }
    fn finished(&self, _: &str, _: Duration) {
        self.finished.fetch_add(1, Ordering::SeqCst);
    }
    fn gauges(&self, _: &str, active: usize, queued: usize) {
        *self.last_gauges.lock().unwrap() = (active, queued);
    }
}

#[tokio::test]
async fn the_observer_sees_every_event() {
    let observer = Arc::new(Counting::default());
    let config = BulkheadConfig { max_concurrent: 1, max_queued: 0, ..BulkheadConfig::default() };
    let b = Bulkhead::new("obs", config, observer.clone());
    let permit = b.acquire(Priority::Normal).await.unwrap();
    assert_eq!(*observer.last_gauges.lock().unwrap(), (1, 0));
    assert!(b.try_acquire().is_err());
    drop(permit);
    assert_eq!(*observer.last_gauges.lock().unwrap(), (0, 0));
    b.drain().await;
    assert!(b.try_acquire().is_err());
    assert_eq!(observer.admitted.load(Ordering::SeqCst), 1);
    assert_eq!(observer.finished.load(Ordering::SeqCst), 1);
    assert_eq!(*observer.rejected.lock().unwrap(), ["full", "draining"]);
    let json = serde_json_stats(&b);
    assert!(json.contains("\"maxConcurrent\":1") && json.contains("\"queuedByLane\""), "{json}");
}

fn serde_json_stats(b: &Bulkhead) -> String {
    serde_json::to_string(&b.stats()).unwrap()
}

#[test]
fn config_validation_and_serde() {
    let zero = BulkheadConfig { max_concurrent: 0, ..BulkheadConfig::default() };
    assert_eq!(zero.validate().unwrap_err().to_string(), "max_concurrent must be at least 1");
    let no_wait = BulkheadConfig { queue_timeout: Duration::ZERO, ..BulkheadConfig::default() };
    assert_eq!(no_wait.validate().unwrap_err().key, "queue_timeout");
    let no_queue = BulkheadConfig { max_queued: 0, queue_timeout: Duration::ZERO, ..no_wait };
    assert_eq!(no_queue.validate(), Ok(()));
    let parsed: BulkheadConfig =
        serde_json::from_str(r#"{ "max_concurrent": 2, "queue_timeout": "1500ms" }"#).unwrap();
    assert_eq!(parsed.queue_timeout, Duration::from_millis(1500));
    assert_eq!(parsed.max_queued, BulkheadConfig::default().max_queued);
    assert!(serde_json::from_str::<BulkheadConfig>(r#"{ "max_concurent": 2 }"#).is_err());
    let p: Priority = serde_json::from_str("\"high\"").unwrap();
    assert_eq!((p, Priority::default()), (Priority::High, Priority::Normal));
}

/// Many tasks hammer one bulkhead; some panic while holding their slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_more_than_max_concurrent_and_nothing_lost_under_load() {
    quiet_deliberate_panics();
    const TASKS: usize = 64;
    const ITERATIONS: usize = 200;
    const MAX: usize = 4;
    let config = BulkheadConfig {
        max_concurrent: MAX,
        max_queued: 48,
        queue_timeout: Duration::from_secs(30),
        starvation_limit: 3,
    };
    let b = Bulkhead::new("load", config, Arc::new(NoopObserver));
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let admitted = Arc::new(AtomicUsize::new(0));
    let panicked = Arc::new(AtomicUsize::new(0));
    let panic_jobs = Arc::new(AtomicUsize::new(0));

    /// Counts a running job for as long as it lives (declared after the permit, so it is
    /// dropped first, even when unwinding).
    struct Running(Arc<AtomicUsize>);
    impl Drop for Running {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let enter = {
        let (running, peak) = (Arc::clone(&running), Arc::clone(&peak));
        move || {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            Running(Arc::clone(&running))
        }
    };

    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (b, admitted, panicked, enter) =
            (b.clone(), Arc::clone(&admitted), Arc::clone(&panicked), enter.clone());
        let panic_jobs = Arc::clone(&panic_jobs);
        tasks.push(tokio::spawn(async move {
            for i in 0..ITERATIONS {
                let priority = Priority::ALL[(t + i) % 3];
                let permit = if i % 7 == 0 { b.try_acquire() } else { b.acquire(priority).await };
                let Ok(permit) = permit else { continue };
                admitted.fetch_add(1, Ordering::SeqCst);
                if i % 50 == 25 {
                    // Panic inside the permit's scope on another task.
                    panic_jobs.fetch_add(1, Ordering::SeqCst);
                    let enter = enter.clone();
                    let job = tokio::spawn(async move {
                        let _permit = permit;
                        let _running = enter();
                        tokio::task::yield_now().await;
                        panic!("{}", PANIC_MESSAGE);
                    });
                    if job.await.is_err_and(|e| e.is_panic()) {
                        panicked.fetch_add(1, Ordering::SeqCst);
                    }
                } else {
                    let _running = enter();
                    tokio::task::yield_now().await;
                    drop(permit);
                }
            }
        }));
    }
    let all = async {
        for task in tasks {
            task.await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(120), all).await.expect("no deadlock");

    let s = b.stats();
    assert!(peak.load(Ordering::SeqCst) <= MAX, "peak {}", peak.load(Ordering::SeqCst));
    assert_eq!(peak.load(Ordering::SeqCst), MAX, "the load should saturate the bulkhead");
    assert_eq!((s.active, s.queued), (0, 0));
    assert_eq!(s.executed, admitted.load(Ordering::SeqCst) as u64);
    assert_eq!(
        s.executed + s.rejected + s.timed_out,
        (TASKS * ITERATIONS) as u64,
        "every attempt is accounted for once"
    );
    assert!(panic_jobs.load(Ordering::SeqCst) > 0);
    assert_eq!(panicked.load(Ordering::SeqCst), panic_jobs.load(Ordering::SeqCst));
    assert_eq!(running.load(Ordering::SeqCst), 0);
    // All MAX slots are free again.
    let permits: Vec<_> = (0..MAX).map(|_| b.try_acquire().unwrap()).collect();
    assert!(b.try_acquire().is_err());
    drop(permits);
}

/// Waiters are cancelled at random while slots are being handed over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_waiters_never_leak_slots_under_load() {
    let config = BulkheadConfig {
        max_concurrent: 2,
        max_queued: 64,
        queue_timeout: Duration::from_secs(30),
        starvation_limit: 2,
    };
    let b = Bulkhead::new("cancel", config, Arc::new(NoopObserver));
    let mut tasks = Vec::new();
    for t in 0..32usize {
        let b = b.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..100usize {
                let acquire = b.acquire(Priority::ALL[(t + i) % 3]);
                // A zero or tiny timeout drops the acquire future at an arbitrary point.
                let limit = Duration::from_micros(((t * 7 + i) % 5) as u64 * 50);
                if let Ok(Ok(permit)) = tokio::time::timeout(limit, acquire).await {
                    tokio::task::yield_now().await;
                    drop(permit);
                }
            }
        }));
    }
    let all = async {
        for task in tasks {
            task.await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(120), all).await.expect("no deadlock");
    let s = b.stats();
    assert_eq!((s.active, s.queued), (0, 0));
    let a = b.try_acquire().unwrap();
    let c = b.try_acquire().unwrap();
    assert!(b.try_acquire().is_err());
    drop((a, c));
}
