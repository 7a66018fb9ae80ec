//! The audit log over years: cut into segments, each closed by a signed
//! checkpoint record ([`change::SegmentClosed`]); segments older than
//! `[audit] keep_online` written to the archive directory and only then
//! dropped from the store ([`Archivist`]); and read back as one log with
//! the store ([`log::Log`]).
//!
//! Archiving a segment goes in steps, each durable before the next, and a
//! round starts by finishing whatever a crash or a failover interrupted:
//! 1. the file: written under a temporary name, fsynced, renamed, read back;
//! 2. the store: the [`ArchiveMark`] (what was archived, in which file)
//!    written and the segment's records deleted (etcd: one transaction);
//! 3. the ledger: an `audit.archived` record naming the file and its
//!    SHA-256, then the mark noted as recorded.
//!
//! A crash after 1 writes the same file again; after 2, the next round
//! writes the record. No record leaves the store before its file is on
//! disk. The SIEM forwarder is unaffected: it sends each record as it is
//! sealed, long before its segment is archived.

pub mod change;
pub mod log;

use std::sync::Arc;
use std::time::Duration;

use lockstep_evidence::action::AuditAction;
use lockstep_evidence::chain::{AuditEvent, AuditRecord, ChainCheck, ChainHead};
use lockstep_evidence::checkpoint;
use lockstep_evidence::report::key::ReportKey;
use tracing::{info, warn};

use crate::config::ControllerConfig;
use crate::error::ApiError;
use crate::ledger::Ledger;
use crate::store::audit_reads;
use crate::store::{ArchiveMark, Store, StoreError};

/// A step an archiving round can be told to stop after, so a test can
/// `kill -9` the controller exactly there (`LOCKSTEP_TEST_ARCHIVE_PAUSE`).
const PAUSE: &str = "LOCKSTEP_TEST_ARCHIVE_PAUSE";

pub struct Archivist {
    config: Arc<ControllerConfig>,
    ledger: Arc<Ledger>,
    key: Arc<ReportKey>,
    /// The oldest closed segment in the store, once found: (its first seq,
    /// when its checkpoint was sealed), so a round that finds it not yet
    /// due reads nothing.
    oldest: Arc<std::sync::Mutex<Option<(u64, i64)>>>,
}

/// What one round did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Round {
    /// The seq of the checkpoint it sealed, if it closed a segment.
    pub closed: Option<u64>,
    /// The files it archived.
    pub archived: Vec<String>,
}

impl Archivist {
    pub fn new(config: Arc<ControllerConfig>, ledger: Arc<Ledger>, key: Arc<ReportKey>) -> Self {
        Self {
            config,
            ledger,
            key,
            oldest: Arc::default(),
        }
    }

    /// Rounds until `stop`, a few a segment (at least every 30 s).
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) {
        let every = (self.config.audit.segment / 4).clamp(Duration::from_millis(250), Duration::from_secs(30));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.round().await {
                warn!(error = %e, "audit archiving: this round stopped; the next one starts where it did");
            }
        }
    }

    /// Finishes what an interrupted round left, closes the open segment if
    /// it is due, and archives every closed segment past `keep_online`.
    pub async fn round(&self) -> Result<Round, ApiError> {
        let mut round = Round::default();
        self.finish().await?;
        round.closed = self.close_if_due().await?;
        while let Some(file) = self.archive_next().await? {
            round.archived.push(file);
        }
        Ok(round)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&dyn Store, &ControllerConfig) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let (ledger, config) = (self.ledger.clone(), self.config.clone());
        tokio::task::spawn_blocking(move || work(ledger.store(), &config))
            .await
            .map_err(|e| ApiError::Internal(format!("the archiving task failed: {e}")))?
    }

    /// Step 3 of a round a crash interrupted, and the rest of a deletion.
    async fn finish(&self) -> Result<(), ApiError> {
        let Some(mark) = self
            .blocking(|store, _| store.archive_mark().map_err(ApiError::Store))
            .await?
        else {
            return Ok(());
        };
        if mark.recorded {
            // A deletion a crash cut short (sled deletes after the mark).
            let first = self
                .blocking(|store, _| audit_reads::at_or_after(store, 0).map_err(ApiError::Store))
                .await?;
            if first.is_some_and(|r| r.seq <= mark.through_seq) {
                self.blocking(move |store, _| store.drop_archived(&mark).map_err(ApiError::Store))
                    .await?;
            }
            return Ok(());
        }
        self.record_archived(mark).await
    }

    async fn record_archived(&self, mark: ArchiveMark) -> Result<(), ApiError> {
        let event = AuditEvent {
            facts: serde_json::json!({
                "file": mark.file,
                "sha256": mark.file_sha256,
                "through_seq": mark.through_seq,
                "through_hash": mark.through_hash,
            })
            .to_string(),
            ..AuditEvent::new(
                "controller",
                AuditAction::AuditArchived,
                format!(
                    "audit records up to {} archived to {} (sha256 {}) and dropped from the store",
                    mark.through_seq, mark.file, mark.file_sha256
                ),
            )
        };
        self.ledger.record(vec![event]).await?;
        let recorded = ArchiveMark { recorded: true, ..mark };
        info!(through = recorded.through_seq, file = %recorded.file, "audit segment archived");
        self.blocking(move |store, _| store.drop_archived(&recorded).map_err(ApiError::Store))
            .await
    }

    /// Seals a checkpoint when the open segment has passed its boundary
    /// (the next multiple of `[audit] segment` after its first record) or
    /// holds `segment_records`. Gives the checkpoint's seq.
    async fn close_if_due(&self) -> Result<Option<u64>, ApiError> {
        let now = self.ledger.now_unix_ms();
        let open = self
            .blocking(move |store, config| open_segment(store, config, now))
            .await?;
        let Some(first) = open else {
            return Ok(None);
        };
        let committed = self
            .ledger
            .commit(change::SegmentClosed {
                first_seq: first.seq,
                first_prev_hash: first.prev_hash,
                first_at_unix_ms: first.at_unix_ms,
                key: self.key.clone(),
            })
            .await?;
        Ok(Some(committed.audit_seq))
    }

    /// Archives the oldest closed segment still in the store, if its
    /// checkpoint is older than `keep_online`. Gives the file's name.
    async fn archive_next(&self) -> Result<Option<String>, ApiError> {
        let now = self.ledger.now_unix_ms();
        let oldest = self.oldest.clone();
        let Some((records, sha, file)) = self
            .blocking(move |store, config| write_next(store, config, now, &oldest))
            .await?
        else {
            return Ok(None);
        };
        pause_if_asked("after-fsync").await;
        let last = records
            .last()
            .ok_or_else(|| ApiError::Internal("an empty segment".into()))?;
        let mark = ArchiveMark {
            through_seq: last.seq,
            through_hash: last.hash.clone(),
            through_at_unix_ms: last.at_unix_ms,
            file: file.clone(),
            file_sha256: sha,
            recorded: false,
        };
        let dropping = mark.clone();
        self.blocking(move |store, _| store.drop_archived(&dropping).map_err(ApiError::Store))
            .await?;
        pause_if_asked("after-delete").await;
        self.record_archived(mark).await?;
        Ok(Some(file))
    }
}

/// Where a verification of the store's log starts after a restart: at the
/// last checkpoint record (the records it closes were verified before it
/// was signed, and again when archived), else where the archive ends, else
/// the first record. At most a segment's records are read back to find it.
pub fn verification_start(store: &dyn Store) -> Result<ChainCheck, StoreError> {
    let mark = store.archive_mark()?;
    let floor = mark.as_ref().map_or(0, |m| m.through_seq);
    let mut upper = store.last_audit()?.map_or(0, |r| r.seq);
    while upper > floor {
        let lower = upper.saturating_sub(audit_reads::PAGE as u64 - 1).max(floor + 1);
        let mut page = Vec::new();
        for p in audit_reads::pages_until(store, lower, upper) {
            page.extend(p?);
        }
        if let Some(r) = page.iter().rev().find(|r| AuditAction::AuditCheckpoint.is(&r.action)) {
            if checkpoint::Signed::from_record(r).is_some_and(|c| c.signature_holds()) {
                return Ok(ChainCheck::after(ChainHead {
                    next_seq: r.seq,
                    last_hash: r.prev_hash.clone(),
                    last_at_unix_ms: r.at_unix_ms,
                }));
            }
        }
        upper = lower - 1;
    }
    Ok(mark.map_or_else(ChainCheck::from_start, |m| ChainCheck::after(m.head())))
}

/// `check`, moved past what was archived since it stopped (those records
/// were verified when archived, and are no longer in the store).
pub fn past_archived(store: &dyn Store, check: ChainCheck) -> Result<ChainCheck, StoreError> {
    Ok(match store.archive_mark()? {
        Some(m) if check.head().next_seq <= m.through_seq => ChainCheck::after(m.head()),
        _ => check,
    })
}

/// Stops this task for good at `step` when the test hook asks for it.
async fn pause_if_asked(step: &str) {
    if std::env::var(PAUSE).is_ok_and(|v| v == step) {
        warn!(step, "archiving paused for a test ({PAUSE})");
        std::future::pending::<()>().await;
    }
}

/// The first record of the open segment when it is due to close.
fn open_segment(store: &dyn Store, config: &ControllerConfig, now: i64) -> Result<Option<AuditRecord>, ApiError> {
    open_segment_in(store, config, now).map_err(ApiError::Store)
}

fn open_segment_in(store: &dyn Store, config: &ControllerConfig, now: i64) -> Result<Option<AuditRecord>, StoreError> {
    let Some(last) = store.last_audit()? else {
        return Ok(None);
    };
    if AuditAction::AuditCheckpoint.is(&last.action) {
        return Ok(None);
    }
    let floor = store.archive_mark()?.map_or(0, |m| m.through_seq);
    // Back from the end to the last checkpoint: at most a segment's records.
    let mut upper = last.seq;
    let mut first = None;
    'back: while upper > floor {
        let lower = upper.saturating_sub(audit_reads::PAGE as u64 - 1).max(floor + 1);
        let mut page = Vec::new();
        for p in audit_reads::pages_until(store, lower, upper) {
            page.extend(p?);
        }
        for r in page.iter().rev() {
            if AuditAction::AuditCheckpoint.is(&r.action) {
                break 'back;
            }
            first = Some(r.clone());
        }
        if lower <= floor + 1 {
            break;
        }
        upper = lower - 1;
    }
    let Some(first) = first else {
        return Ok(None);
    };
    let length = i64::try_from(config.audit.segment.as_millis())
        .unwrap_or(i64::MAX)
        .max(1);
    let boundary = (first.at_unix_ms.div_euclid(length) + 1).saturating_mul(length);
    let count = last.seq - first.seq + 1;
    Ok((now >= boundary || count >= config.audit.segment_records).then_some(first))
}

/// Step 1: the oldest closed segment in the store, written to the archive
/// if its checkpoint is older than `keep_online`.
type Written = (Vec<AuditRecord>, String, String);

fn write_next(
    store: &dyn Store,
    config: &ControllerConfig,
    now: i64,
    oldest: &std::sync::Mutex<Option<(u64, i64)>>,
) -> Result<Option<Written>, ApiError> {
    let keep = i64::try_from(config.audit.keep_online.as_millis()).unwrap_or(i64::MAX);
    let mark = store.archive_mark().map_err(ApiError::Store)?;
    let from = mark.as_ref().map_or(1, |m| m.through_seq + 1);
    let known = *oldest.lock().unwrap_or_else(|p| p.into_inner());
    match known {
        Some((first, closed_at)) if first == from && now.saturating_sub(closed_at) < keep => return Ok(None),
        Some(_) => {}
        // Not even its first record is old enough: nothing to read yet.
        None => match audit_reads::at_or_after(store, from).map_err(ApiError::Store)? {
            Some(r) if now.saturating_sub(r.at_unix_ms) >= keep => {}
            _ => return Ok(None),
        },
    }
    let mut records = Vec::new();
    let mut closed = false;
    'pages: for page in audit_reads::pages(store, from) {
        for r in page.map_err(ApiError::Store)? {
            let is_checkpoint = AuditAction::AuditCheckpoint.is(&r.action);
            records.push(r);
            if is_checkpoint {
                closed = true;
                break 'pages;
            }
        }
    }
    let Some(closing) = records.last().filter(|_| closed) else {
        return Ok(None);
    };
    *oldest.lock().unwrap_or_else(|p| p.into_inner()) = Some((from, closing.at_unix_ms));
    if now.saturating_sub(closing.at_unix_ms) < keep {
        return Ok(None);
    }
    if let Some(m) = &mark {
        if records[0].prev_hash != m.through_hash {
            return Err(ApiError::Store(StoreError::Corrupt {
                key: format!("audit {}", records[0].seq),
                reason: format!(
                    "it does not follow the last archived record ({}); run `lockstep audit verify`",
                    m.through_seq
                ),
            }));
        }
    }
    // The archive holds only what verifies: the chain, the signed checkpoint.
    checkpoint::check_segment(&records, mark.as_ref().map(ArchiveMark::head).as_ref(), None)
        .map_err(|p| ApiError::Internal(format!("not archiving a segment that does not verify: {p}")))?;
    let (file, sha) = lockstep_evidence::archive::write(&config.audit.archive_dir, &records)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Some((records, sha, file.name())))
}
