//! `athena`: the job engine for malware analysis.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use athena::{config, Role};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "athena", version, about = "Job engine for malware analysis")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine and its HTTP API.
    Serve {
        /// Configuration file overriding the built-in defaults.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Listen address, overriding `server.bind`.
        #[arg(long)]
        bind: Option<String>,
        /// Serve the API only and leave the jobs to worker nodes (needs the Redis queue).
        #[arg(long)]
        api_only: bool,
    },
    /// Run a worker node: jobs from the Redis queue, with /metrics and /readyz on --bind.
    Worker {
        /// Configuration file overriding the built-in defaults.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address of /metrics and /readyz, overriding `server.bind`.
        #[arg(long)]
        bind: Option<String>,
    },
    /// Submit a file to a running server and print the result.
    Submit {
        file: PathBuf,
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        server: String,
        /// static, deobfuscate, vulnerabilities or full.
        #[arg(long = "type", default_value = "full")]
        analysis_type: String,
        /// quick, standard or deep.
        #[arg(long, default_value = "standard")]
        depth: String,
        /// Print the job id and return without waiting for the result.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for the result.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Print the effective configuration (secrets redacted); exit 2 when it is invalid.
    CheckConfig {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Serve a FAKE AI provider (OpenAI and Anthropic shapes) for tests and demos.
    FakeProvider {
        #[arg(long, default_value = "127.0.0.1:9090")]
        bind: String,
        /// Added before every answer, e.g. 200ms.
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        latency: Duration,
        /// The latency varies by up to this much either way.
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        jitter: Duration,
        /// Fraction of requests answered with --error-status (0 to 1).
        #[arg(long, default_value_t = 0.0)]
        error_rate: f64,
        /// HTTP status of injected errors.
        #[arg(long, default_value_t = 503)]
        error_status: u16,
        /// Fraction of requests never answered (0 to 1).
        #[arg(long, default_value_t = 0.0)]
        hang_rate: f64,
        /// Seed for the error and hang draws, to replay a run.
        #[arg(long)]
        seed: Option<u64>,
    },
}

fn init_logging(level: &str, format: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match athena::cli::check_config(config) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("{err}");
                ExitCode::from(2)
            }
        },
        Command::Serve { config, bind, api_only } => {
            let role = if api_only { Role::Api } else { Role::All };
            run_node(config, bind, role)
        }
        Command::Worker { config, bind } => run_node(config, bind, Role::Worker),
        Command::FakeProvider {
            bind,
            latency,
            jitter,
            error_rate,
            error_status,
            hang_rate,
            seed,
        } => {
            init_logging("info", "text");
            let settings = athena::fake_provider::Settings {
                latency,
                jitter,
                error_rate,
                error_status,
                hang_rate,
            };
            match actix_rt::System::new().block_on(fake_provider(&bind, settings, seed)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("athena fake-provider: {err:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Submit { file, server, analysis_type, depth, no_wait, timeout } => {
            let run =
                athena::cli::submit(&server, &file, &analysis_type, &depth, !no_wait, timeout);
            match actix_rt::System::new().block_on(run) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(err) => {
                    eprintln!("athena submit: {err:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn run_node(config: Option<PathBuf>, bind: Option<String>, role: Role) -> ExitCode {
    let mut loaded = match config::load(config.as_deref()) {
        Ok(loaded) => loaded,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(2);
        }
    };
    if let Some(bind) = bind {
        loaded.config.server.bind = bind;
    }
    init_logging(&loaded.config.log.level, &loaded.config.log.format);
    match actix_rt::System::new().block_on(serve(loaded, role)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(cause = %err, "athena stopped");
            eprintln!("athena: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(loaded: config::Loaded, role: Role) -> anyhow::Result<()> {
    let grace = loaded.config.server.shutdown_grace;
    let server = athena::start_node(&loaded, role, athena_actors::clock::system())?;
    tracing::info!(addr = %server.addr, role = ?role, "athena listening");
    println!("athena listening on http://{}", server.addr);

    let mut term = actix_rt::signal::unix::signal(actix_rt::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = actix_rt::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown requested; finishing accepted jobs");
    let left = server.shutdown(grace).await;
    if left > 0 {
        tracing::warn!(left, "jobs still running at the end of the shutdown grace period");
    }
    server.stopped().await?;
    Ok(())
}

async fn fake_provider(
    bind: &str,
    settings: athena::fake_provider::Settings,
    seed: Option<u64>,
) -> anyhow::Result<()> {
    use actix_rt::signal::unix::{signal, SignalKind};

    let fake = athena::fake_provider::FakeProvider::start(bind, settings, seed)?;
    println!("{}", athena::fake_provider::banner(fake.addr));
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = actix_rt::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    fake.stop().await;
    Ok(())
}
