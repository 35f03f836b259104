//! Submitting samples and reading job status.
//!
//! A submission is multipart (a `file` part plus text fields, as the original web client sends
//! it) or JSON with the file base64-encoded (as scripts and load tests send it). Both are read
//! as a stream and cut off at the configured body limit, so an oversized upload is refused with
//! 413 before it is buffered whole.
//!
//! `X-Simulate-Failure: primary` is the original load tests' way to force a failover. It is
//! honoured only while the `chaos_testing` flag is on, so a stray header in production does
//! nothing; see [`simulated_failure`].

use actix_multipart::Multipart;
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use athena_actors::bulkhead::Priority;
use athena_actors::events::JobEvent;
use athena_actors::flags::GetFlags;
use athena_actors::job::{AnalysisType, JobId, JobRecord, JobSpec, JobStatus, Sample};
use base64::Engine as _;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use super::error::ApiError;
use super::AppState;

/// Text fields of a multipart submission are small; anything larger is a client mistake.
const MAX_FIELD_BYTES: usize = 64 * 1024;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct JsonSubmission {
    file_name: Option<String>,
    file_content: Option<String>,
    analysis_type: Option<String>,
    ai_model: Option<String>,
    analysis_depth: Option<String>,
    container_config: Option<Value>,
    priority: Option<String>,
}

/// The options a submission may carry, in either encoding.
#[derive(Debug, Default)]
struct Options {
    analysis_type: Option<String>,
    ai_model: Option<String>,
    analysis_depth: Option<String>,
    container_config: Option<Value>,
    priority: Option<String>,
}

pub async fn submit(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let limit = state.max_body_bytes;

    let (sample, options) = if content_type.starts_with("multipart/form-data") {
        read_multipart(Multipart::new(req.headers(), payload), limit).await?
    } else if content_type.starts_with("application/json") {
        read_json(payload, limit).await?
    } else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send multipart/form-data with a `file` part, \
             or application/json with fileName and base64 fileContent",
        ));
    };

    let mut spec = build_spec(sample, options)?;
    spec.simulate_failure = simulated_failure(&req, &state).await?;
    let key = idempotency_key(&req)?;
    let (id, created) = match &state.node.queue {
        Some(queue) => {
            admit_to_queue(&state).await?;
            queue.enqueue(&spec, key.as_deref()).await?
        }
        None => match key {
            Some(key) => state.engine.submit_idempotent(key, spec).await?,
            None => (state.engine.submit(spec).await?, true),
        },
    };
    let status_url = format!("/api/analysis/status/{id}");
    let mut response = HttpResponse::Created();
    response.insert_header((header::LOCATION, status_url.clone()));
    if !created {
        // The same answer as the first time, marked as a replay.
        response.insert_header(("Idempotent-Replayed", "true"));
    }
    Ok(response.json(json!({"analysisId": id, "status": "pending", "statusUrl": status_url})))
}

/// The header that makes a submission safe to retry.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// The client's idempotency key: 1 to 255 visible ASCII characters.
fn idempotency_key(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(value) = req.headers().get(IDEMPOTENCY_KEY_HEADER) else { return Ok(None) };
    let bad = || ApiError::bad_request("Idempotency-Key must be 1 to 255 visible ASCII characters");
    let key = value.to_str().map_err(|_| bad())?.trim();
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad());
    }
    Ok(Some(key.to_string()))
}

/// What the router's admission does in embedded mode, for a node that only queues: no new
/// jobs while draining or in maintenance mode.
async fn admit_to_queue(state: &AppState) -> Result<(), ApiError> {
    if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(athena_actors::error::SubmitError::ShuttingDown.into());
    }
    let flags = state.engine.flags.send(GetFlags).await?;
    if flags.maintenance_mode {
        return Err(athena_actors::error::SubmitError::Maintenance.into());
    }
    Ok(())
}

/// The chaos header, read once per request and kept on the job.
pub const SIMULATE_FAILURE_HEADER: &str = "x-simulate-failure";

/// Whether the request asks for a simulated provider failure that the flags allow. With
/// `chaos_testing` off the header is ignored whatever it says; with it on, a value other than
/// `primary` is refused so a typo in a load test does not pass for a healthy failover.
pub(crate) async fn simulated_failure(
    req: &HttpRequest,
    state: &AppState,
) -> Result<bool, ApiError> {
    let Some(value) = req.headers().get(SIMULATE_FAILURE_HEADER) else { return Ok(false) };
    // Flags are only asked for when the header is there: ordinary submissions pay nothing.
    let flags = state.engine.flags.send(GetFlags).await?;
    if !flags.chaos_testing {
        return Ok(false);
    }
    match value.to_str().map(|v| v.trim().to_ascii_lowercase()) {
        Ok(v) if v == "primary" => Ok(true),
        _ => {
            Err(ApiError::bad_request("X-Simulate-Failure: the only supported value is `primary`"))
        }
    }
}

fn build_spec(sample: Sample, options: Options) -> Result<JobSpec, ApiError> {
    let mut spec = JobSpec::new(sample);
    if let Some(t) = options.analysis_type.as_deref().filter(|s| !s.is_empty()) {
        spec.analysis_type = t.parse::<AnalysisType>().map_err(ApiError::bad_request)?;
    }
    if let Some(d) = options.analysis_depth.as_deref().filter(|s| !s.is_empty()) {
        spec.depth = d.parse().map_err(ApiError::bad_request)?;
    }
    if let Some(p) = options.priority.as_deref().filter(|s| !s.is_empty()) {
        spec.priority = match p.trim().to_ascii_lowercase().as_str() {
            "high" => Priority::High,
            "normal" => Priority::Normal,
            "low" => Priority::Low,
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown priority {other:?}: expected high, normal or low"
                )))
            }
        };
    }
    spec.ai_model = options.ai_model.filter(|m| !m.trim().is_empty());
    spec.container_config = options.container_config;
    Ok(spec)
}

async fn read_multipart(mut form: Multipart, limit: usize) -> Result<(Sample, Options), ApiError> {
    let mut file: Option<(String, Vec<u8>)> = None;
    let mut options = Options::default();
    let mut total = 0usize;

    while let Some(field) = form.next().await {
        let mut field = field.map_err(|e| multipart_error(&e.to_string(), limit))?;
        let name = field.name().unwrap_or("").to_string();
        let file_name =
            field.content_disposition().and_then(|cd| cd.get_filename()).map(str::to_string);
        let field_limit = if name == "file" { limit } else { MAX_FIELD_BYTES };

        let mut data = Vec::new();
        while let Some(chunk) = field.next().await {
            let chunk = chunk.map_err(|e| multipart_error(&e.to_string(), limit))?;
            total += chunk.len();
            if total > limit {
                return Err(ApiError::too_large(limit));
            }
            if data.len() + chunk.len() > field_limit {
                return Err(ApiError::bad_request(format!(
                    "field {name:?} is longer than {field_limit} bytes"
                )));
            }
            data.extend_from_slice(&chunk);
        }

        let text = || {
            String::from_utf8(data.clone())
                .map_err(|_| ApiError::bad_request(format!("field {name:?} is not UTF-8 text")))
        };
        match name.as_str() {
            "file" => file = Some((file_name.unwrap_or_else(|| "sample".into()), data)),
            "analysisType" => options.analysis_type = Some(text()?),
            "aiModel" => options.ai_model = Some(text()?),
            "analysisDepth" => options.analysis_depth = Some(text()?),
            "priority" => options.priority = Some(text()?),
            "containerConfig" => {
                let raw = text()?;
                let value = serde_json::from_str(&raw).map_err(|e| {
                    ApiError::bad_request(format!("containerConfig is not valid JSON: {e}"))
                })?;
                options.container_config = Some(value);
            }
            // Fields the original clients send that carry no meaning here are ignored.
            _ => {}
        }
    }

    let (name, bytes) = file.ok_or_else(|| ApiError::bad_request("the form has no `file` part"))?;
    if bytes.is_empty() {
        return Err(ApiError::bad_request("the uploaded file is empty"));
    }
    Ok((Sample::new(sanitize_name(&name), bytes), options))
}

fn multipart_error(message: &str, limit: usize) -> ApiError {
    if message.to_ascii_lowercase().contains("overflow") || message.contains("too large") {
        ApiError::too_large(limit)
    } else {
        ApiError::bad_request(format!("malformed multipart body: {message}"))
    }
}

async fn read_json(mut payload: web::Payload, limit: usize) -> Result<(Sample, Options), ApiError> {
    // Base64 inflates by 4/3; the limit applies to the decoded sample, the body may be larger.
    let body_limit = limit / 3 * 4 + MAX_FIELD_BYTES;
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("could not read the body: {e}")))?;
        if body.len() + chunk.len() > body_limit {
            return Err(ApiError::too_large(limit));
        }
        body.extend_from_slice(&chunk);
    }
    let submission: JsonSubmission = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))?;
    let content = submission
        .file_content
        .ok_or_else(|| ApiError::bad_request("fileContent (base64) is required"))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(content.trim())
        .map_err(|e| ApiError::bad_request(format!("fileContent is not valid base64: {e}")))?;
    if bytes.len() > limit {
        return Err(ApiError::too_large(limit));
    }
    if bytes.is_empty() {
        return Err(ApiError::bad_request("fileContent decodes to an empty file"));
    }
    let name = submission.file_name.unwrap_or_else(|| "sample".into());
    let options = Options {
        analysis_type: submission.analysis_type,
        ai_model: submission.ai_model,
        analysis_depth: submission.analysis_depth,
        container_config: submission.container_config,
        priority: submission.priority,
    };
    Ok((Sample::new(sanitize_name(&name), bytes), options))
}

/// Keeps the last path component and drops control characters: the name is shown to people
/// and written to logs, never used as a path.
fn sanitize_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let clean: String = base.chars().filter(|c| !c.is_control()).take(255).collect();
    if clean.is_empty() {
        "sample".into()
    } else {
        clean
    }
}

pub async fn status(
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = job_id(&path)?;
    let record = lookup(&state, &id).await?.ok_or_else(|| unknown_analysis(&path))?;
    Ok(HttpResponse::Ok().json(record))
}

/// The job id of a path; a malformed one is as unknown as one never issued.
fn job_id(path: &str) -> Result<JobId, ApiError> {
    path.parse().map_err(|_| unknown_analysis(path))
}

fn unknown_analysis(path: &str) -> ApiError {
    ApiError::not_found("unknown_analysis", format!("no analysis with id {path:?}"))
}

/// A job's record, from Redis in distributed mode or from this process.
async fn lookup(state: &AppState, id: &JobId) -> Result<Option<JobRecord>, ApiError> {
    match &state.node.queue {
        Some(queue) => Ok(queue.record(id).await?),
        None => Ok(state.engine.job(id)),
    }
}

/// How often an idle event stream sends a comment, so proxies keep it open, and looks at
/// the job's record in case its final event was missed.
const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(15);

/// Server-Sent Events of one job: `progress`, `partial_result`, then `complete` or `error`,
/// after which the stream ends. A job that has already finished gets its final event at once.
pub async fn events(
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = job_id(&path)?;
    if !state.engine.flags.send(GetFlags).await?.enable_streaming_analysis {
        return Err(ApiError::unavailable(
            "streaming_disabled",
            "event streams are off (flag enable_streaming_analysis); poll the status route",
            std::time::Duration::from_secs(60),
        ));
    }
    // Subscribe before reading the record, so an event between the two is not missed.
    let rx = state.node.events.subscribe();
    let record = lookup(&state, &id).await?.ok_or_else(|| unknown_analysis(&path))?;

    let first = final_event(&record).map(|e| sse_frame(&e));
    let finished = first.is_some();
    let initial = futures_util::stream::iter(first.map(Ok::<_, actix_web::Error>));
    let live = futures_util::stream::unfold((rx, finished), move |(mut rx, done)| {
        let state = state.clone();
        async move {
            if done {
                return None;
            }
            loop {
                let missed = match tokio::time::timeout(KEEP_ALIVE, rx.recv()).await {
                    // Quiet for a while, or events were dropped: the final one may be among
                    // them (or lost with a pub/sub connection), so the record is asked.
                    Err(_) | Ok(Err(RecvError::Lagged(_))) => true,
                    Ok(Ok(event)) if event.analysis_id == id => {
                        let last = event.is_final();
                        // A fleet's final event carries no result: it is in the record,
                        // stored before the event was sent.
                        let event = match event.data {
                            None if last => match lookup(&state, &id).await {
                                Ok(Some(record)) => final_event(&record).unwrap_or(event),
                                _ => event,
                            },
                            _ => event,
                        };
                        return Some((Ok(sse_frame(&event)), (rx, last)));
                    }
                    Ok(Ok(_)) => false,
                    Ok(Err(RecvError::Closed)) => return None,
                };
                if !missed {
                    continue;
                }
                if let Ok(Some(record)) = lookup(&state, &id).await {
                    if let Some(event) = final_event(&record) {
                        return Some((Ok(sse_frame(&event)), (rx, true)));
                    }
                }
                let keep_alive = web::Bytes::from_static(b": keep-alive\n\n");
                return Some((Ok(keep_alive), (rx, false)));
            }
        }
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .streaming(initial.chain(live)))
}

/// The event that ends a finished job's stream.
fn final_event(record: &JobRecord) -> Option<JobEvent> {
    let (kind, data) = match record.status {
        JobStatus::Completed => ("complete", serde_json::to_value(&record.results).ok()),
        JobStatus::Failed => ("error", serde_json::to_value(&record.error).ok()),
        _ => return None,
    };
    Some(JobEvent { analysis_id: record.analysis_id, kind, progress: 100, stage: None, data })
}

fn sse_frame(event: &JobEvent) -> web::Bytes {
    let data = serde_json::to_string(event).unwrap_or_else(|_| "{}".into());
    web::Bytes::from(format!("event: {}\ndata: {data}\n\n", event.kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_lose_their_paths_and_control_characters() {
        assert_eq!(sanitize_name("../../etc/passwd"), "passwd");
        assert_eq!(sanitize_name("C:\\Users\\x\\evil.exe"), "evil.exe");
        assert_eq!(sanitize_name("a\nb\u{0}.js"), "ab.js");
        assert_eq!(sanitize_name(""), "sample");
    }
}
