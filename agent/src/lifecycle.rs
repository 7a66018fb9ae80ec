//! The agent's lifecycle: what it loads at start (keys, state, the channel
//! to the controller), the tasks it runs beside the report loop (the gate
//! and its hooks, certificate renewal, the file watcher), and the order it
//! stops them in. `run_service` is `lockstep-agent run`: the agent plus its
//! `/metrics` endpoint and the systemd notifications.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use lockstep_link::failover::FailoverChannel;
use lockstep_link::tls;
use lockstep_proto::pb::SubmitReply;
use lockstep_proto::pb::agent_service_client::AgentServiceClient;
use tokio::sync::Notify;
use tracing::warn;

use crate::config::AgentConfig;
use crate::error::AgentError;
use crate::gate::gatekeeper::GateKeeper;
use crate::link::report::{self, Due, Reporter, TpmSession, Triggers};
use crate::measure::placement::Placement;
use crate::measure::scan::Scanner;
use crate::measurer::FullScanRequests;
use crate::measurer::Measurer;
use crate::metrics::AgentMetrics;
use crate::state::{self, SeqCounter};

/// Largest message the agent will send or accept.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

pub struct Agent {
    config: AgentConfig,
    scanner: Arc<Scanner>,
    client: AgentServiceClient<FailoverChannel>,
    measurer: Measurer,
    reporter: Reporter,
    triggers: Triggers,
    metrics: Arc<AgentMetrics>,
    /// The host's wall clock, for every part that reads the time.
    clock: lockstep_daemon::clock::SharedClock,
    /// The TLS certificate presented to the controller, renewed in place.
    cert: Arc<lockstep_link::tls::ReloadableCert>,
}

impl Agent {
    /// Loads keys and state and prepares the (lazy) channel; no network yet.
    pub fn new(config: AgentConfig) -> Result<Self, AgentError> {
        Self::with_clock(config, lockstep_daemon::clock::system())
    }

    /// Like [`Agent::new`] on `clock`: what `measured_at`, market hours and
    /// the gate's leases are read from (a test's, which it moves).
    pub fn with_clock(config: AgentConfig, clock: lockstep_daemon::clock::SharedClock) -> Result<Self, AgentError> {
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
        let channel = lockstep_link::failover::failover_channel(
            config.controller.targets(),
            tls_config,
            config.controller.connect_timeout,
        )?;
        let client = AgentServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let metrics = Arc::new(AgentMetrics::new());
        let scan_requests: Arc<FullScanRequests> = Arc::default();
        let reporter = Reporter::new(
            config.host.clone(),
            config.role.clone(),
            signer,
            seq,
            client.clone(),
            metrics.clone(),
            clock.clone(),
        );
        let tpm = config.tpm.as_ref().map(|t| tpm_session(&config, t)).transpose()?;
        Ok(Self {
            measurer: Measurer::new(
                config.clone(),
                clock.clone(),
                scanner.clone(),
                placement,
                metrics.clone(),
                scan_requests.clone(),
            ),
            reporter: match tpm {
                Some(session) => reporter.with_tpm(session),
                None => reporter,
            },
            triggers: Triggers {
                scan_now: Arc::new(Notify::new()),
                fs_changed: Arc::new(Notify::new()),
                scan_requests,
                reconnects: Arc::default(),
            },
            config,
            clock,
            scanner,
            client,
            metrics,
            cert,
        })
    }

    /// Notifying this makes the agent scan and report at once.
    pub fn scan_trigger(&self) -> Arc<Notify> {
        self.triggers.scan_now.clone()
    }

    /// The agent's metrics, for its `/metrics` endpoint.
    pub fn metrics(&self) -> Arc<AgentMetrics> {
        self.metrics.clone()
    }

    /// Whether the last attestation sent carried entries (false: a heartbeat).
    pub fn last_sent_full(&self) -> bool {
        self.reporter.last_sent_full()
    }

    pub fn public_key(&self) -> &[u8] {
        self.reporter.public_key()
    }

    /// After a watched change: scan, and report only if the set moved from
    /// what the controller holds (`None` when it did not).
    pub async fn report_if_changed(&mut self) -> Result<Option<SubmitReply>, AgentError> {
        report::report(&mut self.measurer, &mut self.reporter, Due::IfChanged).await
    }

    /// One scan and one submission (two if the controller asks for entries).
    pub async fn report_once(&mut self) -> Result<SubmitReply, AgentError> {
        let (entries, digest) = self.measurer.scan().await?;
        self.reporter.submit_scanned(entries, digest).await
    }

    /// Follows the controller's gate and reports every `scan_interval` (or
    /// when triggered) until `shutdown`; then stops the tasks it started,
    /// each finishing what it is doing.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        // The gate comes first: a halted host learns it before it reports.
        let (hook_tx, hook_rx) = tokio::sync::mpsc::unbounded_channel();
        let hooks = tokio::spawn(crate::gate::hooks::run_hooks(hook_rx, self.config.gate.hook_timeout));
        let keeper = GateKeeper::with_clock(&self.config.host, self.config.gate.clone(), hook_tx, self.clock.clone());
        let (stop_follow, follow_stopped) = tokio::sync::oneshot::channel::<()>();
        let (reply_gates, gates_from_replies) = tokio::sync::mpsc::unbounded_channel();
        self.reporter.send_gates_to(reply_gates);
        let follower = tokio::spawn(crate::link::directives::follow(
            self.client.clone(),
            keeper,
            self.triggers.scan_requests.clone(),
            self.triggers.reconnects.clone(),
            gates_from_replies,
            async {
                let _ = follow_stopped.await;
            },
        ));
        let (stop_renew, renew_stopped) = tokio::sync::oneshot::channel::<()>();
        let renewer = tokio::spawn(crate::link::enrollment::keep_renewed(
            self.client.clone(),
            self.config.clone(),
            self.cert.clone(),
            self.metrics.clone(),
            self.clock.clone(),
            async {
                let _ = renew_stopped.await;
            },
        ));
        let (stop_watch, watch_stopped) = tokio::sync::oneshot::channel::<()>();
        let watcher = self.config.watch_changes.then(|| {
            tokio::spawn(crate::measure::watch::watch_changes(
                self.scanner.clone(),
                crate::measure::watch::Quiet {
                    burst: self.config.quiet_period,
                    small_change: self.config.small_change_quiet_period,
                },
                self.config.scan_interval,
                self.triggers.fs_changed.clone(),
                async {
                    let _ = watch_stopped.await;
                },
            ))
        });
        report::run(
            &mut self.measurer,
            &mut self.reporter,
            &self.triggers,
            self.config.scan_interval,
            shutdown,
        )
        .await;
        self.measurer.abandon_verification();
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
}

/// A TPM-bound run: a session key born in memory (it never touches the
/// disk, so a copy of the state directory has no key the quotes bind); the
/// first quote binds the TPM's session PCR to it.
fn tpm_session(config: &AgentConfig, settings: &crate::config::TpmSettings) -> Result<TpmSession, AgentError> {
    if !crate::tpm::BUILT_WITH_TPM {
        return Err(crate::tpm::TpmError::NotBuilt.into());
    }
    let tpm = crate::tpm::Tpm::new(settings, &config.state_dir);
    // The AK is checked when the first quote loads it; a missing one is
    // said now, before anything runs.
    crate::tpm::AkBlob::load(&config.state_dir)?;
    let pkcs8 = lockstep_proto::envelope::Signer::generate_pkcs8().map_err(|_| state::StateError::BadKey {
        path: config.state_dir.join("(session key)"),
    })?;
    let signer = lockstep_proto::envelope::Signer::from_pkcs8(&pkcs8).map_err(|_| state::StateError::BadKey {
        path: config.state_dir.join("(session key)"),
    })?;
    Ok(TpmSession::new(tpm, signer, settings.quote_interval))
}

/// `lockstep-agent run`: the agent, its `/metrics` endpoint and the systemd
/// notifications, until `shutdown`.
pub async fn run_service(config: AgentConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let host = config.host.clone();
    let metrics_at = config.metrics_listen;
    let agent = Agent::new(config)?;
    let metrics = match metrics_at {
        Some(at) => {
            let listener = tokio::net::TcpListener::bind(at).await.with_context(|| {
                format!("binding {at} for /metrics (config key `metrics_listen`; \"off\" disables it)")
            })?;
            let m = agent.metrics();
            let render: lockstep_daemon::metrics_endpoint::Render = Arc::new(move || m.render());
            Some((listener, render))
        }
        None => None,
    };
    let sidecars = lockstep_daemon::service::Sidecars::start(metrics, &format!("attesting {host}"));
    agent
        .run(async {
            shutdown.await;
            lockstep_daemon::systemd::stopping();
        })
        .await;
    sidecars.stop().await;
    Ok(())
}
