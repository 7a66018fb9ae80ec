//! Failover time on etcd: kill -9 the leader of three controllers and time
//! until a standby leads, every agent's report has been accepted by it and
//! every agent's directive stream is open on it again. Measured, never
//! asserted: `lockstep-bench --only failover` prints it, docs/benchmarks.md
//! records it, a smoke test runs it tiny.

use std::time::{Duration, Instant};

use crate::bench::Latencies;
use crate::ha_fleet::{HaFleet, HaSpec};

pub struct Failover {
    pub agents: usize,
    /// Kill → a standby leads and answers.
    pub leader: Latencies,
    /// Kill → every agent's attestation accepted by the new leader and
    /// every directive stream open on it.
    pub streams: Latencies,
    pub leader_ttl_s: u64,
}

/// `kills` failovers of a fleet of `agents` real agents.
pub async fn failover(agents: usize, kills: usize, leader_ttl_s: u64) -> anyhow::Result<Failover> {
    let hosts: Vec<String> = (1..=agents).map(|i| format!("smars-{i:03}")).collect();
    let mut fleet = HaFleet::start(HaSpec {
        controllers: 3,
        hosts: hosts.clone(),
        freshness_ttl: Duration::from_secs(60),
        leader_ttl_s,
        sled_first: false,
    })
    .await?;
    let mut running = Vec::new();
    for h in &hosts {
        running.push(fleet.start_agent(h).await?);
    }
    fleet
        .wait_hosts("every agent reported", Duration::from_secs(300), |hs| {
            hs.iter().filter(|s| s.last_seq > 0).count() == agents
        })
        .await?;
    let (mut leader, _) = fleet.wait_leader(None, Duration::from_secs(30)).await?;
    let mut to_leader = Vec::new();
    let mut to_streams = Vec::new();
    for _ in 0..kills {
        wait_streams(&fleet, leader, agents, Duration::from_secs(120)).await?;
        let killed_at = Instant::now();
        let killed_at_ms = lockstep_proto::now_unix_ms();
        fleet.kill_controller(leader);
        let (next, _) = fleet.wait_leader(Some(leader), Duration::from_secs(60)).await?;
        to_leader.push(killed_at.elapsed());
        fleet
            .wait_hosts(
                "every agent accepted by the new leader",
                Duration::from_secs(60),
                |hs| hs.iter().filter(|s| s.last_received_at_unix_ms > killed_at_ms).count() == agents,
            )
            .await?;
        wait_streams(&fleet, next, agents, Duration::from_secs(60)).await?;
        to_streams.push(killed_at.elapsed());
        fleet.start_controller(leader)?;
        leader = next;
    }
    drop(running);
    Ok(Failover {
        agents,
        leader: Latencies::new(to_leader),
        streams: Latencies::new(to_streams),
        leader_ttl_s,
    })
}

/// Until controller `i` holds `agents` directive streams.
async fn wait_streams(fleet: &HaFleet, i: usize, agents: usize, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while fleet.gauge(i, "lockstep_connected_agents").await != Some(agents as i64) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "controller {i} never held {agents} directive streams (has {:?})",
            fleet.gauge(i, "lockstep_connected_agents").await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
