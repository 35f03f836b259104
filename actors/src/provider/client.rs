//! HTTP clients for the AI provider APIs.
//!
//! Two wire formats cover the providers researchers use: the OpenAI chat completions API
//! (OpenAI itself, DeepSeek, and local servers such as Ollama, vLLM and llama.cpp) and the
//! Anthropic Messages API. `base_url` is the API root with its version
//! (`https://api.openai.com/v1`); the client appends the route. Errors are classified so the
//! breaker only counts what says something about the provider (see [`ProviderError::counts`]).
//! The API key is sent in a header and never appears in an error or a log line.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

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
            ProviderError::NoCredentials | ProviderError::BreakerOpen { .. } => false,
        }
    }

    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ProviderError::NoCredentials => "no_credentials",
            ProviderError::Timeout(_) => "timeout",
            ProviderError::Connection(_) => "connection",
            ProviderError::Status { status, .. } if *status == 429 => "rate_limited",
            ProviderError::Status { status, .. } if *status >= 500 => "server_error",
            ProviderError::Status { .. } => "client_error",
            ProviderError::Malformed(_) => "malformed",
            ProviderError::BreakerOpen { .. } => "breaker_open",
            ProviderError::Panicked => "panicked",
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
    pub timeout: Duration,
    pub max_tokens: u32,
    pub temperature: f64,
    http: reqwest::Client,
}

impl std::fmt::Debug for ProviderClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderClient")
            .field("kind", &self.kind)
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// How much of an error body is kept: enough to diagnose, never a whole page.
const ERROR_DETAIL_LIMIT: usize = 300;

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
            http,
        }
    }

    pub fn has_credentials(&self) -> bool {
        self.api_key.is_some()
    }

    /// Sends the prompt and returns the model's text.
    pub async fn complete(&self, prompt: &Prompt) -> Result<String, ProviderError> {
        let key = self.api_key.as_deref().ok_or(ProviderError::NoCredentials)?;
        let request = match self.kind {
            ProviderKind::Openai => {
                self.http.post(format!("{}/chat/completions", self.base_url)).bearer_auth(key).json(
                    &json!({
                        "model": self.model,
                        "max_tokens": self.max_tokens,
                        "temperature": self.temperature,
                        "messages": [
                            {"role": "system", "content": prompt.system},
                            {"role": "user", "content": prompt.user},
                        ],
                    }),
                )
            }
            ProviderKind::Anthropic => self
                .http
                .post(format!("{}/messages", self.base_url))
                .header("x-api-key", key)
                .header("anthropic-version", "2023-06-01")
                .json(&json!({
                    "model": self.model,
                    "max_tokens": self.max_tokens,
                    "temperature": self.temperature,
                    "system": prompt.system,
                    "messages": [{"role": "user", "content": prompt.user}],
                })),
        };

        let response = request.send().await.map_err(|e| self.transport_error(e))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            let detail: String = body.chars().take(ERROR_DETAIL_LIMIT).collect();
            return Err(ProviderError::Status { status: status.as_u16(), detail });
        }
        let body: Value = response.json().await.map_err(|e| {
            if e.is_timeout() {
                ProviderError::Timeout(self.timeout)
            } else {
                ProviderError::Malformed(format!("not JSON: {}", e.without_url()))
            }
        })?;
        self.extract_text(&body)
    }

    fn transport_error(&self, err: reqwest::Error) -> ProviderError {
        // reqwest puts the URL in its messages; the URL carries no secret, but strip it anyway
        // so a key passed in a query string by a misconfigured base_url cannot leak.
        if err.is_timeout() {
            ProviderError::Timeout(self.timeout)
        } else {
            ProviderError::Connection(err.without_url().to_string())
        }
    }

    fn extract_text(&self, body: &Value) -> Result<String, ProviderError> {
        let text = match self.kind {
            ProviderKind::Openai => body
                .pointer("/choices/0/message/content")
                .and_then(Value::as_str)
                .map(str::to_string),
            ProviderKind::Anthropic => {
                body.get("content").and_then(Value::as_array).map(|blocks| {
                    blocks
                        .iter()
                        .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
                        .filter_map(|b| b.get("text").and_then(Value::as_str))
                        .collect::<Vec<_>>()
                        .join("")
                })
            }
        };
        text.ok_or_else(|| ProviderError::Malformed("the reply holds no message text".into()))
    }
}
