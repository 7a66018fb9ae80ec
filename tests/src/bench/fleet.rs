//! Fleet scale: the real `lockstep-controller` process with a large role
//! (10,000 hosts by default), every host a simulated agent with its own
//! enrolled identity, TLS connection and directive stream, multiplexed in
//! this process. Measures the controller's memory, `gate check` over the
//! whole role, a halt reaching every connected agent, and a deploy storm.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lockstep_proto::pb::{self, Entry, GateState};
use tokio::sync::watch;

use crate::bench::Latencies;
use crate::fleet::process::{ProcFleet, ProcSpec, agent_client, entries, report};

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

/// What every simulated agent's stream has seen, counted.
#[derive(Default)]
struct Seen {
    open: AtomicUsize,
    closed: AtomicUsize,
}

/// Runs the whole fleet benchmark with `hosts` simulated agents.
pub async fn fleet(hosts: usize) -> anyhow::Result<FleetResult> {
    fleet_on(hosts, false).await
}

/// [`fleet`] with the controller's ledger on sled, or (`etcd`) in a real
/// 3-member etcd cluster on loopback.
pub async fn fleet_on(hosts: usize, etcd: bool) -> anyhow::Result<FleetResult> {
    let names: Vec<String> = (1..=hosts).map(|i| format!("smars-{i:05}")).collect();
    let fleet = ProcFleet::start(ProcSpec {
        etcd,
        ..ProcSpec::smars(names.clone())
    })
    .await?;
    let pid = fleet.controller_pid().unwrap_or(0);
    let mut alice_console = fleet.console(&fleet.alice)?;
    let mut bob_console = fleet.console(&fleet.bob)?;

    // Enroll every host: a token each, then the agent side of enrollment.
    let enroll_start = Instant::now();
    let configs = fleet.enroll(&names, 32).await?;
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
            let mut client = agent_client(&cfg)?;
            // Attestations on the agent's own stream client, as agents send them.
            let mut attest = lockstep_agent::link::attest_stream::AttestStream::new(client.clone());
            let report = |seq: u64, set: &[Entry]| report(&cfg.host, seq, set, true);
            // Like a real agent, retry while 10,000 connections queue up.
            let mut backoff =
                lockstep_daemon::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
            let mut stream = loop {
                let first = async {
                    attest.send(signer.seal_attestation(&report(1, &old))).await?;
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
                        attest.send(signer.seal_attestation(&report(2, &new))).await?;
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
        boot_from_host: String::new(),
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
    // A moment for the allocator to settle before RSS is read.
    tokio::time::sleep(Duration::from_millis(500)).await;
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
            drill: false,
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
    drop(fleet);
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
