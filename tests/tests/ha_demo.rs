//! `lockstep-demo --ha` as a user runs it. Its own test binary, so its
//! etcd cluster and controllers do not share the 2 cores with ha.rs's.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

/// The failover demo the README points at runs end to end: a standby leads,
/// no local gate closes, the new leader's halt reaches every host.
#[test]
fn the_ha_demo_shows_a_failover_with_no_gate_closed() {
    let demo = lockstep_tests::child::binary("lockstep-demo").unwrap();
    let out = std::process::Command::new(demo)
        .args(["--ha", "--hosts", "2"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "lockstep-demo --ha failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for promise in [
        "leads in epoch",
        "No local gate closed",
        "gate CLOSED on smars-01: halted",
        "audit log intact",
    ] {
        assert!(stdout.contains(promise), "no {promise:?} in:\n{stdout}");
    }
}
