//! etcd trusts controllers only. Every host and operator holds a
//! certificate of the fleet CA, so an etcd that trusts the fleet CA lets a
//! root attacker on one trading host read and rewrite the control plane
//! (delete a halt, write a release that matches its drifted files, delete
//! the leader key so a new leader loads the forgery). A controller on etcd
//! therefore refuses to start when its etcd client identity or the CA it
//! checks etcd's servers against is, or chains to, the fleet CA.

use std::path::{Path, PathBuf};

use lockstep_link::tls::{TlsPaths, load_certs};
use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

const FIX: &str = "make etcd a CA of its own and a client certificate per controller: \
`lockstep pki etcd init --dir /etc/lockstep/etcd-pki`, then `lockstep pki etcd client --dir /etc/lockstep/etcd-pki --controller <name> --out /etc/lockstep/etcd-client`; \
start etcd with --trusted-ca-file and --peer-trusted-ca-file set to etcd-ca.pem (docs/ha.md, \"etcd trusts controllers only\")";

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("{0}")]
    Tls(#[from] lockstep_link::tls::TlsError),
    #[error("{path}: not an X.509 certificate ({reason})")]
    Unreadable { path: PathBuf, reason: String },
    #[error(
        "store.etcd.ca ({etcd_ca}) is the fleet CA ({fleet_ca}) or is signed by it: etcd's certificates would come from the CA every host and operator holds a certificate of, and etcd would be set up to trust them. Refusing to start; {FIX}"
    )]
    CaIsFleet { etcd_ca: PathBuf, fleet_ca: PathBuf },
    #[error(
        "store.etcd.cert ({cert}) is a certificate of the fleet CA ({fleet_ca}): for etcd to accept it, etcd must trust the fleet CA, and then every enrolled host's certificate reads and rewrites every gate. Refusing to start; {FIX}"
    )]
    ClientIsFleet { cert: PathBuf, fleet_ca: PathBuf },
}

/// Refuses an etcd TLS setup that shares trust with the fleet CA at
/// `fleet_ca` (the controller's `tls.ca`).
pub fn check(fleet_ca: &Path, etcd: &TlsPaths) -> Result<(), TrustError> {
    let fleet = load_certs(fleet_ca)?;
    let under_fleet = |certs: &[CertificateDer<'static>], path: &Path| -> Result<bool, TrustError> {
        for der in certs {
            if fleet.iter().any(|f| f.as_ref() == der.as_ref()) {
                return Ok(true);
            }
            let cert = parse(der, path)?;
            for f in &fleet {
                let issuer = parse(f, fleet_ca)?;
                if cert.issuer() == issuer.subject() && cert.verify_signature(Some(issuer.public_key())).is_ok() {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    };
    if under_fleet(&load_certs(&etcd.ca)?, &etcd.ca)? {
        return Err(TrustError::CaIsFleet {
            etcd_ca: etcd.ca.clone(),
            fleet_ca: fleet_ca.to_path_buf(),
        });
    }
    let client = load_certs(&etcd.cert)?;
    let carries_identity = client
        .first()
        .is_some_and(|leaf| lockstep_proto::identity::PeerIdentity::from_cert_der(leaf).is_ok());
    if carries_identity || under_fleet(&client, &etcd.cert)? {
        return Err(TrustError::ClientIsFleet {
            cert: etcd.cert.clone(),
            fleet_ca: fleet_ca.to_path_buf(),
        });
    }
    Ok(())
}

fn parse<'a>(der: &'a CertificateDer<'_>, path: &Path) -> Result<X509Certificate<'a>, TrustError> {
    X509Certificate::from_der(der.as_ref())
        .map(|(_, c)| c)
        .map_err(|e| TrustError::Unreadable {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use lockstep_proto::identity::OperatorRole;

    use super::*;
    use lockstep_pki::{self as pki, EtcdSubject, Subject};

    const DAY: Duration = Duration::from_secs(86_400);

    struct Setup {
        _dir: tempfile::TempDir,
        fleet_ca: PathBuf,
        etcd_ca: PathBuf,
        etcd_client: (PathBuf, PathBuf),
        viewer: (PathBuf, PathBuf),
    }

    fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let (fleet, etcd) = (dir.path().join("pki"), dir.path().join("etcd-pki"));
        pki::init(&fleet, DAY).unwrap();
        pki::etcd_init(&etcd, DAY).unwrap();
        let etcd_client = pki::etcd_issue(
            &etcd,
            &EtcdSubject::Client {
                controller: "ctl-1".into(),
            },
            &etcd.join("ctl-1"),
            DAY,
        )
        .unwrap();
        let viewer = pki::issue(
            &fleet,
            &Subject::Operator {
                name: "etcd-client".into(),
                role: OperatorRole::Viewer,
            },
            &fleet.join("viewer"),
            DAY,
        )
        .unwrap();
        Setup {
            fleet_ca: fleet.join(pki::CA_CERT),
            etcd_ca: etcd.join(pki::ETCD_CA_CERT),
            etcd_client,
            viewer,
            _dir: dir,
        }
    }

    fn paths(ca: &Path, (cert, key): &(PathBuf, PathBuf)) -> TlsPaths {
        TlsPaths {
            ca: ca.to_path_buf(),
            cert: cert.clone(),
            key: key.clone(),
        }
    }

    #[test]
    fn a_separate_etcd_ca_and_its_client_certificate_pass() {
        let s = setup();
        check(&s.fleet_ca, &paths(&s.etcd_ca, &s.etcd_client)).unwrap();
    }

    #[test]
    fn a_fleet_certificate_as_the_etcd_client_is_refused_naming_the_fix() {
        let s = setup();
        let err = check(&s.fleet_ca, &paths(&s.etcd_ca, &s.viewer))
            .unwrap_err()
            .to_string();
        assert!(err.contains("store.etcd.cert"), "{err}");
        assert!(err.contains("lockstep pki etcd init"), "{err}");
    }

    #[test]
    fn the_fleet_ca_as_etcd_s_ca_is_refused() {
        let s = setup();
        let err = check(&s.fleet_ca, &paths(&s.fleet_ca, &s.etcd_client))
            .unwrap_err()
            .to_string();
        assert!(err.contains("store.etcd.ca"), "{err}");
    }

    #[test]
    fn a_ca_signed_by_the_fleet_ca_is_refused_too() {
        let s = setup();
        // A controller certificate is not a CA, but one signed by the fleet
        // CA stands for any intermediate under it.
        let under = pki::issue(
            s.fleet_ca.parent().unwrap(),
            &Subject::Controller {
                names: vec!["127.0.0.1".into()],
            },
            &s.fleet_ca.parent().unwrap().join("intermediate"),
            DAY,
        )
        .unwrap();
        let err = check(&s.fleet_ca, &paths(&under.0, &s.etcd_client))
            .unwrap_err()
            .to_string();
        assert!(err.contains("store.etcd.ca"), "{err}");
    }

    #[test]
    fn etcd_init_refuses_the_fleet_ca_s_directory() {
        let s = setup();
        let err = pki::etcd_init(s.fleet_ca.parent().unwrap(), DAY)
            .unwrap_err()
            .to_string();
        assert!(err.contains("holds the fleet CA"), "{err}");
    }
}
