//! The Redis tier of the result cache against real Redis servers: the shared one on
//! 127.0.0.1:6379 (a key prefix of its own per test), a port where nothing listens, and a
//! `redis-server` of the test's own that it stops and starts again. Breaker time is a
//! [`ManualClock`]; nothing sleeps to wait for a state change.

mod support;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use athena_actors::breaker::{BreakerConfig, BreakerState};
use athena_actors::cache::{CacheActor, CacheConfig, CacheGet, CachePut, MemoryTier};
use athena_actors::clock::ManualClock;
use athena_actors::distributed::cache_tier::{encode, Lookup, Put, RedisTier, FORMAT_VERSION};
use athena_actors::distributed::Redis;
use athena_actors::report::{AnalysisReport, ThreatLevel};
use athena_actors::telemetry::Telemetry;
use support::{redis, unique_prefix, COMMAND_TIMEOUT};

const SHARED_REDIS: &str = "redis://127.0.0.1:6379/0";

/// How long an open breaker waits before its trial, in these tests.
const OPEN_FOR: Duration = Duration::from_secs(10);

/// Longer than any open period the test breaker can reach.
const PAST_ANY_OPEN_PERIOD: Duration = Duration::from_secs(41);

/// Opens after two commands in a row miss Redis, for exactly [`OPEN_FOR`] the first time.
fn breaker() -> BreakerConfig {
    BreakerConfig {
        consecutive_failures: 2,
        open_duration: OPEN_FOR,
        max_open_duration: PAST_ANY_OPEN_PERIOD - Duration::from_secs(1),
        jitter: 0.0,
        ..RedisTier::default_breaker()
    }
}

/// One node's tier, on its own Redis handle, with breaker time in the test's hands.
fn tier(url: &str, prefix: &str) -> (RedisTier, ManualClock) {
    let clock = ManualClock::new();
    let ttl = Duration::from_secs(60);
    let tier = RedisTier::new(
        redis(url, prefix),
        ttl,
        breaker(),
        Arc::new(clock.clone()),
        Telemetry::disabled(),
    );
    (tier, clock)
}

fn report(score: u8) -> AnalysisReport {
    AnalysisReport {
        threat_level: ThreatLevel::High,
        threat_score: score,
        classifications: vec!["trojan".into()],
        analysis_report: Some("looks bad".into()),
        ..AnalysisReport::default()
    }
}

/// A port nothing listens on: bound by the OS, then released.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

async fn raw<T: redis::FromRedisValue>(redis: &Redis, cmd: &redis::Cmd) -> T {
    redis.query(cmd).await.unwrap()
}

#[actix_rt::test]
async fn a_report_written_on_one_node_is_read_on_another() {
    let prefix = unique_prefix("two-nodes");
    let (writer, _) = tier(SHARED_REDIS, &prefix);
    let (reader, _) = tier(SHARED_REDIS, &prefix);

    assert_eq!(reader.get("work-1").await, Lookup::Miss);
    assert_eq!(writer.put("work-1", &report(70)).await, Put::Written);
    assert_eq!(reader.get("work-1").await, Lookup::Hit(Arc::new(report(70))));

    // Stored under the documented key, with the cache TTL.
    let check = redis(SHARED_REDIS, &prefix);
    let key = check.keys().cache("work-1");
    let ttl_ms: i64 = raw(&check, redis::cmd("PTTL").arg(&key)).await;
    assert!((1..=60_000).contains(&ttl_ms), "PTTL {ttl_ms}");
    let stored: Vec<u8> = raw(&check, redis::cmd("GET").arg(&key)).await;
    assert_eq!(stored[0], FORMAT_VERSION);
    assert_eq!(reader.breaker_state(), BreakerState::Closed);
}

#[actix_rt::test]
async fn unreadable_entries_are_misses_and_are_deleted() {
    let prefix = unique_prefix("unreadable");
    let (tier, _) = tier(SHARED_REDIS, &prefix);
    let check = redis(SHARED_REDIS, &prefix);

    let mut newer = encode(&report(10)).unwrap();
    newer[0] = FORMAT_VERSION + 1;
    let entries: [(&str, Vec<u8>); 3] =
        [("newer", newer), ("garbage", b"\x01not a report".to_vec()), ("empty", Vec::new())];
    for (name, bytes) in entries {
        let key = check.keys().cache(name);
        let _: () = raw(&check, redis::cmd("SET").arg(&key).arg(bytes)).await;
        assert_eq!(tier.get(name).await, Lookup::Miss, "{name}");
        let left: i64 = raw(&check, redis::cmd("EXISTS").arg(&key)).await;
        assert_eq!(left, 0, "{name} was not deleted");
    }
    // Redis answered every time: nothing counted against the breaker.
    assert_eq!(tier.breaker_snapshot().totals.failures, 0);
}

#[actix_rt::test]
async fn the_job_flags_pick_the_tiers() {
    let prefix = unique_prefix("flags");
    let check = redis(SHARED_REDIS, &prefix);
    let exists = |key: &str| {
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(check.keys().cache(key));
        let check = check.clone();
        async move { raw::<i64>(&check, &cmd).await == 1 }
    };
    let node = |tier: RedisTier| {
        let memory = MemoryTier::new(&CacheConfig::default());
        let actor = CacheActor::new(memory.clone(), Some(tier), Telemetry::disabled()).start();
        (actor, memory)
    };
    let (a, _) = node(tier(SHARED_REDIS, &prefix).0);
    let (b, b_memory) = node(tier(SHARED_REDIS, &prefix).0);
    let shared = Arc::new(report(50));
    let put = |key: &str, memory, redis| CachePut {
        key: key.into(),
        report: shared.clone(),
        memory,
        redis,
    };
    let get = |key: &str, memory, redis| CacheGet { key: key.into(), memory, redis };

    // The Redis flag off: nothing reaches Redis, and a lookup does not ask it.
    a.send(put("off", true, false)).await.unwrap();
    assert!(!exists("off").await);
    let _: () = raw(
        &check,
        redis::cmd("SET").arg(check.keys().cache("planted")).arg(encode(&report(1)).unwrap()),
    )
    .await;
    assert_eq!(b.send(get("planted", false, false)).await.unwrap(), None);
    assert!(b.send(get("planted", false, true)).await.unwrap().is_some());

    // Written through Redis on node A, read on node B, which fills its memory tier.
    a.send(put("on", false, true)).await.unwrap();
    assert!(exists("on").await);
    assert!(b_memory.get("on").is_none());
    assert_eq!(b.send(get("on", true, true)).await.unwrap(), Some(shared.clone()));
    assert_eq!(b_memory.get("on"), Some(shared.clone()));

    // The memory flag off: a Redis hit leaves the memory tier alone.
    a.send(put("no-fill", false, true)).await.unwrap();
    assert!(b.send(get("no-fill", false, true)).await.unwrap().is_some());
    assert!(b_memory.get("no-fill").is_none());
}

#[actix_rt::test]
async fn unreachable_redis_is_a_quick_miss_then_is_skipped() {
    let url = format!("redis://127.0.0.1:{}/0", free_port());
    let (tier, clock) = tier(&url, &unique_prefix("unreachable"));

    for _ in 0..2 {
        // A safety net far above the command timeout: the lookup gives up rather than hang.
        let lookup = tokio::time::timeout(COMMAND_TIMEOUT * 20, tier.get("work")).await;
        assert_eq!(lookup.expect("the lookup gives up"), Lookup::Error);
    }
    assert_eq!(tier.breaker_state(), BreakerState::Open);

    // Open: neither reads nor writes touch the network, and no outcome is recorded.
    let before = tier.breaker_snapshot().totals;
    assert_eq!(tier.get("work").await, Lookup::Skipped);
    assert_eq!(tier.put("work", &report(1)).await, Put::Skipped);
    let after = tier.breaker_snapshot().totals;
    assert_eq!((after.successes, after.failures), (before.successes, before.failures));
    assert_eq!(after.rejected, before.rejected + 2);

    // Past the open period one trial goes out; it fails, so the breaker opens again.
    clock.advance(OPEN_FOR);
    assert_eq!(tier.breaker_state(), BreakerState::HalfOpen);
    assert_eq!(tier.get("work").await, Lookup::Error);
    assert_eq!(tier.breaker_snapshot().totals.failures, after.failures + 1);
    assert_eq!(tier.breaker_state(), BreakerState::Open);

    // The job behind the cache actor sees a miss, and the memory tier keeps serving.
    let memory = MemoryTier::new(&CacheConfig::default());
    let actor = CacheActor::new(memory, Some(tier.clone()), Telemetry::disabled()).start();
    let get = |memory| CacheGet { key: "work".into(), memory, redis: true };
    assert_eq!(actor.send(get(true)).await.unwrap(), None);
    let report = Arc::new(report(5));
    let put = CachePut { key: "work".into(), report: report.clone(), memory: true, redis: true };
    actor.send(put).await.unwrap();
    assert_eq!(actor.send(get(true)).await.unwrap(), Some(report));
    assert_eq!(actor.send(get(false)).await.unwrap(), None);
}

/// A `redis-server` of the test's own, killed when dropped.
struct OwnRedis {
    port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    async fn start(port: u16) -> OwnRedis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/ensure-redis.sh)");
        let own = OwnRedis { port, child: Some(child) };
        own.wait_until_ready().await;
        own
    }

    /// Polls until the server answers, for at most a few seconds.
    async fn wait_until_ready(&self) {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/0", self.port)).unwrap();
        for _ in 0..100 {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                let pong: redis::RedisResult<String> =
                    redis::cmd("PING").query_async(&mut conn).await;
                if pong.is_ok() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server on port {} did not start", self.port);
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[actix_rt::test]
async fn the_tier_comes_back_by_itself_when_redis_does() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let mut server = OwnRedis::start(port).await;
    let (tier, clock) = tier(&url, &unique_prefix("comes-back"));
    assert_eq!(tier.put("work", &report(80)).await, Put::Written);
    assert_eq!(tier.get("work").await.into_report().map(|r| r.threat_score), Some(80));

    server.stop();
    assert_eq!(tier.get("work").await, Lookup::Error);
    assert_eq!(tier.get("work").await, Lookup::Error);
    assert_eq!(tier.breaker_state(), BreakerState::Open);
    assert_eq!(tier.get("work").await, Lookup::Skipped);

    let _server = OwnRedis::start(port).await;
    // The first trial may still meet the connection that died with the old server; the
    // client re-connects after it, so a later trial gets through.
    let mut trials = 0;
    loop {
        trials += 1;
        assert!(trials <= 5, "the tier did not come back after {trials} trials");
        clock.advance(PAST_ANY_OPEN_PERIOD);
        if tier.put("work", &report(81)).await == Put::Written {
            break;
        }
    }
    assert_eq!(tier.breaker_state(), BreakerState::Closed);
    assert_eq!(tier.get("work").await.into_report().map(|r| r.threat_score), Some(81));
}
