//! The TPM's costs on a real software TPM (Debian's swtpm): a quote as the
//! agent makes it (open the TPM, recreate the EK, load the AK, quote, read
//! the PCRs, flush), the credential activation of an enrollment, and the
//! controller's side (a quote checked, a credential made) beside ring's own
//! ECDSA P-256 verification, the physical limit of a quote check.

use std::time::{Duration, Instant};

use super::Latencies;

pub struct TpmFigures {
    /// Agent: one quote, end to end on the TPM.
    pub quote: Latencies,
    /// Agent: the 8 credentials of an enrollment activated.
    pub activate: Latencies,
    /// Controller: one quote checked (signature, nonce, PCRs, binding).
    pub verify_per_s: f64,
    /// Controller: one MakeCredential (an ephemeral ECDH, KDFs, HMAC).
    pub make_credential_per_s: f64,
    /// ring: one ECDSA P-256 SHA-256 verification.
    pub ecdsa_verify_per_s: f64,
}

fn per_second(runs: usize, mut one: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..runs {
        one();
    }
    runs as f64 / start.elapsed().as_secs_f64()
}

/// `quotes` quotes and `activations` enrollments' activations on one swtpm.
pub async fn costs(quotes: usize, activations: usize) -> anyhow::Result<TpmFigures> {
    let swtpm = crate::swtpm::SwTpm::start()?;
    let state = tempfile::tempdir()?;
    let settings = lockstep_agent::config::TpmSettings {
        tcti: swtpm.tcti(),
        quote_interval: Duration::from_secs(60),
    };
    let tpm = lockstep_agent::tpm::Tpm::new(&settings, state.path());
    let keys = tpm.make_ak().await?;
    keys.ak.save(state.path())?;
    let ek = lockstep_controller::tpm::check_ek(&keys.ek_public)?;
    let ak = lockstep_controller::tpm::check_ak(&keys.ak.public)?;
    let rng = ring::rand::SystemRandom::new();

    let mut activate = Vec::with_capacity(activations);
    for _ in 0..activations {
        let credentials = (0..lockstep_controller::tpm::credential::CREDENTIALS)
            .map(|i| {
                let c = lockstep_controller::tpm::credential::make(&ek, &ak.name, &[i as u8; 3], &rng)
                    .map_err(|_| anyhow::anyhow!("MakeCredential failed"))?;
                Ok((c.id_object, c.encrypted_secret))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let start = Instant::now();
        let secrets = tpm.activate(keys.ak.clone(), credentials).await?;
        activate.push(start.elapsed());
        anyhow::ensure!(secrets.len() == 24, "activation gave {} bytes", secrets.len());
    }

    let session = lockstep_proto::envelope::Signer::from_pkcs8(&lockstep_proto::envelope::Signer::generate_pkcs8()?)?;
    let boot_id = "bench".to_string();
    tpm.bind_session(lockstep_proto::tpm::session_binding(session.public_key(), &boot_id))
        .await?;
    let mut quote = Vec::with_capacity(quotes);
    let mut last = None;
    for i in 0..quotes {
        let nonce = vec![i as u8; 32];
        let start = Instant::now();
        let q = tpm.quote(nonce.clone()).await?;
        quote.push(start.elapsed());
        last = Some((nonce, q));
    }
    let (nonce, q) = last.ok_or_else(|| anyhow::anyhow!("no quote made"))?;
    let request = q.into_request(nonce.clone(), session.public_key().to_vec(), boot_id);
    lockstep_controller::tpm::quote::verify(&request, &ak, &nonce).map_err(|e| anyhow::anyhow!(e))?;
    let verify_per_s = per_second(2_000, || {
        let _ = lockstep_controller::tpm::quote::verify(&request, &ak, &nonce);
    });
    let make_credential_per_s = per_second(2_000, || {
        let _ = lockstep_controller::tpm::credential::make(&ek, &ak.name, &[1, 2, 3], &rng);
    });
    let sig = lockstep_controller::tpm::wire::parse_ecdsa_signature(&request.signature)?;
    let key = ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, ak.point());
    let ecdsa_verify_per_s = per_second(2_000, || {
        let _ = key.verify(&request.attest, &sig);
    });
    Ok(TpmFigures {
        quote: Latencies::new(quote),
        activate: Latencies::new(activate),
        verify_per_s,
        make_credential_per_s,
        ecdsa_verify_per_s,
    })
}
