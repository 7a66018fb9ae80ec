//! The `lockstep` binary as an operator runs it, with no controller: the
//! PKI commands work offline and write keys 0600, a missing certificate is
//! named with the fix, and a gate check that reaches no controller exits 6
//! (unreachable: nobody can say the gate is open), never 0.
//!
//! (Being this crate's integration test also makes `cargo test --workspace`
//! build the binary, which the tests crate's fleets run.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn lockstep(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn offline_pki_a_missing_certificate_and_an_unreachable_controller() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().display().to_string();
    let (code, out) = lockstep(&["pki", "init", "--dir", &dir]);
    assert_eq!(code, 0, "{out}");
    let alice = d.path().join("alice").display().to_string();
    let (code, out) = lockstep(&[
        "pki", "issue", "--dir", &dir, "--out", &alice, "operator", "--name", "alice", "--role", "viewer",
    ]);
    assert_eq!(code, 0, "{out}");
    for key in ["ca.key", "alice.key"] {
        let mode = std::fs::metadata(d.path().join(key)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }

    let ca = d.path().join("ca.pem").display().to_string();
    let missing = d.path().join("bob.pem").display().to_string();
    let (code, out) = lockstep(&[
        "--controller",
        "127.0.0.1:9",
        "--ca",
        &ca,
        "--cert",
        &missing,
        "--key",
        &missing,
        "gate",
        "check",
        "--role",
        "smars",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&missing) && out.contains("lockstep pki issue"), "{out}");

    // Port 9 (discard) has no listener here: refused at once.
    let (cert, key) = (format!("{alice}.pem"), format!("{alice}.key"));
    let (code, out) = lockstep(&[
        "--controller",
        "127.0.0.1:9",
        "--ca",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
        "gate",
        "check",
        "--role",
        "smars",
    ]);
    assert_eq!(code, 6, "{out}");
    assert!(out.contains("unreachable") && out.contains("127.0.0.1:9"), "{out}");
}

#[test]
fn the_report_key_and_an_archive_check_answer_in_json_when_asked() {
    let d = tempfile::tempdir().unwrap();
    let (_, pkcs8) = lockstep_evidence::report::key::ReportKey::generate().unwrap();
    let path = d.path().join(lockstep_evidence::report::key::REPORT_KEY);
    std::fs::write(&path, pkcs8).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let dir = d.path().display().to_string();
    let (code, out) = lockstep(&["--output", "json", "pki", "report-key", "--data-dir", &dir]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["public_key"].as_str().unwrap().len(), 64, "{out}");
    assert_eq!(v["algorithm"], "Ed25519");

    // An archive directory with no segments is named, offline.
    let empty = d.path().join("archive");
    std::fs::create_dir_all(&empty).unwrap();
    let archive = empty.display().to_string();
    let (code, out) = lockstep(&["audit", "verify", "--archive", &archive, "--offline"]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("holds no archived audit segments"), "{out}");
}
