//! The controller's own Ed25519 key, which signs pre-open reports. It is
//! not the fleet CA's key nor a TLS key: a report outlives certificates, and
//! an auditor pins this one key (`lockstep pki report-key`) to check every
//! report the controller ever signed.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

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
    /// A new key, and its PKCS#8 bytes for whoever keeps it (the controller
    /// writes them 0600 in its data_dir).
    pub fn generate() -> Result<(Self, Vec<u8>), ReportKeyError> {
        let bad = || ReportKeyError::Bad {
            path: "a new key".into(),
        };
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).map_err(|_| bad())?;
        let key = Self::from_pkcs8(pkcs8.as_ref(), Path::new("a new key"))?;
        Ok((key, pkcs8.as_ref().to_vec()))
    }

    /// The key in `pkcs8`, read from `path`.
    pub fn from_pkcs8(pkcs8: &[u8], path: &Path) -> Result<Self, ReportKeyError> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|_| ReportKeyError::Bad { path: path.into() })?;
        let public_hex = hex::encode(pair.public_key().as_ref());
        Ok(Self { pair, public_hex })
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
    fn a_generated_key_signs_and_only_its_signature_holds() {
        let (made, pkcs8) = ReportKey::generate().unwrap();
        let again = ReportKey::from_pkcs8(&pkcs8, Path::new("memory")).unwrap();
        assert_eq!(made.public_hex(), again.public_hex());
        let sig = hex::encode(made.sign(b"report"));
        assert!(signature_holds(again.public_hex(), b"report", &sig));
        assert!(!signature_holds(again.public_hex(), b"rePort", &sig));
    }

    #[test]
    fn a_readable_key_is_refused_naming_the_fix() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join(REPORT_KEY);
        let (_, pkcs8) = ReportKey::generate().unwrap();
        std::fs::write(&path, pkcs8).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = ReportKey::load(&path).err().unwrap().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }
}
