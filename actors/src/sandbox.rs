//! The container stage's worker: runs a sample inside an external sandbox runtime.
//!
//! Athena does not execute samples itself. The operator configures the command of a sandbox
//! runtime (for example `docker run --rm --network none --read-only ... {sample}`); the worker
//! writes the sample to a private temporary file, substitutes `{sample}`, `{limits}`,
//! `{memory}` and `{cpus}`, runs the command with a timeout, and keeps a bounded excerpt of what
//! it printed. With no command configured the stage reports `skipped` and says why, so a
//! report never suggests a sandbox ran when none did.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use crate::error::StageError;
use crate::job::Sample;
use crate::report::ContainerReport;
use crate::supervisor::{Retire, WorkerBook};
use crate::telemetry::Telemetry;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxConfig {
    /// The runtime's command line; empty means no sandbox is available.
    pub command: Vec<String>,
    /// Arguments that `{limits}` expands to while `enable_container_resource_limits` is on.
    pub limit_args: Vec<String>,
    pub memory: String,
    pub cpus: String,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Bytes of output kept in the report.
    pub max_output_bytes: usize,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            command: Vec::new(),
            limit_args: vec![
                "--memory".into(),
                "{memory}".into(),
                "--cpus".into(),
                "{cpus}".into(),
            ],
            memory: "512m".into(),
            cpus: "1".into(),
            timeout: Duration::from_secs(60),
            max_output_bytes: 64 * 1024,
        }
    }
}

/// Run one sample in the sandbox.
#[derive(Debug, Message)]
#[rtype(result = "Result<ContainerReport, StageError>")]
pub struct RunSandbox {
    pub sample: Sample,
    pub resource_limits: bool,
}

/// Worker of the `container` service.
pub struct SandboxActor {
    config: SandboxConfig,
    telemetry: Telemetry,
    book: WorkerBook,
}

impl SandboxActor {
    pub fn new(config: SandboxConfig, telemetry: Telemetry) -> Self {
        SandboxActor { config, telemetry, book: WorkerBook::new("container") }
    }
}

impl Actor for SandboxActor {
    type Context = Context<Self>;
}

impl Supervised for SandboxActor {
    fn restarting(&mut self, _: &mut Self::Context) {
        self.book.restarted(&self.telemetry);
    }
}

impl Handler<RunSandbox> for SandboxActor {
    type Result = ResponseActFuture<Self, Result<ContainerReport, StageError>>;

    fn handle(&mut self, msg: RunSandbox, _: &mut Self::Context) -> Self::Result {
        self.book.begin();
        let config = self.config.clone();
        Box::pin(run(config, msg).into_actor(self).map(|result, act, ctx| {
            act.book.end(ctx);
            result
        }))
    }
}

/// Nothing this worker does depends on flags: each request carries what it needs.
impl Handler<crate::flags::FlagsChanged> for SandboxActor {
    type Result = ();

    fn handle(&mut self, _: crate::flags::FlagsChanged, _: &mut Self::Context) {}
}

impl Handler<Retire> for SandboxActor {
    type Result = ();

    fn handle(&mut self, _: Retire, ctx: &mut Self::Context) {
        self.book.retire(ctx);
    }
}

/// Removes the sample's temporary file however the run ends.
struct TempSample(PathBuf);

impl Drop for TempSample {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn expand(config: &SandboxConfig, path: &str, limits: bool) -> Vec<String> {
    let substitute = |arg: &str| {
        arg.replace("{sample}", path)
            .replace("{memory}", &config.memory)
            .replace("{cpus}", &config.cpus)
    };
    let mut args = Vec::new();
    for arg in &config.command {
        if arg == "{limits}" {
            if limits {
                args.extend(config.limit_args.iter().map(|a| substitute(a)));
            }
        } else {
            args.push(substitute(arg));
        }
    }
    args
}

async fn run(config: SandboxConfig, msg: RunSandbox) -> Result<ContainerReport, StageError> {
    if config.command.is_empty() {
        return Ok(ContainerReport {
            status: "skipped".into(),
            detail: "no sandbox runtime is configured (container.command is empty)".into(),
            ..ContainerReport::default()
        });
    }

    let path = std::env::temp_dir().join(format!("athena-sample-{}", ulid::Ulid::new()));
    write_private(&path, &msg.sample.bytes).await.map_err(|e| {
        StageError::Failed(format!("could not stage the sample for the sandbox: {e}"))
    })?;
    let temp = TempSample(path);
    let args = expand(&config, &temp.0.to_string_lossy(), msg.resource_limits);

    let mut child = tokio::process::Command::new(&args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            StageError::Failed(format!("could not start the sandbox runtime {:?}: {e}", args[0]))
        })?;

    let limit = config.max_output_bytes;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let outcome = tokio::time::timeout(config.timeout, async {
        let (out, err) = tokio::join!(read_bounded(stdout, limit), read_bounded(stderr, limit));
        let status = child.wait().await;
        (status, out, err)
    })
    .await;

    let report = match outcome {
        Err(_) => ContainerReport {
            status: "failed".into(),
            detail: format!(
                "the sandbox run exceeded its timeout of {:?} and was killed",
                config.timeout
            ),
            ..ContainerReport::default()
        },
        Ok((Err(e), _, _)) => {
            return Err(StageError::Failed(format!("sandbox runtime failed: {e}")))
        }
        Ok((Ok(status), out, err)) => {
            let mut output = out;
            if !err.is_empty() {
                output.push_str("\n[stderr]\n");
                output.push_str(&err);
            }
            ContainerReport {
                status: if status.success() { "completed" } else { "failed" }.into(),
                detail: format!("sandbox runtime exited with {status}"),
                exit_code: status.code(),
                output: Some(output),
            }
        }
    };
    drop(temp);
    Ok(report)
}

async fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o400);
    let mut file = options.open(path).await?;
    tokio::io::AsyncWriteExt::write_all(&mut file, bytes).await?;
    tokio::io::AsyncWriteExt::flush(&mut file).await
}

async fn read_bounded<R: tokio::io::AsyncRead + Unpin>(reader: Option<R>, limit: usize) -> String {
    let Some(reader) = reader else { return String::new() };
    let mut buf = Vec::new();
    let _ = reader.take(limit as u64).read_to_end(&mut buf).await;
    String::from_utf8_lossy(&buf).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Sample {
        Sample::new("s.bin", b"hello sandbox".to_vec())
    }

    #[actix_rt::test]
    async fn without_a_runtime_the_stage_says_it_was_skipped() {
        let report =
            run(SandboxConfig::default(), RunSandbox { sample: sample(), resource_limits: true })
                .await
                .unwrap();
        assert_eq!(report.status, "skipped");
        assert!(report.detail.contains("no sandbox runtime"));
    }

    #[actix_rt::test]
    async fn runs_the_configured_command_on_a_private_copy_of_the_sample() {
        let config = SandboxConfig {
            command: vec![
                "sh".into(),
                "-c".into(),
                "wc -c < \"$0\"; echo {limits}".into(),
                "{sample}".into(),
            ],
            ..SandboxConfig::default()
        };
        let report = run(config.clone(), RunSandbox { sample: sample(), resource_limits: false })
            .await
            .unwrap();
        assert_eq!(report.status, "completed");
        assert_eq!(report.exit_code, Some(0));
        assert!(report.output.as_deref().unwrap().starts_with("13"), "{report:?}");
        // The limits placeholder only expands as its own argument.
        assert_eq!(expand(&config, "/tmp/x", true)[3], "/tmp/x");
        let with_limits = SandboxConfig { command: vec!["rt".into(), "{limits}".into()], ..config };
        assert_eq!(expand(&with_limits, "/s", true), ["rt", "--memory", "512m", "--cpus", "1"]);
        assert_eq!(expand(&with_limits, "/s", false), ["rt"]);
    }

    #[actix_rt::test]
    async fn failures_and_timeouts_are_reported() {
        let failing = SandboxConfig {
            command: vec!["sh".into(), "-c".into(), "exit 3".into()],
            ..SandboxConfig::default()
        };
        let report =
            run(failing, RunSandbox { sample: sample(), resource_limits: false }).await.unwrap();
        assert_eq!((report.status.as_str(), report.exit_code), ("failed", Some(3)));

        let missing = SandboxConfig {
            command: vec!["/nonexistent/runtime".into()],
            ..SandboxConfig::default()
        };
        let err = run(missing, RunSandbox { sample: sample(), resource_limits: false })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("could not start the sandbox runtime"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_past_its_timeout_is_killed() {
        let slow = SandboxConfig {
            command: vec!["sleep".into(), "30".into()],
            timeout: Duration::from_secs(1),
            ..SandboxConfig::default()
        };
        let report =
            run(slow, RunSandbox { sample: sample(), resource_limits: false }).await.unwrap();
        assert_eq!(report.status, "failed");
        assert!(report.detail.contains("timeout"), "{report:?}");
    }
}
