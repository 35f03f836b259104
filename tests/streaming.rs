//! Event streams and idempotent submissions of a single process (no Redis).

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::TestServer;
use serde_json::{json, Value};

fn body(bytes: &[u8]) -> Value {
    json!({
        "fileName": "s.js",
        "fileContent": base64::engine::general_purpose::STANDARD.encode(bytes),
        "analysisType": "static",
    })
}

/// Reads a whole event stream (it ends after the job's final event).
async fn read_stream(server: &TestServer, id: &str) -> (u16, String, Vec<(String, Value)>) {
    let response =
        server.client.get(server.url(&format!("/api/analysis/{id}/events"))).send().await.unwrap();
    let status = response.status().as_u16();
    let kind = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or_default().to_string())
        .unwrap_or_default();
    let text = tokio::time::timeout(Duration::from_secs(30), response.text())
        .await
        .expect("the stream ends after the final event")
        .unwrap();
    let events = text
        .split("\n\n")
        .filter_map(|frame| {
            let event = frame.lines().find_map(|l| l.strip_prefix("event: "))?;
            let data = frame.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((event.to_string(), serde_json::from_str(data).unwrap()))
        })
        .collect();
    (status, kind, events)
}

#[actix_rt::test]
async fn a_job_streams_its_progress_and_ends_with_its_result() {
    let mut server = TestServer::default().await;
    // A job already finished gets its final event at once.
    let done = server.analyse("a.js", b"eval(atob('YWxlcnQoMSk='))", "static").await;
    let id = done["analysisId"].as_str().unwrap();
    let (status, kind, events) = read_stream(&server, id).await;
    assert_eq!(status, 200);
    assert!(kind.starts_with("text/event-stream"), "{kind}");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, "complete");
    assert_eq!(events[0].1["data"], done["results"]);

    // A running job streams what happens to it, then its result.
    let (status, submitted) = server.post("/api/analysis/submit", body(b"var x = 'new';")).await;
    assert_eq!(status, 201);
    let id = submitted["analysisId"].as_str().unwrap();
    let (_, _, events) = read_stream(&server, id).await;
    let (last, data) = events.last().expect("events").clone();
    assert_eq!(last, "complete", "{events:?}");
    assert_eq!(data["analysisId"], id);
    assert!(events.iter().all(|(_, e)| e["analysisId"] == id), "only this job's events");

    let (status, error) = server.get("/api/analysis/01ARZ3NDEKTSV4RRFFQ69G5FAV/events").await;
    assert_eq!((status, error["error"]["code"].as_str()), (404, Some("unknown_analysis")));
    server.put("/api/flags/enable_streaming_analysis", json!({"value": false})).await;
    let (status, error) = server.get(&format!("/api/analysis/{id}/events")).await;
    assert_eq!((status, error["error"]["code"].as_str()), (503, Some("streaming_disabled")));
}

#[actix_rt::test]
async fn an_idempotency_key_makes_a_retried_submission_return_the_same_job() {
    let server = TestServer::default().await;
    let send = |key: &str, bytes: &'static [u8]| {
        server
            .client
            .post(server.url("/api/analysis/submit"))
            .header("Idempotency-Key", key)
            .json(&body(bytes))
            .send()
    };
    let first = send("retry-me", b"first").await.unwrap();
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();
    let again = send("retry-me", b"second body, same key").await.unwrap();
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(first["analysisId"], again["analysisId"]);
    let other: Value = send("another", b"first").await.unwrap().json().await.unwrap();
    assert_ne!(other["analysisId"], first["analysisId"]);

    for bad in ["", "has space", &"k".repeat(256)] {
        let response = send(bad, b"x").await.unwrap();
        assert_eq!(response.status(), 400, "key {bad:?}");
        let error: Value = response.json().await.unwrap();
        assert!(error["error"]["message"].as_str().unwrap().contains("Idempotency-Key"));
    }
}
