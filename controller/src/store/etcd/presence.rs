//! Every controller says every second that it is there (`controllers/<name>`:
//! role, epoch, when), leader or standby: what `lockstep cluster status`
//! lists, and how a standby tells a dead leader from a live one
//! ([`super::election`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Etcd;
use super::api::{PutRequest, RangeRequest};
use crate::store::StoreError;

pub(crate) const PRESENCE: &str = "controllers/";
/// How often a controller says it is there.
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Presence {
    pub name: String,
    pub address: String,
    pub role: String,
    pub epoch: u64,
    pub seen_at_unix_ms: i64,
    /// Revisions its view is behind the store (see [`super::follow`]).
    #[serde(default)]
    pub ledger_lag_revisions: Option<i64>,
}

/// Writes this controller's presence. Not part of the ledger (unfenced):
/// a standby writes it too.
pub async fn announce(etcd: &Etcd, presence: &Presence) -> Result<(), StoreError> {
    let request = PutRequest {
        key: etcd.key(&format!("{PRESENCE}{}", presence.name)),
        value: serde_json::to_vec(presence).unwrap_or_default(),
        lease: 0,
    };
    let mut kv = etcd.kv();
    etcd.call("announcing this controller", async move {
        kv.put(request).await.map(|_| ())
    })
    .await
}

/// The revision `name`'s presence was last written at (`None`: never).
/// A standby watches the leader's advance (see [`super::election`]).
pub async fn presence_revision(etcd: &Etcd, name: &str) -> Result<Option<i64>, StoreError> {
    let request = RangeRequest {
        key: etcd.key(&format!("{PRESENCE}{name}")),
        keys_only: true,
        ..Default::default()
    };
    let found = etcd.range("reading the leader's presence", request).await?;
    Ok(found.kvs.first().map(|kv| kv.mod_revision))
}
