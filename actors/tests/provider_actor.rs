//! The provider actor around its client: a retried call is one breaker outcome, client
//! errors and simulated (chaos) failures leave the breaker alone, and retries and injections
//! reach the metrics.

use std::sync::Arc;

use actix::prelude::*;
use athena_actors::breaker::BreakerState;
use athena_actors::clock::ManualClock;
use athena_actors::provider::{
    AiTask, AiTaskKind, BreakerBoard, BreakerView, CallProvider, ProviderActor, ProviderConfig,
    ProviderError,
};
use athena_actors::telemetry::{KnownSeries, Telemetry, TelemetryActor};
use serde_json::json;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

struct Rig {
    server: MockServer,
    actor: Addr<ProviderActor>,
    board: BreakerBoard,
    telemetry: Telemetry,
}

/// A provider "p" with 3 attempts per call (no wait) and a breaker that opens on 2 counted
/// failures in a row, against a mock answering `status` to everything.
async fn rig(status: u16) -> Rig {
    let server = MockServer::start().await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(status)).mount(&server).await;
    let config: ProviderConfig = serde_json::from_value(json!({
        "kind": "openai",
        "base_url": format!("{}/v1", server.uri()),
        "model": "m",
        "api_key": "k",
        "timeout": "5s",
        "retry": {"max_attempts": 3, "initial_backoff": "0s", "jitter": 0.0},
        "breaker": {"consecutive_failures": 2, "open_duration": "30s", "jitter": 0.0},
    }))
    .unwrap();
    let known = KnownSeries { providers: vec!["p".into()], services: vec![] };
    let telemetry = TelemetryActor::start_with(&known);
    let clock = Arc::new(ManualClock::new());
    let board = BreakerBoard::with_clock(clock.clone());
    let actor = ProviderActor::new("p", 0, &config, clock, board.clone(), telemetry.clone());
    Rig { server, actor: actor.start(), board, telemetry }
}

fn call(simulate_failure: bool) -> CallProvider {
    let task = AiTask {
        kind: AiTaskKind::Deobfuscate,
        file_name: "a.js".into(),
        file_type: "javascript",
        content: "eval('1')".into(),
        metasploit: false,
    };
    CallProvider { task, use_breaker: true, deadline: None, simulate_failure }
}

impl Rig {
    async fn call(&self, simulate_failure: bool) -> ProviderError {
        self.actor.send(call(simulate_failure)).await.unwrap().unwrap_err()
    }

    async fn requests(&self) -> usize {
        self.server.received_requests().await.map_or(0, |r| r.len())
    }

    fn breaker(&self) -> BreakerView {
        self.board.views().into_iter().next().expect("the actor published its breaker")
    }

    async fn metric(&self, series: &str) -> String {
        let text = self.telemetry.gather().await;
        let line = text.lines().find(|l| l.starts_with(series));
        line.unwrap_or_else(|| panic!("no {series} in\n{text}")).to_string()
    }
}

#[actix_rt::test]
async fn a_retried_call_is_one_outcome_for_the_breaker() {
    let rig = rig(503).await;
    let err = rig.call(false).await;
    assert!(matches!(err, ProviderError::Status { status: 503, .. }), "{err:?}");
    assert_eq!(rig.requests().await, 3, "three attempts");
    let view = rig.breaker();
    assert_eq!(view.snapshot.consecutive_failures, 1, "but one failure");
    assert_eq!(view.snapshot.state, BreakerState::Closed);

    rig.call(false).await;
    assert_eq!(rig.breaker().snapshot.state, BreakerState::Open);
    let err = rig.call(false).await;
    assert!(matches!(err, ProviderError::BreakerOpen { .. }), "{err:?}");
    assert_eq!(rig.requests().await, 6, "an open breaker sends nothing");

    let retries = r#"athena_provider_retries_total{provider="p",reason="server_error"}"#;
    assert_eq!(rig.metric(retries).await, format!("{retries} 4"));
    let timeouts = r#"athena_provider_retries_total{provider="p",reason="timeout"}"#;
    assert_eq!(rig.metric(timeouts).await, format!("{timeouts} 0"), "known series start at 0");
    let failures = r#"athena_provider_calls_total{outcome="failure",provider="p"}"#;
    assert_eq!(rig.metric(failures).await, format!("{failures} 2"), "calls, not attempts");
}

#[actix_rt::test]
async fn client_errors_and_simulated_failures_leave_the_breaker_alone() {
    let rig = rig(400).await;
    for _ in 0..3 {
        let err = rig.call(false).await;
        assert!(matches!(err, ProviderError::Status { status: 400, .. }), "{err:?}");
    }
    assert_eq!(rig.requests().await, 3, "a 400 is not retried");
    let snapshot = rig.breaker().snapshot;
    assert_eq!((snapshot.consecutive_failures, snapshot.totals.failures), (0, 0));
    assert_eq!(snapshot.totals.ignored, 3);

    for _ in 0..5 {
        assert_eq!(rig.call(true).await, ProviderError::Simulated);
    }
    assert_eq!(rig.requests().await, 3, "a simulated failure sends nothing");
    let after = rig.breaker().snapshot;
    assert_eq!(after.state, BreakerState::Closed);
    assert_eq!(after.totals, snapshot.totals, "and the breaker never hears of it");
    let chaos = r#"athena_chaos_injections_total{provider="p"}"#;
    assert_eq!(rig.metric(chaos).await, format!("{chaos} 5"));
}
