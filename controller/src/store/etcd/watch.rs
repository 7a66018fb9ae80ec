//! The ledger as etcd changes it, for a standby that follows it
//! ([`crate::ha::follow`]): the store's revision now, and every record
//! written after a revision, decoded into the store's own [`Put`]s so that
//! no etcd type leaves this module.

use std::sync::Arc;

use super::Etcd;
use super::api::{self, RangeRequest, WatchCreateRequest, WatchRequest, watch_request};
use super::store::{EtcdStore, Fence};
use crate::store::{HaltRecord, HostRecord, Put, ReleaseRecord, StoreError};

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

/// A read-only store pinned at `revision`: loading from it sees the ledger
/// as it was then, whatever is written meanwhile.
pub fn pinned(etcd: &Arc<Etcd>, revision: i64) -> EtcdStore {
    EtcdStore::new(etcd.clone(), Fence::ReadOnly).pinned_at(revision)
}

/// A read-only store at the head of the ledger.
pub fn at_head(etcd: &Arc<Etcd>) -> EtcdStore {
    EtcdStore::new(etcd.clone(), Fence::ReadOnly)
}

/// What a watch delivered: the revision it brings the follower to, and the
/// records written (hosts, releases, halts; the rest a view does not hold).
pub struct Changes {
    pub revision: i64,
    pub puts: Vec<Put>,
}

/// Every change to the ledger from `from` on, until the receiver is
/// dropped; the last item is the error that ended the watch (cancelled or
/// compacted past: the follower loads again).
pub fn changes_from(etcd: &Arc<Etcd>, from: i64) -> tokio::sync::mpsc::Receiver<Result<Changes, StoreError>> {
    let mut events = etcd.watch_prefix(WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
            key: etcd.key(""),
            range_end: super::prefix_end(&etcd.key("")),
            start_revision: from,
            progress_notify: true,
        })),
    });
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let etcd = etcd.clone();
    tokio::spawn(async move {
        let store = Arc::new(EtcdStore::new(etcd.clone(), Fence::ReadOnly));
        let prefix = etcd.key("");
        loop {
            let next = tokio::select! {
                n = events.recv() => n,
                () = tx.closed() => return,
            };
            let item = match next {
                None => Err(etcd.backend("the ledger watch ended".into())),
                Some(Err(e)) => Err(e),
                Some(Ok(r)) if r.canceled || r.compact_revision > 0 => Err(etcd.backend(format!(
                    "the ledger watch was cancelled ({}; compacted at {})",
                    r.cancel_reason, r.compact_revision
                ))),
                Some(Ok(r)) => {
                    let revision = r.header.as_ref().map_or(0, |h| h.revision);
                    let store = store.clone();
                    let prefix = prefix.clone();
                    tokio::task::spawn_blocking(move || decode(&store, &prefix, r.events))
                        .await
                        .map_err(|e| etcd.backend(format!("decoding the ledger: {e}")))
                        .and_then(|puts| puts.map(|puts| Changes { revision, puts }))
                }
            };
            let ended = item.is_err();
            if tx.send(item).await.is_err() || ended {
                return;
            }
        }
    });
    rx
}

/// The records among `events` a fleet view holds.
fn decode(store: &EtcdStore, prefix: &[u8], events: Vec<api::Event>) -> Result<Vec<Put>, StoreError> {
    let mut puts = Vec::new();
    for event in events {
        let Some(kv) = event.kv else { continue };
        if event.r#type != api::event::EventType::Put as i32 {
            continue;
        }
        let Some(rest) = kv.key.strip_prefix(prefix) else {
            continue;
        };
        if rest.starts_with(b"host/") {
            puts.push(Put::Host(store.decode::<HostRecord>(&kv)?));
        } else if rest.starts_with(b"release/") {
            puts.push(Put::Release(store.decode::<ReleaseRecord>(&kv)?));
        } else if rest.starts_with(b"halt/") {
            puts.push(Put::Halt(store.decode::<HaltRecord>(&kv)?));
        }
    }
    Ok(puts)
}
