//! When a burst of changes counts as settled: small finished changes after
//! the short pause, deploys and unfinished writes after the long one.

use std::path::PathBuf;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, ModifyKind, RemoveKind, RenameMode};
use notify::{Event, EventKind};
use tokio::time::Instant;

use super::{Burst, MAX_SETTLE, Quiet, SMALL_CHANGE_PATHS, build};

const QUIET: Quiet = Quiet {
    burst: Duration::from_millis(50),
    small_change: Duration::from_millis(15),
};

fn ev(kind: EventKind, paths: &[&str]) -> Event {
    let mut e = Event::new(kind);
    for p in paths {
        e = e.add_path(PathBuf::from(p));
    }
    e
}

fn create(p: &str) -> Event {
    ev(EventKind::Create(CreateKind::File), &[p])
}
fn write(p: &str) -> Event {
    ev(EventKind::Modify(ModifyKind::Data(DataChange::Any)), &[p])
}
fn close(p: &str) -> Event {
    ev(EventKind::Access(AccessKind::Close(AccessMode::Write)), &[p])
}
fn rename(from: &str, to: &str) -> Event {
    ev(EventKind::Modify(ModifyKind::Name(RenameMode::Both)), &[from, to])
}

/// Feeds `events` 1 ms apart; returns the burst and the time of the last.
fn feed(events: &[Event]) -> (Burst, Instant) {
    let t0 = Instant::now();
    let mut burst = Burst::new(t0);
    let mut t = t0;
    for (i, e) in events.iter().enumerate() {
        t = t0 + Duration::from_millis(i as u64);
        burst.add(e, t);
    }
    (burst, t)
}

#[test]
fn a_file_written_closed_and_renamed_over_is_a_small_change() {
    let tmp = "/opt/smars/bin/smars.tmp";
    let bin = "/opt/smars/bin/smars";
    let (burst, last) = feed(&[create(tmp), write(tmp), write(tmp), close(tmp), rename(tmp, bin)]);
    assert_eq!(burst.settles_at(QUIET), last + QUIET.small_change);
}

#[test]
fn a_file_still_being_written_waits_for_the_burst_pause() {
    let bin = "/opt/smars/bin/smars";
    let (burst, last) = feed(&[create(bin), write(bin), write(bin)]);
    assert_eq!(burst.settles_at(QUIET), last + QUIET.burst);
    // Once its writer closes it, the short pause applies from the close.
    let (mut burst, last) = feed(&[create(bin), write(bin)]);
    let closed = last + Duration::from_millis(3);
    assert!(!burst.add(&close(bin), closed), "a close is not a change of its own");
    assert_eq!(burst.settles_at(QUIET), closed + QUIET.small_change);
}

#[test]
fn a_file_removed_while_open_no_longer_holds_the_burst() {
    let bin = "/opt/smars/bin/smars";
    let (burst, last) = feed(&[write(bin), ev(EventKind::Remove(RemoveKind::File), &[bin])]);
    assert_eq!(burst.settles_at(QUIET), last + QUIET.small_change);
}

#[test]
fn more_paths_than_a_small_change_is_a_deploy() {
    let names: Vec<String> = (0..=SMALL_CHANGE_PATHS)
        .map(|i| format!("/opt/smars/etc/{i}.conf"))
        .collect();
    let events: Vec<Event> = names.iter().flat_map(|n| [create(n), write(n), close(n)]).collect();
    let (burst, last) = feed(&events);
    assert!(burst.large);
    assert_eq!(burst.settles_at(QUIET), last + QUIET.burst);
    // One path fewer is still small.
    let (burst, last) = feed(&events[..events.len() - 3]);
    assert!(!burst.large);
    assert_eq!(burst.settles_at(QUIET), last + QUIET.small_change);
}

#[test]
fn the_same_path_changed_many_times_stays_small() {
    let conf = "/etc/smars/smars.conf";
    let events: Vec<Event> = (0..50).flat_map(|_| [write(conf), close(conf)]).collect();
    let (burst, last) = feed(&events);
    assert!(!burst.large);
    assert_eq!(burst.settles_at(QUIET), last + QUIET.small_change);
}

#[test]
fn reads_neither_start_nor_extend_a_burst() {
    let conf = "/etc/smars/smars.conf";
    let t0 = Instant::now();
    let mut burst = Burst::new(t0);
    assert!(!burst.add(&ev(EventKind::Access(AccessKind::Open(AccessMode::Read)), &[conf]), t0));
    assert!(burst.add(&write(conf), t0));
    burst.add(&close(conf), t0);
    let later = t0 + Duration::from_millis(10);
    assert!(!burst.add(&ev(EventKind::Access(AccessKind::Read), &[conf]), later));
    assert_eq!(burst.settles_at(QUIET), t0 + QUIET.small_change);
}

#[test]
fn a_stream_of_changes_is_cut_after_max_settle() {
    let bin = "/opt/smars/bin/smars";
    let t0 = Instant::now();
    let mut burst = Burst::new(t0);
    let late = t0 + MAX_SETTLE - Duration::from_millis(1);
    burst.add(&write(bin), late);
    assert_eq!(burst.settles_at(QUIET), t0 + MAX_SETTLE);
}

/// The events the kernel really sends for `act` in a watched directory, fed
/// to a burst (collected until none has come for 300 ms; no time is asserted).
async fn real_burst(act: impl FnOnce(&std::path::Path)) -> Burst {
    let dir = tempfile::tempdir().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let _watcher = build(&[(dir.path().to_path_buf(), true)], tx).unwrap();
    act(dir.path());
    let mut burst = Burst::new(Instant::now());
    let mut seen = 0;
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
        burst.add(&e, Instant::now());
        seen += 1;
    }
    assert!(seen > 0, "no events seen");
    burst
}

#[tokio::test]
async fn the_kernel_events_of_a_rename_over_deploy_make_a_small_change() {
    let burst = real_burst(|dir| {
        std::fs::write(dir.join("smars.tmp"), b"new build").unwrap();
        std::fs::rename(dir.join("smars.tmp"), dir.join("smars")).unwrap();
    })
    .await;
    assert!(!burst.large, "{burst:?}");
    assert_eq!(burst.pause(QUIET), QUIET.small_change, "{burst:?}");
}

#[tokio::test]
async fn the_kernel_events_of_a_file_left_open_for_writing_wait_for_the_burst_pause() {
    use std::io::Write;
    let mut open = None;
    let burst = real_burst(|dir| {
        let mut f = std::fs::File::create(dir.join("smars")).unwrap();
        f.write_all(b"half a build").unwrap();
        open = Some(f);
    })
    .await;
    assert_eq!(burst.pause(QUIET), QUIET.burst, "{burst:?}");
    drop(open);
}

#[tokio::test]
async fn the_kernel_events_of_a_many_file_deploy_make_a_burst() {
    let burst = real_burst(|dir| {
        for i in 0..=SMALL_CHANGE_PATHS {
            std::fs::write(dir.join(format!("{i}.conf")), b"k=v\n").unwrap();
        }
    })
    .await;
    assert!(burst.large, "{burst:?}");
    assert_eq!(burst.pause(QUIET), QUIET.burst);
}
