//! lockstep's benchmarks, one module per part `lockstep-bench` runs, and
//! the summaries they share. Measured, never asserted: `lockstep-bench`
//! prints them, docs/benchmarks.md records them, a smoke test runs each tiny.
//!
//! - [`realtime`]: a file change to the controller's verdict, a halt to every gate file.
//! - [`scan`]: full scan of a generated tree vs sha256sum, aide and ring's limit.
//! - [`idle`]: the real agent process at rest: CPU and memory.
//! - [`ingest`]: many simulated agents attesting to one controller, beside a plain tonic no-op service.
//! - [`fleet`]: the real controller with 10,000 simulated enrolled agents.
//! - [`probe`]: a latency probe on a CPU of its own beside the agent; peak RSS of a scan.
//! - [`board`]: the web board: a gate change to the page, first render, many boards.
//! - [`failover`]: three controllers on etcd, the leader killed, frozen or cut off.
//! - [`openssl_speed`]: `openssl speed`, the peer figure for hashing and signatures.
//! - [`age`]: the controller on a log grown to millions of records: restart, verification, report, gate check.
//! - [`years`]: the same with the archive at work, a day at a time, on sled or etcd: what the store holds and weighs.
//! - [`tpm`]: a quote, an enrollment's activation, and the controller's checks, on a software TPM.

use std::time::Duration;

pub mod age;
pub mod board;
pub mod failover;
pub mod fleet;
pub mod idle;
pub mod ingest;
pub mod openssl_speed;
pub mod probe;
pub mod realtime;
pub mod scan;
pub mod tpm;
pub mod years;

/// Sorted samples and their summary.
#[derive(Debug, Clone)]
pub struct Latencies {
    pub samples: Vec<Duration>,
}

impl Latencies {
    pub fn new(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        Self { samples }
    }

    /// The q-quantile (nearest rank), e.g. 0.5 or 0.99.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.samples.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((q * self.samples.len() as f64).ceil() as usize).clamp(1, self.samples.len());
        self.samples[rank - 1]
    }

    pub fn max(&self) -> Duration {
        self.samples.last().copied().unwrap_or_default()
    }
}

/// Runs `rate` on every core at once and sums the rates: what all cores
/// together deliver, which on a VM can be well under cores × one core (the
/// vCPUs may share physical cores).
pub fn on_every_core(rate: impl Fn() -> f64 + Sync) -> f64 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|s| {
        let runs: Vec<_> = (0..cores).map(|_| s.spawn(&rate)).collect();
        runs.into_iter().map(|r| r.join().unwrap_or(0.0)).sum()
    })
}
