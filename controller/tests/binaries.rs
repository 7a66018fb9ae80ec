//! The `lockstep` and `lockstep-controller` binaries as an operator runs them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

fn lockstep(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn pki_commands_make_a_ca_and_private_keys() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("pki");
    let dir_s = dir.to_str().unwrap();
    let o = lockstep(&["pki", "init", "--dir", dir_s]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = d.path().join("bob");
    let o = lockstep(&[
        "pki",
        "issue",
        "--dir",
        dir_s,
        "--out",
        out.to_str().unwrap(),
        "operator",
        "--name",
        "bob",
        "--role",
        "approver",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("operator certificate for bob (approver)"));
    let mode = std::fs::metadata(out.with_extension("key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // A second init must not destroy the CA.
    let o = lockstep(&["pki", "init", "--dir", dir_s]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("refusing to overwrite"), "{}", stderr(&o));
    // A bad role is a usage error naming the choices.
    let o = lockstep(&[
        "pki", "issue", "--dir", dir_s, "--out", "x", "operator", "--name", "eve", "--role", "root",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("use viewer, operator or approver"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn gate_check_exits_6_when_the_controller_is_unreachable() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("pki");
    let dir_s = dir.to_str().unwrap();
    assert!(lockstep(&["pki", "init", "--dir", dir_s]).status.success());
    let out = d.path().join("vic");
    assert!(
        lockstep(&[
            "pki",
            "issue",
            "--dir",
            dir_s,
            "--out",
            out.to_str().unwrap(),
            "operator",
            "--name",
            "vic",
            "--role",
            "viewer"
        ])
        .status
        .success()
    );
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let o = lockstep(&[
        "gate",
        "check",
        "--role",
        "smars",
        "--controller",
        &dead,
        "--ca",
        dir.join("ca.pem").to_str().unwrap(),
        "--cert",
        out.with_extension("pem").to_str().unwrap(),
        "--key",
        out.with_extension("key").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    assert!(stderr(&o).contains("controller unreachable"), "{}", stderr(&o));
}

#[test]
fn controller_with_a_bad_config_names_the_key_and_exits_nonzero() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("controller.toml");
    let text = include_str!("fixtures/controller_good.toml").replace("mode = \"consensus\"", "mode = \"vote\"");
    std::fs::write(&cfg, text).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_lockstep-controller"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("controller.toml")
            && err.contains("role[1].mode")
            && err.contains("use \"release\" or \"consensus\""),
        "{err}"
    );
}
