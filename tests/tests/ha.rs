//! HA on etcd, with a real 3-member etcd cluster (Debian's etcd-server),
//! three real controller processes on one prefix and real agents given
//! every controller's address.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use lockstep_proto::pb;
use lockstep_tests::ha_fleet::{HaFleet, HaSpec};

fn hosts(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("smars-{i:02}")).collect()
}

async fn fleet_with_agents(n: usize, freshness_ttl: Duration) -> (HaFleet, Vec<lockstep_tests::proc_fleet::Killed>) {
    let mut inventory = hosts(n);
    inventory.push("spare-01".into());
    let fleet = HaFleet::start(HaSpec {
        controllers: 3,
        hosts: inventory,
        freshness_ttl,
        leader_ttl_s: 2,
    })
    .await
    .unwrap();
    let mut agents = Vec::new();
    for h in hosts(n) {
        agents.push(fleet.start_agent(&h).await.unwrap());
    }
    fleet
        .wait_hosts("every host reported", Duration::from_secs(60), |hs| {
            hosts(n)
                .iter()
                .all(|h| hs.iter().any(|s| &s.host == h && s.last_seq > 0))
        })
        .await
        .unwrap();
    fleet.release_from_host("smars-01").await.unwrap();
    for h in hosts(n) {
        fleet.wait_local(&h, 0, Duration::from_secs(30)).await.unwrap();
    }
    (fleet, agents)
}

/// Samples every host's local gate until told to stop; true if any closed.
fn watch_gates(fleet: Arc<HaFleet>, n: usize, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut closed = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            for h in hosts(n) {
                if fleet.local_gate_check(&h).unwrap_or(-1) != 0 {
                    closed.push(h);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        closed
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_leader_is_replaced_and_nothing_acknowledged_is_lost() {
    let n = 4;
    let (fleet, _agents) = fleet_with_agents(n, Duration::from_secs(30)).await;
    let mut fleet = fleet;
    let (leader, epoch) = fleet.wait_leader(None, Duration::from_secs(10)).await.unwrap();

    // Console writes under way while the leader dies: count what was acknowledged.
    let acknowledged = Arc::new(AtomicU64::new(0));
    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let console = fleet.console(&fleet.alice).unwrap();
        let (acknowledged, writing) = (acknowledged.clone(), writing.clone());
        tokio::spawn(async move {
            let mut console = console;
            while writing.load(Ordering::SeqCst) {
                let made = console
                    .create_token(pb::CreateTokenRequest {
                        host: "spare-01".into(),
                        role: "smars".into(),
                        ttl_ms: 0,
                    })
                    .await;
                if made.is_ok() {
                    acknowledged.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fleet_kill_at = lockstep_proto::now_unix_ms();
    fleet.kill_controller(leader);
    let fleet = Arc::new(fleet);
    let stop = Arc::new(AtomicBool::new(false));
    let gates = watch_gates(fleet.clone(), n, stop.clone());

    let (new_leader, new_epoch) = fleet.wait_leader(Some(leader), Duration::from_secs(15)).await.unwrap();
    assert_ne!(new_leader, leader);
    assert!(new_epoch > epoch, "the epoch moves on: {epoch} then {new_epoch}");
    // Every agent reports to the new leader by itself.
    fleet
        .wait_hosts(
            "every agent accepted by the new leader",
            Duration::from_secs(20),
            |hs| {
                hosts(n).iter().all(|h| {
                    hs.iter()
                        .any(|s| &s.host == h && s.last_received_at_unix_ms > fleet_kill_at)
                })
            },
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    writing.store(false, Ordering::SeqCst);
    writer.await.unwrap();
    stop.store(true, Ordering::SeqCst);
    let closed = gates.await.unwrap();
    assert!(closed.is_empty(), "no gate may close during the failover: {closed:?}");

    let mut console = fleet.console(&fleet.alice).unwrap();
    let records = console
        .list_audit(pb::ListAuditRequest {
            host: "spare-01".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    let made = records.iter().filter(|r| r.action == "token.created").count() as u64;
    let acked = acknowledged.load(Ordering::SeqCst);
    assert!(acked > 5, "the writer made tokens: {acked}");
    // Every acknowledged one is there; at most the one in flight at the kill more.
    assert!(
        made >= acked && made <= acked + 1,
        "{made} token records, {acked} acknowledged"
    );
    let verified = console
        .verify_audit(pb::VerifyAuditRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        verified.ok,
        "the chain verifies on the new leader: {}",
        verified.problem
    );

    // The directive streams follow too: a halt from the new leader closes every gate.
    console
        .halt(pb::HaltRequest {
            scope: Some(pb::HaltScope {
                scope: Some(pb::halt_scope::Scope::Role("smars".into())),
            }),
            reason: "after failover".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    for h in hosts(n) {
        fleet.wait_local(&h, 1, Duration::from_secs(10)).await.unwrap();
    }
}
