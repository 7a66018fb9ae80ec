//! What a controller on etcd answers while no controller leads (etcd has
//! no quorum, or the lease is between holders): every gRPC call is refused
//! UNAVAILABLE with the reason, so `lockstep` prints why instead of
//! "connection refused". While another controller leads, a standby binds
//! nothing, so agents and consoles move on through their address lists to
//! the one that answers.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::server::TlsConn;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_HANDSHAKES: usize = 256;

/// Runs for the controller's life: serves refusals on `listen` while
/// `reason` holds one, and holds no port otherwise. `bound` says whether
/// it holds the port now (a new leader waits for it to be let go).
pub(crate) async fn run(
    listen: std::net::SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    mut reason: watch::Receiver<Option<String>>,
    bound: watch::Sender<bool>,
) {
    loop {
        if reason.wait_for(Option::is_some).await.is_err() {
            return;
        }
        let listener = match TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, %listen, "cannot bind to answer that no controller leads");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        bound.send_replace(true);
        let mut until_led = reason.clone();
        let stop = async move {
            let _ = until_led.wait_for(Option::is_none).await;
        };
        serve(listener, tls.clone(), reason.clone(), stop).await;
        bound.send_replace(false);
    }
}

async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    reason: watch::Receiver<Option<String>>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<TlsConn>>(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let limit = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let accepting = tokio::spawn(async move {
        loop {
            let Ok(permit) = limit.clone().acquire_owned().await else {
                return;
            };
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stop_rx.wait_for(|s| *s) => return,
            };
            let Ok((tcp, addr)) = accepted else { continue };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let _permit = permit;
                if let Ok(Ok(inner)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    let _ = tx.send(Ok(TlsConn::new(inner, addr))).await;
                }
            });
        }
    });
    let answer = move || {
        let said = reason.borrow().clone().unwrap_or_else(|| "no controller leads".into());
        async move { tonic::Status::unavailable(said).into_http::<axum::body::Body>() }
    };
    let routes = tonic::service::Routes::from(axum::Router::new().fallback(answer));
    let served = tonic::transport::Server::builder()
        .add_routes(routes)
        .serve_with_incoming_shutdown(ReceiverStream::new(rx), async move {
            stop.await;
            let _ = stop_tx.send(true);
        })
        .await;
    accepting.abort();
    if let Err(e) = served {
        tracing::warn!(error = %e, "answering that no controller leads stopped");
    }
}
