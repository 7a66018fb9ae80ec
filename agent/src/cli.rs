//! The `lockstep-agent` command line, defined here so that man pages,
//! shell completions and the docs check are generated from the same source.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "lockstep-agent",
    version,
    about = "Measures, signs and reports what this host has and runs"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the agent: scan, sign and report to the controller until stopped.
    Run {
        #[arg(long, default_value = "/etc/lockstep/agent.toml")]
        config: PathBuf,
    },
    /// Enroll this host with a one-time join token (from `lockstep token
    /// create`): makes its TLS and attestation keys here and gets its
    /// certificate. Run once before `run`, and again after a revocation.
    Enroll {
        #[arg(long, default_value = "/etc/lockstep/agent.toml")]
        config: PathBuf,
        /// The join token ("-": read it from standard input, keeping it out of shell history).
        #[arg(long, env = "LOCKSTEP_JOIN_TOKEN", hide_env_values = true)]
        token: String,
        /// Controller address, host:port (default: controller.address in the config).
        #[arg(long)]
        controller: Option<String>,
        /// Fleet CA certificate to check the controller against (default: controller.ca in the config).
        #[arg(long)]
        ca: Option<PathBuf>,
    },
    /// Gate state on this host.
    #[command(subcommand)]
    Gate(GateCommand),
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

#[derive(Subcommand)]
pub enum GateCommand {
    /// Exit 0 only under an unexpired OPEN gate (for ExecStartPre= of the
    /// trading unit). Exit 1 when closed or expired, 3 when there is no gate
    /// state yet.
    Check {
        #[arg(long, default_value = "/etc/lockstep/agent.toml")]
        config: PathBuf,
        /// Read this state file instead of the one the config names.
        #[arg(long)]
        state_file: Option<PathBuf>,
        /// Wait up to this long for the gate to open, e.g. "30s".
        #[arg(long, value_parser = humantime::parse_duration)]
        wait: Option<std::time::Duration>,
    },
}
