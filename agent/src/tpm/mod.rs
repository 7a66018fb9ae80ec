//! The host's TPM (`[identity] tpm`): the attestation key (AK) made under
//! the TPM's endorsement key at enrollment and kept there (its blob on
//! disk loads in that TPM only), the credentials the controller's
//! challenge activates, the session PCR that binds this run's signing key,
//! and quotes. Each call opens the TPM, does its work, flushes what it
//! loaded and closes it, one call at a time: no transient object outlives
//! a call, with or without a resource manager, and the TPM is free for
//! other users between calls. Built only with the `tpm` cargo feature
//! (it links Debian's libtss2); without it a configured TPM is refused.

#[cfg(feature = "tpm")]
mod device;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::TpmSettings;

/// What a call to the TPM may take before the agent gives up on it (a TPM
/// that stops answering must not hold the agent).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, thiserror::Error)]
pub enum TpmError {
    #[error(
        "[identity] tpm is set but this lockstep-agent was built without TPM support: install a build with the `tpm` feature (it needs libtss2), or remove [identity] tpm"
    )]
    NotBuilt,
    #[error("TPM ({tcti}): {what}: {cause}")]
    Tss {
        tcti: String,
        what: &'static str,
        cause: String,
    },
    #[error("no TPM attestation key at {}: enroll this host with [identity] tpm set", .path.display())]
    NoAk { path: PathBuf },
    #[error(
        "the attestation key in {} does not load in this TPM ({cause}): it was made by another TPM (a state directory copied from another host?); enroll again",
        .path.display()
    )]
    ForeignAk { path: PathBuf, cause: String },
    #[error("{} is not an attestation key blob: {why}", .path.display())]
    BadBlob { path: PathBuf, why: String },
    #[error("TPM ({tcti}) did not answer within {}s", CALL_TIMEOUT.as_secs())]
    Timeout { tcti: String },
}

/// The AK as the TPM gave it: TPMT_PUBLIC and its TPM-wrapped private part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AkBlob {
    pub public: Vec<u8>,
    pub private: Vec<u8>,
}

impl AkBlob {
    const FILE: &'static str = "tpm-ak.bin";

    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(Self::FILE)
    }

    /// Two u32-length-prefixed parts.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for part in [&self.public, &self.private] {
            out.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    pub fn load(state_dir: &Path) -> Result<Self, TpmError> {
        let path = Self::path(state_dir);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(TpmError::NoAk { path }),
            Err(e) => {
                return Err(TpmError::BadBlob {
                    path,
                    why: e.to_string(),
                });
            }
        };
        let mut parts = Vec::new();
        let mut rest = bytes.as_slice();
        for _ in 0..2 {
            let bad = || TpmError::BadBlob {
                path: path.clone(),
                why: "truncated".into(),
            };
            let (len, tail) = rest.split_at_checked(4).ok_or_else(bad)?;
            let len = usize::try_from(u32::from_be_bytes(len.try_into().map_err(|_| bad())?)).map_err(|_| bad())?;
            let (part, tail) = tail.split_at_checked(len).ok_or_else(bad)?;
            parts.push(part.to_vec());
            rest = tail;
        }
        let private = parts.pop().unwrap_or_default();
        let public = parts.pop().unwrap_or_default();
        Ok(Self { public, private })
    }

    pub fn save(&self, state_dir: &Path) -> Result<(), crate::state::StateError> {
        crate::state::write_atomic_mode(&Self::path(state_dir), &self.encode(), 0o600, true)
    }
}

/// Made at enrollment: the EK's and the new AK's public parts.
#[derive(Debug, Clone)]
pub struct EnrollKeys {
    pub ek_public: Vec<u8>,
    /// The EK certificate in the TPM's NV (DER; empty: none).
    pub ek_certificate: Vec<u8>,
    pub ak: AkBlob,
}

/// One quote: the signed TPMS_ATTEST, its TPMT_SIGNATURE, and the values
/// of the PCRs it covers ([`lockstep_proto::tpm::quoted_pcrs`]).
#[derive(Debug, Clone)]
pub struct Quote {
    pub attest: Vec<u8>,
    pub signature: Vec<u8>,
    pub pcrs: Vec<(u32, Vec<u8>)>,
}

impl Quote {
    /// The `TpmQuote` call that sends this quote, answering `nonce`, for
    /// the session key it binds.
    pub fn into_request(
        self,
        nonce: Vec<u8>,
        session_public_key: Vec<u8>,
        boot_id: String,
    ) -> lockstep_proto::pb::TpmQuoteRequest {
        lockstep_proto::pb::TpmQuoteRequest {
            nonce,
            attest: self.attest,
            signature: self.signature,
            pcrs: self
                .pcrs
                .into_iter()
                .map(|(index, sha256)| lockstep_proto::pb::PcrValue { index, sha256 })
                .collect(),
            session_public_key,
            boot_id,
        }
    }
}

/// The host's TPM, one call at a time.
#[derive(Clone)]
pub struct Tpm {
    tcti: String,
    state_dir: PathBuf,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl Tpm {
    pub fn new(settings: &TpmSettings, state_dir: &Path) -> Self {
        Self {
            tcti: settings.tcti.clone(),
            state_dir: state_dir.to_path_buf(),
            lock: Arc::default(),
        }
    }

    /// Runs `f` on a blocking thread, after any call before it, within
    /// [`CALL_TIMEOUT`].
    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&str) -> Result<T, TpmError> + Send + 'static,
    ) -> Result<T, TpmError> {
        let _one = self.lock.lock().await;
        let tcti = self.tcti.clone();
        let task = tokio::task::spawn_blocking(move || f(&tcti));
        match tokio::time::timeout(CALL_TIMEOUT, task).await {
            Ok(Ok(r)) => r,
            Ok(Err(join)) => Err(TpmError::Tss {
                tcti: self.tcti.clone(),
                what: "the call",
                cause: join.to_string(),
            }),
            Err(_) => Err(TpmError::Timeout {
                tcti: self.tcti.clone(),
            }),
        }
    }

    /// A new AK under the EK (enrollment); saved by the caller once the
    /// controller accepted it.
    pub async fn make_ak(&self) -> Result<EnrollKeys, TpmError> {
        self.call(backend::make_ak).await
    }

    /// ActivateCredential of each credential for `ak`: the secrets, joined.
    pub async fn activate(&self, ak: AkBlob, credentials: Vec<(Vec<u8>, Vec<u8>)>) -> Result<Vec<u8>, TpmError> {
        self.call(move |tcti| backend::activate(tcti, &ak, &credentials)).await
    }

    /// Resets the session PCR and extends it with `binding`.
    pub async fn bind_session(&self, binding: [u8; 32]) -> Result<(), TpmError> {
        self.call(move |tcti| backend::bind_session(tcti, binding)).await
    }

    /// A quote over the boot and session PCRs with the AK in the state
    /// directory, answering `nonce`.
    pub async fn quote(&self, nonce: Vec<u8>) -> Result<Quote, TpmError> {
        let ak = AkBlob::load(&self.state_dir)?;
        let path = AkBlob::path(&self.state_dir);
        self.call(move |tcti| backend::quote(tcti, &ak, &path, &nonce)).await
    }
}

#[cfg(feature = "tpm")]
use device as backend;

/// Without the `tpm` feature every call says so.
#[cfg(not(feature = "tpm"))]
mod backend {
    use super::{AkBlob, EnrollKeys, Quote, TpmError};

    pub fn make_ak(_: &str) -> Result<EnrollKeys, TpmError> {
        Err(TpmError::NotBuilt)
    }
    pub fn activate(_: &str, _: &AkBlob, _: &[(Vec<u8>, Vec<u8>)]) -> Result<Vec<u8>, TpmError> {
        Err(TpmError::NotBuilt)
    }
    pub fn bind_session(_: &str, _: [u8; 32]) -> Result<(), TpmError> {
        Err(TpmError::NotBuilt)
    }
    pub fn quote(_: &str, _: &AkBlob, _: &std::path::Path, _: &[u8]) -> Result<Quote, TpmError> {
        Err(TpmError::NotBuilt)
    }
}

/// Whether this build can use a TPM.
pub const BUILT_WITH_TPM: bool = cfg!(feature = "tpm");
