//! Checking one TPM quote: signed by the host's bound AK, over the nonce
//! the controller gave, over exactly the PCRs lockstep quotes, whose values
//! the agent sent, with the session PCR binding the key its attestations
//! are signed with. Pure: the caller holds the nonce and the binding.

use std::collections::BTreeMap;

use lockstep_proto::pb::TpmQuoteRequest;
use lockstep_proto::tpm;
use ring::signature;

use super::wire::{self, EccPublic};

/// A quote that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// PCR index → SHA-256 value (hex), boot PCRs and the session PCR.
    pub pcrs: BTreeMap<u32, String>,
    pub reset_count: u32,
    pub restart_count: u32,
}

/// Verifies `q` against the bound AK and the nonce the controller issued.
pub fn verify(q: &TpmQuoteRequest, ak: &EccPublic, nonce: &[u8]) -> Result<Verified, String> {
    let sig = wire::parse_ecdsa_signature(&q.signature).map_err(|e| e.to_string())?;
    signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, ak.point())
        .verify(&q.attest, &sig)
        .map_err(|_| {
            "the quote's signature is not the bound attestation key's (another TPM, or altered bytes)".to_string()
        })?;
    let quote = wire::parse_quote(&q.attest).map_err(|e| e.to_string())?;
    if quote.extra_data != nonce {
        return Err("the quote answers another nonce (a replayed quote)".into());
    }
    let want = tpm::quoted_pcrs();
    if quote.pcrs != want {
        return Err(format!("the quote covers PCRs {:?}, not {want:?}", quote.pcrs));
    }
    let sent: Vec<u32> = q.pcrs.iter().map(|p| p.index).collect();
    if sent != want || q.pcrs.iter().any(|p| p.sha256.len() != 32) {
        return Err(format!(
            "the PCR values sent are for {sent:?}, not 32-byte SHA-256 values of {want:?}"
        ));
    }
    let digest = tpm::pcr_digest(q.pcrs.iter().map(|p| p.sha256.as_slice()));
    if quote.pcr_digest != digest {
        return Err("the PCR values sent are not the ones the TPM quoted".into());
    }
    if q.session_public_key.len() != 32 {
        return Err("the session key is not a 32-byte Ed25519 key".into());
    }
    let session = q
        .pcrs
        .iter()
        .find(|p| p.index == tpm::SESSION_PCR)
        .map(|p| p.sha256.as_slice());
    if session != Some(tpm::session_pcr_value(&q.session_public_key, &q.boot_id).as_slice()) {
        return Err(format!(
            "PCR {} does not bind the session key this agent sent (changed since the agent started?)",
            tpm::SESSION_PCR
        ));
    }
    Ok(Verified {
        pcrs: q.pcrs.iter().map(|p| (p.index, hex::encode(&p.sha256))).collect(),
        reset_count: quote.reset_count,
        restart_count: quote.restart_count,
    })
}
