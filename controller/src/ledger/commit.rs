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

use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::oneshot;

use crate::config::{ControllerConfig, StoreSettings};
use crate::error::ApiError;
use crate::fleet::FleetState;
use crate::ledger::change::{Change, Committed, Counter, Effect, Refused, Staged};
use crate::store::{Put, Store, StoreError};
use lockstep_daemon::clock::SharedClock;
use lockstep_evidence::chain::ChainHead;

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

    fn get(&self, counter: Counter) -> u64 {
        match counter {
            Counter::Halt => self.next_halt,
            Counter::Release => self.next_release,
        }
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

struct Pending {
    change: Box<dyn Change>,
    /// The number allocated to the change (0 when it takes none).
    done: oneshot::Sender<Result<Committed, ApiError>>,
}

/// Where committed changes land: the store, and the in-memory view the
/// batch applies them to once they are flushed.
#[derive(Clone)]
pub struct Target {
    pub store: Arc<dyn Store>,
    /// The time audit records are sealed with.
    pub clock: SharedClock,
    pub view: Arc<RwLock<FleetState>>,
    pub config: Arc<ControllerConfig>,
    /// The last sealed audit seq, told to whoever follows the log live.
    pub sealed: Arc<tokio::sync::watch::Sender<u64>>,
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

    /// Checks `change` against the state at its place in the commit
    /// order, writes it with its audit records, flushes (shared with
    /// whatever else is waiting), applies it to the view, and returns the
    /// number it took (0 when it takes none).
    pub async fn commit(&self, target: &Target, change: Box<dyn Change>) -> Result<Committed, ApiError> {
        if let Some(e) = self.failed() {
            return Err(ApiError::Store(e));
        }
        let (tx, mut rx) = oneshot::channel();
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Pending { change, done: tx });
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
            target: target.clone(),
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
    target: Target,
    settings: StoreSettings,
    failed: Arc<Mutex<Option<StoreError>>>,
}

impl Batch {
    /// Applies `batch` under the chain head `head`, then answers each waiter.
    async fn write(self, mut head: tokio::sync::OwnedMutexGuard<Head>, batch: Vec<Pending>) {
        let (changes, waiters): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.change, p.done)).unzip();
        let target = self.target.clone();
        let start = (head.chain.clone(), head.counters.clone());
        let min_free = self.settings.min_free_bytes;
        let task = tokio::task::spawn_blocking(move || apply(&target, start, changes, min_free));
        let outcome = match tokio::time::timeout(self.settings.stall_timeout, task).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => {
                // The task panicked part-way: what it wrote is unknown, so
                // the head and counters are read back from the store rather
                // than kept.
                tracing::error!(error = %e, "storage task failed; its changes are refused");
                let store = self.target.store.clone();
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
            self.target.sealed.send_if_modified(|last| {
                let moved = *last != next.chain.next_seq - 1;
                *last = next.chain.next_seq - 1;
                moved
            });
            *head = next;
        }
        drop(head);
        for (done, result) in waiters.into_iter().zip(outcome.results) {
            let _ = done.send(result);
        }
    }
}

/// What became of a batch: one result per change (its number), in order,
/// and the new head when the flush succeeded.
struct Outcome {
    results: Vec<Result<Committed, ApiError>>,
    head: Option<Head>,
}

/// Checks free space; checks, numbers and writes each change in queue
/// order; seals the audit events of those that applied (and of refusals
/// that are recorded); flushes once; then applies what was written to the
/// view, in the same order, before anyone is answered.
fn apply(target: &Target, start: (ChainHead, Counters), batch: Vec<Box<dyn Change>>, min_free: u64) -> Outcome {
    let store = target.store.as_ref();
    if let Err(e) = store.check_space(min_free) {
        return Outcome {
            results: batch.iter().map(|_| Err(ApiError::Store(e.clone()))).collect(),
            head: None,
        };
    }
    let now = target.clock.now_unix_ms();
    let mut results = Vec::with_capacity(batch.len());
    let (mut next, mut counters) = start;
    let mut records = Vec::new();
    let mut written: Vec<Arc<Vec<Put>>> = Vec::new();
    {
        // Only batches write the view, one at a time (the head lock), so
        // it cannot change under this read.
        let view = target.view.read().unwrap_or_else(|p| p.into_inner());
        let mut staged = Staged::new(&view, store, &target.config, now);
        for change in batch {
            let numbers = counters.clone();
            let next_number = move |c: Counter| numbers.get(c);
            staged.set_chain_head(next.clone());
            let (result, events) = match change.apply(&staged, &next_number) {
                Ok(Effect { puts, events, numbered }) => match puts.iter().try_for_each(|p| p.write(store)) {
                    Ok(()) => {
                        staged.record(&puts);
                        let puts = Arc::new(puts);
                        written.push(puts.clone());
                        if let Some((counter, n)) = numbered {
                            *counters.slot(counter) = n.saturating_add(1);
                        }
                        let number = numbered.map_or(0, |(_, n)| n);
                        (
                            Ok(Committed {
                                number,
                                audit_seq: 0,
                                puts,
                            }),
                            events,
                        )
                    }
                    Err(e) => (Err(ApiError::Store(e)), Vec::new()),
                },
                Err(Refused { error, events }) => (Err(error), events),
            };
            let (r, h) = lockstep_evidence::chain::seal(&next, events, now);
            let result = result.map(|c| Committed {
                audit_seq: r.first().map_or(0, |first| first.seq),
                ..c
            });
            records.extend(r);
            next = h;
            results.push(result);
        }
    }
    let flushed = records
        .iter()
        .try_for_each(|r| store.put_audit(r))
        .and_then(|()| store.flush());
    match flushed {
        Ok(()) => {
            let mut view = target.view.write().unwrap_or_else(|p| p.into_inner());
            for put in written.iter().flat_map(|puts| puts.iter()) {
                view.apply(&target.config, put);
            }
            Outcome {
                results,
                head: Some(Head { chain: next, counters }),
            }
        }
        Err(e) => Outcome {
            results: results
                .into_iter()
                .map(|r| r.and(Err(ApiError::Store(e.clone()))))
                .collect(),
            head: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::store::sled::SledStore;
    use crate::store::{HaltRecord, HaltScope};
    use lockstep_evidence::chain::AuditEvent;

    type Hook = Box<dyn Fn(&HaltRecord) -> Result<(), StoreError> + Send + Sync>;

    /// A sled store whose halt writes run `hook` first: it can block a
    /// batch mid-write, fail one change or panic.
    struct Faulty {
        inner: SledStore,
        hook: Hook,
    }

    impl Store for Faulty {
        fn check_space(&self, min_free: u64) -> Result<(), StoreError> {
            self.inner.check_space(min_free)
        }
        fn hosts(&self) -> Result<Vec<crate::store::HostRecord>, StoreError> {
            self.inner.hosts()
        }
        fn put_host(&self, host: &crate::store::HostRecord) -> Result<(), StoreError> {
            self.inner.put_host(host)
        }
        fn has_manifest(&self, digest_hex: &str) -> Result<bool, StoreError> {
            self.inner.has_manifest(digest_hex)
        }
        fn put_manifest(&self, digest_hex: &str, entries: &[lockstep_proto::pb::Entry]) -> Result<(), StoreError> {
            self.inner.put_manifest(digest_hex, entries)
        }
        fn manifest(&self, digest_hex: &str) -> Result<Option<Vec<lockstep_proto::pb::Entry>>, StoreError> {
            self.inner.manifest(digest_hex)
        }
        fn releases(&self) -> Result<Vec<crate::store::ReleaseRecord>, StoreError> {
            self.inner.releases()
        }
        fn put_release(&self, release: &crate::store::ReleaseRecord) -> Result<(), StoreError> {
            self.inner.put_release(release)
        }
        fn halts(&self) -> Result<Vec<HaltRecord>, StoreError> {
            self.inner.halts()
        }
        fn put_halt(&self, halt: &HaltRecord) -> Result<(), StoreError> {
            (self.hook)(halt)?;
            self.inner.put_halt(halt)
        }
        fn put_audit(&self, record: &lockstep_evidence::chain::AuditRecord) -> Result<(), StoreError> {
            self.inner.put_audit(record)
        }
        fn size(&self) -> Result<crate::store::StoreSize, StoreError> {
            self.inner.size()
        }
        fn audit_page(
            &self,
            from: u64,
            limit: usize,
        ) -> Result<Vec<lockstep_evidence::chain::AuditRecord>, StoreError> {
            self.inner.audit_page(from, limit)
        }
        fn last_audit(&self) -> Result<Option<lockstep_evidence::chain::AuditRecord>, StoreError> {
            self.inner.last_audit()
        }
        fn host_audit_seqs(&self, host: &str, before: u64, limit: usize) -> Result<Vec<u64>, StoreError> {
            self.inner.host_audit_seqs(host, before, limit)
        }
        fn incidents(&self) -> Result<Vec<crate::store::IncidentRecord>, StoreError> {
            self.inner.incidents()
        }
        fn put_incident(&self, incident: &crate::store::IncidentRecord) -> Result<(), StoreError> {
            self.inner.put_incident(incident)
        }
        fn token(&self, hash_hex: &str) -> Result<Option<crate::store::TokenRecord>, StoreError> {
            self.inner.token(hash_hex)
        }
        fn put_token(&self, token: &crate::store::TokenRecord) -> Result<(), StoreError> {
            self.inner.put_token(token)
        }
        fn tokens(&self) -> Result<Vec<crate::store::TokenRecord>, StoreError> {
            self.inner.tokens()
        }
        fn board(&self, hash_hex: &str) -> Result<Option<crate::store::BoardRecord>, StoreError> {
            self.inner.board(hash_hex)
        }
        fn put_board(&self, record: &crate::store::BoardRecord) -> Result<(), StoreError> {
            self.inner.put_board(record)
        }
        fn boards(&self) -> Result<Vec<crate::store::BoardRecord>, StoreError> {
            self.inner.boards()
        }
        fn manifest_digests(&self) -> Result<Vec<String>, StoreError> {
            self.inner.manifest_digests()
        }
        fn flush(&self) -> Result<(), StoreError> {
            self.inner.flush()
        }
    }

    /// A numbered change, as a halt is: its id taken in the commit.
    struct NumberedHalt(HaltRecord);

    impl Change for NumberedHalt {
        fn apply(
            self: Box<Self>,
            _: &Staged<'_>,
            next: crate::ledger::change::NextNumber<'_>,
        ) -> Result<Effect, Refused> {
            let id = next(Counter::Halt);
            let detail = format!("halt {id} on {}: {}", self.0.scope, self.0.reason);
            Ok(Effect {
                puts: vec![Put::Halt(HaltRecord { id, ..self.0 })],
                events: vec![AuditEvent::new(
                    "alice (operator)",
                    lockstep_evidence::action::AuditAction::Halt,
                    detail,
                )],
                numbered: Some((Counter::Halt, id)),
            })
        }
    }

    fn halt(reason: &str) -> Box<dyn Change> {
        Box::new(NumberedHalt(HaltRecord {
            id: 0,
            scope: HaltScope::Fleet,
            reason: reason.into(),
            halted_by: "alice".into(),
            halted_at_unix_ms: 1,
            resumed_by: None,
            resumed_at_unix_ms: 0,
            resume_reason: String::new(),
            drill: false,
        }))
    }

    fn recorded(detail: &str) -> Box<dyn Change> {
        Box::new(crate::ledger::change::Recorded(vec![AuditEvent::new(
            "controller",
            lockstep_evidence::action::AuditAction::GateChanged,
            detail,
        )]))
    }

    /// A new store (with `hook` on halt writes) and its committer.
    fn empty_store(
        hook: impl Fn(&HaltRecord) -> Result<(), StoreError> + Send + Sync + 'static,
    ) -> (tempfile::TempDir, Target, GroupCommit) {
        let d = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(Faulty {
            inner: SledStore::open(d.path()).unwrap(),
            hook: Box::new(hook),
        });
        let settings = StoreSettings {
            min_free_bytes: 0,
            stall_timeout: Duration::from_secs(10),
            ..StoreSettings::default()
        };
        let text = include_str!("../../tests/fixtures/controller_good.toml");
        let config = Arc::new(ControllerConfig::parse(text, Path::new("controller.toml")).unwrap());
        let counters = Counters::load(store.as_ref()).unwrap();
        let target = Target {
            clock: lockstep_daemon::clock::system(),
            view: Arc::new(RwLock::new(FleetState::load(store.as_ref(), &config).unwrap())),
            store,
            config,
            sealed: Arc::new(tokio::sync::watch::channel(0).0),
        };
        (d, target, GroupCommit::new(ChainHead::after(None), counters, settings))
    }

    /// The stored audit records say `details`, in order, and chain.
    fn assert_chain_is(store: &dyn Store, details: &[&str]) {
        let records = store.audit_page(1, usize::MAX).unwrap();
        let stored: Vec<&str> = records.iter().map(|r| r.detail.as_str()).collect();
        assert_eq!(stored, details);
        lockstep_evidence::chain::verify(&records).unwrap();
    }

    /// A caller dropped while its batch is being written (its client went
    /// away mid-call) must not lose the batch's audit records: the next
    /// batch chains on after them, and the chain verifies.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_committer_dropped_mid_write_loses_no_audit_record() {
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let (started_tx, release_rx) = (Mutex::new(started_tx), Mutex::new(release_rx));
        let (_d, target, group) = empty_store(move |_| {
            let _ = started_tx.lock().unwrap().send(());
            let _ = release_rx.lock().unwrap().recv_timeout(Duration::from_secs(10));
            Ok(())
        });
        let group = Arc::new(group);
        let first = {
            let (group, target) = (group.clone(), target.clone());
            tokio::spawn(async move { group.commit(&target, halt("first")).await })
        };
        tokio::task::spawn_blocking(move || started_rx.recv_timeout(Duration::from_secs(10)))
            .await
            .unwrap()
            .expect("the first batch never started writing");
        first.abort(); // its caller is gone while the write is under way
        let _ = first.await;
        release_tx.send(()).unwrap();
        group.commit(&target, recorded("second")).await.unwrap();
        assert_chain_is(target.store.as_ref(), &["halt 1 on the fleet: first", "second"]);
        // The halt is in the view too: it was committed, whoever was waiting.
        assert!(target.view.read().unwrap().halts.contains_key(&1));
    }

    #[tokio::test]
    async fn a_change_whose_write_panics_is_refused_and_the_chain_goes_on() {
        let (_d, target, group) = empty_store(|h| {
            assert_ne!(h.reason, "lost", "a bug in a change");
            Ok(())
        });
        group.commit(&target, recorded("first")).await.unwrap();
        let err = group.commit(&target, halt("lost")).await.unwrap_err();
        assert!(err.to_string().contains("storage task failed"), "{err}");
        group.commit(&target, recorded("third")).await.unwrap();
        assert_chain_is(target.store.as_ref(), &["first", "third"]);
        assert!(
            target.view.read().unwrap().halts.is_empty(),
            "a refused change is not in the view"
        );
    }

    /// Halts committed at once get distinct ids in commit order, one whose
    /// write fails uses none up, and the view holds exactly the stored ones.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_numbered_changes_get_distinct_numbers() {
        let (_d, target, group) = empty_store(|h| {
            if h.reason.ends_with("fails") {
                return Err(StoreError::Backend {
                    path: "test".into(),
                    reason: "refused".into(),
                });
            }
            Ok(())
        });
        let group = Arc::new(group);
        let mut calls = Vec::new();
        for i in 0..64u32 {
            let (group, target) = (group.clone(), target.clone());
            let reason = if i % 8 == 7 {
                format!("{i} fails")
            } else {
                format!("{i}")
            };
            calls.push(tokio::spawn(async move { group.commit(&target, halt(&reason)).await }));
        }
        let mut numbers = Vec::new();
        for call in calls {
            if let Ok(c) = call.await.unwrap() {
                numbers.push(c.number);
            }
        }
        numbers.sort_unstable();
        assert_eq!(numbers, (1..=56).collect::<Vec<u64>>());
        let records = target.store.audit_page(1, usize::MAX).unwrap();
        assert_eq!(records.len(), 56);
        let stored: Vec<u64> = target.store.halts().unwrap().iter().map(|h| h.id).collect();
        let viewed: Vec<u64> = target.view.read().unwrap().halts.keys().copied().collect();
        assert_eq!(viewed, (1..=56).collect::<Vec<u64>>());
        let mut stored_sorted = stored;
        stored_sorted.sort_unstable();
        assert_eq!(stored_sorted, viewed);
    }
}
