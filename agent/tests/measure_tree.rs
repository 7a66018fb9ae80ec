//! `lockstep-agent measure` over a hostile tree: a FIFO, a symlink loop, an
//! unreadable file and directory, a name that is not UTF-8, an empty file.
//! The real binary runs (as `nobody` when the test runs as root, since root
//! reads any file whatever its mode) and every entry is checked against what
//! `sha256sum` and `stat` say.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use lockstep_proto::pb::{Entry, EntryKind};

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// Runs `lockstep-agent measure`, unprivileged, bounded in time.
fn measure(pattern: &str) -> Vec<Entry> {
    let bin = env!("CARGO_BIN_EXE_lockstep-agent");
    let mut cmd = Command::new("timeout");
    cmd.arg("60");
    if is_root() {
        cmd.args(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]);
    }
    let out = cmd.arg(bin).args(["measure", "--watch", pattern]).output().unwrap();
    assert!(
        out.status.success(),
        "measure failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    lockstep_proto::manifest::from_json(std::str::from_utf8(&out.stdout).unwrap()).unwrap()
}

fn tool(args: &[&OsStr]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{:?}: {}",
        args,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sha256sum(p: &Path) -> String {
    let line = tool(&[OsStr::new("sha256sum"), OsStr::new("--"), p.as_os_str()]);
    // sha256sum marks lines of escaped (odd) names with a leading backslash.
    line.trim_start_matches('\\')[..64].to_string()
}

/// (size, octal mode, uid, gid) as `stat` reports them, without following links.
fn stat(p: &Path) -> (u64, u32, u32, u32) {
    let s = tool(&[
        OsStr::new("stat"),
        OsStr::new("-c"),
        OsStr::new("%s %a %u %g"),
        OsStr::new("--"),
        p.as_os_str(),
    ]);
    let f: Vec<&str> = s.split_whitespace().collect();
    (
        f[0].parse().unwrap(),
        u32::from_str_radix(f[1], 8).unwrap(),
        f[2].parse().unwrap(),
        f[3].parse().unwrap(),
    )
}

fn entry<'a>(entries: &'a [Entry], p: &Path) -> &'a Entry {
    entries
        .iter()
        .find(|e| e.path == p.as_os_str().as_bytes())
        .unwrap_or_else(|| panic!("no entry for {}", p.display()))
}

#[test]
fn hostile_tree_is_measured_truthfully_and_the_scan_finishes() {
    let d = tempfile::tempdir().unwrap();
    // Let the unprivileged measuring process in.
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let t = d.path().join("tree");
    std::fs::create_dir(&t).unwrap();
    std::fs::set_permissions(&t, std::fs::Permissions::from_mode(0o755)).unwrap();

    let regular = t.join("smars.conf");
    std::fs::write(&regular, "flag_rlp = 1\n").unwrap();
    let empty = t.join("empty");
    std::fs::write(&empty, "").unwrap();
    let odd: PathBuf = t.join(OsStr::from_bytes(b"bin-\xff\xfe-\\n"));
    std::fs::write(&odd, b"odd name\n").unwrap();
    let secret = t.join("secret.key");
    std::fs::write(&secret, "s3cr3t").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o000)).unwrap();
    let closed_dir = t.join("closed");
    std::fs::create_dir(&closed_dir).unwrap();
    std::fs::write(closed_dir.join("hidden"), "x").unwrap();
    std::fs::set_permissions(&closed_dir, std::fs::Permissions::from_mode(0o000)).unwrap();
    let fifo = t.join("pipe");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    symlink("loop-b", t.join("loop-a")).unwrap();
    symlink("loop-a", t.join("loop-b")).unwrap();

    let entries = measure(&format!("{}/**", t.display()));

    for p in [&regular, &empty, &odd] {
        let e = entry(&entries, p);
        assert_eq!(e.kind(), EntryKind::File, "{}", p.display());
        assert_eq!(hex::encode(&e.sha256), sha256sum(p), "{}", p.display());
        assert_eq!((e.size, e.mode, e.uid, e.gid), stat(p), "{}", p.display());
    }
    assert_eq!(
        hex::encode(&entry(&entries, &empty).sha256),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );

    let s = entry(&entries, &secret);
    assert_eq!(s.kind(), EntryKind::Unreadable);
    assert!(s.error.contains("Permission denied"), "{}", s.error);
    assert!(s.sha256.is_empty());
    let c = entry(&entries, &closed_dir);
    assert_eq!(
        c.kind(),
        EntryKind::Unreadable,
        "an unlistable directory is reported, not skipped"
    );

    let f = entry(&entries, &fifo);
    assert_eq!(f.kind(), EntryKind::Fifo);
    let (_, mode, uid, gid) = stat(&fifo);
    assert_eq!((f.mode, f.uid, f.gid), (mode, uid, gid));

    for (name, target) in [("loop-a", "loop-b"), ("loop-b", "loop-a")] {
        let l = entry(&entries, &t.join(name));
        assert_eq!(l.kind(), EntryKind::Symlink);
        assert_eq!(l.link_target, target.as_bytes());
    }
    assert_eq!(
        entries.len(),
        8,
        "{:#?}",
        entries
            .iter()
            .map(|e| lockstep_proto::paths::display(&e.path))
            .collect::<Vec<_>>()
    );
}

#[test]
fn measure_writes_a_manifest_that_round_trips() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("opt/smars/bin")).unwrap();
    std::fs::write(d.path().join("opt/smars/bin/smars"), "v2").unwrap();
    let out = d.path().join("manifest.json");
    let status = Command::new(env!("CARGO_BIN_EXE_lockstep-agent"))
        .args(["measure", "--watch", "/opt/smars/**", "--root"])
        .arg(d.path())
        .arg("--output")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let entries = lockstep_proto::manifest::from_json(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(
        entries[0].path, b"/opt/smars/bin/smars",
        "recorded as installed, not as staged"
    );
}

#[test]
fn bad_config_is_a_clear_error_and_nonzero_exit() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("agent.toml");
    std::fs::write(&cfg, "host = \"smars-01\"\nrole = \"smars\"\nwatch = [\"relative\"]\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lockstep-agent"))
        .args(["measure", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("agent.toml") && err.contains("missing field"), "{err}");
}
