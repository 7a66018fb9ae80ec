//! Group commit: concurrent changes share one flush. Each change (its store
//! writes and its audit events) joins a queue; whoever holds the commit lock
//! takes the whole queue, applies every change, chains their audit records
//! in queue order, flushes once, and tells each waiter. One fsync then
//! acknowledges many attestations, and the audit chain stays one sequence.

use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::audit::{AuditEvent, ChainHead};
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
}

impl GroupCommit {
    pub fn new(head: ChainHead) -> Self {
        Self {
            queue: Mutex::new(Vec::new()),
            head: tokio::sync::Mutex::new(head),
        }
    }

    /// Makes `work` and `events` durable together (or neither), sharing the
    /// flush with whatever else is waiting.
    pub async fn commit(&self, store: &Arc<dyn Store>, events: Vec<AuditEvent>, work: Work) -> Result<(), ApiError> {
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
        let batch = std::mem::take(&mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()));
        let store = store.clone();
        let start = head.clone();
        let outcome = tokio::task::spawn_blocking(move || apply(store.as_ref(), start, batch)).await;
        match outcome {
            Ok(next) => {
                if let Some(next) = next {
                    *head = next;
                }
            }
            Err(e) => {
                // The batch's senders were dropped with the task: each waiter sees the error below.
                tracing::error!(error = %e, "storage task failed");
            }
        }
        drop(head);
        rx.await.unwrap_or_else(|_| {
            Err(ApiError::Internal(
                "storage task failed before this change was written".into(),
            ))
        })
    }
}

/// Applies each change, seals the audit events of those that applied, and
/// flushes once. Returns the new chain head when the flush succeeded.
fn apply(store: &dyn Store, head: ChainHead, batch: Vec<Pending>) -> Option<ChainHead> {
    let now = lockstep_proto::now_unix_ms();
    let mut applied = Vec::with_capacity(batch.len());
    let mut next = head;
    let mut records = Vec::new();
    for p in batch {
        match (p.work)(store) {
            Ok(()) => {
                let (r, h) = crate::audit::seal(&next, p.events, now);
                records.extend(r);
                next = h;
                applied.push(p.done);
            }
            Err(e) => {
                let _ = p.done.send(Err(ApiError::Store(e)));
            }
        }
    }
    let flushed = records
        .iter()
        .try_for_each(|r| store.put_audit(r))
        .and_then(|()| store.flush());
    match flushed {
        Ok(()) => {
            for done in applied {
                let _ = done.send(Ok(()));
            }
            Some(next)
        }
        Err(e) => {
            for done in applied {
                let _ = done.send(Err(ApiError::Store(e.clone())));
            }
            None
        }
    }
}
