//! The controller's own Ed25519 key, which signs pre-open reports. It is
//! not the fleet CA's key nor a TLS key: a report outlives certificates, and
//! an auditor pins this one key (`lockstep pki report-key`) to check every
//! report the controller ever signed.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

/// Its file in the controller's data dir: a PKCS#8 document, mode 0600.
pub const REPORT_KEY: &str = "report.key";

#[derive(Debug, thiserror::Error)]
pub enum ReportKeyError {
    #[error("report signing key {path}: {cause}")]
    Io { path: PathBuf, cause: std::io::Error },
    #[error("report signing key {path} is readable by group or others (mode {mode:04o}); run `chmod 600 {path}`")]
    NotPrivate { path: PathBuf, mode: u32 },
    #[error("report signing key {path} is not an Ed25519 PKCS#8 key; move it away and the controller makes a new one")]
    Bad { path: PathBuf },
}

pub struct ReportKey {
    pair: Ed25519KeyPair,
    public_hex: String,
}

impl ReportKey {
    /// The key at `path`, made on first use (a controller that has never
    /// signed a report has no key to lose).
    pub fn open_or_create(path: &Path) -> Result<Self, ReportKeyError> {
        if !path.exists() {
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                .map_err(|_| ReportKeyError::Bad { path: path.into() })?;
            crate::pki::write_private(path, pkcs8.as_ref()).map_err(|e| ReportKeyError::Io {
                path: path.into(),
                cause: std::io::Error::other(e.to_string()),
            })?;
            tracing::info!(path = %path.display(), "made the report signing key");
        }
        Self::load(path)
    }

    /// The key at `path`, refused if anyone but its owner can read it.
    pub fn load(path: &Path) -> Result<Self, ReportKeyError> {
        let io = |cause| ReportKeyError::Io {
            path: path.into(),
            cause,
        };
        let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(ReportKeyError::NotPrivate {
                path: path.into(),
                mode,
            });
        }
        let bytes = std::fs::read(path).map_err(io)?;
        let pair = Ed25519KeyPair::from_pkcs8(&bytes).map_err(|_| ReportKeyError::Bad { path: path.into() })?;
        let public_hex = hex::encode(pair.public_key().as_ref());
        Ok(Self { pair, public_hex })
    }

    pub fn public_hex(&self) -> &str {
        &self.public_hex
    }

    /// The key's short name (as agents' keys are named).
    pub fn key_id(&self) -> String {
        lockstep_proto::envelope::key_id(self.pair.public_key().as_ref())
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.pair.sign(message).as_ref().to_vec()
    }
}

/// Whether `signature_hex` is `public_hex`'s Ed25519 signature of `message`.
pub fn signature_holds(public_hex: &str, message: &[u8], signature_hex: &str) -> bool {
    let (Ok(public), Ok(signature)) = (hex::decode(public_hex), hex::decode(signature_hex)) else {
        return false;
    };
    UnparsedPublicKey::new(&ED25519, public)
        .verify(message, &signature)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_is_private_reloads_the_same_and_signs() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join(REPORT_KEY);
        let made = ReportKey::open_or_create(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let again = ReportKey::open_or_create(&path).unwrap();
        assert_eq!(made.public_hex(), again.public_hex());
        let sig = hex::encode(made.sign(b"report"));
        assert!(signature_holds(again.public_hex(), b"report", &sig));
        assert!(!signature_holds(again.public_hex(), b"rePort", &sig));
    }

    #[test]
    fn a_readable_key_is_refused_naming_the_fix() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join(REPORT_KEY);
        ReportKey::open_or_create(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = ReportKey::load(&path).err().unwrap().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }
}
