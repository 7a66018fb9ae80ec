//! Stable, machine-readable reasons for a refusal, carried in the gRPC
//! status details as `google.rpc.ErrorInfo` (domain [`DOMAIN`]). A caller
//! decides on these, never on the text of a message, which is English for
//! an operator and may change.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

pub const DOMAIN: &str = "lockstep.v1";

/// The host has no attestation key pinned: the agent must pin (or enroll).
pub const KEY_NOT_PINNED: &str = "KEY_NOT_PINNED";
/// The host was revoked or removed: it must enroll again with a new token.
pub const HOST_REVOKED: &str = "HOST_REVOKED";
pub const BAD_SIGNATURE: &str = "BAD_SIGNATURE";
pub const HOST_MISMATCH: &str = "HOST_MISMATCH";
pub const ROLE_MISMATCH: &str = "ROLE_MISMATCH";
pub const MALFORMED: &str = "MALFORMED";
pub const DIGEST_MISMATCH: &str = "DIGEST_MISMATCH";
pub const TOO_LARGE: &str = "TOO_LARGE";
pub const REPLAY: &str = "REPLAY";
pub const CLOCK_SKEW: &str = "CLOCK_SKEW";
/// The store refuses writes: nothing was acknowledged.
pub const STORE_UNAVAILABLE: &str = "STORE_UNAVAILABLE";
/// This controller does not lead (a standby, or a leader that stood
/// down): nothing was done, another controller may do it.
pub const NOT_LEADER: &str = "NOT_LEADER";
/// The caller's role may not make this call.
pub const ROLE_REFUSED: &str = "ROLE_REFUSED";
pub const NOT_FOUND: &str = "NOT_FOUND";
pub const INVALID_ARGUMENT: &str = "INVALID_ARGUMENT";
pub const FAILED_PRECONDITION: &str = "FAILED_PRECONDITION";
pub const INTERNAL: &str = "INTERNAL";
/// An agent call from a certificate that is not an agent's.
pub const NOT_AN_AGENT: &str = "NOT_AN_AGENT";
/// The host is in no role's inventory in the controller config.
pub const NOT_IN_INVENTORY: &str = "NOT_IN_INVENTORY";
/// The host never enrolled: it needs a join token.
pub const NOT_ENROLLED: &str = "NOT_ENROLLED";
/// The agent offered a key other than the one pinned at enrollment.
pub const KEY_MISMATCH: &str = "KEY_MISMATCH";
/// The join token does not allow this enrollment (unknown, used, expired, another host's).
pub const TOKEN_REFUSED: &str = "TOKEN_REFUSED";
/// The controller has no CA key: it does not enroll.
pub const NO_CA: &str = "NO_CA";
/// A resume of a scope with no active halt.
pub const NO_ACTIVE_HALT: &str = "NO_ACTIVE_HALT";
/// The approver proposed the release.
pub const TWO_PERSON_RULE: &str = "TWO_PERSON_RULE";
pub const ALREADY_APPROVED: &str = "ALREADY_APPROVED";
/// The release is older than the role's active one.
pub const OLDER_THAN_ACTIVE: &str = "OLDER_THAN_ACTIVE";
/// The host's agent has no directive stream open.
pub const AGENT_NOT_CONNECTED: &str = "AGENT_NOT_CONNECTED";
/// A pre-open report asked of a day with no recorded gate check to rest on.
pub const NO_GATE_CHECK: &str = "NO_GATE_CHECK";
/// A TPM call from a host whose identity is not bound to a TPM.
pub const TPM_NOT_BOUND: &str = "TPM_NOT_BOUND";
/// A TPM quote that does not verify (replayed nonce, another TPM's key...).
pub const TPM_QUOTE_REFUSED: &str = "TPM_QUOTE_REFUSED";
/// A TPM enrollment whose credentials were not opened by the TPM named.
pub const TPM_PROOF_REFUSED: &str = "TPM_PROOF_REFUSED";

/// A status with `reason` in its details.
pub fn status(code: Code, message: impl Into<String>, reason: &str) -> Status {
    let info = ErrorDetails::with_error_info(reason, DOMAIN, HashMap::<String, String>::new());
    Status::with_error_details(code, message, info)
}

/// The lockstep reason of `status`, if it carries one.
pub fn of(status: &Status) -> Option<String> {
    status
        .get_details_error_info()
        .filter(|info| info.domain == DOMAIN)
        .map(|info| info.reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_survives_the_status_details() {
        let s = status(Code::FailedPrecondition, "not pinned, for people", KEY_NOT_PINNED);
        assert_eq!(of(&s).as_deref(), Some(KEY_NOT_PINNED));
        assert_eq!(s.message(), "not pinned, for people");
        assert_eq!(of(&Status::failed_precondition("no details")), None);
    }
}
