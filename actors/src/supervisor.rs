//! One supervisor per service: the bulkhead in front, a pool of worker actors behind.
//!
//! A [`ServiceSupervisor`] admits work through its service's [`Bulkhead`] (bounded concurrency,
//! bounded queue, queue timeout) and hands it to the least busy worker of its pool. Workers run
//! under `actix::Supervisor`, so a worker that stops after a panic is restarted in place with
//! its struct intact (a provider's breaker survives); the message it was handling fails with
//! [`DispatchError::WorkerLost`] and the caller decides whether to retry elsewhere. A worker
//! whose task died without stopping cleanly is noticed at the next dispatch and replaced.
//!
//! The pool is resized at runtime. Shrinking never drops work: a retired worker leaves the pool
//! at once, so nothing new reaches it, and stops only when what it already holds is done.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use actix::dev::ToEnvelope;
use actix::prelude::*;
use futures_util::future::{ready, Either};
use serde::Serialize;

use crate::bulkhead::{Bulkhead, BulkheadError, BulkheadStats, Priority};
use crate::flags::FlagsChanged;
use crate::telemetry::{Telemetry, TelemetryEvent};

/// A worker actor a supervisor can pool. Workers receive every flags snapshot the
/// supervisor receives, so settings such as the adaptive breaker rule apply to them too.
pub trait Worker:
    Actor<Context = Context<Self>> + Supervised + Handler<Retire> + Handler<FlagsChanged> + Unpin
{
}

impl<W> Worker for W where
    W: Actor<Context = Context<W>> + Supervised + Handler<Retire> + Handler<FlagsChanged> + Unpin
{
}

/// Builds the worker for a pool slot; called at start, on growth and on replacement.
pub type WorkerFactory<W> = Arc<dyn Fn(usize) -> W + Send + Sync>;

/// Asks a worker to stop once the work it holds is finished.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Retire;

/// Book-keeping every worker shares: work in hand, a pending retirement, restarts.
#[derive(Debug)]
pub struct WorkerBook {
    service: String,
    in_flight: usize,
    retiring: bool,
}

impl WorkerBook {
    pub fn new(service: impl Into<String>) -> Self {
        WorkerBook { service: service.into(), in_flight: 0, retiring: false }
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    pub fn begin(&mut self) {
        self.in_flight += 1;
    }

    /// Marks one piece of work done; stops a retiring worker once it holds nothing.
    pub fn end<A: Actor<Context = Context<A>>>(&mut self, ctx: &mut Context<A>) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if self.retiring && self.in_flight == 0 {
            ctx.stop();
        }
    }

    pub fn retire<A: Actor<Context = Context<A>>>(&mut self, ctx: &mut Context<A>) {
        self.retiring = true;
        if self.in_flight == 0 {
            ctx.stop();
        }
    }

    /// Called from `Supervised::restarting`: work in hand was lost with the old context.
    pub fn restarted(&mut self, telemetry: &Telemetry) {
        tracing::info!(service = %self.service, "worker restarted by its supervisor");
        self.in_flight = 0;
        telemetry.emit(TelemetryEvent::SupervisorRestart { service: self.service.clone() });
    }
}

/// Why a dispatch did not produce a worker's answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    Bulkhead(#[from] BulkheadError),
    #[error("the {service} worker stopped before answering")]
    WorkerLost { service: String },
}

/// Work for a service: admitted through the bulkhead, then sent to a worker.
pub struct Dispatch<M> {
    pub msg: M,
    pub priority: Priority,
}

impl<M> Dispatch<M> {
    pub fn new(msg: M) -> Self {
        Dispatch { msg, priority: Priority::Normal }
    }
}

impl<M> Message for Dispatch<M>
where
    M: Message + Send + 'static,
    M::Result: Send,
{
    type Result = Result<M::Result, DispatchError>;
}

struct Slot<W: Worker> {
    index: usize,
    addr: Addr<W>,
    /// Work sent to this worker and not yet answered; picks the least busy worker.
    in_flight: Rc<Cell<usize>>,
}

/// Decrements a slot's in-flight count however the dispatch ends.
struct InFlightGuard(Rc<Cell<usize>>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

/// A pool and its numbers, for `/api/status`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    pub service: String,
    pub workers: usize,
    pub in_flight: usize,
    pub replaced: u64,
    pub bulkhead: BulkheadStats,
}

/// Owns one service's bulkhead and worker pool.
pub struct ServiceSupervisor<W: Worker> {
    service: String,
    bulkhead: Bulkhead,
    factory: WorkerFactory<W>,
    slots: Vec<Slot<W>>,
    next_index: usize,
    /// Workers found dead (not restarted by actix) and replaced at dispatch.
    replaced: u64,
    /// The latest flags, handed to workers started after they arrived.
    flags: Option<FlagsChanged>,
    telemetry: Telemetry,
}

impl<W: Worker> ServiceSupervisor<W> {
    pub fn new(
        service: impl Into<String>,
        bulkhead: Bulkhead,
        workers: usize,
        factory: WorkerFactory<W>,
        telemetry: Telemetry,
    ) -> Self {
        let mut supervisor = ServiceSupervisor {
            service: service.into(),
            bulkhead,
            factory,
            slots: Vec::new(),
            next_index: 0,
            replaced: 0,
            flags: None,
            telemetry,
        };
        supervisor.grow_to(workers.max(1));
        supervisor
    }

    fn spawn_worker(&mut self) -> Slot<W> {
        let index = self.next_index;
        self.next_index += 1;
        let factory = self.factory.clone();
        let addr = actix::Supervisor::start(move |_| factory(index));
        if let Some(flags) = &self.flags {
            addr.do_send(flags.clone());
        }
        Slot { index, addr, in_flight: Rc::new(Cell::new(0)) }
    }

    fn grow_to(&mut self, workers: usize) {
        while self.slots.len() < workers {
            let slot = self.spawn_worker();
            self.slots.push(slot);
        }
    }

    fn shrink_to(&mut self, workers: usize) {
        while self.slots.len() > workers.max(1) {
            // The idlest worker goes first so retirement finishes soonest.
            let (pos, _) = self
                .slots
                .iter()
                .enumerate()
                .min_by_key(|(_, s)| s.in_flight.get())
                .expect("pool is not empty");
            let slot = self.slots.remove(pos);
            slot.addr.do_send(Retire);
        }
    }

    /// The least busy live worker, replacing any whose task has died.
    fn pick(&mut self) -> (Addr<W>, InFlightGuard) {
        for i in 0..self.slots.len() {
            if !self.slots[i].addr.connected() {
                let slot = self.slots[i].index;
                tracing::warn!(service = %self.service, slot, "replacing dead worker");
                self.replaced += 1;
                self.telemetry
                    .emit(TelemetryEvent::SupervisorRestart { service: self.service.clone() });
                self.slots[i] = self.spawn_worker();
            }
        }
        let slot = self
            .slots
            .iter()
            .min_by_key(|s| s.in_flight.get())
            .expect("pool always holds at least one worker");
        slot.in_flight.set(slot.in_flight.get() + 1);
        (slot.addr.clone(), InFlightGuard(slot.in_flight.clone()))
    }

    fn status(&self) -> ServiceStatus {
        ServiceStatus {
            service: self.service.clone(),
            workers: self.slots.len(),
            in_flight: self.slots.iter().map(|s| s.in_flight.get()).sum(),
            replaced: self.replaced,
            bulkhead: self.bulkhead.stats(),
        }
    }
}

impl<W: Worker> Actor for ServiceSupervisor<W> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // The bulkhead bounds the work; the mailbox must never be what refuses it.
        ctx.set_mailbox_capacity(crate::MAILBOX_CAPACITY);
    }
}

impl<W, M> Handler<Dispatch<M>> for ServiceSupervisor<W>
where
    W: Worker + Handler<M>,
    W::Context: ToEnvelope<W, M>,
    M: Message + Send + 'static,
    M::Result: Send,
{
    type Result = ResponseActFuture<Self, Result<M::Result, DispatchError>>;

    fn handle(&mut self, dispatch: Dispatch<M>, _: &mut Self::Context) -> Self::Result {
        let bulkhead = self.bulkhead.clone();
        let Dispatch { msg, priority } = dispatch;
        let admitted = async move { bulkhead.acquire(priority).await };
        Box::pin(admitted.into_actor(self).then(move |admitted, act, _| {
            let work = match admitted {
                Err(rejected) => Either::Left(ready(Err(DispatchError::Bulkhead(rejected)))),
                Ok(permit) => {
                    let (addr, guard) = act.pick();
                    let service = act.service.clone();
                    Either::Right(async move {
                        let answer = addr.send(msg).await;
                        drop(guard);
                        drop(permit);
                        answer.map_err(|_| DispatchError::WorkerLost { service })
                    })
                }
            };
            work.into_actor(act)
        }))
    }
}

/// Resizes the pool; answers the new status.
#[derive(Debug, Message)]
#[rtype(result = "ServiceStatus")]
pub struct Resize {
    pub workers: usize,
}

impl<W: Worker> Handler<Resize> for ServiceSupervisor<W> {
    type Result = MessageResult<Resize>;

    fn handle(&mut self, msg: Resize, _: &mut Self::Context) -> Self::Result {
        let before = self.slots.len();
        self.grow_to(msg.workers);
        self.shrink_to(msg.workers);
        // Concurrency follows the pool so added workers are actually used.
        self.bulkhead
            .set_max_concurrent(self.slots.len().max(self.bulkhead.stats().max_concurrent));
        tracing::info!(service = %self.service, before, after = self.slots.len(), "pool resized");
        MessageResult(self.status())
    }
}

/// Reads the pool's status.
#[derive(Debug, Message)]
#[rtype(result = "ServiceStatus")]
pub struct GetStatus;

impl<W: Worker> Handler<GetStatus> for ServiceSupervisor<W> {
    type Result = MessageResult<GetStatus>;

    fn handle(&mut self, _: GetStatus, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.status())
    }
}

impl<W: Worker> Handler<FlagsChanged> for ServiceSupervisor<W> {
    type Result = ();

    fn handle(&mut self, msg: FlagsChanged, _: &mut Self::Context) {
        self.bulkhead.set_enabled(msg.0.enable_bulkhead);
        for slot in &self.slots {
            slot.addr.do_send(msg.clone());
        }
        self.flags = Some(msg);
    }
}

/// Stops admitting, rejects queued work so it can be requeued, waits for running work.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Drain;

impl<W: Worker> Handler<Drain> for ServiceSupervisor<W> {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Drain, _: &mut Self::Context) -> Self::Result {
        let bulkhead = self.bulkhead.clone();
        Box::pin(async move { bulkhead.drain().await })
    }
}

/// Sends a message to every worker of the pool (operator commands such as breaker control)
/// and answers each worker's reply; bypasses the bulkhead.
pub struct Broadcast<M>(pub M);

impl<M> Message for Broadcast<M>
where
    M: Message + Clone + Send + 'static,
    M::Result: Send,
{
    type Result = Vec<M::Result>;
}

impl<W, M> Handler<Broadcast<M>> for ServiceSupervisor<W>
where
    W: Worker + Handler<M>,
    W::Context: ToEnvelope<W, M>,
    M: Message + Clone + Send + 'static,
    M::Result: Send,
{
    type Result = ResponseFuture<Vec<M::Result>>;

    fn handle(&mut self, Broadcast(msg): Broadcast<M>, _: &mut Self::Context) -> Self::Result {
        let sends: Vec<_> = self.slots.iter().map(|s| s.addr.send(msg.clone())).collect();
        Box::pin(async move {
            let mut replies = Vec::with_capacity(sends.len());
            for send in sends {
                if let Ok(reply) = send.await {
                    replies.push(reply);
                }
            }
            replies
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use tokio::sync::Notify;

    use super::*;
    use crate::bulkhead::BulkheadConfig;

    /// A worker whose behaviour the test picks per message.
    struct Probe {
        book: WorkerBook,
        /// Survives restarts: counts every message this slot handled.
        handled: usize,
        restarts: Arc<AtomicUsize>,
        gate: Arc<Notify>,
    }

    impl Actor for Probe {
        type Context = Context<Self>;
    }

    impl Supervised for Probe {
        fn restarting(&mut self, _: &mut Context<Self>) {
            self.restarts.fetch_add(1, Ordering::SeqCst);
            self.book.restarted(&Telemetry::disabled());
        }
    }

    impl Handler<Retire> for Probe {
        type Result = ();
        fn handle(&mut self, _: Retire, ctx: &mut Context<Self>) {
            self.book.retire(ctx);
        }
    }

    impl Handler<FlagsChanged> for Probe {
        type Result = ();
        fn handle(&mut self, _: FlagsChanged, _: &mut Context<Self>) {}
    }

    #[derive(Debug, Clone, Copy)]
    enum Act {
        Answer,
        WaitForGate,
        /// Fails the message and stops, as workers do when they catch a panic.
        CrashCleanly,
        /// A panic nobody caught: the worker's task dies without stopping.
        PanicUncaught,
    }

    #[derive(Message)]
    #[rtype(result = "Result<usize, ()>")]
    struct Work(Act);

    impl Handler<Work> for Probe {
        type Result = ResponseActFuture<Self, Result<usize, ()>>;

        fn handle(&mut self, Work(act): Work, _: &mut Context<Self>) -> Self::Result {
            if let Act::PanicUncaught = act {
                panic!("probe worker panicked on purpose");
            }
            self.book.begin();
            self.handled += 1;
            let gate = self.gate.clone();
            Box::pin(
                async move {
                    if let Act::WaitForGate = act {
                        gate.notified().await;
                    }
                }
                .into_actor(self)
                .map(move |_, act_, ctx| {
                    act_.book.end(ctx);
                    match act {
                        Act::CrashCleanly => {
                            ctx.stop();
                            Err(())
                        }
                        _ => Ok(act_.handled),
                    }
                }),
            )
        }
    }

    fn pool(
        workers: usize,
        bulkhead: BulkheadConfig,
    ) -> (Addr<ServiceSupervisor<Probe>>, Arc<AtomicUsize>, Arc<Notify>) {
        let restarts = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(Notify::new());
        let (r, g) = (restarts.clone(), gate.clone());
        let factory: WorkerFactory<Probe> = Arc::new(move |_| Probe {
            book: WorkerBook::new("probe"),
            handled: 0,
            restarts: r.clone(),
            gate: g.clone(),
        });
        let bulkhead = Bulkhead::new("probe", bulkhead, Arc::new(crate::bulkhead::NoopObserver));
        let supervisor =
            ServiceSupervisor::new("probe", bulkhead, workers, factory, Telemetry::disabled())
                .start();
        (supervisor, restarts, gate)
    }

    fn tight() -> BulkheadConfig {
        BulkheadConfig {
            max_concurrent: 1,
            max_queued: 0,
            queue_timeout: Duration::from_secs(1),
            ..BulkheadConfig::default()
        }
    }

    #[actix_rt::test]
    async fn a_full_bulkhead_rejects_with_a_named_error() {
        let (supervisor, _, gate) = pool(1, tight());
        let held = supervisor.send(Dispatch::new(Work(Act::WaitForGate)));
        let held = actix_rt::spawn(held);
        // Let the first dispatch take the only slot.
        let status = loop {
            let status = supervisor.send(GetStatus).await.unwrap();
            if status.bulkhead.active == 1 {
                break status;
            }
            actix_rt::task::yield_now().await;
        };
        assert_eq!(status.in_flight, 1);

        let rejected = supervisor.send(Dispatch::new(Work(Act::Answer))).await.unwrap();
        assert!(
            matches!(rejected, Err(DispatchError::Bulkhead(BulkheadError::Full { .. }))),
            "{rejected:?}"
        );

        gate.notify_one();
        assert_eq!(held.await.unwrap().unwrap(), Ok(Ok(1)));
        let status = supervisor.send(GetStatus).await.unwrap();
        assert_eq!((status.bulkhead.active, status.bulkhead.rejected), (0, 1));
    }

    #[actix_rt::test]
    async fn a_crashed_worker_is_restarted_with_its_state_and_the_pool_keeps_serving() {
        let (supervisor, restarts, _) = pool(1, BulkheadConfig::default());
        assert_eq!(supervisor.send(Dispatch::new(Work(Act::Answer))).await.unwrap(), Ok(Ok(1)));

        let failed = supervisor.send(Dispatch::new(Work(Act::CrashCleanly))).await.unwrap();
        assert_eq!(failed, Ok(Err(())), "the message being handled fails");

        let next = supervisor.send(Dispatch::new(Work(Act::Answer))).await.unwrap();
        assert_eq!(next, Ok(Ok(3)), "same struct after the restart: the count went on");
        assert_eq!(restarts.load(Ordering::SeqCst), 1);
    }

    #[actix_rt::test]
    async fn a_worker_whose_task_died_is_replaced_at_the_next_dispatch() {
        let (supervisor, _, _) = pool(1, BulkheadConfig::default());
        let lost = supervisor.send(Dispatch::new(Work(Act::PanicUncaught))).await.unwrap();
        assert_eq!(lost, Err(DispatchError::WorkerLost { service: "probe".into() }));

        let next = supervisor.send(Dispatch::new(Work(Act::Answer))).await.unwrap();
        assert_eq!(next, Ok(Ok(1)), "a fresh worker answers");
        let status = supervisor.send(GetStatus).await.unwrap();
        assert_eq!((status.replaced, status.workers), (1, 1));
        assert_eq!(status.bulkhead.active, 0, "the lost dispatch released its permit");
    }

    #[actix_rt::test]
    async fn shrinking_the_pool_lets_held_work_finish() {
        let (supervisor, _, gate) = pool(3, BulkheadConfig::default());
        let held: Vec<_> = (0..3)
            .map(|_| actix_rt::spawn(supervisor.send(Dispatch::new(Work(Act::WaitForGate)))))
            .collect();
        loop {
            if supervisor.send(GetStatus).await.unwrap().in_flight == 3 {
                break;
            }
            actix_rt::task::yield_now().await;
        }
        let status = supervisor.send(Resize { workers: 1 }).await.unwrap();
        assert_eq!(status.workers, 1);

        gate.notify_waiters();
        for h in held {
            assert_eq!(
                h.await.unwrap().unwrap(),
                Ok(Ok(1)),
                "work held by retired workers completes"
            );
        }
        let status = supervisor.send(Resize { workers: 2 }).await.unwrap();
        assert_eq!(status.workers, 2);
        assert_eq!(supervisor.send(Dispatch::new(Work(Act::Answer))).await.unwrap(), Ok(Ok(2)));
    }
}
