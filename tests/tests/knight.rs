//! The Knight Capital morning end to end: a controller and 8 agents over real
//! mTLS on 127.0.0.1, real sled, real files; the gate of every host asserted
//! at every step, reasons included; then the kill switch.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use lockstep_proto::pb::{GateState, ReasonKind};
use lockstep_tests::fleet::{FleetSpec, reasons_of, state_of};
use lockstep_tests::knight::{BIN, CONF, Morning, RLP_LIB};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knight_morning_is_caught_before_the_open() {
    let m = Morning::start(8).await.unwrap();
    let all = m.all();
    let odd = m.last();

    let s1 = m.step1_release_everywhere().await.unwrap();
    assert_eq!(s1.gates.release, 1);
    for h in &all {
        assert_eq!(
            state_of(&s1.gates, h),
            GateState::Open,
            "{h}: {:?}",
            reasons_of(&s1.gates, h)
        );
    }
    assert_eq!(s1.gate_check_exit, 0);
    assert!(s1.transcript.last().unwrap().1.contains("smars: 8/8 OPEN on release 1"));

    let s2 = m.step2_new_code_on_all_but_one().await.unwrap();
    assert_eq!(s2.gates.release, 2);
    for h in m.all_but_last() {
        assert_eq!(
            state_of(&s2.gates, &h),
            GateState::Open,
            "{h}: {:?}",
            reasons_of(&s2.gates, &h)
        );
    }
    assert_eq!(state_of(&s2.gates, &odd), GateState::Closed);
    let reasons = reasons_of(&s2.gates, &odd);
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    // The config file is parsed: the reason names the flag, not only a hash.
    assert!(
        reasons.contains(&format!("drift: {CONF}#router.flag_rlp value 0 != release 2 (1)")),
        "{reasons:?}"
    );
    for path in [BIN, CONF, RLP_LIB] {
        assert!(
            reasons
                .iter()
                .any(|r| r.starts_with(&format!("drift: {path} ")) && r.contains("release 2")),
            "no drift reason naming {path}: {reasons:?}"
        );
    }
    assert_eq!(s2.gate_check_exit, 3, "drift exit code");
    let summary = &s2.transcript.last().unwrap().1;
    assert!(
        summary.contains("smars: 7/8 OPEN on release 2; smars-08 CLOSED (drift: 3 files)"),
        "{summary}"
    );
    let diff = s2
        .transcript
        .iter()
        .find(|(cmd, _)| cmd.starts_with("lockstep diff"))
        .unwrap();
    assert!(
        diff.1.contains("smars-08 differs from release 2 in 4 entries"),
        "{}",
        diff.1
    );

    let s3 = m.step3_roll_back().await.unwrap();
    for h in &all {
        assert_eq!(
            state_of(&s3.gates, h),
            GateState::Closed,
            "{h} should be closed under release 2"
        );
        let g = s3.gates.gates.iter().find(|g| &g.host == h).unwrap();
        assert!(
            g.reasons.iter().all(|r| r.kind() == ReasonKind::Drift),
            "{h}: {:?}",
            g.reasons
        );
        assert_eq!(g.reasons.len(), 4, "{h}: {:?}", g.reasons);
    }
    assert_eq!(s3.gate_check_exit, 3);

    let (s4, _took) = m.step4_halt().await.unwrap();
    for h in &all {
        assert_eq!(state_of(&s4.gates, h), GateState::Closed, "{h}");
        let (code, line) = m.fleet.local_gate_check(h).unwrap();
        assert_eq!(code, 1, "{h}: {line}");
        assert!(line.contains("drill: stop SMARS"), "{h}: {line}");
    }
    assert_eq!(s4.gate_check_exit, 5, "halted exit code");

    let s5 = m.step5_audit().await.unwrap();
    assert!(s5[0].1.contains("halt 1 on role smars"), "{}", s5[0].1);
    assert!(s5[1].1.contains("audit log intact"), "{}", s5[1].1);
    m.fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_that_never_reported_is_missing_and_blocks_its_role() {
    // smars-03 is in the inventory, but its agent never runs: Knight's eighth
    // server with nothing watching it.
    let spec = FleetSpec {
        without_agent: vec!["smars-03".into()],
        ..FleetSpec::smars(3)
    };
    let m = Morning::with_spec(spec).await.unwrap();
    let two = vec!["smars-01".to_string(), "smars-02".to_string()];
    m.install_old(&two).unwrap();
    m.fleet.settle(&two).await.unwrap();
    let (code, out) = m
        .fleet
        .console(
            &m.alice,
            &["release", "propose", "--role", "smars", "--from-host", "smars-01"],
        )
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}");
    let (code, out) = m.fleet.console(&m.bob, &["release", "approve", "1"]).await.unwrap();
    assert_eq!(code, 0, "{out}");
    let (code, out) = m
        .fleet
        .console(&m.bob, &["gate", "check", "--role", "smars"])
        .await
        .unwrap();
    assert_eq!(code, 4, "stale/missing exit code: {out}");
    assert!(out.contains("smars: 2/3 OPEN on release 1; smars-03 MISSING"), "{out}");
    let g = m.fleet.gates().unwrap();
    assert_eq!(state_of(&g, "smars-03"), GateState::Missing);
    assert!(reasons_of(&g, "smars-03")[0].contains("smars-03 has never reported"));
    m.fleet.shutdown().await.unwrap();
}
