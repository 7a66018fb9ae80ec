//! The agent on a trading host: every thread of a real `lockstep-agent run`
//! process stays on the CPUs of `[resources] cpus` (read back from
//! /proc/PID/task/*/status), and in market hours a periodic full rescan
//! waits while a watched change is still attested at once.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lockstep_proto::identity::OperatorRole;
use lockstep_tests::fleet::process::{ProcFleet, ProcSpec};
use lockstep_tests::fleet::{Fleet, FleetSpec};

/// Cpus_allowed_list of every thread of `pid`, by thread id.
fn thread_cpus(pid: u32) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue; // the thread ended between listing and reading
        };
        if let Some(line) = status.lines().find(|l| l.starts_with("Cpus_allowed_list:")) {
            let cpus = line.split_whitespace().nth(1).unwrap_or_default().to_string();
            out.insert(task.file_name().to_string_lossy().into_owned(), cpus);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_agent_thread_runs_on_the_configured_cpus() {
    let host = "real-1".to_string();
    let fleet = ProcFleet::start(ProcSpec::smars(vec![host.clone()])).await.unwrap();
    fleet.enroll(std::slice::from_ref(&host), 1).await.unwrap();
    fleet.write_tree(&host, "build 1").unwrap();
    // Enough to hash that full scans (every second here) have workers alive.
    let bin = fleet.dir.path().join("hosts/real-1/root/opt/smars/lib");
    std::fs::create_dir_all(&bin).unwrap();
    for i in 0..64 {
        std::fs::write(bin.join(format!("lib{i}.so")), vec![i as u8; 512 << 10]).unwrap();
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let want = (cpus - 1).to_string(); // the last CPU alone
    let config = fleet.dir.path().join("hosts/real-1/agent.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace(
        "metrics_listen = \"off\"\n",
        "metrics_listen = \"off\"\nfull_rescan_interval = \"1s\"\n",
    );
    std::fs::write(&config, format!("{text}\n[resources]\ncpus = \"{want}\"\n")).unwrap();

    let agent = fleet.start_agent(&host).unwrap();
    let pid = agent.0.id();
    fleet
        .wait_hosts("the agent reporting", |h| {
            h.iter().any(|s| s.host == "real-1" && s.last_seq > 0)
        })
        .await
        .unwrap();
    // Sample every thread for a few full scans.
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        seen.extend(thread_cpus(pid));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(seen.len() >= 3, "too few agent threads seen: {seen:?}");
    let stray: Vec<_> = seen.iter().filter(|(_, c)| **c != want).collect();
    assert!(
        stray.is_empty(),
        "threads off CPU {want}: {stray:?} (of {})",
        seen.len()
    );
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_market_hours_the_full_rescan_waits_and_a_watched_change_does_not() {
    let mut spec = FleetSpec::smars(2);
    spec.without_agent = vec!["smars-02".into()];
    // Market hours all week long, and a full rescan due every 100 ms.
    spec.agent_extra = "full_rescan_interval = \"100ms\"\n".into();
    spec.agent_tables =
        "[market_hours]\ntime_zone = \"UTC\"\nwindows = [\"Mon-Sun 00:00-24:00\"]\nscan_max_bytes_per_sec = \"128KiB\"\n"
            .into();
    let fleet = Fleet::start(spec).await.unwrap();
    let hosts = vec!["smars-01".to_string()];
    fleet.write(&hosts, "/opt/smars/bin/smars", b"build 1").unwrap();
    fleet.settle(&hosts).await.unwrap();
    let metrics = fleet.host("smars-01").unwrap().metrics.clone().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !metrics.render().contains("lockstep_agent_full_scans_deferred_total 1") {
        assert!(Instant::now() < deadline, "no rescan deferred:\n{}", metrics.render());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A watched change still reaches the controller at once (within the
    // settle deadline), while the periodic full rescan stays deferred.
    let before = fleet.local_digest("smars-01").unwrap();
    fleet.write(&hosts, "/opt/smars/bin/smars", b"build 2").unwrap();
    fleet.settle(&hosts).await.unwrap();
    assert_ne!(fleet.local_digest("smars-01").unwrap(), before);
    let text = metrics.render();
    assert!(
        text.contains("lockstep_agent_full_scans_total{budget=\"open\",cause=\"first\"} 1"),
        "the first scan is the only full one (not budgeted: the host cannot attest without it):\n{text}"
    );
    assert!(
        !text.contains("cause=\"periodic\""),
        "a periodic full rescan ran in market hours:\n{text}"
    );

    // An operator asks for one: it runs now, within the budget (2 MiB at
    // 128 KiB/s less a 1 MiB burst: ~8 s), beside the heartbeats, and is audited.
    fleet
        .write(&hosts, "/opt/smars/lib/big.so", &vec![7u8; 2 << 20])
        .unwrap();
    fleet.settle(&hosts).await.unwrap();
    let alice = fleet.operator("alice", OperatorRole::Operator).unwrap();
    let (code, out) = fleet
        .console(&alice, &["scan", "--host", "smars-01", "--reason", "pre-open check"])
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("full scan 1 asked of smars-01"), "{out}");
    let want = "lockstep_agent_full_scans_total{budget=\"budgeted\",cause=\"requested\"} 1";
    // While it hashes, a watched change is still attested.
    fleet.write(&hosts, "/opt/smars/bin/smars", b"build 3").unwrap();
    fleet.settle(&hosts).await.unwrap();
    assert!(
        !metrics.render().contains(want),
        "the change waited for the requested full scan:\n{}",
        metrics.render()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !metrics.render().contains(want) {
        assert!(
            Instant::now() < deadline,
            "the requested scan did not run:\n{}",
            metrics.render()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fleet.wait_audit("scan.requested", "pre-open check").await.unwrap();
    // A host whose agent is not connected is refused, not queued; a viewer may not ask.
    let refused = fleet.console(&alice, &["scan", "--host", "smars-02"]).await;
    let e = refused.err().map(|e| format!("{e:#}")).unwrap_or_default();
    assert!(e.contains("smars-02's agent is not connected"), "{e}");
    let viewer = fleet.operator("vera", OperatorRole::Viewer).unwrap();
    let denied = fleet.console(&viewer, &["scan", "--host", "smars-01"]).await;
    let e = denied.err().map(|e| format!("{e:#}")).unwrap_or_default();
    assert!(e.to_lowercase().contains("operator"), "a viewer was not refused: {e}");
    fleet
        .wait_audit("console.denied", "RequestScan: vera has role viewer")
        .await
        .unwrap();
    fleet.shutdown().await.unwrap();
}
