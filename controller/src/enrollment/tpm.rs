//! Binding an enrolling host to its TPM: the controller makes credentials
//! for the AK the host names, to the EK it names ([`crate::tpm::credential`]);
//! only the TPM holding that EK, with that AK loaded, opens them. The
//! secrets come back with the enrollment, which then binds both keys to
//! the host. Challenges live a minute, in the leader's memory (a failover
//! mid-enrollment: the agent enrolls again).

use std::collections::HashMap;
use std::sync::Mutex;

use lockstep_proto::pb;
use ring::rand::SecureRandom;

use crate::enrollment::EnrollError;
use crate::error::ApiError;
use crate::store::TpmBinding;
use crate::tpm::credential::{self, CREDENTIALS, SECRET_BYTES};

const CHALLENGE_TTL_MS: i64 = 60_000;
/// Outstanding challenges (each needs a valid join token to be made).
const MAX_CHALLENGES: usize = 1024;

struct Pending {
    host: String,
    token_hash: String,
    ek_public: Vec<u8>,
    ak_public: Vec<u8>,
    secrets: Vec<u8>,
    /// The EK's certificate chain, when vendor CAs vouched for it.
    vendor: Option<String>,
    expires_unix_ms: i64,
}

#[derive(Default)]
pub struct Challenges {
    pending: Mutex<HashMap<Vec<u8>, Pending>>,
}

impl Challenges {
    /// Credentials for `req`'s AK to `req`'s EK, after the keys are checked.
    /// The caller checked the token.
    pub fn make(
        &self,
        req: &pb::TpmChallengeRequest,
        token_hash: String,
        vendor_cas: &[std::path::PathBuf],
        now: i64,
    ) -> Result<pb::TpmChallengeReply, ApiError> {
        let ek = crate::tpm::check_ek(&req.ek_public)?;
        let ak = crate::tpm::check_ak(&req.ak_public)?;
        let vendor = crate::tpm::ek_cert::trust(&req.ek_certificate, &ek, vendor_cas)?;
        let rng = ring::rand::SystemRandom::new();
        let failed = |_| ApiError::Internal("the system random source failed".into());
        let mut secrets = vec![0u8; CREDENTIALS * SECRET_BYTES];
        rng.fill(&mut secrets).map_err(failed)?;
        let mut id = vec![0u8; 16];
        rng.fill(&mut id).map_err(failed)?;
        let mut credentials = Vec::with_capacity(CREDENTIALS);
        for chunk in secrets.chunks_exact(SECRET_BYTES) {
            let secret: [u8; SECRET_BYTES] = chunk.try_into().unwrap_or([0; SECRET_BYTES]);
            let c = credential::make(&ek, &ak.name, &secret, &rng).map_err(|_| {
                ApiError::from(crate::tpm::TpmError::BadKey(
                    "the endorsement key's point is not on P-256".into(),
                ))
            })?;
            credentials.push(pb::TpmCredential {
                id_object: c.id_object,
                encrypted_secret: c.encrypted_secret,
            });
        }
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.retain(|_, p| p.expires_unix_ms > now);
        if pending.len() >= MAX_CHALLENGES {
            return Err(EnrollError::TooManyChallenges.into());
        }
        pending.insert(
            id.clone(),
            Pending {
                host: req.host.clone(),
                token_hash,
                ek_public: req.ek_public.clone(),
                ak_public: req.ak_public.clone(),
                secrets,
                vendor,
                expires_unix_ms: now + CHALLENGE_TTL_MS,
            },
        );
        Ok(pb::TpmChallengeReply {
            challenge_id: id,
            credentials,
        })
    }

    /// The binding `proof` earns, if it answers a live challenge of this
    /// host and token; a challenge answers once, right or wrong.
    pub fn check(&self, proof: &pb::TpmProof, host: &str, token_hash: &str, now: i64) -> Result<TpmBinding, String> {
        let taken = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&proof.challenge_id);
        let Some(p) = taken.filter(|p| p.expires_unix_ms > now) else {
            return Err("no TPM challenge with this id in the last minute: enroll again".into());
        };
        if p.host != host || p.token_hash != token_hash {
            return Err("the TPM challenge was made for another host or token".into());
        }
        if !crate::tpm::same_secret(&p.secrets, &proof.secrets) {
            return Err(format!(
                "the TPM did not open the credentials made for EK {} and AK {}: the attestation key is not in that TPM",
                crate::tpm::key_id(&p.ek_public),
                crate::tpm::key_id(&p.ak_public)
            ));
        }
        Ok(TpmBinding {
            ek_public_hex: hex::encode(&p.ek_public),
            ak_public_hex: hex::encode(&p.ak_public),
            ek_trust: p.vendor.unwrap_or_default(),
            bound_at_unix_ms: now,
            quote: None,
        })
    }
}
