use std::os::unix::fs::{PermissionsExt, symlink};

use super::*;
use crate::measure::entry::READ_BUF_BYTES;

fn scan(patterns: &[&str]) -> Vec<Entry> {
    let patterns: Vec<String> = patterns.iter().map(|s| s.to_string()).collect();
    Scanner::new(&patterns, None).unwrap().scan().unwrap()
}

fn path_of(e: &Entry) -> String {
    paths::display(&e.path)
}

#[test]
fn glob_star_stays_in_one_directory_and_double_star_crosses() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("etc/sub")).unwrap();
    std::fs::write(d.path().join("etc/a.conf"), "a").unwrap();
    std::fs::write(d.path().join("etc/sub/b.conf"), "b").unwrap();
    std::fs::write(d.path().join("etc/c.txt"), "c").unwrap();
    let base = d.path().display();
    let one = scan(&[&format!("{base}/etc/*.conf")]);
    assert_eq!(
        one.iter().map(path_of).collect::<Vec<_>>(),
        vec![format!("{base}/etc/a.conf")]
    );
    let all = scan(&[&format!("{base}/etc/**/*.conf")]);
    assert_eq!(all.len(), 2, "{:?}", all.iter().map(path_of).collect::<Vec<_>>());
}

#[test]
fn literal_directory_means_everything_below_it() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("a/b")).unwrap();
    std::fs::write(d.path().join("a/b/x"), "x").unwrap();
    std::fs::write(d.path().join("a/y"), "y").unwrap();
    assert_eq!(scan(&[&d.path().join("a").display().to_string()]).len(), 2);
}

#[test]
fn missing_literal_and_missing_glob_base_are_entries() {
    let d = tempfile::tempdir().unwrap();
    let lit = d.path().join("gone.conf");
    let glob = format!("{}/nodir/**", d.path().display());
    let got = scan(&[&lit.display().to_string(), &glob]);
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|e| e.kind() == EntryKind::Missing));
    assert!(got.iter().any(|e| path_of(e).ends_with("/nodir")));
}

#[test]
fn overlapping_patterns_give_one_entry_per_path() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("x"), "x").unwrap();
    let base = d.path().display();
    assert_eq!(scan(&[&format!("{base}/*"), &format!("{base}/x")]).len(), 1);
}

#[test]
fn symlinks_are_recorded_not_followed_even_in_a_loop() {
    let d = tempfile::tempdir().unwrap();
    symlink("loop-b", d.path().join("loop-a")).unwrap();
    symlink("loop-a", d.path().join("loop-b")).unwrap();
    symlink("/", d.path().join("root")).unwrap();
    let got = scan(&[&format!("{}/**", d.path().display())]);
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|e| e.kind() == EntryKind::Symlink));
    let root = got.iter().find(|e| path_of(e).ends_with("/root")).unwrap();
    assert_eq!(root.link_target, b"/");
}

#[test]
fn staged_root_records_installed_paths() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("opt/smars/bin")).unwrap();
    std::fs::write(d.path().join("opt/smars/bin/smars"), "v2").unwrap();
    let s = Scanner::new(&["/opt/smars/**".to_string()], Some(d.path().to_path_buf())).unwrap();
    let got = s.scan().unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].path, b"/opt/smars/bin/smars");
    assert_eq!(got[0].kind(), EntryKind::File);
}

#[test]
fn file_contents_and_metadata_are_measured() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("bin");
    std::fs::write(&f, "hello\n").unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o750)).unwrap();
    let got = scan(&[&f.display().to_string()]);
    assert_eq!(got[0].kind(), EntryKind::File);
    assert_eq!(
        hex::encode(&got[0].sha256),
        "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
    );
    assert_eq!(got[0].size, 6);
    assert_eq!(got[0].mode, 0o750);
}

#[test]
fn relative_and_bad_patterns_are_refused() {
    assert!(WatchPattern::new("opt/x").is_err());
    assert!(WatchPattern::new("/opt/[x").is_err());
}

#[test]
fn unchanged_files_are_not_hashed_again_and_changes_are() {
    let d = tempfile::tempdir().unwrap();
    for i in 0..5 {
        std::fs::write(d.path().join(format!("f{i}")), format!("v1 {i}")).unwrap();
    }
    let s = Scanner::new(&[format!("{}/*", d.path().display())], None).unwrap();
    let (first, stats) = s.scan_with_stats(false).unwrap();
    assert_eq!((stats.entries, stats.hashed), (5, 5));
    let (again, stats) = s.scan_with_stats(false).unwrap();
    assert_eq!(stats.hashed, 0, "nothing changed, nothing hashed");
    assert_eq!(again, first);
    std::fs::write(d.path().join("f3"), "v2 changed").unwrap();
    let (changed, stats) = s.scan_with_stats(false).unwrap();
    assert_eq!(stats.hashed, 1, "only the changed file");
    assert_ne!(changed, first);
    let (_, stats) = s.scan_with_stats(true).unwrap();
    assert_eq!(stats.hashed, 5, "a full rescan hashes everything");
}

#[test]
fn watch_targets_cover_existing_bases_files_and_missing_ones() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("opt/smars")).unwrap();
    std::fs::write(d.path().join("opt/smars.conf"), "x").unwrap();
    let base = d.path().display();
    let s = Scanner::new(
        &[
            format!("{base}/opt/smars/**"),
            format!("{base}/opt/smars.conf"),
            format!("{base}/not/yet/**"),
        ],
        None,
    )
    .unwrap();
    let t = s.watch_targets();
    assert!(t.contains(&(d.path().join("opt/smars"), true)), "{t:?}");
    assert!(t.contains(&(d.path().join("opt"), false)), "{t:?}");
    assert!(t.contains(&(d.path().to_path_buf(), false)), "{t:?}");
}

/// A full scan within a market-hours budget reads no faster than its byte
/// rate: bytes hashed against the throttle's own (virtual) clock, so the
/// check counts bytes over time and never waits.
#[test]
fn a_budgeted_scan_keeps_to_its_byte_rate() {
    use crate::measure::throttle::Pace;
    use crate::measure::throttle::virtual_pace::VirtualPace;
    let d = tempfile::tempdir().unwrap();
    for i in 0..16 {
        std::fs::write(d.path().join(format!("f{i}")), vec![i as u8; 512 << 10]).unwrap();
    }
    let pace = std::sync::Arc::new(VirtualPace::default());
    let rate = 2u64 << 20;
    let budget = Budget {
        threads: 2,
        throttle: Throttle::new(rate, READ_BUF_BYTES as u64, pace.clone()),
    };
    let scanner = Scanner::new(&[d.path().display().to_string()], None).unwrap();
    let (entries, stats) = scanner.scan_within(true, Some(&budget)).unwrap();
    assert_eq!((entries.len(), stats.bytes_hashed), (16, 8 << 20));
    // 8 MiB at 2 MiB/s, less the first burst (1 MiB): at least 3.5 s.
    let took = pace.now().as_secs_f64();
    let floor = (stats.bytes_hashed - READ_BUF_BYTES as u64) as f64 / rate as f64;
    assert!(
        took >= floor - 1e-6,
        "{} bytes in {took} s of the throttle's clock",
        stats.bytes_hashed
    );
    assert!(budget.throttle.waited() > std::time::Duration::ZERO);
    // Unbudgeted, the same tree does not touch the throttle's clock.
    let before = pace.now();
    scanner.scan_with_stats(true).unwrap();
    assert_eq!(pace.now(), before);
}
