//! Measurement primitives: scanning the watched files (streaming SHA-256,
//! fingerprints), config keys, running processes, the CPUs to scan on,
//! market hours and the scan budget, the file watcher. What to measure and
//! when is [`crate::measurer`].

pub mod configkeys;
pub mod entry;
pub mod market_hours;
pub mod placement;
pub mod process;
pub mod scan;
pub mod throttle;
pub mod watch;
