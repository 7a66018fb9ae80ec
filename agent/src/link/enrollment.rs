//! The agent's identity: enrolling with a one-time join token (both keys are
//! born here and never leave the host) and renewing the TLS certificate
//! before it expires, without a restart.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lockstep_link::failover::FailoverChannel;
use lockstep_link::tls::{self, ReloadableCert};
use lockstep_proto::envelope::Signer;
use lockstep_proto::pb::agent_service_client::AgentServiceClient;
use lockstep_proto::pb::enroll_service_client::EnrollServiceClient;
use lockstep_proto::pb::{EnrollReply, EnrollRequest, RenewRequest, TpmChallengeRequest, TpmProof};
use tracing::{info, warn};

use crate::config::AgentConfig;
use crate::metrics::AgentMetrics;
use crate::state::{self, StateError};

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot make a key or certificate request: {0}")]
    Key(#[from] rcgen::Error),
    #[error("the controller refused: {}", .0.message())]
    Refused(tonic::Status),
    #[error("cannot reach the controller at {addr}: {}", .status.message())]
    Unreachable { addr: String, status: tonic::Status },
    #[error(transparent)]
    Tpm(#[from] crate::tpm::TpmError),
}

/// A new TLS key and a PKCS#10 request for it (the controller decides the
/// certificate's contents, so the request's subject is empty).
fn new_tls_key() -> Result<(rcgen::KeyPair, Vec<u8>), rcgen::Error> {
    let key = rcgen::KeyPair::generate()?;
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())?.serialize_request(&key)?;
    Ok((key, csr.der().to_vec()))
}

/// Replaces the key and certificate files (key 0600 first: a certificate
/// never sits next to a key it does not belong to for longer than a rename).
fn install(config: &AgentConfig, key: &rcgen::KeyPair, cert_pem: &str) -> Result<(), StateError> {
    let paths = &config.controller.tls;
    for dir in [paths.key.parent(), paths.cert.parent()].into_iter().flatten() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            state::ensure_dir(dir)?;
        }
    }
    state::write_atomic_mode(&paths.key, key.serialize_pem().as_bytes(), 0o600, true)?;
    state::write_atomic_mode(&paths.cert, cert_pem.as_bytes(), 0o644, true)
}

/// `lockstep-agent enroll`: new keys, a certificate for them, and the
/// attestation key pinned by the controller. Nothing on disk changes unless
/// the controller accepts the token.
pub async fn enroll(config: &AgentConfig, token: &str, ca: Option<&Path>) -> Result<EnrollReply, EnrollError> {
    state::ensure_dir(&config.state_dir)?;
    let pkcs8 = Signer::generate_pkcs8().map_err(|_| StateError::BadKey {
        path: config.state_dir.join("attestation.key"),
    })?;
    let signer = Signer::from_pkcs8(&pkcs8).map_err(|_| StateError::BadKey {
        path: config.state_dir.join("attestation.key"),
    })?;
    let (tls_key, csr_der) = new_tls_key()?;
    // A TPM-bound identity: a new AK under the TPM's EK, proved to the
    // controller by activating the credentials it makes for them.
    let tpm = match &config.tpm {
        Some(settings) => {
            let tpm = crate::tpm::Tpm::new(settings, &config.state_dir);
            let keys = tpm.make_ak().await?;
            Some((tpm, keys))
        }
        None => None,
    };
    let ca = ca.unwrap_or(&config.controller.tls.ca);
    let channel = lockstep_link::failover::failover_channel(
        config.controller.targets(),
        tls::enroll_client_config(ca)?,
        config.controller.connect_timeout,
    )?;
    // One call, spent on the leader rather than on a standby's redirect.
    if config.controller.addresses.len() > 1 {
        channel.find_leader().await;
    }
    let refused = |status: tonic::Status| match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown => EnrollError::Unreachable {
            addr: config.controller.address.clone(),
            status,
        },
        _ => EnrollError::Refused(status),
    };
    let mut client = EnrollServiceClient::new(channel);
    let proof = match &tpm {
        Some((tpm, keys)) => {
            let challenge = client
                .tpm_challenge(TpmChallengeRequest {
                    token: token.trim().to_string(),
                    host: config.host.clone(),
                    ek_public: keys.ek_public.clone(),
                    ak_public: keys.ak.public.clone(),
                    ek_certificate: keys.ek_certificate.clone(),
                })
                .await
                .map_err(refused)?
                .into_inner();
            let credentials = challenge
                .credentials
                .into_iter()
                .map(|c| (c.id_object, c.encrypted_secret))
                .collect();
            let secrets = tpm.activate(keys.ak.clone(), credentials).await?;
            Some(TpmProof {
                challenge_id: challenge.challenge_id,
                secrets,
            })
        }
        None => None,
    };
    let request = EnrollRequest {
        token: token.trim().to_string(),
        host: config.host.clone(),
        csr_der,
        attestation_public_key: signer.public_key().to_vec(),
        tpm: proof,
    };
    let reply = client.enroll(request).await.map_err(refused)?.into_inner();
    state::write_atomic(&config.state_dir.join("attestation.key"), &pkcs8)?;
    match &tpm {
        Some((_, keys)) => keys.ak.save(&config.state_dir)?,
        // An AK of an earlier, TPM-bound enrollment no longer speaks for the host.
        None => match std::fs::remove_file(crate::tpm::AkBlob::path(&config.state_dir)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!(error = %e, "cannot remove the TPM attestation key of an earlier enrollment"),
        },
    }
    install(config, &tls_key, &reply.cert_pem)?;
    info!(host = %config.host, role = %reply.role, key_id = %reply.key_id, "enrolled");
    Ok(reply)
}

/// One renewal: a new key, a certificate for it over the current mTLS
/// connection, both installed, and the next connection presents them.
pub async fn renew_once(
    client: &mut AgentServiceClient<FailoverChannel>,
    config: &AgentConfig,
    cert: &ReloadableCert,
) -> Result<i64, EnrollError> {
    let (key, csr_der) = new_tls_key()?;
    let reply = client
        .renew(RenewRequest { csr_der })
        .await
        .map_err(EnrollError::Refused)?
        .into_inner();
    install(config, &key, &reply.cert_pem)?;
    cert.reload(&config.controller.tls.cert, &config.controller.tls.key)?;
    Ok(reply.not_after_unix_ms)
}

/// When the certificate at `path` is due for renewal (Unix ms).
fn renew_at(path: &Path, fraction: f64) -> Result<(i64, i64), tls::TlsError> {
    let (not_before, not_after) = tls::validity_unix_ms(path)?;
    #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)] // ms spans fit easily
    let at = not_before + ((not_after - not_before) as f64 * fraction) as i64;
    Ok((at, not_after))
}

/// Renews the certificate each time `renew_fraction` of its lifetime has
/// passed, until `shutdown`. Failures retry with backoff; the certificate in
/// use stays until a new one is installed.
pub async fn keep_renewed(
    mut client: AgentServiceClient<FailoverChannel>,
    config: AgentConfig,
    cert: Arc<ReloadableCert>,
    metrics: Arc<AgentMetrics>,
    clock: lockstep_daemon::clock::SharedClock,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut backoff = lockstep_daemon::backoff::Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
    loop {
        let wait = match renew_at(&config.controller.tls.cert, config.controller.renew_fraction) {
            Ok((at, not_after)) => {
                #[allow(clippy::cast_precision_loss)]
                metrics.cert_expiry.set(not_after as f64 / 1000.0);
                Duration::from_millis(u64::try_from(at - clock.now_unix_ms()).unwrap_or(0))
            }
            Err(e) => {
                warn!(error = %e, "cannot read the agent certificate's dates; retrying");
                Duration::from_secs(60)
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.as_mut() => return,
        }
        match renew_once(&mut client, &config, &cert).await {
            Ok(not_after) => {
                backoff.reset();
                let until = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(not_after).unwrap_or(0));
                info!(host = %config.host, valid_until = %humantime::format_rfc3339_seconds(until), "certificate renewed");
            }
            Err(e) => {
                let pause = backoff.next_delay();
                warn!(host = %config.host, error = %e, retry_in = ?pause, "certificate renewal failed");
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = shutdown.as_mut() => return,
                }
            }
        }
    }
}
