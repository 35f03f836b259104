//! Athena's engine: the actors that turn a submitted sample into an analysis report.
//!
//! Map of the crate, in the order a job meets it:
//!
//! | module | role |
//! |---|---|
//! | [`engine`] | starts every actor below and wires them together; the one entry point |
//! | [`job`] | samples, job specs, work keys, job records |
//! | [`router`] | `JobRouter`: admission, single-flight, stages, failover, deadline, result |
//! | [`flags`] | `FlagsActor`: typed, layered, audited feature flags pushed to subscribers |
//! | [`supervisor`] | `ServiceSupervisor`: a bulkhead and a restartable worker pool per service |
//! | [`bulkhead`] | bounded concurrency and queue with priority lanes and queue timeouts |
//! | [`semaphore`] | global permits shared across services |
//! | [`retry_budget`] | bounds failover retries to a fraction of first calls |
//! | [`breaker`] | the circuit breaker state machine (injected clock, no I/O) |
//! | [`static_analyzer`] | worker of the `static` service |
//! | [`analysis`] | the static analyzer itself: file types, hashes, strings, IOCs, verdict |
//! | [`sandbox`] | worker of the `container` service: an external sandbox runtime |
//! | [`provider`] | AI provider actors (breaker inside), their HTTP clients and prompts |
//! | [`cache`] | `CacheActor`: the bounded in-memory result tier, then the Redis tier of a fleet |
//! | [`store`] | job records with retention |
//! | [`events`] | job progress for streaming clients |
//! | [`distributed`] | a fleet on Redis: the job queue, worker loops, cache tier, flags, events |
//! | [`telemetry`] | `TelemetryActor` and the Prometheus registry |
//! | [`report`] | the report shape clients receive |
//! | [`clock`] | time as a dependency, so tests control it |
//! | [`error`] | errors callers act on |
//!
//! There is no HTTP in this crate: the `athena` binary maps these types to routes.

pub mod analysis;
pub mod breaker;
pub mod bulkhead;
pub mod cache;
pub mod clock;
pub mod distributed;
pub mod engine;
pub mod error;
pub mod events;
pub mod flags;
pub mod job;
pub mod provider;
pub mod report;
pub mod retry_budget;
pub mod router;
pub mod sandbox;
pub mod semaphore;
pub mod static_analyzer;
pub mod store;
pub mod supervisor;
pub mod telemetry;

/// Mailbox bound of the actors that every job passes through. Their real bounds are the
/// bulkheads and the router's admission limit; the mailbox only has to never be the limit.
pub(crate) const MAILBOX_CAPACITY: usize = 1 << 20;
