//! Crash safety with real processes and `kill -9` (issue 8, part 1): what
//! the controller acknowledged survives its death, the audit chain still
//! verifies, gates are decided again from the store, agents come back by
//! themselves; an agent killed at any point never reuses a sequence number.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockstep_proto::pb::{self, GateState};
use lockstep_tests::proc_fleet::{ProcFleet, ProcSpec, agent_client, entries, report};
use tokio::sync::watch;

fn write_tree(fleet: &ProcFleet, host: &str, build: &str) {
    let root = fleet.dir.path().join("hosts").join(host).join("root/opt/smars");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("bin/smars"), build).unwrap();
    std::fs::write(root.join("etc/smars.conf"), "venue = NYSE\n").unwrap();
}

async fn wait_local(fleet: &ProcFleet, host: &str, code: i32) {
    for _ in 0..300 {
        if fleet.local_gate_check(host).unwrap() == code {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gate = std::fs::read_to_string(fleet.dir.path().join("hosts").join(host).join("gate.json")).unwrap_or_default();
    panic!("{host}: local gate check never exited {code}; gate file: {gate}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_killed_under_load_keeps_every_acknowledged_attestation() {
    let sims: Vec<String> = (1..=120).map(|i| format!("smars-{i:03}")).collect();
    let reals = vec!["real-1".to_string(), "real-2".to_string()];
    let all: Vec<String> = sims.iter().chain(&reals).cloned().collect();
    let mut fleet = ProcFleet::start(ProcSpec::smars(all.clone())).await.unwrap();
    let configs = fleet.enroll(&all, 16).await.unwrap();

    // Two real agents; release 1 is what they run.
    for r in &reals {
        write_tree(&fleet, r, "build 1");
    }
    let _agents: Vec<_> = reals.iter().map(|r| fleet.start_agent(r).unwrap()).collect();
    fleet
        .wait_hosts("both real agents reporting", |h| {
            h.iter()
                .filter(|s| s.host.starts_with("real-") && s.last_seq > 0)
                .count()
                == 2
        })
        .await
        .unwrap();
    fleet.release_from_host("real-1").await.unwrap();
    for r in &reals {
        wait_local(&fleet, r, 0).await;
    }
    let release_set = fleet
        .console(&fleet.alice)
        .unwrap()
        .get_host(pb::GetHostRequest {
            host: "real-1".into(),
            include_entries: true,
        })
        .await
        .unwrap()
        .into_inner()
        .entries;

    // 120 simulated agents report as fast as they are answered: the even
    // ones the release, the odd ones another build. Each remembers the
    // highest seq the controller acknowledged.
    let acked: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut load = tokio::task::JoinSet::new();
    for (i, cfg) in configs.into_iter().take(sims.len()).enumerate() {
        let set = if i % 2 == 0 {
            release_set.clone()
        } else {
            entries("build 0")
        };
        let (acked, mut stop) = (acked.clone(), stop_rx.clone());
        load.spawn(async move {
            let signer = lockstep_agent::state::attestation_key(&cfg.state_dir).unwrap();
            let mut client = agent_client(&cfg).unwrap();
            let mut full = true;
            for seq in 1.. {
                if *stop.borrow_and_update() {
                    return;
                }
                let sent = client.submit(signer.seal_attestation(&report(&cfg.host, seq, &set, full)));
                match tokio::time::timeout(Duration::from_secs(5), sent).await {
                    Ok(Ok(reply)) if reply.get_ref().accepted => {
                        acked.lock().unwrap().insert(cfg.host.clone(), seq);
                        full = false;
                    }
                    Ok(Ok(_)) => full = true, // the controller asks for the entries
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }
    while acked.lock().unwrap().len() < sims.len() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let real_seq_before: HashMap<String, u64> = fleet
        .hosts()
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.host, s.last_seq))
        .collect();

    fleet.kill_controller().unwrap();
    stop_tx.send_replace(true);
    while load.join_next().await.is_some() {}
    let acked = acked.lock().unwrap().clone();
    let total: u64 = acked.values().sum();
    assert!(
        total > 500,
        "the load was too light to mean anything: {total} acknowledged"
    );

    // Restarted on the same data.
    fleet.start_controller().await.unwrap();
    let hosts = fleet.hosts().await.unwrap();
    let by_host: HashMap<&str, &pb::HostStatus> = hosts.iter().map(|s| (s.host.as_str(), s)).collect();
    for (host, seq) in &acked {
        let stored = by_host[host.as_str()].last_seq;
        assert!(
            stored >= *seq,
            "{host}: acknowledged seq {seq} but the store has {stored}"
        );
    }
    let (code, out) = fleet.lockstep(&fleet.alice, &["audit", "verify"]).unwrap();
    assert_eq!(code, 0, "the audit chain does not verify after kill -9: {out}");
    assert!(out.contains("audit log intact"), "{out}");

    // Gates are decided again from the store: the release's hosts OPEN,
    // the other build CLOSED and named.
    let mut console = fleet.console(&fleet.bob).unwrap();
    let g = console
        .gate_check(pb::GateCheckRequest { role: "smars".into() })
        .await
        .unwrap()
        .into_inner();
    for (i, host) in sims.iter().enumerate() {
        let gate = g.gates.iter().find(|x| &x.host == host).unwrap();
        let want = if i % 2 == 0 { GateState::Open } else { GateState::Closed };
        assert_eq!(gate.state(), want, "{host}: {:?}", gate.reasons);
    }

    // The real agents reconnect by themselves and report again.
    fleet
        .wait_hosts("the real agents back with new reports", |h| {
            reals.iter().all(|r| {
                h.iter()
                    .any(|s| &s.host == r && s.last_seq > real_seq_before[r] && s.last_rejection.is_empty())
            })
        })
        .await
        .unwrap();
    for r in &reals {
        wait_local(&fleet, r, 0).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_mid_scan_or_report_never_reuses_a_sequence_number() {
    let host = "real-1".to_string();
    let fleet = ProcFleet::start(ProcSpec::smars(vec![host.clone()])).await.unwrap();
    fleet.enroll(std::slice::from_ref(&host), 1).await.unwrap();
    write_tree(&fleet, &host, "build 1");
    // A large file makes each scan take long enough to be killed inside.
    let big = fleet.dir.path().join("hosts/real-1/root/opt/smars/bin/smars-big");
    let data: Vec<u8> = (0..64u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&big, data).unwrap();
    let state = fleet.dir.path().join("hosts/real-1/state");
    let key_file = state.join("attestation.key");
    let key_before = std::fs::read(&key_file).unwrap();

    let mut agent = fleet.start_agent(&host).unwrap();
    fleet
        .wait_hosts("the first report", |h| h.iter().any(|s| s.last_seq > 0))
        .await
        .unwrap();
    // Kill at staggered points after start: during the startup scan, the
    // report, the directive stream; then again.
    for (round, delay_ms) in [30u64, 90, 150, 240, 380, 600, 900, 1300].into_iter().enumerate() {
        let before = fleet.hosts().await.unwrap()[0].last_seq;
        drop(agent); // SIGKILL
        agent = fleet.start_agent(&host).unwrap();
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        drop(agent);
        assert_eq!(
            std::fs::read(&key_file).unwrap(),
            key_before,
            "round {round}: the key changed"
        );
        agent = fleet.start_agent(&host).unwrap();
        fleet
            .wait_hosts("a new report after the restart", |h| h[0].last_seq > before)
            .await
            .unwrap();
        let status = &fleet.hosts().await.unwrap()[0];
        assert!(
            status.last_rejection.is_empty(),
            "round {round}: the controller rejected a report after a kill: {}",
            status.last_rejection
        );
    }
    drop(agent);
}
