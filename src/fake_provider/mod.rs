//! `athena fake-provider`: a FAKE AI provider, for tests and demos only.
//!
//! It speaks both wire formats Athena's clients use, `POST /v1/chat/completions` (OpenAI
//! shape) and `POST /v1/messages` (Anthropic shape), so a provider configured with
//! `base_url = "http://ADDR/v1"` and either kind talks to it unchanged. It misbehaves on
//! demand: added latency with jitter, a rate of errors with a chosen status, a rate of
//! requests it never answers. `PUT /control` changes any of those while it runs and
//! `GET /control` reads them with counters, so a test or a load test can script an outage and
//! a recovery over HTTP.
//!
//! Replies follow the layout the prompt asked for (see [`reply`]) and depend only on the
//! prompt, so the engine's reply parsing runs as it would against a real model. Every reply
//! says it comes from a fake model: nothing it says is an analysis.
//!
//! It lives in the binary's library, not in the binary, so tests start it in-process on
//! port 0. It checks that an API key header is present (proving the client sends one) and
//! never looks at its value.

mod reply;
mod settings;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

pub use settings::{Settings, SettingsUpdate};

/// Largest request body read: a prompt holds at most a bounded sample extract.
const MAX_BODY_BYTES: usize = 4 << 20;

/// What `athena fake-provider` prints on start, so nobody mistakes it for a real provider.
pub fn banner(addr: SocketAddr) -> String {
    format!(
        "athena fake-provider: a FAKE AI provider for tests and demos; its replies are not \
         analyses.\nlistening on http://{addr} (base_url = \"http://{addr}/v1\" for kind \
         \"openai\" or \"anthropic\"; PUT/GET http://{addr}/control to steer it)"
    )
}

/// The shared state of one fake provider.
struct State {
    settings: Mutex<Settings>,
    /// Decides errors and hangs; seedable so a scripted run can be replayed.
    rng: Mutex<StdRng>,
    requests: AtomicU64,
    errors: AtomicU64,
    hangs: AtomicU64,
}

impl State {
    fn settings(&self) -> Settings {
        self.settings.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn report(&self) -> Value {
        let mut doc = serde_json::to_value(self.settings()).unwrap_or_default();
        doc["requests"] = json!(self.requests.load(Ordering::Relaxed));
        doc["errors"] = json!(self.errors.load(Ordering::Relaxed));
        doc["hangs"] = json!(self.hangs.load(Ordering::Relaxed));
        doc
    }

    /// How this request will misbehave, drawn once so the lock is not held while waiting.
    fn draw(&self) -> Behaviour {
        let s = self.settings();
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        let delay = if s.jitter.is_zero() {
            s.latency
        } else {
            let spread = rng.gen_range(-1.0..=1.0) * s.jitter.as_secs_f64();
            Duration::from_secs_f64((s.latency.as_secs_f64() + spread).max(0.0))
        };
        let hang = rng.gen_bool(s.hang_rate);
        let error = (!hang && rng.gen_bool(s.error_rate)).then_some(s.error_status);
        Behaviour { delay, hang, error }
    }
}

struct Behaviour {
    delay: Duration,
    hang: bool,
    error: Option<u16>,
}

/// A fake provider serving on a local socket.
pub struct FakeProvider {
    pub addr: SocketAddr,
    handle: ServerHandle,
    task: actix_rt::task::JoinHandle<std::io::Result<()>>,
}

impl FakeProvider {
    /// Binds `bind` (port 0 picks a free port) and serves on the current actix system.
    /// `seed` makes the error and hang draws repeatable.
    pub fn start(bind: &str, settings: Settings, seed: Option<u64>) -> anyhow::Result<Self> {
        settings.validate().map_err(anyhow::Error::msg)?;
        let rng = match seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        let state = web::Data::new(State {
            settings: Mutex::new(settings),
            rng: Mutex::new(rng),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            hangs: AtomicU64::new(0),
        });
        let listener =
            TcpListener::bind(bind).map_err(|e| anyhow::anyhow!("cannot listen on {bind}: {e}"))?;
        let addr = listener.local_addr()?;
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(web::PayloadConfig::new(MAX_BODY_BYTES))
                .route("/v1/chat/completions", web::post().to(chat_completions))
                .route("/v1/messages", web::post().to(messages))
                .route("/control", web::get().to(get_control))
                .route("/control", web::put().to(put_control))
        })
        .workers(1)
        .disable_signals()
        // Hung requests never finish on their own: do not wait long for them on shutdown.
        .shutdown_timeout(1)
        .listen(listener)?
        .run();
        let handle = server.handle();
        let task = actix_rt::spawn(server);
        Ok(FakeProvider { addr, handle, task })
    }

    /// The `base_url` a provider configuration points at.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Stops serving; hung requests are dropped.
    pub async fn stop(self) {
        self.handle.stop(false).await;
        let _ = self.task.await;
    }
}

async fn get_control(state: web::Data<State>) -> HttpResponse {
    HttpResponse::Ok().json(state.report())
}

async fn put_control(state: web::Data<State>, body: web::Bytes) -> HttpResponse {
    let update = match SettingsUpdate::parse(&body) {
        Ok(update) => update,
        Err(message) => return bad_request(&message),
    };
    let next = {
        let mut settings = state.settings.lock().unwrap_or_else(|e| e.into_inner());
        match settings.apply(update) {
            Ok(next) => {
                *settings = next.clone();
                next
            }
            Err(message) => return bad_request(&message),
        }
    };
    tracing::info!(settings = ?next, "fake provider settings changed");
    HttpResponse::Ok().json(state.report())
}

fn bad_request(message: &str) -> HttpResponse {
    HttpResponse::BadRequest().json(json!({"error": {"message": message}}))
}

/// The two wire formats, for the parts that differ.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    OpenAi,
    Anthropic,
}

async fn chat_completions(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<State>,
) -> HttpResponse {
    let has_key = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|k| !k.trim().is_empty());
    serve(Shape::OpenAi, has_key, &body, &state).await
}

async fn messages(req: HttpRequest, body: web::Bytes, state: web::Data<State>) -> HttpResponse {
    let headers = req.headers();
    let has_key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|k| !k.trim().is_empty());
    if has_key && !headers.contains_key("anthropic-version") {
        let message = "the anthropic-version header is required";
        return error(Shape::Anthropic, StatusCode::BAD_REQUEST, message);
    }
    serve(Shape::Anthropic, has_key, &body, &state).await
}

async fn serve(shape: Shape, has_key: bool, body: &[u8], state: &State) -> HttpResponse {
    state.requests.fetch_add(1, Ordering::Relaxed);
    if !has_key {
        return error(shape, StatusCode::UNAUTHORIZED, "no API key was sent");
    }
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return error(shape, StatusCode::BAD_REQUEST, "the body is not JSON");
    };
    let model = request["model"].as_str().unwrap_or("fake-model").to_string();
    let Some(prompt) = user_prompt(&request) else {
        return error(shape, StatusCode::BAD_REQUEST, "the request has no user message");
    };

    let behaviour = state.draw();
    if !behaviour.delay.is_zero() {
        actix_rt::time::sleep(behaviour.delay).await;
    }
    if behaviour.hang {
        state.hangs.fetch_add(1, Ordering::Relaxed);
        // Never answers: the client's timeout is what this exercises.
        std::future::pending::<()>().await;
    }
    if let Some(status) = behaviour.error {
        state.errors.fetch_add(1, Ordering::Relaxed);
        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return error(shape, code, "FAKE provider: injected failure");
    }

    let text = reply::content(&prompt, &model);
    let id = reply::fingerprint(&prompt);
    let (input, output) = (prompt.split_whitespace().count(), text.split_whitespace().count());
    let doc = match shape {
        Shape::OpenAi => json!({
            "id": format!("chatcmpl-fake-{id:016x}"),
            "object": "chat.completion",
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }],
            "usage": {"prompt_tokens": input, "completion_tokens": output,
                      "total_tokens": input + output},
        }),
        Shape::Anthropic => json!({
            "id": format!("msg_fake_{id:016x}"),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": null,
            "usage": {"input_tokens": input, "output_tokens": output},
        }),
    };
    HttpResponse::Ok().json(doc)
}

/// The last user message, as plain text or as a list of text blocks.
fn user_prompt(request: &Value) -> Option<String> {
    let message = request["messages"]
        .as_array()?
        .iter()
        .rev()
        .find(|m| m["role"].as_str() == Some("user"))?;
    match &message["content"] {
        Value::String(s) => Some(s.clone()),
        Value::Array(blocks) => {
            Some(blocks.iter().filter_map(|b| b["text"].as_str()).collect::<Vec<_>>().join(""))
        }
        _ => None,
    }
}

/// An error in the provider's own shape.
fn error(shape: Shape, status: StatusCode, message: &str) -> HttpResponse {
    let doc = match shape {
        Shape::OpenAi => json!({"error": {"message": message, "type": error_type(status)}}),
        Shape::Anthropic => json!({
            "type": "error",
            "error": {"type": error_type(status), "message": message},
        }),
    };
    HttpResponse::build(status).json(doc)
}

fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        s if s >= 500 => "api_error",
        _ => "invalid_request_error",
    }
}
