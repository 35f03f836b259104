//! The AI stage end to end: real provider clients over real sockets, failover, and a breaker
//! that opens on a provider that keeps failing.

mod common;

use athena::config::Config;
use athena_actors::provider::{ProviderConfig, ProviderKind};
use common::{config, StubProvider, TestServer};
use serde_json::json;

fn provider(base_url: &str, consecutive_failures: u32) -> ProviderConfig {
    let mut p = common::stub_provider_config(base_url, "10s");
    p.breaker.consecutive_failures = consecutive_failures;
    // One attempt per call keeps the call counts below plain; retries have their own tests.
    p.retry.max_attempts = 1;
    p
}

fn with_providers(c: &mut Config, primary: &StubProvider, backup: &StubProvider) {
    c.providers.clear();
    c.providers.insert("primary".into(), provider(&primary.base_url, 2));
    c.providers.insert("backup".into(), provider(&backup.base_url, 2));
    c.flags.insert("ai_provider_priority".into(), json!(["primary", "backup"]));
    c.flags.insert("cache_analysis_results".into(), json!(false));
    // Every failover in these tests is allowed; the budget has its own test below.
    c.router.failover_budget.min_per_second = 1000.0;
    c.router.failover_budget.max_balance = 1000.0;
    assert_eq!(c.providers["primary"].kind, ProviderKind::Openai);
}

#[actix_rt::test]
async fn a_failing_primary_opens_its_breaker_and_jobs_complete_on_the_backup() {
    let primary = StubProvider::start(500);
    let backup = StubProvider::start(0);
    let mut server = TestServer::start(config(&[], |c| with_providers(c, &primary, &backup))).await;
    let script = b"var a = 1; eval('console.log(a)');";

    for _ in 0..2 {
        let record = server.analyse("a.js", script, "deobfuscate").await;
        let results = &record["results"];
        assert_eq!(record["status"], "completed", "{record}");
        assert_eq!(results["usedFallback"], true);
        let attempts = results["providers"].as_array().unwrap();
        assert_eq!(attempts[0]["provider"], "primary");
        assert_eq!(attempts[0]["outcome"], "failure");
        assert!(attempts[0]["detail"].as_str().unwrap().contains("HTTP 500"), "{attempts:?}");
        assert_eq!(attempts[1]["outcome"], "success");
        assert_eq!(results["analysisReport"], "stub analysis");
    }
    assert_eq!(primary.calls(), 2);

    // Two consecutive failures opened the breaker: the primary is skipped without a call.
    let record = server.analyse("a.js", script, "deobfuscate").await;
    let attempts = record["results"]["providers"].as_array().unwrap();
    assert_eq!(attempts[0]["outcome"], "rejected", "{attempts:?}");
    assert_eq!(attempts[1]["outcome"], "success");
    assert_eq!(primary.calls(), 2, "an open breaker sends nothing to the provider");

    let primary_view = server.breaker("primary").await;
    assert_eq!(primary_view["state"], "open", "{primary_view}");
    let (_, metrics) = server.get("/metrics").await;
    let text = metrics.as_str().unwrap();
    assert!(text.contains(r#"athena_breaker_state{provider="primary",state="open"} 1"#), "{text}");
    assert!(text.contains(r#"athena_breaker_state{provider="primary",state="closed"} 0"#));
    let failures = r#"athena_provider_calls_total{outcome="failure",provider="primary"} 2"#;
    assert!(text.contains(failures));

    // With the breaker flag off, calls bypass the breaker and reach the provider again.
    let (code, _) = server.put("/api/flags/enableCircuitBreaker", json!({"value": false})).await;
    assert_eq!(code, 200);
    primary.set_failing(0);
    let record = server.analyse("a.js", script, "deobfuscate").await;
    let attempts = record["results"]["providers"].as_array().unwrap();
    assert_eq!(attempts[0]["provider"], "primary");
    assert_eq!(attempts[0]["outcome"], "success", "{attempts:?}");
    assert_eq!(record["results"]["usedFallback"], false);
    assert_eq!(primary.calls(), 3);
    primary.stop().await;
    backup.stop().await;
}

#[actix_rt::test]
async fn client_errors_do_not_count_against_the_provider_and_failover_can_be_turned_off() {
    let primary = StubProvider::start(400);
    let backup = StubProvider::start(0);
    let mut server = TestServer::start(config(&[], |c| with_providers(c, &primary, &backup))).await;
    let (code, _) = server.put("/api/flags/enable_ai_failover", json!({"value": false})).await;
    assert_eq!(code, 200);

    for _ in 0..3 {
        let record = server.analyse("v.js", b"alert(1)", "vulnerabilities").await;
        let attempts = record["results"]["providers"].as_array().unwrap();
        assert_eq!(attempts.len(), 1, "no failover while the flag is off: {attempts:?}");
        assert_eq!(attempts[0]["outcome"], "failure");
        assert_eq!(record["status"], "completed", "the static part still completes the job");
    }
    assert_eq!(primary.calls(), 3, "a 400 is the request's fault: the breaker stays closed");
    assert_eq!(backup.calls(), 0);

    primary.set_failing(0);
    let record = server.analyse("v.js", b"alert(1)", "vulnerabilities").await;
    let vulns = record["results"]["vulnerabilities"].as_array().unwrap();
    assert_eq!(vulns[0]["name"], "Stub finding");
    primary.stop().await;
    backup.stop().await;
}

#[actix_rt::test]
async fn an_empty_failover_budget_stops_failover_and_the_report_says_why() {
    let primary = StubProvider::start(503);
    let backup = StubProvider::start(0);
    let mut server = TestServer::start(config(&[], |c| {
        with_providers(c, &primary, &backup);
        c.router.failover_budget.ratio = 0.0;
        c.router.failover_budget.min_per_second = 0.0;
        c.router.failover_budget.max_balance = 1.0;
    }))
    .await;

    let record = server.analyse("b.js", b"eval('1')", "deobfuscate").await;
    let results = &record["results"];
    let attempts = results["providers"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0]["outcome"], "failure");
    assert_eq!(attempts[1]["outcome"], "rejected");
    assert_eq!(attempts[1]["detail"], "failover retry budget exhausted");
    assert_eq!(backup.calls(), 0);
    let why = results["aiError"].as_str().expect("the report says why the AI part is missing");
    assert!(why.contains("primary failure") && why.contains("budget"), "{why}");
    primary.stop().await;
    backup.stop().await;
}
