//! `lockstep-controller` and the `lockstep` console.
//!
//! Controller: [`config`] → [`server`] (TLS, identity) → [`service`] (gRPC
//! adapters) → [`controller`] (ingest, durable-then-acknowledge) using
//! [`verify`] (checks on one attestation), [`fleet`] (in-memory view),
//! [`gate`] (the pure gate rule), [`web`] / [`board_sessions`] (the fleet
//! board in a browser, and its login links and sessions), [`releases`] (two-person releases),
//! [`halts`] (the kill switch), [`enrollment`] (tokens, enrollment, renewal,
//! revocation), [`scan_requests`] (operator-requested full scans), [`audit`] (the hash-chained audit log),
//! [`incidents`] / [`alerts`] / [`webhook`] (grouped alerts and their
//! delivery), [`metrics`] (Prometheus), [`queries`] (console reads), [`store`] / [`sled_store`] (persistence),
//! [`evidence`] (the facts audit records carry) / [`report`] (the signed
//! pre-open report derived from them) / [`report_html`] (its printable page) /
//! [`report_key`] (its signing key) / [`report_issuer`] (issuing it) /
//! [`report_verify`] (checking one offline),
//! [`error`] (the one mapping to gRPC status), [`authz`] (who may call
//! which method, one table), [`detach`] (calls run to
//! completion when their client goes away).
//!
//! Console: [`console`] (the `lockstep` CLI) and [`pki`] (the fleet CA).

pub mod alerts;
pub mod audit;
pub mod authz;
pub mod board;
pub mod board_sessions;
pub mod change;
pub mod commit;
pub mod config;
pub mod console;
pub mod controller;
pub mod detach;
pub mod enrollment;
pub mod error;
pub mod etcd;
pub mod evidence;
pub mod fleet;
pub mod front;
pub mod gate;
pub mod halts;
pub mod incidents;
pub mod ingest;
pub mod leadership;
pub mod ledger;
pub mod metrics;
pub mod migrate;
pub mod peer;
pub mod pki;
pub mod queries;
pub mod refusals;
pub mod releases;
pub mod report;
pub mod report_html;
pub mod report_issuer;
pub mod report_key;
pub mod report_verify;
pub mod scan_requests;
pub mod server;
pub mod service;
pub mod siem;
pub mod sled_store;
pub mod standby;
pub mod standby_console;
pub mod standing;
pub mod store;
pub mod verify;
pub mod web;
pub mod webhook;

use anyhow::Context;
use std::future::Future;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

/// The `lockstep-controller` command line (here so that its man page is
/// generated from the same definition).
#[derive(clap::Parser, Debug)]
#[command(
    name = "lockstep-controller",
    version,
    about = "lockstep controller: verifies attestations and decides gates"
)]
pub struct DaemonCli {
    #[arg(long, default_value = "/etc/lockstep/controller.toml")]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Option<DaemonCommand>,
}

#[derive(clap::Subcommand, Debug)]
pub enum DaemonCommand {
    /// Copy every record of one store into another, empty one (sled into
    /// etcd, or back), verifying the audit chain on both sides. Stop every
    /// controller on both first.
    Migrate {
        /// A controller config naming the store to copy from.
        #[arg(long)]
        from: PathBuf,
        /// A controller config naming the (empty) store to copy into.
        #[arg(long)]
        to: PathBuf,
    },
}

/// Loads the config, opens the store and serves until `shutdown`. On etcd
/// the controller stands by until it leads, and stands by again when it
/// loses the lead ([`leadership`]).
pub async fn run(config_path: &Path, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let config = config::ControllerConfig::load(config_path)?;
    // Before anything is written or bound: a setup that lets every host
    // write the control plane must not run at all.
    if let config::Backend::Etcd(settings) = &config.backend {
        etcd::trust::check(&config.tls.ca, &settings.tls)?;
    }
    let tls = lockstep_proto::tls::server_config(&config.tls)?;
    if let Some(key) = &config.enrollment.ca_key {
        check_private(key)?;
    }
    // The data dir holds the report key on every backend (and the store on
    // sled); private to the controller's user.
    create_private_dir(&config.data_dir)?;
    // Made at the first start, so its public key can be handed to auditors
    // (`lockstep pki report-key`) before the first report is signed.
    let report_key = report_key::ReportKey::open_or_create(&report_issuer::ReportIssuer::key_path(&config))?;
    tracing::info!(key_id = %report_key.key_id(), "report signing key ready");
    let metrics_listener = match config.metrics_listen {
        Some(at) => Some(tokio::net::TcpListener::bind(at).await.with_context(|| {
            format!("binding {at} for /metrics (config key `metrics.listen`; \"off\" disables it)")
        })?),
        None => None,
    };
    match config.backend.clone() {
        config::Backend::Sled => {
            let store = sled_store::SledStore::open(&config.data_dir.join("store"))?;
            let listeners = Listeners::bind(&config).await?;
            let controller = Arc::new(controller::Controller::new(config, Arc::new(store))?);
            let metrics = metrics_listener.map(|l| {
                let c = controller.clone();
                let render: lockstep_daemon::metrics_endpoint::Render = Arc::new(move || c.metrics_text());
                (l, render)
            });
            let sidecars =
                lockstep_daemon::service::Sidecars::start(metrics, &format!("serving on {}", listeners.addr));
            let stopping = async {
                shutdown.await;
                lockstep_daemon::systemd::stopping();
            };
            let served = listeners.serve(tls, controller, stopping).await;
            sidecars.stop().await;
            Ok(served?)
        }
        config::Backend::Etcd(settings) => leadership::run(config, *settings, tls, metrics_listener, shutdown).await,
    }
}

/// The controller's listeners, bound before anything is served so a port in
/// use is named at once.
pub(crate) struct Listeners {
    pub(crate) api: tokio::net::TcpListener,
    pub(crate) board: Option<tokio::net::TcpListener>,
    pub(crate) addr: std::net::SocketAddr,
}

impl Listeners {
    pub(crate) async fn bind(config: &config::ControllerConfig) -> anyhow::Result<Self> {
        let api = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {} (config key `listen`)", config.listen))?;
        let board = match &config.board {
            Some(b) => Some(
                tokio::net::TcpListener::bind(b.listen)
                    .await
                    .with_context(|| format!("binding {} for the board (config key `board.listen`)", b.listen))?,
            ),
            None => None,
        };
        let addr = api.local_addr()?;
        tracing::info!(%addr, "controller listening");
        Ok(Self { api, board, addr })
    }

    pub(crate) async fn serve(
        self,
        tls: Arc<rustls::ServerConfig>,
        controller: Arc<controller::Controller>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        server::serve_all(self.api.into(), self.board.map(Into::into), tls, controller, shutdown).await
    }
}

/// The CA key signs every agent identity: refuse to run with it readable by
/// anyone but the controller's user.
fn check_private(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| anyhow::anyhow!("enrollment.ca_key {}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o7777;
    anyhow::ensure!(
        mode & 0o077 == 0,
        "enrollment.ca_key {} is readable by group or others (mode {mode:04o}); run `chmod 600 {}`",
        path.display(),
        path.display()
    );
    Ok(())
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating the data dir {} (config key `data_dir`)", dir.display()))
}
