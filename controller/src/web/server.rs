//! The board's HTTPS listener: TLS 1.3 with the controller's certificate
//! (no client certificate: browsers log in by link), HTTP/1.1, bounded
//! connections and handshakes (the controller's one acceptor), security headers on every answer, and the
//! session that comes with a request.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;

use super::board::Board;
use crate::controller::Controller;
use crate::logins::COOKIE;

/// At most this many board connections at once (each page holds one for
/// its feed and briefly one more for a fetch).
const MAX_CONNECTIONS: usize = 512;
/// Open board connections from one address: a client that opens hundreds
/// and keeps them idle cannot take every slot from the rest of the floor
/// (a page holds its feed and a few fetches; a floor behind one NAT with
/// dozens of boards still fits).
const MAX_CONNECTIONS_PER_PEER: usize = 128;
/// A request's head (line and headers): the board's are a few KiB; above
/// 65,534 bytes of URI so a long one still gets its own 414.
const MAX_HEAD_BYTES: usize = 128 * 1024;

fn router(board: Board) -> Router {
    Router::new()
        .route("/", get(super::pages::fleet))
        .route("/host/{host}", get(super::pages::host))
        .route("/releases", get(super::pages::releases))
        .route("/halts", get(super::pages::halts))
        .route("/incidents", get(super::pages::incidents))
        .route("/audit", get(super::pages::audit))
        .route("/events", get(super::feed::events))
        .route("/login/{token}", get(login_page).post(login))
        .route("/logout", post(super::actions::logout))
        .route("/halt", post(super::actions::halt))
        .route("/resume", post(super::actions::resume))
        .route("/ack", post(super::actions::ack))
        .route("/approve", post(super::actions::approve))
        .route("/board.js", get(script))
        .route("/board.css", get(style))
        .layer(axum::middleware::from_fn_with_state(board.clone(), still_leading))
        .layer(axum::middleware::map_response(super::headers::secure))
        .with_state(board)
}

/// A controller that stood down serves no board: its view may be behind
/// the new leader's (a halt it never saw). The browser reloads on the
/// board the new leader serves, with the same session.
async fn still_leading(
    axum::extract::State(board): axum::extract::State<Board>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match board.controller.standing.stood_down() {
        Some(why) => super::pages::refused(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "This controller no longer leads",
            &format!(
                "It stood down ({why}); the board is served by the controller that leads now: reload in a few seconds."
            ),
        ),
        None => next.run(request).await,
    }
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("board.js"),
    )
}

async fn style() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("board.css"),
    )
}

/// A login link opened: the page whose button spends it.
async fn login_page(Path(token): Path<String>) -> Response {
    super::pages::login_confirm(&token)
}

/// Spends a one-time login link (its page's POST): a session cookie, then
/// the board. A browser's POST from another site is refused and audited,
/// and spends nothing.
async fn login(State(board): State<Board>, headers: HeaderMap, Path(token): Path<String>) -> Response {
    let foreign = board.foreign(&headers);
    if let Some(why) = foreign {
        board
            .controller
            .board_sessions
            .login_refused(format!("board login: {why}; the link was not spent"))
            .await;
        return super::pages::refused(StatusCode::FORBIDDEN, "Login refused", &why);
    }
    match board.controller.board_sessions.redeem(&token).await {
        Ok((cookie, session)) => {
            let max_age = (session.expires_at_unix_ms - session.created_at_unix_ms) / 1000;
            let set_cookie = format!("{COOKIE}={cookie}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={max_age}");
            let mut response = Redirect::to("/").into_response();
            if let Ok(v) = HeaderValue::from_str(&set_cookie) {
                response.headers_mut().insert(header::SET_COOKIE, v);
            }
            response
        }
        Err(why) => super::pages::refused(StatusCode::FORBIDDEN, "Login refused", &why.to_string()),
    }
}

/// Serves the board on `listener` until `stop`; then the live feeds end
/// and connections still open are closed after a short grace. Connections
/// come from the controller's one acceptor ([`crate::api::server`]): its
/// handshake bounds, and every refused connection counted for the audit log
/// like the gRPC port's.
pub async fn serve(
    listener: crate::api::server::Accepting,
    tls: Arc<ServerConfig>,
    controller: Arc<Controller>,
    stop: impl Future<Output = ()>,
) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving the board");
    }
    let refusals = controller.refusals.clone();
    let app = router(Board {
        controller,
        matching: Arc::default(),
    });
    // Dropped when the board stops: the acceptor lets the port go.
    let (stopped, acceptor_stops) = tokio::sync::oneshot::channel::<()>();
    let mut incoming = {
        let refusals = refusals.clone();
        crate::api::server::accept_tls(
            listener,
            tls,
            async move {
                let _ = acceptor_stops.await;
            },
            move |ip, why| refusals.connection(ip, why),
        )
    };
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let per_peer = crate::api::server::PerPeer::new(MAX_CONNECTIONS_PER_PEER);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            a = incoming.recv() => a,
            () = &mut stop => break,
        };
        let Some(accepted) = accepted else { break };
        let Ok(tls) = accepted else { continue };
        let peer = tls.peer_addr();
        let slot = match peer.map(|p| per_peer.take(p.ip())) {
            Some(None) => {
                if let Some(peer) = peer {
                    refusals.connection(
                        peer.ip(),
                        &format!(
                            "{MAX_CONNECTIONS_PER_PEER} board connections are open from this address already; connection closed"
                        ),
                    );
                }
                continue;
            }
            Some(Some(slot)) => Some(slot),
            None => None,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            if let Some(peer) = peer {
                refusals.connection(
                    peer.ip(),
                    &format!("the board has {MAX_CONNECTIONS} connections open already; connection closed"),
                );
            }
            continue;
        };
        let app = app.clone();
        connections.spawn(async move {
            let (_permit, _slot) = (permit, slot);
            let service = TowerToHyperService::new(app);
            let served = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                // Checked on the whole head too: hyper's buffer limit alone
                // lets a head through when one read finishes it.
                .max_header_size(MAX_HEAD_BYTES)
                .serve_connection(TokioIo::new(super::automatic_answers::Headed::new(tls)), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(peer = ?peer, error = %e, "board connection ended");
            }
        });
        while connections.try_join_next().is_some() {}
    }
    drop(stopped);
    // Live feeds end on the controller's closing signal; give them a moment.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.shutdown().await;
}
