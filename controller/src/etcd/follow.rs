//! A standby follows the ledger: the fleet view (hosts, releases, halts)
//! loaded at one etcd revision, then kept current by a watch on the prefix
//! from the next revision, through the same [`FleetState::apply`] the
//! leader commits with. How far it is behind the store (in revisions, and
//! since when) is its ledger lag, shown in `/metrics` and `lockstep cluster
//! status`. A watch that breaks or is compacted past reloads.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::Etcd;
use super::api::{self, RangeRequest, WatchCreateRequest, WatchRequest, watch_request};
use super::store::{EtcdStore, Fence};
use crate::config::ControllerConfig;
use crate::fleet::FleetState;
use crate::store::{HaltRecord, HostRecord, Put, ReleaseRecord, Store, StoreError};

/// What a follower has, for `/metrics` and its presence record.
#[derive(Default)]
pub struct Followed {
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

    /// Seconds since the view was last at the store's head.
    pub fn lag_seconds(&self, now_unix_ms: i64) -> Option<f64> {
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
                .store(lockstep_proto::now_unix_ms(), Ordering::Relaxed);
        }
    }
}

/// The store's current revision.
pub async fn head_revision(etcd: &Arc<Etcd>) -> Result<i64, StoreError> {
    let request = RangeRequest {
        key: etcd.key(super::election::LEADER_KEY),
        count_only: true,
        ..Default::default()
    };
    let answer = etcd.range("reading the store's revision", request).await?;
    Ok(answer.header.map_or(0, |h| h.revision))
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
    let store = Arc::new(EtcdStore::new(etcd.clone(), Fence::ReadOnly).pinned_at(revision));
    let view = {
        let (store, config) = (store.clone(), config.clone());
        tokio::task::spawn_blocking(move || FleetState::load(store.as_ref(), &config))
            .await
            .map_err(|e| etcd.backend(format!("loading the fleet view: {e}")))??
    };
    *followed.view.write().unwrap_or_else(|p| p.into_inner()) = view;
    followed.at(revision);
    tracing::info!(revision, "following the ledger: fleet view loaded");
    // Events from here read manifests at the store's head.
    let store = Arc::new(EtcdStore::new(etcd.clone(), Fence::ReadOnly));
    let mut events = etcd.watch_prefix(WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
            key: etcd.key(""),
            range_end: super::prefix_end(&etcd.key("")),
            start_revision: revision + 1,
            progress_notify: true,
        })),
    });
    let mut asked = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            got = events.recv() => {
                let response = got.ok_or_else(|| etcd.backend("the ledger watch ended".into()))??;
                if response.canceled || response.compact_revision > 0 {
                    return Err(etcd.backend(format!(
                        "the ledger watch was cancelled ({}; compacted at {})",
                        response.cancel_reason, response.compact_revision
                    )));
                }
                let at = response.header.as_ref().map_or(0, |h| h.revision);
                let (store, config, followed2) = (store.clone(), config.clone(), followed.clone());
                let prefix = etcd.key("");
                tokio::task::spawn_blocking(move || apply_events(&store, &config, &followed2, &prefix, response.events))
                    .await
                    .map_err(|e| etcd.backend(format!("applying the ledger: {e}")))??;
                followed.at(at);
            }
            _ = asked.tick() => {
                if let Ok(head) = head_revision(etcd).await {
                    followed.saw_head(head);
                }
            }
        }
    }
}

fn apply_events(
    store: &EtcdStore,
    config: &ControllerConfig,
    followed: &Followed,
    prefix: &[u8],
    events: Vec<api::Event>,
) -> Result<(), StoreError> {
    for event in events {
        let Some(kv) = event.kv else { continue };
        if event.r#type != api::event::EventType::Put as i32 {
            continue;
        }
        let Some(rest) = kv.key.strip_prefix(prefix) else {
            continue;
        };
        let put = if rest.starts_with(b"host/") {
            let host: HostRecord = store.decode(&kv)?;
            if host.has_reported() {
                manifest_into(store, config, followed, &host.digest_hex)?;
            }
            Put::Host(host)
        } else if rest.starts_with(b"release/") {
            let release: ReleaseRecord = store.decode(&kv)?;
            manifest_into(store, config, followed, &release.digest_hex)?;
            Put::Release(release)
        } else if rest.starts_with(b"halt/") {
            Put::Halt(store.decode::<HaltRecord>(&kv)?)
        } else {
            continue;
        };
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
    store: &EtcdStore,
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
