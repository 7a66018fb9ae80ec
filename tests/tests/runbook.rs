//! The runbook's procedures (docs/runbook.md sections 4 to 6), run as
//! written against a real fleet: rolling out a release from a staged build,
//! halt first and diagnose second, and rolling back.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use lockstep_proto::pb::GateState;
use lockstep_tests::fleet::state_of;
use lockstep_tests::knight::Morning;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_incident_and_rollback_as_the_runbook_says() {
    let m = Morning::start(3).await.unwrap();
    let first = m.step1_release_everywhere().await.unwrap();
    assert_eq!(first.gate_check_exit, 0);
    let (alice, bob) = (&m.alice, &m.bob);
    let all = m.all();

    // 4.1 Measure the staged build as the hosts will report it.
    let staged = m.fleet.dir.path().join("build");
    Morning::stage_new(&staged).unwrap();
    let mut config = m.fleet.host("smars-01").unwrap().config.clone();
    config.root = Some(staged);
    let scanner = lockstep_agent::measure::scan::Scanner::new(&config.watch, config.root.clone()).unwrap();
    let (entries, _) = lockstep_agent::measurer::measure_files(&scanner, &config, true).unwrap();
    let manifest = m.fleet.dir.path().join("smars-2.4.json");
    std::fs::write(&manifest, lockstep_proto::manifest::to_json(&entries).unwrap()).unwrap();
    let manifest = manifest.to_str().unwrap();

    // 4.2 Propose before deploying.
    let (code, out) = m
        .fleet
        .console(
            alice,
            &[
                "release",
                "propose",
                "--role",
                "smars",
                "--manifest",
                manifest,
                "--note",
                "2.4",
            ],
        )
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("release 2 for role smars proposed"), "{out}");

    // 4.3 Deploy to two of three; the third is forgotten (the Knight mistake).
    let deployed = vec!["smars-01".to_string(), "smars-02".to_string()];
    m.install_new(&deployed).unwrap();
    m.fleet.settle(&all).await.unwrap();
    let (_, hosts) = m.fleet.console(bob, &["hosts", "--role", "smars"]).await.unwrap();
    assert!(hosts.contains("smars-03"), "{hosts}");
    let (code, diff) = m.fleet.console(bob, &["diff", "smars-03", "smars-01"]).await.unwrap();
    assert_eq!(code, 1, "hosts differ: {diff}");

    // 4.4 Approved; 4.5 the gate names the host that did not get it.
    let (code, out) = m.fleet.console(bob, &["release", "approve", "2"]).await.unwrap();
    assert_eq!(code, 0, "{out}");
    let g = m
        .fleet
        .wait_for("smars-03 closed", |g| state_of(g, "smars-03") == GateState::Closed)
        .await
        .unwrap();
    assert_eq!(state_of(&g, "smars-01"), GateState::Open);
    let (code, out) = m
        .fleet
        .console(bob, &["gate", "check", "--role", "smars"])
        .await
        .unwrap();
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("smars-03"), "{out}");
    m.install_new(&["smars-03".to_string()]).unwrap();
    m.fleet.settle(&all).await.unwrap();
    let (code, out) = m
        .fleet
        .console(bob, &["gate", "check", "--role", "smars"])
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}");

    // 5. Halt first, diagnose second, resume the scope halted.
    let reason = "unexpected orders from smars; investigating";
    let (code, out) = m
        .fleet
        .console(alice, &["halt", "--role", "smars", "--reason", reason])
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}");
    m.fleet.wait_local(&all, 1, "halted").await.unwrap();
    let (code, _) = m
        .fleet
        .console(bob, &["gate", "check", "--role", "smars"])
        .await
        .unwrap();
    assert_eq!(code, 5);
    let (code, _) = m.fleet.console(bob, &["diff", "smars-03", "--release"]).await.unwrap();
    assert_eq!(code, 0, "smars-03 matches release 2");
    let (_, audit) = m
        .fleet
        .console(bob, &["audit", "--role", "smars", "--since", "30m"])
        .await
        .unwrap();
    assert!(audit.contains(reason), "{audit}");
    let (_, alerts) = m.fleet.console(bob, &["alerts"]).await.unwrap();
    assert!(alerts.contains("trading halted on 3 of 3 smars hosts"), "{alerts}");
    let (code, out) = m
        .fleet
        .console(alice, &["resume", "--role", "smars", "--reason", "understood"])
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}");
    m.fleet.settle(&all).await.unwrap();
    m.fleet.wait_local(&all, 0, "resumed").await.unwrap();

    // 6. Roll back: release 1's set, proposed again as release 3, approved.
    let (code, out) = m
        .fleet
        .console(
            alice,
            &[
                "release",
                "propose",
                "--role",
                "smars",
                "--from-release",
                "1",
                "--note",
                "roll back 2.4",
            ],
        )
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("release 3") && out.contains("release 1"), "{out}");
    let (code, out) = m.fleet.console(bob, &["release", "approve", "3"]).await.unwrap();
    assert_eq!(code, 0, "{out}");
    let g = m.fleet.gates().unwrap();
    assert!(
        all.iter().all(|h| state_of(&g, h) == GateState::Closed),
        "new code is not release 3"
    );
    m.install_old(&all).unwrap();
    m.fleet.settle(&all).await.unwrap();
    let (code, out) = m
        .fleet
        .console(bob, &["gate", "check", "--role", "smars"])
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(m.fleet.gates().unwrap().release == 3);
    m.fleet.shutdown().await.unwrap();
}
