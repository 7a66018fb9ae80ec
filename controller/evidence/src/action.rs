//! What an audit record says happened: one type for every writer and for
//! everything that reads records back (the pre-open report, the board, the
//! SIEM feed). Its text (`as_str`) is what a record carries and its hash
//! covers, so a kind's text never changes once written; new kinds are
//! added, old ones kept.

/// Every kind of audit record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AuditAction {
    AttestationAccepted,
    AttestationRejected,
    /// The count of unchanged heartbeats since the last count.
    AttestationHeartbeats,
    GateChanged,
    /// One `lockstep gate check`, with every fact its answer rests on.
    GateChecked,
    /// A role's gates after a change, as a check names them (gate_state).
    GateState,
    Halt,
    Resume,
    ReleaseProposed,
    ReleaseApproved,
    TokenCreated,
    HostEnrolled,
    EnrollRefused,
    HostRevoked,
    HostRemoved,
    CertRenewed,
    ConsoleDenied,
    RequestRefused,
    ConnectionRefused,
    ScanRequested,
    ReportIssued,
    IncidentAcknowledged,
    /// An incident's notification: it fired, changed, or resolved.
    IncidentFiring,
    IncidentUpdated,
    IncidentResolved,
    BoardLink,
    BoardLogin,
    BoardLoginRefused,
    BoardLogout,
    BoardRevoked,
    BoardDenied,
    /// A segment of the log closed: the checkpoint's signed facts.
    AuditCheckpoint,
    /// A closed segment written to the archive and dropped from the store.
    AuditArchived,
    /// A TPM-bound host's quote verified with a new session key or new PCRs.
    TpmQuoted,
    /// A TPM quote refused (replayed nonce, another TPM's signature, ...).
    TpmQuoteRefused,
}

impl AuditAction {
    /// Every kind, in one place.
    pub const ALL: [Self; 35] = [
        Self::AttestationAccepted,
        Self::AttestationRejected,
        Self::AttestationHeartbeats,
        Self::GateChanged,
        Self::GateChecked,
        Self::GateState,
        Self::Halt,
        Self::Resume,
        Self::ReleaseProposed,
        Self::ReleaseApproved,
        Self::TokenCreated,
        Self::HostEnrolled,
        Self::EnrollRefused,
        Self::HostRevoked,
        Self::HostRemoved,
        Self::CertRenewed,
        Self::ConsoleDenied,
        Self::RequestRefused,
        Self::ConnectionRefused,
        Self::ScanRequested,
        Self::ReportIssued,
        Self::IncidentAcknowledged,
        Self::IncidentFiring,
        Self::IncidentUpdated,
        Self::IncidentResolved,
        Self::BoardLink,
        Self::BoardLogin,
        Self::BoardLoginRefused,
        Self::BoardLogout,
        Self::BoardRevoked,
        Self::BoardDenied,
        Self::AuditCheckpoint,
        Self::AuditArchived,
        Self::TpmQuoted,
        Self::TpmQuoteRefused,
    ];

    /// The text a record carries (docs/protocol.md lists them).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AttestationAccepted => "attestation.accepted",
            Self::AttestationRejected => "attestation.rejected",
            Self::AttestationHeartbeats => "attestation.heartbeats",
            Self::GateChanged => "gate.changed",
            Self::GateChecked => "gate.checked",
            Self::GateState => "gate.state",
            Self::Halt => "halt",
            Self::Resume => "resume",
            Self::ReleaseProposed => "release.proposed",
            Self::ReleaseApproved => "release.approved",
            Self::TokenCreated => "token.created",
            Self::HostEnrolled => "host.enrolled",
            Self::EnrollRefused => "enroll.refused",
            Self::HostRevoked => "host.revoked",
            Self::HostRemoved => "host.removed",
            Self::CertRenewed => "cert.renewed",
            Self::ConsoleDenied => "console.denied",
            Self::RequestRefused => "request.refused",
            Self::ConnectionRefused => "connection.refused",
            Self::ScanRequested => "scan.requested",
            Self::ReportIssued => "report.issued",
            Self::IncidentAcknowledged => "incident.acknowledged",
            Self::IncidentFiring => "incident.firing",
            Self::IncidentUpdated => "incident.updated",
            Self::IncidentResolved => "incident.resolved",
            Self::BoardLink => "board.link",
            Self::BoardLogin => "board.login",
            Self::BoardLoginRefused => "board.login_refused",
            Self::BoardLogout => "board.logout",
            Self::BoardRevoked => "board.revoked",
            Self::BoardDenied => "board.denied",
            Self::AuditCheckpoint => "audit.checkpoint",
            Self::AuditArchived => "audit.archived",
            Self::TpmQuoted => "tpm.quoted",
            Self::TpmQuoteRefused => "tpm.quote_refused",
        }
    }

    /// The kind a record's text names (`None`: a kind this build does not
    /// know, from a newer controller).
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == text)
    }

    /// Whether `record_action` (a record's text) is this kind.
    pub fn is(self, record_action: &str) -> bool {
        self.as_str() == record_action
    }
}

impl std::fmt::Display for AuditAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_reads_back_as_itself_and_texts_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for a in AuditAction::ALL {
            assert_eq!(AuditAction::parse(a.as_str()), Some(a));
            assert!(seen.insert(a.as_str()), "{a} twice");
        }
        assert_eq!(AuditAction::parse("no.such"), None);
    }
}
