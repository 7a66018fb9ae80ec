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

#[cfg(test)]
mod tests {
    use super::*;
    use lockstep_proto::pb::PcrValue;

    // A quote made by a real TPM (swtpm 0.7, through tss-esapi) over PCRs
    // 0-9 and 23, answering the nonce 05..05, with PCR 23 extended once
    // with 01..01 (not a session binding) and the AK that signed it.
    const AK: &str = "0023000b00050072000000100018000b00030010002034663ffce3882755b48c901277bc83106f4ac39dc45e4db8670e41dfe14f5dd70020c95c4f44633044a0079f5a49d8db3b2b54e406820e963597578b4a32576a5e2c";
    const ATTEST: &str = "ff54434780180022000b7b0fa63d5a6439be70f8fc4b64ac788983457c4031951faaaf32f79cd621925e002005050505050505050505050505050505050505050505050505050505050505050000000000016b04000000010000000001201910230016363600000001000b03ff03800020dc373faa5587fb4075aa214a55c95b2627e924ebe70f4a0a1230ba494e298df1";
    const SIGNATURE: &str = "0018000b00202f1cd2c52427b5aafa0ae1d0f12998389d957161d5732279709915c2cffb45a50020778f576f626632464edb56978ce985588e78e4defd6a2a86e61bef3fc0585935";
    const PCR23: &str = "5c85955f709283ecce2b74f1b1552918819f390911816e7bb466805a38ab87f3";

    fn request() -> TpmQuoteRequest {
        let mut pcrs: Vec<PcrValue> = (0..=9)
            .map(|index| PcrValue {
                index,
                sha256: vec![0; 32],
            })
            .collect();
        pcrs.push(PcrValue {
            index: 23,
            sha256: hex::decode(PCR23).unwrap(),
        });
        TpmQuoteRequest {
            nonce: vec![5; 32],
            attest: hex::decode(ATTEST).unwrap(),
            signature: hex::decode(SIGNATURE).unwrap(),
            pcrs,
            session_public_key: vec![9; 32],
            boot_id: "b".into(),
        }
    }

    #[test]
    fn a_real_tpm_quote_is_read_and_checked_up_to_its_session_binding() {
        let ak = crate::tpm::check_ak(&hex::decode(AK).unwrap()).unwrap();
        assert_eq!(hex::encode(&ak.name[..2]), "000b");
        let q = wire::parse_quote(&hex::decode(ATTEST).unwrap()).unwrap();
        assert_eq!(q.pcrs, tpm::quoted_pcrs());
        assert_eq!(q.extra_data, vec![5; 32]);
        // Signature, nonce, PCR set and digest hold; PCR 23 binds no session key.
        let err = verify(&request(), &ak, &[5; 32]).unwrap_err();
        assert!(err.contains("PCR 23 does not bind the session key"), "{err}");
        // Another nonce: a replay.
        let err = verify(&request(), &ak, &[6; 32]).unwrap_err();
        assert!(err.contains("replayed"), "{err}");
        // One attested byte changed: no longer the AK's signature.
        let mut r = request();
        r.attest[40] ^= 1;
        let err = verify(&r, &ak, &[5; 32]).unwrap_err();
        assert!(err.contains("not the bound attestation key's"), "{err}");
        // A PCR value that is not the quoted one.
        let mut r = request();
        r.pcrs[4].sha256 = vec![1; 32];
        let err = verify(&r, &ak, &[5; 32]).unwrap_err();
        assert!(err.contains("not the ones the TPM quoted"), "{err}");
        // Values for other PCRs than the quote's.
        let mut r = request();
        r.pcrs.pop();
        let err = verify(&r, &ak, &[5; 32]).unwrap_err();
        assert!(err.contains("PCR values sent are for"), "{err}");
        // Truncated bytes are refused, never a panic.
        for n in 0..ATTEST.len() / 2 {
            let _ = wire::parse_quote(&hex::decode(ATTEST).unwrap()[..n]);
        }
        for n in 0..AK.len() / 2 {
            assert!(wire::parse_ecc_public(&hex::decode(AK).unwrap()[..n]).is_err());
        }
    }

    #[test]
    fn an_endorsement_key_is_not_taken_as_an_attestation_key_nor_the_reverse() {
        let ak = hex::decode(AK).unwrap();
        let err = crate::tpm::check_ek(&ak).unwrap_err();
        assert!(err.to_string().contains("endorsement key"), "{err}");
    }
}
