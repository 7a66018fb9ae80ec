//! Controller ingest: N simulated agents, each its own enrolled identity
//! (its own certificate, TLS connection and Ed25519 key), sending signed
//! heartbeats over real mTLS as fast as the controller acknowledges them
//! (each acknowledged one is verified and durable). Next to it, in the same
//! run: ring's Ed25519 verification rate on one core and a bare mTLS unary
//! call (PinKey) through the same stack.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lockstep_proto::pb::{Attestation, PinKeyRequest};

use crate::bench::Latencies;
use crate::fleet::{Fleet, FleetSpec};

pub struct IngestResult {
    pub agents: usize,
    pub accepted: u64,
    pub took: Duration,
    pub latencies: Latencies,
    pub bare_calls: u64,
    pub bare_took: Duration,
}

impl IngestResult {
    pub fn per_second(&self) -> f64 {
        self.accepted as f64 / self.took.as_secs_f64()
    }

    pub fn bare_per_second(&self) -> f64 {
        self.bare_calls as f64 / self.bare_took.as_secs_f64()
    }
}

/// Ed25519 verifications per second on one core (ring), of a message the
/// size of a heartbeat.
pub fn ed25519_verify_rate(duration: Duration) -> f64 {
    use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
    let rng = ring::rand::SystemRandom::new();
    let Ok(pkcs8) = Ed25519KeyPair::generate_pkcs8(&rng) else {
        return 0.0;
    };
    let Ok(key) = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()) else {
        return 0.0;
    };
    let msg = [7u8; 160];
    let sig = key.sign(&msg);
    let public = UnparsedPublicKey::new(&ED25519, key.public_key().as_ref().to_vec());
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < duration {
        for _ in 0..256 {
            let _ = std::hint::black_box(public.verify(&msg, sig.as_ref()));
        }
        n += 256;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Runs `agents` simulated agents for `duration` of heartbeats, then the
/// same agents for `duration` of bare PinKey calls.
pub async fn ingest(agents: usize, duration: Duration) -> anyhow::Result<IngestResult> {
    let spec = FleetSpec {
        freshness_ttl: Duration::from_secs(600),
        watch_changes: false,
        hooks: false,
        ..FleetSpec::smars(agents)
    };
    let hosts: Vec<String> = (1..=agents).map(|i| spec.host_name(i)).collect();
    let spec = FleetSpec {
        without_agent: hosts.clone(),
        ..spec
    };
    let fleet = Fleet::start(spec).await?;
    for h in &hosts {
        fleet.enroll(h).await?;
    }
    // One small version set shared by every host (stored once, by digest).
    let first = fleet.host(&hosts[0])?;
    let scanner = lockstep_agent::scan::Scanner::new(&first.config.watch, first.config.root.clone())?;
    let (entries, _) = lockstep_agent::report::measure_files(&scanner, &first.config, true)?;
    let digest = lockstep_proto::digest::digest(&entries).to_vec();
    let mut sims = Vec::with_capacity(agents);
    for h in &hosts {
        let signer = lockstep_agent::state::attestation_key(&fleet.host(h)?.config.state_dir)?;
        let mut client = fleet.agent_client(h)?;
        let full = Attestation {
            host: h.clone(),
            role: "smars".into(),
            seq: 1,
            measured_at_unix_ms: lockstep_proto::now_unix_ms(),
            digest: digest.clone(),
            full: true,
            entries: entries.clone(),
            ..Default::default()
        };
        let reply = client.submit(signer.seal_attestation(&full)).await?.into_inner();
        anyhow::ensure!(reply.accepted, "first attestation of {h} not accepted");
        sims.push((h.clone(), signer, client));
    }

    let accepted = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(agents);
    for (host, signer, client) in sims {
        let (accepted, digest) = (accepted.clone(), digest.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = client;
            let mut samples = Vec::new();
            let mut seq = 1;
            while Instant::now() < deadline {
                seq += 1;
                let heartbeat = Attestation {
                    host: host.clone(),
                    role: "smars".into(),
                    seq,
                    measured_at_unix_ms: lockstep_proto::now_unix_ms(),
                    digest: digest.clone(),
                    full: false,
                    ..Default::default()
                };
                let envelope = signer.seal_attestation(&heartbeat);
                let t = Instant::now();
                let reply = client.submit(envelope).await?.into_inner();
                samples.push(t.elapsed());
                anyhow::ensure!(reply.accepted, "heartbeat of {host} not accepted");
                accepted.fetch_add(1, Ordering::Relaxed);
            }
            Ok((signer, client, samples))
        }));
    }
    let mut samples = Vec::new();
    let mut again = Vec::with_capacity(agents);
    for t in tasks {
        let (signer, client, s) = t.await??;
        samples.extend(s);
        again.push((signer, client));
    }
    let took = start.elapsed();

    let calls = Arc::new(AtomicU64::new(0));
    let bare_start = Instant::now();
    let deadline = bare_start + duration;
    let mut tasks = Vec::with_capacity(agents);
    for (signer, mut client) in again {
        let calls = calls.clone();
        let public_key = signer.public_key().to_vec();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                client
                    .pin_key(PinKeyRequest {
                        public_key: public_key.clone(),
                    })
                    .await?;
                calls.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let bare_took = bare_start.elapsed();
    fleet.shutdown().await?;
    Ok(IngestResult {
        agents,
        accepted: accepted.load(Ordering::Relaxed),
        took,
        latencies: Latencies::new(samples),
        bare_calls: calls.load(Ordering::Relaxed),
        bare_took,
    })
}
