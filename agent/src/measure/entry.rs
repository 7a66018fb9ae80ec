//! Measuring one path without trusting it: never follow a symlink, never open
//! a FIFO, socket or device (a FIFO would block the agent forever), hash in
//! bounded streaming reads, and never report a hash of a file that changed
//! while it was read.
//!
//! A scan also leaves the page cache as it found it: a trading process's
//! working set must not be evicted by the agent reading a 2 GiB tree. Each
//! chunk is first read with `RWF_NOWAIT`, which succeeds only from the
//! cache; from the first chunk that was not cached to the end of the file,
//! the pages are the scan's own, and are dropped (`POSIX_FADV_DONTNEED`)
//! once the file is hashed. Files that were cached stay cached.

use std::fs::{File, Metadata};
use std::io::{ErrorKind, IoSliceMut};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use lockstep_proto::pb::{Entry, EntryKind};
use ring::digest::{Context, SHA256};
use rustix::io::{Errno, ReadWriteFlags};

use crate::measure::throttle::Throttle;

/// How file content is read.
#[derive(Debug, Clone, Copy)]
pub struct Reading<'a> {
    /// The market-hours byte budget, shared by a scan's workers.
    pub throttle: Option<&'a Throttle>,
    /// Drop from the page cache what the read brought in.
    pub restore_cache: bool,
}

impl Default for Reading<'_> {
    fn default() -> Self {
        Self {
            throttle: None,
            restore_cache: true,
        }
    }
}

/// Streaming read size: bounds memory per hashing thread whatever the file size.
pub const READ_BUF_BYTES: usize = 1 << 20;

/// How many times a changing file is re-read before it is reported unstable.
const STABLE_ATTEMPTS: usize = 3;

/// What a path turned out to be.
pub enum Measured {
    Entry(Entry),
    /// A directory met during a walk: its files are entries, it is not.
    Directory,
}

/// Measures `fs_path`, recording it under `recorded` (the two differ when
/// measuring a staged build tree under a root).
pub fn measure(fs_path: &Path, recorded: Vec<u8>, buf: &mut [u8], reading: Reading<'_>) -> Measured {
    let mut entry = Entry {
        path: recorded,
        ..Default::default()
    };
    let meta = match std::fs::symlink_metadata(fs_path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            entry.kind = EntryKind::Missing as i32;
            return Measured::Entry(entry);
        }
        Err(e) => return Measured::Entry(unreadable(entry, &e)),
    };
    let ft = meta.file_type();
    if ft.is_dir() {
        return Measured::Directory;
    }
    set_owner_and_mode(&mut entry, &meta);
    let kind = if ft.is_symlink() {
        match std::fs::read_link(fs_path) {
            Ok(target) => {
                entry.link_target = lockstep_proto::paths::to_bytes(&target);
                EntryKind::Symlink
            }
            Err(e) => return Measured::Entry(unreadable(entry, &e)),
        }
    } else if ft.is_fifo() {
        EntryKind::Fifo
    } else if ft.is_socket() {
        EntryKind::Socket
    } else if ft.is_block_device() {
        EntryKind::BlockDevice
    } else if ft.is_char_device() {
        EntryKind::CharDevice
    } else {
        return Measured::Entry(hash_regular(fs_path, entry, buf, reading));
    };
    entry.kind = kind as i32;
    Measured::Entry(entry)
}

fn set_owner_and_mode(entry: &mut Entry, meta: &Metadata) {
    entry.mode = meta.mode() & 0o7777;
    entry.uid = meta.uid();
    entry.gid = meta.gid();
}

fn unreadable(mut entry: Entry, e: &std::io::Error) -> Entry {
    entry.kind = EntryKind::Unreadable as i32;
    entry.error = e.to_string();
    entry
}

/// Identity and version of a file: if any of it moves during a read, the
/// read saw a mix; if none of it moved since the last scan, the content did
/// not change (ctime moves on every write and metadata change and cannot be
/// set by a user), so the last hash still holds.
pub type Fingerprint = (u64, u64, u64, i64, i64, i64, i64);

pub fn fingerprint(m: &Metadata) -> Fingerprint {
    (
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    )
}

fn hash_regular(fs_path: &Path, mut entry: Entry, buf: &mut [u8], reading: Reading<'_>) -> Entry {
    for _ in 0..STABLE_ATTEMPTS {
        // O_NOFOLLOW: a path swapped for a symlink after lstat is not followed.
        // O_NONBLOCK: a path swapped for a FIFO after lstat does not block open.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(fs_path);
        let mut file = match file {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                entry.kind = EntryKind::Missing as i32;
                return entry;
            }
            Err(e) => return unreadable(entry, &e),
        };
        let before = match file.metadata() {
            Ok(m) => m,
            Err(e) => return unreadable(entry, &e),
        };
        if !before.file_type().is_file() {
            // Replaced between lstat and open: measure again from the top.
            continue;
        }
        let sha = match hash_file(&mut file, buf, reading) {
            Ok(h) => h,
            Err(e) => return unreadable(entry, &e),
        };
        match file.metadata() {
            Ok(after) if fingerprint(&after) == fingerprint(&before) => {
                set_owner_and_mode(&mut entry, &after);
                entry.kind = EntryKind::File as i32;
                entry.size = after.size();
                entry.sha256 = sha;
                return entry;
            }
            Ok(_) => continue,
            Err(e) => return unreadable(entry, &e),
        }
    }
    entry.kind = EntryKind::Unstable as i32;
    entry.error = format!("changed during each of {STABLE_ATTEMPTS} attempts to hash it");
    entry
}

pub fn hash_file(file: &mut File, buf: &mut [u8], reading: Reading<'_>) -> std::io::Result<Vec<u8>> {
    let mut ctx = Context::new(&SHA256);
    let mut offset = 0u64;
    // Where the pages stop being the cache's and start being the scan's.
    let mut first_miss: Option<u64> = None;
    let mut probe = reading.restore_cache;
    loop {
        let n = if probe && first_miss.is_none() {
            match rustix::io::preadv2(&*file, &mut [IoSliceMut::new(buf)], offset, ReadWriteFlags::NOWAIT) {
                Ok(n) => n,
                Err(Errno::AGAIN) => {
                    first_miss = Some(offset);
                    continue;
                }
                Err(Errno::INTR) => continue,
                Err(Errno::OPNOTSUPP | Errno::INVAL | Errno::NOSYS) => {
                    // No cache probe on this filesystem: leave its cache alone.
                    probe = false;
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            match file.read_at(buf, offset) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        offset += n as u64;
        if let Some(t) = reading.throttle {
            t.take(n as u64);
        }
    }
    if let Some(from) = first_miss {
        if let Err(e) = rustix::fs::fadvise(&*file, from, None, rustix::fs::Advice::DontNeed) {
            tracing::debug!(error = %e, "cannot drop a scanned file from the page cache");
        }
    }
    Ok(ctx.finish().as_ref().to_vec())
}
