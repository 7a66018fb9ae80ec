//! The controller's errors, by domain, and the one place they become gRPC
//! statuses: each variant has its code and a stable reason
//! ([`lockstep_proto::reason`], in `google.rpc.ErrorInfo`) that callers
//! decide on. The message is English for the operator, naming the thing and
//! the fix, and may change; the reason does not.

use lockstep_proto::reason as r;
use tonic::{Code, Status};

use crate::config::NotInConfig;
use crate::store::StoreError;

/// Something a call named that the controller does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error(transparent)]
    Config(#[from] crate::config::NotInConfig),
    #[error("host {host} has not reported a version set yet")]
    NotReported { host: String },
    #[error("no release {number} (lockstep release list)")]
    NoRelease { number: u64 },
    #[error("role {role} has no approved release")]
    NoActiveRelease { role: String },
    #[error("no open incident {id}: `lockstep alerts` lists the open ones")]
    NoOpenIncident { id: u64 },
    #[error("diff against another host or a release")]
    NoDiffTarget,
    #[error("this controller serves no board: set [board] listen in its config")]
    NoBoard,
    #[error("no board session {id}: `lockstep board sessions` lists them")]
    NoBoardSession { id: String },
}

/// A part's own refusal, as the part words it: its gRPC code and the
/// stable reason callers decide on. Each part keeps its error type (and
/// the codes) with its rules; [`ApiError`] carries any of them.
pub trait DomainError: std::error::Error + Send + Sync + 'static {
    fn code_and_reason(&self) -> (Code, &'static str);

    /// Whether the part wrote the refusal's audit record itself (a rejected
    /// attestation), so the call's refusal is not audited again.
    fn audited_here(&self) -> bool {
        false
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Lookup(#[from] LookupError),
    /// A part's own refusal (a halt without a reason, a replayed seq...).
    #[error("{0}")]
    Domain(Box<dyn DomainError>),
    #[error("storage failed, nothing was acknowledged and the gate stays closed: {0}")]
    Store(StoreError),
    /// A broken invariant or a failed system call: a bug to report.
    #[error("{0}")]
    Internal(String),
}

impl<E: DomainError> From<E> for ApiError {
    fn from(e: E) -> Self {
        Self::Domain(Box::new(e))
    }
}

impl ApiError {
    /// The gRPC code and the stable reason a caller decides on.
    pub fn code_and_reason(&self) -> (Code, &'static str) {
        use Code as C;
        match self {
            Self::Lookup(e) => match e {
                LookupError::NoDiffTarget => (C::InvalidArgument, r::INVALID_ARGUMENT),
                _ => (C::NotFound, r::NOT_FOUND),
            },
            Self::Domain(e) => e.code_and_reason(),
            Self::Store(_) => (C::Unavailable, r::STORE_UNAVAILABLE),
            Self::Internal(_) => (C::Internal, r::INTERNAL),
        }
    }

    /// The stable reason a caller decides on (see [`lockstep_proto::reason`]).
    pub fn reason(&self) -> &'static str {
        self.code_and_reason().1
    }

    /// The part's own error, when it is one of type `E`.
    pub fn domain<E: DomainError>(&self) -> Option<&E> {
        match self {
            Self::Domain(e) => (e.as_ref() as &dyn std::error::Error).downcast_ref::<E>(),
            _ => None,
        }
    }

    /// The part's own error of type `E`, or this error as it was.
    pub fn into_domain<E: DomainError>(self) -> Result<E, Self> {
        match self {
            Self::Domain(e) if (e.as_ref() as &dyn std::error::Error).is::<E>() => {
                let e: Box<dyn std::error::Error + Send + Sync> = e;
                e.downcast::<E>()
                    .map(|e| *e)
                    .map_err(|_| Self::Internal("a refusal changed type".into()))
            }
            other => Err(other),
        }
    }

    /// Whether the part that refused wrote its audit record itself.
    pub fn audited_here(&self) -> bool {
        matches!(self, Self::Domain(e) if e.audited_here())
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        let (code, reason) = e.code_and_reason();
        r::status(code, e.to_string(), reason)
    }
}

/// A domain error answers a call as its `ApiError` would.
macro_rules! status_from {
    ($($domain:ty),*) => {
        $(impl From<$domain> for Status {
            fn from(e: $domain) -> Self {
                ApiError::from(e).into()
            }
        })*
    };
}
status_from!(LookupError, NotInConfig);

impl From<NotInConfig> for ApiError {
    fn from(e: NotInConfig) -> Self {
        Self::Lookup(e.into())
    }
}
