//! A standby follows the ledger: the fleet view (hosts, releases, halts)
//! loaded at one etcd revision, then kept current by a watch on the prefix
//! from the next revision, through the same [`FleetState::apply`] the
//! leader commits with. How far it is behind the store (in revisions, and
//! since when) is its ledger lag, shown in `/metrics` and `lockstep cluster
//! status`. A watch that breaks or is compacted past reloads.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::config::ControllerConfig;
use crate::fleet::FleetState;
use crate::store::etcd::Etcd;
use crate::store::etcd::watch::{self, head_revision};
use crate::store::{Put, Store, StoreError};
use lockstep_daemon::clock::SharedClock;

/// What a follower has, for `/metrics` and its presence record.
pub struct Followed {
    /// When "caught up" is measured (the controller's injected clock).
    clock: SharedClock,
    pub view: RwLock<FleetState>,
    /// The store revision the view is at (0: not loaded).
    applied: AtomicI64,
    /// The store's revision when last asked.
    head: AtomicI64,
    /// When the view was last at the store's head.
    caught_up_at_unix_ms: AtomicI64,
}

impl Followed {
    /// Revisions the view is behind the store (`None` before it is loaded).
    pub fn lag_revisions(&self) -> Option<i64> {
        let applied = self.applied.load(Ordering::Relaxed);
        (applied > 0).then(|| (self.head.load(Ordering::Relaxed) - applied).max(0))
    }

    /// An empty view, not loaded yet, timed by `clock`.
    pub fn new(clock: SharedClock) -> Self {
        Self {
            clock,
            view: RwLock::default(),
            applied: AtomicI64::new(0),
            head: AtomicI64::new(0),
            caught_up_at_unix_ms: AtomicI64::new(0),
        }
    }

    /// Seconds since the view was last at the store's head.
    pub fn lag_seconds(&self) -> Option<f64> {
        let now_unix_ms = self.clock.now_unix_ms();
        self.lag_revisions()?;
        #[allow(clippy::cast_precision_loss)] // milliseconds fit an f64 exactly
        Some((now_unix_ms - self.caught_up_at_unix_ms.load(Ordering::Relaxed)).max(0) as f64 / 1000.0)
    }

    /// Hosts that have reported, and halts in force, in the view.
    pub fn counts(&self) -> (usize, usize) {
        let v = self.view.read().unwrap_or_else(|p| p.into_inner());
        (
            v.hosts.values().filter(|h| h.has_reported()).count(),
            v.halts.values().filter(|h| h.is_active()).count(),
        )
    }

    fn at(&self, revision: i64) {
        self.applied.fetch_max(revision, Ordering::Relaxed);
        self.saw_head(revision);
    }

    fn saw_head(&self, revision: i64) {
        self.head.fetch_max(revision, Ordering::Relaxed);
        if self.applied.load(Ordering::Relaxed) >= self.head.load(Ordering::Relaxed) {
            self.caught_up_at_unix_ms
                .store(self.clock.now_unix_ms(), Ordering::Relaxed);
        }
    }
}

/// Follows the ledger into `followed` until dropped (the caller aborts
/// it when this controller leads).
pub async fn follow(etcd: Arc<Etcd>, config: Arc<ControllerConfig>, followed: Arc<Followed>) {
    // Said once per cause: without quorum it fails every second.
    let mut last = String::new();
    loop {
        if let Err(e) = follow_once(&etcd, &config, &followed).await {
            let said = e.to_string();
            if said == last {
                tracing::debug!(error = %said, "following the ledger: starting again");
            } else {
                tracing::warn!(error = %said, "following the ledger: starting again (the view stays as last followed)");
                last = said;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn follow_once(
    etcd: &Arc<Etcd>,
    config: &Arc<ControllerConfig>,
    followed: &Arc<Followed>,
) -> Result<(), StoreError> {
    let revision = head_revision(etcd).await?;
    let store = Arc::new(watch::pinned(etcd, revision));
    let view = {
        let (store, config) = (store.clone(), config.clone());
        tokio::task::spawn_blocking(move || FleetState::load(store.as_ref(), &config))
            .await
            .map_err(|e| etcd.backend(format!("loading the fleet view: {e}")))??
    };
    *followed.view.write().unwrap_or_else(|p| p.into_inner()) = view;
    followed.at(revision);
    tracing::info!(revision, "following the ledger: fleet view loaded");
    // Manifests the changes name are read at the store's head.
    let store: Arc<dyn Store> = Arc::new(watch::at_head(etcd));
    let mut changes = watch::changes_from(etcd, revision + 1);
    let mut asked = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            got = changes.recv() => {
                let got = got.ok_or_else(|| etcd.backend("the ledger watch ended".into()))??;
                let (store, config, into) = (store.clone(), config.clone(), followed.clone());
                tokio::task::spawn_blocking(move || apply(store.as_ref(), &config, &into, got.puts))
                    .await
                    .map_err(|e| etcd.backend(format!("applying the ledger: {e}")))??;
                followed.at(got.revision);
            }
            _ = asked.tick() => {
                if let Ok(head) = head_revision(etcd).await {
                    followed.saw_head(head);
                }
            }
        }
    }
}

/// Applies `puts` to the view, each host's or release's manifest first.
fn apply(store: &dyn Store, config: &ControllerConfig, followed: &Followed, puts: Vec<Put>) -> Result<(), StoreError> {
    for put in puts {
        let digest = match &put {
            Put::Host(h) if h.has_reported() => Some(h.digest_hex.clone()),
            Put::Release(r) => Some(r.digest_hex.clone()),
            _ => None,
        };
        if let Some(digest) = digest {
            manifest_into(store, config, followed, &digest)?;
        }
        followed
            .view
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .apply(config, &put);
    }
    Ok(())
}

/// The view holds the manifest a host or release names (written before it).
fn manifest_into(
    store: &dyn Store,
    config: &ControllerConfig,
    followed: &Followed,
    digest_hex: &str,
) -> Result<(), StoreError> {
    if followed
        .view
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .has_manifest(digest_hex)
    {
        return Ok(());
    }
    let entries = store.manifest(digest_hex)?.ok_or_else(|| StoreError::Corrupt {
        key: format!("manifest {digest_hex}"),
        reason: "referenced but not stored".into(),
    })?;
    followed.view.write().unwrap_or_else(|p| p.into_inner()).apply(
        config,
        &Put::Manifest {
            digest_hex: digest_hex.to_string(),
            entries: Arc::new(entries),
        },
    );
    Ok(())
}
