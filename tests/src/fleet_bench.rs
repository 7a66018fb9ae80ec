//! Fleet scale: the real `lockstep-controller` process with a large role
//! (10,000 hosts by default), every host a simulated agent with its own
//! enrolled identity, TLS connection and directive stream, multiplexed in
//! this process. Measures the controller's memory, `gate check` over the
//! whole role, a halt reaching every connected agent, and a deploy storm.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lockstep_controller::pki::{self, Subject};
use lockstep_proto::identity::OperatorRole;
use lockstep_proto::pb::console_service_client::ConsoleServiceClient;
use lockstep_proto::pb::{self, Attestation, Entry, EntryKind, GateState};
use lockstep_proto::tls::{self, TlsPaths};
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::bench::Latencies;

pub struct FleetResult {
    pub hosts: usize,
    pub enroll_took: Duration,
    pub controller_rss_bytes: u64,
    pub gate_check: Latencies,
    pub halt_to_all: Duration,
    /// From the last storm report acknowledged to every gate OPEN on the new release.
    pub storm_settle: Duration,
    pub storm_span: Duration,
}

const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// The `lockstep-controller` binary next to the running executable.
pub fn controller_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("lockstep-controller");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    anyhow::bail!(
        "no lockstep-controller binary next to {}: build it first (cargo build [--release] -p lockstep-controller)",
        exe.display()
    )
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

/// A small version set (the same on every host: stored once, by digest).
fn entries(build: &str) -> Vec<Entry> {
    let files = [
        ("/opt/smars/bin/smars", build),
        ("/opt/smars/etc/smars.conf", "venue = NYSE"),
    ];
    let list = files
        .iter()
        .map(|(path, content)| Entry {
            path: path.as_bytes().to_vec(),
            kind: EntryKind::File as i32,
            sha256: ring::digest::digest(&ring::digest::SHA256, content.as_bytes())
                .as_ref()
                .to_vec(),
            size: content.len() as u64,
            mode: 0o755,
            ..Default::default()
        })
        .collect();
    lockstep_proto::digest::canonicalize(list).unwrap_or_default()
}

fn console(addr: &str, paths: &TlsPaths) -> anyhow::Result<ConsoleServiceClient<Channel>> {
    let channel = tls::channel(addr, "127.0.0.1", tls::client_config(paths)?, Duration::from_secs(10))?;
    Ok(ConsoleServiceClient::new(channel).max_decoding_message_size(256 << 20))
}

fn operator(pki_dir: &Path, name: &str, role: OperatorRole) -> anyhow::Result<TlsPaths> {
    let out = pki_dir.join(name);
    pki::issue(
        pki_dir,
        &Subject::Operator {
            name: name.into(),
            role,
        },
        &out,
        YEAR,
    )?;
    Ok(TlsPaths {
        ca: pki_dir.join(pki::CA_CERT),
        cert: out.with_extension("pem"),
        key: out.with_extension("key"),
    })
}

/// What every simulated agent's stream has seen, counted.
#[derive(Default)]
struct Seen {
    open: AtomicUsize,
    closed: AtomicUsize,
}

/// Runs the whole fleet benchmark with `hosts` simulated agents.
pub async fn fleet(hosts: usize) -> anyhow::Result<FleetResult> {
    let dir = tempfile::Builder::new().prefix("lockstep-fleet-bench-").tempdir()?;
    let pki_dir = dir.path().join("pki");
    pki::init(&pki_dir, YEAR)?;
    pki::issue(
        &pki_dir,
        &Subject::Controller {
            names: vec!["127.0.0.1".into()],
        },
        &pki_dir.join("controller"),
        YEAR,
    )?;
    let alice = operator(&pki_dir, "alice", OperatorRole::Operator)?;
    let bob = operator(&pki_dir, "bob", OperatorRole::Approver)?;
    let names: Vec<String> = (1..=hosts).map(|i| format!("smars-{i:05}")).collect();
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr = format!("127.0.0.1:{port}");
    let config = dir.path().join("controller.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"{addr}\"\ndata_dir = \"{data}\"\nfreshness_ttl = \"600s\"\n[tls]\nca = \"{pki}/ca.pem\"\ncert = \"{pki}/controller.pem\"\nkey = \"{pki}/controller.key\"\n[enrollment]\nca_key = \"{pki}/ca.key\"\n[metrics]\nlisten = \"off\"\n[[role]]\nname = \"smars\"\nhosts = {names:?}\n",
            data = dir.path().join("controller").display(),
            pki = pki_dir.display(),
        ),
    )?;
    let child = Killed(
        Command::new(controller_binary()?)
            .arg("--config")
            .arg(&config)
            .env("LOCKSTEP_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?,
    );
    let pid = child.0.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(&addr).await.is_err() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "controller did not start listening on {addr}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut alice_console = console(&addr, &alice)?;
    let mut bob_console = console(&addr, &bob)?;

    // Enroll every host: a token each, then the agent side of enrollment.
    let enroll_start = Instant::now();
    let limit = Arc::new(tokio::sync::Semaphore::new(32));
    let mut enrolling = tokio::task::JoinSet::new();
    for name in &names {
        let token = alice_console
            .create_token(pb::CreateTokenRequest {
                host: name.clone(),
                role: "smars".into(),
                ttl_ms: 0,
            })
            .await?
            .into_inner()
            .token;
        let base = dir.path().join("hosts").join(name);
        let text = format!(
            "host = \"{name}\"\nrole = \"smars\"\nstate_dir = \"{state}\"\nwatch = [\"/opt/smars/**\"]\n[controller]\naddress = \"{addr}\"\nca = \"{pki}/ca.pem\"\ncert = \"{b}/agent.pem\"\nkey = \"{b}/agent.key\"\n",
            state = base.join("state").display(),
            pki = pki_dir.display(),
            b = base.display(),
        );
        let agent_config = lockstep_agent::config::AgentConfig::parse(&text, Path::new("agent.toml"))?;
        let permit = limit.clone().acquire_owned().await?;
        enrolling.spawn(async move {
            let _permit = permit;
            lockstep_agent::enrollment::enroll(&agent_config, &token, None).await?;
            anyhow::Ok(agent_config)
        });
    }
    let mut configs = Vec::with_capacity(hosts);
    while let Some(done) = enrolling.join_next().await {
        configs.push(done??);
    }
    let enroll_took = enroll_start.elapsed();

    // Every simulated agent: first report, then its directive stream; on
    // the storm signal, a report of the new build at a random point in 10 s.
    let seen = Arc::new(Seen::default());
    let (storm_tx, storm_rx) = watch::channel(false);
    let reported = Arc::new(AtomicUsize::new(0));
    let storm_done = Arc::new(std::sync::Mutex::new(Vec::<Instant>::new()));
    let old = entries("build 1");
    let new = entries("build 2");
    let mut agents = tokio::task::JoinSet::new();
    for (i, cfg) in configs.into_iter().enumerate() {
        let (seen, reported, storm_done) = (seen.clone(), reported.clone(), storm_done.clone());
        let (old, new, mut storm_rx) = (old.clone(), new.clone(), storm_rx.clone());
        agents.spawn(async move {
            let signer = lockstep_agent::state::attestation_key(&cfg.state_dir)?;
            let channel = tls::channel(
                &cfg.controller.address,
                &cfg.controller.server_name,
                tls::client_config(&cfg.controller.tls)?,
                Duration::from_secs(30),
            )?;
            let mut client = pb::agent_service_client::AgentServiceClient::new(channel);
            let report = |seq: u64, set: &[Entry]| Attestation {
                host: cfg.host.clone(),
                role: "smars".into(),
                seq,
                measured_at_unix_ms: lockstep_proto::now_unix_ms(),
                digest: lockstep_proto::digest::digest(set).to_vec(),
                full: true,
                entries: set.to_vec(),
                ..Default::default()
            };
            // Like a real agent, retry while 10,000 connections queue up.
            let mut backoff = lockstep_proto::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
            let mut stream = loop {
                let first = async {
                    client.submit(signer.seal_attestation(&report(1, &old))).await?;
                    client.directives(pb::DirectivesRequest {}).await
                };
                match first.await {
                    Ok(s) => break s.into_inner(),
                    Err(e) if e.code() == tonic::Code::Unavailable || e.code() == tonic::Code::Unknown => {
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            reported.fetch_add(1, Ordering::Relaxed);
            let mut last = GateState::Unspecified;
            let mut storm_sent = false;
            loop {
                tokio::select! {
                    msg = stream.message() => {
                        let Some(d) = msg? else { return anyhow::Ok(()) };
                        if let Some(pb::directive::Kind::Gate(g)) = d.kind {
                            let state = g.state();
                            if state != last {
                                match state {
                                    GateState::Open => { seen.open.fetch_add(1, Ordering::Relaxed); }
                                    GateState::Closed => { seen.closed.fetch_add(1, Ordering::Relaxed); }
                                    _ => {}
                                }
                                last = state;
                            }
                        }
                    }
                    changed = storm_rx.changed(), if !storm_sent => {
                        if changed.is_err() { return Ok(()) }
                        storm_sent = true;
                        // Spread over 10 s, deterministically by index.
                        let at = Duration::from_millis((i as u64 * 7919) % 10_000);
                        tokio::time::sleep(at).await;
                        client.submit(signer.seal_attestation(&report(2, &new))).await?;
                        storm_done.lock().unwrap_or_else(|p| p.into_inner()).push(Instant::now());
                    }
                }
            }
        });
    }
    let wait_until = |what: &'static str, ok: Box<dyn Fn() -> bool + Send>| async move {
        let deadline = Instant::now() + Duration::from_secs(600);
        while !ok() {
            anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        anyhow::Ok(())
    };
    let r = reported.clone();
    let first_reports = wait_until(
        "every host's first report",
        Box::new(move || r.load(Ordering::Relaxed) >= hosts),
    );
    tokio::select! {
        done = first_reports => done?,
        Some(failed) = agents.join_next() => {
            failed??;
            anyhow::bail!("a simulated agent stopped before reporting");
        }
    }

    // Release 1 from a host's set; every gate opens.
    let propose = |source| pb::ProposeReleaseRequest {
        role: "smars".into(),
        source: Some(source),
        note: "bench".into(),
    };
    let first = names[0].clone();
    let r1 = alice_console
        .propose_release(propose(pb::propose_release_request::Source::FromHost(first)))
        .await?
        .into_inner();
    bob_console
        .approve_release(pb::ApproveReleaseRequest { number: r1.number })
        .await?;
    let s = seen.clone();
    wait_until(
        "every gate OPEN",
        Box::new(move || s.open.load(Ordering::Relaxed) >= hosts),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let controller_rss_bytes = rss_of(pid);

    let mut samples = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let reply = bob_console
            .gate_check(pb::GateCheckRequest { role: "smars".into() })
            .await?
            .into_inner();
        samples.push(t.elapsed());
        anyhow::ensure!(
            reply.gates.len() == hosts,
            "gate check returned {} gates",
            reply.gates.len()
        );
    }

    // The kill switch, timed to the last agent's stream.
    let closed_before = seen.closed.load(Ordering::Relaxed);
    let t = Instant::now();
    alice_console
        .halt(pb::HaltRequest {
            scope: Some(pb::HaltScope {
                scope: Some(pb::halt_scope::Scope::Role("smars".into())),
            }),
            reason: "bench".into(),
        })
        .await?;
    let s = seen.clone();
    wait_until(
        "every agent to hear the halt",
        Box::new(move || s.closed.load(Ordering::Relaxed) >= closed_before + hosts),
    )
    .await?;
    let halt_to_all = t.elapsed();
    let open_before = seen.open.load(Ordering::Relaxed);
    alice_console
        .resume(pb::ResumeRequest {
            scope: Some(pb::HaltScope {
                scope: Some(pb::halt_scope::Scope::Role("smars".into())),
            }),
            reason: "bench".into(),
        })
        .await?;
    let s = seen.clone();
    wait_until(
        "every gate OPEN again",
        Box::new(move || s.open.load(Ordering::Relaxed) >= open_before + hosts),
    )
    .await?;

    // The deploy storm: release 2 approved first (every gate closes), then
    // every host reports the new build within 10 s.
    let r2 = alice_console
        .propose_release(propose(pb::propose_release_request::Source::Manifest(pb::Manifest {
            entries: new.clone(),
        })))
        .await?
        .into_inner();
    bob_console
        .approve_release(pb::ApproveReleaseRequest { number: r2.number })
        .await?;
    let open_before = seen.open.load(Ordering::Relaxed);
    let storm_start = Instant::now();
    storm_tx.send_replace(true);
    let d = storm_done.clone();
    wait_until(
        "every storm report acknowledged",
        Box::new(move || d.lock().unwrap_or_else(|p| p.into_inner()).len() >= hosts),
    )
    .await?;
    let last_report = storm_done
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .max()
        .copied()
        .unwrap_or(storm_start);
    let mut console_again = bob_console.clone();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let reply = console_again
            .gate_check(pb::GateCheckRequest { role: "smars".into() })
            .await?
            .into_inner();
        if reply.release == r2.number && reply.gates.iter().all(|g| g.state() == GateState::Open) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the fleet did not settle after the storm");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let storm_settle = last_report.elapsed();
    let s = seen.clone();
    wait_until(
        "every agent to hear OPEN after the storm",
        Box::new(move || s.open.load(Ordering::Relaxed) >= open_before + hosts),
    )
    .await?;
    agents.abort_all();
    drop(child);
    Ok(FleetResult {
        hosts,
        enroll_took,
        controller_rss_bytes,
        gate_check: Latencies::new(samples),
        halt_to_all,
        storm_settle,
        storm_span: last_report.duration_since(storm_start),
    })
}
