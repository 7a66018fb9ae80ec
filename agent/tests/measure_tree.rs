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
    cmd.arg("300"); // a hang guard: 100,000 files in a debug build under load take a while
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
    symlink("self", t.join("self")).unwrap();
    let socket = t.join("agent.sock");
    let _listening = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    // A device node needs root to make (CI runs as root).
    let device = t.join("null");
    let have_device = is_root()
        && Command::new("mknod")
            .arg(&device)
            .args(["c", "1", "3"])
            .status()
            .unwrap()
            .success();

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

    for (name, target) in [("loop-a", "loop-b"), ("loop-b", "loop-a"), ("self", "self")] {
        let l = entry(&entries, &t.join(name));
        assert_eq!(l.kind(), EntryKind::Symlink);
        assert_eq!(l.link_target, target.as_bytes());
    }
    assert_eq!(entry(&entries, &socket).kind(), EntryKind::Socket);
    if have_device {
        let dev = entry(&entries, &device);
        assert_eq!(
            dev.kind(),
            EntryKind::CharDevice,
            "a device is recorded by type, never read"
        );
        assert!(dev.sha256.is_empty());
    }
    assert_eq!(
        entries.len(),
        10 + usize::from(have_device),
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

/// A world-readable scratch dir the unprivileged `measure` can enter.
fn open_dir() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let t = d.path().join("tree");
    std::fs::create_dir(&t).unwrap();
    std::fs::set_permissions(&t, std::fs::Permissions::from_mode(0o755)).unwrap();
    (d, t)
}

#[test]
fn a_file_rewritten_while_it_is_hashed_is_never_reported_as_a_mix() {
    use std::io::{Seek, Write};
    let (_d, t) = open_dir();
    let path = t.join("smars");
    const SIZE: usize = 16 << 20;
    let a = vec![b'a'; SIZE];
    let b = vec![b'b'; SIZE];
    std::fs::write(&path, &a).unwrap();
    let sha = |data: &[u8]| hex::encode(ring::digest::digest(&ring::digest::SHA256, data));
    let (sha_a, sha_b) = (sha(&a), sha(&b));
    // Rewrite the file in place, 1 MiB at a time, A then B then A...: a
    // reader that does not check can hash half of each.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, path) = (stop.clone(), path.clone());
        std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            let mut round = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let data = if round % 2 == 0 { &b } else { &a };
                f.rewind().unwrap();
                for chunk in data.chunks(1 << 20) {
                    f.write_all(chunk).unwrap();
                }
                round += 1;
            }
            round
        })
    };
    let mut seen = Vec::new();
    for _ in 0..5 {
        let entries = measure(&format!("{}/**", t.display()));
        let e = entry(&entries, &path);
        match e.kind() {
            EntryKind::Unstable => assert!(e.sha256.is_empty(), "an unstable file carries no hash"),
            EntryKind::File => {
                let got = hex::encode(&e.sha256);
                assert!(got == sha_a || got == sha_b, "a hash of a mix of two versions: {got}");
            }
            other => panic!("unexpected kind {other:?}: {}", e.error),
        }
        seen.push(e.kind());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = writer.join().unwrap();
    assert!(rounds > 2, "the writer barely ran ({rounds} rounds)");
    eprintln!("5 measures under {rounds} rewrites: {seen:?}");
}

#[test]
fn a_sparse_file_over_4_gib_is_hashed_in_full() {
    use std::io::{Seek, SeekFrom, Write};
    let (_d, t) = open_dir();
    let path = t.join("huge.bin");
    let mut f = std::fs::File::create(&path).unwrap();
    // 4 GiB of holes, then one byte: a 32-bit size or offset would lose it.
    f.seek(SeekFrom::Start(4 << 30)).unwrap();
    f.write_all(b"x").unwrap();
    drop(f);
    let entries = measure(&format!("{}/**", t.display()));
    let e = entry(&entries, &path);
    assert_eq!(e.kind(), EntryKind::File, "{}", e.error);
    assert_eq!(e.size, (4u64 << 30) + 1);
    // (sha256sum takes ~40 s here; ring over the same bytes is the same rule.)
    let mut want = ring::digest::Context::new(&ring::digest::SHA256);
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..4096 {
        want.update(&zeros);
    }
    want.update(b"x");
    assert_eq!(e.sha256, want.finish().as_ref());
}

#[test]
fn a_directory_of_100_000_files_is_measured_entry_by_entry() {
    let (_d, t) = open_dir();
    let dir = t.join("many");
    std::fs::create_dir(&dir).unwrap();
    for i in 0..100_000u32 {
        std::fs::write(dir.join(format!("f{i:06}")), i.to_le_bytes()).unwrap();
    }
    let entries = measure(&format!("{}/**", t.display()));
    let files: Vec<&Entry> = entries.iter().filter(|e| e.kind() == EntryKind::File).collect();
    assert_eq!(files.len(), 100_000);
    let last = entry(&entries, &dir.join("f099999"));
    assert_eq!(
        last.sha256,
        ring::digest::digest(&ring::digest::SHA256, &99_999u32.to_le_bytes()).as_ref()
    );
}
