//! Distributed mode against real Redis: API and worker nodes in this process and as
//! separate `athena worker` processes, a killed worker, a killed Redis, a poison job, and
//! flags and cache shared between nodes.

mod common;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use athena::config::Loaded;
use athena::Role;
use athena_actors::distributed::QueueBackend;
use base64::Engine as _;
use common::redis::{cleanup, connect, shared_url, unique_prefix, OwnRedis};
use common::TestServer;
use futures_util::StreamExt;
use serde_json::{json, Value};

/// A node of a fleet on `url` under `prefix`, with leases and retries short enough for tests.
fn fleet(url: &str, prefix: &str, tweak: impl FnOnce(&mut athena::config::Config)) -> Loaded {
    common::config(&[], |c| {
        c.queue.backend = QueueBackend::Redis;
        c.redis.url = url.to_string();
        c.redis.key_prefix = prefix.to_string();
        c.redis.command_timeout = Duration::from_millis(500);
        c.redis.connect_timeout = Duration::from_millis(500);
        c.queue.lease = Duration::from_secs(2);
        c.queue.block = Duration::from_millis(200);
        c.queue.retry_backoff = Duration::from_millis(50);
        c.queue.retry_max_backoff = Duration::from_millis(200);
        tweak(c);
    })
}

/// An `athena worker` process; killed with SIGKILL when dropped.
struct WorkerProcess(Child);

impl WorkerProcess {
    fn spawn(url: &str, prefix: &str) -> WorkerProcess {
        let child = Command::new(env!("CARGO_BIN_EXE_athena"))
            .args(["worker", "--bind", "127.0.0.1:0"])
            .env("ATHENA__QUEUE__BACKEND", "redis")
            .env("ATHENA__REDIS__URL", url)
            .env("ATHENA__REDIS__KEY_PREFIX", prefix)
            .env("ATHENA__QUEUE__LEASE", "2s")
            .env("ATHENA__QUEUE__BLOCK", "200ms")
            .env("ATHENA__QUEUE__PREFETCH", "64")
            .env("ATHENA__LOG__LEVEL", "warn")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("athena worker starts");
        WorkerProcess(child)
    }

    /// SIGKILL: no shutdown, no acknowledgement, leases left to run out.
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn job_body(bytes: &[u8]) -> Value {
    json!({
        "fileName": "sample.txt",
        "fileContent": base64::engine::general_purpose::STANDARD.encode(bytes),
        "analysisType": "static",
    })
}

/// Submits `n` distinct small samples, 32 at a time; answers their ids.
async fn submit_many(node: &TestServer, n: usize, tag: &str) -> Vec<String> {
    let bodies: Vec<Value> =
        (0..n).map(|i| job_body(format!("{tag} sample number {i}").as_bytes())).collect();
    let results: Vec<(u16, Value)> = futures_util::stream::iter(bodies)
        .map(|body| node.post("/api/analysis/submit", body))
        .buffer_unordered(32)
        .collect()
        .await;
    results
        .into_iter()
        .map(|(status, body)| {
            assert_eq!(status, 201, "{body}");
            body["analysisId"].as_str().expect("an id").to_string()
        })
        .collect()
}

/// Counts the final events published on the fleet's event channel, per job.
async fn count_final_events(
    url: &str,
    prefix: &str,
) -> tokio::sync::watch::Receiver<HashMap<String, usize>> {
    let client = redis::Client::open(url).unwrap();
    let mut pubsub = client.get_async_pubsub().await.expect("subscribe");
    pubsub.subscribe(format!("{prefix}events")).await.expect("subscribe");
    let (tx, rx) = tokio::sync::watch::channel(HashMap::new());
    actix_rt::spawn(async move {
        let mut messages = pubsub.on_message();
        while let Some(message) = messages.next().await {
            let payload: String = message.get_payload().unwrap_or_default();
            let events: Vec<Value> = serde_json::from_str(&payload).unwrap_or_default();
            for event in events {
                if matches!(event["type"].as_str(), Some("complete" | "error")) {
                    let id = event["analysisId"].as_str().unwrap_or_default().to_string();
                    tx.send_modify(|seen| *seen.entry(id).or_default() += 1);
                }
            }
        }
    });
    rx
}

/// Waits until every job has a record in a final state; answers the records.
async fn wait_all_finished(node: &TestServer, ids: &[String], limit: Duration) -> Vec<Value> {
    let wait = async {
        let mut records = Vec::with_capacity(ids.len());
        for id in ids {
            loop {
                let (status, record) = node.get(&format!("/api/analysis/status/{id}")).await;
                if status == 200
                    && matches!(record["status"].as_str(), Some("completed" | "failed"))
                {
                    records.push(record);
                    break;
                }
                // Polling a record in another process's hands: the interval is not a timing
                // assumption, only how often to look.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        records
    };
    tokio::time::timeout(limit, wait).await.expect("every accepted job finishes")
}

/// Waits until `node` shows `flag` at `value`: the change travels through Redis.
async fn wait_for_flag(node: &TestServer, flag: &str, value: Value) {
    let seen = async {
        loop {
            let (_, flags) = node.get("/api/flags").await;
            if flags["flags"][flag] == value {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), seen).await.expect("the node sees the flag");
}

#[actix_rt::test]
async fn a_worker_killed_mid_run_loses_no_job_and_runs_none_twice() {
    const JOBS: usize = 2000;
    let (url, prefix) = (shared_url(), unique_prefix("sigkill"));
    let finals = count_final_events(&url, &prefix).await;
    let api = TestServer::start_node(fleet(&url, &prefix, |_| {}), Role::Api).await;
    let mut doomed = WorkerProcess::spawn(&url, &prefix);
    let _survivor = WorkerProcess::spawn(&url, &prefix);

    let ids = submit_many(&api, JOBS, "sigkill").await;
    // Kill one worker once the run is well under way, while it holds deliveries.
    let mut seen = finals.clone();
    tokio::time::timeout(Duration::from_secs(120), seen.wait_for(|m| m.len() >= JOBS / 4))
        .await
        .expect("jobs are being processed")
        .expect("event counter alive");
    doomed.kill();

    let records = wait_all_finished(&api, &ids, Duration::from_secs(180)).await;
    assert!(records.iter().all(|r| r["status"] == "completed"), "every job completes");

    let mut conn = connect(&url).await;
    let mut redelivered = 0;
    for id in &ids {
        let (runs, deliveries, finished): (u32, u32, Option<String>) = redis::cmd("HMGET")
            .arg(format!("{prefix}job:{id}"))
            .arg("runs")
            .arg("deliveries")
            .arg("finished")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(finished.as_deref(), Some("1"), "job {id} has its result stored");
        assert!(runs <= 2, "job {id} ran {runs} times");
        if deliveries > 1 {
            redelivered += 1;
        }
    }
    assert!(redelivered > 0, "the killed worker's deliveries were taken over");
    assert!(redelivered <= 64, "only what the killed worker held was redelivered");
    let stream_len: u64 =
        redis::cmd("XLEN").arg(format!("{prefix}jobs")).query_async(&mut conn).await.unwrap();
    assert_eq!(stream_len, 0, "acknowledged entries are deleted: the stream is empty");
    // Nothing is left to grow: every key but the (empty) stream expires.
    let keys: Vec<String> =
        redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut conn).await.unwrap();
    for key in keys.iter().filter(|k| !k.ends_with(":jobs")) {
        let ttl: i64 = redis::cmd("PTTL").arg(key).query_async(&mut conn).await.unwrap();
        assert!(ttl > 0, "{key} has no expiry");
    }

    // Each job's final event went out once: its result was stored once.
    let seen = finals.borrow().clone();
    assert_eq!(seen.len(), JOBS);
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "jobs finished more than once: {twice:?}");
    api.server.shutdown(Duration::from_secs(1)).await;
    cleanup(&url, &prefix).await;
}

#[actix_rt::test]
async fn redis_killed_mid_run_loses_no_accepted_job_and_everything_resumes() {
    let mut redis = OwnRedis::start();
    let prefix = unique_prefix("outage");
    let node = TestServer::start_node(fleet(&redis.url(), &prefix, |_| {}), Role::All).await;
    let ids = submit_many(&node, 300, "outage").await;

    redis.kill();
    let (status, body) = node.post("/api/analysis/submit", job_body(b"during the outage")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "queue_unavailable");
    let (status, ready) = node.get("/readyz").await;
    assert_eq!(status, 503);
    assert!(ready["reason"].as_str().unwrap_or_default().contains("redis"), "{ready}");
    let (_, health) = node.get("/api/health").await;
    assert_eq!(health["redis"]["status"], "down");

    redis.restart();
    let records = wait_all_finished(&node, &ids, Duration::from_secs(120)).await;
    assert!(records.iter().all(|r| r["status"] == "completed"), "no accepted job is lost");

    let back = async {
        loop {
            if node.get("/readyz").await.0 == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), back).await.expect("ready again");
    let after = submit_many(&node, 5, "after the outage").await;
    wait_all_finished(&node, &after, Duration::from_secs(30)).await;
    node.server.shutdown(Duration::from_secs(1)).await;
}

#[actix_rt::test]
async fn a_poison_job_is_dead_lettered_and_the_queue_keeps_moving() {
    let (url, prefix) = (shared_url(), unique_prefix("poison"));
    let node =
        TestServer::start_node(fleet(&url, &prefix, |c| c.queue.max_deliveries = 3), Role::All)
            .await;
    let mut poison = athena_actors::static_analyzer::POISON_SAMPLE.to_vec();
    poison.extend_from_slice(b" and then some");
    let (status, body) = node.post("/api/analysis/submit", job_body(&poison)).await;
    assert_eq!(status, 201);
    let poison_id = body["analysisId"].as_str().unwrap().to_string();
    let healthy = submit_many(&node, 20, "healthy").await;

    let records = wait_all_finished(&node, &healthy, Duration::from_secs(60)).await;
    assert!(records.iter().all(|r| r["status"] == "completed"));
    let failed =
        wait_all_finished(&node, std::slice::from_ref(&poison_id), Duration::from_secs(60))
            .await
            .remove(0);
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["error"]["code"], "dead_lettered", "{failed}");
    assert!(failed["error"]["message"].as_str().unwrap().contains("3 deliveries"), "{failed}");

    let mut conn = connect(&url).await;
    let dead: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(format!("{prefix}dead"))
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].1["id"], poison_id);
    assert_eq!(dead[0].1["deliveries"], "3");
    assert!(dead[0].1["reason"].contains("static_analysis_failed"), "{:?}", dead[0].1);
    let (_, status) = node.get("/api/status").await;
    assert_eq!(status["queue"]["stats"]["deadLetters"], 1);
    node.server.shutdown(Duration::from_secs(1)).await;
    cleanup(&url, &prefix).await;
}

#[actix_rt::test]
async fn flags_and_cached_results_are_shared_between_nodes() {
    let (url, prefix) = (shared_url(), unique_prefix("shared"));
    let a = TestServer::start_node(fleet(&url, &prefix, |_| {}), Role::All).await;
    let b = TestServer::start_node(fleet(&url, &prefix, |_| {}), Role::Api).await;

    let (status, _) = a.put("/api/flags/enable_advanced_analysis", json!({"value": false})).await;
    assert_eq!(status, 200);
    wait_for_flag(&b, "enable_advanced_analysis", json!(false)).await;

    // A node that starts later reads the flags already set.
    let c = TestServer::start_node(fleet(&url, &prefix, |_| {}), Role::Api).await;
    wait_for_flag(&c, "enable_advanced_analysis", json!(false)).await;

    // A result computed by node a's worker is served from the Redis tier to a new worker
    // whose memory tier has never seen it.
    let sample = b"shared between nodes: eval(atob('YWxlcnQoMSk='))";
    let (status, body) = b.post("/api/analysis/submit", job_body(sample)).await;
    assert_eq!(status, 201);
    let id = body["analysisId"].as_str().unwrap().to_string();
    let first = wait_all_finished(&b, std::slice::from_ref(&id), Duration::from_secs(30)).await;
    assert_eq!(first[0]["fromCache"], false);
    a.server.shutdown(Duration::from_secs(1)).await;

    let d = TestServer::start_node(fleet(&url, &prefix, |_| {}), Role::All).await;
    let (_, body) = d.post("/api/analysis/submit", job_body(sample)).await;
    let id = body["analysisId"].as_str().unwrap().to_string();
    let second = wait_all_finished(&d, std::slice::from_ref(&id), Duration::from_secs(30)).await;
    assert_eq!(second[0]["fromCache"], true, "{}", second[0]);
    assert_eq!(second[0]["results"], first[0]["results"]);
    d.server.shutdown(Duration::from_secs(1)).await;
    cleanup(&url, &prefix).await;
}

#[actix_rt::test]
async fn an_idempotency_key_returns_the_same_job_across_api_nodes() {
    let (url, prefix) = (shared_url(), unique_prefix("idem"));
    let a = TestServer::start_node(fleet(&url, &prefix, |_| {}), Role::Api).await;
    let b = TestServer::start_node(fleet(&url, &prefix, |_| {}), Role::Api).await;
    let send = |node: &TestServer, key: &str, bytes: &'static [u8]| {
        node.client
            .post(node.url("/api/analysis/submit"))
            .header("Idempotency-Key", key)
            .json(&job_body(bytes))
            .send()
    };
    let first = send(&a, "order-42", b"first body").await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let again = send(&b, "order-42", b"a retried body").await.unwrap();
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(first["analysisId"], again["analysisId"]);
    let other: Value = send(&a, "order-43", b"first body").await.unwrap().json().await.unwrap();
    assert_ne!(other["analysisId"], first["analysisId"]);
    let bad = send(&a, "spaces are not allowed", b"x").await.unwrap();
    assert_eq!(bad.status(), 400);
    cleanup(&url, &prefix).await;
}

#[actix_rt::test]
async fn a_node_starts_while_redis_is_down_and_joins_when_it_comes_up() {
    let mut redis = OwnRedis::start();
    redis.kill();
    let prefix = unique_prefix("late-redis");
    let node = TestServer::start_node(fleet(&redis.url(), &prefix, |_| {}), Role::All).await;
    let (status, body) = node.post("/api/analysis/submit", job_body(b"too early")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(node.get("/readyz").await.0, 503);

    redis.restart();
    let accepted = async {
        loop {
            let (status, body) = node.post("/api/analysis/submit", job_body(b"in time")).await;
            if status == 201 {
                break body["analysisId"].as_str().unwrap().to_string();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let id = tokio::time::timeout(Duration::from_secs(10), accepted).await.expect("accepted");
    let done = wait_all_finished(&node, &[id], Duration::from_secs(30)).await;
    assert_eq!(done[0]["status"], "completed");
    node.server.shutdown(Duration::from_secs(1)).await;
}

#[actix_rt::test]
async fn a_job_run_on_a_worker_node_streams_from_the_api_node_and_pools_resize_fleet_wide() {
    let (url, prefix) = (shared_url(), unique_prefix("stream"));
    let api = TestServer::start_node(fleet(&url, &prefix, |_| {}), Role::Api).await;
    let worker = TestServer::start_node(fleet(&url, &prefix, |_| {}), Role::Worker).await;
    assert_eq!(worker.get("/readyz").await.0, 200);
    assert_eq!(worker.get("/api/health").await.0, 404, "a worker node serves no API");
    assert!(worker.get("/metrics").await.1.as_str().unwrap().contains("athena_queue"));

    let (status, body) = api.post("/api/analysis/submit", job_body(b"run elsewhere")).await;
    assert_eq!(status, 201);
    let id = body["analysisId"].as_str().unwrap().to_string();
    let response = api.client.get(api.url(&format!("/api/analysis/{id}/events"))).send().await;
    let text = tokio::time::timeout(Duration::from_secs(30), response.unwrap().text())
        .await
        .expect("the stream ends with the job")
        .unwrap();
    let last = text.split("\n\n").filter(|f| f.starts_with("event: ")).last().unwrap();
    assert!(last.starts_with("event: complete"), "{text}");
    let data: Value =
        serde_json::from_str(last.lines().nth(1).unwrap().strip_prefix("data: ").unwrap()).unwrap();
    let (_, record) = api.get(&format!("/api/analysis/status/{id}")).await;
    assert_eq!(data["data"], record["results"], "the result comes with the final event");
    let job_id: athena_actors::job::JobId = id.parse().unwrap();
    assert!(worker.server.engine.job(&job_id).is_none(), "a worker keeps no local copy");

    // Worker nodes have no admin API: a pool resized on the API node is resized there too.
    let (status, _) = api.put("/api/admin/pools/static", json!({"workers": 3})).await;
    assert_eq!(status, 200);
    let resized = async {
        loop {
            let status = worker.server.engine.status().await;
            let pool = status.services.iter().find(|s| s.service == "static").unwrap();
            if pool.workers == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), resized).await.expect("worker pool resized");
    worker.server.shutdown(Duration::from_secs(1)).await;
    cleanup(&url, &prefix).await;
}

#[actix_rt::test]
async fn a_job_whose_workers_keep_dying_is_dead_lettered_with_the_last_error() {
    let (url, prefix) = (shared_url(), unique_prefix("crashloop"));
    let tweak = |c: &mut athena::config::Config| c.queue.max_deliveries = 3;
    let api = TestServer::start_node(fleet(&url, &prefix, tweak), Role::Api).await;
    let (status, body) = api.post("/api/analysis/submit", job_body(b"kills its workers")).await;
    assert_eq!(status, 201);
    let id = body["analysisId"].as_str().unwrap().to_string();

    // What three workers that died while running it would have left behind.
    let mut conn = connect(&url).await;
    let _: () = redis::cmd("HSET")
        .arg(format!("{prefix}job:{id}"))
        .arg("deliveries")
        .arg(3)
        .arg("lastError")
        .arg("the worker process died")
        .query_async(&mut conn)
        .await
        .unwrap();

    let worker = TestServer::start_node(fleet(&url, &prefix, tweak), Role::Worker).await;
    let failed =
        wait_all_finished(&api, std::slice::from_ref(&id), Duration::from_secs(30)).await.remove(0);
    assert_eq!(failed["error"]["code"], "dead_lettered", "{failed}");
    assert!(failed["error"]["message"].as_str().unwrap().contains("the worker process died"));
    let runs: u32 = redis::cmd("HGET")
        .arg(format!("{prefix}job:{id}"))
        .arg("runs")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(runs, 0, "a job past its delivery limit is not run again");
    let dead: u64 =
        redis::cmd("XLEN").arg(format!("{prefix}dead")).query_async(&mut conn).await.unwrap();
    assert_eq!(dead, 1);
    worker.server.shutdown(Duration::from_secs(1)).await;
    cleanup(&url, &prefix).await;
}

#[actix_rt::test]
async fn a_job_longer_than_its_lease_is_never_taken_from_its_live_worker() {
    let (url, prefix) = (shared_url(), unique_prefix("long"));
    // The provider answers after 3 s; a lease is 1 s. While the job runs, the test plays a
    // second worker looking for deliveries idle past the lease: only the running worker's
    // lease extension keeps it from finding this one.
    let slow = common::StubProvider::start(0);
    slow.set_delay(Duration::from_secs(3));
    let tweak = |c: &mut athena::config::Config| {
        c.queue.lease = Duration::from_secs(1);
        c.queue.block = Duration::from_millis(100);
        c.providers.clear();
        let mut provider = common::stub_provider_config(&slow.base_url, "10s");
        provider.retry.max_attempts = 1;
        c.providers.insert("slow".into(), provider);
        c.flags.insert("ai_provider_priority".into(), json!(["slow"]));
    };
    let node = TestServer::start_node(fleet(&url, &prefix, tweak), Role::All).await;
    let body = json!({
        "fileName": "slow.js",
        "fileContent": base64::engine::general_purpose::STANDARD.encode(b"var slow = 1;"),
        "analysisType": "deobfuscate",
    });
    let (status, submitted) = node.post("/api/analysis/submit", body).await;
    assert_eq!(status, 201);
    let id = submitted["analysisId"].as_str().unwrap().to_string();

    let mut conn = connect(&url).await;
    let intruder = async {
        loop {
            let (_, record) = node.get(&format!("/api/analysis/status/{id}")).await;
            if record["status"] == "completed" {
                break record;
            }
            let (_, claimed, _): (String, Vec<redis::Value>, Vec<String>) =
                redis::cmd("XAUTOCLAIM")
                    .arg(format!("{prefix}jobs"))
                    .arg("workers")
                    .arg("intruder")
                    .arg(1000)
                    .arg("0-0")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
            assert!(claimed.is_empty(), "a running job was taken from its live worker");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let record = tokio::time::timeout(Duration::from_secs(30), intruder).await.expect("finishes");
    // The scenario happened: the provider's fixed 3 s answer kept the job past its lease.
    let at = |field: &str| {
        humantime::parse_rfc3339(record[field].as_str().expect("a timestamp")).unwrap()
    };
    let ran = at("finishedAt").duration_since(at("submittedAt")).unwrap();
    assert!(ran >= Duration::from_secs(2), "the job outlived its 1 s lease ({ran:?})");
    assert_eq!(slow.calls(), 1, "the provider was asked once: the job ran once");
    let (runs, deliveries): (u32, u32) = redis::cmd("HMGET")
        .arg(format!("{prefix}job:{id}"))
        .arg("runs")
        .arg("deliveries")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!((runs, deliveries), (1, 1));
    node.server.shutdown(Duration::from_secs(1)).await;
    slow.stop().await;
    cleanup(&url, &prefix).await;
}
