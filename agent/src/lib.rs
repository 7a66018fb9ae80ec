//! `lockstep-agent`: measures what a host has, signs it, reports it.
//!
//! - [`cli`]: the command line (also the source of man pages and completions).
//! - [`config`]: the TOML configuration, validated once at start.
//! - [`scan`]: watch patterns to paths, measured on every core.
//! - [`entry`]: measuring one path safely (no following, no blocking, no mixes).
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
pub mod metrics;
pub mod process;
pub mod report;
pub mod scan;
pub mod state;
pub mod watch;
