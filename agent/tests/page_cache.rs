//! A full scan leaves the page cache as it found it: a file that was not
//! cached is not cached after the scan (the trading process's working set
//! is not evicted for it), and a file that was cached stays cached. Checked
//! with util-linux's `fincore`, on a disk-backed directory (tmpfs pages are
//! the file itself and cannot be dropped).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::path::Path;
use std::process::Command;

use lockstep_agent::measure::scan::Scanner;

const SIZE: usize = 16 << 20;

/// Resident bytes of `path`, as fincore counts them.
fn resident(path: &Path) -> u64 {
    let out = Command::new("fincore")
        .args(["--bytes", "--noheadings", "--output", "RES"])
        .arg(path)
        .output()
        .expect("fincore (util-linux) runs");
    assert!(
        out.status.success(),
        "fincore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Writes `path` to disk and drops it from the page cache.
fn write_uncached(path: &Path) {
    let data: Vec<u8> = (0..SIZE).map(|i| (i % 253) as u8).collect();
    std::fs::write(path, data).unwrap();
    let f = std::fs::File::open(path).unwrap();
    f.sync_all().unwrap();
    rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
}

fn disk_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

#[test]
fn a_file_not_cached_before_the_scan_is_not_cached_after_it() {
    let d = disk_dir();
    let cold = d.path().join("cold.bin");
    write_uncached(&cold);
    assert!(
        resident(&cold) < (SIZE as u64) / 8,
        "the test file could not be dropped from the cache"
    );
    let scanner = Scanner::new(&[d.path().display().to_string()], None).unwrap();
    let (entries, stats) = scanner.scan_with_stats(true).unwrap();
    assert_eq!((entries.len(), stats.bytes_hashed), (1, SIZE as u64));
    assert!(
        resident(&cold) < (SIZE as u64) / 8,
        "{} of {SIZE} bytes left in the page cache by the scan",
        resident(&cold)
    );

    // Without the change, the scan leaves the whole file cached: the check
    // above can tell the two apart.
    let keeping = Scanner::new(&[d.path().display().to_string()], None)
        .unwrap()
        .restore_page_cache(false);
    keeping.scan_with_stats(true).unwrap();
    assert!(resident(&cold) > (SIZE as u64) / 2, "{}", resident(&cold));
}

#[test]
fn a_file_cached_before_the_scan_stays_cached() {
    let d = disk_dir();
    let warm = d.path().join("warm.bin");
    write_uncached(&warm);
    std::fs::read(&warm).unwrap(); // the trading process reads it
    let before = resident(&warm);
    assert!(before > (SIZE as u64) * 9 / 10, "{before}");
    let scanner = Scanner::new(&[d.path().display().to_string()], None).unwrap();
    scanner.scan_with_stats(true).unwrap();
    assert_eq!(resident(&warm), before, "the scan evicted a cached file");
}
