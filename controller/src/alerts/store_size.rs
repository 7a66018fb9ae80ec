//! Watching the store's size: `lockstep_store_bytes`, and on etcd an
//! incident at 70 % of its quota. Past the quota etcd refuses every write,
//! so no attestation is stored and every gate closes when its lease ends:
//! the incident comes well before, while compaction and defragmentation
//! (docs/ha.md) still help.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use crate::alerts::Alerts;
use crate::alerts::incidents::Signal;
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::store::StoreSize;

/// How often the size is read (one Status call to etcd, or a walk of
/// sled's files).
pub const EVERY: Duration = Duration::from_secs(30);

/// The share of the quota at which the incident opens.
pub const WARN_PERCENT: u64 = 70;

/// What a size means: filling (with the words an operator reads) or not.
pub fn judge(size: StoreSize) -> Signal {
    if size.quota_bytes == 0 || size.bytes.saturating_mul(100) < size.quota_bytes.saturating_mul(WARN_PERCENT) {
        return Signal::StoreRoomy;
    }
    let mib = |b: u64| b >> 20;
    Signal::StoreFilling {
        detail: format!(
            "etcd's database is {} MiB, {} % of its {} MiB quota (store.etcd.quota_mib); past the quota etcd refuses every write and every gate closes: compact and defragment etcd now, or raise --quota-backend-bytes with store.etcd.quota_mib (docs/ha.md, sizing)",
            mib(size.bytes),
            size.bytes.saturating_mul(100) / size.quota_bytes.max(1),
            mib(size.quota_bytes)
        ),
    }
}

/// Reads the size every [`EVERY`] until `stop`.
pub async fn run(ledger: Arc<Ledger>, alerts: Arc<Alerts>, metrics: Arc<Metrics>, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = &mut stop => return,
        }
        let reader = ledger.clone();
        let size = tokio::task::spawn_blocking(move || reader.store().size()).await;
        match size {
            Ok(Ok(size)) => {
                failing = false;
                metrics.store_bytes.set(i64::try_from(size.bytes).unwrap_or(i64::MAX));
                metrics
                    .store_quota_bytes
                    .set(i64::try_from(size.quota_bytes).unwrap_or(i64::MAX));
                let signal = judge(size);
                if let Signal::StoreFilling { detail } = &signal {
                    warn!(bytes = size.bytes, quota_bytes = size.quota_bytes, "{detail}");
                }
                alerts.signal(signal);
            }
            // Not an incident of its own: a store that cannot answer is
            // already one (writes fail, the leader stands down).
            Ok(Err(e)) if !std::mem::replace(&mut failing, true) => {
                warn!(error = %e, "cannot read the store's size");
            }
            Ok(Err(_)) => {}
            Err(e) => warn!(error = %e, "the store size task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_incident_opens_at_70_percent_of_the_quota_and_never_on_sled() {
        let size = |bytes, quota_bytes| judge(StoreSize { bytes, quota_bytes });
        assert_eq!(size(u64::MAX, 0), Signal::StoreRoomy, "sled has no quota");
        assert_eq!(size(699 << 20, 1000 << 20), Signal::StoreRoomy);
        let Signal::StoreFilling { detail } = size(700 << 20, 1000 << 20) else {
            panic!("70 % of the quota must open the incident");
        };
        assert!(detail.contains("700 MiB, 70 % of its 1000 MiB quota"), "{detail}");
        assert!(detail.contains("compact and defragment"), "{detail}");
    }
}
