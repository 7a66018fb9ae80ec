//! The controller's errors, by domain, and the one place they become gRPC
//! statuses: each variant has its code and a stable reason
//! ([`lockstep_proto::reason`], in `google.rpc.ErrorInfo`) that callers
//! decide on. The message is English for the operator, naming the thing and
//! the fix, and may change; the reason does not.

use lockstep_proto::reason as r;
use tonic::{Code, Status};

use crate::report::ReportError;
use crate::store::StoreError;
use crate::verify::Rejection;

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

/// Something a call named that the controller does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("no role {name:?} in the controller config; roles: {}", known.join(", "))]
    UnknownRole { name: String, known: Vec<String> },
    #[error("host {host} is not in any role's inventory")]
    UnknownHost { host: String },
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

/// The kill switch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HaltError {
    #[error("say what to halt: --fleet, --role ROLE or --host HOST")]
    NoScope,
    #[error("a halt needs --reason: the people you stop will read it")]
    NoReason,
    #[error("no active halt on {scope}; `lockstep halts` lists the active ones and their scopes")]
    NothingActive { scope: String },
}

/// Proposing and approving releases.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseError {
    #[error("give --from-host HOST, --manifest FILE or --from-release N")]
    NoSource,
    #[error("manifest: {0}")]
    BadManifest(String),
    #[error("host {host} is in role {role}, not {wanted}")]
    HostInOtherRole { host: String, role: String, wanted: String },
    #[error("release {number} is of role {role}, not {wanted}")]
    ReleaseOfOtherRole { number: u64, role: String, wanted: String },
    #[error("release {number} was already approved by {by}")]
    AlreadyApproved { number: u64, by: String },
    #[error("two-person rule: {who} proposed release {number} and cannot also approve it; another approver must")]
    TwoPersonRule { who: String, number: u64 },
    #[error(
        "release {number} is older than active release {active} of role {role}; to roll back, propose a new release with the old content"
    )]
    OlderThanActive { number: u64, active: u64, role: String },
}

/// Join tokens, enrollment, renewal and revocation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnrollError {
    #[error("{0}")]
    BadHostName(String),
    #[error("host {host} is in role {role}, not {wanted}")]
    HostInOtherRole { host: String, role: String, wanted: String },
    #[error(
        "host {host} is not in any role's inventory: add it to `hosts` of a [[role]] in the controller config first"
    )]
    NotInInventory { host: String },
    /// The join token does not allow this enrollment (recorded as `enroll.refused`).
    #[error("{0}")]
    TokenRefused(String),
    #[error("this controller does not issue certificates: set enrollment.ca_key in its config")]
    NoCa,
    #[error("{0}")]
    BadCsr(String),
    #[error("give --reason: it is shown on the host's closed gate and kept in the audit log")]
    NoRevokeReason,
}

/// `lockstep scan --host`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error(
        "{host}'s agent is not connected (no directive stream): nothing was asked; `lockstep host {host}` shows when it last reported"
    )]
    NotConnected { host: String },
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error(transparent)]
    Halt(#[from] HaltError),
    #[error(transparent)]
    Release(#[from] ReleaseError),
    #[error(transparent)]
    Enroll(#[from] EnrollError),
    #[error(transparent)]
    Scan(#[from] ScanError),
    #[error(transparent)]
    Report(#[from] crate::report::ReportError),
    #[error("attestation rejected: {0}")]
    Rejected(Rejection),
    #[error("storage failed, nothing was acknowledged and the gate stays closed: {0}")]
    Store(StoreError),
    /// A broken invariant or a failed system call: a bug to report.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// The gRPC code and the stable reason a caller decides on.
    pub fn code_and_reason(&self) -> (Code, &'static str) {
        use Code as C;
        match self {
            Self::Auth(e) => match e {
                AuthError::NotAnAgent { .. } => (C::PermissionDenied, r::NOT_AN_AGENT),
                AuthError::NotInInventory { .. } => (C::PermissionDenied, r::NOT_IN_INVENTORY),
                AuthError::Revoked { .. } => (C::PermissionDenied, r::HOST_REVOKED),
                AuthError::NotEnrolled { .. } => (C::FailedPrecondition, r::NOT_ENROLLED),
                AuthError::KeyMismatch { .. } => (C::PermissionDenied, r::KEY_MISMATCH),
                AuthError::NotPinned { .. } => (C::FailedPrecondition, r::KEY_NOT_PINNED),
                AuthError::BadKeyLength => (C::InvalidArgument, r::INVALID_ARGUMENT),
            },
            Self::Lookup(e) => match e {
                LookupError::NoDiffTarget => (C::InvalidArgument, r::INVALID_ARGUMENT),
                _ => (C::NotFound, r::NOT_FOUND),
            },
            Self::Halt(e) => match e {
                HaltError::NoScope | HaltError::NoReason => (C::InvalidArgument, r::INVALID_ARGUMENT),
                HaltError::NothingActive { .. } => (C::NotFound, r::NO_ACTIVE_HALT),
            },
            Self::Release(e) => match e {
                ReleaseError::NoSource
                | ReleaseError::BadManifest(_)
                | ReleaseError::HostInOtherRole { .. }
                | ReleaseError::ReleaseOfOtherRole { .. } => (C::InvalidArgument, r::INVALID_ARGUMENT),
                ReleaseError::AlreadyApproved { .. } => (C::FailedPrecondition, r::ALREADY_APPROVED),
                ReleaseError::TwoPersonRule { .. } => (C::PermissionDenied, r::TWO_PERSON_RULE),
                ReleaseError::OlderThanActive { .. } => (C::FailedPrecondition, r::OLDER_THAN_ACTIVE),
            },
            Self::Enroll(e) => match e {
                EnrollError::BadHostName(_)
                | EnrollError::HostInOtherRole { .. }
                | EnrollError::BadCsr(_)
                | EnrollError::NoRevokeReason => (C::InvalidArgument, r::INVALID_ARGUMENT),
                EnrollError::NotInInventory { .. } => (C::NotFound, r::NOT_IN_INVENTORY),
                EnrollError::TokenRefused(_) => (C::PermissionDenied, r::TOKEN_REFUSED),
                EnrollError::NoCa => (C::FailedPrecondition, r::NO_CA),
            },
            Self::Scan(ScanError::NotConnected { .. }) => (C::FailedPrecondition, r::AGENT_NOT_CONNECTED),
            Self::Report(e) => match e {
                ReportError::NoCheck { .. } | ReportError::NoFacts { .. } => (C::FailedPrecondition, r::NO_GATE_CHECK),
                ReportError::BadDate(_) | ReportError::BadTime(_) | ReportError::BadZone(_) => {
                    (C::InvalidArgument, r::INVALID_ARGUMENT)
                }
            },
            Self::Rejected(rejection) => match rejection {
                Rejection::Signature(_) => (C::PermissionDenied, r::BAD_SIGNATURE),
                Rejection::HostMismatch { .. } => (C::PermissionDenied, r::HOST_MISMATCH),
                Rejection::RoleMismatch { .. } => (C::PermissionDenied, r::ROLE_MISMATCH),
                Rejection::Malformed(_) => (C::InvalidArgument, r::MALFORMED),
                Rejection::DigestMismatch { .. } => (C::InvalidArgument, r::DIGEST_MISMATCH),
                Rejection::TooLarge(_) => (C::ResourceExhausted, r::TOO_LARGE),
                Rejection::Replay { .. } => (C::FailedPrecondition, r::REPLAY),
                Rejection::ClockSkew { .. } => (C::FailedPrecondition, r::CLOCK_SKEW),
            },
            Self::Store(_) => (C::Unavailable, r::STORE_UNAVAILABLE),
            Self::Internal(_) => (C::Internal, r::INTERNAL),
        }
    }

    /// The stable reason a caller decides on (see [`lockstep_proto::reason`]).
    pub fn reason(&self) -> &'static str {
        self.code_and_reason().1
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
status_from!(AuthError, LookupError, HaltError, ReleaseError, EnrollError, ScanError);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_carries_its_stable_reason() {
        let cases: Vec<(ApiError, Code, &str)> = vec![
            (
                AuthError::NotPinned {
                    host: "smars-01".into(),
                }
                .into(),
                Code::FailedPrecondition,
                r::KEY_NOT_PINNED,
            ),
            (
                AuthError::Revoked {
                    host: "smars-01".into(),
                    by: "alice".into(),
                    reason: "lost".into(),
                    removed: false,
                }
                .into(),
                Code::PermissionDenied,
                r::HOST_REVOKED,
            ),
            (
                ReleaseError::TwoPersonRule {
                    who: "carol".into(),
                    number: 2,
                }
                .into(),
                Code::PermissionDenied,
                r::TWO_PERSON_RULE,
            ),
            (
                HaltError::NothingActive {
                    scope: "the fleet".into(),
                }
                .into(),
                Code::NotFound,
                r::NO_ACTIVE_HALT,
            ),
            (
                EnrollError::TokenRefused("used".into()).into(),
                Code::PermissionDenied,
                r::TOKEN_REFUSED,
            ),
            (
                LookupError::NoRelease { number: 9 }.into(),
                Code::NotFound,
                r::NOT_FOUND,
            ),
            (ApiError::Internal("bug".into()), Code::Internal, r::INTERNAL),
        ];
        for (e, code, want) in cases {
            let text = e.to_string();
            let s = Status::from(e);
            assert_eq!((s.code(), r::of(&s).as_deref()), (code, Some(want)), "{text}");
            assert_eq!(s.message(), text, "the message stays the operator's text");
        }
    }
}
