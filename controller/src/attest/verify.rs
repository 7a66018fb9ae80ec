//! Checks on one submitted attestation, in the order of the gate rule:
//! identity, signature against the pinned key, host and role, sequence,
//! clock skew, and the digest of the entries it carries. Pure: the caller
//! supplies the host's record, the limits and the time.

use lockstep_proto::digest;
use lockstep_proto::envelope::{self, EnvelopeError, Limits};
use lockstep_proto::pb::{Attestation, Entry, Envelope};

use crate::store::HostRecord;

/// Why an attestation was refused. Each maps to one gRPC code in `status`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("{0}")]
    Signature(String),
    #[error("{0}")]
    Malformed(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("certificate names host {peer} but the attestation names {claimed}")]
    HostMismatch { peer: String, claimed: String },
    #[error("attestation says role {claimed} but the controller's inventory puts {host} in role {inventory}")]
    RoleMismatch {
        host: String,
        claimed: String,
        inventory: String,
    },
    #[error("replay: seq {seq} is not greater than the last accepted seq {last}")]
    Replay { seq: u64, last: u64 },
    #[error("measured_at is {skew_s}s {direction} the controller's clock (max skew {max_s}s): check NTP on the host")]
    ClockSkew {
        skew_s: i64,
        direction: &'static str,
        max_s: i64,
    },
    #[error("digest {stated} does not match the entries sent ({computed})")]
    DigestMismatch { stated: String, computed: String },
}

impl Rejection {
    /// A short, stable name for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Signature(_) => "signature",
            Self::Malformed(_) => "malformed",
            Self::TooLarge(_) => "too_large",
            Self::HostMismatch { .. } => "host_mismatch",
            Self::RoleMismatch { .. } => "role_mismatch",
            Self::Replay { .. } => "replay",
            Self::ClockSkew { .. } => "clock_skew",
            Self::DigestMismatch { .. } => "digest_mismatch",
        }
    }
}

/// An attestation that passed every check.
#[derive(Debug)]
pub struct Verified {
    pub attestation: Attestation,
    pub digest_hex: String,
    /// Canonical entries, for a full attestation.
    pub entries: Option<Vec<Entry>>,
}

pub struct Checks<'a> {
    pub peer_host: &'a str,
    pub inventory_role: &'a str,
    pub record: &'a HostRecord,
    pub pinned_key: &'a [u8],
    pub limits: Limits,
    pub max_skew_ms: i64,
    pub now_unix_ms: i64,
}

pub fn verify(envelope: &Envelope, c: &Checks<'_>) -> Result<Verified, Rejection> {
    let mut a = envelope::open_attestation(envelope, c.pinned_key, c.limits).map_err(|e| match e {
        EnvelopeError::TooLarge { .. } | EnvelopeError::TooManyEntries { .. } => Rejection::TooLarge(e.to_string()),
        EnvelopeError::Decode(_) => Rejection::Malformed(e.to_string()),
        _ => Rejection::Signature(e.to_string()),
    })?;
    if a.host != c.peer_host {
        return Err(Rejection::HostMismatch {
            peer: c.peer_host.to_string(),
            claimed: a.host,
        });
    }
    if a.role != c.inventory_role {
        return Err(Rejection::RoleMismatch {
            host: a.host,
            claimed: a.role,
            inventory: c.inventory_role.to_string(),
        });
    }
    if a.seq <= c.record.last_seq {
        return Err(Rejection::Replay {
            seq: a.seq,
            last: c.record.last_seq,
        });
    }
    let skew = a.measured_at_unix_ms - c.now_unix_ms;
    if skew.abs() > c.max_skew_ms {
        return Err(Rejection::ClockSkew {
            skew_s: skew.abs() / 1000,
            direction: if skew > 0 { "ahead of" } else { "behind" },
            max_s: c.max_skew_ms / 1000,
        });
    }
    if a.digest.len() != 32 {
        return Err(Rejection::Malformed(format!(
            "digest is {} bytes, not 32",
            a.digest.len()
        )));
    }
    let digest_hex = hex::encode(&a.digest);
    let entries = if a.full {
        let entries =
            digest::canonicalize(std::mem::take(&mut a.entries)).map_err(|e| Rejection::Malformed(e.to_string()))?;
        let computed = hex::encode(digest::digest(&entries));
        if computed != digest_hex {
            return Err(Rejection::DigestMismatch {
                stated: digest_hex,
                computed,
            });
        }
        Some(entries)
    } else {
        if !a.entries.is_empty() {
            return Err(Rejection::Malformed(
                "a digest-only heartbeat must carry no entries".into(),
            ));
        }
        None
    };
    Ok(Verified {
        attestation: a,
        digest_hex,
        entries,
    })
}

#[cfg(test)]
#[path = "verify_tests.rs"]
mod tests;

/// A rejection, as the call that brought the attestation is answered.
#[derive(Debug, thiserror::Error)]
#[error("attestation rejected: {0}")]
pub struct Rejected(pub Rejection);

impl crate::error::DomainError for Rejected {
    /// A rejection is recorded by ingest itself (`attestation.rejected`).
    fn audited_here(&self) -> bool {
        true
    }

    fn code_and_reason(&self) -> (tonic::Code, &'static str) {
        use lockstep_proto::reason as r;
        use tonic::Code as C;
        match &self.0 {
            Rejection::Signature(_) => (C::PermissionDenied, r::BAD_SIGNATURE),
            Rejection::HostMismatch { .. } => (C::PermissionDenied, r::HOST_MISMATCH),
            Rejection::RoleMismatch { .. } => (C::PermissionDenied, r::ROLE_MISMATCH),
            Rejection::Malformed(_) => (C::InvalidArgument, r::MALFORMED),
            Rejection::DigestMismatch { .. } => (C::InvalidArgument, r::DIGEST_MISMATCH),
            Rejection::TooLarge(_) => (C::ResourceExhausted, r::TOO_LARGE),
            Rejection::Replay { .. } => (C::FailedPrecondition, r::REPLAY),
            Rejection::ClockSkew { .. } => (C::FailedPrecondition, r::CLOCK_SKEW),
        }
    }
}
