//! TPM2_MakeCredential in software (TCG TPM 2.0 Library Part 1, 24 and
//! 11.4.10), with ring: credentials that only the TPM holding the EK can
//! open, and only for the AK whose name they were made for.
//!
//! Why several short credentials: an ECC EK protects a credential with
//! AES-128-CFB under a key derived from the ECDH seed, and ring exposes
//! AES only as its AEADs and as QUIC header protection, which yields the
//! first 5 bytes of one AES block (RFC 9001 5.4.3). With a zero IV, CFB's
//! first 5 bytes are those 5 bytes XOR the plaintext: a TPM2B_DIGEST of a
//! 3-byte secret. [`CREDENTIALS`] of them, each under its own ephemeral
//! ECDH key, make one 192-bit secret; the TPM opens each in a few ms.
//! No second crypto library is linked.

use ring::aead::quic::{AES_128, HeaderProtectionKey};
use ring::{agreement, digest, hmac, rand};

use super::wire::{self, EccPublic};

/// Credentials per challenge: 8 × 24 bits.
pub const CREDENTIALS: usize = 8;
/// Secret bytes in each credential.
pub const SECRET_BYTES: usize = 3;

/// One TPM2_MakeCredential output.
#[derive(Debug, Clone)]
pub struct Credential {
    /// TPM2B_ID_OBJECT contents: integrity HMAC (a TPM2B) and encIdentity.
    pub id_object: Vec<u8>,
    /// TPM2B_ENCRYPTED_SECRET contents: the ephemeral TPMS_ECC_POINT.
    pub encrypted_secret: Vec<u8>,
}

/// KDFa with SHA-256 (Part 1, 11.4.10.2).
pub fn kdfa(key: &[u8], label: &str, context_u: &[u8], context_v: &[u8], bits: u32) -> Vec<u8> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let want = usize::try_from(bits / 8).unwrap_or(0);
    let mut out = Vec::with_capacity(want + 32);
    let mut counter: u32 = 1;
    while out.len() < want {
        let mut c = hmac::Context::with_key(&key);
        c.update(&counter.to_be_bytes());
        c.update(label.as_bytes());
        c.update(&[0]);
        c.update(context_u);
        c.update(context_v);
        c.update(&bits.to_be_bytes());
        out.extend_from_slice(c.sign().as_ref());
        counter += 1;
    }
    out.truncate(want);
    out
}

/// MakeCredential of `secret` (3 bytes) for the object named `ak_name`,
/// to `ek` (an ECC P-256 EK with AES-128-CFB).
pub fn make(
    ek: &EccPublic,
    ak_name: &[u8],
    secret: &[u8; SECRET_BYTES],
    rng: &dyn rand::SecureRandom,
) -> Result<Credential, ring::error::Unspecified> {
    let ephemeral = agreement::EphemeralPrivateKey::generate(&agreement::ECDH_P256, rng)?;
    let public = ephemeral.compute_public_key()?;
    let (ex, ey) = (&public.as_ref()[1..33], &public.as_ref()[33..65]);
    let peer = agreement::UnparsedPublicKey::new(&agreement::ECDH_P256, ek.point());
    // KDFe (Part 1, 11.4.10.3): one SHA-256 block is the 32-byte seed.
    let seed = agreement::agree_ephemeral(ephemeral, &peer, |z| {
        let mut c = digest::Context::new(&digest::SHA256);
        c.update(&1u32.to_be_bytes());
        c.update(z);
        c.update(b"IDENTITY\0");
        c.update(ex);
        c.update(&ek.x);
        c.finish()
    })?;
    let storage_key = kdfa(seed.as_ref(), "STORAGE", ak_name, &[], 128);
    let integrity_key = kdfa(seed.as_ref(), "INTEGRITY", &[], &[], 256);
    let keystream = HeaderProtectionKey::new(&AES_128, &storage_key)?.new_mask(&[0u8; 16])?;
    let plain = [0u8, SECRET_BYTES as u8, secret[0], secret[1], secret[2]];
    let enc_identity: Vec<u8> = plain.iter().zip(keystream.iter()).map(|(p, k)| p ^ k).collect();
    let mut mac = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, &integrity_key));
    mac.update(&enc_identity);
    mac.update(ak_name);
    let mut id_object = Vec::with_capacity(2 + 32 + enc_identity.len());
    wire::sized(&mut id_object, mac.sign().as_ref());
    id_object.extend_from_slice(&enc_identity);
    let mut encrypted_secret = Vec::with_capacity(68);
    wire::sized(&mut encrypted_secret, ex);
    wire::sized(&mut encrypted_secret, ey);
    Ok(Credential {
        id_object,
        encrypted_secret,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// KDFa against the TPM 2.0 reference implementation's published
    /// derivation shape: counter, label, NUL, contexts, bit count.
    #[test]
    fn kdfa_is_hmac_over_counter_label_contexts_and_bits() {
        let key = [7u8; 32];
        let mut c = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, &key));
        c.update(&[0, 0, 0, 1]);
        c.update(b"STORAGE\0");
        c.update(b"name");
        c.update(&128u32.to_be_bytes());
        assert_eq!(
            kdfa(&key, "STORAGE", b"name", &[], 128),
            c.sign().as_ref()[..16].to_vec()
        );
        assert_eq!(kdfa(&key, "INTEGRITY", &[], &[], 512).len(), 64);
    }
}
