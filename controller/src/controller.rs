//! The controller, assembled: each part owns its state and is handed the
//! parts it uses, once, here. The ledger ([`crate::ledger`]) is the one
//! writer of durable state and of the fleet view; the others read the view
//! and commit changes through it. The gRPC services ([`crate::api::service`])
//! call the parts; the server ([`crate::api::server`]) runs their background
//! loops and drains them at shutdown.

use std::sync::Arc;

use lockstep_daemon::clock::SharedClock;
use tokio::sync::watch;

use crate::alerts::Alerts;
use crate::attest::ingest::Ingest;
use crate::audit::refusals::Refusals;
use crate::config::ControllerConfig;
use crate::enrollment::Enrollment;
use crate::gates::board::GateBoard;
use crate::gates::scan_requests::ScanRequests;
use crate::halts::Halts;
use crate::ledger::Ledger;
use crate::logins::BoardSessions;
use crate::metrics::{Metrics, Snapshot};
use crate::queries::Queries;
use crate::releases::Releases;
use crate::report::ReportIssuer;
use crate::store::{Store, StoreError};

pub struct Controller {
    pub config: Arc<ControllerConfig>,
    /// Every durable change, and the fleet view they make.
    pub ledger: Arc<Ledger>,
    /// Incidents: signals in, notifications out, acknowledgements.
    pub alerts: Arc<Alerts>,
    /// Each host's latest gate, pushed to its directive stream.
    pub board: Arc<GateBoard>,
    pub ingest: Ingest,
    pub releases: Releases,
    pub halts: Halts,
    pub enrollment: Enrollment,
    /// TPM-bound hosts' nonces and quotes.
    pub tpm: crate::tpm::Tpm,
    pub queries: Queries,
    /// Full scans operators asked of connected agents.
    pub scans: ScanRequests,
    /// Signed pre-open reports, from the audit log.
    pub reports: ReportIssuer,
    /// Login links and sessions of the web board.
    pub board_sessions: Arc<BoardSessions>,
    /// Refused connections and calls, counted for the audit log.
    pub refusals: Arc<Refusals>,
    pub metrics: Arc<Metrics>,
    /// The epoch this controller leads in (etcd: the leader key's create
    /// revision; sled: 0). Every gate it sends carries it.
    pub epoch: u64,
    /// The etcd cluster this controller leads on (None on sled), for
    /// `lockstep cluster status`.
    pub cluster: Option<Arc<crate::store::etcd::Etcd>>,
    /// Whether this controller may still act as the leader (etcd: it stands
    /// down at the first doubt about its lead).
    pub standing: crate::ledger::standing::Standing,
    /// Set when the server begins to stop: long-lived streams end on it.
    closing: watch::Sender<bool>,
}

impl Controller {
    /// Opens the ledger on `store` (loading the fleet view, the audit head
    /// and the incident book) and assembles the parts.
    pub fn new(config: ControllerConfig, store: Arc<dyn Store>) -> Result<Self, StoreError> {
        Self::with_clock(config, store, lockstep_daemon::clock::system())
    }

    /// Like [`Controller::new`] on `clock` (a test's, which it moves).
    pub fn with_clock(config: ControllerConfig, store: Arc<dyn Store>, clock: SharedClock) -> Result<Self, StoreError> {
        let config = Arc::new(config);
        let epoch = store.epoch();
        let metrics = Arc::new(Metrics::new());
        let store_seconds = metrics.store_seconds.clone();
        let ledger = Arc::new(Ledger::open(
            config.clone(),
            store,
            clock,
            Box::new(move |s| store_seconds.observe(s)),
        )?);
        let alerts = Arc::new(Alerts::open(config.clone(), ledger.clone())?);
        let board = Arc::new(GateBoard::new(config.clone(), ledger.clone(), alerts.clone()));
        Ok(Self {
            ingest: Ingest::new(
                config.clone(),
                ledger.clone(),
                board.clone(),
                alerts.clone(),
                metrics.clone(),
            ),
            releases: Releases::new(config.clone(), ledger.clone(), board.clone()),
            halts: Halts::new(config.clone(), ledger.clone(), board.clone()),
            enrollment: Enrollment::new(config.clone(), ledger.clone(), board.clone()),
            tpm: crate::tpm::Tpm::new(config.clone(), ledger.clone(), board.clone()),
            queries: Queries::new(config.clone(), ledger.clone(), board.clone()),
            scans: ScanRequests::new(config.clone(), ledger.clone()),
            reports: ReportIssuer::new(config.clone(), ledger.clone()),
            board_sessions: Arc::new(BoardSessions::new(config.board.clone(), ledger.clone())),
            refusals: Arc::new(Refusals::default()),
            standing: crate::ledger::standing::Standing::new(match &config.backend {
                crate::config::Backend::Etcd(e) => &e.name,
                crate::config::Backend::Sled => "controller",
            }),
            closing: watch::channel(false).0,
            config,
            ledger,
            alerts,
            board,
            metrics,
            epoch,
            cluster: None,
        })
    }

    pub fn config(&self) -> &ControllerConfig {
        &self.config
    }

    /// Tells long-lived streams and background loops to end: the server is stopping.
    pub fn begin_shutdown(&self) {
        self.closing.send_replace(true);
    }

    /// Stops acting as the leader at once (see [`crate::ledger::standing`]): every
    /// call is refused from now, and streams and background loops end.
    pub fn stand_down(&self, why: &str) {
        if self.standing.stand_down(why) {
            tracing::warn!(
                why,
                epoch = self.epoch,
                "standing down: no call is answered as the leader from now"
            );
        }
        self.begin_shutdown();
    }

    /// Resolves once [`Controller::begin_shutdown`] has been called.
    pub fn closing(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.closing.subscribe();
        async move {
            let _ = rx.wait_for(|c| *c).await;
        }
    }

    /// The `/metrics` page as of now.
    pub fn metrics_text(&self) -> String {
        let clock = self.board.clock();
        let mut gates = Vec::new();
        let mut ages = Vec::new();
        {
            let state = self.ledger.view();
            for role in self.config.roles.values() {
                let (decided, _) = state.role_gates(role, clock);
                use lockstep_proto::pb::GateState;
                for (word, state) in [
                    ("open", GateState::Open),
                    ("closed", GateState::Closed),
                    ("missing", GateState::Missing),
                ] {
                    let n = decided.iter().filter(|g| g.state() == state).count();
                    gates.push((role.name.clone(), word, i64::try_from(n).unwrap_or(i64::MAX)));
                }
                for host in &role.hosts {
                    if let Some(r) = state.hosts.get(host).filter(|r| r.has_reported()) {
                        #[allow(clippy::cast_precision_loss)] // milliseconds of age fit an f64 exactly
                        let age = (clock.now_unix_ms - r.accepted_at_unix_ms).max(0) as f64 / 1000.0;
                        ages.push((host.clone(), role.name.clone(), age));
                    }
                }
            }
        }
        let open_incidents = i64::try_from(self.alerts.open_count()).unwrap_or(i64::MAX);
        self.metrics.render(Snapshot {
            gates,
            ages,
            open_incidents,
        })
    }
}
