//! The board's live feed (Server-Sent Events). Every audit record sealed
//! is an `audit` event whose id is its seq: a page that reconnects sends
//! `Last-Event-ID` and gets every record after it. A `gates` event says a
//! gate changed (state or reasons) without a record of its own; a `ping`
//! every 2 s lets the page tell a live feed from a stale one; `ended`
//! tells a page whose session was revoked or logged out that nothing more
//! will come.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::board::Board;

const PING: Duration = Duration::from_secs(2);
/// At most this many records a round; a page further behind reloads.
const MAX_BEHIND: u64 = 2_000;
/// Gate changes are told at most this often (a storm is one event a beat).
const GATES_EVERY: Duration = Duration::from_millis(100);

#[derive(Deserialize)]
pub struct Since {
    after: Option<u64>,
}

type Tx = mpsc::Sender<Result<Event, Infallible>>;

pub async fn events(State(board): State<Board>, headers: HeaderMap, Query(since): Query<Since>) -> Response {
    let Some((cookie, _session)) = board.session(&headers).await else {
        return (StatusCode::UNAUTHORIZED, "log in with `lockstep board login`").into_response();
    };
    let head = *board.controller.ledger.sealed().borrow();
    let resume_at = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .or(since.after)
        .unwrap_or(head)
        .min(head);
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(follow(board, cookie, resume_at, tx));
    Sse::new(ReceiverStream::new(rx)).into_response()
}

async fn send(tx: &Tx, event: Event) -> bool {
    tx.send(Ok(event)).await.is_ok()
}

/// Feeds one page until it goes away, its session ends or the controller stops.
async fn follow(board: Board, cookie: String, mut last: u64, tx: Tx) {
    let c = board.controller.clone();
    let mut sealed = c.ledger.sealed();
    let mut gates = c.board.changes();
    let closing = c.closing();
    tokio::pin!(closing);
    let mut ping = tokio::time::interval(PING);
    loop {
        let head = *sealed.borrow_and_update();
        if head > last {
            if head - last > MAX_BEHIND {
                last = head;
                if !send(
                    &tx,
                    Event::default().event("reload").id(last.to_string()).data("behind"),
                )
                .await
                {
                    return;
                }
            } else {
                let records = match c.ledger.store().audit_page(last + 1, crate::store::audit_reads::PAGE) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(error = %e, "the board feed cannot read the audit log");
                        return;
                    }
                };
                for r in records.into_iter().take_while(|r| r.seq <= head) {
                    let data = serde_json::json!({
                        "seq": r.seq, "at_unix_ms": r.at_unix_ms, "action": r.action, "host": r.host,
                        "role": r.role, "actor": r.actor, "detail": r.detail,
                    });
                    last = r.seq;
                    if !send(
                        &tx,
                        Event::default()
                            .event("audit")
                            .id(r.seq.to_string())
                            .data(data.to_string()),
                    )
                    .await
                    {
                        return;
                    }
                }
            }
        }
        tokio::select! {
            changed = sealed.changed() => if changed.is_err() { return },
            changed = gates.changed() => {
                if changed.is_err() {
                    return;
                }
                gates.borrow_and_update();
                if !send(&tx, Event::default().event("gates").id(last.to_string()).data("changed")).await {
                    return;
                }
                tokio::time::sleep(GATES_EVERY).await;
            }
            _ = ping.tick() => {
                if c.board_sessions.session(&cookie).await.is_none() {
                    let _ = send(&tx, Event::default().event("ended").data("session ended")).await;
                    return;
                }
                let now = c.ledger.now_unix_ms().to_string();
                if !send(&tx, Event::default().event("ping").data(now)).await {
                    return;
                }
            }
            () = &mut closing => {
                let _ = send(&tx, Event::default().event("closing").data("the controller is stopping")).await;
                return;
            }
        }
    }
}
