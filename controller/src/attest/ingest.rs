//! Ingest: an agent's attestation key confirmed (`PinKey`), and each
//! attestation verified ([`crate::attest::verify`]), committed through the ledger
//! (which checks seq, key and revocation again in commit order), and
//! answered with the gate it leaves the host with.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use lockstep_proto::envelope;
use lockstep_proto::identity::PeerIdentity;
use lockstep_proto::pb::{Envelope, SubmitReply};
use tracing::warn;

use crate::alerts::Alerts;
use crate::alerts::incidents::Signal;
use crate::attest::change::{Attested, Rejected as RejectedChange};
use crate::attest::verify::{self, Checks, Rejected};
use crate::config::ControllerConfig;
use crate::error::ApiError;
use crate::fleet::auth::AuthError;
use crate::gates::board::GateBoard;
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use lockstep_evidence::chain::AuditEvent;

/// How often the count of unchanged heartbeats goes to the audit log.
pub const HEARTBEAT_COUNT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

pub struct Ingest {
    config: Arc<ControllerConfig>,
    ledger: Arc<Ledger>,
    board: Arc<GateBoard>,
    alerts: Arc<Alerts>,
    metrics: Arc<Metrics>,
    /// Heartbeats accepted with an unchanged version set since the last
    /// count was written: each is stored, but one audit record per
    /// heartbeat would be ~86M records a day on 10,000 hosts.
    unchanged_heartbeats: AtomicU64,
}

impl Ingest {
    pub fn new(
        config: Arc<ControllerConfig>,
        ledger: Arc<Ledger>,
        board: Arc<GateBoard>,
        alerts: Arc<Alerts>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            config,
            ledger,
            board,
            alerts,
            metrics,
            unchanged_heartbeats: AtomicU64::new(0),
        }
    }

    /// The host named by an agent certificate, and its inventory role.
    pub fn agent_of<'a>(&'a self, peer: &'a PeerIdentity) -> Result<(&'a str, &'a str), AuthError> {
        self.ledger.view().agent_of(&self.config, peer)
    }

    /// Writes the count of unchanged heartbeats every
    /// [`HEARTBEAT_COUNT_INTERVAL`] until `stop`; the server writes the
    /// last count once it has stopped. Run once, by the server.
    pub async fn count_heartbeats(&self, stop: impl std::future::Future<Output = ()>) {
        let mut tick = tokio::time::interval(HEARTBEAT_COUNT_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = tick.tick() => self.record_heartbeat_count().await,
                () = &mut stop => return,
            }
        }
    }

    /// Writes one `attestation.heartbeats` record with how many heartbeats
    /// renewed an unchanged version set since the last one (none: nothing).
    /// Also called at shutdown.
    pub async fn record_heartbeat_count(&self) {
        let n = self.unchanged_heartbeats.swap(0, std::sync::atomic::Ordering::Relaxed);
        if n == 0 {
            return;
        }
        let event = AuditEvent {
            actor: "controller".into(),
            action: lockstep_evidence::action::AuditAction::AttestationHeartbeats,
            host: String::new(),
            role: String::new(),
            detail: format!("{n} heartbeats renewed unchanged version sets since the last count"),
            facts: String::new(),
        };
        if let Err(e) = self.ledger.record(vec![event]).await {
            // Put back: they are counted in the next record instead.
            self.unchanged_heartbeats
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            tracing::error!(error = %e, "cannot record the heartbeat count in the audit log");
        }
    }

    /// Confirms the agent holds the attestation key pinned when it enrolled
    /// (see `PinKeyRequest`): a key is only ever pinned by enrollment.
    pub async fn pin_key(&self, peer: &PeerIdentity, public_key: Vec<u8>) -> Result<String, ApiError> {
        let (host, _) = self.agent_of(peer)?;
        if public_key.len() != 32 {
            return Err(AuthError::BadKeyLength.into());
        }
        let pinned = self
            .ledger
            .view()
            .hosts
            .get(host)
            .map(|r| r.pinned_key_hex.clone())
            .unwrap_or_default();
        let key_id = envelope::key_id(&public_key);
        if pinned.is_empty() {
            return Err(AuthError::NotEnrolled { host: host.to_string() }.into());
        }
        if pinned != hex::encode(&public_key) {
            warn!(host, offered = %key_id, "refused an attestation key other than the one pinned at enrollment");
            return Err(AuthError::KeyMismatch {
                host: host.to_string(),
                pinned: hex::decode(&pinned).map(|k| envelope::key_id(&k)).unwrap_or_default(),
                offered: key_id,
            }
            .into());
        }
        Ok(key_id)
    }

    /// Verifies, stores durably, then acknowledges one attestation. The
    /// checks that depend on the host's record (seq, pinned key, revoked)
    /// are made again by the commit, where they cannot race.
    #[tracing::instrument(name = "attestation", level = "debug", skip_all, fields(host = tracing::field::Empty, seq = tracing::field::Empty))]
    pub async fn submit(&self, peer: &PeerIdentity, envelope: Envelope) -> Result<SubmitReply, ApiError> {
        let (host, role) = self.agent_of(peer)?;
        tracing::Span::current().record("host", host);
        let now = self.ledger.now_unix_ms();
        let record = self.ledger.view().hosts.get(host).cloned().unwrap_or_default();
        if record.pinned_key_hex.is_empty() {
            return Err(AuthError::NotPinned { host: host.to_string() }.into());
        }
        // A TPM-bound host signs with its run's session key, which its last
        // verified quote binds; the file key it enrolled with does not count.
        let session_key_hex = match &record.tpm {
            None => String::new(),
            Some(t) => match &t.quote {
                Some(q) => q.session_key_hex.clone(),
                None => return Err(crate::tpm::TpmError::NoQuoteYet { host: host.to_string() }.into()),
            },
        };
        let signing_key_hex = if record.tpm.is_some() {
            &session_key_hex
        } else {
            &record.pinned_key_hex
        };
        let pinned_key = hex::decode(signing_key_hex).unwrap_or_default();
        let checks = Checks {
            peer_host: host,
            inventory_role: role,
            record: &record,
            pinned_key: &pinned_key,
            limits: self.config.limits,
            max_skew_ms: i64::try_from(self.config.max_clock_skew.as_millis()).unwrap_or(i64::MAX),
            now_unix_ms: now,
        };
        let started = std::time::Instant::now();
        let verdict = verify::verify(&envelope, &checks);
        self.metrics.verify_seconds.observe(started.elapsed().as_secs_f64());
        let verified = match verdict {
            Ok(v) => v,
            Err(verify::Rejection::Signature(why)) if record.tpm.is_some() => {
                let why = format!(
                    "{why} (the host is TPM-bound: its attestations must be signed with the session key its last verified quote binds, {}; a copy of its state directory has no such key)",
                    lockstep_proto::envelope::key_id(&pinned_key)
                );
                return Err(self
                    .reject(peer, host, role, now, verify::Rejection::Signature(why))
                    .await);
            }
            Err(rejection) => return Err(self.reject(peer, host, role, now, rejection).await),
        };
        if verified.entries.is_none() && !self.ledger.view().has_manifest(&verified.digest_hex) {
            return Ok(SubmitReply {
                accepted: false,
                manifest_needed: true,
                gate: None,
            });
        }
        let a = verified.attestation;
        tracing::Span::current().record("seq", a.seq);
        let same_state = record.last_seq > 0 && record.digest_hex == verified.digest_hex && record.boot_id == a.boot_id;
        let unchanged = !a.full && same_state;
        let change = Attested {
            actor: peer.to_string(),
            host: host.to_string(),
            role: role.to_string(),
            pinned_key_hex: record.pinned_key_hex.clone(),
            session_key_hex,
            seq: a.seq,
            digest_hex: verified.digest_hex,
            measured_at_unix_ms: a.measured_at_unix_ms,
            accepted_at_unix_ms: now,
            boot_id: a.boot_id,
            agent_version: a.agent_version,
            full: a.full,
            manifest: verified.entries.map(Arc::new),
        };
        let committed = match self.ledger.commit(change).await {
            Ok(c) => c,
            // Refused at the commit: another attestation or a revocation got there first.
            Err(e) if e.domain::<Rejected>().is_some() => {
                let Rejected(rejection) = e.into_domain::<Rejected>()?;
                return Err(self.reject(peer, host, role, now, rejection).await);
            }
            // On etcd a failed write makes this leader stand down, and a
            // report of what is already committed changes no gate: its lease
            // runs out as if the report had not arrived (gates hold through
            // a quorum loss, then close). A changed one closes now.
            Err(e @ ApiError::Store(_)) if same_state && self.ledger.store().epoch() > 0 => {
                tracing::warn!(host, error = %e, "cannot store an unchanged attestation; its lease is not renewed");
                return Err(e);
            }
            Err(e @ ApiError::Store(_)) => {
                tracing::error!(host, error = %e, "cannot store an attestation; closing the host's gate");
                self.ledger.note_unstored(host, now, &e);
                self.board.publish_host(role, host);
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        self.metrics.attestation(None);
        self.board.attested(host);
        if unchanged {
            self.unchanged_heartbeats
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let gate = self.board.after(&committed);
        Ok(SubmitReply {
            accepted: true,
            manifest_needed: false,
            gate,
        })
    }

    /// Records a rejected attestation (the gate closes on it even if it
    /// cannot be stored) and says so to the agent.
    async fn reject(
        &self,
        peer: &PeerIdentity,
        host: &str,
        role: &str,
        now: i64,
        rejection: verify::Rejection,
    ) -> ApiError {
        warn!(host, reason = %rejection, "rejected attestation");
        self.metrics.attestation(Some(rejection.kind()));
        let change = RejectedChange {
            actor: peer.to_string(),
            host: host.to_string(),
            role: role.to_string(),
            reason: rejection.to_string(),
            at_unix_ms: now,
        };
        if let Err(e) = self.ledger.commit(change).await {
            tracing::error!(host, error = %e, "cannot store a rejection; the gate closes anyway");
            self.ledger.note_unstored(host, now, &e);
        }
        // Before the gate is re-decided, so the closing gate joins this
        // rejection's incident instead of counting twice.
        self.alerts.signal(Signal::Rejected {
            host: host.to_string(),
            role: role.to_string(),
            role_hosts: self.config.roles.get(role).map_or(0, |r| r.hosts.len()),
            detail: rejection.to_string(),
        });
        self.board.publish_host(role, host);
        ApiError::from(Rejected(rejection))
    }
}
