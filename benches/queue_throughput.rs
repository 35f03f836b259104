//! Queue throughput through a real Redis: N jobs with a tiny sample are enqueued the way the
//! API enqueues them, then drained by worker nodes running the whole worker pipeline (claim,
//! sample read, router, cache, finish script, events). Prints one JSON line.
//!
//! `REDIS_URL` (default `redis://127.0.0.1:6379/0`), `ATHENA_BENCH_JOBS` (default 20000) and
//! `ATHENA_BENCH_WORKERS` (default 2: worker nodes, each on its own thread with its own engine
//! and consumer, as separate processes would be). Under `cargo test` it runs a few hundred
//! jobs once, as a smoke test of the same path.

use std::time::{Duration, Instant};

use athena_actors::clock;
use athena_actors::distributed::{QueueConfig, QueueWorker, Redis, RedisConfig, RedisQueue};
use athena_actors::engine::{Engine, EngineConfig, FlagLayers};
use athena_actors::job::{JobSpec, Sample};
use futures_util::StreamExt;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn redis_config(url: &str, prefix: &str) -> RedisConfig {
    RedisConfig { url: url.into(), key_prefix: prefix.into(), ..RedisConfig::default() }
}

fn queue_config() -> QueueConfig {
    QueueConfig { batch: 256, prefetch: 1024, ..QueueConfig::default() }
}

/// A worker node on a thread of its own; runs until the process ends.
fn spawn_worker_node(url: String, prefix: String) {
    std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let redis = Redis::connect(&redis_config(&url, &prefix)).expect("redis config");
            let config = EngineConfig::default();
            let engine = Engine::start_with_redis(
                &config,
                &FlagLayers::default(),
                clock::system(),
                Some(redis.clone()),
            )
            .expect("engine starts");
            let _worker = QueueWorker::start(
                redis,
                queue_config(),
                config.router.retention,
                engine.router.clone(),
                engine.telemetry.clone(),
            );
            std::future::pending::<()>().await;
        })
    });
}

async fn run(url: &str, jobs: usize, workers: usize) -> (f64, f64) {
    let prefix = format!("bench:{}:{:08x}:", std::process::id(), rand::random::<u32>());
    let redis = Redis::connect(&redis_config(url, &prefix)).expect("redis config");
    let queue = RedisQueue::new(redis.clone(), Duration::from_secs(600), Duration::from_secs(600));

    // Completions are counted from the final events the finish script publishes.
    let client = redis::Client::open(url).expect("redis url");
    let mut pubsub = client.get_async_pubsub().await.expect("redis reachable");
    pubsub.subscribe(format!("{prefix}events")).await.expect("subscribed");

    let spec = JobSpec::new(Sample::new("tiny.txt", b"tiny sample".to_vec()));
    let started = Instant::now();
    futures_util::stream::iter(0..jobs)
        .for_each_concurrent(256, |_| {
            let (queue, spec) = (queue.clone(), spec.clone());
            async move {
                queue.enqueue(&spec, None).await.expect("enqueued");
            }
        })
        .await;
    let enqueued_per_s = jobs as f64 / started.elapsed().as_secs_f64();

    let started = Instant::now();
    for _ in 0..workers {
        spawn_worker_node(url.to_string(), prefix.clone());
    }
    let mut finished = 0;
    let mut messages = pubsub.on_message();
    while finished < jobs {
        let message = tokio::time::timeout(Duration::from_secs(120), messages.next())
            .await
            .expect("jobs keep finishing")
            .expect("subscription open");
        let payload: String = message.get_payload().unwrap_or_default();
        finished += payload.matches("\"type\":\"complete\"").count();
    }
    let processed_per_s = jobs as f64 / started.elapsed().as_secs_f64();

    // The bench's keys are its own; leave nothing behind.
    let mut conn = client.get_multiplexed_async_connection().await.expect("redis reachable");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    for chunk in keys.chunks(1000) {
        let _: redis::RedisResult<()> = redis::cmd("DEL").arg(chunk).query_async(&mut conn).await;
    }
    (enqueued_per_s, processed_per_s)
}

fn main() {
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    let jobs = if benchmarking { env_or("ATHENA_BENCH_JOBS", 20_000) } else { 300 };
    let workers = env_or("ATHENA_BENCH_WORKERS", 2usize).max(1);
    let (enqueued, processed) = actix_rt::System::new().block_on(run(&url, jobs, workers));
    println!(
        "{}",
        serde_json::json!({
            "jobs": jobs,
            "workers": workers,
            "enqueued_per_s": enqueued.round(),
            "processed_per_s": processed.round(),
        })
    );
}
