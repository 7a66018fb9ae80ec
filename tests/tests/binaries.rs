//! The `lockstep` and `lockstep-controller` binaries as an operator runs them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use lockstep_tests::child::binary;

fn lockstep(args: &[&str]) -> Output {
    Command::new(binary("lockstep").unwrap()).args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A fleet CA and controller certificate made with `lockstep pki` in
/// `dir/pki`, and a one-role controller config with `extra` TOML.
fn controller_config(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let pki = dir.join("pki");
    let pki_s = pki.to_str().unwrap();
    assert!(lockstep(&["pki", "init", "--dir", pki_s]).status.success());
    let out = pki.join("controller");
    let o = lockstep(&[
        "pki",
        "issue",
        "--dir",
        pki_s,
        "--out",
        out.to_str().unwrap(),
        "controller",
        "--name",
        "127.0.0.1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let cfg = dir.join("controller.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"{data}\"\n[tls]\nca = \"{pki}/ca.pem\"\ncert = \"{pki}/controller.pem\"\nkey = \"{pki}/controller.key\"\n{extra}[[role]]\nname = \"smars\"\nhosts = [\"smars-01\"]\n",
            data = dir.join("data").display(),
            pki = pki.display()
        ),
    )
    .unwrap();
    cfg
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
    let text = include_str!("../../controller/tests/fixtures/controller_good.toml")
        .replace("mode = \"consensus\"", "mode = \"vote\"");
    std::fs::write(&cfg, text).unwrap();
    let o = Command::new(binary("lockstep-controller").unwrap())
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

#[test]
fn controller_tells_systemd_it_is_ready_feeds_the_watchdog_and_stops_on_sigterm() {
    use std::os::unix::net::UnixDatagram;
    let d = tempfile::tempdir().unwrap();
    let cfg = controller_config(d.path(), "[metrics]\nlisten = \"127.0.0.1:0\"\n");
    let sock_path = d.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
    // As systemd does: WATCHDOG_PID is the service's own pid (exec keeps it).
    let mut child = Command::new("sh")
        .args(["-c", "WATCHDOG_PID=$$ exec \"$0\" \"$@\""])
        .arg(binary("lockstep-controller").unwrap())
        .arg("--config")
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "200000")
        .spawn()
        .unwrap();
    // Whatever happens below, no controller is left running.
    struct KillOnDrop(u32);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = Command::new("kill").arg("-KILL").arg(self.0.to_string()).status();
        }
    }
    let _guard = KillOnDrop(child.id());
    let mut seen = String::new();
    let mut buf = [0u8; 512];
    while !(seen.contains("READY=1") && seen.contains("WATCHDOG=1")) {
        let n = sock.recv(&mut buf).expect("no notification from the controller");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        seen.push('\n');
    }
    assert!(seen.contains("STATUS=serving on 127.0.0.1:"), "{seen}");
    // systemd stops services with SIGTERM: a clean, prompt exit.
    assert!(
        Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .unwrap()
            .success()
    );
    let mut stopping = false;
    while !stopping {
        let n = sock.recv(&mut buf).expect("no STOPPING=1 after SIGTERM");
        stopping = String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1");
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn controller_refuses_a_ca_key_readable_by_others() {
    let d = tempfile::tempdir().unwrap();
    let pki = d.path().join("pki");
    let cfg = controller_config(
        d.path(),
        &format!(
            "[enrollment]\nca_key = \"{}/ca.key\"\n[metrics]\nlisten = \"off\"\n",
            pki.display()
        ),
    );
    let ca_key = pki.join("ca.key");
    std::fs::set_permissions(&ca_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = Command::new(binary("lockstep-controller").unwrap())
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "enrollment.ca_key {} is readable by group or others",
            ca_key.display()
        )) && err.contains("chmod 600"),
        "{err}"
    );
}
