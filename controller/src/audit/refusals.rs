//! Refusals that no handler writes down itself, counted: TLS handshakes
//! refused or timed out, requests turned away before any handler runs, and
//! calls refused for who is calling. Each is counted per (what, who, why)
//! and the counts go to the audit log once per window, so a flood of bad
//! connections costs a bounded number of audit records instead of one each.
//! The API front counts ([`crate::api::refusals`]); this is the book.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lockstep_evidence::action::AuditAction;
use lockstep_evidence::chain::AuditEvent;
use tracing::warn;

use crate::audit::peer::PeerInfo;
use crate::ledger::Ledger;

/// How often counted refusals are written to the audit log.
pub const WINDOW: Duration = Duration::from_secs(2);
/// Distinct (what, who, why) kept per window; more are counted together.
const MAX_KINDS: usize = 256;
/// A refusal's reason is cut to this many characters in the audit record.
const MAX_DETAIL: usize = 300;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Kind {
    /// "connection.refused" or "request.refused".
    action: AuditAction,
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
            action: AuditAction::ConnectionRefused,
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
            action: AuditAction::RequestRefused,
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
                action: k.action,
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
            events.push(AuditEvent::new(
                "many peers",
                AuditAction::RequestRefused,
                format!(
                    "{overflow} more refusals of over {MAX_KINDS} kinds in {}s (a flood?)",
                    WINDOW.as_secs()
                ),
            ));
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

/// Statuses that say the caller or its input was refused. Others (not
/// found, unavailable, cancelled) are ordinary and not counted.
pub fn is_refusal(code: tonic::Code) -> bool {
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
    fn details_are_bounded() {
        let r = Refusals::default();
        r.connection("10.0.0.1".parse().unwrap(), &"x".repeat(10_000));
        assert!(r.drain()[0].detail.chars().count() <= MAX_DETAIL + 1);
    }
}
