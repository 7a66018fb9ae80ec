//! Identity lifecycle: one-time join tokens, enrollment (a host proves it
//! holds a token and gets a certificate for a key born on it, and its
//! attestation key is pinned), renewal over mTLS, and revocation.

use lockstep_proto::envelope;
use lockstep_proto::identity::{OperatorRole, PeerIdentity, validate_id};
use lockstep_proto::pb;
use time::OffsetDateTime;
use tracing::{info, warn};

use crate::audit::AuditEvent;
use crate::controller::{Controller, require};
use crate::error::ApiError;
use crate::store::{HostRecord, Revocation, TokenRecord};

/// Tokens look like `lst1_<64 hex>`: 256 random bits.
const TOKEN_PREFIX: &str = "lst1_";

fn token_hash(token: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, token.trim().as_bytes()))
}

fn rfc3339(unix_ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(unix_ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

fn to_time(unix_ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

impl Controller {
    /// `lockstep token create`: a one-time token for `host` in `role`.
    pub async fn create_token(
        &self,
        peer: &PeerIdentity,
        req: &pb::CreateTokenRequest,
    ) -> Result<pb::CreateTokenReply, ApiError> {
        require(peer, OperatorRole::Operator)?;
        validate_id(&req.host).map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        match self.config.inventory.get(&req.host) {
            Some(role) if *role == req.role => {}
            Some(role) => {
                return Err(ApiError::InvalidArgument(format!(
                    "host {} is in role {role}, not {}",
                    req.host, req.role
                )));
            }
            None => {
                return Err(ApiError::NotFound(format!(
                    "host {} is not in any role's inventory: add it to `hosts` of a [[role]] in the controller config first",
                    req.host
                )));
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
        let now = lockstep_proto::now_unix_ms();
        let record = TokenRecord {
            hash_hex: token_hash(&token),
            host: req.host.clone(),
            role: req.role.clone(),
            created_by: peer.to_string(),
            created_at_unix_ms: now,
            expires_at_unix_ms: now.saturating_add(ttl_ms),
            used_at_unix_ms: 0,
        };
        let event = AuditEvent {
            actor: peer.to_string(),
            action: "token.created".into(),
            host: req.host.clone(),
            role: req.role.clone(),
            // The hash prefix identifies the token in the log; the token itself is never written.
            detail: format!(
                "join token {} expires {}",
                &record.hash_hex[..12],
                rfc3339(record.expires_at_unix_ms)
            ),
        };
        let stored = record.clone();
        self.persist_audited(vec![event], move |s| s.put_token(&stored)).await?;
        Ok(pb::CreateTokenReply {
            token,
            host: record.host,
            role: record.role,
            expires_at_unix_ms: record.expires_at_unix_ms,
        })
    }

    /// Refuses an enrollment, recording who tried what.
    async fn refuse_enrollment(&self, host: &str, why: String) -> ApiError {
        warn!(host, reason = %why, "enrollment refused");
        let event = AuditEvent {
            actor: "unauthenticated".into(),
            action: "enroll.refused".into(),
            host: host.chars().take(64).collect(),
            role: String::new(),
            detail: why.clone(),
        };
        if let Err(e) = self.audit(vec![event]).await {
            tracing::error!(error = %e, "cannot record a refused enrollment");
        }
        ApiError::PermissionDenied(why)
    }

    fn signing_ca(&self) -> Result<(String, String), ApiError> {
        let e = &self.config.enrollment;
        let Some(key_path) = &e.ca_key else {
            return Err(ApiError::FailedPrecondition(
                "this controller does not issue certificates: set enrollment.ca_key in its config".into(),
            ));
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
        let pem = crate::pki::sign_agent_csr(&ca_cert, &ca_key, csr_der, host, to_time(now), to_time(not_after))
            .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        // X.509 times have whole seconds.
        Ok((pem, now / 1000 * 1000, not_after / 1000 * 1000))
    }

    /// `lockstep-agent enroll`: a token buys a certificate for the key in
    /// the request, and pins the attestation key. Served without a client
    /// certificate, so everything is checked against the stored token.
    pub async fn enroll(&self, req: pb::EnrollRequest) -> Result<pb::EnrollReply, ApiError> {
        let host = req.host.clone();
        validate_id(&host).map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        if req.attestation_public_key.len() != 32 {
            return Err(ApiError::InvalidArgument("an Ed25519 public key is 32 bytes".into()));
        }
        self.signing_ca()?;
        let lock = self.host_lock(&host);
        let _guard = lock.lock().await;
        let now = lockstep_proto::now_unix_ms();
        let hash = token_hash(&req.token);
        let token = self.store().token(&hash).map_err(ApiError::Store)?;
        let Some(mut token) = token else {
            return Err(self
                .refuse_enrollment(
                    &host,
                    "unknown join token: create one with `lockstep token create`".into(),
                )
                .await);
        };
        let existing = self.read().hosts.get(&host).cloned();
        let problem = if token.used_at_unix_ms != 0 {
            Some(format!(
                "join token was already used at {}: tokens are one-time, create a new one with `lockstep token create`",
                rfc3339(token.used_at_unix_ms)
            ))
        } else if now > token.expires_at_unix_ms {
            Some(format!(
                "join token expired at {}: create a new one with `lockstep token create`",
                rfc3339(token.expires_at_unix_ms)
            ))
        } else if token.host != host {
            Some(format!("join token is for host {}, not {host}", token.host))
        } else if self.config.inventory.get(&host) != Some(&token.role) {
            Some(format!(
                "host {host} is no longer in role {} in the controller config",
                token.role
            ))
        } else {
            existing
                .as_ref()
                .and_then(|r| r.revoked.as_ref())
                .filter(|rev| token.created_at_unix_ms <= rev.at_unix_ms)
                .map(|rev| {
                    format!(
                        "host {host} was revoked at {} after this token was made: re-enrolling needs a new token",
                        rfc3339(rev.at_unix_ms)
                    )
                })
        };
        if let Some(why) = problem {
            return Err(self.refuse_enrollment(&host, why).await);
        }
        let (cert_pem, not_before, not_after) = self.sign(&req.csr_der, &host, now)?;
        token.used_at_unix_ms = now;
        let key_id = envelope::key_id(&req.attestation_public_key);
        let record = HostRecord {
            host: host.clone(),
            role: token.role.clone(),
            pinned_key_hex: hex::encode(&req.attestation_public_key),
            pinned_at_unix_ms: now,
            enrolled_at_unix_ms: now,
            // A new identity starts afresh: no old measurement speaks for it.
            ..HostRecord::default()
        };
        let event = AuditEvent {
            actor: format!("agent {host}"),
            action: "host.enrolled".into(),
            host: host.clone(),
            role: token.role.clone(),
            detail: format!(
                "join token {} used; attestation key {key_id} pinned; certificate valid until {}",
                &hash[..12],
                rfc3339(not_after)
            ),
        };
        let (stored_token, stored_host) = (token.clone(), record.clone());
        self.persist_audited(vec![event], move |s| {
            s.put_token(&stored_token)?;
            s.put_host(&stored_host)
        })
        .await?;
        self.write().hosts.insert(host.clone(), record);
        self.publish_gate(&token.role, &host);
        info!(host = %host, key_id = %key_id, "host enrolled");
        Ok(pb::EnrollReply {
            cert_pem,
            role: token.role,
            key_id,
            not_before_unix_ms: not_before,
            not_after_unix_ms: not_after,
        })
    }

    /// A fresh certificate for an enrolled, unrevoked agent, over mTLS with
    /// its current one.
    pub async fn renew(&self, peer: &PeerIdentity, csr_der: &[u8]) -> Result<pb::RenewReply, ApiError> {
        let (host, role) = self.agent_host(peer)?;
        let now = lockstep_proto::now_unix_ms();
        let (cert_pem, not_before, not_after) = self.sign(csr_der, host, now)?;
        let event = AuditEvent {
            actor: peer.to_string(),
            action: "cert.renewed".into(),
            host: host.to_string(),
            role: role.to_string(),
            detail: format!("certificate valid until {}", rfc3339(not_after)),
        };
        self.audit(vec![event]).await?;
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
        peer: &PeerIdentity,
        req: &pb::RevokeHostRequest,
    ) -> Result<pb::RevokeHostReply, ApiError> {
        let name = require(peer, OperatorRole::Operator)?.to_string();
        let host = req.host.as_str();
        let Some(role) = self.config.inventory.get(host).cloned() else {
            return Err(ApiError::NotFound(format!(
                "host {host} is not in any role's inventory"
            )));
        };
        if req.reason.trim().is_empty() {
            return Err(ApiError::InvalidArgument(
                "give --reason: it is shown on the host's closed gate and kept in the audit log".into(),
            ));
        }
        let lock = self.host_lock(host);
        let _guard = lock.lock().await;
        let now = lockstep_proto::now_unix_ms();
        let mut record = self.read().hosts.get(host).cloned().unwrap_or_else(|| HostRecord {
            host: host.to_string(),
            role: role.clone(),
            ..HostRecord::default()
        });
        record.revoked = Some(Revocation {
            by: name.clone(),
            at_unix_ms: now,
            reason: req.reason.clone(),
            removed: req.remove,
        });
        if req.remove {
            // Decommissioned: nothing it signs can count any more.
            record.pinned_key_hex.clear();
        }
        let event = AuditEvent {
            actor: peer.to_string(),
            action: if req.remove { "host.removed" } else { "host.revoked" }.into(),
            host: host.to_string(),
            role: role.clone(),
            detail: req.reason.clone(),
        };
        let stored = record.clone();
        self.persist_audited(vec![event], move |s| s.put_host(&stored)).await?;
        self.write().hosts.insert(host.to_string(), record);
        let gate = self.publish_gate(&role, host);
        warn!(host, by = %name, remove = req.remove, reason = %req.reason, "host revoked");
        Ok(pb::RevokeHostReply {
            host: host.to_string(),
            gate,
        })
    }
}
