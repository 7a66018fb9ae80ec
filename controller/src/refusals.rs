//! Refusals that no handler writes down itself: TLS handshakes refused or
//! timed out, requests tonic turns away before any handler runs (not
//! protobuf, over the size limit), and calls refused for who is calling (no
//! certificate, revoked host). Each is counted per (what, who, why) and the
//! counts go to the audit log once per window, so a flood of bad
//! connections costs a bounded number of audit records instead of one each.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tracing::warn;

use crate::audit::AuditEvent;
use crate::ledger::Ledger;
use crate::peer::PeerInfo;

const CONSOLE: &str = "/lockstep.v1.ConsoleService/";

/// How often counted refusals are written to the audit log.
pub const WINDOW: Duration = Duration::from_secs(2);
/// Distinct (what, who, why) kept per window; more are counted together.
const MAX_KINDS: usize = 256;
/// A refusal's reason is cut to this many characters in the audit record.
const MAX_DETAIL: usize = 300;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Kind {
    /// "connection.refused" or "request.refused".
    action: &'static str,
    /// The peer: its lockstep identity if it has one, else its address.
    actor: String,
    host: String,
    detail: String,
}

/// The refusals counted since the last window closed.
#[derive(Default)]
pub struct Refusals {
    counts: Mutex<HashMap<Kind, u64>>,
    /// Refusals of kinds beyond [`MAX_KINDS`] in this window.
    overflow: AtomicU64,
}

impl Refusals {
    /// A TLS handshake that failed or timed out; `ip` is the peer address.
    pub fn connection(&self, ip: std::net::IpAddr, why: &str) {
        self.count(Kind {
            action: "connection.refused",
            actor: format!("peer {ip}"),
            host: String::new(),
            detail: format!("TLS handshake: {why}"),
        });
    }

    /// An error that ends a stream (its status travels in trailers, which
    /// the layer does not see), counted like a refused call if it is one. A
    /// transport failure (the peer went away, its connection reset) carries
    /// its cause as the status's source and is not a refusal.
    pub fn stream_ended(&self, peer: Option<&PeerInfo>, path: &str, status: &tonic::Status) {
        if is_refusal(status.code()) && std::error::Error::source(status).is_none() {
            self.request(peer, path, status.code(), status.message());
        }
    }

    /// A gRPC call answered with an error that no handler audited.
    pub fn request(&self, peer: Option<&PeerInfo>, path: &str, code: tonic::Code, message: &str) {
        let (actor, host) = match peer {
            Some(PeerInfo { identity: Ok(id), .. }) => {
                let host = match id {
                    lockstep_proto::identity::PeerIdentity::Agent { host } => host.clone(),
                    _ => String::new(),
                };
                (id.to_string(), host)
            }
            Some(PeerInfo { addr: Some(a), .. }) => (format!("peer {} (no lockstep identity)", a.ip()), String::new()),
            _ => ("unknown peer".to_string(), String::new()),
        };
        self.count(Kind {
            action: "request.refused",
            actor,
            host,
            detail: format!("{path}: {code:?}: {message}"),
        });
    }

    fn count(&self, mut kind: Kind) {
        if kind.detail.chars().count() > MAX_DETAIL {
            kind.detail = kind.detail.chars().take(MAX_DETAIL).collect::<String>() + "…";
        }
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if counts.len() >= MAX_KINDS && !counts.contains_key(&kind) {
            self.overflow.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *counts.entry(kind).or_insert(0) += 1;
    }

    /// The audit records for this window, and a fresh window.
    fn drain(&self) -> Vec<AuditEvent> {
        let counts = std::mem::take(&mut *self.counts.lock().unwrap_or_else(|p| p.into_inner()));
        let mut events: Vec<AuditEvent> = counts
            .into_iter()
            .map(|(k, n)| AuditEvent {
                actor: k.actor,
                action: k.action.into(),
                host: k.host,
                role: String::new(),
                detail: if n == 1 {
                    k.detail
                } else {
                    format!("{n} times in {}s: {}", WINDOW.as_secs(), k.detail)
                },
                facts: String::new(),
            })
            .collect();
        let overflow = self.overflow.swap(0, Ordering::Relaxed);
        if overflow > 0 {
            events.push(AuditEvent {
                actor: "many peers".into(),
                action: "request.refused".into(),
                detail: format!(
                    "{overflow} more refusals of over {MAX_KINDS} kinds in {}s (a flood?)",
                    WINDOW.as_secs()
                ),
                ..Default::default()
            });
        }
        events.sort_by(|a, b| (&a.action, &a.actor, &a.detail).cmp(&(&b.action, &b.actor, &b.detail)));
        events
    }
}

/// Writes each window's refusals to the audit log (and the log) until
/// `stop`; the server writes the last window once it has stopped. Run
/// once, by the server.
pub async fn run(refusals: &Refusals, ledger: &Ledger, stop: impl Future<Output = ()>) {
    let mut tick = tokio::time::interval(WINDOW);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = tick.tick() => flush(refusals, ledger).await,
            () = &mut stop => return,
        }
    }
}

/// Writes the refusals counted so far (also called once at shutdown).
pub async fn flush(refusals: &Refusals, ledger: &Ledger) {
    let events = refusals.drain();
    if events.is_empty() {
        return;
    }
    for e in &events {
        warn!(actor = %e.actor, action = %e.action, detail = %e.detail, "refused");
    }
    if let Err(e) = ledger.record(events).await {
        tracing::error!(error = %e, "cannot record refused connections and requests in the audit log");
    }
}

/// Put in each request's extensions; a handler that wrote its own audit
/// record for a refusal sets it, so the refusal is not recorded twice.
#[derive(Clone, Default)]
pub struct Audited(Arc<AtomicBool>);

impl Audited {
    pub fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Statuses that say the caller or its input was refused. Others (not
/// found, unavailable, cancelled) are ordinary and not audited here.
fn is_refusal(code: tonic::Code) -> bool {
    use tonic::Code::{
        DeadlineExceeded, FailedPrecondition, Internal, InvalidArgument, OutOfRange, PermissionDenied,
        ResourceExhausted, Unauthenticated, Unimplemented,
    };
    matches!(
        code,
        Unauthenticated
            | PermissionDenied
            | InvalidArgument
            | ResourceExhausted
            | OutOfRange
            | Internal
            | Unimplemented
            | FailedPrecondition
            | DeadlineExceeded
    )
}

/// A call refused for who is calling: one `console.denied` record naming
/// who, which method and why. The table's refusals and a handler's (the
/// two-person rule) are written here, nowhere else.
async fn refuse_call(ledger: &Ledger, peer: Option<&PeerInfo>, path: &str, why: &str) {
    let actor = match peer {
        Some(PeerInfo { identity: Ok(id), .. }) => id.to_string(),
        Some(PeerInfo { addr: Some(a), .. }) => format!("peer {} (no lockstep identity)", a.ip()),
        _ => "unknown peer".to_string(),
    };
    let method = path.rsplit('/').next().unwrap_or(path);
    tracing::warn!(%actor, method, reason = why, "call refused");
    let event = AuditEvent {
        actor,
        action: "console.denied".into(),
        detail: format!("{method}: {why}"),
        ..Default::default()
    };
    if let Err(e) = ledger.record(vec![event]).await {
        tracing::error!(error = %e, "cannot record a refused call");
    }
}

/// Tower layer around the gRPC services that counts refused calls.
#[derive(Clone)]
pub struct RefusalLayer {
    refusals: Arc<Refusals>,
    ledger: Arc<Ledger>,
}

impl RefusalLayer {
    pub fn new(refusals: Arc<Refusals>, ledger: Arc<Ledger>) -> Self {
        Self { refusals, ledger }
    }
}

impl<S> tower::Layer<S> for RefusalLayer {
    type Service = RefusalAudit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RefusalAudit {
            inner,
            refusals: self.refusals.clone(),
            ledger: self.ledger.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RefusalAudit<S> {
    inner: S,
    refusals: Arc<Refusals>,
    ledger: Arc<Ledger>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for RefusalAudit<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_string();
        // Only lockstep's own services; health and reflection are public.
        if !path.starts_with("/lockstep.") {
            return Box::pin(self.inner.call(req));
        }
        let audited = Audited::default();
        req.extensions_mut().insert(audited.clone());
        let peer = req.extensions().get::<PeerInfo>().cloned();
        let (refusals, ledger) = (self.refusals.clone(), self.ledger.clone());
        // Who may call what is decided here, from the one table, before any
        // handler runs; the refusal is audited once, here.
        let identity = peer.as_ref().and_then(|p| p.identity.as_ref().ok());
        if let crate::authz::Decision::Deny(why) = crate::authz::decide(&path, identity) {
            let status = lockstep_proto::reason::status(
                tonic::Code::PermissionDenied,
                why.clone(),
                lockstep_proto::reason::ROLE_REFUSED,
            );
            return Box::pin(async move {
                refuse_call(&ledger, peer.as_ref(), &path, &why).await;
                Ok(status.into_http())
            });
        }
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            // Errors before or from a unary handler come as a trailers-only
            // response: the status is in the headers.
            let code = response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .map(tonic::Code::from);
            if let Some(code) = code.filter(|c| is_refusal(*c) && !audited.is_set()) {
                let message = response
                    .headers()
                    .get("grpc-message")
                    .and_then(|v| v.to_str().ok())
                    .map(percent_decode)
                    .unwrap_or_default();
                // A console action refused for who asked is one record of
                // its own; other refusals are counted per window.
                if code == tonic::Code::PermissionDenied && path.starts_with(CONSOLE) {
                    refuse_call(&ledger, peer.as_ref(), &path, &message).await;
                } else {
                    refusals.request(peer.as_ref(), &path, code, &message);
                }
            }
            Ok(response)
        })
    }
}

/// grpc-message is percent-encoded on the wire.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_from_one_peer_is_one_record_with_a_count() {
        let r = Refusals::default();
        let ip = "127.0.0.2".parse().unwrap();
        for _ in 0..500 {
            r.connection(ip, "no client certificate");
        }
        let events = r.drain();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].actor, "peer 127.0.0.2");
        assert!(
            events[0]
                .detail
                .starts_with("500 times in 2s: TLS handshake: no client certificate")
        );
        assert!(r.drain().is_empty(), "a window starts empty");
    }

    #[test]
    fn kinds_beyond_the_bound_are_counted_together() {
        let r = Refusals::default();
        for i in 0..(MAX_KINDS + 10) {
            r.connection("10.0.0.1".parse().unwrap(), &format!("reason {i}"));
        }
        let events = r.drain();
        assert_eq!(events.len(), MAX_KINDS + 1);
        assert!(events.iter().any(|e| e.detail.starts_with("10 more refusals")));
    }

    #[test]
    fn grpc_messages_are_decoded_and_details_are_bounded() {
        assert_eq!(percent_decode("too%20large%3A 5"), "too large: 5");
        assert_eq!(percent_decode("50%"), "50%");
        let r = Refusals::default();
        r.connection("10.0.0.1".parse().unwrap(), &"x".repeat(10_000));
        assert!(r.drain()[0].detail.chars().count() <= MAX_DETAIL + 1);
    }
}
