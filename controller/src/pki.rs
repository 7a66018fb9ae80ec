//! The fleet CA: `lockstep pki init` makes it, `lockstep pki issue` signs
//! controller, operator and agent certificates, each carrying its lockstep
//! identity as a `urn:lockstep:` URI (see `lockstep_proto::identity`).
//! Private keys are written 0600 and never printed.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lockstep_proto::identity::{OperatorRole, PeerIdentity, validate_id};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: std::io::Error },
    #[error("{path} already exists; refusing to overwrite a CA (move it away first if you really mean to)")]
    Exists { path: PathBuf },
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{0}")]
    Invalid(String),
}

pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";

/// What a certificate is for.
#[derive(Debug, Clone)]
pub enum Subject {
    Controller { names: Vec<String> },
    Operator { name: String, role: OperatorRole },
    Agent { host: String },
}

impl Subject {
    fn identity(&self) -> PeerIdentity {
        match self {
            Self::Controller { .. } => PeerIdentity::Controller,
            Self::Operator { name, role } => PeerIdentity::Operator {
                name: name.clone(),
                role: *role,
            },
            Self::Agent { host } => PeerIdentity::Agent { host: host.clone() },
        }
    }

    fn common_name(&self) -> String {
        match self {
            Self::Controller { .. } => "lockstep-controller".into(),
            Self::Operator { name, .. } => name.clone(),
            Self::Agent { host } => host.clone(),
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |cause| PkiError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

/// Writes a file that holds a private key: 0600 from the moment it exists.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    f.write_all(contents).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

fn write_public(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    std::fs::write(path, contents).map_err(io(path))
}

/// Makes a new fleet CA in `dir` (ca.pem, ca.key).
pub fn init(dir: &Path, validity: Duration) -> Result<(), PkiError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
    for p in [&cert_path, &key_path] {
        if p.exists() {
            return Err(PkiError::Exists { path: p.clone() });
        }
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, "lockstep fleet CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + validity;
    let cert = params.self_signed(&key)?;
    write_private(&key_path, key.serialize_pem().as_bytes())?;
    write_public(&cert_path, cert.pem().as_bytes())
}

/// A certificate and its key, as PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Signs a certificate for `subject` valid from `not_before` to `not_after`
/// (tests use this to make expired and not-yet-valid certificates).
pub fn issue_pem(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    subject: &Subject,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<Issued, PkiError> {
    let ca_key = KeyPair::from_pem(ca_key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, ca_key)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, subject.common_name());
    params.not_before = not_before;
    params.not_after = not_after;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let uri = subject.identity().uri();
    params.subject_alt_names.push(SanType::URI(
        uri.as_str()
            .try_into()
            .map_err(|_| PkiError::Invalid(format!("bad identity URI {uri}")))?,
    ));
    match subject {
        Subject::Controller { names } => {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            for n in names {
                let san = match n.parse::<IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(
                        n.as_str()
                            .try_into()
                            .map_err(|_| PkiError::Invalid(format!("{n:?} is not a DNS name or IP address")))?,
                    ),
                };
                params.subject_alt_names.push(san);
            }
        }
        Subject::Operator { name, .. } => {
            validate_id(name).map_err(|e| PkiError::Invalid(e.to_string()))?;
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        Subject::Agent { host } => {
            validate_id(host).map_err(|e| PkiError::Invalid(e.to_string()))?;
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
    }
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Signs an agent's certificate request: the key is the one in the request
/// (born on the host, never sent), everything else (the host identity, the
/// dates, the usages) is decided here, whatever the request asked for.
/// `not_before` is the controller's now: only the controller checks agent
/// certificates, with the same clock.
pub fn sign_agent_csr(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    csr_der: &[u8],
    host: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<String, PkiError> {
    validate_id(host).map_err(|e| PkiError::Invalid(e.to_string()))?;
    let ca_key = KeyPair::from_pem(ca_key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, ca_key)?;
    let der = rustls_pki_types::CertificateSigningRequestDer::from(csr_der.to_vec());
    let mut csr = rcgen::CertificateSigningRequestParams::from_der(&der)
        .map_err(|e| PkiError::Invalid(format!("the certificate request is not valid PKCS#10: {e}")))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, host);
    params.not_before = not_before;
    params.not_after = not_after;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let uri = PeerIdentity::Agent { host: host.into() }.uri();
    params.subject_alt_names.push(SanType::URI(
        uri.as_str()
            .try_into()
            .map_err(|_| PkiError::Invalid(format!("bad identity URI {uri}")))?,
    ));
    csr.params = params;
    Ok(csr.signed_by(&issuer)?.pem())
}

/// Signs a certificate with the CA in `ca_dir`, valid from now for
/// `validity`, and writes `<out>.pem` and `<out>.key` (0600).
pub fn issue(ca_dir: &Path, subject: &Subject, out: &Path, validity: Duration) -> Result<(PathBuf, PathBuf), PkiError> {
    let read = |name: &str| {
        let p = ca_dir.join(name);
        std::fs::read_to_string(&p).map_err(io(&p))
    };
    let (ca_cert, ca_key) = (read(CA_CERT)?, read(CA_KEY)?);
    let now = OffsetDateTime::now_utc();
    let issued = issue_pem(
        &ca_cert,
        &ca_key,
        subject,
        now - time::Duration::minutes(5),
        now + validity,
    )?;
    let cert_path = out.with_extension("pem");
    let key_path = out.with_extension("key");
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    write_private(&key_path, issued.key_pem.as_bytes())?;
    write_public(&cert_path, issued.cert_pem.as_bytes())?;
    Ok((cert_path, key_path))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn issued_certificates_carry_their_identity_and_keys_are_private() {
        let d = tempfile::tempdir().unwrap();
        init(d.path(), Duration::from_secs(3600)).unwrap();
        let subject = Subject::Operator {
            name: "alice".into(),
            role: OperatorRole::Approver,
        };
        let (cert, key) = issue(d.path(), &subject, &d.path().join("alice"), Duration::from_secs(60)).unwrap();
        let der = lockstep_proto::tls::load_certs(&cert).unwrap();
        assert_eq!(PeerIdentity::from_cert_der(&der[0]).unwrap(), subject.identity());
        for k in [key, d.path().join(CA_KEY)] {
            assert_eq!(
                std::fs::metadata(&k).unwrap().permissions().mode() & 0o777,
                0o600,
                "{}",
                k.display()
            );
        }
    }

    #[test]
    fn init_refuses_to_overwrite_a_ca() {
        let d = tempfile::tempdir().unwrap();
        init(d.path(), Duration::from_secs(3600)).unwrap();
        let err = init(d.path(), Duration::from_secs(3600)).unwrap_err().to_string();
        assert!(err.contains("refusing to overwrite"), "{err}");
    }
}
