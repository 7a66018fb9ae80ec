//! `lockstep-agent`: measures what a host has, signs it, reports it.
//!
//! - [`cli`]: the command line (also the source of man pages and completions).
//! - [`config`]: the TOML configuration, validated once at start.
//! - [`scan`]: watch patterns to paths, measured on the agent's CPUs.
//! - [`entry`]: measuring one path safely (no following, no blocking, no mixes),
//!   leaving the page cache as it found it.
//! - [`placement`]: the housekeeping CPUs every agent thread is pinned to.
//! - [`market_hours`]: trading windows and the full-scan budget inside them.
//! - [`throttle`]: the byte-rate limit of a budgeted scan.
//! - [`process`]: what runs: images, libraries, command lines via /proc.
//! - [`configkeys`]: config files parsed into key entries.
//! - [`enrollment`]: join-token enrollment and certificate renewal.
//! - [`state`]: the attestation key and the sequence number on disk.
//! - [`report`]: the scan–sign–submit loop with backoff.
//! - [`directives`]: follows the controller's directive stream.
//! - [`gatekeeper`]: the local gate: lease, state file, hooks, outage policy.
//! - [`hooks`]: runs `on_open` / `on_close` commands in order.
//! - [`metrics`]: the agent's Prometheus metrics.
//! - [`watch`]: inotify watching, debounced, that triggers scans.

pub mod attest_stream;
pub mod cli;
pub mod config;
pub mod configkeys;
pub mod directives;
pub mod enrollment;
pub mod entry;
pub mod gatekeeper;
pub mod hooks;
pub mod market_hours;
pub mod metrics;
pub mod placement;
pub mod process;
pub mod report;
pub mod scan;
pub mod state;
pub mod throttle;
pub mod watch;
