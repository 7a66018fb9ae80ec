//! The gRPC channel to a set of controllers, one of which leads.
//!
//! Each (re)connect tries the addresses side by side: the preferred one
//! first (the one that answered last, or the leader a standby named), the
//! next one [`STAGGER`] later if it has not answered, and so on; the first
//! TLS handshake to finish wins. A dead address (a frozen box accepts TCP
//! and never finishes TLS; a cut cable drops the SYN) therefore costs a
//! stagger, not a timeout. A standby answers every call it does not serve
//! UNAVAILABLE with the leader's address in the [`LEADER_HEADER`] header,
//! and every refusal that means "not done here, another controller may do
//! it" (a standby, a controller that stood down) carries
//! [`NOT_LEADER_HEADER`]: the channel then drops its connection and the
//! next call connects to the leader first (when it is one of the
//! configured addresses), or to the next address. A one-shot client (the
//! console, [`FailoverChannel::retrying`]) also sends such a refused call
//! again at once, so one command never waits out a dead or deposed
//! controller.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::body::Body;
use tonic::codegen::{StdError, http};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::tls::{Target, TlsError, default_server_name};

/// Response header a standby sets to the leader's advertised address.
pub const LEADER_HEADER: &str = "lockstep-leader";
/// Response header on a refusal that did nothing: the controller does not
/// lead (a standby, or a leader that stood down), so the call may be sent
/// to another one. Its value says why.
pub const NOT_LEADER_HEADER: &str = "lockstep-not-leader";
/// Response header on a console read a standby answered from its own view
/// of the ledger: which standby, and how far behind the ledger it was.
pub const SERVED_BY_HEADER: &str = "lockstep-served-by";

/// How long a connect waits for the preferred address before trying the
/// next one beside it.
pub const STAGGER: Duration = Duration::from_millis(150);
/// A TLS handshake not finished by then is given up, whatever the TCP
/// connect timeout: a frozen process's kernel accepts the connection and
/// nothing ever answers on it.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// A connection whose ping is not answered within this is dead (a box that
/// died or was cut off sends no RST).
const PING_TIMEOUT: Duration = Duration::from_secs(1);

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
    /// Send a call refused "not here" again (see [`FailoverChannel::retrying`]).
    retry: bool,
}

/// Whether a response is a refusal that did nothing here (see
/// [`NOT_LEADER_HEADER`]), so the call may go to another controller.
pub fn refused_here(headers: &http::HeaderMap) -> bool {
    headers.contains_key(NOT_LEADER_HEADER) || headers.contains_key(LEADER_HEADER)
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
            retry: false,
        }
    }

    /// This channel, sending a call that a controller refused without doing
    /// it (a standby, or a leader that stood down: [`refused_here`]) again
    /// at once to the next controller, up to once per address. For clients
    /// whose calls send one request message (the console): the request is
    /// held in memory until answered. Never for an agent's streams.
    pub fn retrying(mut self) -> Self {
        self.retry = true;
        self
    }

    /// Moves this channel onto the leader before a call that should not be
    /// spent on a standby (a console command): asks gRPC health, which a
    /// standby answers with the redirect, until an answer is not a refusal
    /// (the leader, or no leader at all: the call that follows says which).
    pub async fn find_leader(&self) {
        let mut health = tonic_health::pb::health_client::HealthClient::new(Self {
            retry: false,
            ..self.clone()
        });
        for _ in 0..self.addresses.len().max(1) {
            let asked = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() });
            match tokio::time::timeout(Duration::from_secs(3), asked).await {
                Ok(Err(s)) if refused_here(s.metadata().as_ref()) => continue,
                _ => return,
            }
        }
    }

    /// A controller refused a call without doing it: the next call goes
    /// over a new connection, tried first at `leader` when it is one of
    /// ours (its own address too: a controller that has just won the lead
    /// says so), else at the address after this one.
    fn redirected(&self, leader: Option<&str>) {
        let on = self.steering.last_good.load(Ordering::Relaxed);
        let redirect = match leader.and_then(|l| self.addresses.iter().position(|a| a == l)) {
            Some(i) => Redirect::To(i),
            None => Redirect::AwayFrom(on),
        };
        *self.steering.redirect.lock().unwrap_or_else(|p| p.into_inner()) = Some(redirect);
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = (self.reconnect)();
    }

    /// One call on the current connection, noting a refusal's redirect.
    async fn send(&self, request: http::Request<Body>) -> Result<http::Response<Body>, StdError> {
        use tower::{Service, ServiceExt};
        let mut channel = self.current.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let response = channel.ready().await?.call(request).await?;
        let headers = response.headers();
        if let Some(leader) = headers.get(LEADER_HEADER).and_then(|v| v.to_str().ok()) {
            self.redirected(Some(leader));
        } else if headers.contains_key(NOT_LEADER_HEADER) {
            self.redirected(None);
        }
        Ok(response)
    }
}

impl tower::Service<http::Request<Body>> for FailoverChannel {
    type Response = http::Response<Body>;
    type Error = StdError;
    type Future = BoxFuture<'static, Result<http::Response<Body>, StdError>>;

    // Readiness is awaited on the channel the call is sent on (it may be
    // replaced in between).
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            if !this.retry || this.addresses.len() < 2 {
                return this.send(request).await;
            }
            let (parts, body) = request.into_parts();
            let body = http_body_util::BodyExt::collect(body).await?.to_bytes();
            let tries = this.addresses.len() + 1;
            let mut tried = 0;
            loop {
                tried += 1;
                let mut again = http::Request::new(Body::new(http_body_util::Full::new(body.clone())));
                *again.method_mut() = parts.method.clone();
                *again.uri_mut() = parts.uri.clone();
                *again.version_mut() = parts.version;
                *again.headers_mut() = parts.headers.clone();
                let response = this.send(again).await?;
                if tried < tries && refused_here(response.headers()) {
                    continue;
                }
                return Ok(response);
            }
        })
    }
}

/// TCP, then TLS, each bounded on its own.
async fn connect_one(
    address: &str,
    name: ServerName<'static>,
    config: Arc<ClientConfig>,
    connect_timeout: Duration,
) -> std::io::Result<TlsStream<TcpStream>> {
    let timed_out = |what: String| std::io::Error::new(std::io::ErrorKind::TimedOut, what);
    let tcp = tokio::time::timeout(connect_timeout, TcpStream::connect(address))
        .await
        .map_err(|_| timed_out(format!("no TCP answer within {connect_timeout:?}")))??;
    tcp.set_nodelay(true)?;
    let handshake = connect_timeout.min(HANDSHAKE_TIMEOUT);
    tokio::time::timeout(handshake, tokio_rustls::TlsConnector::from(config).connect(name, tcp))
        .await
        .map_err(|_| {
            timed_out(format!(
                "connected, but no TLS answer within {handshake:?} (a frozen process?)"
            ))
        })?
}

/// The first of `order` to finish a TLS handshake, trying the next one
/// every [`STAGGER`] (or at once when one fails) while none has.
async fn connect_first(
    named: &[(String, ServerName<'static>)],
    order: &[usize],
    config: &Arc<ClientConfig>,
    connect_timeout: Duration,
) -> Result<(usize, TlsStream<TcpStream>), Vec<String>> {
    let attempt = |i: usize| {
        let (address, name) = named[i].clone();
        let config = config.clone();
        async move { (i, connect_one(&address, name, config, connect_timeout).await) }
    };
    let mut pending = FuturesUnordered::new();
    let mut next = 0;
    let mut failures = Vec::new();
    loop {
        if pending.is_empty() {
            let Some(&i) = order.get(next) else {
                return Err(failures);
            };
            pending.push(attempt(i));
            next += 1;
        }
        tokio::select! {
            Some((i, outcome)) = pending.next() => match outcome {
                Ok(tls) => return Ok((i, tls)),
                Err(e) => {
                    failures.push(format!("{}: {e}", named[i].0));
                    if let Some(&j) = order.get(next) {
                        pending.push(attempt(j));
                        next += 1;
                    }
                }
            },
            () = tokio::time::sleep(STAGGER), if next < order.len() => {
                pending.push(attempt(order[next]));
                next += 1;
            }
        }
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
    // most 2 s, inside the 5 s failover budget (docs/ha.md).
    failover_channel_pinging(targets, config, connect_timeout, Duration::from_secs(1))
}

/// [`failover_channel`] with HTTP/2 pings every `ping` (a dead peer is
/// given up 1 s after an unanswered one). etcd answers pings more often
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
        .keep_alive_timeout(PING_TIMEOUT);
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
            let order: Vec<usize> = (0..n).map(|k| (start + k) % n).collect();
            match connect_first(&named, &order, &config, connect_timeout).await {
                Ok((i, tls)) => {
                    steering.last_good.store(i, Ordering::Relaxed);
                    Ok::<_, std::io::Error>(TokioIo::new(tls))
                }
                Err(failures) => Err(std::io::Error::other(format!(
                    "no controller answered ({})",
                    failures.join("; ")
                ))),
            }
        }
    });
    let reconnect: Arc<dyn Fn() -> Channel + Send + Sync> =
        Arc::new(move || endpoint.clone().connect_with_connector_lazy(connector.clone()));
    Ok(FailoverChannel {
        current: Arc::new(Mutex::new(reconnect())),
        reconnect,
        addresses,
        steering,
        retry: false,
    })
}
