//! The controller's network front: TLS 1.3 with a client certificate
//! required, the peer's lockstep identity read from that certificate, and the
//! two gRPC services on top. `serve` takes a bound listener so tests can bind
//! port 0 and know the port before serving.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use lockstep_proto::identity::PeerIdentity;
use lockstep_proto::pb::agent_service_server::AgentServiceServer;
use lockstep_proto::pb::console_service_server::ConsoleServiceServer;
use lockstep_proto::pb::enroll_service_server::EnrollServiceServer;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tracing::{debug, warn};

use crate::controller::Controller;
use crate::front::Accepting;
use crate::peer::PeerInfo;
use crate::service::{AgentApi, ConsoleApi, EnrollApi};

/// After shutdown begins, connections get this long to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// A TLS handshake that has not finished by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Handshakes in flight at once; more wait in the kernel's accept queue.
const MAX_CONCURRENT_HANDSHAKES: usize = 1024;
/// Handshakes in flight from one address: a peer that opens connections and
/// never speaks cannot take every handshake slot from the rest of the fleet.
const MAX_HANDSHAKES_PER_PEER: usize = 64;

/// A server-side TLS connection that tells tonic who the peer is.
pub struct TlsConn {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerInfo,
}

impl TlsConn {
    fn new(inner: tokio_rustls::server::TlsStream<TcpStream>, addr: std::net::SocketAddr) -> Self {
        let info = PeerInfo {
            addr: Some(addr),
            identity: peer_identity(&inner),
        };
        Self { inner, info }
    }
}

impl Connected for TlsConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn peer_identity(conn: &tokio_rustls::server::TlsStream<TcpStream>) -> Result<PeerIdentity, String> {
    let certs = conn.get_ref().1.peer_certificates().ok_or("no client certificate")?;
    let leaf = certs.first().ok_or("empty client certificate chain")?;
    PeerIdentity::from_cert_der(leaf).map_err(|e| e.to_string())
}

/// Handshakes in flight per peer address.
#[derive(Clone, Default)]
struct InFlight(Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>);

/// One handshake counted against its peer until dropped.
struct InFlightSlot(InFlight, IpAddr);

impl InFlight {
    fn take(&self, ip: IpAddr) -> Option<InFlightSlot> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= MAX_HANDSHAKES_PER_PEER {
            return None;
        }
        *n += 1;
        Some(InFlightSlot(self.clone(), ip))
    }
}

impl Drop for InFlightSlot {
    fn drop(&mut self) {
        let mut map = (self.0).0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.1);
            }
        }
    }
}

/// Accepts TCP connections, completes TLS handshakes concurrently (bounded in
/// number, per peer and in time), and hands finished connections to tonic
/// until `closing`. Failed handshakes are counted for the audit log.
fn accept_loop(
    listener: Accepting,
    tls: Arc<ServerConfig>,
    controller: Arc<Controller>,
) -> mpsc::Receiver<io::Result<TlsConn>> {
    let refusals = controller.refusals.clone();
    accept_tls(listener, tls, controller.closing(), move |ip, why| {
        refusals.connection(ip, why)
    })
}

/// The acceptor of every controller port (the leader's, and the standby's
/// that serves reads and redirects): `refused` hears each connection
/// dropped before TLS finished, and why.
pub(crate) fn accept_tls(
    mut listener: Accepting,
    tls: Arc<ServerConfig>,
    closing: impl Future<Output = ()> + Send + 'static,
    refused: impl Fn(IpAddr, &str) + Send + Sync + 'static,
) -> mpsc::Receiver<io::Result<TlsConn>> {
    let (tx, rx) = mpsc::channel(1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let limit = Arc::new(Semaphore::new(MAX_CONCURRENT_HANDSHAKES));
    let in_flight = InFlight::default();
    let refused = Arc::new(refused);
    // The loop (and the listener with it) ends when shutdown begins, so the
    // address is free for a controller started after this one.
    tokio::spawn(async move {
        tokio::pin!(closing);
        loop {
            let Ok(permit) = limit.clone().acquire_owned().await else {
                return;
            };
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = &mut closing => return,
            };
            // The port was handed to the next server.
            let Some(accepted) = accepted else { return };
            let (tcp, addr) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(slot) = in_flight.take(addr.ip()) else {
                refused(
                    addr.ip(),
                    &format!(
                        "more than {MAX_HANDSHAKES_PER_PEER} handshakes in flight from this address; connection closed"
                    ),
                );
                continue;
            };
            let (acceptor, tx, refused) = (acceptor.clone(), tx.clone(), refused.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let _slot = slot;
                let _ = tcp.set_nodelay(true);
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(inner)) => {
                        let _ = tx.send(Ok(TlsConn::new(inner, addr))).await;
                    }
                    Ok(Err(e)) => {
                        debug!(peer = %addr, error = %e, "TLS handshake refused");
                        refused(addr.ip(), &e.to_string());
                    }
                    Err(_) => {
                        debug!(peer = %addr, "TLS handshake timed out");
                        refused(
                            addr.ip(),
                            &format!(
                                "not finished within {}s; connection closed",
                                HANDSHAKE_TIMEOUT.as_secs()
                            ),
                        );
                    }
                }
            });
        }
    });
    rx
}

/// Serves both services on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    controller: Arc<Controller>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    serve_all(listener.into(), None, tls, controller, shutdown).await
}

/// [`serve`], and the web board on `board` (its listener, bound by the
/// caller so that a bad `board.listen` stops the start naming it).
pub async fn serve_all(
    listener: Accepting,
    board_listener: Option<Accepting>,
    tls: Arc<ServerConfig>,
    controller: Arc<Controller>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let max = controller.config().max_message_bytes();
    // Background loops end when the server has stopped, each finishing
    // what it is doing (mini-redis's shutdown shape): the gate recorder
    // writes what is still queued, then the last refusal window and
    // heartbeat count are written. None is aborted.
    let (stopped_tx, stopped_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stopped_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut loops = tokio::task::JoinSet::new();
    {
        let (board, stop) = (controller.board.clone(), stopped());
        loops.spawn(async move { board.refresh(stop).await });
        let (board, stop) = (controller.board.clone(), stopped());
        loops.spawn(async move { board.record_transitions(stop).await });
        let (alerts, outcomes, stop) = (controller.alerts.clone(), controller.metrics.alerts.clone(), stopped());
        loops.spawn(alerts.run(outcomes, stop));
        let (c, stop) = (controller.clone(), stopped());
        loops.spawn(async move { crate::refusals::run(&c.refusals, &c.ledger, stop).await });
        let (c, stop) = (controller.clone(), stopped());
        loops.spawn(async move { c.ingest.count_heartbeats(stop).await });
        if let Some(siem) = controller.config.siem.clone() {
            let forwarder = crate::siem::Forwarder::new(
                siem,
                controller.alerts.clone(),
                &controller.config.data_dir,
                controller.ledger.clone(),
                controller.metrics.clone(),
            );
            loops.spawn(forwarder.run(stopped()));
        }
        if let Some(board) = board_listener {
            match lockstep_proto::tls::web_server_config(&controller.config.tls) {
                Ok(web_tls) => {
                    let (c, stop) = (controller.clone(), stopped());
                    loops.spawn(crate::web::serve(board, web_tls, c, stop));
                }
                Err(e) => {
                    tracing::error!(error = %e, "the board cannot use the controller's certificate; not serving it")
                }
            }
        }
    }
    let incoming = ReceiverStream::new(accept_loop(listener, tls, controller.clone()));
    let stopping = controller.clone();
    let stopping_flush = controller.clone();
    let closing_for_health = controller.closing();
    let begin = async move {
        shutdown.await;
        stopping.begin_shutdown();
    };
    let closing = controller.closing();
    // Standard gRPC health and reflection, so off-the-shelf tools work.
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<AgentServiceServer<AgentApi>>().await;
    health.set_serving::<ConsoleServiceServer<ConsoleApi>>().await;
    // v1 and v1alpha: older grpcurl and Python's grpcio-reflection speak only v1alpha.
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(lockstep_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    // The descriptors are compiled in: failing here is a build defect.
    let unavailable = |e: tonic_reflection::server::Error| {
        tracing::error!(error = %e, "gRPC reflection unavailable");
        e
    };
    let reflection = reflection_builder().build_v1().map_err(unavailable).ok();
    let reflection_v1alpha = reflection_builder().build_v1alpha().map_err(unavailable).ok();
    // Health says NOT_SERVING as soon as shutdown begins (a load balancer
    // stops sending), while calls in flight finish.
    let reporter = health.clone();
    let health_task = tokio::spawn(async move {
        closing_for_health.await;
        reporter.set_not_serving::<AgentServiceServer<AgentApi>>().await;
        reporter.set_not_serving::<ConsoleServiceServer<ConsoleApi>>().await;
    });
    let server = tonic::transport::Server::builder()
        // Outermost first: a call and its refusal count finish even when the
        // client goes away.
        .layer(
            tower::ServiceBuilder::new()
                // A controller that stood down answers nothing, health included.
                .layer(crate::standing::StandingLayer(controller.standing.clone()))
                .layer(crate::detach::DetachLayer::new(crate::detach::MAX_DETACHED))
                .layer(crate::refusals::RefusalLayer::new(
                    controller.refusals.clone(),
                    controller.ledger.clone(),
                ))
                .into_inner(),
        )
        .timeout(Duration::from_secs(30))
        .concurrency_limit_per_connection(64)
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(
            AgentServiceServer::new(AgentApi::new(controller.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            ConsoleServiceServer::new(ConsoleApi::new(controller.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            EnrollServiceServer::new(EnrollApi::new(controller))
                .max_decoding_message_size(64 * 1024)
                .max_encoding_message_size(64 * 1024),
        )
        .add_service(health_service)
        .add_optional_service(reflection)
        .add_optional_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, begin);
    tokio::pin!(server);
    // Streams end when shutdown begins; anything still open after the grace
    // period (a peer that never reads) does not keep the process alive.
    let result = tokio::select! {
        r = &mut server => r,
        () = async { closing.await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
            warn!("connections still open {}s after shutdown began; stopping anyway", SHUTDOWN_GRACE.as_secs());
            Ok(())
        }
    };
    // Also when the server ended on its own (an error): nothing waits for a
    // shutdown that never comes.
    stopping_flush.begin_shutdown();
    let _ = stopped_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while let Some(done) = loops.join_next().await {
            if let Err(e) = done {
                tracing::error!(error = %e, "a background loop failed");
            }
        }
    })
    .await;
    if drained.is_err() {
        warn!(
            "background loops still busy {}s after the server stopped; stopping anyway",
            SHUTDOWN_GRACE.as_secs()
        );
    }
    let _ = health_task.await;
    drop(health);
    crate::refusals::flush(&stopping_flush.refusals, &stopping_flush.ledger).await;
    stopping_flush.ingest.record_heartbeat_count().await;
    result
}
