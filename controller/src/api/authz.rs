//! Who may call what: one table keyed by gRPC method, consulted by the API
//! layer ([`crate::api::refusals::RefusalAudit`]) before any handler runs. A
//! lockstep method missing from the table is refused (fail closed), and a
//! test fails when the .proto gains a method the table does not name.

use lockstep_proto::identity::{OperatorRole, PeerIdentity};

/// Who a method is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// The agent of the host named in the client certificate.
    Agent,
    /// Anyone who reaches the port, certificate or not (enrollment proves
    /// itself with a join token).
    Enrollment,
    /// An operator certificate with at least this role.
    Operator(OperatorRole),
}

const AGENT: &str = "/lockstep.v1.AgentService/";
const CONSOLE: &str = "/lockstep.v1.ConsoleService/";
const ENROLL: &str = "/lockstep.v1.EnrollService/";

/// Every lockstep gRPC method and who may call it.
pub const TABLE: &[(&str, &str, Caller)] = &[
    (AGENT, "PinKey", Caller::Agent),
    (AGENT, "Submit", Caller::Agent),
    (AGENT, "Attest", Caller::Agent),
    (AGENT, "Directives", Caller::Agent),
    (AGENT, "Renew", Caller::Agent),
    (AGENT, "TpmNonce", Caller::Agent),
    (AGENT, "TpmQuote", Caller::Agent),
    (ENROLL, "Enroll", Caller::Enrollment),
    (ENROLL, "TpmChallenge", Caller::Enrollment),
    (CONSOLE, "ListHosts", Caller::Operator(OperatorRole::Viewer)),
    (CONSOLE, "GetHost", Caller::Operator(OperatorRole::Viewer)),
    (CONSOLE, "Diff", Caller::Operator(OperatorRole::Viewer)),
    (CONSOLE, "GateCheck", Caller::Operator(OperatorRole::Viewer)),
    (CONSOLE, "ListReleases", Caller::Operator(OperatorRole::Viewer)),
    (CONSOLE, "ListHalts", Caller::Operator(OperatorRole::Viewer)),
    (CONSOLE, "ListAudit", Caller::Operator(OperatorRole::Viewer)),
    (CONSOLE, "VerifyAudit", Caller::Operator(OperatorRole::Viewer)),
    (CONSOLE, "ListIncidents", Caller::Operator(OperatorRole::Viewer)),
    (CONSOLE, "ClusterStatus", Caller::Operator(OperatorRole::Viewer)),
    (CONSOLE, "PreOpenReport", Caller::Operator(OperatorRole::Viewer)),
    (CONSOLE, "BoardLogin", Caller::Operator(OperatorRole::Viewer)),
    (CONSOLE, "ProposeRelease", Caller::Operator(OperatorRole::Operator)),
    (CONSOLE, "Halt", Caller::Operator(OperatorRole::Operator)),
    (CONSOLE, "Resume", Caller::Operator(OperatorRole::Operator)),
    (CONSOLE, "AckIncident", Caller::Operator(OperatorRole::Operator)),
    (CONSOLE, "CreateToken", Caller::Operator(OperatorRole::Operator)),
    (CONSOLE, "RevokeHost", Caller::Operator(OperatorRole::Operator)),
    (CONSOLE, "RequestScan", Caller::Operator(OperatorRole::Operator)),
    (CONSOLE, "ListBoardSessions", Caller::Operator(OperatorRole::Operator)),
    (CONSOLE, "RevokeBoardSession", Caller::Operator(OperatorRole::Operator)),
    (CONSOLE, "ApproveRelease", Caller::Operator(OperatorRole::Approver)),
];

/// What the table says of one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Not a lockstep method (health, reflection): public.
    Public,
    Allow,
    /// Refused before the handler, with the message the caller gets.
    Deny(String),
}

fn entry(path: &str) -> Option<Caller> {
    TABLE
        .iter()
        .find(|(service, method, _)| path.strip_prefix(service) == Some(method))
        .map(|(_, _, caller)| *caller)
}

/// Whether `identity` (the client certificate's, or why there is none) may
/// call `path`. A missing identity is left to the handler, which answers
/// UNAUTHENTICATED with the certificate's problem.
pub fn decide(path: &str, identity: Option<&PeerIdentity>) -> Decision {
    if !path.starts_with("/lockstep.") {
        return Decision::Public;
    }
    let Some(caller) = entry(path) else {
        return Decision::Deny(format!("{path} is not in the authorization table; refused"));
    };
    let Some(who) = identity else {
        return Decision::Allow;
    };
    match (caller, who) {
        (Caller::Enrollment, _) | (Caller::Agent, PeerIdentity::Agent { .. }) => Decision::Allow,
        (Caller::Operator(needed), PeerIdentity::Operator { role, .. }) if *role >= needed => Decision::Allow,
        (Caller::Operator(needed), PeerIdentity::Operator { name, role }) => Decision::Deny(format!(
            "{name} has role {}; this needs the {} role",
            role.as_str(),
            needed.as_str()
        )),
        (Caller::Operator(_), other) => Decision::Deny(format!(
            "console requests need an operator certificate; this connection is {other}"
        )),
        (Caller::Agent, other) => {
            let what = match path.strip_prefix(AGENT) {
                Some("Submit" | "Attest") => "attest".to_string(),
                Some(method) => format!("call {method}"),
                None => format!("call {path}"),
            };
            Decision::Deny(format!(
                "only agent certificates may {what}; this connection is {other}"
            ))
        }
    }
}

#[cfg(test)]
#[path = "authz_tests.rs"]
mod tests;
