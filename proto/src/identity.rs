//! Who a certificate names. Every lockstep certificate carries exactly one
//! `urn:lockstep:` URI in its subjectAltName:
//!
//! - `urn:lockstep:agent:<host>`: the agent of one host;
//! - `urn:lockstep:operator:<role>:<name>`: a person, with a console role;
//! - `urn:lockstep:controller`: the controller.

use std::fmt;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

const PREFIX: &str = "urn:lockstep:";

/// What an operator may do at the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OperatorRole {
    /// Read-only.
    Viewer,
    /// Day-to-day actions: propose releases, later halt/resume and tokens.
    Operator,
    /// Everything an operator does, and approving releases.
    Approver,
}

impl OperatorRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Approver => "approver",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "viewer" => Some(Self::Viewer),
            "operator" => Some(Self::Operator),
            "approver" => Some(Self::Approver),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerIdentity {
    Agent { host: String },
    Operator { name: String, role: OperatorRole },
    Controller,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("certificate is not valid X.509 DER")]
    BadCertificate,
    #[error("certificate has no urn:lockstep: identity in its subjectAltName (issue it with `lockstep pki issue`)")]
    NoIdentity,
    #[error("certificate identity {0:?} is not a lockstep identity")]
    Unrecognised(String),
    #[error("{0:?} is not a valid id: use 1-64 of a-z, 0-9, '-', '_', '.', starting with a letter or digit")]
    BadId(String),
}

/// Host, role and operator names: short, lower-case, safe in paths and URIs.
pub fn validate_id(id: &str) -> Result<(), IdentityError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
        && id.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(IdentityError::BadId(id.to_string()))
    }
}

impl PeerIdentity {
    pub fn uri(&self) -> String {
        match self {
            Self::Agent { host } => format!("{PREFIX}agent:{host}"),
            Self::Operator { name, role } => format!("{PREFIX}operator:{}:{name}", role.as_str()),
            Self::Controller => format!("{PREFIX}controller"),
        }
    }

    pub fn parse_uri(uri: &str) -> Result<Self, IdentityError> {
        let rest = uri
            .strip_prefix(PREFIX)
            .ok_or_else(|| IdentityError::Unrecognised(uri.to_string()))?;
        let parts: Vec<&str> = rest.split(':').collect();
        let id = match parts.as_slice() {
            ["agent", host] => {
                validate_id(host)?;
                Self::Agent { host: host.to_string() }
            }
            ["operator", role, name] => {
                validate_id(name)?;
                let role = OperatorRole::parse(role).ok_or_else(|| IdentityError::Unrecognised(uri.to_string()))?;
                Self::Operator {
                    name: name.to_string(),
                    role,
                }
            }
            ["controller"] => Self::Controller,
            _ => return Err(IdentityError::Unrecognised(uri.to_string())),
        };
        Ok(id)
    }

    /// The identity in a DER certificate's subjectAltName.
    pub fn from_cert_der(der: &[u8]) -> Result<Self, IdentityError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|_| IdentityError::BadCertificate)?;
        let san = cert
            .subject_alternative_name()
            .map_err(|_| IdentityError::BadCertificate)?
            .ok_or(IdentityError::NoIdentity)?;
        let uri = san
            .value
            .general_names
            .iter()
            .find_map(|n| match n {
                GeneralName::URI(u) if u.starts_with(PREFIX) => Some(*u),
                _ => None,
            })
            .ok_or(IdentityError::NoIdentity)?;
        Self::parse_uri(uri)
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Agent { host } => write!(f, "agent {host}"),
            Self::Operator { name, role } => write!(f, "{name} ({})", role.as_str()),
            Self::Controller => write!(f, "controller"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip() {
        for id in [
            PeerIdentity::Agent {
                host: "smars-01".into(),
            },
            PeerIdentity::Operator {
                name: "alice".into(),
                role: OperatorRole::Approver,
            },
            PeerIdentity::Controller,
        ] {
            assert_eq!(PeerIdentity::parse_uri(&id.uri()).unwrap(), id);
        }
    }

    #[test]
    fn bad_ids_are_refused() {
        for bad in ["", "Smars", "a:b", "-x", "a/b", &"x".repeat(65)] {
            assert!(validate_id(bad).is_err(), "{bad:?} accepted");
        }
        assert!(PeerIdentity::parse_uri("urn:lockstep:agent:a:b").is_err());
        assert!(PeerIdentity::parse_uri("urn:lockstep:operator:root:alice").is_err());
        assert!(PeerIdentity::parse_uri("spiffe://x/y").is_err());
    }

    #[test]
    fn identity_is_read_from_a_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["smars-01".to_string()]).unwrap();
        params.subject_alt_names.push(rcgen::SanType::URI(
            rcgen::string::Ia5String::try_from("urn:lockstep:agent:smars-01").unwrap(),
        ));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            PeerIdentity::from_cert_der(cert.der()).unwrap(),
            PeerIdentity::Agent {
                host: "smars-01".into()
            }
        );
    }

    #[test]
    fn certificate_without_identity_is_refused() {
        let params = rcgen::CertificateParams::new(vec!["x".to_string()]).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            PeerIdentity::from_cert_der(cert.der()).unwrap_err(),
            IdentityError::NoIdentity
        );
    }
}
