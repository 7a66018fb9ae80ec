//! Group commit: concurrent changes share one flush. Each change (its store
//! writes and its audit events) joins a queue; whoever holds the commit lock
//! takes the whole queue, applies every change, chains their audit records
//! in queue order, flushes once, and tells each waiter. One fsync then
//! acknowledges many attestations, and the audit chain stays one sequence.
//!
//! Numbers that name what a change stores (halt ids, release numbers) are
//! allocated here too, by the batch that writes them and in queue order:
//! read-the-highest-then-write outside the commit gave two concurrent halts
//! one id, and the second overwrote the first.

use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::audit::{AuditEvent, ChainHead};
use crate::config::StoreSettings;
use crate::error::ApiError;
use crate::store::{Store, StoreError};

/// The store writes of one change.
pub type Work = Box<dyn FnOnce(&dyn Store) -> Result<(), StoreError> + Send>;

/// Builds a numbered change once its number is known: its audit events and
/// its store writes.
pub type Numbered = Box<dyn FnOnce(u64) -> (Vec<AuditEvent>, Work) + Send>;

/// A sequence of numbers allocated inside the commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    Halt,
    Release,
}

/// The next number of each [`Counter`]; advanced only by a change that is
/// written and flushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counters {
    next_halt: u64,
    next_release: u64,
}

impl Counters {
    /// One past the highest number the store holds, for each counter.
    pub fn load(store: &dyn Store) -> Result<Self, StoreError> {
        let next = |highest: Option<u64>| highest.map_or(1, |n| n.saturating_add(1));
        Ok(Self {
            next_halt: next(store.halts()?.iter().map(|h| h.id).max()),
            next_release: next(store.releases()?.iter().map(|r| r.number).max()),
        })
    }

    fn slot(&mut self, counter: Counter) -> &mut u64 {
        match counter {
            Counter::Halt => &mut self.next_halt,
            Counter::Release => &mut self.next_release,
        }
    }
}

/// What the committing batch holds: the end of the audit chain and the
/// counters, advanced together.
struct Head {
    chain: ChainHead,
    counters: Counters,
}

enum Body {
    Plain { events: Vec<AuditEvent>, work: Work },
    Numbered { counter: Counter, build: Numbered },
}

struct Pending {
    body: Body,
    /// The number allocated to the change (0 for a plain one).
    done: oneshot::Sender<Result<u64, ApiError>>,
}

pub struct GroupCommit {
    queue: Mutex<Vec<Pending>>,
    /// End of the audit chain and the counters; held by the committing batch.
    head: Arc<tokio::sync::Mutex<Head>>,
    settings: StoreSettings,
    /// Set when a write stalled: the store cannot be trusted to finish
    /// anything more, so nothing more is attempted until a restart.
    failed: Arc<Mutex<Option<StoreError>>>,
}

impl GroupCommit {
    pub fn new(chain: ChainHead, counters: Counters, settings: StoreSettings) -> Self {
        Self {
            queue: Mutex::new(Vec::new()),
            head: Arc::new(tokio::sync::Mutex::new(Head { chain, counters })),
            settings,
            failed: Arc::new(Mutex::new(None)),
        }
    }

    /// Why the store refuses everything now, if it does.
    pub fn failed(&self) -> Option<StoreError> {
        self.failed.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Makes `work` and `events` durable together (or neither), sharing the
    /// flush with whatever else is waiting.
    pub async fn commit(&self, store: &Arc<dyn Store>, events: Vec<AuditEvent>, work: Work) -> Result<(), ApiError> {
        self.enqueue(store, Body::Plain { events, work }).await.map(drop)
    }

    /// Like [`GroupCommit::commit`] for a change named by the next number of
    /// `counter`: `build` is called with that number inside the batch, and
    /// the number is returned once the change is durable.
    pub async fn commit_numbered(
        &self,
        store: &Arc<dyn Store>,
        counter: Counter,
        build: Numbered,
    ) -> Result<u64, ApiError> {
        self.enqueue(store, Body::Numbered { counter, build }).await
    }

    async fn enqueue(&self, store: &Arc<dyn Store>, body: Body) -> Result<u64, ApiError> {
        if let Some(e) = self.failed() {
            return Err(ApiError::Store(e));
        }
        let (tx, mut rx) = oneshot::channel();
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Pending { body, done: tx });
        let head = self.head.clone().lock_owned().await;
        // The previous committer may have taken ours along.
        if let Ok(result) = rx.try_recv() {
            return result;
        }
        if let Some(e) = self.failed() {
            return Err(ApiError::Store(e));
        }
        let batch = std::mem::take(&mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()));
        // The batch is written, the chain head advanced and every waiter
        // answered by a task of its own: a caller dropped here (its client
        // went away mid-call) must not leave a batch written but its head
        // unrecorded, or the next batch would reuse its audit sequence
        // numbers and overwrite its records.
        let lead = Batch {
            store: store.clone(),
            settings: self.settings,
            failed: self.failed.clone(),
        };
        tokio::spawn(lead.write(head, batch));
        rx.await.unwrap_or_else(|_| {
            Err(ApiError::Internal(
                "storage task failed before this change was written".into(),
            ))
        })
    }
}

/// What the task writing one batch needs.
struct Batch {
    store: Arc<dyn Store>,
    settings: StoreSettings,
    failed: Arc<Mutex<Option<StoreError>>>,
}

impl Batch {
    /// Applies `batch` under the chain head `head`, then answers each waiter.
    async fn write(self, mut head: tokio::sync::OwnedMutexGuard<Head>, batch: Vec<Pending>) {
        let (changes, waiters): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.body, p.done)).unzip();
        let store = self.store.clone();
        let start = (head.chain.clone(), head.counters.clone());
        let min_free = self.settings.min_free_bytes;
        let task = tokio::task::spawn_blocking(move || apply(store.as_ref(), start, changes, min_free));
        let outcome = match tokio::time::timeout(self.settings.stall_timeout, task).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => {
                // The task panicked part-way: what it wrote is unknown, so
                // the head and counters are read back from the store rather
                // than kept.
                tracing::error!(error = %e, "storage task failed; its changes are refused");
                let store = self.store.clone();
                let reread = move || Ok::<_, StoreError>((store.last_audit()?, Counters::load(store.as_ref())?));
                let cannot_read = match tokio::task::spawn_blocking(reread).await {
                    Ok(Ok((last, counters))) => {
                        *head = Head {
                            chain: ChainHead::after(last.as_ref()),
                            counters,
                        };
                        None
                    }
                    Ok(Err(stored)) => Some(stored),
                    Err(again) => Some(StoreError::Corrupt {
                        key: "the last audit record".into(),
                        reason: again.to_string(),
                    }),
                };
                // Without a known head nothing more can be chained on.
                if let Some(stored) = cannot_read {
                    *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(stored);
                }
                for done in waiters {
                    let _ = done.send(Err(ApiError::Internal(format!(
                        "storage task failed while writing this change; it is not acknowledged: {e}"
                    ))));
                }
                return;
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
                return;
            }
        };
        if let Some(next) = outcome.head {
            *head = next;
        }
        drop(head);
        for (done, result) in waiters.into_iter().zip(outcome.results) {
            let _ = done.send(result.map_err(ApiError::Store));
        }
    }
}

/// What became of a batch: one result per change (its number), in order,
/// and the new head when the flush succeeded.
struct Outcome {
    results: Vec<Result<u64, StoreError>>,
    head: Option<Head>,
}

/// Checks free space, numbers and applies each change, seals the audit
/// events of those that applied, and flushes once.
fn apply(store: &dyn Store, start: (ChainHead, Counters), batch: Vec<Body>, min_free: u64) -> Outcome {
    if let Err(e) = store.check_space(min_free) {
        return Outcome {
            results: batch.iter().map(|_| Err(e.clone())).collect(),
            head: None,
        };
    }
    let now = lockstep_proto::now_unix_ms();
    let mut results = Vec::with_capacity(batch.len());
    let (mut next, mut counters) = start;
    let mut records = Vec::new();
    for body in batch {
        let (number, events, work) = match body {
            Body::Plain { events, work } => (None, events, work),
            Body::Numbered { counter, build } => {
                let n = *counters.slot(counter);
                let (events, work) = build(n);
                (Some((counter, n)), events, work)
            }
        };
        let result = work(store);
        if result.is_ok() {
            let (r, h) = crate::audit::seal(&next, events, now);
            records.extend(r);
            next = h;
            if let Some((counter, n)) = number {
                *counters.slot(counter) = n.saturating_add(1);
            }
        }
        results.push(result.map(|()| number.map_or(0, |(_, n)| n)));
    }
    let flushed = records
        .iter()
        .try_for_each(|r| store.put_audit(r))
        .and_then(|()| store.flush());
    match flushed {
        Ok(()) => Outcome {
            results,
            head: Some(Head { chain: next, counters }),
        },
        Err(e) => Outcome {
            results: results.into_iter().map(|r| r.and(Err(e.clone()))).collect(),
            head: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::sled_store::SledStore;

    fn event(detail: &str) -> Vec<AuditEvent> {
        vec![AuditEvent {
            actor: "alice (operator)".into(),
            action: "halt".into(),
            detail: detail.into(),
            ..Default::default()
        }]
    }

    /// A new store in a temporary directory and its committer.
    fn empty_store() -> (tempfile::TempDir, Arc<dyn Store>, GroupCommit) {
        let d = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(d.path()).unwrap());
        let settings = StoreSettings {
            min_free_bytes: 0,
            stall_timeout: Duration::from_secs(10),
        };
        let counters = Counters::load(store.as_ref()).unwrap();
        (d, store, GroupCommit::new(ChainHead::after(None), counters, settings))
    }

    /// The stored audit records say `details`, in order, and chain.
    fn assert_chain_is(store: &dyn Store, details: &[&str]) {
        let records = store.audit_from(1).unwrap();
        let stored: Vec<&str> = records.iter().map(|r| r.detail.as_str()).collect();
        assert_eq!(stored, details);
        crate::audit::verify(&records).unwrap();
    }

    /// A caller dropped while its batch is being written (its client went
    /// away mid-call) must not lose the batch's audit records: the next
    /// batch chains on after them, and the chain verifies.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_committer_dropped_mid_write_loses_no_audit_record() {
        let (_d, store, group) = empty_store();
        let group = Arc::new(group);
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let first = {
            let (group, store) = (group.clone(), store.clone());
            tokio::spawn(async move {
                let work: Work = Box::new(move |_| {
                    let _ = started_tx.send(());
                    let _ = release_rx.recv_timeout(Duration::from_secs(10));
                    Ok(())
                });
                group.commit(&store, event("first"), work).await
            })
        };
        tokio::task::spawn_blocking(move || started_rx.recv_timeout(Duration::from_secs(10)))
            .await
            .unwrap()
            .expect("the first batch never started writing");
        first.abort(); // its caller is gone while the write is under way
        let _ = first.await;
        release_tx.send(()).unwrap();
        group
            .commit(&store, event("second"), Box::new(|_| Ok(())))
            .await
            .unwrap();
        assert_chain_is(store.as_ref(), &["first", "second"]);
    }

    #[tokio::test]
    async fn a_change_whose_write_panics_is_refused_and_the_chain_goes_on() {
        let (_d, store, group) = empty_store();
        group
            .commit(&store, event("first"), Box::new(|_| Ok(())))
            .await
            .unwrap();
        let err = group
            .commit(&store, event("lost"), Box::new(|_| panic!("a bug in a change")))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("storage task failed"), "{err}");
        group
            .commit(&store, event("third"), Box::new(|_| Ok(())))
            .await
            .unwrap();
        assert_chain_is(store.as_ref(), &["first", "third"]);
    }

    /// Numbered changes committed at once get distinct numbers in commit
    /// order, and one whose write fails uses none up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_numbered_changes_get_distinct_numbers() {
        let (_d, store, group) = empty_store();
        let group = Arc::new(group);
        let mut calls = Vec::new();
        for i in 0..64u32 {
            let (group, store) = (group.clone(), store.clone());
            calls.push(tokio::spawn(async move {
                let build: Numbered = Box::new(move |n| {
                    let work: Work = if i % 8 == 7 {
                        Box::new(|_| {
                            Err(StoreError::Backend {
                                path: "test".into(),
                                reason: "refused".into(),
                            })
                        })
                    } else {
                        Box::new(|_| Ok(()))
                    };
                    (event(&format!("number {n}")), work)
                });
                group.commit_numbered(&store, Counter::Halt, build).await
            }));
        }
        let mut numbers = Vec::new();
        for call in calls {
            if let Ok(n) = call.await.unwrap() {
                numbers.push(n);
            }
        }
        numbers.sort_unstable();
        assert_eq!(numbers, (1..=56).collect::<Vec<u64>>());
        let records = store.audit_from(1).unwrap();
        let mut recorded: Vec<String> = records.iter().map(|r| r.detail.clone()).collect();
        recorded.sort_by_key(|d| d.trim_start_matches("number ").parse::<u64>().unwrap());
        assert_eq!(recorded, (1..=56).map(|n| format!("number {n}")).collect::<Vec<_>>());
    }
}
