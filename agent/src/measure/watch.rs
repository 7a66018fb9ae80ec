//! Sees changes as they happen (inotify, through `notify`) and, once writes
//! have settled, asks the agent to scan. A deploy that writes 500 files
//! yields one scan, and one attestation; a single file replaced (a hotfix)
//! is reported after a much shorter pause (see [`Burst`]). The watch set
//! follows the filesystem: a watched directory deleted and re-created is
//! watched again, a base that does not exist yet is awaited from its nearest
//! existing ancestor. If the kernel runs out of inotify watches the agent
//! says so and relies on its periodic scans, never on silence.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, ModifyKind, RemoveKind};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tracing::{debug, error, warn};

use crate::measure::scan::Scanner;

/// Writes that keep coming for this long still trigger a scan: a stream of
/// changes must not postpone the attestation forever.
const MAX_SETTLE: Duration = Duration::from_secs(5);

/// A change touching at most this many paths, all written and closed, is
/// small: one file written in place, or written and renamed over (2 paths),
/// or an editor's save (a probe file, a backup, the file).
const SMALL_CHANGE_PATHS: usize = 4;

/// How long changes must pause before they are scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quiet {
    /// A burst (a deploy, or a file still open for writing) must pause this long.
    pub burst: Duration,
    /// A small change whose files are all closed needs only this pause: long
    /// enough to see a rename that follows a write, short enough that a
    /// hotfix reaches the controller within milliseconds.
    pub small_change: Duration,
}

/// The changes seen since the first of a burst, and when they count as
/// settled. Only a few distinct paths are kept: past [`SMALL_CHANGE_PATHS`]
/// the burst is large, and how large no longer matters.
#[derive(Debug)]
struct Burst {
    started: Instant,
    last: Instant,
    paths: Vec<PathBuf>,
    /// Paths written to and not yet closed: their writer may not be done.
    open_writes: Vec<PathBuf>,
    large: bool,
}

impl Burst {
    fn new(now: Instant) -> Self {
        Self {
            started: now,
            last: now,
            paths: Vec::new(),
            open_writes: Vec::new(),
            large: false,
        }
    }

    /// Takes one event in. Returns false for events that are not changes,
    /// which do not start a burst: reads (our own scans read files) extend
    /// none either; a writer closing its file ends the writes of a burst.
    fn add(&mut self, ev: &notify::Event, now: Instant) -> bool {
        match ev.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
                self.open_writes.retain(|p| !ev.paths.contains(p));
                self.last = now;
                return false;
            }
            EventKind::Access(_) => return false,
            EventKind::Modify(ModifyKind::Data(_)) => {
                for p in &ev.paths {
                    self.note_open(p);
                }
            }
            EventKind::Remove(RemoveKind::File | RemoveKind::Any) => {
                self.open_writes.retain(|p| !ev.paths.contains(p));
            }
            _ => {}
        }
        self.last = now;
        for p in &ev.paths {
            self.note_path(p);
        }
        true
    }

    fn note_path(&mut self, p: &Path) {
        if self.large || self.paths.iter().any(|q| q == p) {
            return;
        }
        if self.paths.len() == SMALL_CHANGE_PATHS {
            self.large = true;
            self.paths.clear();
        } else {
            self.paths.push(p.to_path_buf());
        }
    }

    fn note_open(&mut self, p: &Path) {
        // A writer to more paths than a small change has makes the burst large anyway.
        if self.open_writes.len() <= SMALL_CHANGE_PATHS && !self.open_writes.iter().any(|q| q == p) {
            self.open_writes.push(p.to_path_buf());
        }
    }

    /// How long the burst must pause, as it stands.
    fn pause(&self, quiet: Quiet) -> Duration {
        if self.large || !self.open_writes.is_empty() {
            quiet.burst
        } else {
            quiet.small_change
        }
    }

    /// When the burst counts as settled if nothing more happens.
    fn settles_at(&self, quiet: Quiet) -> Instant {
        (self.last + self.pause(quiet)).min(self.started + MAX_SETTLE)
    }
}

/// A watcher on the current targets, feeding `tx`.
fn build(
    targets: &[(PathBuf, bool)],
    tx: mpsc::UnboundedSender<notify::Event>,
) -> Result<notify::RecommendedWatcher, notify::Error> {
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res {
            let _ = tx.send(event);
        }
    })?;
    for (path, recursive) in targets {
        let mode = if *recursive {
            RecursiveMode::Recursive
        } else {
            RecursiveMode::NonRecursive
        };
        watcher.watch(path, mode)?;
    }
    Ok(watcher)
}

/// Builds a watcher on what exists now. Targets are re-read after the watch
/// is in place: a directory created in between produced no event and would
/// otherwise go unwatched.
fn establish(
    scanner: &Scanner,
    tx: &mpsc::UnboundedSender<notify::Event>,
) -> Result<(Vec<(PathBuf, bool)>, notify::RecommendedWatcher), notify::Error> {
    let mut targets = scanner.watch_targets();
    loop {
        let watcher = build(&targets, tx.clone())?;
        let now = scanner.watch_targets();
        if now == targets {
            debug!(?targets, "watching");
            return Ok((targets, watcher));
        }
        targets = now;
    }
}

/// Watches until `shutdown`, notifying `changed` after each settled burst.
/// Returns early (after logging why) if watching is impossible; the agent's
/// periodic scans go on regardless.
pub async fn watch_changes(
    scanner: Arc<Scanner>,
    quiet: Quiet,
    scan_interval: Duration,
    changed: Arc<Notify>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let (tx, mut rx) = mpsc::unbounded_channel::<notify::Event>();
    let (mut targets, mut watcher) = match establish(&scanner, &tx) {
        Ok(w) => w,
        Err(e) => return degrade(&e, scan_interval),
    };
    // Whatever changed before the watch was live produced no event.
    changed.notify_one();
    loop {
        // Wait for the first change of a burst.
        let first = tokio::select! {
            ev = rx.recv() => ev,
            () = &mut shutdown => return,
        };
        let Some(first) = first else { return };
        tracing::trace!(kind = ?first.kind, paths = ?first.paths, "change");
        let mut burst = Burst::new(Instant::now());
        if !burst.add(&first, Instant::now()) {
            continue;
        }
        // Then for the writes to settle.
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(ev) => { burst.add(&ev, Instant::now()); }
                    None => return,
                },
                () = tokio::time::sleep_until(burst.settles_at(quiet)) => break,
                () = &mut shutdown => return,
            }
        }
        debug!(after = ?burst.started.elapsed(), large = burst.large, "changes settled; scanning");
        changed.notify_one();
        // Directories may have come or gone: watch what exists now.
        let now = scanner.watch_targets();
        if now != targets {
            drop(watcher);
            (targets, watcher) = match establish(&scanner, &tx) {
                Ok(w) => w,
                Err(e) => return degrade(&e, scan_interval),
            };
            // Whatever changed under the new targets before they were
            // watched produced no event: scan once more to catch it.
            changed.notify_one();
        }
    }
}

fn degrade(e: &notify::Error, scan_interval: Duration) {
    if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) {
        error!(
            fallback_every = ?scan_interval,
            "out of inotify watches (raise fs.inotify.max_user_watches): changes are no longer seen as they happen; \\
             falling back to a rescan every scan_interval"
        );
    } else {
        warn!(error = %e, fallback_every = ?scan_interval, "cannot watch for changes; relying on periodic rescans");
    }
}

#[cfg(test)]
#[path = "watch_tests.rs"]
mod tests;
