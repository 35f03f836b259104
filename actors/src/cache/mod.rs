//! The result cache: reports keyed by the work that produced them.
//!
//! A report depends only on the sample's bytes and what was asked of them, so the key is the
//! work key (SHA-256, analysis type, depth, preferred model) and an identical resubmission is
//! answered without running a stage. [`CacheActor`]s are the workers of the `cache` service and
//! share two tiers:
//!
//! - the [`MemoryTier`] of this process, asked first;
//! - in distributed mode, the [`RedisTier`] shared by the fleet, asked on a memory miss; a hit
//!   there fills the memory tier so the next lookup stays in the process.
//!
//! Each job's flags pick the tiers (`enable_memory_cache`, `enable_redis_cache`). The cache
//! never fails a job: Redis being slow, away or behind an open breaker reads as a miss.
//! A report filled from Redis lives in memory for the full TTL from the fill, so it can outlive
//! its Redis entry by up to one TTL.

mod memory;

use std::future::ready;
use std::sync::Arc;

use actix::prelude::*;

pub use memory::{CacheConfig, CacheStats, MemoryTier};

use crate::distributed::cache_tier::RedisTier;
use crate::report::AnalysisReport;
use crate::supervisor::{Retire, WorkerBook};
use crate::telemetry::{Telemetry, TelemetryEvent};

/// Worker of the `cache` service.
pub struct CacheActor {
    memory: MemoryTier,
    /// The fleet's tier; `None` on a node that runs alone.
    redis: Option<RedisTier>,
    telemetry: Telemetry,
    book: WorkerBook,
}

impl CacheActor {
    pub fn new(memory: MemoryTier, redis: Option<RedisTier>, telemetry: Telemetry) -> Self {
        CacheActor { memory, redis, telemetry, book: WorkerBook::new("cache") }
    }

    /// The Redis tier, when this node has one and the job asked for it.
    fn redis_for(&self, wanted: bool) -> Option<RedisTier> {
        self.redis.as_ref().filter(|_| wanted).cloned()
    }

    fn emit_memory(&self, result: &'static str) {
        self.telemetry.emit(TelemetryEvent::CacheRequest { tier: "memory", result });
    }
}

impl Actor for CacheActor {
    type Context = Context<Self>;
}

impl Supervised for CacheActor {
    fn restarting(&mut self, _: &mut Self::Context) {
        self.book.restarted(&self.telemetry);
    }
}

/// Looks a report up. `memory` and `redis` carry the `enable_memory_cache` and
/// `enable_redis_cache` flags of the asking job; `redis` means nothing on a node without a
/// Redis tier.
#[derive(Debug, Message)]
#[rtype(result = "Option<Arc<AnalysisReport>>")]
pub struct CacheGet {
    pub key: String,
    pub memory: bool,
    pub redis: bool,
}

impl Handler<CacheGet> for CacheActor {
    type Result = ResponseFuture<Option<Arc<AnalysisReport>>>;

    fn handle(&mut self, msg: CacheGet, _: &mut Self::Context) -> Self::Result {
        let CacheGet { key, memory, redis } = msg;
        if memory {
            let found = self.memory.get(&key);
            self.emit_memory(if found.is_some() { "hit" } else { "miss" });
            if found.is_some() {
                return Box::pin(ready(found));
            }
        }
        let Some(tier) = self.redis_for(redis) else { return Box::pin(ready(None)) };
        let fill = memory.then(|| (self.memory.clone(), self.telemetry.clone()));
        Box::pin(async move {
            let report = tier.get(&key).await.into_report()?;
            if let Some((memory, telemetry)) = fill {
                memory.put(key, report.clone());
                telemetry.emit(TelemetryEvent::CacheRequest { tier: "memory", result: "write" });
            }
            Some(report)
        })
    }
}

/// Stores a report in the tiers the asking job's flags allow (see [`CacheGet`]).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct CachePut {
    pub key: String,
    pub report: Arc<AnalysisReport>,
    pub memory: bool,
    pub redis: bool,
}

impl Handler<CachePut> for CacheActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: CachePut, _: &mut Self::Context) -> Self::Result {
        let CachePut { key, report, memory, redis } = msg;
        let tier = self.redis_for(redis);
        if memory {
            self.memory.put(key.clone(), report.clone());
            self.emit_memory("write");
        }
        // The write is awaited, not spawned, so that it stays inside the cache service's
        // bulkhead: a slow Redis then backs up the bulkhead instead of piling up tasks.
        Box::pin(async move {
            if let Some(tier) = tier {
                tier.put(&key, &report).await;
            }
        })
    }
}

/// Nothing this worker does depends on flags: each request carries what it needs.
impl Handler<crate::flags::FlagsChanged> for CacheActor {
    type Result = ();

    fn handle(&mut self, _: crate::flags::FlagsChanged, _: &mut Self::Context) {}
}

impl Handler<Retire> for CacheActor {
    type Result = ();

    fn handle(&mut self, _: Retire, ctx: &mut Self::Context) {
        self.book.retire(ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(key: &str, memory: bool) -> CacheGet {
        CacheGet { key: key.into(), memory, redis: true }
    }

    #[actix_rt::test]
    async fn flag_off_bypasses_the_memory_tier() {
        let tier = MemoryTier::new(&CacheConfig::default());
        let actor = CacheActor::new(tier.clone(), None, Telemetry::disabled()).start();
        let report = Arc::new(AnalysisReport::default());
        let put =
            |memory| CachePut { key: "a".into(), report: report.clone(), memory, redis: true };
        actor.send(put(false)).await.unwrap();
        assert!(actor.send(get("a", true)).await.unwrap().is_none());
        actor.send(put(true)).await.unwrap();
        assert!(actor.send(get("a", false)).await.unwrap().is_none());
        assert!(actor.send(get("a", true)).await.unwrap().is_some());
    }
}
