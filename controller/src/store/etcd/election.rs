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
    /// The lease the leader key lives on (not stored: etcd gives it).
    #[serde(skip)]
    pub lease: i64,
    /// A standby's observation (not stored): this leader has not announced
    /// itself for [`SUSPECT_AFTER`], so it is probably gone and a new one
    /// is due; a standby then holds calls for it rather than sending
    /// clients to a dead address.
    #[serde(skip)]
    pub silent: bool,
}

/// A leader silent this long (it announces every second) is suspected gone.
pub const SUSPECT_AFTER: Duration = Duration::from_millis(1500);

/// This controller leads, in `epoch`, until `lost` turns true: its lease
/// could not be renewed in time (etcd unreachable, quorum lost, or the
/// process was paused past it).
pub struct Leadership {
    pub epoch: i64,
    lease: i64,
    /// The lease's time to live.
    ttl: Duration,
    lost: watch::Receiver<bool>,
    keepalive: tokio::task::JoinHandle<()>,
}

impl Leadership {
    /// Resolves when leadership is lost.
    pub async fn lost(&self) {
        let mut lost = self.lost.clone();
        let _ = lost.wait_for(|l| *l).await;
    }

    /// Gives leadership up now (a clean stop, or a stand-down), so a
    /// standby need not wait for the lease to run out. Tried again until
    /// etcd answers: a leader stands down most often because etcd did not
    /// answer (a member lost, its raft electing), and etcd renews every
    /// lease in full when it elects, so an unrevoked lease would hold the
    /// successor back a whole `leader_ttl` after etcd is back.
    pub async fn resign(self, etcd: &Etcd) {
        self.keepalive.abort();
        let id = self.lease;
        let started = Instant::now();
        loop {
            let mut lease = etcd.lease();
            let revoked = etcd
                .call("resigning", async move {
                    match lease.lease_revoke(LeaseRevokeRequest { id }).await {
                        Ok(_) => Ok(()),
                        // Gone already: it ran out, or an earlier try went through.
                        Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
                        Err(s) => Err(s),
                    }
                })
                .await;
            match revoked {
                Ok(()) => return,
                // By then etcd has let the lease run out on its own.
                Err(e) if started.elapsed() >= self.ttl * RESIGN_FOR => {
                    tracing::warn!(lease = id, error = %e, "cannot give the leader lease back; it runs out on its own");
                    return;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}

/// A resignation is tried for this many `leader_ttl`s (an etcd election
/// renews the lease once, in full).
const RESIGN_FOR: u32 = 3;

/// Who leads now, if anyone.
pub async fn leader(etcd: &Etcd) -> Result<Option<LeaderInfo>, StoreError> {
    Ok(leader_at(etcd).await?.0)
}

fn leader_of(kv: Option<&api::KeyValue>) -> Result<Option<LeaderInfo>, StoreError> {
    let Some(kv) = kv else { return Ok(None) };
    let mut info: LeaderInfo = serde_json::from_slice(&kv.value).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(&kv.key).into_owned(),
        reason: e.to_string(),
    })?;
    info.epoch = kv.create_revision;
    info.lease = kv.lease;
    Ok(Some(info))
}

/// Who leads now, and the store's revision of that answer.
async fn leader_at(etcd: &Etcd) -> Result<(Option<LeaderInfo>, i64), StoreError> {
    let request = RangeRequest {
        key: etcd.key(LEADER_KEY),
        ..Default::default()
    };
    let answer = etcd.range("reading the leader key", request).await?;
    let revision = answer.header.as_ref().map_or(0, |h| h.revision);
    Ok((leader_of(answer.kvs.first())?, revision))
}

/// Waits until this controller leads; `standing_by` hears each leader seen
/// meanwhile (and `None` while etcd cannot be reached or nobody leads).
/// Standbys learn a change of leader from a watch on the leader key, so
/// one campaigns the moment the old lease ends and every standby names the
/// new leader the moment it wins (never a dead one after it).
pub async fn campaign(
    etcd: Arc<Etcd>,
    me: LeaderInfo,
    mut standing_by: impl FnMut(Result<Option<LeaderInfo>, StoreError>),
) -> Leadership {
    let ttl = etcd.settings.leader_ttl;
    let poll = Duration::from_millis(200);
    loop {
        match leader_at(&etcd).await {
            Ok((None, _)) => match try_lead(&etcd, &me, ttl).await {
                Ok(Some(won)) => return won,
                // Another controller won the race: the next read names it.
                Ok(None) => {}
                Err(e) => {
                    standing_by(Err(e));
                    tokio::time::sleep(poll).await;
                }
            },
            Ok((Some(leader), revision)) => {
                standing_by(Ok(Some(leader.clone())));
                follow_leader(&etcd, leader, revision, &mut standing_by).await;
            }
            Err(e) => {
                standing_by(Err(e));
                tokio::time::sleep(poll).await;
            }
        }
    }
}

/// A leader whose presence (written every second, leader or standby) has
/// not moved for this long is dead or cut off, whatever etcd says of its
/// lease: it stood down by itself a third of its TTL before the lease
/// could end. etcd has been seen to keep an expired lease alive ~8 s past
/// its TTL (a raft leader change extends every lease); a standby then
/// revokes the lease itself, so failover stays bounded.
pub fn silence_deadline(leader_ttl: Duration) -> Duration {
    leader_ttl + super::presence::ANNOUNCE_EVERY
}

/// Follows the leader key from `revision` until the leader is gone (its key
/// deleted, or its lease revoked here after [`silence_deadline`] of
/// silence) or the watch breaks; each new leader goes to `standing_by`.
async fn follow_leader(
    etcd: &Arc<Etcd>,
    mut leader: LeaderInfo,
    revision: i64,
    standing_by: &mut impl FnMut(Result<Option<LeaderInfo>, StoreError>),
) {
    let key = etcd.key(LEADER_KEY);
    let mut events = etcd.watch_prefix(api::WatchRequest {
        request_union: Some(api::watch_request::RequestUnion::CreateRequest(
            api::WatchCreateRequest {
                key: key.clone(),
                range_end: Vec::new(),
                start_revision: revision + 1,
                progress_notify: false,
            },
        )),
    });
    let deadline = silence_deadline(etcd.settings.leader_ttl);
    // The leader's presence revision, and when (here) it last moved.
    let mut heard: Option<(i64, Instant)> = None;
    let mut check = tokio::time::interval(Duration::from_millis(250));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            got = events.recv() => {
                let Some(Ok(response)) = got else { return };
                if response.canceled || response.compact_revision > 0 {
                    return;
                }
                for event in response.events {
                    if event.r#type == api::event::EventType::Delete as i32 {
                        return;
                    }
                    match leader_of(event.kv.as_ref()) {
                        Ok(Some(next)) if next.epoch != leader.epoch => {
                            leader = next;
                            heard = None;
                            standing_by(Ok(Some(leader.clone())));
                        }
                        Ok(_) => {}
                        Err(e) => {
                            standing_by(Err(e));
                            return;
                        }
                    }
                }
            }
            _ = check.tick() => {
                // Judged only on an answer: a standby that cannot read
                // etcd revokes nothing, and says it cannot tell who leads.
                let seen = match super::presence::presence_revision(etcd, &leader.name).await {
                    Ok(seen) => seen,
                    Err(e) => {
                        standing_by(Err(e));
                        return;
                    }
                };
                let seen = seen.unwrap_or(0);
                match heard {
                    Some((at, since)) if at == seen => {
                        if since.elapsed() >= deadline {
                            revoke_silent(etcd, &leader, since.elapsed()).await;
                            return;
                        }
                    }
                    _ => heard = Some((seen, Instant::now())),
                }
                let silent = heard.is_some_and(|(_, since)| since.elapsed() >= SUSPECT_AFTER);
                if silent != leader.silent {
                    leader.silent = silent;
                    standing_by(Ok(Some(leader.clone())));
                }
            }
        }
    }
}

/// Revokes a silent leader's lease (its key goes with it).
async fn revoke_silent(etcd: &Etcd, leader: &LeaderInfo, silent: Duration) {
    tracing::warn!(
        leader = %leader.name,
        epoch = leader.epoch,
        lease = leader.lease,
        silent_ms = u64::try_from(silent.as_millis()).unwrap_or(u64::MAX),
        "the leader has not announced itself past its lease's TTL but etcd keeps its lease: revoking it"
    );
    let mut lease = etcd.lease();
    let id = leader.lease;
    if let Err(e) = etcd
        .call("revoking a silent leader's lease", async move {
            lease.lease_revoke(LeaseRevokeRequest { id }).await
        })
        .await
    {
        tracing::warn!(error = %e, "cannot revoke the silent leader's lease");
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
        ttl,
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
