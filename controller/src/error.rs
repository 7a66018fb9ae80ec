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
    #[error("attestation rejected: {0}")]
    Rejected(Rejection),
    #[error("storage failed, nothing was acknowledged and the gate stays closed: {0}")]
    Store(StoreError),
    #[error("{0}")]
    Internal(String),
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        let code = match &e {
            ApiError::PermissionDenied(_) => Code::PermissionDenied,
            ApiError::NotFound(_) => Code::NotFound,
            ApiError::InvalidArgument(_) => Code::InvalidArgument,
            ApiError::FailedPrecondition(_) => Code::FailedPrecondition,
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
        Status::new(code, e.to_string())
    }
}
