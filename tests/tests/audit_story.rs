//! The audit log tells the Knight morning's story, and verifies.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use lockstep_proto::identity::OperatorRole;
use lockstep_tests::knight::Morning;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_tells_the_story_and_verifies() {
    let m = Morning::start(3).await.unwrap();
    m.step1_release_everywhere().await.unwrap();
    m.step2_new_code_on_all_but_one().await.unwrap();
    let viewer = m.fleet.operator("vic", OperatorRole::Viewer).unwrap();
    // A denied action is recorded with who tried it.
    m.fleet
        .console(&viewer, &["halt", "--fleet", "--reason", "x"])
        .await
        .unwrap_err();
    m.step4_halt().await.unwrap();
    // Gate transitions are written by a background recorder: wait for the halt's.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let out = loop {
        let (code, out) = m.fleet.console(&viewer, &["audit"]).await.unwrap();
        assert_eq!(code, 0);
        if out.matches("gate.changed").count() >= 3 && out.contains("OPEN -> CLOSED: halted") {
            break out;
        }
        assert!(std::time::Instant::now() < deadline, "no halt transitions in:\n{out}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    for needle in [
        "token.created",
        "host.enrolled",
        "attestation.accepted",
        "release.proposed",
        "alice (operator)",
        "release.approved",
        "bob (approver)",
        "console.denied",
        "vic (viewer): Halt: vic has role viewer; this needs the operator role",
        "halt 1 on role smars: drill: stop SMARS",
        "smars-03",
    ] {
        assert!(out.contains(needle), "audit lacks {needle:?}:\n{out}");
    }
    let (code, out) = m
        .fleet
        .console(&viewer, &["audit", "--host", "smars-02", "--limit", "3"])
        .await
        .unwrap();
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(out.lines().all(|l| l.contains("smars-02")), "{out}");
    // Each `lockstep gate check` run is evidence: who ran it, and what it
    // answered (exit 0 on release 1 everywhere, 3 with one host drifting).
    let records = m.fleet.audit_records().await.unwrap();
    let checks: Vec<&String> = records
        .iter()
        .filter(|r| r.contains("\"action\":\"gate.checked\""))
        .collect();
    assert!(checks.len() >= 2, "{checks:#?}");
    assert!(
        checks
            .iter()
            .all(|r| r.contains("bob (approver)") && r.contains("\"role\":\"smars\"")),
        "{checks:#?}"
    );
    assert!(
        checks[0].contains("smars: 3/3 OPEN on release 1; exit 0"),
        "{}",
        checks[0]
    );
    assert!(
        checks[1].contains("smars: 2/3 OPEN on release 2; smars-03 CLOSED") && checks[1].contains("; exit 3"),
        "{}",
        checks[1]
    );
    let (code, out) = m.fleet.console(&viewer, &["audit", "verify"]).await.unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("audit log intact"), "{out}");
    let (_, out) = m.fleet.console(&viewer, &["audit", "export"]).await.unwrap();
    let first: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(first["seq"], 1);
    assert_eq!(first["prev_hash"].as_str().unwrap().len(), 64);
}
