//! `lockstep-agent` command line: thin; the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use lockstep_agent::config::AgentConfig;
use lockstep_agent::report::Agent;
use lockstep_agent::scan::Scanner;

#[derive(Parser)]
#[command(
    name = "lockstep-agent",
    version,
    about = "Measures, signs and reports what this host has and runs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: scan, sign and report to the controller until stopped.
    Run {
        #[arg(long, default_value = "/etc/lockstep/agent.toml")]
        config: PathBuf,
    },
    /// Measure once and write a release manifest (JSON), without a
    /// controller: the watch paths of --config, or the --watch patterns given.
    /// With --root, measure a staged build tree as if it were installed at /.
    Measure {
        #[arg(long, conflicts_with = "watch")]
        config: Option<PathBuf>,
        /// A path or glob to measure (repeatable), instead of --config.
        #[arg(long, required_unless_present = "config")]
        watch: Vec<String>,
        /// Directory to treat as / (e.g. a build's DESTDIR).
        #[arg(long)]
        root: Option<PathBuf>,
        /// Where to write the manifest; "-" for standard output.
        #[arg(long, default_value = "-")]
        output: PathBuf,
    },
}

fn main() -> ExitCode {
    init_tracing();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lockstep-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LOCKSTEP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,lockstep_agent=info"));
    let json = std::env::var("LOCKSTEP_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run { config } => {
            let config = AgentConfig::load(&config)?;
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(async {
                let agent = Agent::new(config)?;
                agent.run(shutdown_signal()).await;
                anyhow::Ok(())
            })
        }
        Command::Measure {
            config,
            watch,
            root,
            output,
        } => {
            let watch = match config {
                Some(path) => AgentConfig::load(&path)?.watch,
                None => watch,
            };
            let entries = Scanner::new(&watch, root)?.scan()?;
            let json = lockstep_proto::manifest::to_json(&entries)?;
            if output.as_os_str() == "-" {
                println!("{json}");
            } else {
                std::fs::write(&output, json + "\n")
                    .with_context(|| format!("writing {}", output.display()))?;
            }
            Ok(())
        }
    }
}

/// Resolves on SIGTERM (how systemd stops us) or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}
