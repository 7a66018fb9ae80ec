//! Outages (issue 8, part 2), with a real agent process and a real
//! controller process: while the controller is gone the agent backs off (a
//! handful of connection attempts and log lines, not a busy loop) and its
//! gate closes when the lease runs out; when the controller is back the
//! same agent process recovers by itself.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lockstep_tests::fleet::process::{ProcFleet, ProcSpec};

/// `lockstep-agent gate check` exit code for a CLOSED gate.
const CLOSED: i32 = 1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_outage_backs_off_closes_at_lease_expiry_and_recovers_without_restart() {
    let host = "real-1".to_string();
    let mut spec = ProcSpec::smars(vec![host.clone()]);
    spec.freshness_ttl = Duration::from_secs(3); // the agent's lease
    let mut fleet = ProcFleet::start(spec).await.unwrap();
    fleet.enroll(std::slice::from_ref(&host), 1).await.unwrap();
    fleet.write_tree(&host, "build 1").unwrap();
    let mut agent = fleet.start_agent(&host).unwrap();
    fleet
        .wait_hosts("the first report", |h| h.iter().any(|s| s.last_seq > 0))
        .await
        .unwrap();
    fleet.release_from_host(&host).await.unwrap();
    fleet.wait_local(&host, 0).await.unwrap();

    // The controller dies. In its place, a listener that counts every
    // connection the agent makes and drops it at once.
    fleet.kill_controller().unwrap();
    let listener = tokio::net::TcpListener::bind(&fleet.addr).await.unwrap();
    let attempts = Arc::new(AtomicUsize::new(0));
    let counting = {
        let attempts = attempts.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                attempts.fetch_add(1, Ordering::Relaxed);
                drop(conn);
            }
        })
    };
    let log_before = fleet.agent_log(&host).lines().count();
    let outage = Duration::from_secs(10);
    let start = Instant::now();
    let mut closed_after = None;
    while start.elapsed() < outage {
        if closed_after.is_none() && fleet.local_gate_check(&host).unwrap() == CLOSED {
            closed_after = Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    counting.abort();
    let _ = counting.await;
    let attempts = attempts.load(Ordering::Relaxed);
    let log_lines = fleet.agent_log(&host).lines().count() - log_before;
    eprintln!("outage: {attempts} connection attempts, {log_lines} log lines, gate closed after {closed_after:?}");
    assert!(
        closed_after.is_some(),
        "the gate stayed open through a {}s outage with a 3s lease",
        outage.as_secs()
    );
    // Backing off from 250 ms, doubling: about 6 attempts per loop (report
    // and directives) in 10 s. A retry loop without backoff makes hundreds.
    assert!(
        attempts >= 2,
        "the agent did not try to reconnect ({attempts} attempts)"
    );
    assert!(attempts <= 30, "{attempts} connection attempts in 10s: not backing off");
    assert!(
        log_lines <= 40,
        "{log_lines} log lines in 10s of outage:\n{}",
        fleet.agent_log(&host)
    );
    assert!(
        agent.0.try_wait().unwrap().is_none(),
        "the agent exited during the outage"
    );

    // The controller comes back: the same agent process reconnects, reports
    // and its gate opens again.
    fleet.start_controller().await.unwrap();
    fleet.wait_local(&host, 0).await.unwrap();
    assert!(agent.0.try_wait().unwrap().is_none(), "the agent restarted");
}
