//! Logging for the daemons and the console: `tracing` events to stderr,
//! filtered by `LOCKSTEP_LOG` (an `EnvFilter`, e.g. `debug` or
//! `warn,lockstep_agent=debug`), as JSON lines when
//! `LOCKSTEP_LOG_FORMAT=json` (for a log shipper), else as text.

use tracing_subscriber::EnvFilter;

/// Installs the subscriber; `default_filter` applies without `LOCKSTEP_LOG`.
pub fn init(default_filter: &str) {
    let filter = EnvFilter::try_from_env("LOCKSTEP_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("LOCKSTEP_LOG_FORMAT").is_ok_and(|v| v == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}
