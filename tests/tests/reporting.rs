//! The reporting path beyond the Knight morning: heartbeats, consensus mode,
//! manifest releases, the directive stream, and an unreachable controller.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::time::Duration;

use lockstep_agent::error::AgentError;
use lockstep_agent::lifecycle::Agent;
use lockstep_proto::pb::{DirectivesRequest, GateState, directive};
use lockstep_tests::fleet::{FleetSpec, reasons_of, state_of};
use lockstep_tests::knight::{BIN, Morning};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_sends_entries_only_when_its_set_changed() {
    let spec = FleetSpec {
        without_agent: vec!["smars-01".into()],
        ..FleetSpec::smars(2)
    };
    let m = Morning::with_spec(spec).await.unwrap();
    let one = vec!["smars-01".to_string()];
    m.install_old(&one).unwrap();
    m.fleet.enroll("smars-01").await.unwrap();
    let mut agent = Agent::new(m.fleet.host("smars-01").unwrap().config.clone()).unwrap();

    let first = agent.report_once().await.unwrap();
    assert!(first.accepted && agent.last_sent_full(), "first report carries entries");
    agent.report_once().await.unwrap();
    assert!(!agent.last_sent_full(), "unchanged set: digest-only heartbeat");
    m.install_new(&one).unwrap();
    agent.report_once().await.unwrap();
    assert!(agent.last_sent_full(), "changed set: entries again");
    agent.report_once().await.unwrap();
    assert!(!agent.last_sent_full());

    // A restarted agent does not know what the controller holds: it starts
    // with a heartbeat only if the controller says it knows the digest.
    drop(agent);
    let mut restarted = Agent::new(m.fleet.host("smars-01").unwrap().config.clone()).unwrap();
    assert!(restarted.report_once().await.unwrap().accepted);
    let hosts = m.fleet.controller.queries.list_hosts("smars").unwrap();
    assert_eq!(hex::encode(&hosts[0].digest), m.fleet.local_digest("smars-01").unwrap());

    // The audit log has each full measurement (two version sets, then the
    // restarted agent's first), not each heartbeat: the unchanged
    // heartbeats are counted in one record.
    let accepted: Vec<String> = m
        .fleet
        .audit_records()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.contains("\"action\":\"attestation.accepted\"") && r.contains("\"host\":\"smars-01\""))
        .collect();
    assert_eq!(accepted.len(), 3, "one record per full measurement: {accepted:#?}");
    assert!(accepted.iter().all(|r| r.contains("(full)")), "{accepted:#?}");
    m.fleet.controller.ingest.record_heartbeat_count().await;
    let counted = m
        .fleet
        .wait_audit("attestation.heartbeats", "heartbeats renewed unchanged version sets")
        .await
        .unwrap();
    let record: serde_json::Value = serde_json::from_str(&counted).unwrap();
    let n: u64 = record["detail"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // smars-02's agent runs too, so at least smars-01's two.
    assert!(n >= 2, "{counted}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consensus_mode_closes_the_odd_host_out() {
    let spec = FleetSpec {
        mode: "consensus".into(),
        ..FleetSpec::smars(3)
    };
    let m = Morning::with_spec(spec).await.unwrap();
    let all = m.all();
    m.install_old(&all).unwrap();
    m.install_new(&["smars-03".to_string()]).unwrap();
    m.fleet.settle(&all).await.unwrap();
    let g = m.fleet.gates().unwrap();
    assert_eq!(
        state_of(&g, "smars-01"),
        GateState::Open,
        "{:?}",
        reasons_of(&g, "smars-01")
    );
    assert_eq!(state_of(&g, "smars-02"), GateState::Open);
    assert_eq!(state_of(&g, "smars-03"), GateState::Closed);
    let reasons = reasons_of(&g, "smars-03");
    assert!(
        reasons.iter().any(|r| r.contains(BIN) && r.contains("!= the majority")),
        "{reasons:?}"
    );
    let (code, out) = m
        .fleet
        .console(&m.bob, &["gate", "check", "--role", "smars"])
        .await
        .unwrap();
    assert_eq!(code, 3);
    assert!(
        out.contains("smars: 2/3 OPEN by consensus; smars-03 CLOSED (drift: 3 files)"),
        "{out}"
    );

    // Split three ways: no strict majority, every gate closed.
    m.fleet.write(&["smars-02".to_string()], BIN, b"a third build").unwrap();
    m.fleet.settle(&all).await.unwrap();
    let g = m.fleet.gates().unwrap();
    for h in &all {
        assert_eq!(state_of(&g, h), GateState::Closed, "{h}");
        assert!(
            reasons_of(&g, h)
                .iter()
                .any(|r| r.contains("no majority in role smars")),
            "{h}: {:?}",
            reasons_of(&g, h)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_from_a_build_manifest_gates_the_fleet() {
    let m = Morning::start(2).await.unwrap();
    let all = m.all();
    m.install_new(&all).unwrap();
    m.fleet.settle(&all).await.unwrap();
    // The build's staged tree: what the hosts should have.
    let stage = tempfile::tempdir().unwrap();
    for (path, content) in [
        (
            "opt/smars/bin/smars",
            std::fs::read(m.fleet.host("smars-01").unwrap().root.join("opt/smars/bin/smars")).unwrap(),
        ),
        (
            "opt/smars/etc/smars.conf",
            std::fs::read(m.fleet.host("smars-01").unwrap().root.join("opt/smars/etc/smars.conf")).unwrap(),
        ),
        (
            "opt/smars/lib/librlp.so",
            std::fs::read(m.fleet.host("smars-01").unwrap().root.join("opt/smars/lib/librlp.so")).unwrap(),
        ),
        (
            "opt/smars/lib/libsmars.so",
            std::fs::read(m.fleet.host("smars-01").unwrap().root.join("opt/smars/lib/libsmars.so")).unwrap(),
        ),
    ] {
        let p = stage.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    // The build measures its staged tree with the agents' own config.
    let mut config = m.fleet.host("smars-01").unwrap().config.clone();
    config.root = Some(stage.path().to_path_buf());
    config.watch = vec!["/opt/smars/**".to_string()];
    let scanner = lockstep_agent::measure::scan::Scanner::new(&config.watch, config.root.clone()).unwrap();
    let (entries, _) = lockstep_agent::measurer::measure_files(&scanner, &config, true).unwrap();
    let manifest = stage.path().join("release.json");
    std::fs::write(&manifest, lockstep_proto::manifest::to_json(&entries).unwrap()).unwrap();
    let manifest = manifest.display().to_string();
    let (code, out) = m
        .fleet
        .console(
            &m.alice,
            &["release", "propose", "--role", "smars", "--manifest", &manifest],
        )
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("manifest file"), "{out}");
    let (code, out) = m
        .fleet
        .console(&m.bob, &["--output", "json", "release", "approve", "1"])
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["state"], "active");
    assert_eq!(v["approved_by"], "bob");
    // Staged and deployed owners may differ in real life; here both are ours.
    let g = m.fleet.gates().unwrap();
    for h in &all {
        assert_eq!(state_of(&g, h), GateState::Open, "{h}: {:?}", reasons_of(&g, h));
    }
    let (code, out) = m
        .fleet
        .console(&m.bob, &["--output", "json", "gate", "check", "--role", "smars"])
        .await
        .unwrap();
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["summary"], "smars: 2/2 OPEN on release 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directive_stream_sends_the_current_gate_then_changes() {
    let m = Morning::start(2).await.unwrap();
    m.step1_release_everywhere().await.unwrap();
    let mut stream = m
        .fleet
        .agent_client("smars-02")
        .unwrap()
        .directives(DirectivesRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    let Some(directive::Kind::Gate(g)) = first.kind else {
        panic!("expected a gate")
    };
    assert_eq!((g.host.as_str(), g.state()), ("smars-02", GateState::Open));
    m.install_new(&["smars-02".to_string()]).unwrap();
    m.fleet.settle(&["smars-02".to_string()]).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let d = stream.message().await.unwrap().unwrap();
            // The deploy writes four files; under load the agent may report
            // the first ones before the binary lands: wait for the binary.
            if let Some(directive::Kind::Gate(g)) = d.kind {
                if g.state() == GateState::Closed && g.reasons.iter().any(|r| r.text.contains(BIN)) {
                    return g;
                }
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(next.host, "smars-02");
    assert!(next.reasons.iter().any(|r| r.text.contains(BIN)), "{:?}", next.reasons);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_controller_is_a_retryable_error_not_a_crash() {
    let spec = FleetSpec {
        without_agent: vec!["smars-01".into()],
        ..FleetSpec::smars(1)
    };
    let m = Morning::with_spec(spec).await.unwrap();
    m.fleet.enroll("smars-01").await.unwrap();
    let mut config = m.fleet.host("smars-01").unwrap().config.clone();
    // A port where nothing listens.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    config.controller.only(dead.to_string()).unwrap();
    let mut agent = Agent::new(config).unwrap();
    let err = agent.report_once().await.unwrap_err();
    assert!(matches!(err, AgentError::Unreachable(_)), "{err}");
    assert!(err.to_string().starts_with("controller unreachable"), "{err}");
}
