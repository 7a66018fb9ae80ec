//! The agent at rest: the real `lockstep-agent run` process, enrolled with a
//! loopback controller, watching a small tree and heartbeating; its CPU time
//! and resident memory read from /proc over a quiet period.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::child::{Killed, binary};
use crate::fleet::FleetSpec;
use crate::knight::Morning;

pub struct IdleResult {
    /// Share of one core used while idle, in percent.
    pub cpu_percent: f64,
    pub rss_bytes: u64,
    pub watched: Duration,
}

/// (utime + stime) in clock ticks and VmRSS in bytes of process `pid`.
fn sample(pid: u32) -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are 14th and 15th overall.
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = fields.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    Ok((ticks, rss_kib * 1024))
}

fn agent_config(base: &Path, harness_config: &Path) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(harness_config)?;
    let path = base.join("agent-process.toml");
    std::fs::write(&path, format!("metrics_listen = \"off\"\n{text}"))?;
    Ok(path)
}

/// Runs one real agent process with a `heartbeat` interval, lets it settle
/// OPEN, then measures it for `quiet`.
pub async fn idle_agent(heartbeat: Duration, quiet: Duration) -> anyhow::Result<IdleResult> {
    let spec = FleetSpec {
        scan_interval: heartbeat,
        freshness_ttl: heartbeat * 3,
        hooks: false,
        without_agent: vec!["smars-01".into()],
        ..FleetSpec::smars(1)
    };
    let m = Morning::with_spec(spec).await?;
    let host = "smars-01".to_string();
    m.install_old(std::slice::from_ref(&host))?;
    m.fleet.enroll(&host).await?;
    let base = m.fleet.dir.path().join("hosts").join(&host);
    let config = agent_config(&base, &base.join("agent.toml"))?;
    let child = Command::new(binary("lockstep-agent")?)
        .args(["run", "--config"])
        .arg(&config)
        .env("LOCKSTEP_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let child = Killed(child);
    let pid = child.0.id();
    // Release 1 from what it reports, then wait until its gate is OPEN.
    m.fleet
        .wait_for("the agent's first report", |g| {
            g.gates
                .iter()
                .any(|x| x.host == host && x.state() != lockstep_proto::pb::GateState::Missing)
        })
        .await?;
    let (code, out) = m
        .fleet
        .console(
            &m.alice,
            &["release", "propose", "--role", "smars", "--from-host", &host],
        )
        .await?;
    anyhow::ensure!(code == 0, "{out}");
    let (code, out) = m.fleet.console(&m.bob, &["release", "approve", "1"]).await?;
    anyhow::ensure!(code == 0, "{out}");
    m.fleet
        .wait_for("the agent OPEN", |g| {
            g.gates
                .iter()
                .any(|x| x.host == host && x.state() == lockstep_proto::pb::GateState::Open)
        })
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (t0, _) = sample(pid)?;
    tokio::time::sleep(quiet).await;
    let (t1, rss) = sample(pid)?;
    drop(child);
    m.fleet.shutdown().await?;
    // /proc reports utime and stime in USER_HZ, 100 on Linux.
    let ticks_per_second = 100.0;
    let cpu = (t1 - t0) as f64 / ticks_per_second / quiet.as_secs_f64() * 100.0;
    Ok(IdleResult {
        cpu_percent: cpu,
        rss_bytes: rss,
        watched: quiet,
    })
}
