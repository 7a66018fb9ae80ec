//! What a controller on etcd answers while it does not lead. Console
//! reads it answers itself, from its followed view of the ledger
//! ([`crate::ha::standby_console`]). Every other call (agents', enrollment,
//! console writes, and gRPC health, so a probe or load balancer tells it
//! from the leader) is refused UNAVAILABLE with the reason. While another
//! controller leads, the status names it and carries its address in the
//! `lockstep-leader` header, which the agents' and the console's channel
//! follow ([`lockstep_link::failover`]); while none can lead (etcd has no
//! quorum), it says why, so `lockstep` prints that instead of "connection
//! refused". The board's port refuses connections: the board is the
//! leader's.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;

use crate::api::server::Accepting;
use crate::audit::peer::PeerInfo;
use crate::store::etcd::election::LeaderInfo;

/// Clients that do not follow the header (grpcurl, a load balancer) are
/// sent away this often, so they find the leader by reconnecting.
const MAX_CONNECTION_AGE: Duration = Duration::from_secs(2);
/// ... and cut off this much later.
const MAX_CONNECTION_AGE_GRACE: Duration = Duration::from_secs(1);

/// What a standby knows about who leads.
#[derive(Clone, Debug, Default)]
pub struct StandbyView {
    /// This controller's name.
    pub me: String,
    pub leader: Option<LeaderInfo>,
    /// Why no controller can lead (etcd unreachable, no quorum).
    pub trouble: Option<String>,
}

impl StandbyView {
    /// Whether the view names a leader other than this controller that is
    /// still announcing itself (a silent one is probably gone: calls wait
    /// for its successor instead of being sent to a dead address).
    pub fn names_another_leader(&self) -> bool {
        matches!(&self.leader, Some(l) if l.name != self.me && !l.silent)
    }

    /// Whether a call should wait here for a leader to be named: not when
    /// one is, and not when this controller cannot read etcd (it would
    /// never learn one: the client is better sent to another at once).
    pub fn worth_holding(&self) -> bool {
        !self.names_another_leader() && self.trouble.is_none()
    }

    /// The refusal a call to this standby gets. Every one is marked done
    /// nowhere ([`lockstep_link::failover::NOT_LEADER_HEADER`]), so a
    /// console tries the next controller at once.
    pub fn refusal(&self) -> tonic::Status {
        let leader_header = |status: &mut tonic::Status, address: &str| {
            if let Ok(v) = address.parse() {
                status.metadata_mut().insert(lockstep_link::failover::LEADER_HEADER, v);
            }
        };
        let status = match (&self.leader, &self.trouble) {
            (Some(l), _) if l.name != self.me => {
                let mut status = tonic::Status::unavailable(format!(
                    "controller {} is a standby: {} leads at {} (epoch {}); send this call there",
                    self.me, l.name, l.address, l.epoch
                ));
                leader_header(&mut status, &l.address);
                status
            }
            (Some(me), _) => {
                // Won, and loading the fleet before it serves: the client
                // comes back here, to the leader's server.
                let mut status = tonic::Status::unavailable(format!(
                    "controller {} has just won the lead (epoch {}) and is loading the fleet; call again",
                    self.me, me.epoch
                ));
                leader_header(&mut status, &me.address);
                status
            }
            (None, Some(why)) => tonic::Status::unavailable(format!(
                "no controller can lead: {why}. Writes are refused and gates close when their leases end"
            )),
            (None, None) => tonic::Status::unavailable(format!(
                "controller {} is a standby and no controller leads at this moment (an election takes a few seconds); try again",
                self.me
            )),
        };
        crate::api::standing::not_here(status, "standby")
    }
}

/// A call a standby cannot send to a leader yet (none leads, or this one
/// has won and is loading) is held this long for one to appear, so the
/// client is redirected the moment a leader is known instead of retrying
/// on a timer.
const HOLD_FOR_A_LEADER: Duration = Duration::from_millis(1500);

/// Serves `reads` (the standby's console, [`crate::ha::standby_console`]),
/// and refusals for the rest, on `listener` until `stop`.
pub(crate) async fn serve(
    listener: Accepting,
    tls: Arc<rustls::ServerConfig>,
    view: watch::Receiver<StandbyView>,
    reads: tonic::service::Routes,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let stopped = async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    };
    // A standby writes nothing, so a handshake it refuses is not audited:
    // the leader's port audits the same client's next attempt.
    let incoming = crate::api::server::accept_tls(listener, tls, stopped, |ip, why| {
        tracing::debug!(peer = %ip, why, "standby refused a connection");
    });
    let stopping = stop_tx.subscribe();
    let answer = move || {
        let (mut view, mut stopping) = (view.clone(), stopping.clone());
        async move {
            let held = async {
                loop {
                    if !view.borrow_and_update().worth_holding() {
                        return;
                    }
                    if view.changed().await.is_err() {
                        return;
                    }
                }
            };
            tokio::select! {
                () = held => {}
                _ = stopping.wait_for(|s| *s) => {}
                () = tokio::time::sleep(HOLD_FOR_A_LEADER) => {}
            }
            let status = view.borrow().refusal();
            status.into_http::<axum::body::Body>()
        }
    };
    let router = reads
        .into_axum_router()
        .fallback(answer)
        .layer(axum::middleware::from_fn(authorize));
    let served = tonic::transport::Server::builder()
        .timeout(Duration::from_secs(30))
        .concurrency_limit_per_connection(64)
        .max_connection_age(MAX_CONNECTION_AGE)
        // Without a grace, tonic polls a finished age timer again when a
        // connection outlives its GOAWAY, and panics.
        .max_connection_age_grace(MAX_CONNECTION_AGE_GRACE)
        .add_routes(tonic::service::Routes::from(router))
        .serve_with_incoming_shutdown(ReceiverStream::new(incoming), async move {
            stop.await;
            let _ = stop_tx.send(true);
        })
        .await;
    if let Err(e) = served {
        tracing::warn!(error = %e, "the standby's server stopped");
    }
}

/// The leader's authorization table ([`crate::api::authz`]), applied before a
/// standby answers: a call the leader would refuse for who asks is refused
/// here too. A standby writes nothing, so the refusal is logged, not
/// audited.
async fn authorize(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    let path = req.uri().path().to_string();
    let peer = req.extensions().get::<PeerInfo>().cloned();
    let identity = peer.as_ref().and_then(|p| p.identity.as_ref().ok());
    if let crate::api::authz::Decision::Deny(why) = crate::api::authz::decide(&path, identity) {
        let from = peer
            .as_ref()
            .and_then(|p| p.addr)
            .map(|a| a.to_string())
            .unwrap_or_default();
        tracing::warn!(path = %path, peer = %from, why = %why, "standby refused a call");
        return lockstep_proto::reason::status(
            tonic::Code::PermissionDenied,
            why,
            lockstep_proto::reason::ROLE_REFUSED,
        )
        .into_http();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leader(name: &str) -> LeaderInfo {
        LeaderInfo {
            name: name.into(),
            address: "10.0.0.2:7443".into(),
            epoch: 26,
            lease: 7,
            silent: false,
        }
    }

    #[test]
    fn a_standby_names_the_leader_in_the_message_and_the_header() {
        let view = StandbyView {
            me: "ctl-1".into(),
            leader: Some(leader("ctl-2")),
            trouble: None,
        };
        let s = view.refusal();
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert!(
            s.message().contains("ctl-2 leads at 10.0.0.2:7443 (epoch 26)"),
            "{}",
            s.message()
        );
        assert_eq!(
            s.metadata().get(lockstep_link::failover::LEADER_HEADER).unwrap(),
            "10.0.0.2:7443"
        );
    }

    #[test]
    fn without_a_leader_it_says_why_and_redirects_nowhere() {
        let view = StandbyView {
            me: "ctl-1".into(),
            leader: None,
            trouble: Some("etcd did not answer within 1s".into()),
        };
        let s = view.refusal();
        assert!(
            s.message().contains("no controller can lead: etcd did not answer"),
            "{}",
            s.message()
        );
        assert!(s.metadata().get(lockstep_link::failover::LEADER_HEADER).is_none());
        assert!(
            lockstep_link::failover::refused_here(s.metadata().as_ref()),
            "done nowhere: try another"
        );
        // Won and loading: it names itself, so clients come back to it.
        let view = StandbyView {
            me: "ctl-2".into(),
            leader: Some(leader("ctl-2")),
            trouble: None,
        };
        let s = view.refusal();
        assert!(
            s.message().contains("has just won the lead (epoch 26)"),
            "{}",
            s.message()
        );
        assert_eq!(
            s.metadata().get(lockstep_link::failover::LEADER_HEADER).unwrap(),
            "10.0.0.2:7443"
        );
    }
}
