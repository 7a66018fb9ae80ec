//! Crash safety with real processes and `kill -9` (issue 8, part 1): what
//! the controller acknowledged survives its death, the audit chain still
//! verifies, gates are decided again from the store, agents come back by
//! themselves; an agent killed at any point never reuses a sequence number.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockstep_proto::pb::{self, GateState};
use lockstep_tests::fleet::process::{ProcFleet, ProcSpec, agent_client, entries, report};
use tokio::sync::watch;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_killed_under_load_keeps_every_acknowledged_attestation() {
    let sims: Vec<String> = (1..=120).map(|i| format!("smars-{i:03}")).collect();
    let reals = vec!["real-1".to_string(), "real-2".to_string()];
    let all: Vec<String> = sims.iter().chain(&reals).cloned().collect();
    let mut fleet = ProcFleet::start(ProcSpec::smars(all.clone())).await.unwrap();
    let configs = fleet.enroll(&all, 16).await.unwrap();

    // Two real agents; release 1 is what they run.
    for r in &reals {
        fleet.write_tree(r, "build 1").unwrap();
    }
    let _agents: Vec<_> = reals.iter().map(|r| fleet.start_agent(r).unwrap()).collect();
    fleet
        .wait_hosts("both real agents reporting", |h| {
            h.iter()
                .filter(|s| s.host.starts_with("real-") && s.last_seq > 0)
                .count()
                == 2
        })
        .await
        .unwrap();
    fleet.release_from_host("real-1").await.unwrap();
    for r in &reals {
        fleet.wait_local(r, 0).await.unwrap();
    }
    let release_set = fleet
        .console(&fleet.alice)
        .unwrap()
        .get_host(pb::GetHostRequest {
            host: "real-1".into(),
            include_entries: true,
        })
        .await
        .unwrap()
        .into_inner()
        .entries;

    // 120 simulated agents report as fast as they are answered: the even
    // ones the release, the odd ones another build. Each remembers the
    // highest seq the controller acknowledged.
    let acked: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut load = tokio::task::JoinSet::new();
    for (i, cfg) in configs.into_iter().take(sims.len()).enumerate() {
        let set = if i % 2 == 0 {
            release_set.clone()
        } else {
            entries("build 0")
        };
        let (acked, mut stop) = (acked.clone(), stop_rx.clone());
        load.spawn(async move {
            let signer = lockstep_agent::state::attestation_key(&cfg.state_dir).unwrap();
            let mut client = agent_client(&cfg).unwrap();
            let mut full = true;
            for seq in 1.. {
                if *stop.borrow_and_update() {
                    return;
                }
                let sent = client.submit(signer.seal_attestation(&report(&cfg.host, seq, &set, full)));
                match tokio::time::timeout(Duration::from_secs(5), sent).await {
                    Ok(Ok(reply)) if reply.get_ref().accepted => {
                        acked.lock().unwrap().insert(cfg.host.clone(), seq);
                        full = false;
                    }
                    Ok(Ok(_)) => full = true, // the controller asks for the entries
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }
    // Every simulated host acknowledged, and enough load in flight to mean
    // something when the controller dies (a count, not a fixed wait).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (hosts, total) = {
            let a = acked.lock().unwrap();
            (a.len(), a.values().sum::<u64>())
        };
        if hosts == sims.len() && total > 1_000 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the load never got going: {hosts} hosts, {total} acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let real_seq_before: HashMap<String, u64> = fleet
        .hosts()
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.host, s.last_seq))
        .collect();

    fleet.kill_controller().unwrap();
    stop_tx.send_replace(true);
    while load.join_next().await.is_some() {}
    let acked = acked.lock().unwrap().clone();
    let total: u64 = acked.values().sum();
    eprintln!(
        "kill -9 after {total} acknowledged attestations from {} simulated hosts",
        acked.len()
    );
    assert!(
        total > 500,
        "the load was too light to mean anything: {total} acknowledged"
    );

    // Restarted on the same data.
    fleet.start_controller().await.unwrap();
    let hosts = fleet.hosts().await.unwrap();
    let by_host: HashMap<&str, &pb::HostStatus> = hosts.iter().map(|s| (s.host.as_str(), s)).collect();
    for (host, seq) in &acked {
        let stored = by_host[host.as_str()].last_seq;
        assert!(
            stored >= *seq,
            "{host}: acknowledged seq {seq} but the store has {stored}"
        );
    }
    let (code, out) = fleet.lockstep(&fleet.alice, &["audit", "verify"]).unwrap();
    assert_eq!(code, 0, "the audit chain does not verify after kill -9: {out}");
    assert!(out.contains("audit log intact"), "{out}");

    // Gates are decided again from the store: the release's hosts OPEN,
    // the other build CLOSED and named.
    let mut console = fleet.console(&fleet.bob).unwrap();
    let g = console
        .gate_check(pb::GateCheckRequest { role: "smars".into() })
        .await
        .unwrap()
        .into_inner();
    for (i, host) in sims.iter().enumerate() {
        let gate = g.gates.iter().find(|x| &x.host == host).unwrap();
        let want = if i % 2 == 0 { GateState::Open } else { GateState::Closed };
        assert_eq!(gate.state(), want, "{host}: {:?}", gate.reasons);
    }

    // The real agents reconnect by themselves and report again.
    fleet
        .wait_hosts("the real agents back with new reports", |h| {
            reals.iter().all(|r| {
                h.iter()
                    .any(|s| &s.host == r && s.last_seq > real_seq_before[r] && s.last_rejection.is_empty())
            })
        })
        .await
        .unwrap();
    for r in &reals {
        fleet.wait_local(r, 0).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_mid_scan_or_report_never_reuses_a_sequence_number() {
    let host = "real-1".to_string();
    let fleet = ProcFleet::start(ProcSpec::smars(vec![host.clone()])).await.unwrap();
    fleet.enroll(std::slice::from_ref(&host), 1).await.unwrap();
    fleet.write_tree(&host, "build 1").unwrap();
    // A large file makes each scan take long enough to be killed inside.
    let big = fleet.dir.path().join("hosts/real-1/root/opt/smars/bin/smars-big");
    let data: Vec<u8> = (0..64u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&big, data).unwrap();
    let state = fleet.dir.path().join("hosts/real-1/state");
    let key_file = state.join("attestation.key");
    let key_before = std::fs::read(&key_file).unwrap();

    let mut agent = fleet.start_agent(&host).unwrap();
    fleet
        .wait_hosts("the first report", |h| h.iter().any(|s| s.last_seq > 0))
        .await
        .unwrap();
    // Kill at staggered points after start: during the startup scan, the
    // report, the directive stream; then again.
    for (round, delay_ms) in [30u64, 90, 150, 240, 380, 600, 900, 1300].into_iter().enumerate() {
        let before = fleet.hosts().await.unwrap()[0].last_seq;
        drop(agent); // SIGKILL
        agent = fleet.start_agent(&host).unwrap();
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        drop(agent);
        assert_eq!(
            std::fs::read(&key_file).unwrap(),
            key_before,
            "round {round}: the key changed"
        );
        agent = fleet.start_agent(&host).unwrap();
        fleet
            .wait_hosts("a new report after the restart", |h| h[0].last_seq > before)
            .await
            .unwrap();
        let status = &fleet.hosts().await.unwrap()[0];
        assert!(
            status.last_rejection.is_empty(),
            "round {round}: the controller rejected a report after a kill: {}",
            status.last_rejection
        );
    }
    drop(agent);
    // A killed agent's attestation stream breaks; that is not a refusal.
    // Refusals reach the audit log when their window closes: a marker
    // refusal (a connection that is not TLS) is recorded, then a second one
    // in a later window, so every refusal counted before the first has been
    // written (no fixed wait for the window).
    let refused_connections = || {
        let (code, out) = fleet.lockstep(&fleet.alice, &["audit", "export"]).unwrap();
        assert_eq!(code, 0, "{out}");
        out.matches("connection.refused").count()
    };
    let mut seen = refused_connections();
    for marker in 0..2 {
        let mut tcp = tokio::net::TcpStream::connect(&fleet.addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut tcp, b"not TLS\r\n\r\n")
            .await
            .unwrap();
        drop(tcp);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while refused_connections() <= seen {
            assert!(
                std::time::Instant::now() < deadline,
                "marker {marker} never reached the audit log"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        seen = refused_connections();
    }
    let (code, out) = fleet.lockstep(&fleet.alice, &["audit", "export"]).unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(
        !out.contains("request.refused"),
        "a killed agent was audited as refused: {out}"
    );
}

/// A small tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// None when this process may not mount (not root): the caller says so.
    fn mount(at: &std::path::Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Self(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the filesystem holding `dir` until a write fails with ENOSPC.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0xa5u8; 64 * 1024];
    loop {
        if let Err(e) = f.write_all(&chunk).and_then(|()| f.sync_all()) {
            assert_eq!(e.raw_os_error(), Some(28), "filling the disk: {e}");
            // Byte by byte to the last one.
            while f.write_all(&[0]).is_ok() {}
            return path;
        }
    }
}

/// A 3-host fleet whose controller keeps its store on a 16 MiB tmpfs, every
/// gate OPEN on release 1; None when tmpfs cannot be mounted (not root).
struct DiskFleet {
    fleet: ProcFleet,
    disk: Tmpfs,
    configs: Vec<lockstep_agent::config::AgentConfig>,
    _scratch: tempfile::TempDir,
}

async fn fleet_on_small_disk(store_toml: &str) -> Option<DiskFleet> {
    let scratch = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(&scratch.path().join("disk"), "16m") else {
        // Mounting needs root with CAP_SYS_ADMIN (this machine and CI have it).
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)");
        return None;
    };
    let hosts: Vec<String> = (1..=3).map(|i| format!("smars-{i}")).collect();
    let mut spec = ProcSpec::smars(hosts.clone());
    spec.data_dir = Some(disk.0.join("controller"));
    spec.extra_toml = store_toml.into();
    let fleet = ProcFleet::start(spec).await.unwrap();
    let configs = fleet.enroll(&hosts, 3).await.unwrap();
    for cfg in &configs {
        let signer = lockstep_agent::state::attestation_key(&cfg.state_dir).unwrap();
        let reply = agent_client(cfg)
            .unwrap()
            .submit(signer.seal_attestation(&report(&cfg.host, 1, &entries("build 1"), true)))
            .await
            .unwrap();
        assert!(reply.get_ref().accepted);
    }
    fleet.release_from_host("smars-1").await.unwrap();
    let df = DiskFleet {
        fleet,
        disk,
        configs,
        _scratch: scratch,
    };
    assert!(df.gates().await.gates.iter().all(|g| g.state() == GateState::Open));
    Some(df)
}

impl DiskFleet {
    async fn gates(&self) -> pb::GateCheckReply {
        self.fleet
            .console(&self.fleet.bob)
            .unwrap()
            .gate_check(pb::GateCheckRequest { role: "smars".into() })
            .await
            .unwrap()
            .into_inner()
    }

    async fn seq_of(&self, host: &str) -> u64 {
        let hosts = self.fleet.hosts().await.unwrap();
        hosts.into_iter().find(|s| s.host == host).unwrap().last_seq
    }

    /// smars-1 reports a new 2,000-entry version set (a new manifest to
    /// store) at each seq from `seq` on until one is refused: (the refusal,
    /// the seq refused).
    async fn report_until_refused(&self, mut seq: u64) -> (tonic::Status, u64) {
        let cfg = &self.configs[0];
        let signer = lockstep_agent::state::attestation_key(&cfg.state_dir).unwrap();
        let mut client = agent_client(cfg).unwrap();
        for build in 0..200 {
            let set: Vec<pb::Entry> = (0..2000)
                .map(|i| {
                    let mut e = entries(&format!("build {build}.{i}"))[0].clone();
                    e.path = format!("/opt/smars/lib/lib{i:05}.so").into_bytes();
                    e
                })
                .collect();
            let set = lockstep_proto::digest::canonicalize(set).unwrap();
            if let Err(e) = client
                .submit(signer.seal_attestation(&report(&cfg.host, seq, &set, true)))
                .await
            {
                return (e, seq);
            }
            seq += 1;
        }
        panic!("the controller kept accepting attestations on a full disk");
    }

    /// After a `kill -9` and restart: the store opens, the audit chain
    /// verifies, `acked` is still smars-1's seq, and a new report of
    /// release 1 (at `seq`) is accepted and OPEN.
    async fn restart_and_check(&mut self, acked: u64, seq: u64) {
        self.fleet.kill_controller().unwrap();
        self.fleet.start_controller().await.unwrap();
        let (code, out) = self.fleet.lockstep(&self.fleet.alice, &["audit", "verify"]).unwrap();
        assert_eq!(code, 0, "the audit chain does not verify after a full disk: {out}");
        let stored = self.seq_of("smars-1").await;
        assert!(stored >= acked, "acknowledged seq {acked}, stored {stored}");
        self.accepts_release_again(seq).await;
    }

    async fn accepts_release_again(&self, seq: u64) {
        let cfg = &self.configs[0];
        let signer = lockstep_agent::state::attestation_key(&cfg.state_dir).unwrap();
        let reply = agent_client(cfg)
            .unwrap()
            .submit(signer.seal_attestation(&report(&cfg.host, seq, &entries("build 1"), true)))
            .await
            .unwrap()
            .into_inner();
        assert!(reply.accepted);
        assert_eq!(reply.gate.unwrap().state(), GateState::Open);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_attestations_closes_the_gate_and_corrupts_nothing() {
    let Some(mut df) = fleet_on_small_disk("[store]\nmin_free_mib = 2\n").await else {
        return;
    };
    let filler = fill(&df.disk.0);
    let (refused, seq) = df.report_until_refused(2).await;
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("disk full"), "{}", refused.message());
    assert!(refused.message().contains("min_free_mib"), "{}", refused.message());
    assert!(
        df.fleet.controller_exited().is_none(),
        "the controller died on a full disk"
    );
    let g = df.gates().await;
    let gate = g.gates.iter().find(|x| x.host == "smars-1").unwrap();
    assert_eq!(gate.state(), GateState::Closed, "{:?}", gate.reasons);
    assert!(
        gate.reasons.iter().any(|r| r.text.contains("could not store")),
        "{:?}",
        gate.reasons
    );
    let acked = df.seq_of("smars-1").await;
    assert_eq!(
        acked,
        seq - 1,
        "every report before the refused one was acknowledged and counted"
    );

    // Space again: the same controller accepts reports, no restart needed.
    std::fs::remove_file(filler).unwrap();
    df.accepts_release_again(seq + 1).await;
    df.restart_and_check(seq + 1, seq + 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_stops_answering_halts_the_fleet_until_restart() {
    // No reserve: the disk fills inside the store's own write.
    let Some(mut df) = fleet_on_small_disk("[store]\nmin_free_mib = 0\nstall_timeout = \"2s\"\n").await else {
        return;
    };
    let filler = fill(&df.disk.0);
    let acked_before = df.seq_of("smars-1").await;
    let (refused, seq) = df.report_until_refused(2).await;
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        df.fleet.controller_exited().is_none(),
        "the controller died on a full disk"
    );
    // Every gate closes, whichever host tried to write.
    let g = df.gates().await;
    for gate in &g.gates {
        assert_eq!(gate.state(), GateState::Closed, "{}: {:?}", gate.host, gate.reasons);
    }
    let (code, out) = df.fleet.lockstep(&df.fleet.alice, &["halts"]).unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("store failed"), "{out}");
    let acked = df.seq_of("smars-1").await.max(acked_before);
    std::fs::remove_file(filler).unwrap();
    df.restart_and_check(acked, seq + 1).await;
}
