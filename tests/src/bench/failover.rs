//! Failover time on etcd, in each way a leader stops answering: killed
//! (`kill -9`), frozen (SIGSTOP: a hung box, no RST), its box cut off from
//! the network, or cut off from etcd only (each controller in its own
//! network namespace; frames dropped on the bridge, no RST). Per trial,
//! from the moment the leader stops answering: a standby leads and answers;
//! every agent's report is accepted by it; a console given every address
//! (the failed one first) answers; then a halt acknowledged by the new
//! leader is timed into every agent's gate file. Gate flaps and lost halts
//! are counted. Measured, never asserted: `lockstep-bench --only failover`
//! prints it, docs/benchmarks.md records it, a smoke test runs it tiny.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lockstep_proto::pb;

use crate::bench::Latencies;
use crate::fleet::ha::{HaFleet, HaSpec};

/// How the leader stops answering.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// `kill -9` (its connections get RST).
    Kill,
    /// SIGSTOP: a hung box (its kernel still accepts TCP; nothing answers).
    Freeze,
    /// Its box's cable cut: every frame dropped, both ways.
    Cut,
    /// Cut off from etcd only: agents and consoles still reach it.
    CutEtcd,
}

impl Mode {
    pub fn label(self) -> &'static str {
        match self {
            Self::Kill => "kill -9",
            Self::Freeze => "frozen (SIGSTOP)",
            Self::Cut => "box cut off",
            Self::CutEtcd => "cut off from etcd",
        }
    }
}

/// One mode's trials.
pub struct ModeResult {
    pub mode: Mode,
    /// Stop → a standby leads and answers.
    pub leader: Latencies,
    /// Stop → every agent's attestation accepted by the new leader.
    pub agents: Latencies,
    /// A `lockstep halts` given every address, the failed one first, just
    /// after the new leader leads: the whole command.
    pub console: Latencies,
    /// Halt acknowledged by the new leader → in every agent's gate file.
    pub halt: Latencies,
    /// Local gates seen CLOSED between the stop and the halt.
    pub flaps: usize,
    /// Halts acknowledged and not in force on the next leader.
    pub lost: usize,
}

pub struct Failover {
    pub agents: usize,
    pub leader_ttl_s: u64,
    pub modes: Vec<ModeResult>,
}

/// `trials` failovers in each of `modes` of a fleet of `agents` real
/// agents, each controller in a network namespace of its own (root).
pub async fn failover(agents: usize, trials: usize, leader_ttl_s: u64, modes: &[Mode]) -> anyhow::Result<Failover> {
    let hosts: Vec<String> = (1..=agents).map(|i| format!("smars-{i:03}")).collect();
    let spec = HaSpec {
        isolated: true,
        ..HaSpec::three(hosts.clone(), Duration::from_secs(60), leader_ttl_s)
    };
    let (mut fleet, running, _) = HaFleet::trading(spec, &hosts).await?;
    let mut results = Vec::new();
    let mut acknowledged: Vec<u64> = Vec::new();
    for &mode in modes {
        let mut r = ModeResult {
            mode,
            leader: Latencies::new(Vec::new()),
            agents: Latencies::new(Vec::new()),
            console: Latencies::new(Vec::new()),
            halt: Latencies::new(Vec::new()),
            flaps: 0,
            lost: 0,
        };
        let (mut to_leader, mut to_agents, mut to_console, mut to_gates) = (vec![], vec![], vec![], vec![]);
        for trial in 0..trials {
            let t = trial_once(&mut fleet, &hosts, mode, trial, &mut acknowledged).await?;
            to_leader.push(t.leader);
            to_agents.push(t.agents);
            to_console.push(t.console);
            to_gates.push(t.halt);
            r.flaps += t.flaps;
            r.lost += t.lost;
        }
        r.leader = Latencies::new(to_leader);
        r.agents = Latencies::new(to_agents);
        r.console = Latencies::new(to_console);
        r.halt = Latencies::new(to_gates);
        results.push(r);
    }
    drop(running);
    Ok(Failover {
        agents,
        leader_ttl_s,
        modes: results,
    })
}

struct Trial {
    leader: Duration,
    agents: Duration,
    console: Duration,
    halt: Duration,
    flaps: usize,
    lost: usize,
}

async fn trial_once(
    fleet: &mut HaFleet,
    hosts: &[String],
    mode: Mode,
    trial: usize,
    acknowledged: &mut Vec<u64>,
) -> anyhow::Result<Trial> {
    let (old, _) = fleet.wait_leader(None, Duration::from_secs(60)).await?;
    wait_streams(fleet, old, hosts.len(), Duration::from_secs(120)).await?;
    for h in hosts {
        fleet.wait_local(h, 0, Duration::from_secs(60)).await?;
    }
    // Gate files sampled from the stop until the halt.
    let sampling = Arc::new(AtomicBool::new(true));
    let flaps = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (sampling, flaps, hosts) = (sampling.clone(), flaps.clone(), hosts.to_vec());
        let files: Vec<_> = hosts.iter().map(|h| fleet.gate_file_path(h)).collect();
        tokio::spawn(async move {
            while sampling.load(Ordering::SeqCst) {
                let now = lockstep_proto::now_unix_ms();
                for f in &files {
                    let open = lockstep_agent::gate::gatekeeper::GateFile::read(f)
                        .ok()
                        .flatten()
                        .is_some_and(|g| g.is_open_at(now));
                    if !open {
                        flaps.fetch_add(1, Ordering::SeqCst);
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let stopped_ms = lockstep_proto::now_unix_ms();
    let stopped = Instant::now();
    match mode {
        Mode::Kill => fleet.kill_controller(old),
        Mode::Freeze => fleet.pause_controller(old, true)?,
        Mode::Cut => fleet.cut(old)?,
        Mode::CutEtcd => fleet.cut_from_etcd(old)?,
    }
    let (_, epoch) = fleet.wait_leader(Some(old), Duration::from_secs(60)).await?;
    let leader = stopped.elapsed();
    wait_reported(fleet, hosts, stopped_ms, Duration::from_secs(60)).await?;
    let agents = stopped.elapsed();
    sampling.store(false, Ordering::SeqCst);
    let _ = sampler.await;
    let asked = Instant::now();
    let (code, out, err) = fleet.lockstep_via(&fleet.alice, old, &["halts"])?;
    anyhow::ensure!(code == 0, "`lockstep halts` with the failed leader first: {out}{err}");
    let console = asked.elapsed();

    let reason = format!("failover drill {} {trial}", mode.label());
    let mut halting = fleet.console_via(&fleet.alice, old).await?;
    let halted = halting
        .halt(pb::HaltRequest {
            scope: Some(pb::HaltScope {
                scope: Some(pb::halt_scope::Scope::Role("smars".into())),
            }),
            reason: reason.clone(),
            drill: true,
        })
        .await?
        .into_inner();
    let acked = Instant::now();
    acknowledged.push(halted.halt.as_ref().map_or(0, |h| h.id));
    let deadline = acked + Duration::from_secs(30);
    for h in hosts {
        let path = fleet.gate_file_path(h);
        loop {
            let f = lockstep_agent::gate::gatekeeper::GateFile::read(&path)?;
            if f.is_some_and(|f| f.state == "CLOSED" && f.reasons.iter().any(|r| r.contains(&reason))) {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "{h}: the halt never reached its gate file");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let halt = acked.elapsed();
    halting
        .resume(pb::ResumeRequest {
            scope: Some(pb::HaltScope {
                scope: Some(pb::halt_scope::Scope::Role("smars".into())),
            }),
            reason: "drill over".into(),
        })
        .await?;
    // Every halt acknowledged so far is kept by whoever leads now.
    let kept = halting
        .list_halts(pb::ListHaltsRequest { all: true })
        .await?
        .into_inner();
    let lost = acknowledged
        .iter()
        .filter(|id| !kept.halts.iter().any(|h| h.id == **id))
        .count();
    // Back as it was: the failed controller returns and stands by.
    match mode {
        Mode::Kill => fleet.start_controller(old)?,
        Mode::Freeze => fleet.pause_controller(old, false)?,
        Mode::Cut | Mode::CutEtcd => fleet.mend()?,
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while fleet.role_of(old).await != Some((false, epoch)) {
        anyhow::ensure!(Instant::now() < deadline, "controller {old} never stood by again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(Trial {
        leader,
        agents,
        console,
        halt,
        flaps: flaps.load(Ordering::SeqCst),
        lost,
    })
}

/// Until the leader has accepted a report from every one of `hosts`
/// received after `since_unix_ms` (polled every 20 ms).
async fn wait_reported(fleet: &HaFleet, hosts: &[String], since_unix_ms: i64, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    let mut console = fleet.console(&fleet.alice).await?;
    loop {
        if let Ok(list) = console.list_hosts(pb::ListHostsRequest::default()).await {
            let list = list.into_inner().hosts;
            let fresh = hosts.iter().all(|h| {
                list.iter()
                    .any(|s| &s.host == h && s.last_received_at_unix_ms > since_unix_ms)
            });
            if fresh {
                return Ok(());
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "not every agent reported to the new leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Until controller `i` holds `agents` directive streams.
async fn wait_streams(fleet: &HaFleet, i: usize, agents: usize, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while fleet.gauge(i, "lockstep_connected_agents").await != Some(agents as i64) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "controller {i} never held {agents} directive streams (has {:?})",
            fleet.gauge(i, "lockstep_connected_agents").await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
