//! Identity lifecycle: one-time join tokens, enrollment (a host proves it
//! holds a token and gets a certificate for a key born on it, and its
//! attestation key is pinned), renewal over mTLS, and revocation.

pub mod change;
pub mod tpm;

use std::sync::Arc;

use lockstep_proto::envelope;
use lockstep_proto::identity::PeerIdentity;
use lockstep_proto::identity::validate_id;
use lockstep_proto::pb;
use time::OffsetDateTime;
use tracing::{info, warn};

use crate::audit::operator::Operator;
use crate::config::ControllerConfig;
use crate::enrollment::change::{Enrolled, Revoked, TokenCreated};
use crate::error::ApiError;
use crate::fleet::auth::AuthError;
use crate::gates::board::GateBoard;
use crate::ledger::Ledger;
use crate::store::{Revocation, TokenRecord};
use lockstep_evidence::chain::AuditEvent;
use lockstep_evidence::time::rfc3339;

/// Tokens look like `lst1_<64 hex>`: 256 random bits.
const TOKEN_PREFIX: &str = "lst1_";

fn token_hash(token: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, token.trim().as_bytes()))
}

fn to_time(unix_ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

pub struct Enrollment {
    config: Arc<ControllerConfig>,
    ledger: Arc<Ledger>,
    board: Arc<GateBoard>,
    challenges: tpm::Challenges,
}

impl Enrollment {
    pub fn new(config: Arc<ControllerConfig>, ledger: Arc<Ledger>, board: Arc<GateBoard>) -> Self {
        Self {
            config,
            ledger,
            board,
            challenges: tpm::Challenges::default(),
        }
    }

    /// `TpmChallenge`: credentials for the AK the host made, to its EK;
    /// asked with the join token (not spent), before `Enroll`.
    pub async fn tpm_challenge(&self, req: pb::TpmChallengeRequest) -> Result<pb::TpmChallengeReply, ApiError> {
        validate_id(&req.host).map_err(|e| EnrollError::BadHostName(e.to_string()))?;
        let probe = Enrolled {
            host: req.host.clone(),
            token_hash: token_hash(&req.token),
            pinned_key_hex: String::new(),
            detail: String::new(),
            tpm: Some(crate::store::TpmBinding {
                ek_public_hex: hex::encode(&req.ek_public),
                ..Default::default()
            }),
        };
        self.ledger
            .check(|staged| crate::enrollment::change::check_enrollment(staged, &probe))
            .await?;
        let made = self.challenges.make(
            &req,
            probe.token_hash,
            &self.config.tpm_ek_ca,
            self.ledger.now_unix_ms(),
        );
        match made {
            // Keys that are not a TPM's, or an EK no configured vendor vouches for.
            Err(e)
                if e.domain::<crate::tpm::TpmError>()
                    .is_some_and(|t| matches!(t, crate::tpm::TpmError::BadKey(_))) =>
            {
                let why = e.to_string();
                warn!(host = %req.host, reason = %why, "TPM enrollment refused");
                self.ledger
                    .record(vec![AuditEvent {
                        actor: "unauthenticated".into(),
                        action: lockstep_evidence::action::AuditAction::EnrollRefused,
                        host: req.host.clone(),
                        role: String::new(),
                        detail: why.clone(),
                        facts: String::new(),
                    }])
                    .await?;
                Err(EnrollError::TpmProofRefused(why).into())
            }
            other => other,
        }
    }

    /// `lockstep token create`: a one-time token for `host` in `role`.
    pub async fn create_token(
        &self,
        who: &Operator,
        req: &pb::CreateTokenRequest,
    ) -> Result<pb::CreateTokenReply, ApiError> {
        validate_id(&req.host).map_err(|e| EnrollError::BadHostName(e.to_string()))?;
        match self.config.inventory.get(&req.host) {
            Some(role) if *role == req.role => {}
            Some(role) => {
                return Err(EnrollError::HostInOtherRole {
                    host: req.host.clone(),
                    role: role.clone(),
                    wanted: req.role.clone(),
                }
                .into());
            }
            None => {
                return Err(EnrollError::NotInInventory { host: req.host.clone() }.into());
            }
        }
        let ttl_ms = if req.ttl_ms > 0 {
            req.ttl_ms
        } else {
            i64::try_from(self.config.enrollment.token_ttl.as_millis()).unwrap_or(i64::MAX)
        };
        let mut secret = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
            .map_err(|_| ApiError::Internal("the system random source failed".into()))?;
        let token = format!("{TOKEN_PREFIX}{}", hex::encode(secret));
        let now = self.ledger.now_unix_ms();
        let record = TokenRecord {
            hash_hex: token_hash(&token),
            host: req.host.clone(),
            role: req.role.clone(),
            created_by: who.actor(),
            created_at_unix_ms: now,
            expires_at_unix_ms: now.saturating_add(ttl_ms),
            used_at_unix_ms: 0,
            allow_new_tpm: req.allow_new_tpm,
        };
        self.ledger
            .commit(TokenCreated {
                actor: who.actor(),
                token: record.clone(),
            })
            .await?;
        Ok(pb::CreateTokenReply {
            token,
            host: record.host,
            role: record.role,
            expires_at_unix_ms: record.expires_at_unix_ms,
        })
    }

    fn signing_ca(&self) -> Result<(String, String), ApiError> {
        let e = &self.config.enrollment;
        let Some(key_path) = &e.ca_key else {
            return Err(EnrollError::NoCa.into());
        };
        let read = |p: &std::path::Path| {
            std::fs::read_to_string(p)
                .map_err(|err| ApiError::Internal(format!("cannot read {}: {err} (enrollment config)", p.display())))
        };
        Ok((read(&e.ca_cert)?, read(key_path)?))
    }

    fn sign(&self, csr_der: &[u8], host: &str, now: i64) -> Result<(String, i64, i64), ApiError> {
        let (ca_cert, ca_key) = self.signing_ca()?;
        let validity = i64::try_from(self.config.enrollment.cert_validity.as_millis()).unwrap_or(i64::MAX);
        let not_after = now.saturating_add(validity);
        let pem = lockstep_pki::sign_agent_csr(&ca_cert, &ca_key, csr_der, host, to_time(now), to_time(not_after))
            .map_err(|e| EnrollError::BadCsr(e.to_string()))?;
        // X.509 times have whole seconds.
        Ok((pem, now / 1000 * 1000, not_after / 1000 * 1000))
    }

    /// `lockstep-agent enroll`: a token buys a certificate for the key in
    /// the request, and pins the attestation key. Served without a client
    /// certificate, so everything is checked against the stored token.
    pub async fn enroll(&self, req: pb::EnrollRequest) -> Result<pb::EnrollReply, ApiError> {
        let host = req.host.clone();
        validate_id(&host).map_err(|e| EnrollError::BadHostName(e.to_string()))?;
        if req.attestation_public_key.len() != 32 {
            return Err(AuthError::BadKeyLength.into());
        }
        self.signing_ca()?;
        let now = self.ledger.now_unix_ms();
        let key_id = envelope::key_id(&req.attestation_public_key);
        let token_hash = token_hash(&req.token);
        let tpm = match &req.tpm {
            None => None,
            Some(proof) => match self.challenges.check(proof, &host, &token_hash, now) {
                Ok(binding) => Some(binding),
                Err(why) => {
                    warn!(host, reason = %why, "TPM enrollment refused");
                    let event = AuditEvent {
                        actor: "unauthenticated".into(),
                        action: lockstep_evidence::action::AuditAction::EnrollRefused,
                        host: host.clone(),
                        role: String::new(),
                        detail: why.clone(),
                        facts: String::new(),
                    };
                    self.ledger.record(vec![event]).await?;
                    return Err(EnrollError::TpmProofRefused(why).into());
                }
            },
        };
        let mut enrolled = Enrolled {
            host: host.clone(),
            token_hash,
            pinned_key_hex: hex::encode(&req.attestation_public_key),
            detail: String::new(),
            tpm,
        };
        // The token is checked before a certificate is made, and again by
        // the commit that spends it: two enrollments with one token cannot
        // both succeed, and the loser's certificate is never handed out.
        if let Err(e) = self
            .ledger
            .check(|staged| crate::enrollment::change::check_enrollment(staged, &enrolled))
            .await
        {
            if let Some(EnrollError::TokenRefused(why)) = e.domain::<EnrollError>() {
                warn!(host, reason = %why, "enrollment refused");
            }
            return Err(e);
        }
        let (cert_pem, not_before, not_after) = self.sign(&req.csr_der, &host, now)?;
        enrolled.detail = format!(
            "attestation key {key_id} pinned; certificate valid until {}",
            rfc3339(not_after)
        );
        if let Some(b) = &enrolled.tpm {
            let ak = hex::decode(&b.ak_public_hex).unwrap_or_default();
            enrolled
                .detail
                .push_str(&format!("; TPM attestation key {} activated", crate::tpm::key_id(&ak)));
        }
        let change = enrolled;
        let committed = match self.ledger.commit(change).await {
            Ok(c) => c,
            Err(e) => {
                if let Some(EnrollError::TokenRefused(why)) = e.domain::<EnrollError>() {
                    warn!(host, reason = %why, "enrollment refused");
                }
                return Err(e);
            }
        };
        let role = committed.host().map(|h| h.role.clone()).unwrap_or_default();
        self.board.after(&committed);
        info!(host = %host, key_id = %key_id, "host enrolled");
        Ok(pb::EnrollReply {
            cert_pem,
            role,
            key_id,
            not_before_unix_ms: not_before,
            not_after_unix_ms: not_after,
        })
    }

    /// A fresh certificate for an enrolled, unrevoked agent, over mTLS with
    /// its current one.
    pub async fn renew(&self, peer: &PeerIdentity, csr_der: &[u8]) -> Result<pb::RenewReply, ApiError> {
        let (host, role) = self.ledger.view().agent_of(&self.config, peer)?;
        let now = self.ledger.now_unix_ms();
        let (cert_pem, not_before, not_after) = self.sign(csr_der, host, now)?;
        let event = AuditEvent {
            actor: peer.to_string(),
            action: lockstep_evidence::action::AuditAction::CertRenewed,
            host: host.to_string(),
            role: role.to_string(),
            detail: format!("certificate valid until {}", rfc3339(not_after)),
            facts: String::new(),
        };
        self.ledger.record(vec![event]).await?;
        Ok(pb::RenewReply {
            cert_pem,
            not_before_unix_ms: not_before,
            not_after_unix_ms: not_after,
        })
    }

    /// `lockstep host revoke` / `host remove`: from now on the host's calls
    /// are refused and its gate is CLOSED, until it enrolls with a new token.
    pub async fn revoke_host(
        &self,
        who: &Operator,
        req: &pb::RevokeHostRequest,
    ) -> Result<pb::RevokeHostReply, ApiError> {
        let name = who.name.clone();
        let host = req.host.as_str();
        let Some(role) = self.config.inventory.get(host).cloned() else {
            return Err(crate::config::NotInConfig::UnknownHost { host: host.to_string() }.into());
        };
        if req.reason.trim().is_empty() {
            return Err(EnrollError::NoRevokeReason.into());
        }
        let revocation = Revocation {
            by: name.clone(),
            at_unix_ms: self.ledger.now_unix_ms(),
            reason: req.reason.clone(),
            removed: req.remove,
        };
        let committed = self
            .ledger
            .commit(Revoked {
                actor: who.actor(),
                host: host.to_string(),
                role: role.clone(),
                revocation,
            })
            .await?;
        let gate = self.board.after(&committed);
        warn!(host, by = %name, remove = req.remove, reason = %req.reason, "host revoked");
        Ok(pb::RevokeHostReply {
            host: host.to_string(),
            gate,
        })
    }
}

/// Join tokens, enrollment, renewal and revocation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnrollError {
    #[error("{0}")]
    BadHostName(String),
    #[error("host {host} is in role {role}, not {wanted}")]
    HostInOtherRole { host: String, role: String, wanted: String },
    #[error(
        "host {host} is not in any role's inventory: add it to `hosts` of a [[role]] in the controller config first"
    )]
    NotInInventory { host: String },
    /// The join token does not allow this enrollment (recorded as `enroll.refused`).
    #[error("{0}")]
    TokenRefused(String),
    #[error("this controller does not issue certificates: set enrollment.ca_key in its config")]
    NoCa,
    #[error("{0}")]
    BadCsr(String),
    #[error("give --reason: it is shown on the host's closed gate and kept in the audit log")]
    NoRevokeReason,
    /// The TPM did not open the challenge (recorded as `enroll.refused`).
    #[error("{0}")]
    TpmProofRefused(String),
    #[error("too many TPM enrollments in progress: try again in a minute")]
    TooManyChallenges,
}

impl crate::error::DomainError for EnrollError {
    /// A refused token is recorded by the ledger (`enroll.refused`).
    fn audited_here(&self) -> bool {
        matches!(self, Self::TokenRefused(_) | Self::TpmProofRefused(_))
    }

    fn code_and_reason(&self) -> (tonic::Code, &'static str) {
        use lockstep_proto::reason as r;
        use tonic::Code as C;
        match self {
            Self::BadHostName(_) | Self::HostInOtherRole { .. } | Self::BadCsr(_) | Self::NoRevokeReason => {
                (C::InvalidArgument, r::INVALID_ARGUMENT)
            }
            Self::NotInInventory { .. } => (C::NotFound, r::NOT_IN_INVENTORY),
            Self::TokenRefused(_) => (C::PermissionDenied, r::TOKEN_REFUSED),
            Self::NoCa => (C::FailedPrecondition, r::NO_CA),
            Self::TpmProofRefused(_) => (C::PermissionDenied, r::TPM_PROOF_REFUSED),
            Self::TooManyChallenges => (C::ResourceExhausted, r::TOO_LARGE),
        }
    }
}

impl From<EnrollError> for tonic::Status {
    fn from(e: EnrollError) -> Self {
        crate::error::ApiError::from(e).into()
    }
}
