//! Follows the controller's directive stream and feeds each gate to the
//! gate keeper; when the lease deadline passes first, the keeper closes the
//! gate. Reconnects with backoff; while disconnected the lease keeps running
//! out, so an outage closes the gate (fail closed).

use std::future::Future;
use std::time::Duration;

use lockstep_link::failover::FailoverChannel;
use lockstep_proto::pb::agent_service_client::AgentServiceClient;
use lockstep_proto::pb::{DirectivesRequest, directive};
use tracing::{debug, warn};

use crate::gate::gatekeeper::GateKeeper;
use crate::link::pace::{Failure, Pace};
use crate::measurer::FullScanRequests;

/// The agent's two links to the controller (its reports and its directive
/// stream) tell each other when they are back: after an outage whichever
/// reconnects first cuts the other's backoff short, so a gate is refreshed
/// as soon as reports are accepted again, not a backoff step later.
#[derive(Debug, Default)]
pub struct Reconnects {
    pub reports_back: tokio::sync::Notify,
    pub directives_back: tokio::sync::Notify,
}

/// Waits for the keeper's lease deadline (forever when there is none).
async fn lease_runs_out(keeper: &GateKeeper) {
    match keeper.deadline() {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Follows the directive stream until `shutdown`. `reply_gates` are the
/// gates the controller's replies to attestations carried: a closing one
/// is applied at once ([`GateKeeper::apply_closing`]).
pub async fn follow(
    mut client: AgentServiceClient<FailoverChannel>,
    mut keeper: GateKeeper,
    scans: std::sync::Arc<FullScanRequests>,
    reconnects: std::sync::Arc<Reconnects>,
    mut reply_gates: tokio::sync::mpsc::UnboundedReceiver<lockstep_proto::pb::Gate>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut pace = Pace::new(Duration::from_secs(15));
    loop {
        let sent = tokio::time::Instant::now();
        let call = client.directives(DirectivesRequest {});
        tokio::pin!(call);
        // The call runs on while gates from replies and the lease deadline
        // are seen to.
        let stream = loop {
            tokio::select! {
                s = &mut call => break s,
                () = lease_runs_out(&keeper) => keeper.expire(),
                Some(gate) = reply_gates.recv() => { keeper.apply_closing(&gate); }
                () = &mut shutdown => return,
            }
        };
        let mut stream = match stream {
            Ok(s) => s.into_inner(),
            Err(status) => {
                if !pace.was_down() {
                    warn!(error = %status.message(), "directive stream unavailable; retrying");
                }
                // The same pace as the reports (crate::link::pace).
                let pause = pace.failed(Failure::of(&status, sent));
                let sleep = tokio::time::sleep(pause);
                tokio::pin!(sleep);
                loop {
                    tokio::select! {
                        () = &mut sleep => break,
                        () = reconnects.reports_back.notified() => {
                            debug!("reports are accepted again; reconnecting now");
                            break;
                        }
                        Some(gate) = reply_gates.recv() => { keeper.apply_closing(&gate); }
                        () = lease_runs_out(&keeper) => keeper.expire(),
                        () = &mut shutdown => return,
                    }
                }
                continue;
            }
        };
        if pace.was_down() {
            reconnects.directives_back.notify_one();
        }
        pace.succeeded();
        loop {
            tokio::select! {
                msg = stream.message() => match msg {
                    Ok(Some(d)) => match d.kind {
                        // A deposed leader's gate is refused: try the next address.
                        Some(directive::Kind::Gate(gate)) if !keeper.apply(&gate) => break,
                        Some(directive::Kind::Gate(_)) => {}
                        Some(directive::Kind::Scan(r)) => {
                            tracing::info!(id = r.id, by = %r.requested_by, reason = %r.reason, "full scan requested by an operator");
                            scans.request();
                        }
                        None => {}
                    },
                    Ok(None) | Err(_) => {
                        debug!("directive stream ended; reconnecting");
                        break;
                    }
                },
                // The reports found their connection dead and are answered
                // again (a failover): this stream may be on the dead one,
                // which nothing else would notice before a ping fails.
                () = reconnects.reports_back.notified() => {
                    debug!("reports reconnected; opening the directive stream again");
                    break;
                }
                Some(gate) = reply_gates.recv() => { keeper.apply_closing(&gate); }
                () = lease_runs_out(&keeper) => keeper.expire(),
                () = &mut shutdown => return,
            }
        }
    }
}
