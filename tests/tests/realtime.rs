//! Gates pushed to hosts and enforced there: the kill switch, lease expiry
//! when the controller dies, and a halted host learning it on reconnect.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::time::Duration;

use lockstep_proto::identity::OperatorRole;
use lockstep_proto::pb::GateState;
use lockstep_tests::fleet::{FleetSpec, reasons_of, state_of};
use lockstep_tests::knight::Morning;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn halt_reaches_every_agent_and_resume_reopens() {
    let m = Morning::start(4).await.unwrap();
    m.step1_release_everywhere().await.unwrap();
    let all = m.all();
    m.fleet.wait_local(&all, 0, "local gates to open").await.unwrap();
    m.fleet.wait_hooks(&all, &["OPEN 1"]).await.unwrap();

    let viewer = m.fleet.operator("vic", OperatorRole::Viewer).unwrap();
    let err = m
        .fleet
        .console(&viewer, &["halt", "--fleet", "--reason", "x"])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("vic has role viewer; this needs the operator role"),
        "{err}"
    );

    let (code, out) = m
        .fleet
        .console(
            &m.alice,
            &["halt", "--role", "smars", "--reason", "runaway orders on NYSE"],
        )
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("4 gates closed"), "{out}");
    let took = m
        .fleet
        .wait_local(&all, 1, "local gates to close after the halt")
        .await
        .unwrap();
    eprintln!("halt reached all {} agents' gate files in {took:?}", all.len());
    for h in &all {
        let (_, line) = m.fleet.local_gate_check(h).unwrap();
        assert!(
            line.contains("halted (role smars) by alice") && line.contains("runaway orders on NYSE"),
            "{line}"
        );
    }
    let g = m.fleet.gates().unwrap();
    assert!(reasons_of(&g, "smars-01")[0].contains("lift with: lockstep resume --role smars"));
    let (code, out) = m
        .fleet
        .console(&m.bob, &["gate", "check", "--role", "smars"])
        .await
        .unwrap();
    assert_eq!(code, 5, "halted exit code: {out}");
    let (_, out) = m.fleet.console(&m.bob, &["halts"]).await.unwrap();
    assert!(
        out.contains("role smars") && out.contains("ACTIVE") && out.contains("alice"),
        "{out}"
    );

    // Resuming another scope lifts nothing.
    let err = m
        .fleet
        .console(&m.alice, &["resume", "--fleet"])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no active halt on the fleet"), "{err}");
    let (code, out) = m
        .fleet
        .console(&m.alice, &["resume", "--role", "smars", "--reason", "fixed"])
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}");
    m.fleet
        .wait_local(&all, 0, "local gates to reopen after resume")
        .await
        .unwrap();
    // One hook per transition, none for the renewals in between.
    m.fleet
        .wait_hooks(&all, &["OPEN 1", "CLOSED 1", "OPEN 1"])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_loss_closes_gates_when_the_lease_runs_out() {
    let spec = FleetSpec {
        freshness_ttl: Duration::from_millis(1500),
        scan_interval: Duration::from_millis(300),
        ..FleetSpec::smars(3)
    };
    let mut m = Morning::with_spec(spec).await.unwrap();
    m.step1_release_everywhere().await.unwrap();
    let all = m.all();
    m.fleet.wait_local(&all, 0, "local gates to open").await.unwrap();
    m.fleet.stop_controller().await.unwrap();
    m.fleet.wait_local(&all, 1, "leases to run out").await.unwrap();
    for h in &all {
        let (_, line) = m.fleet.local_gate_check(h).unwrap();
        assert!(line.contains("lease expired"), "{h}: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halted_host_learns_it_as_soon_as_it_reconnects() {
    let mut m = Morning::start(2).await.unwrap();
    m.step1_release_everywhere().await.unwrap();
    m.fleet.stop_agent("smars-02").await.unwrap();
    let (code, out) = m
        .fleet
        .console(&m.alice, &["halt", "--host", "smars-02", "--reason", "bad NIC"])
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}");
    m.fleet.start_agent("smars-02").unwrap();
    m.fleet
        .wait_local(&["smars-02".to_string()], 1, "the reconnecting host to close")
        .await
        .unwrap();
    let (_, line) = m.fleet.local_gate_check("smars-02").unwrap();
    assert!(line.contains("bad NIC"), "{line}");
    let g = m.fleet.gates().unwrap();
    assert_eq!(
        state_of(&g, "smars-01"),
        GateState::Open,
        "a host halt touches only that host"
    );
}
