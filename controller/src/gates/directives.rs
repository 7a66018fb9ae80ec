//! One agent's directive stream, as the controller feeds it: the host's
//! gate on every change, and the full scans operators ask of it, until the
//! agent goes away, the host is revoked or the controller stops. An OPEN
//! lease from a new leader rests on an attestation made to it
//! ([`GateBoard::holds_back`]): until the host attests (its agent reports
//! as soon as it reconnects) it hears nothing and keeps the lease it holds,
//! which runs out by itself. CLOSED (a halt) goes out at once.

use std::future::Future;

use lockstep_proto::pb::{self, Gate};
use tokio::sync::{mpsc, watch};

use crate::gates::board::GateBoard;
use crate::ledger::Ledger;

/// Feeds `host`'s stream `tx` from `gates` and `scans` until it ends.
pub async fn follow(
    host: &str,
    board: &GateBoard,
    ledger: &Ledger,
    mut gates: watch::Receiver<Gate>,
    mut scans: watch::Receiver<Option<pb::ScanRequest>>,
    tx: mpsc::Sender<Result<pb::Directive, tonic::Status>>,
    closing: impl Future<Output = ()>,
) {
    tokio::pin!(closing);
    loop {
        let mut gate = gates.borrow_and_update().clone();
        if !board.holds_back(&gate) {
            // The agent counts the lease from when it hears it:
            // lease_expires - decided_at must be what is left *now*.
            gate.decided_at_unix_ms = ledger.now_unix_ms();
            gate.epoch = ledger.store().epoch();
            let directive = pb::Directive {
                kind: Some(pb::directive::Kind::Gate(gate)),
            };
            if tx.send(Ok(directive)).await.is_err() {
                return; // the agent went away
            }
        }
        // A revoked host has been told it is CLOSED; nothing more for it.
        if ledger.view().refuse_if_revoked(host).is_err() {
            return;
        }
        // Scan requests go out as they come; then the next gate.
        loop {
            tokio::select! {
                changed = gates.changed() => if changed.is_err() { return } else { break },
                changed = scans.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let Some(request) = scans.borrow_and_update().clone() else { continue };
                    let directive = pb::Directive {
                        kind: Some(pb::directive::Kind::Scan(request)),
                    };
                    if tx.send(Ok(directive)).await.is_err() {
                        return;
                    }
                }
                () = &mut closing => return, // the controller is stopping
            }
        }
    }
}
