//! The facts audit records carry for programs (their `facts` field): the
//! shapes a pre-open report is derived from ([`crate::report`]), and that an
//! auditor's own tool can read from an `audit export`. Each is compact JSON
//! inside the hashed record, so a fact cannot change without breaking the
//! chain. Shapes only grow: a new field is added with a default.

use serde::{Deserialize, Serialize};

/// `gate.changed`: one host's gate moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateChanged {
    pub from: String,
    pub to: String,
    pub reasons: Vec<String>,
}

/// `gate.checked`: what one `lockstep gate check` answered, with every
/// fact the answer rests on as the controller held it at that moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct GateChecked {
    pub exit: u8,
    pub summary: String,
    /// "release" or "consensus".
    pub mode: String,
    pub release: Option<ReleaseFact>,
    /// Every host, in checks written before gate states; empty when
    /// `state` names them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<HostFact>,
    /// The `gate.state` that holds every host's gate at this check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<StateRef>,
    /// Halts in force over the role or any of its hosts.
    pub halts: Vec<HaltFact>,
    /// Incidents of the role, or of the whole controller, not yet closed.
    pub incidents: Vec<IncidentFact>,
}

/// The state a check rests on: the `gate.state` record that holds (or
/// completes) it, and the digest of its hosts (crate::gate_state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StateRef {
    pub seq: u64,
    pub digest: String,
}

/// One inventory host at a gate check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct HostFact {
    pub host: String,
    /// OPEN, CLOSED or MISSING.
    pub gate: String,
    pub reasons: Vec<String>,
    pub agent_version: String,
    /// The last accepted attestation (0: none). Checks written before
    /// gate states carry it; a gate state writes 0 (every heartbeat moves
    /// it), and an OPEN gate is itself the proof of a fresh one.
    #[serde(default)]
    pub last_seq: u64,
    #[serde(default)]
    pub measured_at_unix_ms: i64,
    #[serde(default)]
    pub accepted_at_unix_ms: i64,
    /// SHA-256 (hex) of its version set.
    pub digest: String,
    /// A TPM-bound host's identity and boot state (absent: file keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<TpmFact>,
}

/// A TPM-bound host at a gate check. Like the last attestation, the last
/// quote's time is not kept (every quote moves it): an OPEN gate is the
/// proof of a verified quote within `quote_max_age_s` of the check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TpmFact {
    /// Key id of the EK the host is bound to.
    pub ek: String,
    /// How that EK was trusted at enrollment.
    pub ek_trust: String,
    /// Its boot PCRs against the release ("boot PCRs match release 3",
    /// "PCR 4 differ from release 3", "no verified quote within 180 s"...).
    pub boot: String,
    pub quote_max_age_s: u64,
}

/// `release.proposed` and `release.approved`, and the release a check held hosts to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ReleaseFact {
    pub number: u64,
    pub role: String,
    pub digest: String,
    pub entries: u32,
    pub proposed_by: String,
    pub proposed_at_unix_ms: i64,
    /// Empty until approved.
    pub approved_by: String,
    pub approved_at_unix_ms: i64,
}

/// `halt`, and a halt in force at a check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct HaltFact {
    pub id: u64,
    /// "fleet", "role smars" or "host smars-01".
    pub scope: String,
    pub reason: String,
    pub by: String,
    pub at_unix_ms: i64,
    /// A test of the kill switch (`lockstep halt --drill`), not an emergency.
    #[serde(default)]
    pub drill: bool,
}

/// `resume`: the halts it lifted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Resumed {
    pub ids: Vec<u64>,
    pub scope: String,
    pub reason: String,
    pub by: String,
}

/// An incident not yet closed at a check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct IncidentFact {
    pub id: u64,
    pub title: String,
    pub role: String,
    pub opened_at_unix_ms: i64,
    /// 0 while the cause is still there.
    pub resolved_at_unix_ms: i64,
    pub acked_by: String,
    pub acked_at_unix_ms: i64,
}

/// `value` as a record's `facts`. The shapes above hold strings, integers
/// and lists only, so serialising cannot fail; if it ever did the record
/// would still be written, without facts, and a report resting on it
/// would say the fact is missing rather than invent one.
pub fn to_facts<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// The facts of a record, when it has them in the shape asked for.
pub fn from_facts<T: for<'de> Deserialize<'de>>(facts: &str) -> Option<T> {
    if facts.is_empty() {
        return None;
    }
    serde_json::from_str(facts).ok()
}
