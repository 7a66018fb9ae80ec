//! The operator a console call acts for, once the authorization table
//! ([`crate::api::authz`]) has let it through, and how the audit log names
//! them.

use lockstep_proto::identity::{OperatorRole, PeerIdentity};

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
