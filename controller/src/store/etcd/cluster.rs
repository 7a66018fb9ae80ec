//! What `lockstep cluster status` shows on etcd: every controller's
//! presence (each writes `controllers/<name>` every second: role, epoch,
//! when), the leader key, and each etcd member's own status.

use std::sync::Arc;

use lockstep_proto::pb;

use super::Etcd;
use super::api::{
    self, MemberListRequest, RangeRequest, StatusRequest, cluster_client::ClusterClient,
    maintenance_client::MaintenanceClient,
};
use super::election;
use super::presence::{PRESENCE, Presence};
use crate::store::StoreError;

/// The control plane as etcd sees it now.
pub async fn status(etcd: Arc<Etcd>) -> Result<pb::ClusterStatusReply, StoreError> {
    let leader = election::leader(&etcd).await?;
    let prefix = etcd.key(PRESENCE);
    let request = RangeRequest {
        key: prefix.clone(),
        range_end: super::prefix_end(&prefix),
        ..Default::default()
    };
    let found = etcd.range("reading the controllers", request).await?;
    let controllers = found
        .kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice::<Presence>(&kv.value).ok())
        .map(|p| pb::ControllerStatus {
            name: p.name,
            address: p.address,
            role: p.role,
            epoch: p.epoch,
            seen_at_unix_ms: p.seen_at_unix_ms,
            ledger_lag_revisions: p.ledger_lag_revisions,
        })
        .collect();
    let mut cluster = ClusterClient::new(etcd.channel.clone());
    let listed = etcd
        .call("listing etcd members", async move {
            cluster.member_list(MemberListRequest {}).await.map(|r| r.into_inner())
        })
        .await?;
    let mut members = Vec::new();
    for m in listed.members {
        members.push(member_status(&etcd, m).await);
    }
    let (name, address, epoch) = leader.map_or((String::new(), String::new(), 0), |l| (l.name, l.address, l.epoch));
    Ok(pb::ClusterStatusReply {
        backend: "etcd".into(),
        leader: name,
        leader_address: address,
        epoch: u64::try_from(epoch).unwrap_or(0),
        controllers,
        members,
        now_unix_ms: lockstep_proto::now_unix_ms(),
    })
}

async fn member_status(etcd: &Etcd, m: api::Member) -> pb::EtcdMemberStatus {
    let url = m.client_ur_ls.first().cloned().unwrap_or_default();
    let mut out = pb::EtcdMemberStatus {
        name: m.name.clone(),
        client_url: url.clone(),
        ..Default::default()
    };
    let address = url
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .to_string();
    let answer = match etcd.member_channel(&address) {
        Ok(channel) => {
            let mut maintenance = MaintenanceClient::new(channel);
            etcd.call("asking the member's status", async move {
                maintenance.status(StatusRequest {}).await.map(|r| r.into_inner())
            })
            .await
        }
        Err(e) => Err(e),
    };
    match answer {
        Ok(s) => {
            out.healthy = s.errors.is_empty();
            out.raft_leader = s.header.as_ref().is_some_and(|h| h.member_id == s.leader);
            out.db_size_bytes = s.db_size;
            out.raft_index = s.raft_index;
            out.error = s.errors.join("; ");
        }
        Err(e) => out.error = e.to_string(),
    }
    out
}
