//! Leader election on etcd: the leader key `<prefix>leader` is created on
//! the winner's lease (a transaction that succeeds only if the key does not
//! exist) and goes when the lease ends. The key's create revision is the
//! **epoch**: every write of the leader is fenced on it
//! ([`Fence::Leader`](super::store::Fence)), so a leader that was paused or
//! cut off and replaced cannot write, whatever it believes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::Etcd;
use super::api::{
    self, Compare, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, RangeRequest, RequestOp, TxnRequest,
    compare, request_op,
};
use crate::store::StoreError;

pub const LEADER_KEY: &str = "leader";

/// What the leader key says: who leads and where to reach it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaderInfo {
    pub name: String,
    pub address: String,
    /// The leader key's create revision (not stored: etcd gives it).
    #[serde(skip)]
    pub epoch: i64,
}

/// This controller leads, in `epoch`, until `lost` turns true: its lease
/// could not be renewed in time (etcd unreachable, quorum lost, or the
/// process was paused past it).
pub struct Leadership {
    pub epoch: i64,
    lease: i64,
    lost: watch::Receiver<bool>,
    keepalive: tokio::task::JoinHandle<()>,
}

impl Leadership {
    /// Resolves when leadership is lost.
    pub async fn lost(&self) {
        let mut lost = self.lost.clone();
        let _ = lost.wait_for(|l| *l).await;
    }

    /// Gives leadership up now (a clean stop), so a standby need not wait
    /// for the lease to run out.
    pub async fn resign(self, etcd: &Etcd) {
        self.keepalive.abort();
        let mut lease = etcd.lease();
        let id = self.lease;
        let _ = etcd
            .call("resigning", async move {
                lease.lease_revoke(LeaseRevokeRequest { id }).await
            })
            .await;
    }
}

/// Who leads now, if anyone.
pub async fn leader(etcd: &Etcd) -> Result<Option<LeaderInfo>, StoreError> {
    let request = RangeRequest {
        key: etcd.key(LEADER_KEY),
        ..Default::default()
    };
    let answer = etcd.range("reading the leader key", request).await?;
    leader_of(answer.kvs.first())
}

fn leader_of(kv: Option<&api::KeyValue>) -> Result<Option<LeaderInfo>, StoreError> {
    let Some(kv) = kv else { return Ok(None) };
    let mut info: LeaderInfo = serde_json::from_slice(&kv.value).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(&kv.key).into_owned(),
        reason: e.to_string(),
    })?;
    info.epoch = kv.create_revision;
    Ok(Some(info))
}

/// Waits until this controller leads; `standing_by` hears each leader seen
/// meanwhile (and `None` while etcd cannot be reached or nobody leads).
pub async fn campaign(
    etcd: Arc<Etcd>,
    me: LeaderInfo,
    mut standing_by: impl FnMut(Result<Option<LeaderInfo>, StoreError>),
) -> Leadership {
    let ttl = etcd.settings.leader_ttl;
    let poll = Duration::from_millis(200);
    loop {
        match leader(&etcd).await {
            Ok(None) => {}
            other => {
                standing_by(other);
                tokio::time::sleep(poll).await;
                continue;
            }
        }
        match try_lead(&etcd, &me, ttl).await {
            Ok(Some(won)) => return won,
            Ok(None) => {}
            Err(e) => standing_by(Err(e)),
        }
        tokio::time::sleep(poll).await;
    }
}

async fn try_lead(etcd: &Arc<Etcd>, me: &LeaderInfo, ttl: Duration) -> Result<Option<Leadership>, StoreError> {
    let mut lease = etcd.lease();
    let granted = etcd
        .call("granting the leader lease", async move {
            lease
                .lease_grant(LeaseGrantRequest {
                    ttl: ttl.as_secs() as i64,
                    id: 0,
                })
                .await
                .map(|r| r.into_inner())
        })
        .await?;
    // From here the lease runs: renewals must start from this instant.
    let granted_at = Instant::now();
    let key = etcd.key(LEADER_KEY);
    let value = serde_json::to_vec(me).map_err(|e| etcd.backend(e.to_string()))?;
    let request = TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Create as i32,
            key: key.clone(),
            target_union: Some(compare::TargetUnion::CreateRevision(0)),
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(api::PutRequest {
                key,
                value,
                lease: granted.id,
            })),
        }],
        failure: Vec::new(),
    };
    let mut kv = etcd.kv();
    let answer = etcd
        .call("taking the leader key", async move {
            kv.txn(request).await.map(|r| r.into_inner())
        })
        .await;
    let won = match answer {
        Ok(a) if a.succeeded => a.header.map_or(0, |h| h.revision),
        other => {
            let mut lease = etcd.lease();
            let id = granted.id;
            let _ = etcd
                .call("returning a lease", async move {
                    lease.lease_revoke(LeaseRevokeRequest { id }).await
                })
                .await;
            return other.map(|_| None);
        }
    };
    let (lost_tx, lost) = watch::channel(false);
    let keepalive = tokio::spawn(keep_alive(etcd.clone(), granted.id, ttl, granted_at, lost_tx));
    Ok(Some(Leadership {
        epoch: won,
        lease: granted.id,
        lost,
        keepalive,
    }))
}

/// Renews the lease every third of its life. Leadership counts as lost a
/// third of the TTL before the lease could end at etcd (measured from when
/// the last renewal that etcd answered was sent), so this controller stops
/// deciding before a standby can lead.
async fn keep_alive(etcd: Arc<Etcd>, id: i64, ttl: Duration, mut renewed_from: Instant, lost: watch::Sender<bool>) {
    type Link = (
        tokio::sync::mpsc::Sender<LeaseKeepAliveRequest>,
        tonic::Streaming<api::LeaseKeepAliveResponse>,
    );
    let every = ttl / 3;
    let give_up = ttl - every;
    let mut link: Option<Link> = None;
    // When each renewal in flight was sent: an answer renews from then.
    let mut sent: std::collections::VecDeque<Instant> = std::collections::VecDeque::new();
    let mut tick = tokio::time::interval(every);
    loop {
        if renewed_from.elapsed() >= give_up {
            tracing::warn!(
                lease = id,
                "the leader lease could not be renewed in time: standing down"
            );
            lost.send_replace(true);
            return;
        }
        let Some((tx, answers)) = link.as_mut() else {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            // etcd answers the stream's headers only after its first
            // request: send one before waiting for them.
            sent.clear();
            if tx.try_send(LeaseKeepAliveRequest { id }).is_ok() {
                sent.push_back(Instant::now());
            }
            let mut lease = etcd.lease();
            let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
            match etcd
                .call("renewing the leader lease", async move {
                    lease.lease_keep_alive(stream).await.map(|r| r.into_inner())
                })
                .await
            {
                Ok(answers) => link = Some((tx, answers)),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew the leader lease");
                    sent.clear();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            continue;
        };
        tokio::select! {
            _ = tick.tick() => {
                if tx.try_send(LeaseKeepAliveRequest { id }).is_ok() {
                    sent.push_back(Instant::now());
                }
            }
            answer = answers.message() => match answer {
                Ok(Some(a)) if a.ttl > 0 => {
                    if let Some(at) = sent.pop_front() {
                        renewed_from = renewed_from.max(at);
                    }
                }
                Ok(Some(_)) => {
                    tracing::warn!(lease = id, "etcd says the leader lease has ended: standing down");
                    lost.send_replace(true);
                    return;
                }
                // The stream broke (a member went away): open another.
                Ok(None) | Err(_) => link = None,
            }
        }
    }
}
