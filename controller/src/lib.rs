//! `lockstep-controller`: the controller, a folder per part, imports one
//! way (docs/architecture.md draws them; a test fails on a circle):
//!
//! - ground: [`config`], [`metrics`], [`store`] (every record, the `Store`
//!   trait, sled, etcd and migration), [`error`] (`ApiError` and the
//!   `DomainError` each part's refusals implement);
//! - the view and the writer: [`fleet`] (the in-memory view and the gate
//!   rule), [`ledger`] (the one writer: commits each part's `Change`),
//!   [`audit`] (who acts, the peer, counted refusals);
//! - the parts: [`alerts`], [`gates`] (each host's gate, directive streams,
//!   the epoch hold-back), [`attest`], [`releases`], [`halts`],
//!   [`enrollment`], [`report`] (issuing the signed pre-open report),
//!   [`logins`] (board sessions), [`queries`] (console reads, the recorded
//!   gate check);
//! - the assembly and the fronts: [`controller`], [`api`] (TLS acceptor,
//!   authorization table, gRPC services), [`web`] (the board), [`serve`] (a
//!   leader at work), [`ha`] (leader and standby on etcd).
//!
//! The `lockstep` console is `lockstep-console`; the audit chain and the
//! report's derivation and verification are `lockstep-evidence`; the CAs
//! are `lockstep-pki`.

pub mod alerts;
pub mod api;
pub mod archive;
pub mod attest;
pub mod audit;
pub mod config;
pub mod controller;
pub mod enrollment;
pub mod error;
pub mod fleet;
pub mod gates;
pub mod ha;
pub mod halts;
pub mod ledger;
pub mod logins;
pub mod metrics;
pub mod queries;
pub mod releases;
pub mod report;
pub mod serve;
pub mod store;
pub mod tpm;
pub mod web;

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
        store::etcd::trust::check(&config.tls.ca, &settings.tls)?;
    }
    let tls = lockstep_link::tls::server_config(&config.tls)?;
    if let Some(key) = &config.enrollment.ca_key {
        check_private(key)?;
    }
    // The data dir holds the report key on every backend (and the store on
    // sled); private to the controller's user.
    create_private_dir(&config.data_dir)?;
    // Made at the first start, so its public key can be handed to auditors
    // (`lockstep pki report-key`) before the first report is signed.
    let report_key = report::open_or_create_key(&report::ReportIssuer::key_path(&config))?;
    tracing::info!(key_id = %report_key.key_id(), "report signing key ready");
    let metrics_listener = match config.metrics_listen {
        Some(at) => Some(tokio::net::TcpListener::bind(at).await.with_context(|| {
            format!("binding {at} for /metrics (config key `metrics.listen`; \"off\" disables it)")
        })?),
        None => None,
    };
    match config.backend.clone() {
        config::Backend::Sled => {
            let store =
                store::sled::SledStore::open_with_cache(&config.data_dir.join("store"), config.store.sled_cache_bytes)?;
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
        config::Backend::Etcd(settings) => {
            ha::leadership::run(config, *settings, tls, metrics_listener, shutdown).await
        }
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
        serve::serve_all(self.api.into(), self.board.map(Into::into), tls, controller, shutdown).await
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
