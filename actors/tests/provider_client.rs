//! The provider clients against a mock HTTP server on a real socket (wiremock): both wire
//! formats, retries and their limits, timeouts, malformed replies, and the API key kept out
//! of every error.
//!
//! Tests that measure waits run the retry loop on a paused tokio runtime and each HTTP
//! attempt on a second, real-time runtime. A paused runtime jumps its clock to the next timer
//! whenever it is idle, so an HTTP timeout armed on it would fire while the mock server (on
//! its own thread) is still answering; with the attempts elsewhere, the only timers on the
//! paused runtime are the retry waits, and the time they take is exact.

use std::time::Duration;

use athena_actors::provider::retry::{self, AttemptContext, RetryConfig};
use athena_actors::provider::{Prompt, ProviderClient, ProviderError, ProviderKind};
use serde_json::{json, Value};
use tokio::runtime::{Builder, Runtime};
use tokio::time::Instant;
use wiremock::matchers::{body_partial_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const KEY: &str = "sk-test-DO-NOT-LEAK-0123456789";
const SECOND: Duration = Duration::from_secs(1);
const KINDS: [ProviderKind; 2] = [ProviderKind::Openai, ProviderKind::Anthropic];

fn route(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::Openai => "/v1/chat/completions",
        ProviderKind::Anthropic => "/v1/messages",
    }
}

fn ok_body(kind: ProviderKind, text: &str) -> Value {
    match kind {
        ProviderKind::Openai => {
            json!({"choices": [{"message": {"role": "assistant", "content": text}}]})
        }
        ProviderKind::Anthropic => json!({"content": [{"type": "text", "text": text}]}),
    }
}

fn retry_config(max_attempts: u32, initial_backoff: Duration) -> RetryConfig {
    let max_backoff = Duration::from_secs(10);
    RetryConfig { max_attempts, initial_backoff, max_backoff, jitter: 0.0 }
}

fn client(
    kind: ProviderKind,
    server: &MockServer,
    timeout: Duration,
    retry: RetryConfig,
) -> ProviderClient {
    let base = format!("{}/v1", server.uri());
    ProviderClient::new(kind, &base, "test-model", Some(KEY.into()), timeout, 256, 0.0)
        .with_retry(retry)
}

fn prompt() -> Prompt {
    Prompt { system: "be brief".into(), user: "deobfuscate this".into() }
}

/// Completes with the retries counted; asserts no error ever carries the key.
async fn complete(client: &ProviderClient) -> (Result<String, ProviderError>, Vec<&'static str>) {
    let mut reasons = Vec::new();
    let result = client.complete(&prompt(), None, |n| reasons.push(n.reason)).await;
    if let Err(err) = &result {
        assert!(!format!("{err} {err:?}").contains(KEY), "the key leaked: {err:?}");
    }
    (result, reasons)
}

async fn requests(server: &MockServer) -> usize {
    server.received_requests().await.map_or(0, |r| r.len())
}

async fn mount_ok(server: &MockServer, kind: ProviderKind) {
    Mock::given(method("POST"))
        .and(path(route(kind)))
        .respond_with(ResponseTemplate::new(200).set_body_json(ok_body(kind, "fine")))
        .mount(server)
        .await;
}

/// Answers `status` to the first `times` requests, with priority over a later `mount_ok`.
async fn mount_failures(
    server: &MockServer,
    kind: ProviderKind,
    template: ResponseTemplate,
    times: u64,
) {
    Mock::given(method("POST"))
        .and(path(route(kind)))
        .respond_with(template)
        .up_to_n_times(times)
        .with_priority(1)
        .mount(server)
        .await;
}

#[tokio::test]
async fn both_wire_formats_send_the_documented_request_and_read_the_reply() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .and(body_partial_json(json!({
            "model": "test-model",
            "max_tokens": 256,
            "messages": [{"role": "system", "content": "be brief"},
                         {"role": "user", "content": "deobfuscate this"}],
        })))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(ok_body(ProviderKind::Openai, "from openai")),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .and(header("x-api-key", KEY))
        .and(header("anthropic-version", "2023-06-01"))
        .and(body_partial_json(json!({
            "model": "test-model",
            "system": "be brief",
            "messages": [{"role": "user", "content": "deobfuscate this"}],
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "content": [{"type": "text", "text": "from "}, {"type": "tool_use", "id": "x"},
                        {"type": "text", "text": "anthropic"}],
        })))
        .expect(1)
        .mount(&server)
        .await;

    let none = retry_config(1, Duration::ZERO);
    let openai = client(ProviderKind::Openai, &server, Duration::from_secs(5), none.clone());
    assert_eq!(complete(&openai).await.0.unwrap(), "from openai");
    let anthropic = client(ProviderKind::Anthropic, &server, Duration::from_secs(5), none);
    assert_eq!(complete(&anthropic).await.0.unwrap(), "from anthropic", "text blocks joined");
    assert!(!format!("{anthropic:?}").contains(KEY), "Debug redacts the key");
}

#[tokio::test]
async fn every_retryable_status_is_retried_then_succeeds() {
    for kind in KINDS {
        for (status, reason) in [
            (408, "request_timeout"),
            (429, "rate_limited"),
            (500, "server_error"),
            (502, "server_error"),
            (503, "server_error"),
            (504, "server_error"),
        ] {
            let server = MockServer::start().await;
            mount_failures(&server, kind, ResponseTemplate::new(status), 1).await;
            mount_ok(&server, kind).await;
            let c = client(kind, &server, Duration::from_secs(5), retry_config(3, Duration::ZERO));
            let (result, reasons) = complete(&c).await;
            assert_eq!(result.as_deref(), Ok("fine"), "{kind:?} {status}");
            assert_eq!(reasons, [reason], "{kind:?} {status}");
            assert_eq!(requests(&server).await, 2);
        }
    }
}

#[tokio::test]
async fn retries_stop_at_max_attempts_and_the_last_error_stands() {
    for kind in KINDS {
        let server = MockServer::start().await;
        mount_failures(&server, kind, ResponseTemplate::new(503).set_body_string("overloaded"), 10)
            .await;
        let c = client(kind, &server, Duration::from_secs(5), retry_config(3, Duration::ZERO));
        let (result, reasons) = complete(&c).await;
        let err = result.unwrap_err();
        assert_eq!(err, ProviderError::Status { status: 503, detail: "overloaded".into() });
        assert!(err.counts(), "one counted failure for the breaker");
        assert_eq!(reasons.len(), 2);
        assert_eq!(requests(&server).await, 3);
    }
}

#[tokio::test]
async fn client_errors_are_neither_retried_nor_counted() {
    for kind in KINDS {
        for status in [400, 401, 404] {
            let server = MockServer::start().await;
            mount_failures(&server, kind, ResponseTemplate::new(status), 10).await;
            let c = client(kind, &server, Duration::from_secs(5), retry_config(3, Duration::ZERO));
            let (result, reasons) = complete(&c).await;
            let err = result.unwrap_err();
            assert!(matches!(err, ProviderError::Status { status: s, .. } if s == status));
            assert!(!err.counts(), "{status} is the request's fault, not the provider's");
            assert!(reasons.is_empty());
            assert_eq!(requests(&server).await, 1, "{kind:?} {status} is not retried");
        }
    }
}

#[tokio::test]
async fn malformed_replies_are_counted_but_not_retried() {
    let json = |body: Value| ResponseTemplate::new(200).set_body_json(body);
    let text = |body: &str| ResponseTemplate::new(200).set_body_string(body);
    let cases = [
        (ProviderKind::Openai, text("<html>gateway</html>")),
        (ProviderKind::Openai, json(json!({"choices": []}))),
        (ProviderKind::Openai, json(ok_body(ProviderKind::Openai, " "))),
        (ProviderKind::Anthropic, text("{truncated")),
        (ProviderKind::Anthropic, json(json!({"content": []}))),
        (ProviderKind::Anthropic, json(json!({"id": "msg"}))),
    ];
    for (kind, template) in cases {
        let server = MockServer::start().await;
        mount_failures(&server, kind, template, 10).await;
        let c = client(kind, &server, Duration::from_secs(5), retry_config(3, Duration::ZERO));
        let (result, reasons) = complete(&c).await;
        let err = result.unwrap_err();
        assert!(matches!(err, ProviderError::Malformed(_)), "{err:?}");
        assert!(err.counts());
        assert!(reasons.is_empty());
        assert_eq!(requests(&server).await, 1);
    }
}

#[tokio::test]
async fn a_hung_provider_times_out_and_each_attempt_is_retried() {
    // A 200 ms client timeout on a local socket: the server holds its answer for longer.
    for kind in KINDS {
        let server = MockServer::start().await;
        let hung = ResponseTemplate::new(200)
            .set_body_json(ok_body(kind, "late"))
            .set_delay(Duration::from_secs(3));
        mount_failures(&server, kind, hung, 10).await;
        let c = client(kind, &server, Duration::from_millis(200), retry_config(2, Duration::ZERO));
        let (result, reasons) = complete(&c).await;
        let err = result.unwrap_err();
        assert_eq!(err, ProviderError::Timeout(Duration::from_millis(200)));
        assert!(err.counts());
        assert_eq!(reasons, ["timeout"]);
    }
}

#[tokio::test]
async fn a_deadline_shorter_than_the_timeout_cuts_the_attempt_and_is_not_the_providers_fault() {
    let kind = ProviderKind::Openai;
    let server = MockServer::start().await;
    let hung = ResponseTemplate::new(200)
        .set_body_json(ok_body(kind, "late"))
        .set_delay(Duration::from_secs(3));
    mount_failures(&server, kind, hung, 10).await;
    let c = client(kind, &server, Duration::from_secs(30), retry_config(3, Duration::ZERO));
    let deadline = Some(Instant::now() + Duration::from_millis(200));
    let err = c
        .complete(&prompt(), deadline, |_| panic!("no retry past the deadline"))
        .await
        .unwrap_err();
    assert_eq!(err, ProviderError::DeadlineExceeded);
    assert!(!err.counts());
}

#[tokio::test]
async fn connection_errors_are_retried_and_name_no_url() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}/v1");
    for kind in KINDS {
        let c = ProviderClient::new(
            kind,
            &base,
            "m",
            Some(KEY.into()),
            Duration::from_secs(2),
            16,
            0.0,
        )
        .with_retry(retry_config(3, Duration::ZERO));
        let mut reasons = Vec::new();
        let err = c.complete(&prompt(), None, |n| reasons.push(n.reason)).await.unwrap_err();
        assert!(matches!(err, ProviderError::Connection(_)), "{err:?}");
        assert!(err.counts());
        assert_eq!(reasons, ["connection", "connection"]);
        assert!(!err.to_string().contains(&port.to_string()), "no URL in the message: {err}");
    }
}

#[tokio::test]
async fn a_key_the_provider_echoes_back_is_redacted() {
    for kind in KINDS {
        let server = MockServer::start().await;
        let body = format!(r#"{{"error": {{"message": "Incorrect API key provided: {KEY}"}}}}"#);
        mount_failures(&server, kind, ResponseTemplate::new(401).set_body_string(body), 10).await;
        let c = client(kind, &server, Duration::from_secs(5), retry_config(1, Duration::ZERO));
        let (result, _) = complete(&c).await;
        let err = result.unwrap_err().to_string();
        assert!(err.contains("Incorrect API key provided: <redacted>"), "{err}");
    }
}

#[tokio::test]
async fn a_provider_without_a_key_is_never_called() {
    let server = MockServer::start().await;
    let base = format!("{}/v1", server.uri());
    for key in [None, Some("  ".to_string())] {
        let c = ProviderClient::new(
            ProviderKind::Openai,
            &base,
            "m",
            key,
            Duration::from_secs(1),
            16,
            0.0,
        );
        assert!(!c.has_credentials());
        let err = c.complete(&prompt(), None, |_| panic!("no retry")).await.unwrap_err();
        assert_eq!(err, ProviderError::NoCredentials);
    }
    assert_eq!(requests(&server).await, 0);
}

/// A paused runtime for the retry loop and a real one for the HTTP attempts (module docs).
struct Runtimes {
    paused: Runtime,
    real: Runtime,
}

impl Runtimes {
    fn new() -> Self {
        let mut paused = Builder::new_current_thread();
        let paused = paused.enable_all().start_paused(true).build().unwrap();
        let real = Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        Runtimes { paused, real }
    }

    /// Runs the client's retry loop on paused time; answers the result and when (in paused
    /// time since the start) each attempt began.
    fn run(
        &self,
        client: &ProviderClient,
        deadline_in: Option<Duration>,
    ) -> (Result<String, ProviderError>, Vec<Duration>) {
        let real = self.real.handle().clone();
        self.paused.block_on(async {
            let started = Instant::now();
            let mut starts = Vec::new();
            let result = retry::run(
                &client.retry,
                deadline_in.map(|d| started + d),
                |ctx: AttemptContext| {
                    starts.push(started.elapsed());
                    let (client, prompt) = (client.clone(), prompt());
                    let call = real.spawn(async move { client.attempt(&prompt, ctx).await });
                    async move { call.await.expect("the attempt task finished") }
                },
                |_| {},
            )
            .await;
            (result, starts)
        })
    }
}

#[test]
fn retry_after_in_seconds_or_as_a_date_is_waited_out_on_tokio_time() {
    let rt = Runtimes::new();
    for kind in KINDS {
        let server = rt.real.block_on(MockServer::start());
        let asked = ResponseTemplate::new(429).insert_header("Retry-After", "2");
        rt.real.block_on(mount_failures(&server, kind, asked, 1));
        rt.real.block_on(mount_ok(&server, kind));
        let c = client(
            kind,
            &server,
            Duration::from_secs(5),
            retry_config(3, Duration::from_millis(100)),
        );
        let (result, starts) = rt.run(&c, None);
        assert_eq!(result.as_deref(), Ok("fine"));
        assert_eq!(starts.len(), 2);
        assert!(starts[1] >= Duration::from_secs(2), "waited {:?}, asked 2 s", starts[1]);
        assert!(starts[1] < Duration::from_millis(2100), "not backoff on top: {:?}", starts[1]);

        // An HTTP date three seconds ahead: at most three seconds, more than two (the date
        // has whole seconds and the clock moved on while it was formatted).
        let server = rt.real.block_on(MockServer::start());
        let date = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(3));
        let asked = ResponseTemplate::new(503).insert_header("Retry-After", date.as_str());
        rt.real.block_on(mount_failures(&server, kind, asked, 1));
        rt.real.block_on(mount_ok(&server, kind));
        let c = client(
            kind,
            &server,
            Duration::from_secs(5),
            retry_config(3, Duration::from_millis(100)),
        );
        let (result, starts) = rt.run(&c, None);
        assert_eq!(result.as_deref(), Ok("fine"));
        assert!(
            starts[1] > Duration::from_secs(1) && starts[1] <= Duration::from_secs(3),
            "{starts:?}"
        );
    }
}

#[test]
fn retries_never_wait_past_the_deadline() {
    let rt = Runtimes::new();
    for kind in KINDS {
        // Backoff 1 s then 2 s: the second wait would end at 3 s, past a 2.5 s deadline.
        let server = rt.real.block_on(MockServer::start());
        rt.real.block_on(mount_failures(&server, kind, ResponseTemplate::new(500), 100));
        let c = client(kind, &server, Duration::from_secs(5), retry_config(10, SECOND));
        let (result, starts) = rt.run(&c, Some(Duration::from_millis(2500)));
        assert!(matches!(result, Err(ProviderError::Status { status: 500, .. })), "{result:?}");
        assert_eq!(starts, [Duration::ZERO, Duration::from_secs(1)]);

        // A Retry-After beyond the deadline ends the retries at once.
        let server = rt.real.block_on(MockServer::start());
        let asked = ResponseTemplate::new(429).insert_header("Retry-After", "5");
        rt.real.block_on(mount_failures(&server, kind, asked, 100));
        let c = client(kind, &server, Duration::from_secs(5), retry_config(10, SECOND));
        let (result, starts) = rt.run(&c, Some(Duration::from_secs(3)));
        assert!(matches!(result, Err(ProviderError::Status { status: 429, .. })), "{result:?}");
        assert_eq!(starts, [Duration::ZERO]);
        assert_eq!(rt.real.block_on(requests(&server)), 1);
    }
}
