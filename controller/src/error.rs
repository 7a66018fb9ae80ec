//! The controller's errors, and the one place they become gRPC statuses.

use tonic::{Code, Status};

use crate::store::StoreError;
use crate::verify::Rejection;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("no attestation key is pinned for host {host}; the agent pins it when it starts")]
    NotPinned { host: String },
    #[error("{0}")]
    Revoked(String),
    #[error("attestation rejected: {0}")]
    Rejected(Rejection),
    #[error("storage failed, nothing was acknowledged and the gate stays closed: {0}")]
    Store(StoreError),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// The stable reason a caller decides on (see [`lockstep_proto::reason`]).
    pub fn reason(&self) -> &'static str {
        use lockstep_proto::reason as r;
        match self {
            Self::PermissionDenied(_) => r::ROLE_REFUSED,
            Self::NotFound(_) => r::NOT_FOUND,
            Self::InvalidArgument(_) => r::INVALID_ARGUMENT,
            Self::FailedPrecondition(_) => r::FAILED_PRECONDITION,
            Self::NotPinned { .. } => r::KEY_NOT_PINNED,
            Self::Revoked(_) => r::HOST_REVOKED,
            Self::Rejected(rejection) => match rejection {
                Rejection::Signature(_) => r::BAD_SIGNATURE,
                Rejection::HostMismatch { .. } => r::HOST_MISMATCH,
                Rejection::RoleMismatch { .. } => r::ROLE_MISMATCH,
                Rejection::Malformed(_) => r::MALFORMED,
                Rejection::DigestMismatch { .. } => r::DIGEST_MISMATCH,
                Rejection::TooLarge(_) => r::TOO_LARGE,
                Rejection::Replay { .. } => r::REPLAY,
                Rejection::ClockSkew { .. } => r::CLOCK_SKEW,
            },
            Self::Store(_) => r::STORE_UNAVAILABLE,
            Self::Internal(_) => r::INTERNAL,
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        let code = match &e {
            ApiError::PermissionDenied(_) | ApiError::Revoked(_) => Code::PermissionDenied,
            ApiError::NotFound(_) => Code::NotFound,
            ApiError::InvalidArgument(_) => Code::InvalidArgument,
            ApiError::FailedPrecondition(_) | ApiError::NotPinned { .. } => Code::FailedPrecondition,
            ApiError::Rejected(r) => match r {
                Rejection::Signature(_) | Rejection::HostMismatch { .. } | Rejection::RoleMismatch { .. } => {
                    Code::PermissionDenied
                }
                Rejection::Malformed(_) | Rejection::DigestMismatch { .. } => Code::InvalidArgument,
                Rejection::TooLarge(_) => Code::ResourceExhausted,
                Rejection::Replay { .. } | Rejection::ClockSkew { .. } => Code::FailedPrecondition,
            },
            ApiError::Store(_) => Code::Unavailable,
            ApiError::Internal(_) => Code::Internal,
        };
        lockstep_proto::reason::status(code, e.to_string(), e.reason())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_carries_its_stable_reason() {
        use lockstep_proto::reason;
        let cases = [
            (
                ApiError::NotPinned {
                    host: "smars-01".into(),
                },
                Code::FailedPrecondition,
                reason::KEY_NOT_PINNED,
            ),
            (
                ApiError::Revoked("revoked".into()),
                Code::PermissionDenied,
                reason::HOST_REVOKED,
            ),
            (
                ApiError::PermissionDenied("viewer".into()),
                Code::PermissionDenied,
                reason::ROLE_REFUSED,
            ),
            (ApiError::NotFound("no".into()), Code::NotFound, reason::NOT_FOUND),
            (ApiError::Internal("bug".into()), Code::Internal, reason::INTERNAL),
        ];
        for (e, code, want) in cases {
            let text = e.to_string();
            let s = Status::from(e);
            assert_eq!((s.code(), reason::of(&s).as_deref()), (code, Some(want)), "{text}");
            assert_eq!(s.message(), text, "the message stays the operator's text");
        }
    }
}
