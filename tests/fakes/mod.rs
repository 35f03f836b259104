//! Test helpers around in-process fake providers (`athena::fake_provider`) on port 0.
#![allow(dead_code)]

use athena::config::Config;
use athena::fake_provider::{FakeProvider, Settings};
use athena_actors::provider::{ProviderConfig, ProviderKind};
use serde_json::{json, Value};

/// Open period of the test providers' breakers.
pub const OPEN_FOR: std::time::Duration = std::time::Duration::from_secs(30);

/// A healthy fake provider on a free local port, with a fixed seed.
pub fn start_fake(seed: u64) -> FakeProvider {
    FakeProvider::start("127.0.0.1:0", Settings::default(), Some(seed)).expect("fake starts")
}

/// A provider pointing at a fake: two attempts per call without waiting, and a breaker that
/// opens after two failed calls in a row for [`OPEN_FOR`], then closes on one good trial.
pub fn provider(kind: ProviderKind, fake: &FakeProvider) -> ProviderConfig {
    serde_json::from_value(json!({
        "kind": kind,
        "base_url": fake.base_url(),
        "model": "fake-model",
        "api_key": "test-key-not-a-secret",
        "timeout": "10s",
        "retry": {"max_attempts": 2, "initial_backoff": "0s", "jitter": 0.0},
        "breaker": {
            "consecutive_failures": 2,
            "open_duration": "30s",
            "jitter": 0.0,
            "half_open_max_calls": 1,
            "half_open_successes": 1,
        },
    }))
    .expect("a valid provider configuration")
}

/// `primary` (OpenAI shape) then `secondary` (Anthropic shape), cache off so every job runs.
pub fn primary_then_secondary(c: &mut Config, primary: &FakeProvider, secondary: &FakeProvider) {
    c.providers.clear();
    c.providers.insert("primary".into(), provider(ProviderKind::Openai, primary));
    c.providers.insert("secondary".into(), provider(ProviderKind::Anthropic, secondary));
    c.flags.insert("ai_provider_priority".into(), json!(["primary", "secondary"]));
    c.flags.insert("cache_analysis_results".into(), json!(false));
}

/// `PUT /control` on a fake; answers its state afterwards.
pub async fn control(fake: &FakeProvider, update: Value) -> Value {
    let url = format!("http://{}/control", fake.addr);
    let response = reqwest::Client::new().put(url).json(&update).send().await.expect("sent");
    assert_eq!(response.status(), 200, "control update accepted");
    response.json().await.expect("JSON state")
}

/// `GET /control` on a fake: its settings and counters.
pub async fn state(fake: &FakeProvider) -> Value {
    let url = format!("http://{}/control", fake.addr);
    reqwest::get(url).await.expect("sent").json().await.expect("JSON state")
}

/// Model requests the fake has seen.
pub async fn requests(fake: &FakeProvider) -> u64 {
    state(fake).await["requests"].as_u64().expect("a request counter")
}
