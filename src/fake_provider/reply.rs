//! The fake model's answers: the layout the prompt asked for, made up from the prompt alone.
//!
//! The same prompt always gets the same answer. Answers vary between prompts the way real
//! models vary: a fence with or without a language tag, `ANALYSIS:` or a `## Analysis`
//! heading, a bare JSON array, one fenced in prose, or one wrapped in an object with
//! snake_case keys. So every run through the fake exercises the engine's tolerant parsing.
//! Every answer says it comes from a fake model.

use std::collections::hash_map::DefaultHasher;
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};

use athena_actors::provider::{parse_prompt, AiTaskKind, PromptRequest};
use serde_json::{json, Value};

/// Lines of the sample echoed as the "deobfuscated" code.
const ECHOED_LINES: usize = 20;

const SEVERITIES: [&str; 4] = ["low", "medium", "high", "critical"];

/// A stable number for a prompt (stable within one build, which is all a test run needs).
pub fn fingerprint(prompt: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    prompt.hash(&mut hasher);
    hasher.finish()
}

/// The model's text for a user prompt.
pub fn content(prompt: &str, model: &str) -> String {
    let fp = fingerprint(prompt);
    match parse_prompt(prompt) {
        Some(req) if req.kind == AiTaskKind::Deobfuscate => deobfuscation(&req, model, fp),
        Some(req) => vulnerabilities(&req, fp),
        None => format!(
            "This is a FAKE model (athena fake-provider, model {model:?}); it only answers \
             Athena's own prompts. Prompt fingerprint {fp:016x}."
        ),
    }
}

fn deobfuscation(req: &PromptRequest<'_>, model: &str, fp: u64) -> String {
    let (open, close, label) = match fp % 3 {
        0 => ("```javascript", "```", "ANALYSIS:"),
        1 => ("```", "```", "ANALYSIS:"),
        _ => ("~~~", "~~~", "## Analysis\n"),
    };
    let mut out = String::from("Deobfuscated by a FAKE model (athena fake-provider):\n");
    let _ = writeln!(out, "{open}");
    let _ = writeln!(out, "// FAKE deobfuscation: the first lines of the sample, unchanged");
    for line in req.sample.lines().take(ECHOED_LINES) {
        // A fence inside the echoed sample would end the block early.
        let _ = writeln!(out, "{}", line.replace("```", "'''").replace("~~~", "---"));
    }
    let _ = writeln!(out, "{close}");
    let _ = write!(
        out,
        "{label} This analysis comes from a FAKE model (athena fake-provider, model {model:?}), \
         not from an analyst or a real model. The sample {:?} has {} lines and {} bytes; \
         prompt fingerprint {fp:016x}.",
        req.file_name,
        req.sample.lines().count(),
        req.sample.len(),
    );
    out
}

fn vulnerabilities(req: &PromptRequest<'_>, fp: u64) -> String {
    let style = fp % 3;
    let count = 1 + (fp >> 8) % 2;
    let items: Vec<Value> = (0..count)
        .map(|n| {
            let severity = SEVERITIES[((fp >> (16 + 2 * n)) % 4) as usize];
            let mut item = json!({
                "name": format!("FAKE finding {} ({:04x})", n + 1, (fp >> 32) & 0xffff),
                "description": "Made up by a FAKE model (athena fake-provider) for tests and \
                                demos; not a real vulnerability.",
                "severity": severity,
            });
            if req.metasploit {
                // The wrapped style uses snake_case keys, as some models do.
                let key = if style == 2 { "metasploit_module" } else { "metasploitModule" };
                item[key] = json!("auxiliary/fake/athena_demo");
            }
            item
        })
        .collect();
    let list = Value::Array(items);
    match style {
        0 => list.to_string(),
        1 => format!(
            "Here is what the FAKE model found:\n```json\n{}\n```\nNothing here is real.",
            serde_json::to_string_pretty(&list).unwrap_or_default()
        ),
        _ => json!({"model": "fake", "vulnerabilities": list}).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use athena_actors::provider::{build_prompt, parse_reply, AiTask};

    fn task(kind: AiTaskKind, content: &str, metasploit: bool) -> AiTask {
        AiTask {
            kind,
            file_name: "a.js".into(),
            file_type: "javascript",
            content: content.into(),
            metasploit,
        }
    }

    #[test]
    fn every_reply_style_parses_into_the_fields_asked_for() {
        // Enough different samples to meet every style of both tasks.
        let mut styles = std::collections::BTreeSet::new();
        for i in 0..30 {
            let sample = format!("var x{i} = 1;\n```\neval(x{i})");
            let t = task(AiTaskKind::Deobfuscate, &sample, false);
            let prompt = build_prompt(&t).user;
            let text = content(&prompt, "fake-model");
            assert_eq!(text, content(&prompt, "fake-model"), "deterministic");
            let out = parse_reply(&t, &text, "fake-model");
            let code = out.deobfuscated_code.expect("code");
            assert!(code.contains(&format!("var x{i} = 1;")), "{text}");
            assert!(code.contains(&format!("eval(x{i})")), "an echoed fence does not cut: {text}");
            let report = out.analysis_report.expect("report");
            assert!(report.starts_with("This analysis comes from a FAKE model"), "{report}");

            for metasploit in [false, true] {
                let t = task(AiTaskKind::Vulnerabilities, &sample, metasploit);
                let text = content(&build_prompt(&t).user, "fake-model");
                styles.insert(fingerprint(&build_prompt(&t).user) % 3);
                let out = parse_reply(&t, &text, "fake-model");
                assert!(!out.vulnerabilities.is_empty(), "{text}");
                assert_eq!(out.analysis_report, None, "{text}");
                for v in &out.vulnerabilities {
                    assert!(v.name.starts_with("FAKE finding"));
                    assert!(SEVERITIES.contains(&v.severity.as_str()));
                    let module = v.metasploit_module.as_deref();
                    assert_eq!(module.is_some(), metasploit, "{text}");
                }
            }
        }
        assert_eq!(styles.len(), 3, "all three list styles were produced");
        assert!(content("hello", "m").contains("FAKE model"));
    }
}
