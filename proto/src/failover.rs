//! The gRPC channel to a set of controllers, one of which leads.
//!
//! Each (re)connect tries the addresses in turn, starting with the one that
//! answered last. A standby answers every call UNAVAILABLE with the
//! leader's address in the [`LEADER_HEADER`] header: the channel then drops
//! its connection to the standby and the next call connects to the leader
//! first (when it is one of the configured addresses; otherwise to the next
//! address), so agents and consoles follow a failover without a restart.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::tls::{Target, TlsError, default_server_name};

/// Response header a standby sets to the leader's advertised address.
pub const LEADER_HEADER: &str = "lockstep-leader";
/// Response header on a console read a standby answered from its own view
/// of the ledger: which standby, and how far behind the ledger it was.
pub const SERVED_BY_HEADER: &str = "lockstep-served-by";

/// Which address the next connect tries first.
#[derive(Default)]
struct Steering {
    /// The address that answered last.
    last_good: AtomicUsize,
    /// A standby named the leader (or the address it was on is not it).
    redirect: Mutex<Option<Redirect>>,
}

enum Redirect {
    To(usize),
    AwayFrom(usize),
}

/// A [`Channel`] that follows a standby's redirect to the leader. Cheap to
/// clone; clones share the connection and the redirect.
#[derive(Clone)]
pub struct FailoverChannel {
    current: Arc<Mutex<Channel>>,
    reconnect: Arc<dyn Fn() -> Channel + Send + Sync>,
    addresses: Arc<Vec<String>>,
    steering: Arc<Steering>,
}

impl FailoverChannel {
    /// `channel` as it is: one address, redirects noted but not followed
    /// (a plain-TCP server in a test).
    pub fn fixed(channel: Channel) -> Self {
        let again = channel.clone();
        Self {
            current: Arc::new(Mutex::new(channel)),
            reconnect: Arc::new(move || again.clone()),
            addresses: Arc::default(),
            steering: Arc::default(),
        }
    }

    /// Moves this channel onto the leader before a call that should not be
    /// spent on a standby (a console command): asks gRPC health, which a
    /// standby answers with the redirect, until an answer carries none
    /// (the leader, or no leader at all: the call that follows says which).
    pub async fn find_leader(&self) {
        let mut health = tonic_health::pb::health_client::HealthClient::new(self.clone());
        for _ in 0..self.addresses.len().max(1) {
            let asked = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() });
            match tokio::time::timeout(Duration::from_secs(5), asked).await {
                Ok(Err(s)) if s.metadata().contains_key(LEADER_HEADER) => continue,
                _ => return,
            }
        }
    }

    /// A standby said `leader` leads: the next call goes over a new
    /// connection, tried there first.
    fn redirected(&self, leader: &str) {
        let on = self.steering.last_good.load(Ordering::Relaxed);
        let redirect = match self.addresses.iter().position(|a| a == leader) {
            Some(i) if i != on => Redirect::To(i),
            _ => Redirect::AwayFrom(on),
        };
        *self.steering.redirect.lock().unwrap_or_else(|p| p.into_inner()) = Some(redirect);
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = (self.reconnect)();
    }
}

impl tower::Service<http::Request<Body>> for FailoverChannel {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = BoxFuture<'static, Result<http::Response<Body>, tonic::transport::Error>>;

    // Readiness is awaited on the channel the call is sent on (it may be
    // replaced in between).
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let mut channel = self.current.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let this = self.clone();
        Box::pin(async move {
            use tower::ServiceExt;
            let response = channel.ready().await?.call(request).await?;
            if let Some(leader) = response.headers().get(LEADER_HEADER).and_then(|v| v.to_str().ok()) {
                this.redirected(leader);
            }
            Ok(response)
        })
    }
}

/// A gRPC channel to `addr` over TLS with `config`, checking the controller's
/// certificate against `server_name`. Lazy: it connects on first use and
/// reconnects by itself after a failure, so a controller restart needs no
/// agent restart.
pub fn channel(
    addr: &str,
    server_name: &str,
    config: Arc<ClientConfig>,
    connect_timeout: Duration,
) -> Result<FailoverChannel, TlsError> {
    failover_channel(
        vec![Target {
            address: addr.to_string(),
            server_name: server_name.to_string(),
        }],
        config,
        connect_timeout,
    )
}

/// A channel to the first of `targets` that answers (see the module doc).
/// Lazy and self-healing: when the controller it is on goes away, the next
/// call connects to whichever answers, resolving each name again (a DNS
/// name that moves is followed).
pub fn failover_channel(
    targets: Vec<Target>,
    config: Arc<ClientConfig>,
    connect_timeout: Duration,
) -> Result<FailoverChannel, TlsError> {
    // A controller whose box died sends no RST: pings find it out in at
    // most 3 s, inside the 5 s failover budget (docs/ha.md).
    failover_channel_pinging(targets, config, connect_timeout, Duration::from_secs(1))
}

/// [`failover_channel`] with HTTP/2 pings every `ping` (a dead peer is
/// given up 2 s after an unanswered one). etcd answers pings more often
/// than every 5 s with GOAWAY (its `--grpc-keepalive-min-time`), so its
/// client pings less often than the agents do.
pub fn failover_channel_pinging(
    targets: Vec<Target>,
    config: Arc<ClientConfig>,
    connect_timeout: Duration,
    ping: Duration,
) -> Result<FailoverChannel, TlsError> {
    let first = targets
        .first()
        .ok_or_else(|| TlsError::Address { addr: String::new() })?;
    let mut named = Vec::with_capacity(targets.len());
    for t in &targets {
        default_server_name(&t.address)?;
        let name = ServerName::try_from(t.server_name.clone()).map_err(|_| TlsError::ServerName {
            name: t.server_name.clone(),
        })?;
        named.push((t.address.clone(), name));
    }
    let endpoint = Endpoint::from_shared(format!("http://{}", first.address))
        .map_err(|_| TlsError::Address {
            addr: first.address.clone(),
        })?
        .tcp_nodelay(true)
        .http2_keep_alive_interval(ping)
        .keep_alive_timeout(Duration::from_secs(2));
    let steering = Arc::new(Steering::default());
    let addresses = Arc::new(named.iter().map(|(a, _)| a.clone()).collect::<Vec<_>>());
    let named = Arc::new(named);
    let connector_steering = steering.clone();
    let connector = tower::service_fn(move |_uri: Uri| {
        let (config, named, steering) = (config.clone(), named.clone(), connector_steering.clone());
        async move {
            let n = named.len();
            let last = steering.last_good.load(Ordering::Relaxed);
            let start = match steering.redirect.lock().unwrap_or_else(|p| p.into_inner()).take() {
                Some(Redirect::To(i)) => i,
                Some(Redirect::AwayFrom(i)) => (i + 1) % n,
                None => last,
            };
            let mut failures = Vec::new();
            for i in (0..n).map(|k| (start + k) % n) {
                let (address, name) = &named[i];
                let attempt = async {
                    let tcp = TcpStream::connect(address.as_str()).await?;
                    tcp.set_nodelay(true)?;
                    tokio_rustls::TlsConnector::from(config.clone())
                        .connect(name.clone(), tcp)
                        .await
                };
                match tokio::time::timeout(connect_timeout, attempt).await {
                    Ok(Ok(tls)) => {
                        steering.last_good.store(i, Ordering::Relaxed);
                        return Ok::<_, std::io::Error>(TokioIo::new(tls));
                    }
                    Ok(Err(e)) => failures.push(format!("{address}: {e}")),
                    Err(_) => failures.push(format!("{address}: no answer within {connect_timeout:?}")),
                }
            }
            Err(std::io::Error::other(format!(
                "no controller answered ({})",
                failures.join("; ")
            )))
        }
    });
    let reconnect: Arc<dyn Fn() -> Channel + Send + Sync> =
        Arc::new(move || endpoint.clone().connect_with_connector_lazy(connector.clone()));
    Ok(FailoverChannel {
        current: Arc::new(Mutex::new(reconnect())),
        reconnect,
        addresses,
        steering,
    })
}
