//! The controller's network front: TLS 1.3 with a client certificate
//! required, the peer's lockstep identity read from that certificate, and the
//! two gRPC services on top. `serve` takes a bound listener so tests can bind
//! port 0 and know the port before serving.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use lockstep_proto::identity::PeerIdentity;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tonic::transport::server::Connected;
use tracing::{debug, warn};

use crate::audit::peer::PeerInfo;
use crate::controller::Controller;

/// A TLS handshake that has not finished by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Handshakes in flight at once; more wait in the kernel's accept queue.
const MAX_CONCURRENT_HANDSHAKES: usize = 1024;
/// Handshakes in flight from one address: a peer that opens connections and
/// never speaks cannot take every handshake slot from the rest of the fleet.
const MAX_HANDSHAKES_PER_PEER: usize = 64;

/// Where a server takes its connections from: its own listener (sled: the
/// port is let go when the server stops), or a [`Front`]'s handoff.
pub enum Accepting {
    Listener(TcpListener),
    Handed {
        from: mpsc::Receiver<(TcpStream, SocketAddr)>,
        addr: SocketAddr,
    },
}

impl From<TcpListener> for Accepting {
    fn from(l: TcpListener) -> Self {
        Self::Listener(l)
    }
}

impl Accepting {
    /// The next connection; `None` once the front has moved on.
    pub async fn accept(&mut self) -> Option<io::Result<(TcpStream, SocketAddr)>> {
        match self {
            Self::Listener(l) => Some(l.accept().await),
            Self::Handed { from, .. } => from.recv().await.map(Ok),
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Self::Listener(l) => l.local_addr(),
            Self::Handed { addr, .. } => Ok(*addr),
        }
    }
}

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

impl TlsConn {
    /// The address the connection came from.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.info.addr
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

/// Something counted per peer address (handshakes in flight, open
/// connections), at most `limit` at once from one address.
#[derive(Clone)]
pub(crate) struct PerPeer {
    counts: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>,
    limit: usize,
}

/// One counted against its peer until dropped.
pub(crate) struct PerPeerSlot(PerPeer, IpAddr);

impl PerPeer {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            counts: Arc::default(),
            limit,
        }
    }

    /// A slot for `ip`, or `None` when it holds `limit` already.
    pub(crate) fn take(&self, ip: IpAddr) -> Option<PerPeerSlot> {
        let mut map = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(PerPeerSlot(self.clone(), ip))
    }
}

impl Drop for PerPeerSlot {
    fn drop(&mut self) {
        let mut map = (self.0).counts.lock().unwrap_or_else(|p| p.into_inner());
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
pub(crate) fn accept_loop(
    listener: Accepting,
    tls: Arc<ServerConfig>,
    controller: Arc<Controller>,
) -> mpsc::Receiver<io::Result<TlsConn>> {
    let refusals = controller.refusals.clone();
    accept_tls(listener, tls, controller.closing(), move |ip, why| {
        refusals.connection(ip, why)
    })
}

/// The acceptor of every controller port (the leader's gRPC port, the
/// board's, and the standby's that serves reads and redirects): `refused` hears each connection
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
    let in_flight = PerPeer::new(MAX_HANDSHAKES_PER_PEER);
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
