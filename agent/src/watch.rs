//! Sees changes as they happen (inotify, through `notify`) and, once writes
//! have settled for the quiet period, asks the agent to scan. A deploy that
//! writes 500 files yields one scan, and one attestation. The watch set
//! follows the filesystem: a watched directory deleted and re-created is
//! watched again, a base that does not exist yet is awaited from its nearest
//! existing ancestor. If the kernel runs out of inotify watches the agent
//! says so and relies on its periodic scans, never on silence.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tracing::{debug, error, warn};

use crate::scan::Scanner;

/// Writes that keep coming for this long still trigger a scan: a stream of
/// changes must not postpone the attestation forever.
const MAX_SETTLE: Duration = Duration::from_secs(5);

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
    quiet: Duration,
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
        if is_noise(&first) {
            continue;
        }
        // Then for the writes to settle.
        let started = Instant::now();
        let mut settle = Instant::now() + quiet;
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(ev) if !is_noise(&ev) => settle = (Instant::now() + quiet).min(started + MAX_SETTLE),
                    Some(_) => {}
                    None => return,
                },
                () = tokio::time::sleep_until(settle) => break,
                () = &mut shutdown => return,
            }
        }
        debug!(after = ?started.elapsed(), "changes settled; scanning");
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

/// Our own scans read files: reads are not changes.
fn is_noise(ev: &notify::Event) -> bool {
    matches!(ev.kind, EventKind::Access(_))
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
