//! Hosts' TPMs: what an EK and an AK must be, the nonces quotes answer,
//! and each quote checked against the AK bound at enrollment
//! ([`crate::enrollment::tpm`] binds it) and kept as the host's last.
//! The gate rule reads the last quote (`fleet::gate`, rule 8).

pub mod change;
pub mod credential;
pub mod ek_cert;
pub mod quote;
pub mod wire;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use lockstep_proto::identity::PeerIdentity;
use lockstep_proto::pb::{TpmQuoteReply, TpmQuoteRequest};
use ring::rand::SecureRandom;
use tracing::warn;

use crate::config::ControllerConfig;
use crate::error::ApiError;
use crate::gates::board::GateBoard;
use crate::ledger::Ledger;
use crate::store::QuoteRecord;
use change::{QuoteRefused, Quoted};
use wire::EccPublic;

/// A nonce is good for one quote within this long.
const NONCE_TTL_MS: i64 = 60_000;
/// Nonces outstanding per host (a reconnect may ask again before answering).
const NONCES_PER_HOST: usize = 4;

/// Refusals of the TPM calls.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TpmError {
    #[error("host {host} has no TPM-bound identity: enroll it with [identity] tpm set")]
    NotBound { host: String },
    #[error("TPM quote refused: {0}")]
    Refused(String),
    #[error("{0}")]
    BadKey(String),
    #[error("host {host} is TPM-bound and has not quoted yet: its agent quotes before it reports")]
    NoQuoteYet { host: String },
    /// The controller's TPM settings cannot be used (a CA file unreadable).
    #[error("{0}")]
    Config(String),
}

impl crate::error::DomainError for TpmError {
    /// A refused quote is recorded by its change (`tpm.quote_refused`).
    fn audited_here(&self) -> bool {
        matches!(self, Self::Refused(_))
    }

    fn code_and_reason(&self) -> (tonic::Code, &'static str) {
        use lockstep_proto::reason as r;
        use tonic::Code as C;
        match self {
            Self::NotBound { .. } | Self::NoQuoteYet { .. } => (C::FailedPrecondition, r::TPM_NOT_BOUND),
            Self::Refused(_) => (C::PermissionDenied, r::TPM_QUOTE_REFUSED),
            Self::BadKey(_) => (C::InvalidArgument, r::INVALID_ARGUMENT),
            Self::Config(_) => (C::FailedPrecondition, r::INTERNAL),
        }
    }
}

fn require(public: &EccPublic, set: u32, clear: u32, what: &str) -> Result<(), TpmError> {
    if public.attributes & set != set || public.attributes & clear != 0 {
        return Err(TpmError::BadKey(format!(
            "the {what}'s attributes (0x{:08x}) are not those of a TPM-resident {what}",
            public.attributes
        )));
    }
    Ok(())
}

/// An endorsement key as lockstep takes it: the TCG default ECC P-256
/// template (restricted decryption, AES-128-CFB, resident in its TPM).
pub fn check_ek(bytes: &[u8]) -> Result<EccPublic, TpmError> {
    let ek = wire::parse_ecc_public(bytes).map_err(|e| TpmError::BadKey(format!("endorsement key: {e}")))?;
    require(
        &ek,
        wire::FIXED_TPM | wire::FIXED_PARENT | wire::RESTRICTED | wire::DECRYPT,
        wire::SIGN,
        "endorsement key",
    )?;
    if ek.symmetric != Some((wire::ALG_AES, 128, wire::ALG_CFB)) {
        return Err(TpmError::BadKey(
            "the endorsement key's symmetric algorithm is not AES-128-CFB (the TCG default template)".into(),
        ));
    }
    Ok(ek)
}

/// An attestation key: a restricted ECDSA P-256 signing key made in its
/// TPM and unable to leave it. Restricted: it signs only what the TPM
/// itself made (quotes), never a digest handed to it.
pub fn check_ak(bytes: &[u8]) -> Result<EccPublic, TpmError> {
    let ak = wire::parse_ecc_public(bytes).map_err(|e| TpmError::BadKey(format!("attestation key: {e}")))?;
    require(
        &ak,
        wire::FIXED_TPM | wire::FIXED_PARENT | wire::SENSITIVE_DATA_ORIGIN | wire::RESTRICTED | wire::SIGN,
        wire::DECRYPT,
        "attestation key",
    )?;
    if ak.scheme != Some((wire::ALG_ECDSA, wire::ALG_SHA256)) {
        return Err(TpmError::BadKey(
            "the attestation key's scheme is not ECDSA with SHA-256".into(),
        ));
    }
    Ok(ak)
}

/// Whether two secrets are equal, in time that does not depend on where
/// they differ.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An id for a TPM key in messages and records: as an attestation key's.
pub fn key_id(public: &[u8]) -> String {
    lockstep_proto::envelope::key_id(public)
}

struct Nonce {
    value: [u8; 32],
    expires_unix_ms: i64,
}

pub struct Tpm {
    config: Arc<ControllerConfig>,
    ledger: Arc<Ledger>,
    board: Arc<GateBoard>,
    /// host → nonces given and not yet answered. In memory: a new leader
    /// gives new ones (an agent asks again after a failover).
    nonces: Mutex<HashMap<String, VecDeque<Nonce>>>,
    rng: ring::rand::SystemRandom,
}

impl Tpm {
    pub fn new(config: Arc<ControllerConfig>, ledger: Arc<Ledger>, board: Arc<GateBoard>) -> Self {
        Self {
            config,
            ledger,
            board,
            nonces: Mutex::new(HashMap::new()),
            rng: ring::rand::SystemRandom::new(),
        }
    }

    /// The host a TPM call is for, if its identity is TPM-bound.
    fn bound_host(&self, peer: &PeerIdentity) -> Result<(String, String), ApiError> {
        let view = self.ledger.view();
        let (host, role) = view.agent_of(&self.config, peer)?;
        if view.hosts.get(host).is_none_or(|r| r.tpm.is_none()) {
            return Err(TpmError::NotBound { host: host.to_string() }.into());
        }
        Ok((host.to_string(), role.to_string()))
    }

    /// `TpmNonce`: 32 random bytes the host's next quote must carry.
    pub fn nonce(&self, peer: &PeerIdentity) -> Result<Vec<u8>, ApiError> {
        let (host, _) = self.bound_host(peer)?;
        let host = host.as_str();
        let mut value = [0u8; 32];
        self.rng
            .fill(&mut value)
            .map_err(|_| ApiError::Internal("the system random source failed".into()))?;
        let now = self.ledger.now_unix_ms();
        let mut nonces = self.nonces.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded by the inventory: only enrolled, TPM-bound hosts get here.
        let queue = nonces.entry(host.to_string()).or_default();
        queue.retain(|n| n.expires_unix_ms > now);
        if queue.len() >= NONCES_PER_HOST {
            queue.pop_front();
        }
        queue.push_back(Nonce {
            value,
            expires_unix_ms: now + NONCE_TTL_MS,
        });
        Ok(value.to_vec())
    }

    /// Takes `nonce` out of the host's outstanding ones: each answers once.
    fn spend(&self, host: &str, nonce: &[u8], now: i64) -> bool {
        let mut nonces = self.nonces.lock().unwrap_or_else(|p| p.into_inner());
        let Some(queue) = nonces.get_mut(host) else {
            return false;
        };
        let found = queue
            .iter()
            .position(|n| n.expires_unix_ms > now && same_secret(&n.value, nonce));
        found.and_then(|i| queue.remove(i)).is_some()
    }

    /// `TpmQuote`: verifies the quote against the host's bound AK and a
    /// nonce it was given, stores it as the host's last, and answers the
    /// gate it leaves the host with. A refusal is recorded and closes the
    /// gate until the host's next accepted attestation.
    pub async fn quote(&self, peer: &PeerIdentity, req: TpmQuoteRequest) -> Result<TpmQuoteReply, ApiError> {
        let (host, role) = self.bound_host(peer)?;
        let host = host.as_str();
        let now = self.ledger.now_unix_ms();
        let ak_public_hex = self
            .ledger
            .view()
            .hosts
            .get(host)
            .and_then(|r| r.tpm.as_ref())
            .map(|t| t.ak_public_hex.clone())
            .unwrap_or_default();
        let checked = if self.spend(host, &req.nonce, now) {
            hex::decode(&ak_public_hex)
                .map_err(|e| e.to_string())
                .and_then(|ak| check_ak(&ak).map_err(|e| e.to_string()))
                .and_then(|ak| quote::verify(&req, &ak, &req.nonce))
        } else {
            Err("its nonce is not one this controller gave the host in the last minute, or was answered already (a replayed quote)".into())
        };
        let verified = match checked {
            Ok(v) => v,
            Err(reason) => {
                warn!(host, reason = %reason, "refused a TPM quote");
                let refused = QuoteRefused {
                    actor: peer.to_string(),
                    host: host.to_string(),
                    role: role.clone(),
                    reason: reason.clone(),
                    at_unix_ms: now,
                };
                if let Err(e) = self.ledger.commit(refused).await {
                    tracing::error!(host, error = %e, "cannot store a refused quote; the gate closes anyway");
                    self.ledger.note_unstored(host, now, &e);
                }
                self.board.publish_host(&role, host);
                return Err(TpmError::Refused(reason).into());
            }
        };
        let committed = self
            .ledger
            .commit(Quoted {
                actor: peer.to_string(),
                host: host.to_string(),
                role,
                ak_public_hex,
                quote: QuoteRecord {
                    at_unix_ms: now,
                    session_key_hex: hex::encode(&req.session_public_key),
                    boot_id: req.boot_id,
                    pcrs: verified.pcrs,
                    reset_count: verified.reset_count,
                },
            })
            .await?;
        Ok(TpmQuoteReply {
            gate: self.board.after(&committed),
        })
    }
}
