//! The TPM calls, through tss-esapi (Debian's libtss2). Each opens a
//! context, recreates the EK from the TCG default ECC P-256 template (a
//! primary key: the same key every time from the TPM's endorsement seed),
//! loads what it needs, and flushes it all before it returns.

use std::path::Path;
use std::str::FromStr;

use lockstep_proto::tpm;
use tss_esapi::Context;
use tss_esapi::abstraction::{AsymmetricAlgorithmSelection, ak, ek};
use tss_esapi::attributes::SessionAttributesBuilder;
use tss_esapi::constants::SessionType;
use tss_esapi::handles::{AuthHandle, KeyHandle, ObjectHandle, PcrHandle, SessionHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, SignatureSchemeAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::session_handles::PolicySession;
use tss_esapi::structures::{
    AttestInfo, Data, Digest, DigestValues, EncryptedSecret, HashScheme, IdObject, PcrSelectionListBuilder, PcrSlot,
    Private, Public, SignatureScheme, SymmetricDefinition,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::{Marshall, UnMarshall};

use super::{AkBlob, EnrollKeys, Quote, TpmError};

fn tss<'a>(tcti: &'a str, what: &'static str) -> impl Fn(tss_esapi::Error) -> TpmError + 'a {
    move |e| TpmError::Tss {
        tcti: tcti.to_string(),
        what,
        cause: e.to_string(),
    }
}

/// An open context and the EK, flushed when dropped.
struct Open {
    ctx: Context,
    ek: KeyHandle,
    loaded: Vec<ObjectHandle>,
}

impl Drop for Open {
    fn drop(&mut self) {
        for h in self.loaded.drain(..).rev() {
            let _ = self.ctx.flush_context(h);
        }
        let _ = self.ctx.flush_context(self.ek.into());
    }
}

fn open(tcti: &str) -> Result<Open, TpmError> {
    let conf = TctiNameConf::from_str(tcti).map_err(tss(tcti, "the TCTI"))?;
    let mut ctx = Context::new(conf).map_err(tss(tcti, "opening the TPM"))?;
    let ek = ek::create_ek_object_2(&mut ctx, AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256), None)
        .map_err(tss(tcti, "making the endorsement key"))?;
    Ok(Open {
        ctx,
        ek,
        loaded: Vec::new(),
    })
}

fn load_ak(o: &mut Open, tcti: &str, blob: &AkBlob, path: &Path) -> Result<KeyHandle, TpmError> {
    let public = Public::unmarshall(&blob.public).map_err(|e| TpmError::BadBlob {
        path: path.to_path_buf(),
        why: e.to_string(),
    })?;
    let private = Private::try_from(blob.private.clone()).map_err(|e| TpmError::BadBlob {
        path: path.to_path_buf(),
        why: e.to_string(),
    })?;
    let _ = tcti;
    let handle = ak::load_ak(&mut o.ctx, o.ek, None, private, public).map_err(|e| TpmError::ForeignAk {
        path: path.to_path_buf(),
        cause: e.to_string(),
    })?;
    o.loaded.push(handle.into());
    Ok(handle)
}

pub fn make_ak(tcti: &str) -> Result<EnrollKeys, TpmError> {
    let mut o = open(tcti)?;
    let (ek_public, _, _) = o
        .ctx
        .read_public(o.ek)
        .map_err(tss(tcti, "reading the endorsement key"))?;
    let made = ak::create_ak(
        &mut o.ctx,
        o.ek,
        HashingAlgorithm::Sha256,
        SignatureSchemeAlgorithm::EcDsa,
        None,
        None,
    )
    .map_err(tss(tcti, "making the attestation key"))?;
    let marshal = |p: &Public| p.marshall().map_err(tss(tcti, "encoding a public key"));
    // The vendor's EK certificate, where the TPM has one (TCG's NV index
    // for an ECC P-256 EK); the controller decides what its absence means.
    let ek_certificate =
        ek::retrieve_ek_pubcert(&mut o.ctx, AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256)).unwrap_or_default();
    Ok(EnrollKeys {
        ek_certificate,
        ek_public: marshal(&ek_public)?,
        ak: AkBlob {
            public: marshal(&made.out_public)?,
            private: made.out_private.value().to_vec(),
        },
    })
}

pub fn activate(tcti: &str, blob: &AkBlob, credentials: &[(Vec<u8>, Vec<u8>)]) -> Result<Vec<u8>, TpmError> {
    let mut o = open(tcti)?;
    let ak = load_ak(&mut o, tcti, blob, Path::new("the new attestation key"))?;
    let mut secrets = Vec::new();
    for (id_object, secret) in credentials {
        let id = IdObject::try_from(id_object.clone()).map_err(tss(tcti, "reading a credential"))?;
        let secret = EncryptedSecret::try_from(secret.clone()).map_err(tss(tcti, "reading a credential"))?;
        // The AK's auth is empty (an HMAC session); the EK's is a policy
        // session satisfied by PolicySecret on the endorsement hierarchy.
        let (attributes, mask) = SessionAttributesBuilder::new().build();
        let start = |ctx: &mut Context, kind| {
            let s = ctx
                .start_auth_session(
                    None,
                    None,
                    None,
                    kind,
                    SymmetricDefinition::AES_128_CFB,
                    HashingAlgorithm::Sha256,
                )
                .map_err(tss(tcti, "starting a session"))?
                .ok_or_else(|| TpmError::Tss {
                    tcti: tcti.to_string(),
                    what: "starting a session",
                    cause: "no session".into(),
                })?;
            ctx.tr_sess_set_attributes(s, attributes, mask)
                .map_err(tss(tcti, "starting a session"))?;
            Ok::<_, TpmError>(s)
        };
        let hmac = start(&mut o.ctx, SessionType::Hmac)?;
        o.loaded.push(SessionHandle::from(hmac).into());
        let policy = start(&mut o.ctx, SessionType::Policy)?;
        o.loaded.push(SessionHandle::from(policy).into());
        let policy_session = PolicySession::try_from(policy).map_err(tss(tcti, "starting a session"))?;
        o.ctx
            .execute_with_session(Some(hmac), |ctx| {
                ctx.policy_secret(
                    policy_session,
                    AuthHandle::Endorsement,
                    Default::default(),
                    Default::default(),
                    Default::default(),
                    None,
                )
            })
            .map_err(tss(tcti, "authorising the endorsement key"))?;
        o.ctx.set_sessions((Some(hmac), Some(policy), None));
        let opened = o.ctx.activate_credential(ak, o.ek, id, secret);
        o.ctx.clear_sessions();
        // Spent by the call (flushed by the TPM) or to be flushed now.
        for s in [hmac, policy] {
            let h: ObjectHandle = SessionHandle::from(s).into();
            o.loaded.retain(|l| *l != h);
            let _ = o.ctx.flush_context(h);
        }
        let opened = opened.map_err(tss(tcti, "activating a credential (made for another TPM or key?)"))?;
        secrets.extend_from_slice(opened.value());
    }
    Ok(secrets)
}

pub fn bind_session(tcti: &str, binding: [u8; 32]) -> Result<(), TpmError> {
    let conf = TctiNameConf::from_str(tcti).map_err(tss(tcti, "the TCTI"))?;
    let mut ctx = Context::new(conf).map_err(tss(tcti, "opening the TPM"))?;
    let pcr = PcrHandle::Pcr23;
    debug_assert_eq!(tpm::SESSION_PCR, 23);
    ctx.execute_with_nullauth_session(|c| c.pcr_reset(pcr))
        .map_err(tss(tcti, "resetting PCR 23"))?;
    let mut values = DigestValues::new();
    values.set(
        HashingAlgorithm::Sha256,
        Digest::try_from(binding.to_vec()).map_err(tss(tcti, "extending PCR 23"))?,
    );
    ctx.execute_with_nullauth_session(|c| c.pcr_extend(pcr, values))
        .map_err(tss(tcti, "extending PCR 23"))
}

fn slot(index: u32) -> Option<PcrSlot> {
    PcrSlot::try_from(1u32.checked_shl(index)?).ok()
}

fn read_pcrs(ctx: &mut Context, tcti: &str, indices: &[u32]) -> Result<Vec<(u32, Vec<u8>)>, TpmError> {
    let mut out = Vec::new();
    // PCR_Read answers at most 8 digests a call.
    for chunk in indices.chunks(8) {
        let slots: Vec<PcrSlot> = chunk.iter().filter_map(|i| slot(*i)).collect();
        let selection = PcrSelectionListBuilder::new()
            .with_selection(HashingAlgorithm::Sha256, &slots)
            .build()
            .map_err(tss(tcti, "selecting PCRs"))?;
        let (_, _, values) = ctx
            .execute_without_session(|c| c.pcr_read(selection))
            .map_err(tss(tcti, "reading PCRs"))?;
        if values.value().len() != chunk.len() {
            return Err(TpmError::Tss {
                tcti: tcti.to_string(),
                what: "reading PCRs",
                cause: format!("asked for {} values, got {}", chunk.len(), values.value().len()),
            });
        }
        out.extend(
            chunk
                .iter()
                .copied()
                .zip(values.value().iter().map(|d| d.value().to_vec())),
        );
    }
    Ok(out)
}

pub fn quote(tcti: &str, blob: &AkBlob, path: &Path, nonce: &[u8]) -> Result<Quote, TpmError> {
    let mut o = open(tcti)?;
    let ak = load_ak(&mut o, tcti, blob, path)?;
    let indices = tpm::quoted_pcrs();
    let slots: Vec<PcrSlot> = indices.iter().filter_map(|i| slot(*i)).collect();
    let selection = PcrSelectionListBuilder::new()
        .with_selection(HashingAlgorithm::Sha256, &slots)
        .build()
        .map_err(tss(tcti, "selecting PCRs"))?;
    let nonce = Data::try_from(nonce.to_vec()).map_err(tss(tcti, "reading the nonce"))?;
    // A PCR may move between the quote and the read: the values must be
    // the quoted ones, so read again until they match (a few tries).
    for _ in 0..3 {
        let (attest, signature) = o
            .ctx
            .execute_with_nullauth_session(|c| {
                c.quote(
                    ak,
                    nonce.clone(),
                    SignatureScheme::EcDsa {
                        hash_scheme: HashScheme::new(HashingAlgorithm::Sha256),
                    },
                    selection.clone(),
                )
            })
            .map_err(tss(tcti, "quoting"))?;
        let pcrs = read_pcrs(&mut o.ctx, tcti, &indices)?;
        let quoted = match attest.attested() {
            AttestInfo::Quote { info } => info.pcr_digest().value().to_vec(),
            _ => Vec::new(),
        };
        if quoted == tpm::pcr_digest(pcrs.iter().map(|(_, v)| v.as_slice())) {
            return Ok(Quote {
                attest: attest.marshall().map_err(tss(tcti, "encoding the quote"))?,
                signature: signature.marshall().map_err(tss(tcti, "encoding the quote"))?,
                pcrs,
            });
        }
    }
    Err(TpmError::Tss {
        tcti: tcti.to_string(),
        what: "quoting",
        cause: "the PCRs kept changing while they were read".into(),
    })
}
