//! Agents that know more than one controller address find the controller
//! wherever it now answers, by themselves: their reports and their
//! directive streams move with it (groundwork for active/standby, issue 14).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::time::{Duration, Instant};

use lockstep_tests::fleet::FleetSpec;
use lockstep_tests::knight::Morning;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_follow_a_controller_to_their_second_address() {
    let spec = FleetSpec {
        standby: true,
        scan_interval: Duration::from_millis(300),
        ..FleetSpec::smars(3)
    };
    let mut m = Morning::with_spec(spec).await.unwrap();
    m.step1_release_everywhere().await.unwrap();
    let all = m.all();
    m.fleet.wait_local(&all, 0, "every local gate open").await.unwrap();
    let before: Vec<u64> = all.iter().map(|h| m.fleet.last_seq(h).unwrap()).collect();

    m.fleet.move_to_standby().await.unwrap();
    assert_eq!(m.fleet.addr, m.fleet.addresses[1]);

    // Reports reach the controller at its new address (a new seq from every host).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now: Vec<u64> = all
            .iter()
            .map(|h| {
                m.fleet
                    .controller
                    .queries
                    .get_host(h, false)
                    .ok()
                    .and_then(|d| d.status)
                    .map_or(0, |s| s.last_seq)
            })
            .collect();
        if now.iter().zip(&before).all(|(n, b)| n > b) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "reports did not follow the controller: {before:?} -> {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The directive streams did too: a halt from the moved controller reaches every agent.
    let (code, out) = m
        .fleet
        .console(&m.alice, &["halt", "--role", "smars", "--reason", "after the move"])
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}");
    m.fleet
        .wait_local(&all, 1, "every local gate closed by the moved controller's halt")
        .await
        .unwrap();
    for h in &all {
        let (_, line) = m.fleet.local_gate_check(h).unwrap();
        assert!(line.contains("after the move"), "{h}: {line}");
    }
    m.fleet.shutdown().await.unwrap();
}
