//! Measurement: what a host has and runs (the watched files, the keys of
//! its config files, its running processes), and when each file is hashed
//! again: the full rescan, deferred in market hours, and a full scan an
//! operator asks for, run within the market-hours budget on a scanner of
//! its own while the incremental scans go on.

use std::sync::Arc;
use std::time::Duration;

use lockstep_proto::pb::Entry;
use tracing::{debug, info, warn};

use crate::config::AgentConfig;
use crate::error::AgentError;
use crate::measure::market_hours::ScanPlan;
use crate::measure::placement::Placement;
use crate::measure::scan::{Budget, ScanError, ScanStats, Scanner};
use crate::measure::throttle::{RealPace, Throttle};
use crate::metrics::{AgentMetrics, FullScanLabels};
use lockstep_daemon::clock::SharedClock;

/// Full scans an operator asked for (`lockstep scan --host`), handed from
/// the directive stream to the report loop.
#[derive(Debug, Default)]
pub struct FullScanRequests {
    pending: std::sync::atomic::AtomicBool,
    wake: tokio::sync::Notify,
}

impl FullScanRequests {
    pub fn request(&self) {
        self.pending.store(true, std::sync::atomic::Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Whether one was asked for since the last call.
    pub fn take(&self) -> bool {
        self.pending.swap(false, std::sync::atomic::Ordering::SeqCst)
    }

    pub async fn requested(&self) {
        self.wake.notified().await;
    }
}

/// What a host *has*: the watched files (only changed ones re-hashed unless
/// `full`) and the keys of its config files. A build's manifest is this,
/// measured over the staged tree.
pub fn measure_files(
    scanner: &Scanner,
    config: &AgentConfig,
    full: bool,
) -> Result<(Vec<Entry>, ScanStats), ScanError> {
    measure_files_within(scanner, config, full, None)
}

fn measure_files_within(
    scanner: &Scanner,
    config: &AgentConfig,
    full: bool,
    budget: Option<&Budget>,
) -> Result<(Vec<Entry>, ScanStats), ScanError> {
    let (mut entries, stats) = scanner.scan_within(full, budget)?;
    for c in &config.configs {
        entries.extend(crate::measure::configkeys::measure(c, config.root.as_deref()));
    }
    let entries = lockstep_proto::digest::canonicalize(entries).map_err(ScanError::Canonical)?;
    Ok((entries, stats))
}

/// Everything one attestation says about this host: what it has, and what runs.
pub fn measure_host(scanner: &Scanner, config: &AgentConfig, full: bool) -> Result<(Vec<Entry>, ScanStats), ScanError> {
    measure_host_within(scanner, config, full, None)
}

/// Like [`measure_host`], a full scan within a market-hours `budget`.
pub fn measure_host_within(
    scanner: &Scanner,
    config: &AgentConfig,
    full: bool,
    budget: Option<&Budget>,
) -> Result<(Vec<Entry>, ScanStats), ScanError> {
    let (mut entries, stats) = measure_files_within(scanner, config, full, budget)?;
    entries.extend(crate::measure::process::measure(
        &config.processes,
        config.root.as_deref(),
    ));
    let entries = lockstep_proto::digest::canonicalize(entries).map_err(ScanError::Canonical)?;
    Ok((entries, stats))
}

/// What a background full scan found.
pub struct Verified {
    digest: Vec<u8>,
    /// What the incremental scans said when it started.
    started_from: Option<Vec<u8>>,
    bytes: u64,
    throttled: Duration,
}

/// What the agent measures, and which scans hash everything.
pub struct Measurer {
    config: AgentConfig,
    /// The host's wall clock (market hours); a test's, which it moves.
    clock: SharedClock,
    scanner: Arc<Scanner>,
    /// Where scans run, for the scanner of a background verification.
    placement: Option<Placement>,
    metrics: Arc<AgentMetrics>,
    /// Full scans an operator asked for (`lockstep scan --host`).
    scan_requests: Arc<FullScanRequests>,
    /// When every file was last hashed regardless of the cache.
    last_full_scan: Option<std::time::Instant>,
    /// A periodic full rescan is waiting for market hours to end.
    deferring: bool,
    /// A full scan asked for in market hours, hashing everything within the
    /// budget beside the heartbeats (it may take longer than a lease).
    verifying: Option<tokio::task::JoinHandle<Result<Verified, ScanError>>>,
    /// Its throttle, cancelled when the agent stops.
    verifying_pace: Option<Throttle>,
    /// A finished verification, for the next scan to compare with.
    verified: Option<Verified>,
    /// Digest of the last scan.
    last_digest: Option<Vec<u8>>,
    full_scans_done: std::sync::atomic::AtomicU64,
}

impl Measurer {
    pub fn new(
        config: AgentConfig,
        clock: SharedClock,
        scanner: Arc<Scanner>,
        placement: Option<Placement>,
        metrics: Arc<AgentMetrics>,
        scan_requests: Arc<FullScanRequests>,
    ) -> Self {
        Self {
            config,
            clock,
            scanner,
            placement,
            metrics,
            scan_requests,
            last_full_scan: None,
            deferring: false,
            verifying: None,
            verifying_pace: None,
            verified: None,
            last_digest: None,
            full_scans_done: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Resolves when the background full scan (if any) ends, taking it.
    pub async fn verification_finished(&mut self) -> Result<Result<Verified, ScanError>, tokio::task::JoinError> {
        match &mut self.verifying {
            Some(handle) => {
                let out = handle.await;
                self.verifying = None;
                out
            }
            None => std::future::pending().await,
        }
    }

    /// A requested full scan still hashing is abandoned, not waited for.
    pub fn abandon_verification(&self) {
        if let Some(pace) = &self.verifying_pace {
            pace.cancel();
        }
    }

    /// Scans (hashing only what changed, or everything when the full rescan
    /// is due) and returns the canonical entries and their digest.
    pub async fn scan(&mut self) -> Result<(Vec<lockstep_proto::pb::Entry>, Vec<u8>), AgentError> {
        let now = self.clock.now_unix_ms();
        let in_window = self.config.market_hours.as_ref().is_some_and(|m| m.is_open_at_ms(now));
        let plan = ScanPlan::decide(
            self.last_full_scan.is_none(),
            self.last_full_scan
                .is_some_and(|t| t.elapsed() >= self.config.full_rescan_interval),
            self.scan_requests.take(),
            in_window,
        );
        if plan.deferred && !self.deferring {
            info!(host = %self.config.host, "full rescan due in market hours: deferred until the window ends (`lockstep scan --host` forces one)");
            self.metrics.full_scans_deferred.inc();
        }
        self.deferring = plan.deferred;
        let budget = if plan.budgeted { self.market_budget() } else { None };
        let mut cause = plan.full;
        let mut budget = budget;
        // Asked for in market hours: hashed beside the heartbeats, so a slow
        // budgeted scan cannot let the lease run out; this scan is the usual
        // incremental one.
        if cause == Some("requested") {
            if let Some(b) = budget.take() {
                if self.verifying.is_none() {
                    self.verifying = Some(self.start_verification(b));
                }
                cause = None;
            }
        }
        let (entries, stats) = self.measure(cause.is_some(), budget.as_ref()).await?;
        if let Some(cause) = cause {
            self.last_full_scan = Some(std::time::Instant::now());
            self.count_full_scan(cause, budget.as_ref().map(|b| b.throttle.waited()));
        }
        let mut entries = entries;
        let mut stats = stats;
        // A verification that hashed something other than the cache says:
        // a file changed behind its fingerprint. Hash everything now.
        let digest = lockstep_proto::digest::digest(&entries).to_vec();
        if let Some(v) = self.verified.take().filter(|v| v.digest != digest) {
            if v.started_from.as_deref() == Some(digest.as_slice()) {
                warn!(host = %self.config.host, "a full scan found content the fingerprints missed; hashing everything again now");
                (entries, stats) = self.measure(true, None).await?;
                self.last_full_scan = Some(std::time::Instant::now());
                self.count_full_scan("verify", None);
            } else if let Some(b) = self.market_budget().filter(|_| in_window) {
                // Files changed while it hashed: it proves nothing; again.
                info!(host = %self.config.host, "files changed during the requested full scan; scanning again within the budget");
                self.verifying = Some(self.start_verification(b));
            } else {
                (entries, stats) = self.measure(true, None).await?;
                self.last_full_scan = Some(std::time::Instant::now());
                self.count_full_scan("requested", None);
            }
        }
        let full = cause.is_some();
        debug!(host = %self.config.host, full, entries = stats.entries, hashed = stats.hashed, bytes = stats.bytes_hashed, "scanned");
        let digest = lockstep_proto::digest::digest(&entries).to_vec();
        self.last_digest = Some(digest.clone());
        Ok((entries, digest))
    }

    /// The market-hours scan budget, when the agent has market hours.
    fn market_budget(&self) -> Option<Budget> {
        self.config.market_hours.as_ref().map(|m| Budget {
            threads: m.scan_threads,
            throttle: Throttle::new(
                m.max_bytes_per_sec,
                crate::measure::entry::READ_BUF_BYTES as u64,
                Arc::new(RealPace::default()),
            ),
        })
    }

    /// Measures the host (everything when `full`), within `budget`.
    async fn measure(&self, full: bool, budget: Option<&Budget>) -> Result<(Vec<Entry>, ScanStats), AgentError> {
        let (scanner, config, within) = (self.scanner.clone(), self.config.clone(), budget.cloned());
        let started = std::time::Instant::now();
        let (entries, stats) =
            tokio::task::spawn_blocking(move || measure_host_within(&scanner, &config, full, within.as_ref()))
                .await??;
        self.metrics.scan_seconds.observe(started.elapsed().as_secs_f64());
        self.metrics
            .files_measured
            .set(i64::try_from(entries.len()).unwrap_or(i64::MAX));
        self.metrics.bytes_hashed.inc_by(stats.bytes_hashed);
        Ok((entries, stats))
    }

    /// Full scans finished since the agent started (a TPM quote follows each).
    pub fn full_scans_done(&self) -> u64 {
        self.full_scans_done.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn count_full_scan(&self, cause: &'static str, throttled: Option<Duration>) {
        self.full_scans_done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let labels = FullScanLabels {
            budget: if throttled.is_some() { "budgeted" } else { "open" },
            cause,
        };
        self.metrics.full_scans.get_or_create(&labels).inc();
        if let Some(t) = throttled {
            self.metrics.scan_throttled_seconds.inc_by(t.as_secs_f64());
            info!(host = %self.config.host, cause, throttled_s = t.as_secs_f64(), "full scan within the market-hours budget");
        }
    }

    /// Hashes everything within `budget` on a scanner of its own (the live
    /// one's cache is left to the incremental scans meanwhile).
    fn start_verification(&mut self, budget: Budget) -> tokio::task::JoinHandle<Result<Verified, ScanError>> {
        self.verifying_pace = Some(budget.throttle.clone());
        let (config, placement, started_from) = (self.config.clone(), self.placement.clone(), self.last_digest.clone());
        info!(host = %self.config.host, "full scan asked for in market hours: hashing everything within the budget, reporting as usual meanwhile");
        tokio::task::spawn_blocking(move || {
            let mut scanner = Scanner::new(&config.watch, config.root.clone())?;
            if let Some(p) = &placement {
                scanner = scanner.with_placement(p);
            }
            let (entries, stats) = measure_host_within(&scanner, &config, true, Some(&budget))?;
            Ok(Verified {
                digest: lockstep_proto::digest::digest(&entries).to_vec(),
                started_from,
                bytes: stats.bytes_hashed,
                throttled: budget.throttle.waited(),
            })
        })
    }

    pub fn verification_done(&mut self, done: Result<Result<Verified, ScanError>, tokio::task::JoinError>) {
        match done {
            Ok(Ok(v)) => {
                self.metrics.bytes_hashed.inc_by(v.bytes);
                self.count_full_scan("requested", Some(v.throttled));
                self.last_full_scan = Some(std::time::Instant::now());
                self.verified = Some(v);
            }
            Ok(Err(e)) => warn!(host = %self.config.host, error = %e, "the requested full scan failed"),
            Err(e) => warn!(host = %self.config.host, error = %e, "the requested full scan stopped"),
        }
    }
}
