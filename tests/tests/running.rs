//! What a host runs, not only what it has: a real child process whose binary
//! is replaced on disk (and not restarted) closes its host's gate; a retired
//! flag set in an INI file closes the gate and names the key.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command};

use lockstep_proto::identity::OperatorRole;
use lockstep_proto::pb::{GateState, ReasonKind};
use lockstep_tests::fleet::{FleetSpec, reasons_of, state_of};
use lockstep_tests::knight::{BIN, CONF, Morning};

/// Installs a copy of a real executable as the SMARS binary, mode 0755.
fn install_binary(m: &Morning, hosts: &[String], from: &str) {
    let bytes = std::fs::read(from).unwrap();
    m.fleet.write(hosts, BIN, &bytes).unwrap();
    for h in hosts {
        let p = m.fleet.host(h).unwrap().root.join(BIN.trim_start_matches('/'));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_replaced_under_a_running_process_closes_the_gate() {
    let spec = FleetSpec {
        processes: vec![("smars".into(), BIN.into())],
        ..FleetSpec::smars(2)
    };
    let m = Morning::with_spec(spec).await.unwrap();
    let all = m.all();
    m.install_old(&all).unwrap();
    install_binary(&m, &all, "/usr/bin/sleep");
    // smars-01 runs its SMARS; smars-02 has not started its own yet.
    let exe = m.fleet.host("smars-01").unwrap().root.join(BIN.trim_start_matches('/'));
    let running = Kill(Command::new(&exe).arg("600").spawn().unwrap());
    // Measure only once exec and the dynamic loader are done (libc mapped),
    // or agent and harness could each see a different half-started process.
    let pid = running.0.id();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !std::fs::read_to_string(format!("/proc/{pid}/maps")).is_ok_and(|m| m.contains("libc")) {
        assert!(std::time::Instant::now() < deadline, "child never finished loading");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    m.fleet.settle(&all).await.unwrap();
    let (code, out) = m
        .fleet
        .console(
            &m.alice,
            &["release", "propose", "--role", "smars", "--from-host", "smars-02"],
        )
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}");
    let (code, out) = m.fleet.console(&m.bob, &["release", "approve", "1"]).await.unwrap();
    assert_eq!(code, 0, "{out}");
    let g = m.fleet.gates().unwrap();
    assert_eq!(
        state_of(&g, "smars-01"),
        GateState::Open,
        "running the released image: {:?}",
        reasons_of(&g, "smars-01")
    );
    let (_, host) = m
        .fleet
        .console(&m.bob, &["host", "smars-01", "--entries"])
        .await
        .unwrap();
    assert!(host.contains("proc:smars@"), "the running image is attested: {host}");

    // The deploy replaces the file on both hosts and release 2 names it;
    // smars-01's process keeps running the old image.
    install_binary(&m, &all, "/usr/bin/tail");
    m.fleet.settle(&all).await.unwrap();
    let (code, out) = m
        .fleet
        .console(
            &m.alice,
            &["release", "propose", "--role", "smars", "--from-host", "smars-02"],
        )
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}");
    m.fleet.console(&m.bob, &["release", "approve", "2"]).await.unwrap();
    let g = m.fleet.gates().unwrap();
    assert_eq!(
        state_of(&g, "smars-02"),
        GateState::Open,
        "{:?}",
        reasons_of(&g, "smars-02")
    );
    assert_eq!(state_of(&g, "smars-01"), GateState::Closed);
    let gate = g.gates.iter().find(|x| x.host == "smars-01").unwrap();
    assert!(
        gate.reasons.iter().all(|r| r.kind() == ReasonKind::Process),
        "disk matches the release: {:?}",
        gate.reasons
    );
    // A deploy renames over the file, so the kernel shows the old image as deleted.
    let text = &gate.reasons[0].text;
    assert!(
        text.starts_with(&format!("process smars runs a replaced or deleted {BIN}, sha256")),
        "{text}"
    );
    assert!(text.contains("!= release 2"), "{text}");
    let (code, _) = m
        .fleet
        .console(&m.bob, &["gate", "check", "--role", "smars"])
        .await
        .unwrap();
    assert_eq!(code, 3, "a process reason is a drift exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_flag_in_an_ini_file_closes_the_gate_and_names_the_key() {
    let spec = FleetSpec {
        retired_flags: vec!["power_peg".into()],
        ..FleetSpec::smars(3)
    };
    let m = Morning::with_spec(spec).await.unwrap();
    m.step1_release_everywhere().await.unwrap();
    let odd = vec!["smars-03".to_string()];
    m.fleet
        .write(&odd, CONF, b"[router]\nflag_rlp = 0\nvenue = NYSE\npower_peg = 1\n")
        .unwrap();
    m.fleet.settle(&odd).await.unwrap();
    let g = m.fleet.gates().unwrap();
    assert_eq!(state_of(&g, "smars-03"), GateState::Closed);
    let reasons = reasons_of(&g, "smars-03");
    assert!(
        reasons.contains(&format!("retired flag: router.power_peg = 1 in {CONF}")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("#router.power_peg") && r.contains("not in release 1")),
        "{reasons:?}"
    );

    // Even a release taken from that host cannot bless a retired flag.
    let viewer = m.fleet.operator("vic", OperatorRole::Viewer).unwrap();
    m.fleet
        .console(
            &m.alice,
            &["release", "propose", "--role", "smars", "--from-host", "smars-03"],
        )
        .await
        .unwrap();
    m.fleet.console(&m.bob, &["release", "approve", "2"]).await.unwrap();
    let (code, out) = m
        .fleet
        .console(&viewer, &["gate", "check", "--role", "smars"])
        .await
        .unwrap();
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("smars-03 CLOSED (retired flag)"), "{out}");
}
