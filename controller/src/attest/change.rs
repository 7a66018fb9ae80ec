//! Attestations' changes, as the ledger commits them: an accepted one is
//! checked again there (revoked since? key re-pinned? a newer seq landed
//! first?), so nothing verified before it waited for its turn lands over
//! a later decision; a rejected one marks the host's record.

use std::sync::Arc;

use lockstep_evidence::chain::AuditEvent;
use lockstep_proto::pb::Entry;

use crate::attest::verify::{Rejected as RejectedAttestation, Rejection};
use crate::error::ApiError;
use crate::fleet::auth::AuthError;
use crate::ledger::change::{Change, Effect, NextNumber, Refused, Staged};
use crate::store::{HostRecord, Put, Rejection as StoredRejection};

/// A verified attestation; `seq` is checked again at the commit.
pub struct Attested {
    pub actor: String,
    pub host: String,
    pub role: String,
    /// The key the envelope was verified with: a host re-enrolled meanwhile
    /// has another, and this attestation no longer speaks for it.
    pub pinned_key_hex: String,
    /// A TPM-bound host's session key the envelope was verified with
    /// (empty otherwise): a newer quote may have bound another since.
    pub session_key_hex: String,
    pub seq: u64,
    pub digest_hex: String,
    pub measured_at_unix_ms: i64,
    pub accepted_at_unix_ms: i64,
    pub boot_id: String,
    pub agent_version: String,
    pub full: bool,
    /// The canonical entries, when the controller may not hold them yet.
    pub manifest: Option<Arc<Vec<Entry>>>,
}

impl Change for Attested {
    fn apply(self: Box<Self>, state: &Staged<'_>, _: NextNumber<'_>) -> Result<Effect, Refused> {
        attested(state, *self)
    }
}

/// An attestation that failed verification: the host's gate names it.
pub struct Rejected {
    pub actor: String,
    pub host: String,
    pub role: String,
    pub reason: String,
    pub at_unix_ms: i64,
}

impl Change for Rejected {
    fn apply(self: Box<Self>, state: &Staged<'_>, _: NextNumber<'_>) -> Result<Effect, Refused> {
        let Self {
            actor,
            host,
            role,
            reason,
            at_unix_ms,
        } = *self;
        let mut record = state.host(&host).unwrap_or_else(|| HostRecord {
            host: host.clone(),
            role: role.clone(),
            ..HostRecord::default()
        });
        record.last_rejection = Some(StoredRejection {
            at_unix_ms,
            reason: reason.clone(),
        });
        Ok(Effect {
            puts: vec![Put::Host(record)],
            events: vec![AuditEvent {
                actor,
                action: lockstep_evidence::action::AuditAction::AttestationRejected,
                host,
                role,
                detail: reason,
                facts: String::new(),
            }],
            numbered: None,
        })
    }
}

fn attested(state: &Staged<'_>, a: Attested) -> Result<Effect, Refused> {
    let record = state.host(&a.host).unwrap_or_default();
    if let Some(rev) = &record.revoked {
        return Err(ApiError::from(AuthError::Revoked {
            host: a.host,
            by: rev.by.clone(),
            reason: rev.reason.clone(),
            removed: rev.removed,
        })
        .into());
    }
    if record.pinned_key_hex != a.pinned_key_hex {
        return Err(ApiError::from(AuthError::NotPinned { host: a.host }).into());
    }
    let session_now = record
        .tpm
        .as_ref()
        .and_then(|t| t.quote.as_ref())
        .map(|q| q.session_key_hex.as_str())
        .unwrap_or_default();
    if session_now != a.session_key_hex {
        return Err(ApiError::from(RejectedAttestation(Rejection::Signature(
            "signed with a session key the host's last TPM quote does not bind (a copy of its state directory, or an agent run that has not quoted)".into(),
        )))
        .into());
    }
    if a.seq <= record.last_seq {
        return Err(ApiError::from(RejectedAttestation(Rejection::Replay {
            seq: a.seq,
            last: record.last_seq,
        }))
        .into());
    }
    // A new version set, a full measurement or a reboot is recorded; a
    // heartbeat that renews the same set is stored and counted
    // (`attestation.heartbeats`), not recorded one by one.
    let unchanged = !a.full && record.last_seq > 0 && record.digest_hex == a.digest_hex && record.boot_id == a.boot_id;
    let mut puts = Vec::new();
    if let Some(entries) = a.manifest.filter(|_| !state.has_manifest(&a.digest_hex)) {
        puts.push(Put::Manifest {
            digest_hex: a.digest_hex.clone(),
            entries,
        });
    }
    let events = if unchanged {
        Vec::new()
    } else {
        vec![AuditEvent {
            actor: a.actor,
            action: lockstep_evidence::action::AuditAction::AttestationAccepted,
            host: a.host.clone(),
            role: a.role.clone(),
            detail: format!(
                "seq {}, version set {}{}",
                a.seq,
                &a.digest_hex[..a.digest_hex.len().min(16)],
                if a.full { " (full)" } else { " (heartbeat)" }
            ),
            facts: String::new(),
        }]
    };
    puts.push(Put::Host(HostRecord {
        last_seq: a.seq,
        digest_hex: a.digest_hex,
        measured_at_unix_ms: a.measured_at_unix_ms,
        accepted_at_unix_ms: a.accepted_at_unix_ms,
        boot_id: a.boot_id,
        agent_version: a.agent_version,
        ..record
    }));
    Ok(Effect {
        puts,
        events,
        numbered: None,
    })
}
