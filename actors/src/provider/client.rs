//! HTTP clients for the AI provider APIs.
//!
//! Two wire formats cover the providers researchers use: the OpenAI chat completions API
//! (OpenAI itself, DeepSeek, and local servers such as Ollama, vLLM and llama.cpp) and the
//! Anthropic Messages API. `base_url` is the API root with its version
//! (`https://api.openai.com/v1`); the client appends the route. One exchange is an
//! [`attempt`](ProviderClient::attempt); [`complete`](ProviderClient::complete) retries
//! attempts as [`super::retry`] decides. Errors are classified so the breaker only counts what
//! says something about the provider (see [`ProviderError::counts`]). The API key is sent in a
//! header marked sensitive and is scrubbed from anything a provider echoes back, so it never
//! reaches an error or a log line.

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderValue, RETRY_AFTER};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::retry::{self, AttemptContext, AttemptError, RetryConfig, RetryNotice};

/// Which wire format a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Openai,
    Anthropic,
}

/// Why a provider call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    #[error("no API key is configured")]
    NoCredentials,
    #[error("the provider did not answer within {0:?}")]
    Timeout(Duration),
    #[error("could not reach the provider: {0}")]
    Connection(String),
    #[error("the provider answered HTTP {status}: {detail}")]
    Status { status: u16, detail: String },
    #[error("the provider's reply could not be read: {0}")]
    Malformed(String),
    #[error("the circuit breaker is {state}; retry in {retry_after_ms} ms")]
    BreakerOpen { state: &'static str, retry_after_ms: u64 },
    #[error("the provider worker panicked")]
    Panicked,
    /// The job's deadline ran out before the provider answered; the provider may be healthy.
    #[error("the job's deadline passed before the provider answered")]
    DeadlineExceeded,
    /// Injected by chaos testing (`X-Simulate-Failure`); no request was sent.
    #[error("simulated failure (chaos testing)")]
    Simulated,
}

impl ProviderError {
    /// Whether this failure says something about the provider's health. A request the
    /// provider refused as malformed (4xx other than 408 and 429) is our problem, not theirs.
    pub fn counts(&self) -> bool {
        match self {
            ProviderError::Timeout(_)
            | ProviderError::Connection(_)
            | ProviderError::Malformed(_)
            | ProviderError::Panicked => true,
            ProviderError::Status { status, .. } => {
                *status == 408 || *status == 429 || *status >= 500
            }
            ProviderError::NoCredentials
            | ProviderError::BreakerOpen { .. }
            | ProviderError::DeadlineExceeded
            | ProviderError::Simulated => false,
        }
    }

    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ProviderError::NoCredentials => "no_credentials",
            ProviderError::Timeout(_) => "timeout",
            ProviderError::Connection(_) => "connection",
            ProviderError::Status { status: 408, .. } => "request_timeout",
            ProviderError::Status { status: 429, .. } => "rate_limited",
            ProviderError::Status { status, .. } if *status >= 500 => "server_error",
            ProviderError::Status { .. } => "client_error",
            ProviderError::Malformed(_) => "malformed",
            ProviderError::BreakerOpen { .. } => "breaker_open",
            ProviderError::Panicked => "panicked",
            ProviderError::DeadlineExceeded => "deadline_exceeded",
            ProviderError::Simulated => "simulated",
        }
    }
}

/// A prompt ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    pub system: String,
    pub user: String,
}

/// One provider's HTTP client and settings.
#[derive(Clone)]
pub struct ProviderClient {
    pub kind: ProviderKind,
    pub base_url: String,
    pub model: String,
    api_key: Option<String>,
    /// One attempt's timeout; the deadline may cut it shorter.
    pub timeout: Duration,
    pub max_tokens: u32,
    pub temperature: f64,
    pub retry: RetryConfig,
    http: reqwest::Client,
}

impl std::fmt::Debug for ProviderClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderClient")
            .field("kind", &self.kind)
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("retry", &self.retry)
            .finish()
    }
}

/// How much of an error body is kept: enough to diagnose, never a whole page.
const ERROR_DETAIL_LIMIT: usize = 300;

/// The Messages API version this client speaks.
const ANTHROPIC_VERSION: &str = "2023-06-01";

impl ProviderClient {
    pub fn new(
        kind: ProviderKind,
        base_url: &str,
        model: &str,
        api_key: Option<String>,
        timeout: Duration,
        max_tokens: u32,
        temperature: f64,
    ) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .timeout(timeout)
            .build()
            .unwrap_or_default();
        ProviderClient {
            kind,
            base_url: base_url.trim_end_matches('/').to_string(),
            model: model.to_string(),
            api_key: api_key.filter(|k| !k.trim().is_empty()),
            timeout,
            max_tokens,
            temperature,
            retry: RetryConfig::default(),
            http,
        }
    }

    /// The same client with other retry settings.
    pub fn with_retry(mut self, retry: RetryConfig) -> Self {
        self.retry = retry;
        self
    }

    pub fn has_credentials(&self) -> bool {
        self.api_key.is_some()
    }

    /// Sends the prompt, retrying transient failures, and returns the model's text. No wait
    /// and no attempt reaches past `deadline`. `on_retry` hears of each retry.
    pub async fn complete(
        &self,
        prompt: &Prompt,
        deadline: Option<tokio::time::Instant>,
        on_retry: impl FnMut(&RetryNotice<'_>),
    ) -> Result<String, ProviderError> {
        retry::run(&self.retry, deadline, |ctx| self.attempt(prompt, ctx), on_retry).await
    }

    /// One request and its reply, with no retry.
    pub async fn attempt(
        &self,
        prompt: &Prompt,
        ctx: AttemptContext,
    ) -> Result<String, AttemptError> {
        let key = self.api_key.as_deref().ok_or(ProviderError::NoCredentials)?;
        // A deadline closer than the configured timeout cuts this attempt short; running out
        // of job time then says nothing about the provider, so it is not reported as a timeout.
        let (timeout, cut_by_deadline) = match ctx.remaining {
            Some(left) if left < self.timeout => (left, true),
            _ => (self.timeout, false),
        };
        let timed_out = || {
            if cut_by_deadline {
                ProviderError::DeadlineExceeded
            } else {
                ProviderError::Timeout(self.timeout)
            }
        };

        let request = self.request(key, prompt).timeout(timeout);
        let response = request.send().await.map_err(|e| {
            if e.is_timeout() {
                timed_out()
            } else {
                ProviderError::Connection(self.scrub(&error_chain(e)))
            }
        })?;

        let status = response.status();
        if !status.is_success() {
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| retry::parse_retry_after(v, SystemTime::now()));
            // The body only helps diagnose; a failure to read it leaves the detail empty.
            let body = response.text().await.unwrap_or_default();
            let scrubbed = self.scrub(body.trim());
            let detail: String = scrubbed.chars().take(ERROR_DETAIL_LIMIT).collect();
            let error = ProviderError::Status { status: status.as_u16(), detail };
            return Err(AttemptError { error, retry_after });
        }

        let body = response.bytes().await.map_err(|e| {
            if e.is_timeout() {
                timed_out()
            } else {
                ProviderError::Connection(self.scrub(&error_chain(e)))
            }
        })?;
        let body: Value = serde_json::from_slice(&body)
            .map_err(|e| ProviderError::Malformed(format!("the reply is not JSON: {e}")))?;
        Ok(self.extract_text(&body)?)
    }

    fn request(&self, key: &str, prompt: &Prompt) -> reqwest::RequestBuilder {
        match self.kind {
            ProviderKind::Openai => {
                let url = format!("{}/chat/completions", self.base_url);
                self.http.post(url).bearer_auth(key).json(&json!({
                    "model": self.model,
                    "max_tokens": self.max_tokens,
                    "temperature": self.temperature,
                    "messages": [
                        {"role": "system", "content": prompt.system},
                        {"role": "user", "content": prompt.user},
                    ],
                }))
            }
            ProviderKind::Anthropic => {
                // Sensitive: reqwest and hyper then leave the value out of their Debug output.
                let mut key_header =
                    HeaderValue::from_str(key).unwrap_or(HeaderValue::from_static(""));
                key_header.set_sensitive(true);
                self.http
                    .post(format!("{}/messages", self.base_url))
                    .header("x-api-key", key_header)
                    .header("anthropic-version", ANTHROPIC_VERSION)
                    .json(&json!({
                        "model": self.model,
                        "max_tokens": self.max_tokens,
                        "temperature": self.temperature,
                        "system": prompt.system,
                        "messages": [{"role": "user", "content": prompt.user}],
                    }))
            }
        }
    }

    /// Removes the API key from text a provider or the transport produced: some APIs quote
    /// the key they refused, and a misconfigured base_url could carry one.
    fn scrub(&self, text: &str) -> String {
        match &self.api_key {
            Some(key) => text.replace(key.as_str(), "<redacted>"),
            None => text.to_string(),
        }
    }

    fn extract_text(&self, body: &Value) -> Result<String, ProviderError> {
        let text = match self.kind {
            ProviderKind::Openai => match body.pointer("/choices/0/message/content") {
                Some(Value::String(s)) => Some(s.clone()),
                // Newer servers may send the content as a list of typed parts.
                Some(Value::Array(parts)) => Some(text_parts(parts)),
                _ => None,
            },
            ProviderKind::Anthropic => {
                body.get("content").and_then(Value::as_array).map(|blocks| text_parts(blocks))
            }
        };
        match text {
            None => Err(ProviderError::Malformed("the reply holds no message text".into())),
            Some(t) if t.trim().is_empty() => {
                Err(ProviderError::Malformed("the reply's message text is empty".into()))
            }
            Some(t) => Ok(t),
        }
    }
}

/// The text of `{"type": "text", "text": ...}` parts, joined.
fn text_parts(parts: &[Value]) -> String {
    parts
        .iter()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join("")
}

/// A transport error with its causes ("error sending request: connection refused"), without
/// the URL reqwest would otherwise print.
fn error_chain(err: reqwest::Error) -> String {
    let err = err.without_url();
    let mut text = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
