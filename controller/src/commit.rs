//! Group commit: concurrent changes share one flush. Each change (its store
//! writes and its audit events) joins a queue; whoever holds the commit lock
//! takes the whole queue, applies every change, chains their audit records
//! in queue order, flushes once, and tells each waiter. One fsync then
//! acknowledges many attestations, and the audit chain stays one sequence.

use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::audit::{AuditEvent, ChainHead};
use crate::config::StoreSettings;
use crate::error::ApiError;
use crate::store::{Store, StoreError};

/// The store writes of one change.
pub type Work = Box<dyn FnOnce(&dyn Store) -> Result<(), StoreError> + Send>;

struct Pending {
    events: Vec<AuditEvent>,
    work: Work,
    done: oneshot::Sender<Result<(), ApiError>>,
}

pub struct GroupCommit {
    queue: Mutex<Vec<Pending>>,
    /// End of the audit chain; held by the committing caller.
    head: tokio::sync::Mutex<ChainHead>,
    settings: StoreSettings,
    /// Set when a write stalled: the store cannot be trusted to finish
    /// anything more, so nothing more is attempted until a restart.
    failed: Mutex<Option<StoreError>>,
}

impl GroupCommit {
    pub fn new(head: ChainHead, settings: StoreSettings) -> Self {
        Self {
            queue: Mutex::new(Vec::new()),
            head: tokio::sync::Mutex::new(head),
            settings,
            failed: Mutex::new(None),
        }
    }

    /// Why the store refuses everything now, if it does.
    pub fn failed(&self) -> Option<StoreError> {
        self.failed.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Makes `work` and `events` durable together (or neither), sharing the
    /// flush with whatever else is waiting.
    pub async fn commit(&self, store: &Arc<dyn Store>, events: Vec<AuditEvent>, work: Work) -> Result<(), ApiError> {
        if let Some(e) = self.failed() {
            return Err(ApiError::Store(e));
        }
        let (tx, mut rx) = oneshot::channel();
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Pending { events, work, done: tx });
        let mut head = self.head.lock().await;
        // The previous committer may have taken ours along.
        if let Ok(result) = rx.try_recv() {
            return result;
        }
        if let Some(e) = self.failed() {
            return Err(ApiError::Store(e));
        }
        let batch = std::mem::take(&mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()));
        let (changes, waiters): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| ((p.events, p.work), p.done)).unzip();
        let store = store.clone();
        let start = head.clone();
        let min_free = self.settings.min_free_bytes;
        let task = tokio::task::spawn_blocking(move || apply(store.as_ref(), start, changes, min_free));
        let outcome = match tokio::time::timeout(self.settings.stall_timeout, task).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "storage task failed");
                let e = ApiError::Internal(format!("storage task failed before this change was written: {e}"));
                for done in waiters {
                    let _ = done.send(Err(ApiError::Internal(e.to_string())));
                }
                return rx.await.unwrap_or(Err(e));
            }
            Err(_) => {
                // The write may never return (a full disk can wedge the
                // backend): every waiter is told, and the store is failed.
                let e = StoreError::Stalled {
                    after_s: self.settings.stall_timeout.as_secs(),
                };
                tracing::error!(error = %e, "the store stopped answering; refusing every change until restart");
                *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
                for done in waiters {
                    let _ = done.send(Err(ApiError::Store(e.clone())));
                }
                return rx.await.unwrap_or(Err(ApiError::Store(e)));
            }
        };
        if let Some(next) = outcome.head {
            *head = next;
        }
        drop(head);
        for (done, result) in waiters.into_iter().zip(outcome.results) {
            let _ = done.send(result.map_err(ApiError::Store));
        }
        rx.await.unwrap_or_else(|_| {
            Err(ApiError::Internal(
                "storage task failed before this change was written".into(),
            ))
        })
    }
}

/// What became of a batch: one result per change, in order, and the new
/// chain head when the flush succeeded.
struct Outcome {
    results: Vec<Result<(), StoreError>>,
    head: Option<ChainHead>,
}

/// Checks free space, applies each change, seals the audit events of those
/// that applied, and flushes once.
fn apply(store: &dyn Store, head: ChainHead, batch: Vec<(Vec<AuditEvent>, Work)>, min_free: u64) -> Outcome {
    if let Err(e) = store.check_space(min_free) {
        return Outcome {
            results: batch.iter().map(|_| Err(e.clone())).collect(),
            head: None,
        };
    }
    let now = lockstep_proto::now_unix_ms();
    let mut results = Vec::with_capacity(batch.len());
    let mut next = head;
    let mut records = Vec::new();
    for (events, work) in batch {
        let result = work(store);
        if result.is_ok() {
            let (r, h) = crate::audit::seal(&next, events, now);
            records.extend(r);
            next = h;
        }
        results.push(result);
    }
    let flushed = records
        .iter()
        .try_for_each(|r| store.put_audit(r))
        .and_then(|()| store.flush());
    match flushed {
        Ok(()) => Outcome {
            results,
            head: Some(next),
        },
        Err(e) => Outcome {
            results: results.into_iter().map(|r| r.and(Err(e.clone()))).collect(),
            head: None,
        },
    }
}
