//! Realtime benchmarks on a loopback fleet: how long from a file write on a
//! host to the controller's verdict, and from `lockstep halt` to the gate
//! file closed on every agent. Measured, never asserted: `lockstep-bench`
//! prints them, docs/benchmarks.md records them, a smoke test runs them tiny.

use std::time::{Duration, Instant};

use super::Latencies;

use crate::fleet::FleetSpec;
use crate::knight::{BIN, Morning};

/// Writes `changes` new versions of the SMARS binary on one host of a
/// `hosts`-host fleet (rename-over, as deploy tools do) and times each from
/// the write to the controller holding the new version set and its verdict.
/// The agents wait `quiet_period` after a burst and `small_change_quiet_period`
/// after a small change (this is one).
pub async fn change_to_verdict(
    hosts: usize,
    changes: usize,
    quiet_period: Duration,
    small_change_quiet_period: Duration,
) -> anyhow::Result<Latencies> {
    let spec = FleetSpec {
        scan_interval: Duration::from_secs(300),
        freshness_ttl: Duration::from_secs(600),
        quiet_period,
        small_change_quiet_period,
        ..FleetSpec::smars(hosts)
    };
    change_to_verdict_on(spec, changes).await
}

/// [`change_to_verdict`] with every host on a software TPM of its own,
/// quoting every 2 s (30 times the default) beside its reports.
pub async fn change_to_verdict_with_tpm(hosts: usize, changes: usize) -> anyhow::Result<Latencies> {
    let spec = FleetSpec {
        scan_interval: Duration::from_secs(300),
        freshness_ttl: Duration::from_secs(600),
        tpm: true,
        controller_extra: "\n[tpm]\nquote_max_age = \"1h\"\n".into(),
        ..FleetSpec::smars(hosts)
    };
    change_to_verdict_on(spec, changes).await
}

async fn change_to_verdict_on(spec: FleetSpec, changes: usize) -> anyhow::Result<Latencies> {
    let quiet_period = spec.quiet_period;
    let m = Morning::with_spec(spec).await?;
    m.step1_release_everywhere().await?;
    let host = m.all()[0].clone();
    let one = vec![host.clone()];
    let mut samples = Vec::with_capacity(changes);
    for i in 0..changes {
        let content = format!("SMARS build {i}\n");
        let start = Instant::now();
        m.fleet.write(&one, BIN, content.as_bytes())?;
        let want = m.fleet.local_digest(&host)?;
        let deadline = start + Duration::from_secs(10);
        loop {
            let d = m.fleet.controller.queries.get_host(&host, false)?;
            if d.status.is_some_and(|s| hex::encode(s.digest) == want) {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "change {i} not seen within 10s");
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        samples.push(start.elapsed());
        // Let the watcher go quiet so each change is its own burst.
        tokio::time::sleep(quiet_period + Duration::from_millis(10)).await;
    }
    m.fleet.shutdown().await?;
    Ok(Latencies::new(samples))
}

/// Starts `agents` agents with open gates, halts the role, and times until
/// every agent's local gate (what `lockstep-agent gate check` reads) is closed.
pub async fn halt_fanout(agents: usize) -> anyhow::Result<Duration> {
    let spec = FleetSpec {
        scan_interval: Duration::from_secs(300),
        freshness_ttl: Duration::from_secs(600),
        watch_changes: false,
        // On a real fleet each host forks its own hook; here 1000 would share 2 cores.
        hooks: false,
        ..FleetSpec::smars(agents)
    };
    let m = Morning::with_spec(spec).await?;
    m.step1_release_everywhere().await?;
    let all = m.all();
    m.fleet.wait_local(&all, 0, "every local gate to open").await?;
    let start = Instant::now();
    let (code, out) = m
        .fleet
        .console(&m.alice, &["halt", "--role", "smars", "--reason", "benchmark"])
        .await?;
    anyhow::ensure!(code == 0, "halt failed: {out}");
    m.fleet.wait_local(&all, 1, "every local gate to close").await?;
    let took = start.elapsed();
    m.fleet.shutdown().await?;
    Ok(took)
}
