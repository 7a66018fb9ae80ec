//! The real `lockstep-agent` binary refuses to start on unsafe or missing
//! identity files, saying which file and what to do, like ssh does.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "host = \"smars-01\"\nrole = \"smars\"\nstate_dir = \"{d}/state\"\nwatch = [\"/opt/smars/**\"]\nmetrics_listen = \"off\"\n[controller]\naddress = \"127.0.0.1:1\"\nca = \"{d}/ca.pem\"\ncert = \"{d}/agent.pem\"\nkey = \"{d}/agent.key\"\n[gate]\nstate_file = \"{d}/gate.json\"\n",
            d = dir.display()
        ),
    )
    .unwrap();
    path
}

fn run(config: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lockstep-agent"))
        .arg("run")
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_key_readable_by_others_stops_the_agent_naming_the_file_and_the_fix() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path());
    let key = d.path().join("agent.key");
    std::fs::write(&key, "not read before the mode is checked").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, err) = run(&cfg);
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!("key file {} is readable by group or others", key.display())),
        "{err}"
    );
    assert!(err.contains(&format!("chmod 600 {}", key.display())), "{err}");
}

#[test]
fn an_attestation_key_readable_by_others_stops_the_agent() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path());
    std::fs::write(d.path().join("agent.key"), "x").unwrap();
    std::fs::set_permissions(d.path().join("agent.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::create_dir_all(d.path().join("state")).unwrap();
    let att = d.path().join("state/attestation.key");
    std::fs::write(&att, "x").unwrap();
    std::fs::set_permissions(&att, std::fs::Permissions::from_mode(0o640)).unwrap();
    let (code, err) = run(&cfg);
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!("key file {} is readable by group or others", att.display())),
        "{err}"
    );
}

#[test]
fn an_agent_that_never_enrolled_says_how_to() {
    let d = tempfile::tempdir().unwrap();
    let (code, err) = run(&config(d.path()));
    assert_ne!(code, 0);
    assert!(err.contains("this host is not enrolled yet"), "{err}");
    assert!(err.contains("lockstep-agent enroll --token"), "{err}");
}
