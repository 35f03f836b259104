//! Supervision and failover under misbehaving providers, and pool changes under load.

mod common;

use std::time::Duration;

use athena::config::Config;
use athena_actors::breaker::WindowKind;
use athena_actors::provider::ProviderConfig;
use common::{config, StubProvider, TestServer};
use serde_json::{json, Value};

fn provider(base_url: &str, timeout: &str) -> ProviderConfig {
    let mut p = common::stub_provider_config(base_url, timeout);
    // Each misbehaviour below should show as one failed attempt, then failover.
    p.retry.max_attempts = 1;
    p
}

fn two_providers(c: &mut Config, primary: ProviderConfig, backup: &StubProvider) {
    c.providers.clear();
    c.providers.insert("primary".into(), primary);
    c.providers.insert("backup".into(), provider(&backup.base_url, "10s"));
    c.flags.insert("ai_provider_priority".into(), json!(["primary", "backup"]));
    c.flags.insert("cache_analysis_results".into(), json!(false));
    c.router.failover_budget.min_per_second = 1000.0;
    c.router.failover_budget.max_balance = 1000.0;
}

fn attempts(record: &Value) -> Vec<(String, String)> {
    record["results"]["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["provider"].as_str().unwrap().into(), a["outcome"].as_str().unwrap().into()))
        .collect()
}

fn pair(p: &str, o: &str) -> (String, String) {
    (p.to_string(), o.to_string())
}

#[actix_rt::test]
async fn a_hung_provider_times_out_and_the_job_completes_on_the_next() {
    let primary = StubProvider::start(0);
    primary.set_delay(Duration::from_secs(30));
    let backup = StubProvider::start(0);
    let mut server = TestServer::start(config(&[], |c| {
        two_providers(c, provider(&primary.base_url, "300ms"), &backup)
    }))
    .await;

    let record = server.analyse("h.js", b"eval('x')", "deobfuscate").await;
    assert_eq!(attempts(&record), [pair("primary", "failure"), pair("backup", "success")]);
    let detail = record["results"]["providers"][0]["detail"].as_str().unwrap();
    assert!(detail.contains("did not answer"), "{detail}");
    assert_eq!(record["results"]["usedFallback"], true);
    primary.stop().await;
    backup.stop().await;
}

#[actix_rt::test]
async fn slow_calls_trip_the_adaptive_rule() {
    let primary = StubProvider::start(0);
    primary.set_delay(Duration::from_millis(150));
    let backup = StubProvider::start(0);
    let mut slow = provider(&primary.base_url, "10s");
    slow.breaker.consecutive_failures = 0;
    slow.breaker.failure_rate_threshold = 0.0;
    slow.breaker.window = WindowKind::Count { size: 2 };
    slow.breaker.minimum_calls = 2;
    slow.breaker.slow_call_target = Duration::from_millis(20);
    slow.breaker.slow_call_multiplier = 1.0;
    slow.breaker.slow_call_rate_threshold = 1.0;
    let mut server = TestServer::start(config(&[], |c| two_providers(c, slow, &backup))).await;

    for _ in 0..2 {
        let record = server.analyse("s.js", b"eval('y')", "deobfuscate").await;
        assert_eq!(attempts(&record), [pair("primary", "success")], "slow, but it answers");
    }
    let record = server.analyse("s.js", b"eval('y')", "deobfuscate").await;
    assert_eq!(attempts(&record), [pair("primary", "rejected"), pair("backup", "success")]);
    let (_, metrics) = server.get("/metrics").await;
    let text = metrics.as_str().unwrap();
    assert!(
        text.contains(concat!(
            r#"athena_breaker_transitions_total{from="closed",provider="primary","#,
            r#"reason="slow_call_rate",to="open"} 1"#
        )),
        "{text}"
    );
    primary.stop().await;
    backup.stop().await;
}

#[actix_rt::test]
async fn a_panicking_provider_is_restarted_keeps_its_breaker_and_a_crash_loop_opens_it() {
    let primary = StubProvider::start(500);
    let backup = StubProvider::start(0);
    let mut config_primary = provider(&primary.base_url, "10s");
    config_primary.breaker.consecutive_failures = 10;
    config_primary.restart_limit = 2;
    let mut server =
        TestServer::start(config(&[], |c| two_providers(c, config_primary, &backup))).await;

    // One ordinary failure first, so the breaker has state worth keeping.
    let record = server.analyse("p.js", b"eval('z')", "deobfuscate").await;
    assert_eq!(attempts(&record), [pair("primary", "failure"), pair("backup", "success")]);

    for round in 1..=3u64 {
        server.server.engine.panic_provider_on_next_call("primary").await.unwrap();
        let record = server.analyse("p.js", b"eval('z')", "deobfuscate").await;
        assert_eq!(record["status"], "completed", "round {round}: {record}");
        let primary_outcome = &attempts(&record)[0];
        if round < 3 {
            assert_eq!(primary_outcome, &pair("primary", "failure"), "round {round}");
            assert_eq!(attempts(&record)[1], pair("backup", "success"));
        }
        let view = server.breaker("primary").await;
        // The breaker's counts survive each restart: the struct is kept.
        let failures = view["totals"]["failures"].as_u64().unwrap();
        assert_eq!(failures, 1 + round, "{view}");
    }

    // Three restarts within the window exceed the limit of two: the breaker opened.
    let (_, metrics) = server.get("/metrics").await;
    let text = metrics.as_str().unwrap();
    assert!(text.contains(r#"athena_supervisor_restarts_total{service="ai.primary"} 3"#), "{text}");
    assert!(text.contains(r#"reason="restart_limit",to="open"} 1"#), "{text}");
    let record = server.analyse("p.js", b"eval('z')", "deobfuscate").await;
    assert_eq!(attempts(&record)[0], pair("primary", "rejected"));
    primary.stop().await;
    backup.stop().await;
}

#[actix_rt::test]
async fn resizing_pools_under_load_loses_no_job() {
    let server = TestServer::start(config(&[], |c| {
        c.flags.insert("cache_analysis_results".into(), json!(false));
    }))
    .await;
    let engine = server.server.engine.clone();
    let mut events = engine.events.subscribe();

    let mut ids = Vec::new();
    for n in 0..120u32 {
        let mut spec = athena_actors::job::JobSpec::new(athena_actors::job::Sample::new(
            "load.sh",
            format!("#!/bin/sh\necho {n}\n").into_bytes(),
        ));
        spec.analysis_type = athena_actors::job::AnalysisType::Static;
        ids.push(engine.submit(spec).await.unwrap());
        match n {
            20 => assert_eq!(engine.resize("static", 6).await.unwrap().workers, 6),
            50 => assert_eq!(engine.resize("static", 1).await.unwrap().workers, 1),
            80 => assert_eq!(engine.resize("static", 3).await.unwrap().workers, 3),
            _ => {}
        }
    }

    let mut finished = std::collections::HashSet::new();
    while finished.len() < ids.len() {
        let event =
            tokio::time::timeout(Duration::from_secs(60), events.recv()).await.unwrap().unwrap();
        if matches!(event.kind, "complete" | "error") {
            assert_eq!(event.kind, "complete", "{event:?}");
            finished.insert(event.analysis_id);
        }
    }
    for id in &ids {
        let record = engine.job(id).unwrap();
        assert_eq!(record.status, athena_actors::job::JobStatus::Completed);
    }
    let status = engine.status().await;
    let static_pool = status.services.iter().find(|s| s.service == "static").unwrap();
    assert_eq!((static_pool.workers, static_pool.in_flight), (3, 0));
    assert_eq!(static_pool.bulkhead.active, 0);
}
