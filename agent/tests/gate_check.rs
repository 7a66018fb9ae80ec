//! `lockstep-agent gate check` as systemd's ExecStartPre= runs it: the exit
//! code is the whole interface.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::process::Command;
use std::time::{Duration, Instant};

use lockstep_agent::gate::gatekeeper::GateFile;

fn now_ms() -> i64 {
    lockstep_proto::now_unix_ms()
}

fn check(path: &std::path::Path, wait: Option<&str>) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lockstep-agent"));
    cmd.args(["gate", "check", "--state-file"]).arg(path);
    if let Some(w) = wait {
        cmd.args(["--wait", w]);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap(), text)
}

fn write(path: &std::path::Path, state: &str, lease_left_ms: i64, reasons: &[&str]) {
    let f = GateFile {
        host: "smars-01".into(),
        state: state.into(),
        release: 2,
        reasons: reasons.iter().map(|s| s.to_string()).collect(),
        lease_expires_unix_ms: now_ms() + lease_left_ms,
        updated_at_unix_ms: now_ms(),
        held_since_unix_ms: 0,
        epoch: 0,
    };
    std::fs::write(path, serde_json::to_vec(&f).unwrap()).unwrap();
}

#[test]
fn exit_code_is_zero_only_under_an_unexpired_open_gate() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("gate.json");
    let (code, text) = check(&p, None);
    assert_eq!(code, 3, "no state yet: {text}");
    assert!(text.contains("is lockstep-agent running?"), "{text}");

    write(&p, "OPEN", 30_000, &[]);
    let (code, text) = check(&p, None);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("gate OPEN on smars-01 (release 2)"), "{text}");

    write(&p, "OPEN", -1, &[]);
    let (code, text) = check(&p, None);
    assert_eq!(code, 1, "an expired lease is closed: {text}");

    write(&p, "CLOSED", 0, &["halted (fleet) by alice: drill"]);
    let (code, text) = check(&p, None);
    assert_eq!(code, 1);
    assert!(text.contains("halted (fleet) by alice: drill"), "{text}");
}

#[test]
fn wait_returns_as_soon_as_the_gate_opens() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("gate.json");
    write(&p, "CLOSED", 0, &["agent starting"]);
    let opener = {
        let p = p.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            write(&p, "OPEN", 30_000, &[]);
        })
    };
    let start = Instant::now();
    let (code, text) = check(&p, Some("20s"));
    opener.join().unwrap();
    assert_eq!(code, 0, "{text}");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "returned when it opened, not at the deadline"
    );
    // And a gate that stays closed gives up at the deadline with 1.
    write(&p, "CLOSED", 0, &["drift"]);
    assert_eq!(check(&p, Some("200ms")).0, 1);
}
