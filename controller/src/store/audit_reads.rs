//! Reading the audit log without holding it: every reader goes page by
//! page ([`Store::audit_page`]), and a day is found by seq in O(log n)
//! reads (records are sealed in time order), so what a read costs depends
//! on what it asks for, not on how old the log is.

use lockstep_evidence::chain::{AuditRecord, Broken, ChainCheck};

use super::{Store, StoreError};

/// Records per page: a few hundred KB of ordinary records; a store gives
/// fewer where they are large.
pub const PAGE: usize = 512;

/// About the most a page holds in bytes: a store stops a page early here.
pub const PAGE_BYTES: usize = 4 << 20;

/// Where audit records are read from: the store alone, or the archive and
/// the store as one log (`archive::log`).
pub trait AuditSource {
    /// Records from seq `from` on, in order: at most `limit`, at least one
    /// while any is left.
    fn page(&self, from: u64, limit: usize) -> Result<Vec<AuditRecord>, StoreError>;
    fn last(&self) -> Result<Option<AuditRecord>, StoreError>;
    /// The seq of the first record sealed at or after `at_unix_ms`.
    fn first_at_or_after(&self, at_unix_ms: i64) -> Result<Option<u64>, StoreError> {
        search_sealed_at_or_after(self, at_unix_ms)
    }
}

impl<S: Store + ?Sized> AuditSource for S {
    fn page(&self, from: u64, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        self.audit_page(from, limit)
    }
    fn last(&self) -> Result<Option<AuditRecord>, StoreError> {
        self.last_audit()
    }
}

/// The log from seq `from` on, a page at a time, to its end as it is when
/// each page is read.
pub fn pages<S: AuditSource + ?Sized>(store: &S, from: u64) -> Pages<'_, S> {
    Pages {
        store,
        next: from,
        until: u64::MAX,
    }
}

/// The records with seq in `from..=until`, a page at a time.
pub fn pages_until<S: AuditSource + ?Sized>(store: &S, from: u64, until: u64) -> Pages<'_, S> {
    Pages {
        store,
        next: from,
        until,
    }
}

pub struct Pages<'a, S: ?Sized> {
    store: &'a S,
    next: u64,
    until: u64,
}

impl<S: AuditSource + ?Sized> Iterator for Pages<'_, S> {
    type Item = Result<Vec<AuditRecord>, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next > self.until {
            return None;
        }
        let wanted = usize::try_from(self.until - self.next).map_or(PAGE, |left| left.saturating_add(1).min(PAGE));
        match self.store.page(self.next, wanted) {
            Err(e) => {
                self.until = 0;
                self.next = 1;
                Some(Err(e))
            }
            Ok(mut page) => {
                page.retain(|r| r.seq <= self.until);
                let last = page.last()?.seq;
                self.next = last + 1;
                Some(Ok(page))
            }
        }
    }
}

/// Checks the log from where `check` stands to its end, one page in
/// memory at a time: `Ok(Err(..))` names the first broken record.
pub fn verify<S: AuditSource + ?Sized>(store: &S, check: &mut ChainCheck) -> Result<Result<(), Broken>, StoreError> {
    for page in pages(store, check.head().next_seq) {
        for r in &page? {
            if let Err(broken) = check.next(r) {
                return Ok(Err(broken));
            }
        }
    }
    Ok(Ok(()))
}

/// The first record at or after seq `seq`, if any.
pub fn at_or_after<S: AuditSource + ?Sized>(store: &S, seq: u64) -> Result<Option<AuditRecord>, StoreError> {
    Ok(store.page(seq, 1)?.into_iter().next())
}

/// The seq of the first record sealed at or after `at_unix_ms`.
pub fn first_sealed_at_or_after<S: AuditSource + ?Sized>(
    store: &S,
    at_unix_ms: i64,
) -> Result<Option<u64>, StoreError> {
    store.first_at_or_after(at_unix_ms)
}

/// [`first_sealed_at_or_after`] as a binary search over seq, since no
/// record is sealed earlier than the one before it.
pub fn search_sealed_at_or_after<S: AuditSource + ?Sized>(
    store: &S,
    at_unix_ms: i64,
) -> Result<Option<u64>, StoreError> {
    let (Some(first), Some(last)) = (at_or_after(store, 0)?, store.last()?) else {
        return Ok(None);
    };
    if last.at_unix_ms < at_unix_ms {
        return Ok(None);
    }
    let (mut low, mut high) = (first.seq, last.seq);
    while low < high {
        let middle = low + (high - low) / 2;
        match at_or_after(store, middle)? {
            Some(r) if r.at_unix_ms < at_unix_ms => low = r.seq + 1,
            Some(r) => high = r.seq.min(high),
            None => break,
        }
    }
    Ok(Some(low))
}

/// The records sealed from `from_unix_ms` to `until_unix_ms` (both
/// included), in order.
pub fn sealed_between<S: AuditSource + ?Sized>(
    store: &S,
    from_unix_ms: i64,
    until_unix_ms: i64,
) -> Result<Vec<AuditRecord>, StoreError> {
    let Some(first) = first_sealed_at_or_after(store, from_unix_ms)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for page in pages(store, first) {
        let page = page?;
        let ended = page.last().is_some_and(|r| r.at_unix_ms > until_unix_ms);
        out.extend(page.into_iter().take_while(|r| r.at_unix_ms <= until_unix_ms));
        if ended {
            break;
        }
    }
    Ok(out)
}

/// The last `count` records up to seq `head`, oldest first.
pub fn tail<S: AuditSource + ?Sized>(store: &S, head: u64, count: u64) -> Result<Vec<AuditRecord>, StoreError> {
    let from = head.saturating_sub(count.saturating_sub(1)).max(1);
    let mut out = Vec::new();
    for page in pages_until(store, from, head) {
        out.extend(page?);
    }
    Ok(out)
}

/// The newest `count` records about `host` up to seq `head`, newest
/// first: from the store's per-host index, one read a record, so a host's
/// history costs what it shows whatever the fleet writes between.
pub fn host_tail(store: &dyn Store, host: &str, head: u64, count: usize) -> Result<Vec<AuditRecord>, StoreError> {
    let mut out = Vec::with_capacity(count);
    for seq in store.host_audit_seqs(host, head.saturating_add(1), count)? {
        if let Some(r) = at_or_after(store, seq)?.filter(|r| r.seq == seq) {
            out.push(r);
        }
    }
    Ok(out)
}
