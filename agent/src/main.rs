//! `lockstep-agent`: thin main; see `lockstep_agent::commands`.

use std::process::ExitCode;

use clap::Parser;
use lockstep_agent::cli::Cli;

fn main() -> ExitCode {
    lockstep_daemon::logging::init("warn,lockstep_agent=info");
    lockstep_agent::commands::main(Cli::parse())
}
