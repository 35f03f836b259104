//! Hot-path costs of the resilience core: what every provider call pays when nothing is wrong.
//!
//! Targets on the 2-core dev machine: breaker admit+record < 150 ns, bulkhead admit+release
//! < 200 ns. Run: `cargo bench -j2 --bench resilience -- --warm-up-time 1 --measurement-time 3`.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use athena_actors::breaker::{BreakerConfig, CircuitBreaker, Outcome};
use athena_actors::bulkhead::{Bulkhead, BulkheadConfig, NoopObserver};
use athena_actors::clock;
use athena_actors::semaphore::GlobalSemaphore;
use criterion::{criterion_group, criterion_main, Criterion};

fn breaker(c: &mut Criterion) {
    let mut breaker = CircuitBreaker::new(BreakerConfig::default(), clock::system());
    c.bench_function("breaker/closed_admit_record", |b| {
        b.iter(|| {
            let permit = breaker.try_acquire().expect("closed");
            breaker.record(black_box(permit), Outcome::Success);
        })
    });
}

/// Baseline: the breaker reads the clock twice per call and the bulkhead twice per permit, so
/// most of their cost is this.
fn clock_now(c: &mut Criterion) {
    let clock = clock::system();
    c.bench_function("clock/now", |b| b.iter(|| black_box(clock.now())));
}

fn bulkhead(c: &mut Criterion) {
    let bulkhead = Bulkhead::new("bench", BulkheadConfig::default(), Arc::new(NoopObserver));
    c.bench_function("bulkhead/admit_release", |b| {
        b.iter(|| drop(black_box(bulkhead.try_acquire().expect("free"))))
    });
}

/// Wakes nothing: the bench only polls futures that are ready at once.
struct NoopWaker;

impl Wake for NoopWaker {
    fn wake(self: Arc<Self>) {}
}

fn semaphore(c: &mut Criterion) {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
    // The timeout needs the runtime's timer in context; polling by hand keeps the runtime's own
    // block_on cost (a few hundred ns) out of the figure. A free permit is ready on first poll.
    let _context = runtime.enter();
    let waker = Waker::from(Arc::new(NoopWaker));
    let mut cx = Context::from_waker(&waker);
    let semaphore = GlobalSemaphore::new("bench", 4);
    c.bench_function("semaphore/acquire_release", |b| {
        b.iter(|| {
            let acquire = pin!(semaphore.acquire(Duration::from_secs(1)));
            match acquire.poll(&mut cx) {
                Poll::Ready(permit) => drop(black_box(permit.expect("free"))),
                Poll::Pending => panic!("a free permit is ready at once"),
            }
        })
    });
}

criterion_group!(benches, clock_now, breaker, bulkhead, semaphore);
criterion_main!(benches);
