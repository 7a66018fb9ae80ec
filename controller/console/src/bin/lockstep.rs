//! `lockstep`: the operator console. Thin: parse, run, exit with its code.

use std::process::ExitCode;

use clap::Parser;
use lockstep_console::{self as console, Cli};

fn main() -> ExitCode {
    lockstep_daemon::logging::init("warn");
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("lockstep: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let mut stdout = std::io::stdout();
    match runtime.block_on(console::run(cli, &mut stdout)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("lockstep: {e:#}");
            if e.downcast_ref::<console::Unreachable>().is_some() {
                ExitCode::from(console::ExitCode::Unreachable as u8)
            } else {
                ExitCode::from(console::ExitCode::Error as u8)
            }
        }
    }
}
