//! The layer that counts refusals no handler writes down itself (requests
//! tonic turns away before any handler runs, calls refused for who is
//! calling) into the book ([`crate::audit::refusals`]), and audits a call
//! the authorization table refuses, once.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use crate::audit::peer::PeerInfo;
use crate::audit::refusals::{Refusals, is_refusal};
use crate::ledger::Ledger;
use lockstep_evidence::chain::AuditEvent;

const CONSOLE: &str = "/lockstep.v1.ConsoleService/";

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
    let event = AuditEvent::new(
        actor,
        lockstep_evidence::action::AuditAction::ConsoleDenied,
        format!("{method}: {why}"),
    );
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
        if let crate::api::authz::Decision::Deny(why) = crate::api::authz::decide(&path, identity) {
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
    fn grpc_messages_are_percent_decoded() {
        assert_eq!(percent_decode("too%20large%3A 5"), "too large: 5");
        assert_eq!(percent_decode("50%"), "50%");
    }
}
