//! Failover end to end, over HTTP, against two fake providers on local sockets: the primary
//! fails, its breaker opens, jobs complete on the secondary; the primary heals and, once the
//! open period has passed on the engine's (manual) clock, takes traffic back through
//! half-open. No test here sleeps: breaker time moves only when the test moves it.

mod common;
mod fakes;

use std::sync::Arc;
use std::time::Duration;

use athena_actors::clock::ManualClock;
use common::{config, TestServer};
use fakes::{control, primary_then_secondary, requests, start_fake, OPEN_FOR};
use serde_json::{json, Value};

const SCRIPT: &[u8] = b"var p = 'aHR0cDovL2V2aWwudGVzdA=='; eval(atob(p));";

fn attempts(record: &Value) -> Vec<(String, String)> {
    let list = record["results"]["providers"].as_array().expect("provider attempts");
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    list.iter().map(|a| (text(&a["provider"]), text(&a["outcome"]))).collect()
}

fn pair(provider: &str, outcome: &str) -> (String, String) {
    (provider.to_string(), outcome.to_string())
}

async fn breaker_state(server: &TestServer, provider: &str) -> Value {
    server.breaker(provider).await["state"].clone()
}

#[actix_rt::test]
async fn a_failing_primary_fails_over_and_heals_through_half_open() {
    let primary = start_fake(1);
    let secondary = start_fake(2);
    let clock = ManualClock::new();
    let loaded = config(&[], |c| primary_then_secondary(c, &primary, &secondary));
    let mut server = TestServer::start_with_clock(loaded, Arc::new(clock.clone())).await;

    // Healthy: the primary answers, through the OpenAI shape.
    let record = server.analyse("a.js", SCRIPT, "deobfuscate").await;
    assert_eq!(attempts(&record), [pair("primary", "success")], "{record}");
    assert_eq!(record["results"]["usedFallback"], false);
    let report = record["results"]["analysisReport"].as_str().expect("an analysis report");
    assert!(report.contains("FAKE model"), "{report}");
    assert!(record["results"]["deobfuscatedCode"].as_str().unwrap().contains("eval(atob(p))"));

    // The primary fails every request: each job retries it once, then fails over.
    control(&primary, json!({"error_rate": 1.0, "error_status": 503})).await;
    for _ in 0..2 {
        let record = server.analyse("a.js", SCRIPT, "deobfuscate").await;
        assert_eq!(record["status"], "completed");
        assert_eq!(
            attempts(&record),
            [pair("primary", "failure"), pair("secondary", "success")],
            "{record}"
        );
        let detail = record["results"]["providers"][0]["detail"].as_str().unwrap();
        assert!(detail.contains("HTTP 503"), "{detail}");
        assert_eq!(record["results"]["usedFallback"], true);
        let report = record["results"]["analysisReport"].as_str().unwrap();
        assert!(report.contains("FAKE model"), "the Anthropic shape parsed too: {report}");
    }
    assert_eq!(requests(&primary).await, 1 + 2 * 2, "two attempts per failed call");
    assert_eq!(breaker_state(&server, "primary").await, "open");

    // Open: the primary is skipped without a request.
    let record = server.analyse("a.js", SCRIPT, "deobfuscate").await;
    assert_eq!(attempts(&record), [pair("primary", "rejected"), pair("secondary", "success")]);
    assert_eq!(requests(&primary).await, 5);

    // Healed, but the open period has not passed on the engine's clock: still skipped.
    control(&primary, json!({"error_rate": 0.0})).await;
    clock.advance(OPEN_FOR - Duration::from_secs(1));
    let record = server.analyse("a.js", SCRIPT, "deobfuscate").await;
    assert_eq!(attempts(&record)[0], pair("primary", "rejected"));
    assert_eq!(requests(&primary).await, 5);

    // Past it: one trial goes through half-open, succeeds, and the breaker closes.
    clock.advance(Duration::from_secs(2));
    let record = server.analyse("a.js", SCRIPT, "deobfuscate").await;
    assert_eq!(attempts(&record), [pair("primary", "success")], "{record}");
    assert_eq!(record["results"]["usedFallback"], false);
    assert_eq!(breaker_state(&server, "primary").await, "closed");
    let record = server.analyse("a.js", SCRIPT, "deobfuscate").await;
    assert_eq!(attempts(&record), [pair("primary", "success")]);
    assert_eq!(requests(&primary).await, 7);

    let (_, metrics) = server.get("/metrics").await;
    let text = metrics.as_str().unwrap();
    for series in [
        r#"athena_provider_retries_total{provider="primary",reason="server_error"} 2"#,
        r#"athena_provider_retries_total{provider="secondary",reason="server_error"} 0"#,
        concat!(
            r#"athena_breaker_transitions_total{from="closed",provider="primary","#,
            r#"reason="consecutive_failures",to="open"} 1"#
        ),
        r#"athena_breaker_state{provider="primary",state="closed"} 1"#,
    ] {
        assert!(text.contains(series), "missing {series}");
    }
    let healed = text.lines().any(|l| {
        l.starts_with("athena_breaker_transitions_total")
            && l.contains(r#"from="half_open""#)
            && l.contains(r#"to="closed""#)
            && l.ends_with(" 1")
    });
    assert!(healed, "closed again through half-open:\n{text}");
    primary.stop().await;
    secondary.stop().await;
}
