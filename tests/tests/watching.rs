//! Changes seen as they happen: heartbeats are a minute apart here, so only
//! the inotify watcher can explain a verdict within seconds.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::time::Duration;

use lockstep_proto::pb::GateState;
use lockstep_tests::fleet::{FleetSpec, reasons_of, state_of};
use lockstep_tests::knight::{BIN, Morning};

fn quiet_fleet(hosts: usize) -> FleetSpec {
    FleetSpec {
        scan_interval: Duration::from_secs(60),
        freshness_ttl: Duration::from_secs(300),
        // Longer than any pause inside a burst on a loaded 2-core machine;
        // the first files of a burst are a small change until there are more.
        quiet_period: Duration::from_millis(300),
        small_change_quiet_period: Duration::from_millis(300),
        ..FleetSpec::smars(hosts)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_on_one_host_closes_its_gate_and_names_the_file() {
    let m = Morning::with_spec(quiet_fleet(3)).await.unwrap();
    m.step1_release_everywhere().await.unwrap();
    // A rename-over deploy of a new binary on smars-02 only; nobody triggers a scan.
    m.fleet
        .write(&["smars-02".to_string()], BIN, b"hotfix built on a laptop")
        .unwrap();
    let g = m
        .fleet
        .wait_for("smars-02 to close", |g| state_of(g, "smars-02") == GateState::Closed)
        .await
        .unwrap();
    let reasons = reasons_of(&g, "smars-02");
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(reasons[0].starts_with(&format!("drift: {BIN} sha256")), "{reasons:?}");
    assert_eq!(state_of(&g, "smars-01"), GateState::Open);
    assert_eq!(state_of(&g, "smars-03"), GateState::Open);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_500_writes_yields_one_attestation() {
    let m = Morning::with_spec(quiet_fleet(1)).await.unwrap();
    m.step1_release_everywhere().await.unwrap();
    // Count full attestations (those carrying entries) in the audit log;
    // heartbeats may come and go meanwhile.
    let audit = |after_seq: u64| {
        let req = lockstep_proto::pb::ListAuditRequest {
            host: "smars-01".into(),
            after_seq,
            ..Default::default()
        };
        m.fleet.controller.queries.list_audit(&req).unwrap().records
    };
    // A new directory re-targets the watcher, which scans once at once
    // (see watch.rs): let that settle, so the burst is all that follows.
    // Settled means: that scan has run (the agent's scan count moved).
    let metrics = m.fleet.host("smars-01").unwrap().metrics.clone().unwrap();
    let scans = || {
        let text = metrics.render();
        text.lines()
            .find_map(|l| l.strip_prefix("lockstep_agent_scan_seconds_count "))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let scans_before = scans();
    let root = m.fleet.host("smars-01").unwrap().root.join("opt/smars/share");
    std::fs::create_dir_all(&root).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while scans() <= scans_before {
        assert!(
            std::time::Instant::now() < deadline,
            "the re-targeted watcher never scanned"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mark = audit(0).last().map_or(0, |r| r.seq);
    let before = m.fleet.local_digest("smars-01").unwrap();
    for i in 0..500 {
        std::fs::write(root.join(format!("tick-{i:03}.csv")), format!("row {i}\n")).unwrap();
    }
    let want = m.fleet.local_digest("smars-01").unwrap();
    m.fleet
        .wait_for("the burst to be reported", |_| {
            m.fleet
                .controller
                .queries
                .get_host("smars-01", false)
                .map(|d| hex::encode(d.status.unwrap().digest) == want)
                .unwrap_or(false)
        })
        .await
        .unwrap();
    // Only the whole burst is ever reported: no attestation of a part of it
    // (a heavily loaded machine may still re-report the set from before).
    let full: Vec<_> = audit(mark)
        .into_iter()
        .filter(|r| r.action == "attestation.accepted" && r.detail.ends_with("(full)"))
        .collect();
    let burst: Vec<_> = full.iter().filter(|r| r.detail.contains(&want[..16])).collect();
    assert_eq!(burst.len(), 1, "one attestation carries the whole burst: {full:?}");
    assert!(
        full.iter()
            .all(|r| r.detail.contains(&want[..16]) || r.detail.contains(&before[..16])),
        "an attestation of part of the burst: {full:?}"
    );
    let g = m.fleet.gates().unwrap();
    let reasons = reasons_of(&g, "smars-01");
    assert_eq!(reasons.len(), 51, "50 named, then a pointer to the full diff");
    assert!(reasons[50].contains("and 450 more differences"), "{}", reasons[50]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_directory_deleted_and_recreated_is_still_watched() {
    let m = Morning::with_spec(quiet_fleet(2)).await.unwrap();
    m.step1_release_everywhere().await.unwrap();
    let one = vec!["smars-01".to_string()];
    let dir = m.fleet.host("smars-01").unwrap().root.join("opt/smars");
    std::fs::remove_dir_all(&dir).unwrap();
    let g = m
        .fleet
        .wait_for("smars-01 to close with its files gone", |g| {
            state_of(g, "smars-01") == GateState::Closed
        })
        .await
        .unwrap();
    assert!(
        reasons_of(&g, "smars-01")
            .iter()
            .any(|r| r.contains("absent, release 1 has")),
        "{:?}",
        reasons_of(&g, "smars-01")
    );
    // Re-deploy into a new directory of the same name.
    m.install_old(&one).unwrap();
    m.fleet
        .wait_for("smars-01 to reopen after the re-deploy", |g| {
            state_of(g, "smars-01") == GateState::Open
        })
        .await
        .unwrap();
    // And the new directory is watched: a new file in it is seen.
    m.fleet.write(&one, "/opt/smars/bin/extra-tool", b"x").unwrap();
    let g = m
        .fleet
        .wait_for("the new file to close the gate", |g| {
            state_of(g, "smars-01") == GateState::Closed
        })
        .await
        .unwrap();
    assert!(
        reasons_of(&g, "smars-01")[0].contains("/opt/smars/bin/extra-tool"),
        "{:?}",
        reasons_of(&g, "smars-01")
    );
}
