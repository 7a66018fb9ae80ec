//! What a controller on etcd answers while it does not lead. Console
//! reads it answers itself, from its followed view of the ledger
//! ([`crate::standby_console`]). Every other call (agents', enrollment,
//! console writes, and gRPC health, so a probe or load balancer tells it
//! from the leader) is refused UNAVAILABLE with the reason. While another
//! controller leads, the status names it and carries its address in the
//! `lockstep-leader` header, which the agents' and the console's channel
//! follow ([`lockstep_proto::failover`]); while none can lead (etcd has no
//! quorum), it says why, so `lockstep` prints that instead of "connection
//! refused". The board's port refuses connections: the board is the
//! leader's.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;

use crate::etcd::election::LeaderInfo;
use crate::front::Accepting;
use crate::peer::PeerInfo;

/// Clients that do not follow the header (grpcurl, a load balancer) are
/// sent away this often, so they find the leader by reconnecting.
const MAX_CONNECTION_AGE: Duration = Duration::from_secs(2);

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
    /// The refusal a call to this standby gets.
    pub fn refusal(&self) -> tonic::Status {
        match (&self.leader, &self.trouble) {
            (Some(l), _) if l.name != self.me => {
                let mut status = tonic::Status::unavailable(format!(
                    "controller {} is a standby: {} leads at {} (epoch {}); send this call there",
                    self.me, l.name, l.address, l.epoch
                ));
                if let Ok(v) = l.address.parse() {
                    status.metadata_mut().insert(lockstep_proto::failover::LEADER_HEADER, v);
                }
                status
            }
            (_, Some(why)) => tonic::Status::unavailable(format!(
                "no controller can lead: {why}. Writes are refused and gates close when their leases end"
            )),
            _ => tonic::Status::unavailable(format!(
                "controller {} is a standby and no controller leads at this moment (an election takes a few seconds); try again",
                self.me
            )),
        }
    }
}

/// Serves `reads` (the standby's console, [`crate::standby_console`]),
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
    let incoming = crate::server::accept_tls(listener, tls, stopped, |ip, why| {
        tracing::debug!(peer = %ip, why, "standby refused a connection");
    });
    let answer = move || {
        let status = view.borrow().refusal();
        async move { status.into_http::<axum::body::Body>() }
    };
    let router = reads
        .into_axum_router()
        .fallback(answer)
        .layer(axum::middleware::from_fn(authorize));
    let served = tonic::transport::Server::builder()
        .timeout(Duration::from_secs(30))
        .concurrency_limit_per_connection(64)
        .max_connection_age(MAX_CONNECTION_AGE)
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

/// The leader's authorization table ([`crate::authz`]), applied before a
/// standby answers: a call the leader would refuse for who asks is refused
/// here too. A standby writes nothing, so the refusal is logged, not
/// audited.
async fn authorize(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    let path = req.uri().path().to_string();
    let peer = req.extensions().get::<PeerInfo>().cloned();
    let identity = peer.as_ref().and_then(|p| p.identity.as_ref().ok());
    if let crate::authz::Decision::Deny(why) = crate::authz::decide(&path, identity) {
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
            s.metadata().get(lockstep_proto::failover::LEADER_HEADER).unwrap(),
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
        assert!(s.metadata().get(lockstep_proto::failover::LEADER_HEADER).is_none());
        // Its own stale leader record (it just stood down) is no redirect.
        let view = StandbyView {
            me: "ctl-2".into(),
            leader: Some(leader("ctl-2")),
            trouble: None,
        };
        assert!(
            view.refusal()
                .metadata()
                .get(lockstep_proto::failover::LEADER_HEADER)
                .is_none()
        );
    }
}
