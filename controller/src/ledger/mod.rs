//! The ledger: the one place the controller's durable state changes. Every
//! [`Change`] goes through [`Ledger::commit`], which checks it against the
//! state at its place in the commit order, allocates its number, writes it
//! and its audit records in one group-commit flush, and applies it to the
//! in-memory fleet view before the caller hears back. Nothing else writes
//! the store or the view, and [`FleetState::load`] rebuilds the view with
//! the same apply function: a controller restarted on its store, or a
//! standby that follows it, holds the same view.
//!
//! Two things the view holds are not durable, by design, and are set here
//! too: a rejection the store could not keep, and the fleet-wide halt a
//! failed store raises (see [`Ledger::note_unstored`]).

pub mod change;
pub(crate) mod commit;
pub mod standing;

use std::sync::{Arc, RwLock, RwLockReadGuard};

use crate::config::ControllerConfig;
use crate::error::ApiError;
use crate::fleet::FleetState;
use crate::ledger::change::{Change, Committed, Recorded, Staged};
use crate::ledger::commit::{Counters, GroupCommit, Target};
use crate::store::{HaltRecord, HaltScope, Rejection, Store, StoreError};
use lockstep_daemon::clock::SharedClock;
use lockstep_evidence::chain::{AuditEvent, ChainHead};

/// Id of the in-memory halt a failed store raises (never a stored halt's id).
pub const STORE_FAILURE_HALT: u64 = u64::MAX;

pub struct Ledger {
    target: Target,
    committer: GroupCommit,
    /// Seconds each commit took, for `lockstep_store_seconds`.
    observe: Box<dyn Fn(f64) + Send + Sync>,
}

impl Ledger {
    /// Opens the ledger on `store`: loads the view, the audit chain's head
    /// and the counters.
    pub fn open(
        config: Arc<ControllerConfig>,
        store: Arc<dyn Store>,
        clock: SharedClock,
        observe: Box<dyn Fn(f64) + Send + Sync>,
    ) -> Result<Self, StoreError> {
        let view = FleetState::load(store.as_ref(), &config)?;
        let head = ChainHead::after(store.last_audit()?.as_ref());
        let sealed = Arc::new(tokio::sync::watch::channel(head.next_seq - 1).0);
        let counters = Counters::load(store.as_ref())?;
        let committer = GroupCommit::new(head, counters, config.store);
        Ok(Self {
            target: Target {
                store,
                clock,
                view: Arc::new(RwLock::new(view)),
                config,
                sealed,
            },
            committer,
            observe,
        })
    }

    /// Commits `change`; returns the number it took (a halt's id, a
    /// release's number; 0 for others) and what it wrote, once it is
    /// durable and in the view.
    pub async fn commit(&self, change: impl Change) -> Result<Committed, ApiError> {
        let change: Box<dyn Change> = Box::new(change);
        let started = std::time::Instant::now();
        let result = self.committer.commit(&self.target, change).await;
        (self.observe)(started.elapsed().as_secs_f64());
        if let Err(ApiError::Store(err @ StoreError::Stalled { .. })) = &result {
            self.halt_on_failed_store(err);
        }
        result
    }

    /// The seq of the last sealed audit record, now and as it moves (the
    /// board's live feed follows it).
    pub fn sealed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.target.sealed.subscribe()
    }

    /// Now, on the controller's one clock (what commits are sealed with).
    pub fn now_unix_ms(&self) -> i64 {
        self.target.clock.now_unix_ms()
    }

    /// Appends `events` to the audit chain, durably.
    pub async fn record(&self, events: Vec<AuditEvent>) -> Result<(), ApiError> {
        self.commit(Recorded(events)).await.map(drop)
    }

    /// [`Ledger::record`], answering the seq of the first record sealed
    /// (a later record can name it).
    pub async fn record_numbered(&self, events: Vec<AuditEvent>) -> Result<u64, ApiError> {
        self.commit(Recorded(events)).await.map(|c| c.audit_seq)
    }

    /// `check` against the committed state, without committing anything
    /// (a part's early check before it does costly work; the commit checks
    /// again). A refusal's events are recorded.
    pub async fn check<T>(
        &self,
        check: impl FnOnce(&Staged<'_>) -> Result<T, crate::ledger::change::Refused>,
    ) -> Result<T, ApiError> {
        let refused = {
            let view = self.view();
            let staged = Staged::new(&view, self.store(), &self.target.config, self.now_unix_ms());
            match check(&staged) {
                Ok(v) => return Ok(v),
                Err(r) => r,
            }
        };
        if !refused.events.is_empty() {
            if let Err(e) = self.record(refused.events).await {
                tracing::error!(error = %e, "cannot record a refusal");
            }
        }
        Err(refused.error)
    }

    /// The committed fleet view.
    pub fn view(&self) -> RwLockReadGuard<'_, FleetState> {
        self.target.view.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The store, for reads (audit records, manifests, tokens).
    pub fn store(&self) -> &dyn Store {
        self.target.store.as_ref()
    }

    /// Why the store refuses every change, if it does.
    pub fn failed(&self) -> Option<StoreError> {
        self.committer.failed()
    }

    /// A change to `host` that could not be stored (disk full, I/O error)
    /// was not acknowledged: its gate closes in memory, naming the cause,
    /// until one is stored. What the controller cannot keep it does not trust.
    pub fn note_unstored(&self, host: &str, now_unix_ms: i64, e: &ApiError) {
        let mut view = self.target.view.write().unwrap_or_else(|p| p.into_inner());
        let rec = view.hosts.entry(host.to_string()).or_default();
        rec.last_rejection = Some(Rejection {
            at_unix_ms: now_unix_ms,
            reason: format!("the controller could not store it ({e})"),
        });
    }

    /// A store that stopped answering takes the whole fleet out of the
    /// market: an in-memory halt (it cannot be stored) that lasts until the
    /// controller restarts, shown by `lockstep halts` like any other.
    fn halt_on_failed_store(&self, e: &StoreError) {
        let mut view = self.target.view.write().unwrap_or_else(|p| p.into_inner());
        view.halts.entry(STORE_FAILURE_HALT).or_insert_with(|| HaltRecord {
            id: STORE_FAILURE_HALT,
            scope: HaltScope::Fleet,
            reason: format!("the controller's store failed: {e}"),
            halted_by: "controller".into(),
            halted_at_unix_ms: self.target.clock.now_unix_ms(),
            resumed_by: None,
            resumed_at_unix_ms: 0,
            resume_reason: String::new(),
            drill: false,
        });
    }
}
