//! Chaos testing over HTTP: `X-Simulate-Failure: primary` forces a failover while the
//! `chaos_testing` flag is on, is ignored while it is off, and never touches the breaker.

mod common;
mod fakes;

use base64::Engine as _;
use common::{config, TestServer};
use fakes::{primary_then_secondary, requests, start_fake};
use serde_json::{json, Value};

/// Submits with the chaos header; answers the status and body of the submission.
async fn submit_with_header(server: &TestServer, value: &str) -> (u16, Value) {
    let body = json!({
        "fileName": "c.js",
        "fileContent": base64::engine::general_purpose::STANDARD.encode(b"eval('chaos')"),
        "analysisType": "deobfuscate",
    });
    let response = server
        .client
        .post(server.url("/api/analysis/submit"))
        .header("X-Simulate-Failure", value)
        .json(&body)
        .send()
        .await
        .expect("sent");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON"))
}

async fn run_with_header(server: &mut TestServer, value: &str) -> Value {
    let (status, body) = submit_with_header(server, value).await;
    assert_eq!(status, 201, "{body}");
    server.wait_finished(body["analysisId"].as_str().unwrap()).await
}

async fn metric(server: &TestServer, series: &str) -> String {
    let (_, metrics) = server.get("/metrics").await;
    let text = metrics.as_str().unwrap().to_string();
    text.lines().find(|l| l.starts_with(series)).unwrap_or_default().to_string()
}

#[actix_rt::test]
async fn the_header_forces_a_failover_only_while_the_flag_is_on() {
    let primary = start_fake(3);
    let secondary = start_fake(4);
    let loaded = config(&[], |c| primary_then_secondary(c, &primary, &secondary));
    let mut server = TestServer::start(loaded).await;
    let chaos = r#"athena_chaos_injections_total{provider="primary"}"#;

    // Flag off (the default): the header changes nothing.
    let record = run_with_header(&mut server, "primary").await;
    let first = &record["results"]["providers"][0];
    assert_eq!((&first["provider"], &first["outcome"]), (&json!("primary"), &json!("success")));
    assert_eq!(record["results"]["usedFallback"], false);
    assert_eq!(metric(&server, chaos).await, format!("{chaos} 0"));
    assert_eq!(requests(&primary).await, 1);

    let (code, _) = server.put("/api/flags/chaosTesting", json!({"value": true})).await;
    assert_eq!(code, 200);

    // More chaos jobs than the breaker's failure threshold: it must not open.
    for _ in 0..3 {
        let record = run_with_header(&mut server, "primary").await;
        assert_eq!(record["status"], "completed");
        let attempts = record["results"]["providers"].as_array().unwrap();
        assert_eq!(attempts.len(), 2, "{attempts:?}");
        assert_eq!(attempts[0]["provider"], "primary");
        assert_eq!(attempts[0]["outcome"], "failure");
        assert_eq!(attempts[0]["detail"], "simulated failure (chaos testing)");
        assert_eq!(attempts[1]["provider"], "secondary");
        assert_eq!(attempts[1]["outcome"], "success");
        assert_eq!(record["results"]["usedFallback"], true);
    }
    assert_eq!(requests(&primary).await, 1, "a simulated failure makes no request");
    assert_eq!(metric(&server, chaos).await, format!("{chaos} 3"));
    let view = server.breaker("primary").await;
    assert_eq!(view["state"], "closed", "{view}");
    assert_eq!(view["consecutiveFailures"], 0, "{view}");

    // Without the header, jobs go to the primary as usual.
    let record = server.analyse("plain.js", b"eval('plain')", "deobfuscate").await;
    assert_eq!(record["results"]["providers"][0]["outcome"], "success");
    assert_eq!(record["results"]["usedFallback"], false);

    // A value other than `primary` is refused while the flag is on, not silently ignored.
    let (code, body) = submit_with_header(&server, "everything").await;
    assert_eq!(code, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("X-Simulate-Failure"));
    primary.stop().await;
    secondary.stop().await;
}
