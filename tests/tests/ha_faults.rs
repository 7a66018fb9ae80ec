//! HA on etcd under the faults a real network and a real box make, not only
//! a clean kill: a frozen leader (SIGSTOP: the box hangs, no RST), a leader
//! whose box is cut off (each controller in its own network namespace, its
//! frames dropped on the bridge both ways), a leader cut off from etcd only
//! (agents and consoles still reach it: it must stand down and answer
//! nothing OPEN), and an etcd that keeps a dead leader's lease alive past
//! its TTL. Real etcd (3 members, its own CA), real controller and agent
//! processes. The cut tests need root (CAP_NET_ADMIN), as `.ci/run` has.
//! How long each takes is measured in `lockstep-bench --only failover`,
//! never asserted here.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lockstep_proto::pb;
use lockstep_tests::child::Killed;
use lockstep_tests::fleet::ha::{HaFleet, HaSpec};

fn hosts(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("desk-{i:02}")).collect()
}

async fn trading(isolated: bool, n: usize) -> (HaFleet, Vec<Killed>) {
    let spec = HaSpec {
        isolated,
        ..HaSpec::three(hosts(n), Duration::from_secs(30), 2)
    };
    let (fleet, agents, _) = HaFleet::trading(spec, &hosts(n)).await.unwrap();
    (fleet, agents)
}

/// Halts the role through a console given every address, `first` first
/// (the failed leader, as an operator's list would have it), and waits for
/// the halt in every agent's gate file.
async fn halt_reaches_every_gate_file(fleet: &HaFleet, first: usize, n: usize, reason: &str) {
    let (code, out, err) = fleet
        .lockstep_via(&fleet.alice, first, &["halt", "--role", "smars", "--reason", reason])
        .unwrap();
    assert_eq!(code, 0, "halt through the console: {out}{err}");
    let deadline = Instant::now() + Duration::from_secs(20);
    for h in hosts(n) {
        loop {
            let file = fleet.gate_file(&h).unwrap();
            if file.state == "CLOSED" && file.reasons.iter().any(|r| r.contains(reason)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{h}: the halt never reached its gate file: {file:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A failover that closes no gate: `fail` stops leader `old` answering;
/// a standby leads, every agent reports to it, no local gate closed.
async fn fails_over_with_no_gate_closed(
    fleet: HaFleet,
    n: usize,
    fail: impl FnOnce(&HaFleet, usize),
) -> (HaFleet, usize) {
    let (old, _) = fleet.wait_leader(None, Duration::from_secs(30)).await.unwrap();
    let fleet = Arc::new(fleet);
    let stop = Arc::new(AtomicBool::new(false));
    let gates = fleet.clone().watch_gates(hosts(n), stop.clone());
    let failed_at_ms = lockstep_proto::now_unix_ms();
    fail(&fleet, old);
    let (new, _) = fleet.wait_leader(Some(old), Duration::from_secs(30)).await.unwrap();
    fleet
        .wait_reported_since(&hosts(n), failed_at_ms, Duration::from_secs(30))
        .await
        .unwrap();
    stop.store(true, Ordering::SeqCst);
    let closed = gates.await.unwrap();
    assert!(
        closed.is_empty(),
        "a failover closed gates:\n{}\n{}",
        closed.join("\n"),
        fleet.controller_logs_tail()
    );
    assert_ne!(new, old);
    (Arc::into_inner(fleet).expect("the watcher has ended"), old)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_leader_is_replaced_and_answers_nothing_open_when_it_wakes() {
    let n = 3;
    let (fleet, _agents) = trading(false, n).await;
    let (fleet, old) = fails_over_with_no_gate_closed(fleet, n, |f, old| f.pause_controller(old, true).unwrap()).await;
    // A console whose list starts at the frozen box still halts at once.
    halt_reaches_every_gate_file(&fleet, old, n, "frozen leader drill").await;
    // Woken, the old leader's view is stale (no halt in it): asked for a
    // gate check, it answers nothing, never OPEN.
    fleet.pause_controller(old, false).unwrap();
    let answer = fleet
        .console_at(old, &fleet.alice)
        .unwrap()
        .gate_check(pb::GateCheckRequest { role: "smars".into() })
        .await;
    // Refused, or its connection dropped as it stands down: no answer.
    let refused = answer.expect_err("a deposed leader answered a gate check");
    assert!(
        matches!(refused.code(), tonic::Code::Unavailable | tonic::Code::Unknown),
        "{refused:?}"
    );
    // ...and a console with it first is answered by the new leader: CLOSED.
    let (code, out, _) = fleet
        .lockstep_via(&fleet.bob, old, &["gate", "check", "--role", "smars"])
        .unwrap();
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("frozen leader drill"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_cut_off_from_the_network_is_replaced_and_a_halt_reaches_every_agent() {
    let n = 3;
    let (fleet, _agents) = trading(true, n).await;
    let (fleet, old) = fails_over_with_no_gate_closed(fleet, n, |f, old| f.cut(old).unwrap()).await;
    halt_reaches_every_gate_file(&fleet, old, n, "cut cable drill").await;
    // Mended, the old leader finds its lease gone and stands by.
    fleet.mend().unwrap();
    let (leader, epoch) = fleet.wait_leader(None, Duration::from_secs(30)).await.unwrap();
    assert_ne!(leader, old);
    let deadline = Instant::now() + Duration::from_secs(30);
    while fleet.role_of(old).await != Some((false, epoch)) {
        assert!(Instant::now() < deadline, "the mended old leader never stood by");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_cut_off_from_etcd_stands_down_and_a_deposed_leader_never_answers_a_gate_check() {
    let n = 3;
    let (fleet, _agents) = trading(true, n).await;
    let (old, _) = fleet.wait_leader(None, Duration::from_secs(30)).await.unwrap();
    let fleet = Arc::new(fleet);
    let stop = Arc::new(AtomicBool::new(false));
    // Never two leaders at once: each sweep asks all three at the same moment.
    let sweeps = {
        let (fleet, stop) = (fleet.clone(), stop.clone());
        tokio::spawn(async move {
            let mut both = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let (a, b, c) = tokio::join!(fleet.role_of(0), fleet.role_of(1), fleet.role_of(2));
                let leading: Vec<usize> = [a, b, c]
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.is_some_and(|r| r.0))
                    .map(|(i, _)| i)
                    .collect();
                if leading.len() > 1 {
                    both.push(leading);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            both
        })
    };
    // Gate checks asked of the cut-off leader alone, from the cut on.
    let cut = Arc::new(AtomicBool::new(false));
    let asked = {
        let (fleet, stop, cut) = (fleet.clone(), stop.clone(), cut.clone());
        tokio::spawn(async move {
            let mut answered = Vec::new();
            let mut console = fleet.console_at(old, &fleet.bob).unwrap();
            while !stop.load(Ordering::SeqCst) {
                if !cut.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                let reply = tokio::time::timeout(
                    Duration::from_secs(5),
                    console.gate_check(pb::GateCheckRequest { role: "smars".into() }),
                )
                .await;
                if let Ok(Ok(r)) = reply {
                    let r = r.into_inner();
                    let open = r.gates.iter().filter(|g| g.state() == pb::GateState::Open).count();
                    answered.push(format!("{open}/{} OPEN", r.gates.len()));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            answered
        })
    };
    let failed_at_ms = lockstep_proto::now_unix_ms();
    fleet.cut_from_etcd(old).unwrap();
    cut.store(true, Ordering::SeqCst);
    let (new, _) = fleet.wait_leader(Some(old), Duration::from_secs(30)).await.unwrap();
    assert_ne!(new, old);
    fleet
        .wait_reported_since(&hosts(n), failed_at_ms, Duration::from_secs(30))
        .await
        .unwrap();
    // Its gauge is down (its /metrics still answers: only etcd is cut).
    let deadline = Instant::now() + Duration::from_secs(10);
    while fleet.role_of(old).await.map(|r| r.0) != Some(false) {
        assert!(Instant::now() < deadline, "the cut-off leader still says it leads");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A halt acknowledged by the new leader; the old one, asked at once,
    // answers nothing; a console with it first answers from the new one.
    halt_reaches_every_gate_file(&fleet, old, n, "cut from etcd drill").await;
    let refused = fleet
        .console_at(old, &fleet.bob)
        .unwrap()
        .gate_check(pb::GateCheckRequest { role: "smars".into() })
        .await
        .expect_err("the deposed leader answered a gate check after the halt");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    let (code, out, err) = fleet
        .lockstep_via(&fleet.bob, old, &["gate", "check", "--role", "smars"])
        .unwrap();
    assert_ne!(code, 0, "{out}{err}");
    assert!(out.contains("cut from etcd drill"), "{out}");
    let (code, out, err) = fleet.lockstep_via(&fleet.bob, old, &["cluster", "status"]).unwrap();
    assert_eq!(code, 0, "cluster status with the cut-off controller first: {out}{err}");
    assert!(out.contains(&format!("ctl-{new}")), "{out}");

    stop.store(true, Ordering::SeqCst);
    let both = sweeps.await.unwrap();
    assert!(both.is_empty(), "two controllers said they lead at once: {both:?}");
    let answered = asked.await.unwrap();
    assert!(
        answered.is_empty(),
        "the leader cut off from etcd answered gate checks it could not record: {answered:?}"
    );
    fleet.mend().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_leader_s_lease_kept_alive_past_its_ttl_is_revoked_by_a_standby() {
    let n = 2;
    let (mut fleet, _agents) = trading(false, n).await;
    let (old, _) = fleet.wait_leader(None, Duration::from_secs(30)).await.unwrap();
    let probe = fleet.etcd.client_identity("test-probe").unwrap();
    let got = fleet
        .etcd
        .etcdctl(&probe, &["get", "/lockstep/leader", "-w", "json"])
        .unwrap();
    assert!(got.status.success(), "{}", String::from_utf8_lossy(&got.stderr));
    let json: serde_json::Value = serde_json::from_slice(&got.stdout).unwrap();
    let lease = json["kvs"][0]["lease"].as_u64().expect("the leader key is on a lease");
    // etcd keeping the dead leader's lease alive, as it does when it
    // revokes late (a raft leader change extends every lease): here a
    // client keeps it alive on purpose, for as long as the test runs.
    let keeping = Killed(
        std::process::Command::new(lockstep_tests::etcd_cluster::ETCDCTL)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", fleet.etcd.endpoints().join(",")))
            .arg(format!("--cacert={}", probe.ca.display()))
            .arg(format!("--cert={}", probe.cert.display()))
            .arg(format!("--key={}", probe.key.display()))
            .args(["lease", "keep-alive", &format!("{lease:x}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let killed_at_ms = lockstep_proto::now_unix_ms();
    fleet.kill_controller(old);
    let (new, _) = fleet.wait_leader(Some(old), Duration::from_secs(30)).await.unwrap();
    assert_ne!(new, old);
    let revoked_by: Vec<usize> = (0..3)
        .filter(|&i| i != old && fleet.controller_log(i).contains("revoking it"))
        .collect();
    assert!(!revoked_by.is_empty(), "no standby revoked the silent leader's lease");
    fleet
        .wait_reported_since(&hosts(n), killed_at_ms, Duration::from_secs(30))
        .await
        .unwrap();
    drop(keeping);
}
