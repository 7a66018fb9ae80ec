//! The signed envelope. An agent signs the encoded attestation bytes; the
//! controller verifies those same bytes against the host's pinned key and only
//! then decodes them. Re-encoding before verifying would let two encodings of
//! "the same" message disagree, so it is never done.

use prost::Message;
use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use crate::pb::{Attestation, Envelope};

#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("the attestation key is not a valid Ed25519 PKCS#8 document")]
    BadKey,
    #[error("could not generate an Ed25519 key: the system random source failed")]
    KeyGeneration,
    #[error("envelope signed by key {got}, but the host's pinned key is {expected}")]
    KeyMismatch { expected: String, got: String },
    #[error("signature does not verify against the host's pinned key {key_id}")]
    BadSignature { key_id: String },
    #[error("payload of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("signed payload is not a valid attestation: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("attestation carries {count} entries, over the limit of {limit}")]
    TooManyEntries { count: usize, limit: usize },
}

/// Short, stable name of a public key: hex of the first 8 bytes of its SHA-256.
pub fn key_id(public_key: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, public_key);
    hex::encode(&d.as_ref()[..8])
}

/// A host's attestation key, able to seal payloads.
pub struct Signer {
    pair: Ed25519KeyPair,
    key_id: String,
}

impl Signer {
    /// A new PKCS#8 key document, for the caller to store (0600).
    pub fn generate_pkcs8() -> Result<Vec<u8>, EnvelopeError> {
        Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map(|doc| doc.as_ref().to_vec())
            .map_err(|_| EnvelopeError::KeyGeneration)
    }

    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, EnvelopeError> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|_| EnvelopeError::BadKey)?;
        let key_id = key_id(pair.public_key().as_ref());
        Ok(Self { pair, key_id })
    }

    pub fn public_key(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Signs `payload` as it is and wraps it.
    pub fn seal(&self, payload: Vec<u8>) -> Envelope {
        let signature = self.pair.sign(&payload).as_ref().to_vec();
        Envelope {
            payload,
            signature,
            key_id: self.key_id.clone(),
        }
    }

    pub fn seal_attestation(&self, attestation: &Attestation) -> Envelope {
        self.seal(attestation.encode_to_vec())
    }
}

/// Limits on what a verifier will accept, so a hostile peer cannot make it
/// allocate without bound.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_payload_bytes: usize,
    pub max_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload_bytes: 32 * 1024 * 1024,
            max_entries: 500_000,
        }
    }
}

/// Verifies the envelope's bytes against `public_key`, and returns them.
pub fn verify<'a>(envelope: &'a Envelope, public_key: &[u8]) -> Result<&'a [u8], EnvelopeError> {
    let expected = key_id(public_key);
    if envelope.key_id != expected {
        return Err(EnvelopeError::KeyMismatch {
            expected,
            got: envelope.key_id.clone(),
        });
    }
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(&envelope.payload, &envelope.signature)
        .map_err(|_| EnvelopeError::BadSignature { key_id: expected })?;
    Ok(&envelope.payload)
}

/// Verifies, then decodes, an attestation within `limits`.
pub fn open_attestation(envelope: &Envelope, public_key: &[u8], limits: Limits) -> Result<Attestation, EnvelopeError> {
    if envelope.payload.len() > limits.max_payload_bytes {
        return Err(EnvelopeError::TooLarge {
            size: envelope.payload.len(),
            limit: limits.max_payload_bytes,
        });
    }
    let bytes = verify(envelope, public_key)?;
    let attestation = Attestation::decode(bytes)?;
    if attestation.entries.len() > limits.max_entries {
        return Err(EnvelopeError::TooManyEntries {
            count: attestation.entries.len(),
            limit: limits.max_entries,
        });
    }
    Ok(attestation)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Signer {
        Signer::from_pkcs8(&Signer::generate_pkcs8().unwrap()).unwrap()
    }

    fn attestation() -> Attestation {
        Attestation {
            host: "smars-01".into(),
            role: "smars".into(),
            seq: 7,
            ..Default::default()
        }
    }

    #[test]
    fn sealed_attestation_opens_with_the_signers_key() {
        let s = signer();
        let env = s.seal_attestation(&attestation());
        let got = open_attestation(&env, s.public_key(), Limits::default()).unwrap();
        assert_eq!(got, attestation());
    }

    #[test]
    fn flipped_payload_bit_fails_signature() {
        let s = signer();
        let mut env = s.seal_attestation(&attestation());
        env.payload[3] ^= 1;
        let err = open_attestation(&env, s.public_key(), Limits::default()).unwrap_err();
        assert!(matches!(err, EnvelopeError::BadSignature { .. }), "{err}");
    }

    #[test]
    fn other_key_is_refused_by_key_id() {
        let (a, b) = (signer(), signer());
        let env = a.seal_attestation(&attestation());
        let err = verify(&env, b.public_key()).unwrap_err();
        assert!(matches!(err, EnvelopeError::KeyMismatch { .. }), "{err}");
    }

    #[test]
    fn forged_key_id_with_wrong_signature_is_refused() {
        let (a, b) = (signer(), signer());
        let mut env = a.seal_attestation(&attestation());
        env.key_id = b.key_id().to_string();
        let err = verify(&env, b.public_key()).unwrap_err();
        assert!(matches!(err, EnvelopeError::BadSignature { .. }), "{err}");
    }

    #[test]
    fn oversized_payload_is_refused_before_verifying() {
        let s = signer();
        let env = s.seal(vec![0u8; 100]);
        let limits = Limits {
            max_payload_bytes: 99,
            max_entries: 10,
        };
        let err = open_attestation(&env, s.public_key(), limits).unwrap_err();
        assert!(matches!(err, EnvelopeError::TooLarge { size: 100, .. }));
    }

    #[test]
    fn too_many_entries_are_refused() {
        let s = signer();
        let mut a = attestation();
        a.entries = vec![Default::default(); 3];
        let env = s.seal_attestation(&a);
        let limits = Limits {
            max_payload_bytes: 1 << 20,
            max_entries: 2,
        };
        let err = open_attestation(&env, s.public_key(), limits).unwrap_err();
        assert!(matches!(err, EnvelopeError::TooManyEntries { count: 3, .. }));
    }

    #[test]
    fn garbage_payload_with_valid_signature_is_a_decode_error() {
        let s = signer();
        let env = s.seal(vec![0xff, 0xff, 0xff]);
        let err = open_attestation(&env, s.public_key(), Limits::default()).unwrap_err();
        assert!(matches!(err, EnvelopeError::Decode(_)), "{err}");
    }
}
