//! Command-line commands other than `serve`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::Engine as _;
use serde_json::{json, Value};

/// Submits a file to a running server, waits for the verdict and prints the status document.
/// Answers whether the job completed.
pub async fn submit(
    server: &str,
    file: &Path,
    analysis_type: &str,
    depth: &str,
    wait: bool,
    timeout: Duration,
) -> anyhow::Result<bool> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let name =
        file.file_name().map_or_else(|| "sample".into(), |n| n.to_string_lossy().into_owned());
    let client = reqwest::Client::new();
    let base = server.trim_end_matches('/');
    let body = json!({
        "fileName": name,
        "fileContent": base64::engine::general_purpose::STANDARD.encode(&bytes),
        "analysisType": analysis_type,
        "analysisDepth": depth,
    });
    let response = client
        .post(format!("{base}/api/analysis/submit"))
        .json(&body)
        .send()
        .await
        .with_context(|| format!("cannot reach {base}"))?;
    let status = response.status();
    let accepted: Value = response.json().await.context("the server's answer is not JSON")?;
    if !status.is_success() {
        bail!("submission refused ({status}): {accepted}");
    }
    let id = accepted["analysisId"].as_str().context("the answer has no analysisId")?.to_string();
    if !wait {
        emit(&accepted)?;
        return Ok(true);
    }

    let started = Instant::now();
    loop {
        let record: Value =
            client.get(format!("{base}/api/analysis/status/{id}")).send().await?.json().await?;
        match record["status"].as_str() {
            Some("completed") | Some("failed") => {
                emit(&record)?;
                return Ok(record["status"] == "completed");
            }
            _ if started.elapsed() > timeout => bail!("job {id} did not finish within {timeout:?}"),
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Prints a document on stdout. A reader that went away (`athena submit ... | head`) is
/// not an error worth a panic: the job's fate was already decided.
fn emit(document: &Value) -> anyhow::Result<()> {
    use std::io::Write;

    let text = serde_json::to_string_pretty(document)?;
    match writeln!(std::io::stdout().lock(), "{text}") {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Prints the effective configuration, secrets redacted.
pub fn check_config(file: Option<PathBuf>) -> Result<String, crate::config::ConfigError> {
    let loaded = crate::config::load(file.as_deref())?;
    let mut out = loaded.config.redacted_toml();
    if !loaded.env_flags.is_empty() {
        out.push_str("\n# flags set by the environment\n");
        for (name, value) in &loaded.env_flags {
            out.push_str(&format!("# {name} = {value}\n"));
        }
    }
    Ok(out)
}
