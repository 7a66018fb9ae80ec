//! The audit log as one, wherever its records are: the archive's files up
//! to the store's [`ArchiveMark`], the store after it. Every reader of the
//! log by seq or time (`audit`, `audit export`, the pre-open report) reads
//! through this, so a day that was archived is read from its file.

use std::path::Path;
use std::sync::{Arc, Mutex};

use lockstep_evidence::archive::{self, SegmentFile};
use lockstep_evidence::chain::AuditRecord;

use crate::store::audit_reads::{self, AuditSource};
use crate::store::{ArchiveMark, Store, StoreError};

pub struct Log<'a> {
    store: &'a dyn Store,
    dir: &'a Path,
    mark: Option<ArchiveMark>,
    segments: Vec<SegmentFile>,
    /// The last segment read (reads go forward: a page at a time through one file).
    open: Mutex<Option<(u64, Arc<Vec<AuditRecord>>)>>,
}

impl<'a> Log<'a> {
    /// The log of `store`, with the archive in `dir` for what it dropped.
    pub fn open(store: &'a dyn Store, dir: &'a Path) -> Result<Self, StoreError> {
        let mark = store.archive_mark()?;
        let segments = match &mark {
            None => Vec::new(),
            Some(_) => archive::list(dir).map_err(|e| unreadable(dir, &e))?,
        };
        Ok(Self {
            store,
            dir,
            mark,
            segments,
            open: Mutex::new(None),
        })
    }

    /// Where the store's own log begins (every record before it is archived).
    pub fn mark(&self) -> Option<&ArchiveMark> {
        self.mark.as_ref()
    }

    /// The last archived seq (`None`: nothing is).
    fn archived_through(&self) -> Option<u64> {
        self.mark.as_ref().map(|m| m.through_seq)
    }

    /// The archived segment holding `seq` (or the first after it).
    fn segment(&self, seq: u64) -> Result<Arc<Vec<AuditRecord>>, StoreError> {
        let Some(file) = self.segments.iter().find(|s| s.last_seq >= seq) else {
            return Err(self.missing(seq));
        };
        if file.first_seq > seq.max(1) && self.segments.first() != Some(file) {
            return Err(self.missing(seq));
        }
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((first, records)) = open.as_ref() {
            if *first == file.first_seq {
                return Ok(records.clone());
            }
        }
        let records = Arc::new(file.read().map_err(|e| unreadable(self.dir, &e))?);
        *open = Some((file.first_seq, records.clone()));
        Ok(records)
    }

    fn missing(&self, seq: u64) -> StoreError {
        StoreError::Backend {
            path: self.dir.display().to_string(),
            reason: format!(
                "audit record {seq} was archived, but no segment file in the archive holds it; restore the archive's files there ([audit] archive_dir)"
            ),
        }
    }
}

fn unreadable(dir: &Path, e: &archive::ArchiveError) -> StoreError {
    StoreError::Backend {
        path: dir.display().to_string(),
        reason: e.to_string(),
    }
}

impl AuditSource for Log<'_> {
    fn page(&self, from: u64, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        match self.archived_through() {
            Some(through) if from <= through => {}
            _ => return self.store.audit_page(from, limit),
        }
        let records = self.segment(from)?;
        let start = records.partition_point(|r| r.seq < from);
        Ok(records[start..].iter().take(limit.max(1)).cloned().collect())
    }

    fn last(&self) -> Result<Option<AuditRecord>, StoreError> {
        match self.store.last_audit()? {
            Some(r) if Some(r.seq) > self.archived_through() => Ok(Some(r)),
            _ => match self.segments.last() {
                Some(s) => s.checkpoint_record().map(Some).map_err(|e| unreadable(self.dir, &e)),
                None => Ok(None),
            },
        }
    }

    /// Within the archive, by the checkpoint files beside the segments
    /// (one file opened, not a search through many); after it, in the store.
    fn first_at_or_after(&self, at_unix_ms: i64) -> Result<Option<u64>, StoreError> {
        let Some(mark) = &self.mark else {
            return audit_reads::search_sealed_at_or_after(self.store, at_unix_ms);
        };
        if at_unix_ms > mark.through_at_unix_ms {
            return match audit_reads::search_sealed_at_or_after(self.store, at_unix_ms)? {
                Some(seq) => Ok(Some(seq.max(mark.through_seq + 1))),
                None => Ok(None),
            };
        }
        for file in &self.segments {
            let closing = file.checkpoint_record().map_err(|e| unreadable(self.dir, &e))?;
            if closing.at_unix_ms >= at_unix_ms {
                let records = self.segment(file.first_seq)?;
                return Ok(records.iter().find(|r| r.at_unix_ms >= at_unix_ms).map(|r| r.seq));
            }
        }
        Ok(Some(mark.through_seq + 1))
    }
}
