//! `lockstep-controller`: thin main; see `lockstep_controller::run`.

use std::process::ExitCode;

use clap::Parser;
use lockstep_controller::DaemonCli as Cli;

fn main() -> ExitCode {
    lockstep_daemon::logging::init("warn,lockstep_controller=info");
    let cli = Cli::parse();
    if let Some(lockstep_controller::DaemonCommand::Migrate { from, to }) = &cli.command {
        return match lockstep_controller::store::migrate::migrate(from, to) {
            Ok(c) => {
                println!(
                    "migrated {} hosts, {} manifests, {} releases, {} halts, {} incidents, {} tokens and {} audit records; the audit chain verifies on both sides",
                    c.hosts, c.manifests, c.releases, c.halts, c.incidents, c.tokens, c.audit_records
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("lockstep-controller migrate: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|rt| {
            rt.block_on(async {
                lockstep_controller::run(&cli.config, lockstep_daemon::signal::shutdown_signal()).await
            })
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lockstep-controller: {e:#}");
            ExitCode::FAILURE
        }
    }
}
