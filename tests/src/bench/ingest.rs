//! Controller ingest: the real `lockstep-controller` process and N simulated
//! agents in this process, each its own enrolled identity (its own
//! certificate, TLS connection and Ed25519 key), sending signed heartbeats
//! over real mTLS as fast as the controller acknowledges them (each
//! acknowledged one is verified and durable). Next to it, in the same run:
//! ring's Ed25519 verification rate on one core and a bare mTLS unary call
//! (PinKey) through the same stack, and the CPU each side spent, so the
//! controller's own cost per attestation is known apart from the load
//! generator that shares its cores.
//!
//! Beside them, a plain tonic service on the same TLS configuration and
//! the same client stack (gRPC health's `Check`, in a process of its own,
//! [`noop_server`]): what a do-nothing mTLS call costs here, so lockstep's
//! bare call and a streamed heartbeat can be read against it.
//!
//! Heartbeats are signed before the timed window (within the controller's
//! 30 s clock-skew limit): on a real fleet each host signs its own, so the
//! signing is not the controller's machine's work.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lockstep_agent::link::attest_stream::AttestStream;
use lockstep_link::failover::FailoverChannel;
use lockstep_proto::pb::agent_service_client::AgentServiceClient;
use lockstep_proto::pb::{Envelope, PinKeyRequest};

use crate::bench::Latencies;
use crate::fleet::process::{ProcFleet, ProcSpec, agent_client, entries, report};

/// The most heartbeats per second signed ahead: above any rate 2 cores reach.
const MAX_RATE: u64 = 30_000;
/// Signed-ahead heartbeats must still be inside the controller's 30 s skew.
const MAX_WINDOW: Duration = Duration::from_secs(20);

/// How the simulated agents send their heartbeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// Each agent's long-lived `Attest` stream, as agents do.
    Stream,
    /// One unary `Submit` call per heartbeat.
    Unary,
}

/// One window of heartbeats sent as fast as they are acknowledged.
pub struct HeartbeatWindow {
    pub accepted: u64,
    pub took: Duration,
    pub latencies: Latencies,
    /// CPU the controller process used during the window.
    pub controller_cpu: Duration,
    /// CPU this process (the simulated agents) used during the window.
    pub generator_cpu: Duration,
    /// An agent ran out of signed-ahead heartbeats before the window ended.
    pub ran_dry: bool,
}

impl HeartbeatWindow {
    pub fn per_second(&self) -> f64 {
        self.accepted as f64 / self.took.as_secs_f64()
    }

    /// Controller CPU per acknowledged attestation, µs.
    pub fn controller_us_per_attestation(&self) -> f64 {
        self.controller_cpu.as_secs_f64() * 1e6 / self.accepted.max(1) as f64
    }

    /// Generator CPU per attestation, µs.
    pub fn generator_us_per_attestation(&self) -> f64 {
        self.generator_cpu.as_secs_f64() * 1e6 / self.accepted.max(1) as f64
    }
}

pub struct IngestResult {
    pub agents: usize,
    /// Heartbeats on each agent's `Attest` stream.
    pub streamed: HeartbeatWindow,
    /// Heartbeats as one unary `Submit` each.
    pub unary: HeartbeatWindow,
    pub bare_calls: u64,
    pub bare_took: Duration,
    pub bare_controller_cpu: Duration,
    /// Encoded request sizes: a heartbeat's envelope and a PinKey request.
    pub heartbeat_bytes: usize,
    pub bare_bytes: usize,
    /// Calls to the plain tonic no-op service, same agents, same TLS.
    pub noop_calls: u64,
    pub noop_took: Duration,
    pub noop_server_cpu: Duration,
}

impl IngestResult {
    pub fn bare_per_second(&self) -> f64 {
        self.bare_calls as f64 / self.bare_took.as_secs_f64()
    }

    /// Controller CPU per bare call, µs.
    pub fn controller_us_per_bare_call(&self) -> f64 {
        self.bare_controller_cpu.as_secs_f64() * 1e6 / self.bare_calls.max(1) as f64
    }

    pub fn noop_per_second(&self) -> f64 {
        self.noop_calls as f64 / self.noop_took.as_secs_f64()
    }

    /// The no-op server's CPU per call, µs.
    pub fn noop_us_per_call(&self) -> f64 {
        self.noop_server_cpu.as_secs_f64() * 1e6 / self.noop_calls.max(1) as f64
    }
}

/// A TLS connection as tonic serves it (no peer information needed).
struct NoopConn(tokio_rustls::server::TlsStream<tokio::net::TcpStream>);

impl tonic::transport::server::Connected for NoopConn {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl tokio::io::AsyncRead for NoopConn {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for NoopConn {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// `lockstep-bench --noop-server LISTEN CA CERT KEY`: a plain tonic server
/// with gRPC health only (its `Check` does nothing but answer), on
/// lockstep's server TLS configuration (TLS 1.3, a client certificate of
/// the fleet CA required), until killed.
pub async fn noop_server(args: &[String]) -> anyhow::Result<()> {
    let [listen, ca, cert, key] = args else {
        anyhow::bail!("--noop-server LISTEN CA CERT KEY");
    };
    let paths = lockstep_link::tls::TlsPaths {
        ca: ca.into(),
        cert: cert.into(),
        key: key.into(),
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(lockstep_link::tls::server_config(&paths)?);
    let listener = tokio::net::TcpListener::bind(listen.as_str()).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<NoopConn>>(64);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    let _ = tx.send(Ok(NoopConn(tls))).await;
                }
            });
        }
    });
    let (_, health) = tonic_health::server::health_reporter();
    tonic::transport::Server::builder()
        .add_service(health)
        .serve_with_incoming(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?;
    Ok(())
}

/// CPU time (user + system, every thread) of a process so far, from
/// `/proc/PID/stat` (clock ticks of 10 ms: Linux's fixed USER_HZ).
pub fn cpu_time(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the `(comm)`, which may itself hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after comm.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
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
    ingest_on(agents, duration, false).await
}

/// [`ingest`] with the controller's ledger on sled, or (`etcd`) in a real
/// 3-member etcd cluster on loopback, the controller leading it.
pub async fn ingest_on(agents: usize, duration: Duration, etcd: bool) -> anyhow::Result<IngestResult> {
    anyhow::ensure!(
        duration <= MAX_WINDOW,
        "at most {} s of heartbeats: they are signed ahead and must stay inside the controller's 30 s clock-skew limit",
        MAX_WINDOW.as_secs()
    );
    let hosts: Vec<String> = (1..=agents).map(|i| format!("smars-{i:05}")).collect();
    let fleet = ProcFleet::start(ProcSpec {
        etcd,
        // A setting to compare, e.g. "[store]\ncache_mib = 1024" against the default.
        extra_toml: std::env::var("LOCKSTEP_BENCH_CONTROLLER_TOML").unwrap_or_default(),
        ..ProcSpec::smars(hosts.clone())
    })
    .await?;
    let pid = fleet
        .controller_pid()
        .ok_or_else(|| anyhow::anyhow!("the controller process is not running"))?
        .to_string();
    let configs = fleet.enroll(&hosts, 32).await?;

    // One small version set shared by every host (stored once, by digest);
    // each host sends it in full once, then heartbeats name its digest.
    let set = entries("build 1");
    let mut sims = Vec::with_capacity(agents);
    for cfg in &configs {
        let signer = lockstep_agent::state::attestation_key(&cfg.state_dir)?;
        let mut client = agent_client(cfg)?;
        let reply = client
            .submit(signer.seal_attestation(&report(&cfg.host, 1, &set, true)))
            .await?
            .into_inner();
        anyhow::ensure!(reply.accepted, "first attestation of {} not accepted", cfg.host);
        sims.push((cfg.host.clone(), signer, client));
    }

    let heartbeat_bytes = sims.first().map_or(0, |(host, signer, _)| {
        prost::Message::encoded_len(&signer.seal_attestation(&report(host, 0, &set, false)))
    });
    let bare_bytes = prost::Message::encoded_len(&PinKeyRequest {
        public_key: vec![0; 32],
    });
    // Heartbeats on each agent's Attest stream (what agents send), then one
    // unary Submit each (the call agents made before the stream), each
    // window signed just before it so every heartbeat is inside the skew.
    let mut next_seq = 2;
    let streamed = heartbeat_window(&pid, &sims, &set, &mut next_seq, duration, Via::Stream).await?;
    let unary = heartbeat_window(&pid, &sims, &set, &mut next_seq, duration, Via::Unary).await?;

    let calls = Arc::new(AtomicU64::new(0));
    let bare_cpu0 = cpu_time(&pid);
    let bare_start = Instant::now();
    let deadline = bare_start + duration;
    let mut tasks = Vec::with_capacity(agents);
    for (_, signer, client) in &sims {
        let (calls, mut client) = (calls.clone(), client.clone());
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
    let bare_controller_cpu = cpu_time(&pid).saturating_sub(bare_cpu0);

    // The same agents, the same TLS and client stack, a do-nothing service.
    let noop_at = format!("127.0.0.1:{}", crate::ports::free_port()?);
    let pki = fleet.pki_dir.clone();
    let noop = crate::child::Killed(
        std::process::Command::new(crate::child::binary("lockstep-bench")?)
            .arg("--noop-server")
            .arg(&noop_at)
            .arg(pki.join("ca.pem"))
            .arg(pki.join("controller.pem"))
            .arg(pki.join("controller.key"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?,
    );
    let noop_pid = noop.0.id().to_string();
    let mut noop_clients = Vec::with_capacity(configs.len());
    for cfg in &configs {
        let channel = lockstep_link::failover::channel(
            &noop_at,
            "127.0.0.1",
            lockstep_link::tls::client_config(&cfg.controller.tls)?,
            Duration::from_secs(30),
        )?;
        noop_clients.push(tonic_health::pb::health_client::HealthClient::new(channel));
    }
    // Until it answers (it is starting).
    let ready_by = Instant::now() + Duration::from_secs(30);
    while noop_clients[0]
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .is_err()
    {
        anyhow::ensure!(
            Instant::now() < ready_by,
            "the no-op server never answered at {noop_at}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let noop_calls = Arc::new(AtomicU64::new(0));
    let noop_cpu0 = cpu_time(&noop_pid);
    let noop_start = Instant::now();
    let deadline = noop_start + duration;
    let mut tasks = Vec::with_capacity(agents);
    for mut client in noop_clients {
        let calls = noop_calls.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                client.check(tonic_health::pb::HealthCheckRequest::default()).await?;
                calls.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let noop_took = noop_start.elapsed();
    let noop_server_cpu = cpu_time(&noop_pid).saturating_sub(noop_cpu0);
    drop(noop);
    drop(fleet);
    Ok(IngestResult {
        agents,
        streamed,
        unary,
        bare_calls: calls.load(Ordering::Relaxed),
        bare_took,
        bare_controller_cpu,
        heartbeat_bytes,
        bare_bytes,
        noop_calls: noop_calls.load(Ordering::Relaxed),
        noop_took,
        noop_server_cpu,
    })
}

type Sim = (
    String,
    lockstep_proto::envelope::Signer,
    AgentServiceClient<FailoverChannel>,
);

/// Signs `per_agent` heartbeats for every agent from `first_seq` on, on every core.
fn sign_ahead(sims: &[Sim], set: &[lockstep_proto::pb::Entry], first_seq: u64, per_agent: u64) -> Vec<Vec<Envelope>> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunk = sims.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let workers: Vec<_> = sims
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|(host, signer, _)| {
                            (first_seq..first_seq + per_agent)
                                .map(|seq| signer.seal_attestation(&report(host, seq, set, false)))
                                .collect::<Vec<_>>()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap_or_default()).collect()
    })
}

/// Every agent sends heartbeats `via` its stream or unary calls, one in
/// flight each, for `duration`; the heartbeats are signed first.
async fn heartbeat_window(
    pid: &str,
    sims: &[Sim],
    set: &[lockstep_proto::pb::Entry],
    next_seq: &mut u64,
    duration: Duration,
    via: Via,
) -> anyhow::Result<HeartbeatWindow> {
    let per_agent = (MAX_RATE * duration.as_millis() as u64 / 1000)
        .div_ceil(sims.len() as u64)
        .max(1);
    let signed = sign_ahead(sims, set, *next_seq, per_agent);
    anyhow::ensure!(signed.len() == sims.len(), "signing ahead failed");
    *next_seq += per_agent;
    let accepted = Arc::new(AtomicU64::new(0));
    let ran_dry = Arc::new(AtomicBool::new(false));
    let (cpu0, gen0) = (cpu_time(pid), cpu_time("self"));
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(sims.len());
    for ((host, _, client), heartbeats) in sims.iter().zip(signed) {
        let (accepted, ran_dry, host, mut client) = (accepted.clone(), ran_dry.clone(), host.clone(), client.clone());
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut heartbeats = heartbeats.into_iter();
            // The agent's own stream client, as agents send attestations.
            let mut stream = (via == Via::Stream).then(|| AttestStream::new(client.clone()));
            while Instant::now() < deadline {
                let Some(envelope) = heartbeats.next() else {
                    ran_dry.store(true, Ordering::Relaxed);
                    break;
                };
                let t = Instant::now();
                let reply = match &mut stream {
                    Some(stream) => stream.send(envelope).await?,
                    None => client.submit(envelope).await?.into_inner(),
                };
                samples.push(t.elapsed());
                anyhow::ensure!(reply.accepted, "heartbeat of {host} not accepted");
                accepted.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(samples)
        }));
    }
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await??);
    }
    let took = start.elapsed();
    Ok(HeartbeatWindow {
        accepted: accepted.load(Ordering::Relaxed),
        took,
        latencies: Latencies::new(samples),
        controller_cpu: cpu_time(pid).saturating_sub(cpu0),
        generator_cpu: cpu_time("self").saturating_sub(gen0),
        ran_dry: ran_dry.load(Ordering::Relaxed),
    })
}
