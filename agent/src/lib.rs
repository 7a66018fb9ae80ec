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
//! - [`lifecycle`]: the agent's start, its tasks and their stop; `run` as a service.
//! - [`report`]: the report loop (an explicit state) and the signing side.
//! - [`measure`]: what a host has and runs, and which scans hash everything.
//! - [`error`]: what stops a report or the start.
//! - [`commands`]: what each `lockstep-agent` command does.
//! - [`attest_stream`]: attestations on one long-lived stream.
//! - [`directives`]: follows the controller's directive stream.
//! - [`gatekeeper`]: the local gate: lease, state file, hooks, outage policy.
//! - [`hooks`]: runs `on_open` / `on_close` commands in order.
//! - [`metrics`]: the agent's Prometheus metrics.
//! - [`watch`]: inotify watching, debounced, that triggers scans.
//! - [`tpm`]: the host's TPM (`[identity] tpm`): the AK, credential
//!   activation, the session PCR and quotes (the `tpm` cargo feature).

pub mod cli;
pub mod commands;
pub mod config;
pub mod error;
pub mod gate;
pub mod lifecycle;
pub mod link;
pub mod measure;
pub mod measurer;
pub mod metrics;
pub mod state;
pub mod tpm;
