//! The AI stage: each requested analysis goes to the providers in priority order until one
//! answers.
//!
//! The order is the `ai_provider_priority` flag, with the job's preferred model first; a
//! provider the flag leaves out is out of rotation. A provider without credentials is never
//! called, one whose every breaker is open is skipped without a call, a full bulkhead is
//! skipped, and a failure moves on to the next provider while `enable_ai_failover` is on.
//! Every attempt is recorded in the report so failover is visible to the client.
//!
//! A chaos job (`simulate_failure` while `chaos_testing` is on) has its first provider call
//! fail on purpose, so a load test can watch the failover path run.

use std::fmt::Write as _;
use std::time::Instant;

use actix::prelude::*;

use super::pipeline::Services;
use crate::flags::FlagSet;
use crate::job::{AnalysisType, JobSpec};
use crate::provider::{AiTask, AiTaskKind, CallProvider, ProviderActor, ProviderError};
use crate::report::{ProviderAttempt, StaticReport, Vulnerability};
use crate::supervisor::{Dispatch, DispatchError, ServiceSupervisor};

/// The global permit every provider call holds.
pub const AI_SEMAPHORE: &str = "ai.total_requests";

/// Text sent to a provider at most; a sample beyond it is truncated and the cut is labelled.
const MAX_PROMPT_SAMPLE_BYTES: usize = 48 * 1024;

/// A configured provider as the router sees it.
#[derive(Clone)]
pub struct ProviderHandle {
    pub name: String,
    pub priority: u32,
    pub has_credentials: bool,
    pub supervisor: Addr<ServiceSupervisor<ProviderActor>>,
}

/// What the AI stage adds to a report.
#[derive(Debug, Clone, Default)]
pub(crate) struct AiResult {
    pub attempts: Vec<ProviderAttempt>,
    pub deobfuscated_code: Option<String>,
    pub analysis_report: Option<String>,
    pub vulnerabilities: Vec<Vulnerability>,
    pub used_fallback: bool,
    /// Every requested analysis got an answer.
    pub all_succeeded: bool,
    /// Nothing failed that a later run could do better (no provider tried and failed).
    pub cacheable: bool,
    /// Why a requested analysis is missing, when one is.
    pub error: Option<String>,
}

impl AiResult {
    /// The result of a job that asked the AI stage for nothing: complete, and cacheable.
    pub(crate) fn nothing_asked() -> Self {
        AiResult { all_succeeded: true, cacheable: true, ..AiResult::default() }
    }
}

pub(crate) async fn run(
    spec: &JobSpec,
    static_report: &StaticReport,
    services: &Services,
    flags: &FlagSet,
    deadline: tokio::time::Instant,
) -> AiResult {
    let kinds: &[AiTaskKind] = match spec.analysis_type {
        AnalysisType::Static => &[],
        AnalysisType::Deobfuscate => &[AiTaskKind::Deobfuscate],
        AnalysisType::Vulnerabilities => &[AiTaskKind::Vulnerabilities],
        AnalysisType::Full => &[AiTaskKind::Deobfuscate, AiTaskKind::Vulnerabilities],
    };
    let order = provider_order(&services.providers, flags, spec.ai_model.as_deref());
    let content = sample_content(spec, static_report);

    let mut result = AiResult::nothing_asked();
    let mut missing = Vec::new();
    for &kind in kinds {
        let task = AiTask {
            kind,
            file_name: spec.sample.file_name.clone(),
            file_type: static_report.facts.file_type.as_str(),
            content: content.clone(),
            metasploit: flags.enable_metasploit_integration,
        };
        let before = result.attempts.len();
        let answered =
            try_providers(&task, &order, spec, services, flags, deadline, &mut result).await;
        if !answered {
            result.all_succeeded = false;
            missing.push(why_missing(kind, &result.attempts[before..]));
        }
    }
    if !missing.is_empty() {
        result.error = Some(missing.join("; "));
    }
    result
}

/// Tries providers in order until one answers the task; answers whether one did.
async fn try_providers(
    task: &AiTask,
    order: &[&ProviderHandle],
    spec: &JobSpec,
    services: &Services,
    flags: &FlagSet,
    deadline: tokio::time::Instant,
    result: &mut AiResult,
) -> bool {
    let mut calls = 0;
    for provider in order {
        if !provider.has_credentials {
            result.attempts.push(skipped(provider, "unavailable", "no API key is configured"));
            continue;
        }
        if flags.enable_circuit_breaker && !services.board.admits(&provider.name) {
            result.attempts.push(skipped(provider, "rejected", "circuit breaker is open"));
            result.cacheable = false;
            continue;
        }
        if tokio::time::Instant::now() >= deadline {
            result.attempts.push(skipped(provider, "rejected", "the job's deadline has passed"));
            result.cacheable = false;
            break;
        }
        // The first call is paid for; every failover is a retry the shared budget must allow.
        if calls == 0 {
            services.failover_budget.deposit();
        } else if !services.failover_budget.try_withdraw() {
            result.attempts.push(skipped(provider, "rejected", "failover retry budget exhausted"));
            break;
        }
        calls += 1;

        let started = Instant::now();
        let permit = match services.semaphores.get(AI_SEMAPHORE) {
            Some(semaphore) => {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let wait = services.semaphore_timeout.min(left);
                match semaphore.acquire(wait).await {
                    Ok(permit) => Some(permit),
                    Err(err) => {
                        result.attempts.push(attempt(
                            provider,
                            "rejected",
                            Some(err.to_string()),
                            None,
                        ));
                        result.cacheable = false;
                        // The budget is global: the next provider would wait for the same permit.
                        break;
                    }
                }
            }
            None => None,
        };
        let call = CallProvider {
            task: task.clone(),
            use_breaker: flags.enable_circuit_breaker,
            deadline: Some(deadline.into_std()),
            // Chaos testing fails the first provider actually called, so failover runs.
            simulate_failure: calls == 1 && spec.simulate_failure && flags.chaos_testing,
        };
        let answer =
            provider.supervisor.send(Dispatch { msg: call, priority: spec.priority }).await;
        drop(permit);
        let latency = Some(started.elapsed());
        let (outcome, detail) = match answer {
            Ok(Ok(Ok(output))) => {
                let detail = format!("{:?} by {}", task.kind, output.model);
                result.attempts.push(attempt(provider, "success", Some(detail), latency));
                result.used_fallback |= provider.name != order_first(order);
                merge(result, output);
                return true;
            }
            Ok(Ok(Err(err @ ProviderError::BreakerOpen { .. }))) => ("rejected", err.to_string()),
            Ok(Ok(Err(err))) => ("failure", err.to_string()),
            Ok(Err(err @ DispatchError::Bulkhead(_))) => ("rejected", err.to_string()),
            Ok(Err(err @ DispatchError::WorkerLost { .. })) => ("failure", err.to_string()),
            Err(_) => ("failure", "the provider service has stopped".to_string()),
        };
        result.attempts.push(attempt(provider, outcome, Some(detail), latency));
        result.cacheable = false;
        if !flags.enable_ai_failover {
            break;
        }
    }
    false
}

fn merge(result: &mut AiResult, output: crate::provider::AiOutput) {
    if output.deobfuscated_code.is_some() {
        result.deobfuscated_code = output.deobfuscated_code;
    }
    if let Some(text) = output.analysis_report {
        result.analysis_report = Some(match result.analysis_report.take() {
            Some(prior) => format!("{prior}\n\n{text}"),
            None => text,
        });
    }
    result.vulnerabilities.extend(output.vulnerabilities);
}

/// One sentence on why no provider produced an analysis, from what was tried.
fn why_missing(kind: AiTaskKind, attempts: &[ProviderAttempt]) -> String {
    let name = match kind {
        AiTaskKind::Deobfuscate => "deobfuscation",
        AiTaskKind::Vulnerabilities => "vulnerability",
    };
    if attempts.is_empty() {
        return format!("no AI provider is in the priority order for the {name} analysis");
    }
    if attempts.iter().all(|a| a.outcome == "unavailable") {
        return format!(
            "no AI provider has credentials, so the {name} analysis comes from static analysis only"
        );
    }
    let tried: Vec<String> = attempts
        .iter()
        .map(|a| format!("{} {} ({})", a.provider, a.outcome, a.detail.as_deref().unwrap_or("")))
        .collect();
    format!("no AI provider could take the {name} analysis: {}", tried.join(", "))
}

fn skipped(provider: &ProviderHandle, outcome: &str, detail: &str) -> ProviderAttempt {
    attempt(provider, outcome, Some(detail.to_string()), None)
}

fn order_first<'a>(order: &[&'a ProviderHandle]) -> &'a str {
    order.iter().find(|p| p.has_credentials).map_or("", |p| p.name.as_str())
}

fn attempt(
    provider: &ProviderHandle,
    outcome: &str,
    detail: Option<String>,
    latency: Option<std::time::Duration>,
) -> ProviderAttempt {
    ProviderAttempt {
        provider: provider.name.clone(),
        outcome: outcome.to_string(),
        detail,
        latency_ms: latency.map_or(0, |l| u64::try_from(l.as_millis()).unwrap_or(u64::MAX)),
    }
}

/// Providers in the order to try them: the job's preferred one, then the flag's order.
fn provider_order<'a>(
    providers: &'a [ProviderHandle],
    flags: &FlagSet,
    preferred: Option<&str>,
) -> Vec<&'a ProviderHandle> {
    let mut order: Vec<&ProviderHandle> = Vec::new();
    let mut push = |name: &str| {
        if let Some(p) = providers.iter().find(|p| p.name == name) {
            if !order.iter().any(|o| o.name == p.name) {
                order.push(p);
            }
        }
    };
    if let Some(name) = preferred {
        push(name);
    }
    for name in &flags.ai_provider_priority {
        push(name);
    }
    order
}

/// The sample as a provider should see it: scripts as text, binaries as a labelled extract of
/// the static facts (a model reads strings and imports, not raw machine code).
fn sample_content(spec: &JobSpec, report: &StaticReport) -> String {
    let facts = &report.facts;
    let bytes = &spec.sample.bytes;
    let as_text = std::str::from_utf8(bytes).ok().filter(|_| !facts.file_type.is_executable());
    if let Some(text) = as_text {
        let mut end = text.len().min(MAX_PROMPT_SAMPLE_BYTES);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let mut out = text[..end].to_string();
        if end < text.len() {
            let _ = write!(out, "\n[... truncated: {} of {} bytes shown]", end, text.len());
        }
        return out;
    }

    let mut out = String::new();
    let _ = writeln!(out, "[binary sample: extract of the static analysis, not the raw bytes]");
    let _ = writeln!(
        out,
        "type: {}  size: {} bytes  sha256: {}",
        facts.file_type.as_str(),
        facts.size,
        facts.sha256
    );
    let _ = writeln!(out, "entropy: {:.2}", facts.entropy);
    if let Some(arch) = &facts.architecture {
        let _ = writeln!(out, "architecture: {arch}");
    }
    for s in &facts.sections {
        let _ = writeln!(
            out,
            "section {} size={} entropy={:.2} exec={}",
            s.name, s.size, s.entropy, s.executable
        );
    }
    let _ = writeln!(
        out,
        "imports: {}",
        facts.imports.iter().take(300).cloned().collect::<Vec<_>>().join(", ")
    );
    let _ = writeln!(
        out,
        "indicators: {}",
        report.indicators.iter().map(|i| i.id.as_str()).collect::<Vec<_>>().join(", ")
    );
    let _ = writeln!(out, "strings of interest:");
    for s in facts.strings.iter().take(200) {
        if out.len() > MAX_PROMPT_SAMPLE_BYTES {
            let _ = writeln!(out, "[... truncated]");
            break;
        }
        let _ = writeln!(out, "  {s}");
    }
    out
}
