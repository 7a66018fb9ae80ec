//! An incident as stored (the incident book is [`crate::alerts::incidents`]).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// What the incident last told the outside world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Notified {
    #[default]
    Nothing,
    Firing,
    Resolved,
}

/// One incident, as stored and as listed by `lockstep alerts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncidentRecord {
    pub id: u64,
    /// Root cause key, e.g. `drift:smars:release-2`.
    pub key: String,
    pub role: String,
    /// The root cause in words, e.g. "release 2 missing".
    pub cause: String,
    /// Hosts in the role's inventory (the "of 8").
    pub role_hosts: usize,
    /// Hosts that have the cause now.
    pub hosts: BTreeSet<String>,
    /// Every host that had it while the incident was open.
    pub ever: BTreeSet<String>,
    /// Signals folded into this incident (1000 identical rejections: 1000).
    pub count: u64,
    /// The latest reason given, for the first host named.
    pub detail: String,
    pub opened_at_unix_ms: i64,
    pub last_seen_unix_ms: i64,
    /// 0 while any host still has the cause.
    pub resolved_at_unix_ms: i64,
    pub acked_by: Option<String>,
    pub acked_at_unix_ms: i64,
    pub notified: Notified,
}

impl IncidentRecord {
    pub fn is_resolved(&self) -> bool {
        self.resolved_at_unix_ms != 0
    }

    pub fn is_closed(&self) -> bool {
        self.is_resolved() && self.acked_by.is_some()
    }

    /// "release 2 missing on 3 of 8 smars hosts".
    pub fn title(&self) -> String {
        if self.role.is_empty() {
            return self.cause.clone();
        }
        let n = if self.is_resolved() {
            self.ever.len()
        } else {
            self.hosts.len()
        };
        format!("{} on {n} of {} {} hosts", self.cause, self.role_hosts, self.role)
    }

    pub fn to_pb(&self) -> lockstep_proto::pb::Incident {
        lockstep_proto::pb::Incident {
            id: self.id,
            key: self.key.clone(),
            title: self.title(),
            role: self.role.clone(),
            hosts: self.hosts.iter().cloned().collect(),
            ever: self.ever.iter().cloned().collect(),
            count: self.count,
            detail: self.detail.clone(),
            opened_at_unix_ms: self.opened_at_unix_ms,
            last_seen_unix_ms: self.last_seen_unix_ms,
            resolved_at_unix_ms: self.resolved_at_unix_ms,
            acked_by: self.acked_by.clone().unwrap_or_default(),
            acked_at_unix_ms: self.acked_at_unix_ms,
            see: self.see(),
        }
    }

    /// The console command that shows more about this incident.
    pub fn see(&self) -> String {
        let host = self.hosts.iter().next().or_else(|| self.ever.iter().next());
        let kind = self.key.split(':').next().unwrap_or_default();
        match (kind, host) {
            ("audit", _) => "lockstep audit verify".into(),
            ("siem", _) => "lockstep_siem_lag_records and lockstep_siem_connected on the controller's /metrics".into(),
            ("store", _) => "lockstep cluster status".into(),
            ("halted", _) => "lockstep halts".into(),
            ("drift", Some(h)) if self.key.contains(":release-") => format!("lockstep diff {h} --release"),
            ("rejected", Some(h)) => format!("lockstep audit --host {h}"),
            (_, Some(h)) => format!("lockstep host {h}"),
            (_, None) => format!("lockstep gate check --role {}", self.role),
        }
    }
}

impl From<&IncidentRecord> for lockstep_evidence::facts::IncidentFact {
    fn from(i: &IncidentRecord) -> Self {
        Self {
            id: i.id,
            title: i.title(),
            role: i.role.clone(),
            opened_at_unix_ms: i.opened_at_unix_ms,
            resolved_at_unix_ms: i.resolved_at_unix_ms,
            acked_by: i.acked_by.clone().unwrap_or_default(),
            acked_at_unix_ms: i.acked_at_unix_ms,
        }
    }
}
