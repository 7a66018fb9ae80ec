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
    make_ca(dir, CA_CERT, CA_KEY, "lockstep fleet CA", validity)
}

/// A self-signed CA at `dir/cert_name` and `dir/key_name` (0600); refuses
/// to overwrite either.
fn make_ca(dir: &Path, cert_name: &str, key_name: &str, common_name: &str, validity: Duration) -> Result<(), PkiError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let (cert_path, key_path) = (dir.join(cert_name), dir.join(key_name));
    for p in [&cert_path, &key_path] {
        if p.exists() {
            return Err(PkiError::Exists { path: p.clone() });
        }
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, common_name);
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
                params.subject_alt_names.push(san(n)?);
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
    let (ca_cert, ca_key) = read_ca(ca_dir, CA_CERT, CA_KEY)?;
    let now = OffsetDateTime::now_utc();
    let issued = issue_pem(
        &ca_cert,
        &ca_key,
        subject,
        now - time::Duration::minutes(5),
        now + validity,
    )?;
    write_issued(&issued, out)
}

fn read_ca(dir: &Path, cert_name: &str, key_name: &str) -> Result<(String, String), PkiError> {
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read_to_string(&p).map_err(io(&p))
    };
    Ok((read(cert_name)?, read(key_name)?))
}

/// Writes `<out>.pem` and `<out>.key` (0600, written first).
fn write_issued(issued: &Issued, out: &Path) -> Result<(PathBuf, PathBuf), PkiError> {
    let cert_path = out.with_extension("pem");
    let key_path = out.with_extension("key");
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    write_private(&key_path, issued.key_pem.as_bytes())?;
    write_public(&cert_path, issued.cert_pem.as_bytes())?;
    Ok((cert_path, key_path))
}

/// etcd's own CA (`lockstep pki etcd init`), never the fleet CA: etcd must
/// trust controllers only, or any enrolled host's certificate would read
/// and rewrite every gate in the firm (docs/ha.md, docs/threat-model.md).
pub const ETCD_CA_CERT: &str = "etcd-ca.pem";
pub const ETCD_CA_KEY: &str = "etcd-ca.key";

/// What an etcd certificate is for.
#[derive(Debug, Clone)]
pub enum EtcdSubject {
    /// A member's certificate, for its client and peer ports both (server
    /// and client usage: members connect to each other).
    Member { name: String, addresses: Vec<String> },
    /// One controller's client certificate to etcd; its common name is the
    /// user etcd's own auth sees (`--client-cert-auth` with auth enabled).
    Client { controller: String },
}

/// Makes etcd's CA in `dir` (etcd-ca.pem, etcd-ca.key), refusing a
/// directory that holds the fleet CA: the two are kept apart on purpose.
pub fn etcd_init(dir: &Path, validity: Duration) -> Result<(), PkiError> {
    if dir.join(CA_KEY).exists() {
        return Err(PkiError::Invalid(format!(
            "{} holds the fleet CA: keep etcd's CA in a directory of its own (e.g. /etc/lockstep/etcd-pki), so that no one who holds the fleet CA's key holds etcd's",
            dir.display()
        )));
    }
    make_ca(dir, ETCD_CA_CERT, ETCD_CA_KEY, "lockstep etcd CA", validity)
}

/// Signs `subject` with the etcd CA in `ca_dir`: writes `<out>.pem` and
/// `<out>.key` (0600). These certificates carry no lockstep identity: a
/// controller or agent would refuse them, as etcd refuses fleet ones.
pub fn etcd_issue(
    ca_dir: &Path,
    subject: &EtcdSubject,
    out: &Path,
    validity: Duration,
) -> Result<(PathBuf, PathBuf), PkiError> {
    let (ca_cert, ca_key) = read_ca(ca_dir, ETCD_CA_CERT, ETCD_CA_KEY)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_cert, KeyPair::from_pem(&ca_key)?)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + validity;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    match subject {
        EtcdSubject::Member { name, addresses } => {
            validate_id(name).map_err(|e| PkiError::Invalid(e.to_string()))?;
            if addresses.is_empty() {
                return Err(PkiError::Invalid(format!(
                    "etcd member {name}: give each address its clients and peers reach it at (--address, IP or DNS name)"
                )));
            }
            params.distinguished_name.push(DnType::CommonName, name.as_str());
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
            for a in addresses {
                params.subject_alt_names.push(san(a)?);
            }
        }
        EtcdSubject::Client { controller } => {
            validate_id(controller).map_err(|e| PkiError::Invalid(e.to_string()))?;
            params.distinguished_name.push(DnType::CommonName, controller.as_str());
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
    }
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    write_issued(
        &Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        },
        out,
    )
}

/// A subject alternative name for `name`: an IP address or a DNS name.
fn san(name: &str) -> Result<SanType, PkiError> {
    Ok(match name.parse::<IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(
            name.try_into()
                .map_err(|_| PkiError::Invalid(format!("{name:?} is not a DNS name or IP address")))?,
        ),
    })
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
        let der = lockstep_link::tls::load_certs(&cert).unwrap();
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
