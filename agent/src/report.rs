//! The agent's reporting loop: scan, sign, submit, and back off when the
//! controller cannot be reached. A full entry list is sent when the version
//! set changed since the controller last took one; otherwise a signed
//! digest-only heartbeat keeps the host fresh.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use lockstep_proto::envelope::Signer;
use lockstep_proto::pb::agent_service_client::AgentServiceClient;
use lockstep_proto::pb::{Attestation, Entry, GateState, PinKeyRequest, SubmitReply};
use lockstep_proto::tls::{self, TlsError};
use tokio::sync::Notify;
use tonic::transport::Channel;
use tracing::{debug, info, warn};

use crate::attest_stream::AttestStream;
use crate::config::AgentConfig;
use crate::gatekeeper::GateKeeper;
use crate::market_hours::{MarketHours, ScanPlan};
use crate::metrics::{AgentMetrics, FullScanLabels};
use crate::placement::Placement;
use crate::scan::{Budget, ScanError, ScanStats, Scanner};
use crate::state::{self, SeqCounter, StateError};
use crate::throttle::{RealPace, Throttle};
use lockstep_proto::backoff::Backoff;

/// Largest message the agent will send or accept.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Scan(#[from] ScanError),
    #[error("controller refused the attestation: {}", .0.message())]
    Rejected(tonic::Status),
    #[error("controller unreachable: {}", .0.message())]
    Unreachable(tonic::Status),
    #[error("scan task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error(
        "no TLS key at {} (controller.key): this host is not enrolled yet; get a token with `lockstep token create` and run `lockstep-agent enroll --token TOKEN`",
        key.display()
    )]
    NotEnrolled { key: std::path::PathBuf },
}

impl From<tonic::Status> for AgentError {
    fn from(s: tonic::Status) -> Self {
        use tonic::Code::*;
        match s.code() {
            Unavailable | DeadlineExceeded | Cancelled | Unknown => Self::Unreachable(s),
            _ => Self::Rejected(s),
        }
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
        entries.extend(crate::configkeys::measure(c, config.root.as_deref()));
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
    entries.extend(crate::process::measure(&config.processes, config.root.as_deref()));
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

/// Resolves when the background full scan (if any) ends, taking it.
async fn finished<T>(task: &mut Option<tokio::task::JoinHandle<T>>) -> Result<T, tokio::task::JoinError> {
    match task {
        Some(handle) => {
            let out = handle.await;
            *task = None;
            out
        }
        None => std::future::pending().await,
    }
}

pub struct Agent {
    config: AgentConfig,
    scanner: Arc<Scanner>,
    signer: Signer,
    seq: SeqCounter,
    client: AgentServiceClient<Channel>,
    /// Attestations go to the controller on this stream.
    attest: AttestStream,
    boot_id: String,
    /// Digest whose entries the controller has acknowledged.
    acked_full: Option<Vec<u8>>,
    last_gate: Option<GateState>,
    /// Whether the controller confirmed our attestation key is pinned.
    pinned: bool,
    /// Whether the last attestation sent carried the full entry list.
    last_sent_full: bool,
    /// When every file was last hashed regardless of the cache.
    last_full_scan: Option<std::time::Instant>,
    /// Full scans an operator asked for (`lockstep scan --host`).
    scan_requests: Arc<crate::directives::FullScanRequests>,
    /// A periodic full rescan is waiting for market hours to end.
    deferring: bool,
    /// Where scans run, for the scanner of a background verification.
    placement: Option<Placement>,
    /// A full scan asked for in market hours, hashing everything within the
    /// budget beside the heartbeats (it may take longer than a lease).
    verifying: Option<tokio::task::JoinHandle<Result<Verified, ScanError>>>,
    /// Its throttle, cancelled when the agent stops.
    verifying_pace: Option<Throttle>,
    /// A finished verification, for the next scan to compare with.
    verified: Option<Verified>,
    /// Digest of the last scan.
    last_digest: Option<Vec<u8>>,
    scan_now: Arc<Notify>,
    metrics: Arc<AgentMetrics>,
    /// The TLS certificate presented to the controller, renewed in place.
    cert: Arc<lockstep_proto::tls::ReloadableCert>,
    /// Notified by the watcher when files changed and settled.
    fs_changed: Arc<Notify>,
}

impl Agent {
    /// Loads keys and state and prepares the (lazy) channel; no network yet.
    pub fn new(config: AgentConfig) -> Result<Self, AgentError> {
        if !config.controller.tls.key.exists() {
            return Err(AgentError::NotEnrolled {
                key: config.controller.tls.key.clone(),
            });
        }
        state::ensure_dir(&config.state_dir)?;
        let signer = state::attestation_key(&config.state_dir)?;
        state::check_key_permissions(&config.controller.tls.key)?;
        let seq = SeqCounter::load(&config.state_dir)?;
        let mut scanner = Scanner::new(&config.watch, config.root.clone())?;
        let placement = match Placement::new(config.cpus.clone(), std::path::Path::new("/sys")) {
            Ok(p) => {
                scanner = scanner.with_placement(&p);
                Some(p)
            }
            Err(e) => {
                warn!(error = %e, "cannot tell the housekeeping CPUs; scanning wherever the agent runs");
                None
            }
        };
        let scanner = Arc::new(scanner);
        let (tls_config, cert) = tls::reloadable_client_config(&config.controller.tls)?;
        let channel = tls::channel(
            &config.controller.address,
            &config.controller.server_name,
            tls_config,
            config.controller.connect_timeout,
        )?;
        let client = AgentServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(Self {
            config,
            scanner,
            signer,
            seq,
            attest: AttestStream::new(client.clone()),
            client,
            boot_id: state::boot_id(),
            acked_full: None,
            last_gate: None,
            pinned: false,
            last_sent_full: false,
            last_full_scan: None,
            scan_requests: Arc::default(),
            deferring: false,
            placement,
            verifying: None,
            verifying_pace: None,
            verified: None,
            last_digest: None,
            fs_changed: Arc::new(Notify::new()),
            scan_now: Arc::new(Notify::new()),
            metrics: Arc::new(AgentMetrics::new()),
            cert,
        })
    }

    /// Notifying this makes the agent scan and report at once.
    pub fn scan_trigger(&self) -> Arc<Notify> {
        self.scan_now.clone()
    }

    /// The agent's metrics, for its `/metrics` endpoint.
    pub fn metrics(&self) -> Arc<AgentMetrics> {
        self.metrics.clone()
    }

    /// Whether the last attestation sent carried entries (false: a heartbeat).
    pub fn last_sent_full(&self) -> bool {
        self.last_sent_full
    }

    pub fn public_key(&self) -> &[u8] {
        self.signer.public_key()
    }

    /// Follows the controller's gate and reports every `scan_interval` (or
    /// when triggered) until `shutdown`.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        // The gate comes first: a halted host learns it before it reports.
        let (hook_tx, hook_rx) = tokio::sync::mpsc::unbounded_channel();
        let hooks = tokio::spawn(crate::hooks::run_hooks(hook_rx, self.config.gate.hook_timeout));
        let keeper = GateKeeper::new(&self.config.host, self.config.gate.clone(), hook_tx);
        let (stop_follow, follow_stopped) = tokio::sync::oneshot::channel::<()>();
        let follower = tokio::spawn(crate::directives::follow(
            self.client.clone(),
            keeper,
            self.scan_requests.clone(),
            async {
                let _ = follow_stopped.await;
            },
        ));
        let (stop_renew, renew_stopped) = tokio::sync::oneshot::channel::<()>();
        let renewer = tokio::spawn(crate::enrollment::keep_renewed(
            self.client.clone(),
            self.config.clone(),
            self.cert.clone(),
            self.metrics.clone(),
            async {
                let _ = renew_stopped.await;
            },
        ));
        let (stop_watch, watch_stopped) = tokio::sync::oneshot::channel::<()>();
        let watcher = self.config.watch_changes.then(|| {
            tokio::spawn(crate::watch::watch_changes(
                self.scanner.clone(),
                crate::watch::Quiet {
                    burst: self.config.quiet_period,
                    small_change: self.config.small_change_quiet_period,
                },
                self.config.scan_interval,
                self.fs_changed.clone(),
                async {
                    let _ = watch_stopped.await;
                },
            ))
        });
        self.report_until(&mut shutdown).await;
        // A requested full scan still hashing is abandoned, not waited for.
        if let Some(pace) = &self.verifying_pace {
            pace.cancel();
        }
        let _ = stop_watch.send(());
        if let Some(w) = watcher {
            let _ = w.await;
        }
        let _ = stop_renew.send(());
        let _ = renewer.await;
        let _ = stop_follow.send(());
        let _ = follower.await;
        let _ = hooks.await;
    }

    async fn report_until(&mut self, shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>) {
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
        let mut failing = false;
        let mut changed_only = false;
        // The next heartbeat is due then, whatever the watcher triggers in
        // between: a change that does not move the set must not delay it.
        let mut next_report = tokio::time::Instant::now();
        loop {
            let result = if changed_only {
                self.report_if_changed().await
            } else {
                self.report_once().await.map(Some)
            };
            match result {
                Ok(submitted) => {
                    if failing {
                        info!(host = %self.config.host, "reporting to the controller again");
                    }
                    failing = false;
                    backoff.reset();
                    if submitted.is_some() {
                        next_report = tokio::time::Instant::now() + self.config.scan_interval;
                    }
                }
                Err(e) => {
                    // One warning per outage, not one per retry.
                    if failing {
                        debug!(host = %self.config.host, error = %e, "report failed again");
                    } else {
                        warn!(host = %self.config.host, error = %e, "report failed; retrying with backoff");
                    }
                    failing = true;
                    next_report = tokio::time::Instant::now() + backoff.next_delay();
                }
            }
            tokio::select! {
                () = tokio::time::sleep_until(next_report) => changed_only = false,
                () = self.scan_now.notified() => changed_only = false,
                () = self.scan_requests.requested() => changed_only = false,
                done = finished(&mut self.verifying) => {
                    self.verification_done(done);
                    changed_only = false;
                }
                // A change between heartbeats: report it if the set moved.
                () = self.fs_changed.notified(), if !failing => changed_only = true,
                () = shutdown.as_mut() => return,
            }
        }
    }

    /// Scans (hashing only what changed, or everything when the full rescan
    /// is due) and returns the canonical entries and their digest.
    async fn scan(&mut self) -> Result<(Vec<lockstep_proto::pb::Entry>, Vec<u8>), AgentError> {
        let in_window = self.config.market_hours.as_ref().is_some_and(MarketHours::is_open_now);
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
                crate::entry::READ_BUF_BYTES as u64,
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

    fn count_full_scan(&self, cause: &'static str, throttled: Option<Duration>) {
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

    fn verification_done(&mut self, done: Result<Result<Verified, ScanError>, tokio::task::JoinError>) {
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

    /// After a watched change: scan, and report only if the set moved from
    /// what the controller holds (`None` when it did not).
    pub async fn report_if_changed(&mut self) -> Result<Option<SubmitReply>, AgentError> {
        let (entries, digest) = self.scan().await?;
        if self.acked_full.as_deref() == Some(digest.as_slice()) {
            return Ok(None);
        }
        self.submit_scanned(entries, digest).await.map(Some)
    }

    /// One scan and one submission (two if the controller asks for entries).
    pub async fn report_once(&mut self) -> Result<SubmitReply, AgentError> {
        let (entries, digest) = self.scan().await?;
        self.submit_scanned(entries, digest).await
    }

    async fn submit_scanned(
        &mut self,
        entries: Vec<lockstep_proto::pb::Entry>,
        digest: Vec<u8>,
    ) -> Result<SubmitReply, AgentError> {
        if !self.pinned {
            let req = PinKeyRequest {
                public_key: self.signer.public_key().to_vec(),
            };
            let reply = self.client.pin_key(req).await?.into_inner();
            debug!(host = %self.config.host, key_id = %reply.key_id, "attestation key pinned");
            self.pinned = true;
        }
        let full = self.acked_full.as_deref() != Some(digest.as_slice());
        let mut reply = self.submit(&entries, &digest, full).await?;
        if reply.manifest_needed && !full {
            reply = self.submit(&entries, &digest, true).await?;
        }
        self.note_gate(&reply);
        Ok(reply)
    }

    #[tracing::instrument(name = "attestation", level = "debug", skip_all, fields(host = %self.config.host, seq = tracing::field::Empty, full))]
    async fn submit(
        &mut self,
        entries: &[lockstep_proto::pb::Entry],
        digest: &[u8],
        full: bool,
    ) -> Result<SubmitReply, AgentError> {
        let seq = self.seq.reserve()?;
        tracing::Span::current().record("seq", seq);
        let attestation = Attestation {
            host: self.config.host.clone(),
            role: self.config.role.clone(),
            seq,
            measured_at_unix_ms: lockstep_proto::now_unix_ms(),
            boot_id: self.boot_id.clone(),
            digest: digest.to_vec(),
            full,
            entries: if full { entries.to_vec() } else { Vec::new() },
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        let envelope = self.signer.seal_attestation(&attestation);
        self.last_sent_full = full;
        let reply = match self.attest.send(envelope).await {
            Ok(r) => r,
            Err(status) => {
                self.metrics.report(match status.code() {
                    tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Unknown
                    | tonic::Code::Cancelled => "failed",
                    _ => "refused",
                });
                // Decided on the stable reason, never on the message text.
                if lockstep_proto::reason::of(&status).as_deref() == Some(lockstep_proto::reason::KEY_NOT_PINNED) {
                    self.pinned = false;
                }
                return Err(status.into());
            }
        };
        if reply.accepted {
            self.metrics.report("accepted");
        }
        if full && reply.accepted {
            self.acked_full = Some(digest.to_vec());
        }
        if reply.manifest_needed {
            self.acked_full = None;
        }
        Ok(reply)
    }

    fn note_gate(&mut self, reply: &SubmitReply) {
        let Some(gate) = &reply.gate else { return };
        let state = gate.state();
        if self.last_gate != Some(state) {
            let reasons: Vec<&str> = gate.reasons.iter().map(|r| r.text.as_str()).collect();
            info!(host = %self.config.host, gate = ?state, release = gate.release, reasons = ?reasons, "gate changed");
            self.last_gate = Some(state);
        }
    }
}
