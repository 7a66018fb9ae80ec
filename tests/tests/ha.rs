//! HA on etcd, with a real 3-member etcd cluster (Debian's etcd-server),
//! three real controller processes on one prefix and real agents given
//! every controller's address.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use lockstep_proto::identity::OperatorRole;
use lockstep_proto::pb;
use lockstep_tests::child::pause_process;
use lockstep_tests::fleet::ha::{HaFleet, HaSpec};

fn hosts(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("smars-{i:02}")).collect()
}

async fn fleet_with_agents(n: usize, freshness_ttl: Duration) -> (HaFleet, Vec<lockstep_tests::child::Killed>) {
    let (fleet, agents, _) = fleet_on(false, n, freshness_ttl).await;
    (fleet, agents)
}

/// `n` agents reporting, a release from smars-01 approved, every local gate
/// open; on etcd, or on one sled controller (`sled_first`). With the release.
async fn fleet_on(
    sled_first: bool,
    n: usize,
    freshness_ttl: Duration,
) -> (HaFleet, Vec<lockstep_tests::child::Killed>, u64) {
    let mut inventory = hosts(n);
    inventory.push("spare-01".into());
    HaFleet::trading(
        HaSpec {
            sled_first,
            ..HaSpec::three(inventory, freshness_ttl, 2)
        },
        &hosts(n),
    )
    .await
    .unwrap()
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
        let console = fleet.console(&fleet.alice).await.unwrap();
        let (acknowledged, writing) = (acknowledged.clone(), writing.clone());
        tokio::spawn(async move {
            let mut console = console;
            while writing.load(Ordering::SeqCst) {
                let made = console
                    .create_token(pb::CreateTokenRequest {
                        allow_new_tpm: false,
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
    let gates = fleet.clone().watch_gates(hosts(n), stop.clone());

    let (new_leader, new_epoch) = fleet.wait_leader(Some(leader), Duration::from_secs(15)).await.unwrap();
    assert_ne!(new_leader, leader);
    assert!(new_epoch > epoch, "the epoch moves on: {epoch} then {new_epoch}");
    // Every agent reports to the new leader by itself.
    fleet
        .wait_reported_since(&hosts(n), fleet_kill_at, Duration::from_secs(20))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    writing.store(false, Ordering::SeqCst);
    writer.await.unwrap();
    stop.store(true, Ordering::SeqCst);
    let closed = gates.await.unwrap();
    assert!(
        closed.is_empty(),
        "no gate may close during the failover:\n{}\n{}",
        closed.join("\n"),
        fleet.controller_logs_tail()
    );

    let mut console = fleet.console(&fleet.alice).await.unwrap();
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

    // `lockstep cluster status` names the new leader, its epoch, every etcd member healthy.
    let cluster_status = || {
        let (code, out, err) = fleet
            .lockstep(&fleet.alice, &["--output", "json", "cluster", "status"])
            .unwrap();
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    // The killed one stops announcing itself: shown as not running; the new
    // leader announces itself as leader (each controller says what it is
    // every second, so the two may show a second apart).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        let status = cluster_status();
        let controllers = status["controllers"].as_array().unwrap();
        let killed_gone = controllers
            .iter()
            .any(|c| c["name"] == format!("ctl-{leader}") && c["running"] == false);
        let new_one_leads = controllers
            .iter()
            .any(|c| c["name"] == format!("ctl-{new_leader}") && c["role"] == "leader" && c["running"] == true);
        if killed_gone && new_one_leads {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the killed controller still shows running, or the new one not leading: {status}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(status["leader"], format!("ctl-{new_leader}"), "{status}");
    assert_eq!(status["epoch"], new_epoch, "{status}");
    let members = status["etcd_members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{status}");
    assert!(members.iter().all(|m| m["healthy"] == true), "{status}");
    assert_eq!(
        members.iter().filter(|m| m["raft_leader"] == true).count(),
        1,
        "{status}"
    );
    let controllers = status["controllers"].as_array().unwrap();
    assert_eq!(controllers.len(), 3, "{status}");
    let leading: Vec<_> = controllers
        .iter()
        .filter(|c| c["role"] == "leader" && c["running"] == true)
        .collect();
    assert_eq!(leading.len(), 1, "{status}");
    assert_eq!(leading[0]["name"], format!("ctl-{new_leader}"), "{status}");

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
        fleet.wait_local(&h, 1, Duration::from_secs(20)).await.unwrap();
    }
}

/// The first gate a host hears on a directive stream to controller `i`.
async fn first_gate(fleet: &HaFleet, i: usize, host: &str, within: Duration) -> pb::Gate {
    let mut stream = fleet
        .agent_client_at(i, host)
        .unwrap()
        .directives(pb::DirectivesRequest {})
        .await
        .unwrap()
        .into_inner();
    loop {
        let directive = tokio::time::timeout(within, stream.message())
            .await
            .unwrap_or_else(|_| panic!("{host} heard no gate from controller {i} within {within:?}"))
            .unwrap()
            .unwrap();
        if let Some(pb::directive::Kind::Gate(gate)) = directive.kind {
            return gate;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_leader_sends_halts_at_once_and_opens_no_gate_before_the_host_attests_to_it() {
    let n = 2;
    let ttl = Duration::from_secs(30);
    let (mut fleet, agents) = fleet_with_agents(n, ttl).await;
    let (leader, _) = fleet.wait_leader(None, Duration::from_secs(10)).await.unwrap();
    fleet
        .console(&fleet.alice)
        .await
        .unwrap()
        .halt(pb::HaltRequest {
            scope: Some(pb::HaltScope {
                scope: Some(pb::halt_scope::Scope::Host("smars-02".into())),
            }),
            reason: "held for the failover test".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    fleet.wait_local("smars-02", 1, Duration::from_secs(10)).await.unwrap();

    // Both agents frozen: neither can attest to the next leader.
    for a in &agents {
        pause_process(a, true).unwrap();
    }
    fleet.kill_controller(leader);
    let (new_leader, new_epoch) = fleet.wait_leader(Some(leader), Duration::from_secs(15)).await.unwrap();
    let new_epoch = u64::try_from(new_epoch).unwrap();

    // The halt acknowledged by the old leader goes out from the new one at
    // once, in its epoch, though smars-02 has not attested to it.
    let halted = first_gate(&fleet, new_leader, "smars-02", Duration::from_secs(10)).await;
    assert_eq!(halted.state(), pb::GateState::Closed, "{halted:?}");
    assert_eq!(halted.epoch, new_epoch, "{halted:?}");
    assert!(
        halted
            .reasons
            .iter()
            .any(|r| r.text.contains("held for the failover test")),
        "{halted:?}"
    );

    // smars-01 was OPEN on the old leader's word: the new one says nothing
    // until it attests, so the first lease it hears was bought by an
    // attestation made after its agent woke (the old lease ran from before
    // the kill).
    let hearing = {
        let mut client = fleet.agent_client_at(new_leader, "smars-01").unwrap();
        let mut stream = client.directives(pb::DirectivesRequest {}).await.unwrap().into_inner();
        tokio::spawn(async move {
            loop {
                match stream.message().await {
                    Ok(Some(pb::Directive {
                        kind: Some(pb::directive::Kind::Gate(gate)),
                    })) => return Some(gate),
                    Ok(Some(_)) => {}
                    _ => return None,
                }
            }
        })
    };
    let woke_at = lockstep_proto::now_unix_ms();
    pause_process(&agents[0], false).unwrap();
    let opened = tokio::time::timeout(Duration::from_secs(20), hearing)
        .await
        .expect("smars-01 heard no gate after its agent woke")
        .unwrap()
        .expect("the directive stream ended");
    assert_eq!(opened.state(), pb::GateState::Open, "{opened:?}");
    assert_eq!(opened.epoch, new_epoch, "{opened:?}");
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap();
    assert!(
        opened.lease_expires_unix_ms >= woke_at + ttl_ms,
        "the first lease from the new leader rests on an attestation made to it: expires {} but the agent woke at {woke_at} (ttl {ttl_ms} ms)",
        opened.lease_expires_unix_ms
    );
    fleet.wait_local("smars-01", 0, Duration::from_secs(10)).await.unwrap();
    pause_process(&agents[1], false).unwrap();

    // etcd latency by call, on the leader (its commits) and a standby (its watch on the leader key).
    let leading = fleet.metrics_within(new_leader, Duration::from_secs(10)).await.unwrap();
    assert!(
        leading.contains("lockstep_etcd_request_seconds_count{call=\"writing a commit\"}"),
        "{leading}"
    );
    let standby = (0..3).find(|&i| i != leader && i != new_leader).unwrap();
    let standing = fleet.metrics_within(standby, Duration::from_secs(10)).await.unwrap();
    assert!(
        standing.contains("lockstep_etcd_request_seconds_count{call=\"reading the leader key\"}"),
        "{standing}"
    );
    assert!(standing.ends_with("# EOF\n"), "{standing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_leader_is_deposed_and_its_word_refused_when_it_wakes() {
    let n = 3;
    let (fleet, _agents) = fleet_with_agents(n, Duration::from_secs(30)).await;
    let (old, old_epoch) = fleet.wait_leader(None, Duration::from_secs(10)).await.unwrap();
    let mut to_old = fleet.console_at(old, &fleet.alice).unwrap();
    to_old.list_hosts(pb::ListHostsRequest::default()).await.unwrap();

    fleet.pause_controller(old, true).unwrap();
    // A console write sent to the frozen leader: it must never be acknowledged.
    let in_flight = tokio::spawn(async move {
        to_old
            .create_token(pb::CreateTokenRequest {
                allow_new_tpm: false,
                host: "spare-01".into(),
                role: "smars".into(),
                ttl_ms: 0,
            })
            .await
    });
    let (new, new_epoch) = fleet.wait_leader(Some(old), Duration::from_secs(15)).await.unwrap();
    assert!(new_epoch > old_epoch, "{old_epoch} then {new_epoch}");
    // Every agent takes its gate from the new leader, in its epoch.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for h in hosts(n) {
        while fleet.gate_file(&h).map(|f| f.epoch).unwrap_or(0) != new_epoch as u64 {
            assert!(
                std::time::Instant::now() < deadline,
                "{h} never took a gate in epoch {new_epoch}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fleet.pause_controller(old, false).unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(15), in_flight).await;
    assert!(
        !matches!(refused, Ok(Ok(Ok(_)))),
        "the frozen leader acknowledged a write after it was deposed"
    );
    // It notices by itself and stands by.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while fleet.role_of(old).await != Some((false, new_epoch)) {
        assert!(
            std::time::Instant::now() < deadline,
            "the old leader never stood by: {:?}\n{}",
            fleet.role_of(old).await,
            fleet.controller_log(old)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // No agent takes the old epoch's word back; every gate stays open
    // (watched for a second after the old leader stood by).
    let watched_until = std::time::Instant::now() + Duration::from_secs(1);
    while std::time::Instant::now() < watched_until {
        for h in hosts(n) {
            let f = fleet.gate_file(&h).unwrap();
            if f.epoch != new_epoch as u64 {
                let logs: String = (0..3)
                    .map(|i| format!("--- controller {i}\n{}", fleet.controller_log(i)))
                    .collect();
                panic!("{h} took epoch {} (not {new_epoch}): {f:?}\n{logs}", f.epoch);
            }
            assert_eq!(fleet.local_gate_check(&h).unwrap(), 0, "{h}: {f:?}");
        }
    }

    // etcd itself refuses a write fenced on the old epoch (a forged resume).
    let config = lockstep_controller::config::ControllerConfig::load(fleet.controller_config(old)).unwrap();
    let lockstep_controller::config::Backend::Etcd(settings) = config.backend else {
        panic!("the HA fleet runs on etcd")
    };
    let stale = tokio::task::spawn_blocking(move || {
        use lockstep_controller::store::etcd::store::{EtcdStore, Fence};
        use lockstep_controller::store::{HaltRecord, HaltScope, Store};
        let etcd = Arc::new(lockstep_controller::store::etcd::Etcd::connect(&settings).unwrap());
        let store = EtcdStore::new(etcd, Fence::Leader { epoch: old_epoch });
        store
            .put_halt(&HaltRecord {
                id: 999,
                scope: HaltScope::Fleet,
                reason: "forged".into(),
                halted_by: "nobody".into(),
                halted_at_unix_ms: 1,
                resumed_by: None,
                resumed_at_unix_ms: 0,
                resume_reason: String::new(),
                drill: false,
            })
            .and_then(|()| store.flush())
            .map_err(|e| e.to_string())
            .map(|()| store.halts().map(|h| h.len()))
    })
    .await
    .unwrap();
    let reason = stale.expect_err("a write fenced on a replaced epoch must be refused");
    assert!(reason.contains("no longer leads"), "{reason}");

    let mut console = fleet.console(&fleet.alice).await.unwrap();
    let halts = console
        .list_halts(pb::ListHaltsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .halts;
    assert!(halts.is_empty(), "nothing forged arrived: {halts:?}");
    let tokens = console
        .list_audit(pb::ListAuditRequest {
            host: "spare-01".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    assert!(
        tokens.iter().all(|r| r.action != "token.created"),
        "the frozen leader's write is nowhere: {tokens:?}"
    );
    let verified = console
        .verify_audit(pb::VerifyAuditRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(verified.ok, "{}", verified.problem);
    let _ = new;
}

/// One token for spare-01 through whichever controller leads, retried
/// until `within`: the last error if none was acknowledged.
async fn write_within(fleet: &HaFleet, within: Duration) -> Result<(), String> {
    let deadline = std::time::Instant::now() + within;
    let mut console = fleet.console(&fleet.alice).await.unwrap();
    loop {
        let made = console
            .create_token(pb::CreateTokenRequest {
                allow_new_tpm: false,
                host: "spare-01".into(),
                role: "smars".into(),
                ttl_ms: 0,
            })
            .await;
        match made {
            Ok(_) => return Ok(()),
            Err(e) if std::time::Instant::now() > deadline => return Err(e.message().to_string()),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_losing_one_member_changes_nothing_losing_quorum_fails_closed_and_it_recovers_by_itself() {
    let n = 3;
    let lease = Duration::from_secs(6);
    let (fleet, _agents) = fleet_with_agents(n, lease).await;
    let mut fleet = fleet;
    fleet.wait_leader(None, Duration::from_secs(30)).await.unwrap();

    // One member of three down: writes go on, no gate closes.
    fleet.etcd.stop_member(0);
    let fleet = Arc::new(fleet);
    let stop = Arc::new(AtomicBool::new(false));
    let gates = fleet.clone().watch_gates(hosts(n), stop.clone());
    write_within(&fleet, Duration::from_secs(10)).await.unwrap();
    tokio::time::sleep(lease + Duration::from_secs(1)).await;
    write_within(&fleet, Duration::from_secs(5)).await.unwrap();
    stop.store(true, Ordering::SeqCst);
    let closed = gates.await.unwrap();
    assert!(
        closed.is_empty(),
        "one etcd member down closed gates:\n{}\n{}",
        closed.join("\n"),
        fleet.controller_logs_tail()
    );
    let mut fleet = Arc::into_inner(fleet).expect("the watcher has ended");
    // A write in flight on the member that went is unanswered, which
    // deposes its leader (its outcome is unknown): whoever leads now, and
    // the standbys' views loaded, before quorum goes.
    let (leader, _) = fleet.wait_leader(None, Duration::from_secs(30)).await.unwrap();
    for i in (0..3).filter(|&i| i != leader) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while fleet
            .gauge(i, "lockstep_controller_ledger_lag_revisions")
            .await
            .is_none()
        {
            assert!(std::time::Instant::now() < deadline, "ctl-{i} never loaded its view");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Two of three down: no quorum. Writes are refused, naming it...
    fleet.etcd.stop_member(1);
    let refused_at = std::time::Instant::now();
    let mut reason = String::new();
    while refused_at.elapsed() < Duration::from_secs(10) {
        let mut console = fleet.console(&fleet.alice).await.unwrap();
        let made = tokio::time::timeout(
            Duration::from_secs(5),
            console.create_token(pb::CreateTokenRequest {
                allow_new_tpm: false,
                host: "spare-01".into(),
                role: "smars".into(),
                ttl_ms: 0,
            }),
        )
        .await;
        match made {
            Ok(Ok(_)) => tokio::time::sleep(Duration::from_millis(100)).await, // committed before quorum went
            Ok(Err(e)) => {
                reason = e.message().to_string();
                // A standby's redirect to a leader about to stand down is
                // not the answer yet: ask again.
                if reason.contains("quorum") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(_) => panic!("a write hung for 5 s without quorum"),
        }
    }
    assert!(
        reason.contains("quorum"),
        "no write refused with a reason naming quorum: {reason:?}"
    );
    // Once the lease is gone every controller says so, not "connection
    // refused": `gate check` is the leader's, and there is none.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let said = loop {
        // It may still be answered until the leader's lease runs out on its
        // side (2/3 of leader_ttl).
        let read = fleet
            .console(&fleet.alice)
            .await
            .unwrap()
            .gate_check(pb::GateCheckRequest { role: "smars".into() })
            .await;
        match read {
            Err(said) if said.message().contains("no controller can lead") => break said,
            _ if std::time::Instant::now() > deadline => panic!("still {read:?} 10 s without quorum"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    assert_eq!(said.code(), tonic::Code::Unavailable, "{said:?}");
    assert!(
        said.message().contains("no controller can lead") && said.message().contains("quorum"),
        "{}",
        said.message()
    );
    // Reads go on from the standbys' views of the ledger.
    for i in (0..3).filter(|&i| i != leader) {
        let read = fleet
            .console_at(i, &fleet.alice)
            .unwrap()
            .list_hosts(pb::ListHostsRequest::default())
            .await
            .unwrap_or_else(|e| panic!("standby ctl-{i} did not answer a read without quorum: {e:?}"));
        assert!(read.metadata().contains_key(lockstep_link::failover::SERVED_BY_HEADER));
        let seen: Vec<String> = read.into_inner().hosts.into_iter().map(|h| h.host).collect();
        assert!(hosts(n).iter().all(|h| seen.contains(h)), "ctl-{i}'s view: {seen:?}");
    }
    // ...and every gate closes by its lease end, saying why.
    for h in hosts(n) {
        fleet.wait_local(&h, 1, lease + Duration::from_secs(10)).await.unwrap();
        let why = fleet.local_gate_text(&h).unwrap();
        // At lease end: an unchanged report that could not be committed
        // closes nothing at once (a changed one would).
        assert!(why.contains("lease expired"), "{h}: {why}");
    }

    // Quorum back: a leader again, writes accepted, gates open, nothing restarted.
    fleet.etcd.start_member(0).unwrap();
    fleet.etcd.start_member(1).unwrap();
    fleet.wait_leader(None, Duration::from_secs(30)).await.unwrap();
    write_within(&fleet, Duration::from_secs(20)).await.unwrap();
    for h in hosts(n) {
        fleet.wait_local(&h, 0, Duration::from_secs(30)).await.unwrap();
    }
    let verified = fleet
        .console(&fleet.alice)
        .await
        .unwrap()
        .verify_audit(pb::VerifyAuditRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(verified.ok, "{}", verified.problem);
}

fn migrate(from: &std::path::Path, to: &std::path::Path) -> std::process::Output {
    std::process::Command::new(lockstep_tests::child::binary("lockstep-controller").unwrap())
        .args(["migrate", "--from"])
        .arg(from)
        .arg("--to")
        .arg(to)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sled_fleet_migrated_into_etcd_keeps_every_gate_and_its_audit_chain() {
    let n = 3;
    let (mut fleet, _agents, release) = fleet_on(true, n, Duration::from_secs(30)).await;
    let mut console = fleet.console(&fleet.alice).await.unwrap();
    let before = console
        .list_audit(pb::ListAuditRequest::default())
        .await
        .unwrap()
        .into_inner()
        .records;
    fleet.stop_sled().unwrap();

    // The etcd cluster may still be electing its first raft leader.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let to_etcd = loop {
        let out = migrate(&fleet.sled_config(), fleet.controller_config(0));
        if out.status.success()
            || !String::from_utf8_lossy(&out.stderr).contains("did not answer")
            || std::time::Instant::now() > deadline
        {
            break out;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let said = String::from_utf8_lossy(&to_etcd.stdout).into_owned() + &String::from_utf8_lossy(&to_etcd.stderr);
    assert!(to_etcd.status.success(), "{said}");
    assert!(
        said.contains(&format!("migrated {n} hosts")) && said.contains("verifies on both sides"),
        "{said}"
    );
    // A second copy into the same prefix is refused: it is not empty.
    let again = migrate(&fleet.sled_config(), fleet.controller_config(0));
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already holds a fleet"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // The etcd controllers lead the same fleet: agents follow, every gate
    // still open on the same release, the old chain is the new chain's start.
    fleet.start_all().await.unwrap();
    let mut console = fleet.console(&fleet.alice).await.unwrap();
    let gates = console
        .gate_check(pb::GateCheckRequest { role: "smars".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(gates.release, release);
    for h in hosts(n) {
        let gate = gates.gates.iter().find(|g| g.host == h).unwrap();
        assert_eq!(gate.state(), pb::GateState::Open, "{h}: {gate:?}");
        assert_eq!(fleet.local_gate_check(&h).unwrap(), 0, "{h}");
    }
    let after = console
        .list_audit(pb::ListAuditRequest::default())
        .await
        .unwrap()
        .into_inner()
        .records;
    assert!(after.len() >= before.len());
    for (a, b) in before.iter().zip(&after) {
        assert_eq!((a.seq, &a.hash), (b.seq, &b.hash));
    }
    let verified = console
        .verify_audit(pb::VerifyAuditRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(verified.ok, "{}", verified.problem);

    // And back: etcd into a fresh sled data dir, once no controller leads.
    for i in 0..3 {
        fleet.kill_controller(i);
    }
    let back = fleet.path("controller-back.toml");
    let text = std::fs::read_to_string(fleet.sled_config()).unwrap();
    std::fs::write(&back, text.replace("controller-sled\"", "controller-back\"")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let out = migrate(fleet.controller_config(0), &back);
        if out.status.success() {
            break;
        }
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        // The killed leader's lease runs out first.
        assert!(
            err.contains("a controller leads") && std::time::Instant::now() < deadline,
            "{err}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A group commit can hold two changes to one host; etcd refuses a
/// transaction naming a key twice, so the store writes each key once, its
/// last value (the host's high-water seq), and the batch commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_two_records_of_one_host_commits_its_last() {
    use lockstep_controller::config::{Backend, ControllerConfig};
    use lockstep_controller::store::etcd::Etcd;
    use lockstep_controller::store::etcd::store::{EtcdStore, Fence};
    use lockstep_controller::store::{HostRecord, Store};

    // Only a sled controller runs: nobody leads the etcd prefix.
    let fleet = HaFleet::start(HaSpec {
        controllers: 1,
        hosts: hosts(1),
        freshness_ttl: Duration::from_secs(30),
        leader_ttl_s: 2,
        sled_first: true,
        isolated: false,
        board: false,
        audit_toml: String::new(),
        env: Vec::new(),
    })
    .await
    .unwrap();
    let config = ControllerConfig::load(fleet.controller_config(0)).unwrap();
    let Backend::Etcd(settings) = config.backend else {
        panic!("controller 0 is configured on etcd");
    };
    let store = EtcdStore::new(Arc::new(Etcd::connect(&settings).unwrap()), Fence::NoLeader);
    // The cluster has just started: a read answers once it has a raft leader.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while let Err(e) = store.hosts() {
        assert!(std::time::Instant::now() < deadline, "etcd never answered: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let record = |seq: u64| HostRecord {
        host: "smars-01".into(),
        role: "smars".into(),
        last_seq: seq,
        ..Default::default()
    };
    for seq in [7, 8, 9] {
        store.put_host(&record(seq)).unwrap();
    }
    store
        .put_host(&HostRecord {
            host: "smars-02".into(),
            ..record(3)
        })
        .unwrap();
    store.flush().unwrap();
    let mut stored: Vec<(String, u64)> = store
        .hosts()
        .unwrap()
        .into_iter()
        .map(|h| (h.host, h.last_seq))
        .collect();
    stored.sort();
    assert_eq!(stored, vec![("smars-01".into(), 9), ("smars-02".into(), 3)]);

    // A record over etcd's request limit (the audit record of a gate check
    // over 10,000 hosts is 2.5 MB) is stored in chunks and read back whole.
    let big = lockstep_evidence::chain::AuditRecord {
        seq: 1,
        actor: "alice (viewer)".into(),
        action: "gate.checked".into(),
        detail: "x".repeat(3_500_000),
        facts: "{\"hosts\":10000}".into(),
        at_unix_ms: 1,
        host: String::new(),
        role: "smars".into(),
        prev_hash: lockstep_evidence::chain::GENESIS.into(),
        hash: "ab".repeat(32),
    };
    store.put_audit(&big).unwrap();
    store.flush().unwrap();
    assert_eq!(store.audit_page(1, usize::MAX).unwrap(), vec![big.clone()]);
    assert_eq!(store.last_audit().unwrap(), Some(big.clone()));

    // 100 records just under the chunk size: a page of all of them would
    // be a 90 MB reply, over the client's 64 MiB bound. The page shrinks
    // instead of failing, and paging reads every record.
    for seq in 2..=101 {
        store
            .put_audit(&lockstep_evidence::chain::AuditRecord {
                seq,
                detail: "y".repeat(900_000),
                ..big.clone()
            })
            .unwrap();
        store.flush().unwrap();
    }
    let first = store.audit_page(1, 1_000).unwrap();
    assert!(
        !first.is_empty() && first.len() < 101,
        "one page: {} records",
        first.len()
    );
    let mut seqs = Vec::new();
    for page in lockstep_controller::store::audit_reads::pages(&store, 0) {
        seqs.extend(page.unwrap().into_iter().map(|r| r.seq));
    }
    assert_eq!(seqs, (1..=101).collect::<Vec<u64>>());

    // etcd's own account of its size, against the quota the incident watches.
    let size = store.size().unwrap();
    assert!(size.bytes > 90 << 20, "etcd holds the 90 MB written: {size:?}");
    assert_eq!(
        size.quota_bytes,
        2048 << 20,
        "etcd's default quota unless store.etcd.quota_mib says"
    );
    let filling = lockstep_controller::alerts::store_size::judge(lockstep_controller::store::StoreSize {
        quota_bytes: 128 << 20,
        ..size
    });
    assert!(
        matches!(
            filling,
            lockstep_controller::alerts::incidents::Signal::StoreFilling { .. }
        ),
        "{filling:?}"
    );
}

/// Every controller holds its port from the start. A standby answers each
/// call (gRPC health too) UNAVAILABLE, naming the leader in the message and
/// in the `lockstep-leader` header; the console and an agent given the
/// standby's address first follow it to the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standby_sends_consoles_and_agents_to_the_leader() {
    let fleet = HaFleet::start(HaSpec {
        controllers: 3,
        hosts: hosts(1),
        freshness_ttl: Duration::from_secs(30),
        leader_ttl_s: 2,
        sled_first: false,
        isolated: false,
        board: false,
        audit_toml: String::new(),
        env: Vec::new(),
    })
    .await
    .unwrap();
    let (leader, epoch) = fleet.wait_leader(None, Duration::from_secs(30)).await.unwrap();
    let standby = (leader + 1) % 3;

    let channel = lockstep_link::failover::channel(
        &fleet.addrs[standby],
        "127.0.0.1",
        lockstep_link::tls::client_config(&fleet.alice).unwrap(),
        Duration::from_secs(2),
    )
    .unwrap();
    let refused = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .expect_err("a standby's health is not SERVING");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    let named = format!("ctl-{leader} leads at {} (epoch {epoch})", fleet.addrs[leader]);
    assert!(refused.message().contains(&named), "{}", refused.message());
    assert_eq!(
        refused.metadata().get(lockstep_link::failover::LEADER_HEADER).unwrap(),
        fleet.addrs[leader].as_str()
    );

    // A write through the standby's address first lands on the leader.
    let (code, out, err) = fleet
        .lockstep_via(
            &fleet.alice,
            standby,
            &["halt", "--host", "smars-01", "--reason", "via a standby"],
        )
        .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = fleet.lockstep_via(&fleet.alice, standby, &["halts"]).unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("via a standby"), "{out}");

    // An agent whose list starts with the standby reports to the leader,
    // and hears the halt on its directive stream.
    let _agent = fleet.start_agent_via("smars-01", standby).await.unwrap();
    fleet
        .wait_hosts("smars-01 reported to the leader", Duration::from_secs(30), |hs| {
            hs.iter().any(|s| s.host == "smars-01" && s.last_seq > 0)
        })
        .await
        .unwrap();
    // Exit 1 alone could be "no gate from the controller yet": wait for the halt's reason.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = fleet.local_gate_text("smars-01").unwrap();
        if text.contains("via a standby") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the halt did not reach the agent: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(fleet.local_gate_check("smars-01").unwrap(), 1);

    // Both standbys follow the ledger: their views hold the halt and the
    // host's report, and their lag is known and small.
    for s in (0..3).filter(|&i| i != leader) {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let halts = fleet.gauge(s, "lockstep_controller_followed_active_halts").await;
            let hosts = fleet.gauge(s, "lockstep_controller_followed_hosts").await;
            let lag = fleet.gauge(s, "lockstep_controller_ledger_lag_revisions").await;
            if halts == Some(1) && hosts == Some(1) && lag.is_some_and(|l| l < 50) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "standby {s} does not follow: halts {halts:?}, hosts {hosts:?}, lag {lag:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // A standby given alone answers console reads from its view, and
    // says so on stderr; writes and the recorded gate check it sends to the
    // leader; the leader's role table applies first.
    let (code, out, err) = fleet.lockstep_at(&fleet.alice, standby, &["halts"]).unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("via a standby"), "{out}");
    let served = format!("answered by standby ctl-{standby} (");
    assert!(
        err.contains(&served) && err.contains("revisions behind the ledger"),
        "{err}"
    );
    for args in [
        &["--output", "json", "hosts"][..],
        &["host", "smars-01"],
        &["audit", "verify"],
        &["audit"],
        &["alerts"],
        &["release", "list"],
        &["cluster", "status"],
    ] {
        let (code, out, err) = fleet.lockstep_at(&fleet.alice, standby, args).unwrap();
        assert_eq!(code, 0, "{args:?}: {out}{err}");
        assert!(err.contains(&served), "{args:?} not answered by the standby: {err}");
    }
    let (_, out, _) = fleet
        .lockstep_at(&fleet.alice, standby, &["--output", "json", "hosts"])
        .unwrap();
    assert!(out.contains("smars-01"), "{out}");
    let (_, out, _) = fleet.lockstep_at(&fleet.alice, standby, &["audit", "verify"]).unwrap();
    assert!(out.contains("audit log intact"), "{out}");
    let leads = format!("ctl-{leader} leads at {}", fleet.addrs[leader]);
    for args in [
        &["resume", "--host", "smars-01", "--reason", "alone on a standby"][..],
        &["gate", "check", "--role", "smars"],
    ] {
        let (code, out, err) = fleet.lockstep_at(&fleet.alice, standby, args).unwrap();
        assert_ne!(code, 0, "{args:?} was served by a standby: {out}");
        assert!(err.contains(&leads), "{args:?}: {err}");
    }
    let vera = lockstep_tests::fleet::process::operator(&fleet.pki_dir, "vera", OperatorRole::Viewer).unwrap();
    let (code, _, err) = fleet.lockstep_at(&vera, standby, &["halts"]).unwrap();
    assert_eq!(code, 0, "a viewer reads on a standby: {err}");
    let (code, _, err) = fleet
        .lockstep_at(&vera, standby, &["halt", "--fleet", "--reason", "a viewer"])
        .unwrap();
    assert_ne!(code, 0);
    assert!(
        err.contains("vera has role viewer; this needs the operator role"),
        "{err}"
    );
    // Many readers at once, while the standby follows.
    let mut reading = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let mut console = fleet.console_at(standby, &fleet.alice).unwrap();
        reading.spawn(async move { console.list_hosts(pb::ListHostsRequest::default()).await });
    }
    while let Some(read) = reading.join_next().await {
        let read = read.unwrap().unwrap();
        assert!(read.metadata().contains_key(lockstep_link::failover::SERVED_BY_HEADER));
        assert_eq!(read.into_inner().hosts.len(), 1);
    }

    // `cluster status` shows each controller's lag (the leader's is 0).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (code, out, err) = fleet
            .lockstep(&fleet.alice, &["--output", "json", "cluster", "status"])
            .unwrap();
        assert_eq!(code, 0, "{err}");
        let status: serde_json::Value = serde_json::from_str(&out).unwrap();
        let lags: Vec<(String, Option<i64>)> = status["controllers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap().to_string(),
                    c["ledger_lag_revisions"].as_i64(),
                )
            })
            .collect();
        let known = lags.len() == 3 && lags.iter().all(|(_, l)| l.is_some());
        let leader_zero = lags.iter().any(|(n, l)| *n == format!("ctl-{leader}") && *l == Some(0));
        if known && leader_zero {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "lag not shown: {lags:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// etcd set up as docs/ha.md says (its own CA, client and peer TLS) serves
/// controllers only: a trading host's own certificate and a viewer's are
/// refused on read and on write, where a controller's etcd certificate
/// reads; and a controller given a fleet certificate for etcd refuses to
/// start, naming the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_trusts_controllers_only_and_a_controller_with_a_fleet_certificate_for_etcd_does_not_start() {
    let (fleet, _agents) = fleet_with_agents(1, Duration::from_secs(30)).await;
    let etcd_ca = fleet.etcd.ca();
    let prefix_read = ["get", "/lockstep/", "--prefix", "--keys-only"];
    let forged_write = ["put", "/lockstep/halts/999", "forged"];

    let controller = fleet.etcd.client_identity("ctl-probe").unwrap();
    let out = fleet.etcd.etcdctl(&controller, &prefix_read).unwrap();
    let keys = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        keys.contains("/lockstep/leader"),
        "a controller's certificate reads the ledger: {keys}"
    );

    let viewer = lockstep_tests::fleet::process::operator(&fleet.pki_dir, "vera", OperatorRole::Viewer).unwrap();
    let viewer = lockstep_link::tls::TlsPaths {
        ca: etcd_ca.clone(),
        ..viewer
    };
    let agent = fleet.agent_identity("smars-01", &etcd_ca);
    for (who, paths) in [("the agent of smars-01", &agent), ("a viewer", &viewer)] {
        for args in [&prefix_read[..], &forged_write[..]] {
            let out = fleet.etcd.etcdctl(paths, args).unwrap();
            assert!(
                !out.status.success(),
                "etcd served {who} `{}`: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
    let out = fleet
        .etcd
        .etcdctl(&controller, &["get", "/lockstep/halts/999"])
        .unwrap();
    assert!(
        out.stdout.is_empty(),
        "no forged key landed: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The same controller config, with a fleet certificate as its etcd identity.
    let text = std::fs::read_to_string(fleet.controller_config(0)).unwrap();
    let config = lockstep_controller::config::ControllerConfig::load(fleet.controller_config(0)).unwrap();
    let lockstep_controller::config::Backend::Etcd(settings) = config.backend else {
        panic!("the HA fleet runs on etcd")
    };
    let forged = text
        .replace(
            &settings.tls.cert.display().to_string(),
            &viewer.cert.display().to_string(),
        )
        .replace(
            &settings.tls.key.display().to_string(),
            &viewer.key.display().to_string(),
        )
        .replace("name = \"ctl-0\"", "name = \"ctl-forged\"");
    let path = fleet.path("controller-fleet-cert.toml");
    std::fs::write(&path, forged).unwrap();
    let mut child = std::process::Command::new(lockstep_tests::child::binary("lockstep-controller").unwrap())
        .arg("--config")
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("a controller with a fleet certificate for etcd kept running");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("store.etcd.cert"), "{stderr}");
    assert!(stderr.contains("lockstep pki etcd init"), "{stderr}");
}

fn cookie_of(head: &str) -> String {
    let line = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .expect("a session cookie");
    let value = line.split_once(':').unwrap().1.trim();
    value.split(';').next().unwrap().to_string()
}

/// Board sessions are in the ledger: a session the old leader opened is
/// good on the new leader's board, a link it spent stays spent, a link it
/// made and nobody opened opens once there, and a session revoked on the
/// new leader is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_board_session_survives_a_failover_and_a_spent_link_stays_spent() {
    use lockstep_tests::browser;
    let mut fleet = HaFleet::start(HaSpec {
        board: true,
        audit_toml: String::new(),
        env: Vec::new(),
        ..HaSpec::three(hosts(1), Duration::from_secs(30), 2)
    })
    .await
    .unwrap();
    let (old, _) = fleet.wait_leader(None, Duration::from_secs(30)).await.unwrap();
    let ca = fleet.pki_dir.join("ca.pem");
    let token = |url: &str| url.rsplit('/').next().unwrap().to_string();
    let mut console = fleet.console(&fleet.alice).await.unwrap();
    let spent = token(
        &console
            .board_login(pb::BoardLoginRequest {})
            .await
            .unwrap()
            .into_inner()
            .url,
    );
    let unopened = token(
        &console
            .board_login(pb::BoardLoginRequest {})
            .await
            .unwrap()
            .into_inner()
            .url,
    );
    let (status, head, _) = browser::https(&ca, &format!("{}/login/{spent}", fleet.boards[old]), "POST", &[], "")
        .await
        .unwrap();
    assert_eq!(status, 303, "{head}");
    let cookie = cookie_of(&head);

    fleet.kill_controller(old);
    let (new, _) = fleet.wait_leader(Some(old), Duration::from_secs(30)).await.unwrap();
    let board = &fleet.boards[new];
    let (status, _, page) = browser::https(&ca, &format!("{board}/"), "GET", &[("Cookie", &cookie)], "")
        .await
        .unwrap();
    assert_eq!(
        status, 200,
        "the old leader's session on the new leader's board: {page}"
    );
    assert!(page.contains("alice"), "{page}");
    let (status, _, page) = browser::https(&ca, &format!("{board}/login/{spent}"), "POST", &[], "")
        .await
        .unwrap();
    assert_eq!(status, 403, "a link spent on the old leader opened again: {page}");
    assert!(page.contains("already used"), "{page}");
    let (status, head, _) = browser::https(&ca, &format!("{board}/login/{unopened}"), "POST", &[], "")
        .await
        .unwrap();
    assert_eq!(status, 303, "a link made by the old leader, opened on the new: {head}");
    let second = cookie_of(&head);

    let mut console = fleet.console(&fleet.alice).await.unwrap();
    let sessions = console
        .list_board_sessions(pb::ListBoardSessionsRequest {})
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    let first = sessions.iter().min_by_key(|s| s.created_at_unix_ms).unwrap().id.clone();
    console
        .revoke_board_session(pb::RevokeBoardSessionRequest { id: first })
        .await
        .unwrap();
    let (status, _, _) = browser::https(&ca, &format!("{board}/"), "GET", &[("Cookie", &cookie)], "")
        .await
        .unwrap();
    assert_eq!(status, 401, "a revoked session still opens the board");
    let (status, _, _) = browser::https(&ca, &format!("{board}/"), "GET", &[("Cookie", &second)], "")
        .await
        .unwrap();
    assert_eq!(status, 200);
}
