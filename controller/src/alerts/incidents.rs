//! Incidents: failures grouped by root cause, so one bad deploy is one alert
//! ("release 2 missing on 3 of 8 smars hosts"), not one per host or one per
//! attestation. Pure bookkeeping: the caller supplies signals and the time;
//! [`Incidents::due`] says which notifications to send.
//!
//! Life of an incident: opened by the first host (or rejection) with a root
//! cause; hosts join and leave it; it is *resolved* when no host has the cause
//! any more; it is *closed* (gone from `lockstep alerts`) only once it is both
//! resolved and acknowledged, so a problem cannot scroll away unread.
//! Notifications wait `group_wait` for related signals to arrive, and a
//! repeat of the same condition only raises the count.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::store::{IncidentRecord, Notified};
use lockstep_proto::pb::{Gate, GateState, ReasonKind};

/// A root cause: the key incidents are grouped by, and its words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    pub key: String,
    pub words: String,
    pub detail: String,
}

/// The root cause of a non-OPEN gate: its first reason (reasons come in
/// priority order: halts, rejection, staleness, comparison, processes,
/// retired flags). `None` for an OPEN gate.
pub fn cause_of(gate: &Gate) -> Option<Cause> {
    if gate.state() == GateState::Open {
        return None;
    }
    let role = &gate.role;
    let first = gate.reasons.first();
    let kind = first.map_or(ReasonKind::Unspecified, |r| r.kind());
    let detail = first.map(|r| format!("{}: {}", gate.host, r.text)).unwrap_or_default();
    let (key, words) = match kind {
        ReasonKind::Halted => (format!("halted:{role}"), "trading halted".to_string()),
        ReasonKind::Rejected => (format!("rejected:{role}"), "attestations rejected".into()),
        ReasonKind::Stale => (format!("stale:{role}"), "no fresh attestation (stale)".into()),
        ReasonKind::Missing => (format!("missing:{role}"), "never reported (MISSING)".into()),
        ReasonKind::Drift if gate.release != 0 => (
            format!("drift:{role}:release-{}", gate.release),
            format!("release {} missing", gate.release),
        ),
        ReasonKind::Drift => (format!("drift:{role}:majority"), "differs from the majority".into()),
        ReasonKind::NoRelease => (format!("norelease:{role}"), "no approved release".into()),
        ReasonKind::NoMajority => (format!("nomajority:{role}"), "no majority version set".into()),
        ReasonKind::NotEnrolled => (format!("notenrolled:{role}"), "not enrolled".into()),
        ReasonKind::Process => (
            format!("process:{role}"),
            "running code the expected set does not name".into(),
        ),
        ReasonKind::RetiredFlag => (format!("retired:{role}"), "retired flag set".into()),
        ReasonKind::Revoked => (format!("revoked:{role}"), "revoked".into()),
        ReasonKind::Boot => (format!("boot:{role}"), "boot state not attested (TPM)".into()),
        ReasonKind::Unspecified => (format!("closed:{role}"), "gate closed".into()),
    };
    Some(Cause { key, words, detail })
}

/// Something that happened, as the incident book sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// A host's gate was decided with a new state or root cause (`cause`
    /// is `None` when it is OPEN).
    Gate {
        host: String,
        role: String,
        role_hosts: usize,
        cause: Option<Cause>,
    },
    /// One attestation was refused (each one counts).
    Rejected {
        host: String,
        role: String,
        role_hosts: usize,
        detail: String,
    },
    /// The audit chain failed verification.
    AuditBroken { detail: String },
    /// The SIEM collector cannot be reached (or refused us): the audit log
    /// is not reaching the firm's SIEM.
    SiemUnreachable { address: String, detail: String },
    /// The SIEM collector takes records again.
    SiemReachable,
    /// The store has grown past the share of its quota that warns.
    StoreFilling { detail: String },
    /// The store is back below it.
    StoreRoomy,
}

/// A notification to send: the incident as it is now, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub status: Notified,
    /// True when the incident had already fired: this is an update.
    pub update: bool,
    pub record: IncidentRecord,
}

#[derive(Debug)]
struct Incident {
    record: IncidentRecord,
    /// (first, last) unnotified change.
    pending: Option<(i64, i64)>,
}

impl Incident {
    fn touch(&mut self, now: i64) {
        self.pending = Some((self.pending.map_or(now, |p| p.0), now));
    }
}

/// Every incident not yet closed, by id, with indexes by cause and host.
#[derive(Debug, Default)]
pub struct Incidents {
    open: BTreeMap<u64, Incident>,
    by_key: HashMap<String, u64>,
    /// The incident each failing host is in (a host has one root cause).
    host_in: HashMap<String, u64>,
    next_id: u64,
}

impl Incidents {
    /// Rebuilds the book from stored incidents (closed ones only raise the id).
    pub fn load(records: Vec<IncidentRecord>) -> Self {
        let mut book = Self {
            next_id: 1,
            ..Default::default()
        };
        for r in records {
            book.next_id = book.next_id.max(r.id + 1);
            if r.is_closed() {
                continue;
            }
            if !r.is_resolved() {
                for h in &r.hosts {
                    book.host_in.insert(h.clone(), r.id);
                }
            }
            book.by_key.insert(r.key.clone(), r.id);
            book.open.insert(
                r.id,
                Incident {
                    record: r,
                    pending: None,
                },
            );
        }
        book
    }

    /// Incidents not yet closed (unacknowledged, or still active), oldest first.
    pub fn list(&self) -> Vec<IncidentRecord> {
        self.open.values().map(|i| i.record.clone()).collect()
    }

    /// Open incidents: not yet closed.
    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    pub fn observe(&mut self, signal: Signal, now: i64) {
        match signal {
            Signal::Gate {
                host,
                role,
                role_hosts,
                cause,
            } => match cause {
                None => self.leave(&host, now),
                Some(cause) => {
                    if self
                        .host_in
                        .get(&host)
                        .and_then(|id| self.open.get(id))
                        .is_some_and(|i| i.record.key == cause.key)
                    {
                        return; // Already counted under this cause.
                    }
                    self.leave(&host, now);
                    self.join(&cause, &host, &role, role_hosts, now);
                }
            },
            Signal::Rejected {
                host,
                role,
                role_hosts,
                detail,
            } => {
                let cause = Cause {
                    key: format!("rejected:{role}"),
                    words: "attestations rejected".into(),
                    detail: format!("{host}: {detail}"),
                };
                let already = self
                    .host_in
                    .get(&host)
                    .and_then(|id| self.open.get(id))
                    .is_some_and(|i| i.record.key == cause.key);
                if already {
                    if let Some(i) = self.host_in.get(&host).and_then(|id| self.open.get_mut(id)) {
                        i.record.count += 1;
                        i.record.last_seen_unix_ms = now;
                        i.record.detail = cause.detail;
                        // A storm not yet reported keeps the report waiting
                        // (up to max_wait) so it goes out with the full count.
                        if i.record.notified == Notified::Nothing {
                            i.touch(now);
                        }
                    }
                    return;
                }
                self.leave(&host, now);
                self.join(&cause, &host, &role, role_hosts, now);
            }
            Signal::SiemUnreachable { address, detail } => self.condition(
                Cause {
                    key: "siem".into(),
                    words: format!("the audit log is not reaching the SIEM collector at {address}"),
                    detail,
                },
                now,
            ),
            Signal::SiemReachable => self.condition_gone("siem", now),
            Signal::StoreFilling { detail } => self.condition(
                Cause {
                    key: "store".into(),
                    words: format!("the store is filling up: {detail}"),
                    detail,
                },
                now,
            ),
            Signal::StoreRoomy => self.condition_gone("store", now),
            Signal::AuditBroken { detail } => {
                let cause = Cause {
                    key: "audit".into(),
                    words: format!("audit log fails verification: {detail}"),
                    detail,
                };
                let id = self.incident_for(&cause, "", 0, now);
                if let Some(i) = self.open.get_mut(&id) {
                    if i.record.count == 0 || i.record.is_resolved() {
                        i.touch(now);
                    }
                    i.record.count += 1;
                    i.record.resolved_at_unix_ms = 0;
                    i.record.last_seen_unix_ms = now;
                    i.record.detail = cause.detail;
                }
            }
        }
    }

    /// A controller-wide condition holds (it is reported once, and again
    /// only after it went away).
    fn condition(&mut self, cause: Cause, now: i64) {
        let id = self.incident_for(&cause, "", 0, now);
        if let Some(i) = self.open.get_mut(&id) {
            if i.record.count == 0 || i.record.is_resolved() {
                i.record.count += 1;
                i.record.resolved_at_unix_ms = 0;
                i.record.detail = cause.detail;
                i.touch(now);
            }
            i.record.last_seen_unix_ms = now;
        }
    }

    /// The condition under `key` no longer holds.
    fn condition_gone(&mut self, key: &str, now: i64) {
        let open = self.by_key.get(key).and_then(|id| self.open.get_mut(id));
        if let Some(i) = open.filter(|i| !i.record.is_resolved()) {
            i.record.resolved_at_unix_ms = now;
            i.touch(now);
        }
    }

    /// The not-yet-closed incident for `cause`, reopened if it had
    /// resolved without an acknowledgement, or a new one.
    fn incident_for(&mut self, cause: &Cause, role: &str, role_hosts: usize, now: i64) -> u64 {
        if let Some(&id) = self.by_key.get(&cause.key) {
            return id;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.by_key.insert(cause.key.clone(), id);
        self.open.insert(
            id,
            Incident {
                record: IncidentRecord {
                    id,
                    key: cause.key.clone(),
                    role: role.to_string(),
                    cause: cause.words.clone(),
                    role_hosts,
                    hosts: BTreeSet::new(),
                    ever: BTreeSet::new(),
                    count: 0,
                    detail: cause.detail.clone(),
                    opened_at_unix_ms: now,
                    last_seen_unix_ms: now,
                    resolved_at_unix_ms: 0,
                    acked_by: None,
                    acked_at_unix_ms: 0,
                    notified: Notified::Nothing,
                },
                pending: None,
            },
        );
        id
    }

    fn join(&mut self, cause: &Cause, host: &str, role: &str, role_hosts: usize, now: i64) {
        let id = self.incident_for(cause, role, role_hosts, now);
        let Some(i) = self.open.get_mut(&id) else { return };
        let r = &mut i.record;
        if r.is_resolved() {
            // It came back before anyone acknowledged it: same incident.
            r.resolved_at_unix_ms = 0;
            r.hosts.clear();
        }
        r.hosts.insert(host.to_string());
        r.ever.insert(host.to_string());
        r.count += 1;
        r.role_hosts = role_hosts;
        r.last_seen_unix_ms = now;
        r.detail = cause.detail.clone();
        i.touch(now);
        self.host_in.insert(host.to_string(), id);
    }

    /// `host` no longer has the cause of the incident it was in.
    fn leave(&mut self, host: &str, now: i64) {
        let Some(id) = self.host_in.remove(host) else { return };
        let Some(i) = self.open.get_mut(&id) else { return };
        i.record.hosts.remove(host);
        if i.record.hosts.is_empty() && !i.record.is_resolved() {
            i.record.resolved_at_unix_ms = now;
            i.touch(now);
        }
    }

    /// Records an operator's acknowledgement; a resolved incident closes.
    /// The current record of an open incident.
    pub fn record(&self, id: u64) -> Option<IncidentRecord> {
        self.open.get(&id).map(|i| i.record.clone())
    }

    /// The acknowledged record; `None` when no incident `id` is open.
    pub fn ack(&mut self, id: u64, by: &str, now: i64) -> Option<IncidentRecord> {
        let i = self.open.get_mut(&id)?;
        if i.record.acked_by.is_none() {
            i.record.acked_by = Some(by.to_string());
            i.record.acked_at_unix_ms = now;
        }
        let record = i.record.clone();
        if record.is_closed() {
            self.close(id);
        }
        Some(record)
    }

    fn close(&mut self, id: u64) {
        if let Some(i) = self.open.remove(&id) {
            self.by_key.remove(&i.record.key);
            for h in &i.record.hosts {
                if self.host_in.get(h) == Some(&id) {
                    self.host_in.remove(h);
                }
            }
        }
    }

    /// Notifications whose grouping time has passed. An incident that
    /// resolved before it ever fired is dropped without a word (the gate
    /// changes stay in the audit log); one that is resolved and acknowledged
    /// closes once its resolution is sent.
    pub fn due(&mut self, now: i64, g: crate::config::Grouping) -> Vec<Due> {
        let mut out = Vec::new();
        let mut drop_ids = Vec::new();
        for (id, i) in &mut self.open {
            let Some((first, last)) = i.pending else { continue };
            if now - last < g.wait_ms && now - first < g.max_wait_ms {
                continue;
            }
            i.pending = None;
            let r = &mut i.record;
            let status = if r.is_resolved() {
                if r.notified == Notified::Nothing {
                    drop_ids.push(*id);
                    continue;
                }
                Notified::Resolved
            } else {
                Notified::Firing
            };
            let update = status == Notified::Firing && r.notified == Notified::Firing;
            r.notified = status;
            out.push(Due {
                status,
                update,
                record: r.clone(),
            });
            if r.is_closed() {
                drop_ids.push(*id);
            }
        }
        for id in drop_ids {
            self.close(id);
        }
        out
    }
}

#[cfg(test)]
#[path = "incidents_tests.rs"]
mod tests;
