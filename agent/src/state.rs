//! What the agent keeps on disk between runs: its Ed25519 attestation key and
//! its sequence number. Both are written atomically (temp file, fsync,
//! rename, fsync of the directory), so a crash leaves the old or the new
//! value, never a torn one. The key never leaves this directory.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use lockstep_proto::envelope::Signer;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state {path}: {cause}")]
    Io { path: PathBuf, cause: std::io::Error },
    #[error("key file {path} is readable by group or others (mode {mode:04o}); run `chmod 600 {path}`")]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error(
        "attestation key {path} is not a valid Ed25519 key; re-enroll the host (`lockstep-agent enroll --token`), which makes a new one"
    )]
    BadKey { path: PathBuf },
    #[error(
        "sequence file {path} is corrupt ({content:?}); the agent will not guess a sequence number. Restore it, or re-enroll the host with a new token"
    )]
    BadSeq { path: PathBuf, content: String },
    #[error("sequence number exhausted in {path}")]
    SeqExhausted { path: PathBuf },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |cause| StateError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

/// Creates the state directory (0700) if it does not exist.
pub fn ensure_dir(dir: &Path) -> Result<(), StateError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))
}

/// Writes `bytes` to `path` atomically and durably with mode 0600.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    write_atomic_mode(path, bytes, 0o600, true)
}

/// Writes `bytes` to `path` atomically (readers see the old or the new
/// content, never a mix) with `mode`; `durable` also waits for the disk.
pub fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32, durable: bool) -> Result<(), StateError> {
    let tmp = path.with_extension("tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    if durable {
        f.sync_all().map_err(io_err(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    if let Some(dir) = path.parent().filter(|_| durable) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
    }
    Ok(())
}

/// Refuses a private key that group or others can read, as ssh does.
pub fn check_key_permissions(path: &Path) -> Result<(), StateError> {
    let mode = std::fs::metadata(path).map_err(io_err(path))?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(StateError::KeyPermissions {
            path: path.to_path_buf(),
            mode: mode & 0o7777,
        });
    }
    Ok(())
}

/// Loads the attestation key from `dir/attestation.key`, making one the first time.
pub fn attestation_key(dir: &Path) -> Result<Signer, StateError> {
    let path = dir.join("attestation.key");
    if !path.exists() {
        let pkcs8 = Signer::generate_pkcs8().map_err(|_| StateError::BadKey { path: path.clone() })?;
        write_atomic(&path, &pkcs8)?;
    }
    check_key_permissions(&path)?;
    let pkcs8 = std::fs::read(&path).map_err(io_err(&path))?;
    Signer::from_pkcs8(&pkcs8).map_err(|_| StateError::BadKey { path })
}

/// The persisted sequence number. A number is written to disk before it is
/// used, so after any crash the next one is strictly greater.
pub struct SeqCounter {
    path: PathBuf,
    last: u64,
}

impl SeqCounter {
    pub fn load(dir: &Path) -> Result<Self, StateError> {
        let path = dir.join("seq");
        let last = match std::fs::read_to_string(&path) {
            Ok(text) => text.trim().parse().map_err(|_| StateError::BadSeq {
                path: path.clone(),
                content: text.chars().take(40).collect(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io_err(&path)(e)),
        };
        Ok(Self { path, last })
    }

    /// The next number, durably recorded as used.
    pub fn reserve(&mut self) -> Result<u64, StateError> {
        let next = self.last.checked_add(1).ok_or_else(|| StateError::SeqExhausted {
            path: self.path.clone(),
        })?;
        write_atomic(&self.path, format!("{next}\n").as_bytes())?;
        self.last = next;
        Ok(next)
    }

    pub fn last(&self) -> u64 {
        self.last
    }
}

/// This boot's id, so the controller can tell a reboot from a restart.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_survives_restarts_and_only_grows() {
        let d = tempfile::tempdir().unwrap();
        let mut s = SeqCounter::load(d.path()).unwrap();
        assert_eq!(s.reserve().unwrap(), 1);
        assert_eq!(s.reserve().unwrap(), 2);
        drop(s);
        let mut s = SeqCounter::load(d.path()).unwrap();
        assert_eq!(s.last(), 2);
        assert_eq!(s.reserve().unwrap(), 3);
    }

    #[test]
    fn corrupt_seq_is_an_error_not_a_reset() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("seq"), "garbage").unwrap();
        let err = SeqCounter::load(d.path()).err().unwrap().to_string();
        assert!(err.contains("corrupt"), "{err}");
    }

    #[test]
    fn key_is_created_0600_and_reloaded_identically() {
        let d = tempfile::tempdir().unwrap();
        let a = attestation_key(d.path()).unwrap();
        let mode = std::fs::metadata(d.path().join("attestation.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = attestation_key(d.path()).unwrap();
        assert_eq!(a.public_key(), b.public_key());
    }

    #[test]
    fn group_readable_key_is_refused_with_the_fix() {
        let d = tempfile::tempdir().unwrap();
        attestation_key(d.path()).unwrap();
        let p = d.path().join("attestation.key");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = attestation_key(d.path()).err().unwrap().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        assert!(err.contains("0640"), "{err}");
    }
}
