//! `lockstep-controller`: thin main; see `lockstep_controller::run`.

use std::process::ExitCode;

use clap::Parser;
use lockstep_controller::DaemonCli as Cli;

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LOCKSTEP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,lockstep_controller=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("LOCKSTEP_LOG_FORMAT").is_ok_and(|v| v == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
    let cli = Cli::parse();
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(async { lockstep_controller::run(&cli.config, shutdown_signal()).await }));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lockstep-controller: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM (how systemd stops us) or SIGINT. The handlers are
/// installed when this is called, not when the future is first polled, so a
/// signal right after READY=1 is a graceful stop, not a kill. Call it inside
/// the runtime.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let (term, int) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => std::future::pending().await,
        }
    }
}
