//! Test helpers: a real server on port 0 driven over real HTTP.
#![allow(dead_code)]

pub mod redis;

use std::collections::BTreeMap;
use std::time::Duration;

use athena::config::{self, Config};
use athena::http::RunningServer;
use athena_actors::events::JobEvent;
use base64::Engine as _;
use serde_json::{json, Value};
use tokio::sync::broadcast;

pub struct TestServer {
    pub server: RunningServer,
    pub base: String,
    pub client: reqwest::Client,
    events: broadcast::Receiver<JobEvent>,
}

/// Loads the built-in configuration with the given environment, adjusted by `tweak`.
pub fn config(env: &[(&str, &str)], tweak: impl FnOnce(&mut Config)) -> config::Loaded {
    let env: BTreeMap<String, String> =
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let mut loaded = config::load_from(None, env).expect("built-in configuration loads");
    loaded.config.server.bind = "127.0.0.1:0".into();
    loaded.config.server.http_workers = 1;
    tweak(&mut loaded.config);
    loaded
}

impl TestServer {
    pub async fn start(loaded: config::Loaded) -> TestServer {
        TestServer::start_node(loaded, athena::Role::All).await
    }

    /// A node in the given role (see [`athena::Role`]).
    pub async fn start_node(loaded: config::Loaded, role: athena::Role) -> TestServer {
        let server = athena::start_node(&loaded, role, athena_actors::clock::system())
            .expect("server starts");
        let base = format!("http://{}", server.addr);
        let events = server.node.events.subscribe();
        TestServer { server, base, client: reqwest::Client::new(), events }
    }

    /// [`TestServer::start`] with the clock the breakers read, so a test moves it by hand.
    pub async fn start_with_clock(
        loaded: config::Loaded,
        clock: athena_actors::clock::SharedClock,
    ) -> TestServer {
        let server = athena::start_with_clock(&loaded, clock).expect("server starts");
        let base = format!("http://{}", server.addr);
        let events = server.node.events.subscribe();
        TestServer { server, base, client: reqwest::Client::new(), events }
    }

    pub async fn default() -> TestServer {
        TestServer::start(config(&[], |_| {})).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self.client.get(self.url(path)).send().await.expect("request sent");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body read");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        let response =
            self.client.put(self.url(path)).json(&body).send().await.expect("request sent");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response =
            self.client.post(self.url(path)).json(&body).send().await.expect("request sent");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The first breaker slot of `provider` as `/api/status` shows it.
    pub async fn breaker(&self, provider: &str) -> Value {
        let (_, status) = self.get("/api/status").await;
        let breakers = status["breakers"].as_array().expect("breakers listed");
        breakers.iter().find(|b| b["provider"] == provider).expect("provider listed").clone()
    }

    /// Submits a sample as JSON; answers the status and body.
    pub async fn submit(&self, name: &str, bytes: &[u8], analysis_type: &str) -> (u16, Value) {
        let body = json!({
            "fileName": name,
            "fileContent": base64::engine::general_purpose::STANDARD.encode(bytes),
            "analysisType": analysis_type,
        });
        self.post("/api/analysis/submit", body).await
    }

    /// Submits and waits for the job's final event, then answers its status document.
    pub async fn analyse(&mut self, name: &str, bytes: &[u8], analysis_type: &str) -> Value {
        let (status, body) = self.submit(name, bytes, analysis_type).await;
        assert_eq!(status, 201, "{body}");
        let id = body["analysisId"].as_str().expect("analysisId").to_string();
        self.wait_finished(&id).await
    }

    /// Waits for the job's `complete` or `error` event (pushed by the engine, no polling),
    /// then reads its status over HTTP.
    pub async fn wait_finished(&mut self, id: &str) -> Value {
        let wait = async {
            loop {
                match self.events.recv().await {
                    Ok(e)
                        if e.analysis_id.to_string() == id
                            && matches!(e.kind, "complete" | "error") =>
                    {
                        break
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => panic!("event hub closed"),
                }
            }
        };
        // A safety net against a hung test, not a wait for a state change.
        tokio::time::timeout(Duration::from_secs(60), wait).await.expect("job finishes");
        let (status, record) = self.get(&format!("/api/analysis/status/{id}")).await;
        assert_eq!(status, 200);
        record
    }
}

/// One answer of the stub provider: after its latency, a failure while told to fail, else a
/// reply in the layout the prompt asked for.
async fn stub_reply(
    body: Value,
    calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    failing: std::sync::Arc<std::sync::atomic::AtomicU16>,
    delay_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> actix_web::HttpResponse {
    use std::sync::atomic::Ordering;
    calls.fetch_add(1, Ordering::SeqCst);
    // The provider's own latency, as a slow or hung provider has it.
    let wait = delay_ms.load(Ordering::SeqCst);
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
    let status = failing.load(Ordering::SeqCst);
    if status != 0 {
        let code = actix_web::http::StatusCode::from_u16(status).expect("a valid status");
        return actix_web::HttpResponse::build(code).json(json!({"error": "stub failure"}));
    }
    let prompt = body["messages"][1]["content"].as_str().unwrap_or_default();
    let content = if prompt.contains("JSON array") {
        r#"[{"name":"Stub finding","description":"from the stub","severity":"low"}]"#
    } else {
        "```\nconsole.log('clean')\n```\nANALYSIS: stub analysis"
    };
    actix_web::HttpResponse::Ok().json(json!({
        "choices": [{"message": {"role": "assistant", "content": content}}]
    }))
}

/// A stand-in for an OpenAI-compatible provider on a real socket: it answers chat
/// completions in the layout Athena's prompts ask for, or fails with `status` while told to.
pub struct StubProvider {
    pub base_url: String,
    pub calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub failing_status: std::sync::Arc<std::sync::atomic::AtomicU16>,
    /// Milliseconds every answer waits before it is sent.
    pub delay_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
    handle: actix_web::dev::ServerHandle,
}

impl StubProvider {
    pub fn start(failing_status: u16) -> StubProvider {
        use std::sync::atomic::{AtomicU16, AtomicUsize};
        use std::sync::Arc;

        let calls = Arc::new(AtomicUsize::new(0));
        let status = Arc::new(AtomicU16::new(failing_status));
        let delay = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (c, s, d) = (calls.clone(), status.clone(), delay.clone());
        let server = actix_web::HttpServer::new(move || {
            let (c, s, d) = (c.clone(), s.clone(), d.clone());
            actix_web::App::new().route(
                "/v1/chat/completions",
                actix_web::web::post().to(move |body: actix_web::web::Json<Value>| {
                    stub_reply(body.into_inner(), c.clone(), s.clone(), d.clone())
                }),
            )
        })
        .workers(1)
        .disable_signals()
        .bind("127.0.0.1:0")
        .expect("stub binds");
        let addr = server.addrs()[0];
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        StubProvider {
            base_url: format!("http://{addr}/v1"),
            calls,
            failing_status: status,
            delay_ms: delay,
            handle,
        }
    }

    pub fn calls(&self) -> usize {
        self.calls.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms.store(delay.as_millis() as u64, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn set_failing(&self, status: u16) {
        self.failing_status.store(status, std::sync::atomic::Ordering::SeqCst);
    }

    pub async fn stop(&self) {
        self.handle.stop(false).await;
    }
}

/// An OpenAI-kind provider at `base_url` with a key, no breaker jitter and a long open period,
/// so tests see exactly the transitions they cause.
pub fn stub_provider_config(
    base_url: &str,
    timeout: &str,
) -> athena_actors::provider::ProviderConfig {
    let mut p: athena_actors::provider::ProviderConfig = serde_json::from_value(json!({
        "kind": "openai",
        "base_url": base_url,
        "model": "stub-model",
        "api_key": "test-key-not-a-secret",
        "timeout": timeout,
    }))
    .expect("valid provider settings");
    p.breaker.jitter = 0.0;
    p.breaker.open_duration = Duration::from_secs(3600);
    p.breaker.max_open_duration = Duration::from_secs(3600);
    p
}
