//! Who an agent is to the fleet: enrolled, not revoked, its key pinned.

/// Who is calling, as the agent it claims to be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("only agent certificates may attest; this connection is {peer}")]
    NotAnAgent { peer: String },
    #[error("host {host} is not in any role's inventory: add it to `hosts` of a [[role]] in the controller config")]
    NotInInventory { host: String },
    #[error(
        "host {host} was {} by {by}: {reason}; it must enroll again with a new token (lockstep token create)",
        if *removed { "removed from service" } else { "revoked" }
    )]
    Revoked {
        host: String,
        by: String,
        reason: String,
        removed: bool,
    },
    #[error(
        "host {host} is not enrolled: create a join token with `lockstep token create --host {host}` and run `lockstep-agent enroll` on it"
    )]
    NotEnrolled { host: String },
    #[error(
        "host {host} enrolled with attestation key {pinned}, not {offered}; a new key needs the host re-enrolled with a new token"
    )]
    KeyMismatch {
        host: String,
        pinned: String,
        offered: String,
    },
    #[error("no attestation key is pinned for host {host}; the agent pins it when it starts")]
    NotPinned { host: String },
    #[error("an Ed25519 public key is 32 bytes")]
    BadKeyLength,
}

impl crate::error::DomainError for AuthError {
    fn code_and_reason(&self) -> (tonic::Code, &'static str) {
        use lockstep_proto::reason as r;
        use tonic::Code as C;
        match self {
            Self::NotAnAgent { .. } => (C::PermissionDenied, r::NOT_AN_AGENT),
            Self::NotInInventory { .. } => (C::PermissionDenied, r::NOT_IN_INVENTORY),
            Self::Revoked { .. } => (C::PermissionDenied, r::HOST_REVOKED),
            Self::NotEnrolled { .. } => (C::FailedPrecondition, r::NOT_ENROLLED),
            Self::KeyMismatch { .. } => (C::PermissionDenied, r::KEY_MISMATCH),
            Self::NotPinned { .. } => (C::FailedPrecondition, r::KEY_NOT_PINNED),
            Self::BadKeyLength => (C::InvalidArgument, r::INVALID_ARGUMENT),
        }
    }
}

impl From<AuthError> for tonic::Status {
    fn from(e: AuthError) -> Self {
        crate::error::ApiError::from(e).into()
    }
}
