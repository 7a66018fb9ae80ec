//! The controller's life on etcd: stand by until it leads, lead until it
//! loses the lead, then stand by again, in one process (a controller whose
//! etcd lost quorum comes back by itself when quorum returns).
//!
//! Every controller holds its ports for life ([`crate::ha::front`]). A standby
//! follows the ledger ([`crate::ha::follow`]), answers console reads from
//! that view ([`crate::ha::standby_console`]) and sends everything else to the
//! leader ([`crate::ha::standby`]), whose address agents and consoles follow.
//! Its `/metrics` says
//! `lockstep_controller_leader 0` and names the leader, so a probe or load
//! balancer can tell the two apart. A new leader loads every record from
//! etcd before it serves: its view is the last committed state.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use lockstep_daemon::metrics_endpoint::Render;
use lockstep_proto::pb::console_service_server::ConsoleServiceServer;

use crate::Listeners;
use crate::config::{ControllerConfig, EtcdSettings};
use crate::controller::Controller;
use crate::ha::follow::{self, Followed};
use crate::ha::front::Front;
use crate::ha::standby::StandbyView;
use crate::ha::standby_console::StandbyConsole;
use crate::store::etcd::Etcd;
use crate::store::etcd::election::{self, LeaderInfo};
use crate::store::etcd::store::{EtcdStore, Fence};

/// What this controller is doing now, for `/metrics`.
enum Role {
    Standby { leader: Option<LeaderInfo> },
    Leading { controller: Arc<Controller>, epoch: i64 },
}

#[derive(Clone, PartialEq, Eq, Debug)]
enum StoodDown {
    Shutdown,
    LeaseLost,
    WriteRefused,
    ServerEnded(String),
}

impl StoodDown {
    fn said(&self) -> String {
        match self {
            Self::Shutdown => "the controller is stopping".into(),
            Self::LeaseLost => "its leader lease could not be renewed in time".into(),
            Self::WriteRefused => {
                "etcd refused or left unanswered one of its writes (another leader, or no quorum)".into()
            }
            Self::ServerEnded(e) => format!("its server ended: {e}"),
        }
    }
}

pub async fn run(
    config: ControllerConfig,
    settings: EtcdSettings,
    tls: Arc<rustls::ServerConfig>,
    metrics_listener: Option<tokio::net::TcpListener>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let etcd = Arc::new(Etcd::connect(&settings).context("store.etcd")?);
    // The one wall clock of this controller, leader or standby.
    let clock = lockstep_daemon::clock::system();
    let role = Arc::new(Mutex::new(Role::Standby { leader: None }));
    // A standby's view of the ledger, while it stands by.
    let following: Arc<Mutex<Option<Arc<Followed>>>> = Arc::default();
    let metrics = metrics_listener.map(|l| {
        let (role, etcd, following) = (role.clone(), etcd.clone(), following.clone());
        let render: Render = Arc::new(move || {
            let followed = following.lock().unwrap_or_else(|p| p.into_inner()).clone();
            render_metrics(
                &role.lock().unwrap_or_else(|p| p.into_inner()),
                followed.as_deref(),
                &etcd.latency.render(),
            )
        });
        (l, render)
    });
    let sidecars = lockstep_daemon::service::Sidecars::start(metrics, &format!("controller {} on etcd", settings.name));
    let me = LeaderInfo {
        name: settings.name.clone(),
        address: settings.advertise.clone(),
        epoch: 0,
        lease: 0,
        silent: false,
    };
    // Held for the process's life: agents and consoles that reach a
    // standby are told who leads, and a port taken while standing by cannot
    // stop this controller from leading later.
    let front = Front::hold(Listeners::bind(&config).await?)?;
    let (view, view_rx) = tokio::sync::watch::channel(StandbyView {
        me: settings.name.clone(),
        ..StandbyView::default()
    });
    // Every controller says every second what it is, for `cluster status`.
    let announcing = {
        let (etcd, role, me, following) = (etcd.clone(), role.clone(), me.clone(), following.clone());
        let clock = clock.clone();
        tokio::spawn(async move {
            loop {
                let (role_word, epoch, lag) = match &*role.lock().unwrap_or_else(|p| p.into_inner()) {
                    // The leader's view is the ledger.
                    Role::Leading { epoch, .. } => ("leader", *epoch, Some(0)),
                    Role::Standby { leader } => (
                        "standby",
                        leader.as_ref().map_or(0, |l| l.epoch),
                        following
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .as_ref()
                            .and_then(|f| f.lag_revisions()),
                    ),
                };
                let presence = crate::store::etcd::presence::Presence {
                    name: me.name.clone(),
                    address: me.address.clone(),
                    role: role_word.into(),
                    epoch: u64::try_from(epoch).unwrap_or(0),
                    seen_at_unix_ms: clock.now_unix_ms(),
                    ledger_lag_revisions: lag,
                };
                if let Err(e) = crate::store::etcd::presence::announce(&etcd, &presence).await {
                    tracing::debug!(error = %e, "cannot announce this controller");
                }
                tokio::time::sleep(crate::store::etcd::presence::ANNOUNCE_EVERY).await;
            }
        })
    };
    // Shared by every standby period's follower and console.
    let shared_config = Arc::new(config.clone());
    tokio::pin!(shutdown);
    let outcome = loop {
        let mut last_seen: Option<String> = None;
        let seen = |seen: Result<Option<LeaderInfo>, crate::store::StoreError>| {
            let said = match &seen {
                Ok(Some(l)) => format!("{} at {} (epoch {})", l.name, l.address, l.epoch),
                Ok(None) => "nobody".to_string(),
                Err(e) => e.to_string(),
            };
            if last_seen.as_deref() != Some(said.as_str()) {
                match &seen {
                    Err(e) => tracing::warn!(error = %e, "standing by: cannot read who leads"),
                    Ok(_) => tracing::info!(leader = %said, "standing by"),
                }
                last_seen = Some(said);
            }
            view.send_modify(|v| {
                v.trouble = seen.as_ref().err().map(ToString::to_string);
                v.leader = seen.as_ref().ok().cloned().flatten();
            });
            *role.lock().unwrap_or_else(|p| p.into_inner()) = Role::Standby {
                leader: seen.ok().flatten(),
            };
        };
        let followed = Arc::new(Followed::new(clock.clone()));
        *following.lock().unwrap_or_else(|p| p.into_inner()) = Some(followed.clone());
        let console = StandbyConsole::new(
            shared_config.clone(),
            followed.clone(),
            etcd.clone(),
            view_rx.clone(),
            clock.clone(),
        );
        let standby = StandbyServer::start(
            &front,
            tls.clone(),
            view_rx.clone(),
            console,
            config.max_message_bytes(),
        );
        let follower = tokio::spawn(follow::follow(etcd.clone(), shared_config.clone(), followed));
        let campaigned = tokio::select! {
            l = election::campaign(etcd.clone(), me.clone(), seen) => Some(l),
            () = &mut shutdown => None,
        };
        // A leader's view is the one it loads and commits to.
        follower.abort();
        *following.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let Some(leadership) = campaigned else {
            standby.stop();
            break Ok(());
        };
        let epoch = leadership.epoch;
        // Until it serves, this controller's standby port says it has won
        // and is loading (clients come back to it, not to the old leader).
        view.send_modify(|v| {
            v.trouble = None;
            v.leader = Some(LeaderInfo { epoch, ..me.clone() });
        });
        tracing::info!(epoch, name = %settings.name, "leading: loading the fleet from etcd");
        let store = Arc::new(EtcdStore::new(etcd.clone(), Fence::Leader { epoch }));
        let mut deposed = store.deposed();
        let controller = match Controller::with_clock(config.clone(), store, clock.clone()) {
            Ok(mut c) => {
                c.cluster = Some(etcd.clone());
                Arc::new(c)
            }
            Err(e) => {
                tracing::error!(error = %e, epoch, "cannot load the fleet from etcd: standing down");
                view.send_modify(|v| v.leader = None);
                leadership.resign(&etcd).await;
                standby.stop();
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        // New connections go to the leader's server from here; the
        // standby's send theirs away (GOAWAY) and they reconnect to it.
        let (api, board) = front.hand_over();
        standby.stop();
        *role.lock().unwrap_or_else(|p| p.into_inner()) = Role::Leading {
            controller: controller.clone(),
            epoch,
        };
        tracing::info!(addr = %config.listen, epoch, "controller listening as the leader");
        let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
        let mut server = tokio::spawn(crate::serve::serve_all(
            api,
            board,
            tls.clone(),
            controller.clone(),
            async {
                let _ = server_stopped.await;
            },
        ));
        let why = tokio::select! {
            () = &mut shutdown => StoodDown::Shutdown,
            () = leadership.lost() => StoodDown::LeaseLost,
            _ = deposed.wait_for(|d| *d) => StoodDown::WriteRefused,
            ended = &mut server => StoodDown::ServerEnded(match ended {
                Ok(Ok(())) => "the gRPC server ended".to_string(),
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            }),
        };
        if why == StoodDown::Shutdown {
            lockstep_daemon::systemd::stopping();
            let _ = stop_server.send(());
            let served = server.await;
            *role.lock().unwrap_or_else(|p| p.into_inner()) = Role::Standby { leader: None };
            leadership.resign(&etcd).await;
            match served {
                Ok(Ok(())) => break Ok(()),
                Ok(Err(e)) => break Err(e.into()),
                Err(e) => break Err(anyhow::anyhow!("the leader's server failed: {e}")),
            }
        }
        // In doubt: from this instant nothing is answered as the leader
        // (every call refused, streams ended, the gauge at 0), before the
        // lease can pass to another controller. The deposed server drains
        // and the lease is given back on their own; this controller stands
        // by at once, so the ports answer as a standby's again.
        let said = why.said();
        controller.stand_down(&said);
        *role.lock().unwrap_or_else(|p| p.into_inner()) = Role::Standby { leader: None };
        // Its own record as leader is no redirect now: the next campaign
        // names whoever leads.
        view.send_modify(|v| {
            v.leader = None;
            v.trouble = None;
        });
        let _ = stop_server.send(());
        let ended = matches!(why, StoodDown::ServerEnded(_));
        if !ended {
            tokio::spawn(async move {
                if let Ok(Err(e)) = server.await {
                    tracing::warn!(error = %e, "the deposed leader's server stopped with an error");
                }
            });
        }
        {
            let etcd = etcd.clone();
            tokio::spawn(async move { leadership.resign(&etcd).await });
        }
        tracing::warn!(epoch, why = %said, "stood down; standing by");
        if ended {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    announcing.abort();
    sidecars.stop().await;
    outcome
}

/// The standby's refusals, served while this controller does not lead.
struct StandbyServer {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl StandbyServer {
    fn start(
        front: &Front,
        tls: Arc<rustls::ServerConfig>,
        view: tokio::sync::watch::Receiver<StandbyView>,
        console: StandbyConsole,
        max_message: usize,
    ) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let console = ConsoleServiceServer::new(console)
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message);
        let task = tokio::spawn(crate::ha::standby::serve(
            front.hand_over_api(),
            tls,
            view,
            tonic::service::Routes::new(console),
            async move {
                let _ = stopped.await;
            },
        ));
        Self { stop, task }
    }

    /// Stops it without waiting: its clients get GOAWAY, and one that
    /// does not go is cut off after a grace.
    fn stop(self) {
        let _ = self.stop.send(());
        let abort = self.task.abort_handle();
        tokio::spawn(async move {
            if tokio::time::timeout(Duration::from_secs(5), self.task).await.is_err() {
                abort.abort();
            }
        });
    }
}

/// This controller's role, its ledger lag (and a standby's followed view),
/// then `etcd` (its etcd latency metrics), then `# EOF`.
fn render_metrics(role: &Role, followed: Option<&Followed>, etcd: &str) -> String {
    let head = "# HELP lockstep_controller_leader 1 on the controller that leads (etcd backend), 0 on a standby.\n\
                # TYPE lockstep_controller_leader gauge\n";
    let epoch_head = "# HELP lockstep_controller_epoch The epoch this controller leads in, or the leader's it follows.\n\
                      # TYPE lockstep_controller_epoch gauge\n";
    let lag = |revisions: Option<i64>, seconds: Option<f64>| {
        let (Some(r), Some(s)) = (revisions, seconds) else {
            // Not loaded yet: no figure rather than a false zero.
            return String::new();
        };
        format!(
            "# HELP lockstep_controller_ledger_lag_revisions Store revisions this controller's view is behind the ledger's head (0 on the leader: its view is the ledger).\n\
             # TYPE lockstep_controller_ledger_lag_revisions gauge\nlockstep_controller_ledger_lag_revisions {r}\n\
             # HELP lockstep_controller_ledger_lag_seconds Seconds since this controller's view was last at the ledger's head.\n\
             # TYPE lockstep_controller_ledger_lag_seconds gauge\nlockstep_controller_ledger_lag_seconds {s:.3}\n"
        )
    };
    match role {
        Role::Leading { controller, epoch } => {
            // OpenMetrics ends at "# EOF": ours go before it.
            let text = controller.metrics_text();
            let body = text.strip_suffix("# EOF\n").unwrap_or(&text);
            let lag = lag(Some(0), Some(0.0));
            format!(
                "{body}{head}lockstep_controller_leader 1\n{epoch_head}lockstep_controller_epoch {epoch}\n{lag}{etcd}# EOF\n"
            )
        }
        Role::Standby { leader } => {
            let epoch = leader.as_ref().map_or(0, |l| l.epoch);
            let info = leader.as_ref().map_or(String::new(), |l| {
                format!(
                    "# TYPE lockstep_controller_leader_info gauge\nlockstep_controller_leader_info{{name=\"{}\",address=\"{}\"}} 1\n",
                    l.name.replace('"', ""),
                    l.address.replace('"', "")
                )
            });
            let view = followed.map_or(String::new(), |f| {
                let (hosts, halts) = f.counts();
                format!(
                    "{}# HELP lockstep_controller_followed_hosts Hosts that have reported, in this standby's view of the ledger.\n\
                     # TYPE lockstep_controller_followed_hosts gauge\nlockstep_controller_followed_hosts {hosts}\n\
                     # HELP lockstep_controller_followed_active_halts Halts in force, in this standby's view of the ledger.\n\
                     # TYPE lockstep_controller_followed_active_halts gauge\nlockstep_controller_followed_active_halts {halts}\n",
                    lag(f.lag_revisions(), f.lag_seconds())
                )
            });
            format!(
                "{head}lockstep_controller_leader 0\n{epoch_head}lockstep_controller_epoch {epoch}\n{info}{view}{etcd}# EOF\n"
            )
        }
    }
}
