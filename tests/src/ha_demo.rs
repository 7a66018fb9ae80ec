//! `lockstep-demo --ha`: the failover docs/ha.md promises, on this machine.
//! A 3-member etcd cluster (Debian's etcd-server), three controllers, real
//! agents given every controller's address, every gate OPEN on an approved
//! release; then the leader is killed -9. A standby leads, the agents find
//! it by themselves, no local gate closes, and a halt from the new leader
//! reaches every host. Each step prints the commands an operator would run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::etcd_cluster::ETCD;
use crate::fleet::ha::{HaFleet, HaSpec};

fn hosts(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("smars-{i:02}")).collect()
}

fn show(cmd: &str, (code, out, err): (i32, String, String)) {
    println!("$ {cmd}");
    print!("{out}{err}");
    if code != 0 {
        println!("(exit code {code})");
    }
}

/// Runs the demo with `n` agents; an error if any promise is broken (a
/// gate closed during the failover, no leader within the budget).
pub async fn run(n: usize) -> anyhow::Result<()> {
    anyhow::ensure!(
        std::path::Path::new(ETCD).is_file(),
        "--ha needs Debian's etcd-server ({ETCD}): apt-get install etcd-server (.ci/run installs it)"
    );
    println!("lockstep in HA on etcd: 3 etcd members, 3 controllers, {n} agents, all on loopback.");
    let mut fleet = HaFleet::start(HaSpec {
        controllers: 3,
        hosts: hosts(n),
        freshness_ttl: Duration::from_secs(30),
        leader_ttl_s: 2,
        sled_first: false,
        isolated: false,
        board: false,
        audit_toml: String::new(),
        env: Vec::new(),
    })
    .await?;
    println!(
        "Controllers on {}; PKI, configs and data in {}",
        fleet.addrs.join(", "),
        fleet.dir.path().display()
    );
    let mut agents = Vec::new();
    for h in hosts(n) {
        agents.push(fleet.start_agent(&h).await?);
    }
    fleet
        .wait_hosts("every host reported", Duration::from_secs(60), |hs| {
            hosts(n)
                .iter()
                .all(|h| hs.iter().any(|s| &s.host == h && s.last_seq > 0))
        })
        .await?;
    let release = fleet.release_from_host("smars-01").await?;
    for h in hosts(n) {
        fleet.wait_local(&h, 0, Duration::from_secs(30)).await?;
    }
    println!("\n=== Step 1: release {release} approved, every gate OPEN; one controller leads ===");
    show(
        "lockstep cluster status",
        fleet.lockstep(&fleet.alice, &["cluster", "status"])?,
    );
    let (leader, epoch) = fleet.wait_leader(None, Duration::from_secs(10)).await?;

    println!("\n=== Step 2: kill -9 the leader (ctl-{leader}, epoch {epoch}) at the open ===");
    let killed_at = lockstep_proto::now_unix_ms();
    let started = Instant::now();
    fleet.kill_controller(leader);
    let fleet = Arc::new(fleet);
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (fleet, stop) = (fleet.clone(), stop.clone());
        tokio::spawn(async move {
            let mut closed = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                for h in hosts(n) {
                    if fleet.local_gate_check(&h).unwrap_or(-1) != 0 && !closed.contains(&h) {
                        closed.push(h);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            closed
        })
    };
    let (new_leader, new_epoch) = fleet.wait_leader(Some(leader), Duration::from_secs(15)).await?;
    let led_after = started.elapsed();
    fleet
        .wait_reported_since(&hosts(n), killed_at, Duration::from_secs(20))
        .await?;
    let reported_after = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let closed = watcher.await?;
    println!(
        "ctl-{new_leader} leads in epoch {new_epoch} {:.1} s after the kill; every agent had reported to it by {:.1} s, by itself (no restart, no reconfiguration).",
        led_after.as_secs_f64(),
        reported_after.as_secs_f64()
    );
    anyhow::ensure!(closed.is_empty(), "local gates closed during the failover: {closed:?}");
    println!(
        "No local gate closed during the failover (each agent's `lockstep-agent gate check` sampled every 100 ms)."
    );

    println!("\n=== Step 3: the cluster as the new leader sees it ===");
    // The killed controller stops announcing itself; shown NOT RUNNING? after 3 s.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, json, _) = fleet.lockstep(&fleet.alice, &["--output", "json", "cluster", "status"])?;
        let gone = serde_json::from_str::<serde_json::Value>(&json)
            .ok()
            .and_then(|v| v["controllers"].as_array().cloned())
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["name"] == format!("ctl-{leader}") && c["running"] == false)
            });
        if gone || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    show(
        "lockstep cluster status",
        fleet.lockstep(&fleet.alice, &["cluster", "status"])?,
    );

    println!("\n=== Step 4: the kill switch works from the new leader ===");
    show(
        "lockstep halt --role smars --reason \"failover drill\"",
        fleet.lockstep(&fleet.alice, &["halt", "--role", "smars", "--reason", "failover drill"])?,
    );
    for h in hosts(n) {
        fleet.wait_local(&h, 1, Duration::from_secs(10)).await?;
    }
    println!("$ lockstep-agent gate check   (on smars-01)");
    print!("{}", fleet.local_gate_text("smars-01")?);
    show(
        "lockstep audit verify",
        fleet.lockstep(&fleet.alice, &["audit", "verify"])?,
    );
    drop(agents);
    println!(
        "\nOne controller's box died at the open and no host lost its gate: the fleet needs etcd's quorum, not any one controller."
    );
    Ok(())
}
