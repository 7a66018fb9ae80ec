//! Follows the controller's directive stream and feeds each gate to the
//! gate keeper; when the lease deadline passes first, the keeper closes the
//! gate. Reconnects with backoff; while disconnected the lease keeps running
//! out, so an outage closes the gate (fail closed).

use std::future::Future;
use std::time::Duration;

use lockstep_proto::pb::agent_service_client::AgentServiceClient;
use lockstep_proto::pb::{DirectivesRequest, directive};
use tonic::transport::Channel;
use tracing::{debug, warn};

use crate::gatekeeper::GateKeeper;
use lockstep_proto::backoff::Backoff;

/// Waits for the keeper's lease deadline (forever when there is none).
async fn lease_runs_out(keeper: &GateKeeper) {
    match keeper.deadline() {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

pub async fn follow(
    mut client: AgentServiceClient<Channel>,
    mut keeper: GateKeeper,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(15));
    let mut warned = false;
    loop {
        let stream = tokio::select! {
            s = client.directives(DirectivesRequest {}) => s,
            () = lease_runs_out(&keeper) => { keeper.expire(); continue; }
            () = &mut shutdown => return,
        };
        let mut stream = match stream {
            Ok(s) => s.into_inner(),
            Err(status) => {
                if !warned {
                    warn!(error = %status.message(), "directive stream unavailable; retrying");
                    warned = true;
                }
                let pause = backoff.next_delay();
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = lease_runs_out(&keeper) => keeper.expire(),
                    () = &mut shutdown => return,
                }
                continue;
            }
        };
        warned = false;
        backoff.reset();
        loop {
            tokio::select! {
                msg = stream.message() => match msg {
                    Ok(Some(d)) => {
                        if let Some(directive::Kind::Gate(gate)) = d.kind {
                            keeper.apply(&gate);
                        }
                    }
                    Ok(None) | Err(_) => {
                        debug!("directive stream ended; reconnecting");
                        break;
                    }
                },
                () = lease_runs_out(&keeper) => keeper.expire(),
                () = &mut shutdown => return,
            }
        }
    }
}
