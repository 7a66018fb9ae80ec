//! What both lockstep daemons (`lockstep-agent`, `lockstep-controller`) need
//! to run as a service, in one place so neither keeps a copy. None of it is
//! part of the wire contract (that is `lockstep-proto`).
//!
//! - [`logging`]: `tracing` to stderr, `LOCKSTEP_LOG` / `LOCKSTEP_LOG_FORMAT`.
//! - [`service`]: `/metrics` and the watchdog beside a daemon's work, READY=1, an awaited stop.
//! - [`signal`]: the SIGTERM / SIGINT that starts a graceful stop.
//! - [`systemd`]: readiness, stopping and watchdog notifications.
//! - [`metrics_endpoint`]: the plain-HTTP `/metrics` endpoint.
//! - [`clock`]: the one injectable wall clock (tests move it with tokio's paused time).
//! - [`backoff`]: jittered exponential backoff (agent reconnects, alert retries).
//! - [`config`]: config-file errors that name the file and key, and durations.

pub mod backoff;
pub mod clock;
pub mod config;
pub mod logging;
#[cfg(feature = "service")]
pub mod metrics_endpoint;
#[cfg(feature = "service")]
pub mod service;
pub mod signal;
#[cfg(feature = "service")]
pub mod systemd;
