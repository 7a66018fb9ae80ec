//! TLS for every lockstep connection: rustls with the ring provider, TLS 1.3
//! only, both sides authenticated against the fleet CA (the gRPC channel on
//! top is [`crate::failover`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "cannot read {what} from {path}: {reason}. Check the path in the config; an agent gets its certificate with `lockstep-agent enroll --token`, others with `lockstep pki issue`"
    )]
    Read {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{path} holds no {what}")]
    Empty { what: &'static str, path: PathBuf },
    #[error("TLS setup with {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("controller address {addr:?} is not host:port")]
    Address { addr: String },
    #[error("server name {name:?} is not a valid DNS name or IP address")]
    ServerName { name: String },
    #[error("cannot reach the controller at {addr}: {reason}")]
    Connect { addr: String, reason: String },
}

/// Where a party's TLS material lives.
#[derive(Debug, Clone)]
pub struct TlsPaths {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read_err = |reason: String| TlsError::Read {
        what: "certificates",
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| read_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what: "PEM certificate",
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Read {
        what: "a private key",
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// The CA certificates in a PEM file, as a trust store.
pub fn load_roots(ca: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca)? {
        roots.add(cert).map_err(|e| TlsError::Config {
            path: ca.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

fn config_err(path: &Path) -> impl Fn(rustls::Error) -> TlsError + '_ {
    move |e| TlsError::Config {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// The controller's side. A client certificate, when presented, must chain
/// to the fleet CA or the handshake fails; a connection without one is let
/// through only so that it can enroll (every other call refuses it: see
/// the controller's `service` module).
pub fn server_config(paths: &TlsPaths) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(load_roots(&paths.ca)?), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Config {
            path: paths.ca.clone(),
            reason: e.to_string(),
        })?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_err(&paths.ca))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(&paths.cert)?, load_key(&paths.key)?)
        .map_err(config_err(&paths.key))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The controller's web board: its certificate, TLS 1.3, HTTP/1.1, and no
/// client certificate (browsers log in with a one-time link instead).
pub fn web_server_config(paths: &TlsPaths) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_err(&paths.cert))?
        .with_no_client_auth()
        .with_single_cert(load_certs(&paths.cert)?, load_key(&paths.key)?)
        .map_err(config_err(&paths.key))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// An agent's or operator's side: presents its certificate, trusts only the fleet CA.
pub fn client_config(paths: &TlsPaths) -> Result<Arc<ClientConfig>, TlsError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_err(&paths.ca))?
        .with_root_certificates(load_roots(&paths.ca)?)
        .with_client_auth_cert(load_certs(&paths.cert)?, load_key(&paths.key)?)
        .map_err(config_err(&paths.key))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// An enrolling agent's side: no certificate yet, so it only authenticates
/// the controller against the fleet CA.
pub fn enroll_client_config(ca: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_err(ca))?
        .with_root_certificates(load_roots(ca)?)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The client certificate an agent presents, replaceable while it runs: a
/// renewed certificate is used by the next connection, and connections
/// already open (the directive stream) carry on undisturbed.
#[derive(Debug)]
pub struct ReloadableCert {
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
}

impl ReloadableCert {
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(Self {
            current: std::sync::RwLock::new(certified_key(cert, key)?),
        }))
    }

    /// Reads the certificate and key again (after they were replaced).
    pub fn reload(&self, cert: &Path, key: &Path) -> Result<(), TlsError> {
        let fresh = certified_key(cert, key)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }
}

fn certified_key(cert: &Path, key: &Path) -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
    let signing = provider()
        .key_provider
        .load_private_key(load_key(key)?)
        .map_err(config_err(key))?;
    let ck = rustls::sign::CertifiedKey::new(load_certs(cert)?, signing);
    ck.keys_match().map_err(|e| TlsError::Config {
        path: key.to_path_buf(),
        reason: format!("does not match the certificate {}: {e}", cert.display()),
    })?;
    Ok(Arc::new(ck))
}

impl rustls::client::ResolvesClientCert for ReloadableCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|p| p.into_inner()).clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Like [`client_config`], with a certificate that can be replaced while running.
pub fn reloadable_client_config(paths: &TlsPaths) -> Result<(Arc<ClientConfig>, Arc<ReloadableCert>), TlsError> {
    let cert = ReloadableCert::load(&paths.cert, &paths.key)?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_err(&paths.ca))?
        .with_root_certificates(load_roots(&paths.ca)?)
        .with_client_cert_resolver(cert.clone());
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok((Arc::new(config), cert))
}

/// (not_before, not_after) of the first certificate in a PEM file, in Unix ms.
pub fn validity_unix_ms(cert: &Path) -> Result<(i64, i64), TlsError> {
    let certs = load_certs(cert)?;
    let first = certs.first().ok_or_else(|| TlsError::Empty {
        what: "certificate",
        path: cert.to_path_buf(),
    })?;
    let (_, parsed) = x509_parser::parse_x509_certificate(first).map_err(|e| TlsError::Config {
        path: cert.to_path_buf(),
        reason: e.to_string(),
    })?;
    let v = parsed.validity();
    Ok((v.not_before.timestamp() * 1000, v.not_after.timestamp() * 1000))
}

/// Splits "host:port" (or "[v6]:port") and gives the name to verify the
/// controller's certificate against when none is configured.
pub fn default_server_name(addr: &str) -> Result<String, TlsError> {
    let bad = || TlsError::Address { addr: addr.to_string() };
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    Ok(host.trim_start_matches('[').trim_end_matches(']').to_string())
}

/// One controller an agent may talk to: where, and the name its
/// certificate must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub address: String,
    pub server_name: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_name_defaults_to_the_host_part() {
        assert_eq!(default_server_name("127.0.0.1:7443").unwrap(), "127.0.0.1");
        assert_eq!(default_server_name("[::1]:7443").unwrap(), "::1");
        assert_eq!(default_server_name("ctl.example:1").unwrap(), "ctl.example");
        assert!(default_server_name("ctl.example").is_err());
        assert!(default_server_name("ctl:http").is_err());
    }

    #[test]
    fn missing_files_name_the_path() {
        let err = load_certs(Path::new("/nonexistent/ca.pem")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }
}
