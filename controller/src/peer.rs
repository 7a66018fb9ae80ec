//! Who is calling: the identity a connection's client certificate carries
//! ([`PeerInfo`], put on every request by the server), and the operator a
//! console call acts for once the authorization table ([`crate::authz`])
//! has let it through ([`Operator`]).

use std::net::SocketAddr;

use lockstep_proto::identity::{OperatorRole, PeerIdentity};

/// Who is on the other end of a connection, as its certificate says.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub addr: Option<SocketAddr>,
    /// Err when the (CA-valid) certificate carries no lockstep identity.
    pub identity: Result<PeerIdentity, String>,
}

/// An operator a console call acts for. Made only from an operator
/// certificate; whether the role suffices was decided by the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    pub name: String,
    pub role: OperatorRole,
}

impl Operator {
    /// The operator of `identity`, if it is one.
    pub fn of(identity: &PeerIdentity) -> Option<Self> {
        match identity {
            PeerIdentity::Operator { name, role } => Some(Self {
                name: name.clone(),
                role: *role,
            }),
            _ => None,
        }
    }

    /// How the audit log names them: "alice (operator)".
    pub fn actor(&self) -> String {
        PeerIdentity::Operator {
            name: self.name.clone(),
            role: self.role,
        }
        .to_string()
    }
}
