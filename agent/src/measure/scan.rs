//! A full scan: expand the configured watch patterns into paths, measure them
//! on the agent's CPUs, and return the canonical version set.
//!
//! A pattern without glob characters names one path, or everything below it
//! if it is a directory; a pattern with them is walked from its literal
//! prefix. `*` stays within one path component and `**` crosses them.
//! Nothing found is ever silently dropped: a missing base is a MISSING entry
//! and a directory that cannot be listed is an UNREADABLE entry.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use globset::{GlobBuilder, GlobMatcher};
use lockstep_proto::digest::{self, DigestError};
use lockstep_proto::paths;
use lockstep_proto::pb::{Entry, EntryKind};

use crate::measure::entry::{self, Fingerprint, Measured, READ_BUF_BYTES, Reading};
use crate::measure::placement::{self, CpuList, Placement};
use crate::measure::throttle::Throttle;

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("watch pattern {pattern:?} must be an absolute path")]
    NotAbsolute { pattern: String },
    #[error("watch pattern {pattern:?} is not a valid glob: {reason}")]
    BadGlob { pattern: String, reason: String },
    #[error("scan produced an invalid version set: {0}")]
    Canonical(#[from] DigestError),
}

/// One `watch` line of the config.
#[derive(Debug, Clone)]
pub struct WatchPattern {
    /// The literal leading directories (or the whole path with no glob).
    base: PathBuf,
    /// Set when the pattern has glob characters.
    matcher: Option<GlobMatcher>,
}

fn has_glob_chars(s: &str) -> bool {
    s.contains(['*', '?', '[', '{'])
}

impl WatchPattern {
    pub fn new(pattern: &str) -> Result<Self, ScanError> {
        if !pattern.starts_with('/') {
            return Err(ScanError::NotAbsolute {
                pattern: pattern.to_string(),
            });
        }
        let mut base = PathBuf::from("/");
        for c in Path::new(pattern).components() {
            match c {
                Component::Normal(part) if !has_glob_chars(&part.to_string_lossy()) => base.push(part),
                Component::Normal(_) => break,
                _ => {}
            }
        }
        let matcher = if has_glob_chars(pattern) {
            let glob = GlobBuilder::new(pattern)
                .literal_separator(true)
                .build()
                .map_err(|e| ScanError::BadGlob {
                    pattern: pattern.to_string(),
                    reason: e.to_string(),
                })?;
            Some(glob.compile_matcher())
        } else {
            None
        };
        Ok(Self { base, matcher })
    }
}

/// Everything one scan measures, compiled once from the config, and what the
/// last scan found so unchanged files are not hashed again.
#[derive(Debug)]
pub struct Scanner {
    patterns: Vec<WatchPattern>,
    /// Measure files under this directory as if it were `/` (a staged build).
    root: Option<PathBuf>,
    threads: usize,
    /// Where the workers run (`None`: wherever the caller's thread may).
    cpus: Option<CpuList>,
    /// Drop from the page cache what a scan brought in (see [`crate::measure::entry`]).
    restore_cache: bool,
    /// Regular files of the last scan: fingerprint when hashed, and the entry.
    cache: Mutex<HashMap<PathBuf, (Fingerprint, Entry)>>,
}

/// Counts from one scan, for logs and benchmarks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScanStats {
    pub entries: usize,
    /// Files whose content was read and hashed (the rest came from the cache).
    pub hashed: usize,
    pub bytes_hashed: u64,
}

impl Scanner {
    pub fn new(patterns: &[String], root: Option<PathBuf>) -> Result<Self, ScanError> {
        let patterns = patterns
            .iter()
            .map(|p| WatchPattern::new(p))
            .collect::<Result<_, _>>()?;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
        Ok(Self {
            patterns,
            root,
            threads,
            cpus: None,
            restore_cache: true,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Runs the workers on `placement`'s CPUs, as many as it allows.
    pub fn with_placement(mut self, placement: &Placement) -> Self {
        self.threads = placement.scan_threads;
        self.cpus = Some(placement.cpus.clone());
        self
    }

    /// Whether a scan drops from the page cache what it brought in (on by
    /// default; off only to measure what it saves).
    pub fn restore_page_cache(mut self, on: bool) -> Self {
        self.restore_cache = on;
        self
    }

    /// Directories to watch for changes: each pattern's base if it exists,
    /// else its nearest existing ancestor (to see the base appear), with
    /// whether to watch recursively. A file pattern watches its directory,
    /// so a rename over the file is seen.
    pub fn watch_targets(&self) -> Vec<(PathBuf, bool)> {
        let mut out: Vec<(PathBuf, bool)> = Vec::new();
        for p in &self.patterns {
            let base = self.fs_path(&p.base);
            let target = match std::fs::symlink_metadata(&base) {
                Ok(m) if m.is_dir() => (base, true),
                Ok(_) => (
                    base.parent().map_or_else(|| PathBuf::from("/"), Path::to_path_buf),
                    false,
                ),
                Err(_) => {
                    let mut dir = base.as_path();
                    while let Some(parent) = dir.parent() {
                        dir = parent;
                        if dir.is_dir() {
                            break;
                        }
                    }
                    (dir.to_path_buf(), false)
                }
            };
            if !out.contains(&target) {
                out.push(target);
            }
        }
        out.sort();
        out
    }

    fn fs_path(&self, recorded: &Path) -> PathBuf {
        match &self.root {
            Some(root) => root.join(recorded.strip_prefix("/").unwrap_or(recorded)),
            None => recorded.to_path_buf(),
        }
    }

    /// Measures everything the patterns match and returns canonical
    /// entries, re-hashing only files whose fingerprint moved.
    pub fn scan(&self) -> Result<Vec<Entry>, ScanError> {
        self.scan_with_stats(false).map(|(e, _)| e)
    }

    /// Like [`Scanner::scan`]; `full` ignores the cache and hashes everything
    /// (the periodic safety net).
    pub fn scan_with_stats(&self, full: bool) -> Result<(Vec<Entry>, ScanStats), ScanError> {
        self.scan_within(full, None)
    }

    /// Like [`Scanner::scan_with_stats`], within `budget` when one is given
    /// (market hours): fewer workers, and reads at most at its byte rate.
    pub fn scan_within(&self, full: bool, budget: Option<&Budget>) -> Result<(Vec<Entry>, ScanStats), ScanError> {
        let mut found = Vec::new();
        let mut direct = Vec::new();
        for p in &self.patterns {
            self.expand(p, &mut found, &mut direct);
        }
        found.sort();
        found.dedup();
        let previous = if full {
            HashMap::new()
        } else {
            std::mem::take(&mut *self.cache.lock().unwrap_or_else(|p| p.into_inner()))
        };
        let (mut entries, next_cache, stats) = self.measure_all(&found, &previous, full, budget);
        *self.cache.lock().unwrap_or_else(|p| p.into_inner()) = next_cache;
        entries.extend(direct);
        dedup_by_path(&mut entries);
        let entries = digest::canonicalize(entries)?;
        let stats = ScanStats {
            entries: entries.len(),
            ..stats
        };
        Ok((entries, stats))
    }

    /// Adds to `found` the recorded paths to measure; adds to `direct` entries
    /// already known (missing bases, unreadable directories).
    fn expand(&self, p: &WatchPattern, found: &mut Vec<PathBuf>, direct: &mut Vec<Entry>) {
        let base_fs = self.fs_path(&p.base);
        match std::fs::symlink_metadata(&base_fs) {
            Err(e) => {
                let kind = if e.kind() == std::io::ErrorKind::NotFound {
                    EntryKind::Missing
                } else {
                    EntryKind::Unreadable
                };
                direct.push(Entry {
                    path: paths::to_bytes(&p.base),
                    kind: kind as i32,
                    error: if kind == EntryKind::Unreadable {
                        e.to_string()
                    } else {
                        String::new()
                    },
                    ..Default::default()
                });
                return;
            }
            Ok(m) if !m.is_dir() => {
                if p.matcher.is_none() {
                    found.push(p.base.clone());
                }
                return;
            }
            Ok(_) => {}
        }
        for item in walkdir::WalkDir::new(&base_fs).follow_links(false) {
            match item {
                Ok(d) if d.file_type().is_dir() => {}
                Ok(d) => {
                    let recorded = self.recorded_path(d.path());
                    if p.matcher.as_ref().is_none_or(|m| m.is_match(&recorded)) {
                        found.push(recorded);
                    }
                }
                Err(e) => {
                    let Some(path) = e.path() else { continue };
                    // Below the pattern's base, so it may hide matches: report it.
                    let recorded = self.recorded_path(path);
                    let reason = e.io_error().map_or_else(|| e.to_string(), |io| io.to_string());
                    direct.push(Entry {
                        path: paths::to_bytes(&recorded),
                        kind: EntryKind::Unreadable as i32,
                        error: reason,
                        ..Default::default()
                    });
                }
            }
        }
    }

    fn recorded_path(&self, fs_path: &Path) -> PathBuf {
        match &self.root {
            Some(root) => Path::new("/").join(fs_path.strip_prefix(root).unwrap_or(fs_path)),
            None => fs_path.to_path_buf(),
        }
    }

    /// Measures `found` on the scan's threads, each with its own read
    /// buffer, taking unchanged regular files from `previous`. Workers of a
    /// full scan run at the lowest CPU priority.
    fn measure_all(
        &self,
        found: &[PathBuf],
        previous: &HashMap<PathBuf, (Fingerprint, Entry)>,
        full: bool,
        budget: Option<&Budget>,
    ) -> (Vec<Entry>, HashMap<PathBuf, (Fingerprint, Entry)>, ScanStats) {
        let next = AtomicUsize::new(0);
        let out = Mutex::new((Vec::with_capacity(found.len()), HashMap::new(), ScanStats::default()));
        let threads = budget.map_or(self.threads, |b| b.threads.min(self.threads));
        let threads = threads.min(found.len()).max(1);
        let reading = Reading {
            throttle: budget.map(|b| &b.throttle),
            restore_cache: self.restore_cache,
        };
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    if let Some(cpus) = &self.cpus {
                        if let Err(e) = placement::pin_current_thread(cpus) {
                            tracing::debug!(error = %e, "scan worker not pinned");
                        }
                    }
                    if full {
                        placement::lower_current_thread_priority(placement::SCAN_NICE);
                    }
                    let mut buf = vec![0u8; READ_BUF_BYTES];
                    let (mut entries, mut cache, mut stats) = (Vec::new(), Vec::new(), ScanStats::default());
                    loop {
                        if reading.throttle.is_some_and(Throttle::is_cancelled) {
                            break; // abandoned: the agent is stopping
                        }
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(recorded) = found.get(i) else { break };
                        let fs_path = self.fs_path(recorded);
                        let before = std::fs::symlink_metadata(&fs_path).ok().filter(|m| m.is_file());
                        let fp = before.as_ref().map(entry::fingerprint);
                        if let (Some(fp), Some((cached_fp, e))) = (fp, previous.get(recorded)) {
                            if fp == *cached_fp {
                                cache.push((recorded.clone(), (fp, e.clone())));
                                entries.push(e.clone());
                                continue;
                            }
                        }
                        if let Measured::Entry(e) =
                            entry::measure(&fs_path, paths::to_bytes(recorded), &mut buf, reading)
                        {
                            if e.kind() == EntryKind::File {
                                stats.hashed += 1;
                                stats.bytes_hashed += e.size;
                                if let Some(fp) = fp {
                                    cache.push((recorded.clone(), (fp, e.clone())));
                                }
                            }
                            entries.push(e);
                        }
                    }
                    if let Ok(mut all) = out.lock() {
                        all.0.append(&mut entries);
                        all.1.extend(cache);
                        all.2.hashed += stats.hashed;
                        all.2.bytes_hashed += stats.bytes_hashed;
                    }
                });
            }
        });
        out.into_inner().unwrap_or_default()
    }
}

/// What a full scan may use in market hours.
#[derive(Debug, Clone)]
pub struct Budget {
    pub threads: usize,
    pub throttle: Throttle,
}

/// Two patterns may reach the same path; it is one entry.
fn dedup_by_path(entries: &mut Vec<Entry>) {
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    entries.dedup_by(|a, b| a.path == b.path);
}

#[cfg(test)]
#[path = "scan_tests.rs"]
mod tests;
