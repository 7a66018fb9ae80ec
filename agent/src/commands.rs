//! What each `lockstep-agent` command does (the command line itself is
//! [`crate::cli`]); `main.rs` only parses and calls [`main`].

use std::process::ExitCode;

use anyhow::Context;

use crate::cli::{Cli, Command, GateCommand};
use crate::config::AgentConfig;
use crate::gate::gatekeeper;
use crate::measure::scan::Scanner;

/// Runs the parsed command; the exit code is the command's (`gate check`:
/// 0 OPEN, non-zero otherwise; others: 0 or 1 with the error printed).
pub fn main(cli: Cli) -> ExitCode {
    if let Command::Gate(GateCommand::Check {
        config,
        state_file,
        wait,
    }) = &cli.command
    {
        return gate_check(config, state_file.as_deref(), *wait);
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lockstep-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `gate check`: reads the state file the agent keeps; never asks the network.
fn gate_check(
    config: &std::path::Path,
    state_file: Option<&std::path::Path>,
    wait: Option<std::time::Duration>,
) -> ExitCode {
    let path = match state_file {
        Some(p) => p.to_path_buf(),
        None => match AgentConfig::load(config) {
            Ok(c) => c.gate.state_file,
            Err(e) => {
                eprintln!("lockstep-agent: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let (code, line) = gatekeeper::check(&path, wait.unwrap_or_default(), &lockstep_daemon::clock::system());
    if code == 0 {
        println!("{line}");
    } else {
        eprintln!("{line}");
    }
    ExitCode::from(code)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Gate(_) => Ok(()),
        Command::Run { config } => {
            let config = AgentConfig::load(&config)?;
            let runtime = placed_runtime(&config)?;
            runtime.block_on(async {
                let signalled = lockstep_daemon::signal::shutdown_signal();
                crate::lifecycle::run_service(config, signalled).await
            })
        }
        Command::Enroll {
            config,
            token,
            controller,
            ca,
        } => {
            let mut config = AgentConfig::load(&config)?;
            if let Some(addr) = controller {
                config.controller.only(addr)?;
            }
            let token = if token == "-" {
                let mut t = String::new();
                std::io::stdin()
                    .read_line(&mut t)
                    .context("reading the join token from standard input")?;
                t
            } else {
                token
            };
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            let reply = runtime.block_on(crate::link::enrollment::enroll(&config, &token, ca.as_deref()))?;
            let until = std::time::UNIX_EPOCH
                + std::time::Duration::from_millis(u64::try_from(reply.not_after_unix_ms).unwrap_or(0));
            println!(
                "enrolled {} in role {}: attestation key {} pinned, certificate {} valid until {} (renewed automatically)",
                config.host,
                reply.role,
                reply.key_id,
                config.controller.tls.cert.display(),
                humantime::format_rfc3339_seconds(until)
            );
            Ok(())
        }
        Command::Measure {
            config,
            watch,
            root,
            output,
        } => {
            // With --config, the config files' keys are included, exactly as
            // the agent reports them; running processes never are (a build
            // runs nothing).
            let entries = match config {
                Some(path) => {
                    let mut config = AgentConfig::load(&path)?;
                    config.root = root;
                    // On the host, a measurement keeps to the agent's CPUs too.
                    let placement = place_this_thread(&config)?;
                    let scanner = Scanner::new(&config.watch, config.root.clone())?.with_placement(&placement);
                    crate::measurer::measure_files(&scanner, &config, true)?.0
                }
                None => Scanner::new(&watch, root)?.scan()?,
            };
            let json = lockstep_proto::manifest::to_json(&entries)?;
            if output.as_os_str() == "-" {
                println!("{json}");
            } else {
                std::fs::write(&output, json + "\n").with_context(|| format!("writing {}", output.display()))?;
            }
            Ok(())
        }
    }
}

/// The runtime of `run`, every thread of it (and every thread those start:
/// a thread inherits its creator's mask) on the agent's CPUs.
fn placed_runtime(config: &AgentConfig) -> anyhow::Result<tokio::runtime::Runtime> {
    let placement = place_this_thread(config)?;
    tracing::info!(cpus = %placement.cpus, scan_threads = placement.scan_threads, "agent placed");
    let on_start = placement.clone();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(placement.cpus.len().clamp(1, 4))
        .enable_all()
        .on_thread_start(move || on_start.apply_to_current_thread())
        .build()
        .context("starting the async runtime")
}

/// The agent's CPUs from its config, with the calling thread pinned there
/// (threads it starts inherit the mask).
fn place_this_thread(config: &AgentConfig) -> anyhow::Result<crate::measure::placement::Placement> {
    use crate::measure::placement::{Placement, pin_current_thread};
    let placement = Placement::new(config.cpus.clone(), std::path::Path::new("/sys"))
        .context("choosing the agent's CPUs (set [resources] cpus in the agent config)")?;
    pin_current_thread(&placement.cpus).with_context(|| {
        format!(
            "[resources] cpus = \"{}\": pick CPUs this agent may use",
            placement.cpus
        )
    })?;
    Ok(placement)
}
