//! A role's gates as the audit log keeps them between checks: a
//! `gate.checked` record names the state it rests on by seq and digest,
//! and `gate.state` records hold that state only when it changed, as the
//! hosts that changed on top of an earlier state (`base`), or complete
//! (`base` 0). A check of an unchanged role then costs a few bytes, and one
//! after a change costs the hosts that changed. The writer starts a
//! complete state often enough ([`MAX_DELTAS`], and at least once a day) that
//! finding one is a short walk back.

use std::collections::BTreeMap;

use ring::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};

use crate::action::AuditAction;
use crate::chain::AuditRecord;
pub use crate::facts::StateRef;
use crate::facts::{HostFact, from_facts};

/// At most this many changes are written on top of one complete state
/// before the next complete one.
pub const MAX_DELTAS: usize = 32;

/// A complete state is written again once the last one is this old, so a
/// day's report reaches back at most a day before its first record.
pub const MAX_AGE_MS: i64 = 24 * 3_600_000;

/// `gate.state`: the role's hosts after a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct GateState {
    pub role: String,
    /// [`digest`] of every host of the role after this record.
    pub digest: String,
    /// The `gate.state` record this one changes (0: this one is complete).
    pub base: u64,
    /// The hosts that differ from `base` (every host when complete).
    pub hosts: Vec<HostFact>,
    /// Hosts in `base` that are no longer in the role.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error(
        "audit record {seq} (a gate.state the report rests on) is not among the records given: export the log from before it"
    )]
    Missing { seq: u64 },
    #[error("audit record {seq} is not a gate.state of role {role} with facts")]
    NotAState { seq: u64, role: String },
    #[error(
        "the gate state in audit record {seq} does not add up: its hosts have digest {found}, the record says {said}"
    )]
    Digest { seq: u64, found: String, said: String },
    #[error("the gate states before audit record {seq} do not reach a complete one within {MAX_DELTAS} records")]
    TooLong { seq: u64 },
}

/// SHA-256 (hex) over `"lockstep.v1.gate-state\0"` and the hosts, sorted
/// by name, as a compact JSON array.
pub fn digest(hosts: &BTreeMap<String, HostFact>) -> String {
    let list: Vec<&HostFact> = hosts.values().collect();
    let mut ctx = Context::new(&SHA256);
    ctx.update(b"lockstep.v1.gate-state\0");
    ctx.update(&serde_json::to_vec(&list).unwrap_or_default());
    hex::encode(ctx.finish().as_ref())
}

/// The `gate.state` records a state rests on, from the complete one to
/// the one at `seq`, read through `lookup` (by seq).
pub fn chain<E>(
    role: &str,
    seq: u64,
    mut lookup: impl FnMut(u64) -> Result<Option<AuditRecord>, E>,
) -> Result<Result<Vec<(u64, GateState)>, StateError>, E> {
    let mut out = Vec::new();
    let mut at = seq;
    loop {
        let Some(record) = lookup(at)?.filter(|r| r.seq == at) else {
            return Ok(Err(StateError::Missing { seq: at }));
        };
        let state = (AuditAction::GateState.is(&record.action) && record.role == role)
            .then(|| from_facts::<GateState>(&record.facts))
            .flatten()
            .filter(|s| s.role == role && s.base < at);
        let Some(state) = state else {
            return Ok(Err(StateError::NotAState {
                seq: at,
                role: role.into(),
            }));
        };
        let base = state.base;
        out.push((at, state));
        if base == 0 {
            out.reverse();
            return Ok(Ok(out));
        }
        if out.len() > MAX_DELTAS {
            return Ok(Err(StateError::TooLong { seq }));
        }
        at = base;
    }
}

/// The hosts after a chain of states (as [`chain`] returns it), each
/// step's digest checked.
pub fn apply(chain: &[(u64, GateState)]) -> Result<BTreeMap<String, HostFact>, StateError> {
    let mut hosts = BTreeMap::new();
    for (seq, state) in chain {
        if state.base == 0 {
            hosts.clear();
        }
        for gone in &state.removed {
            hosts.remove(gone);
        }
        for h in &state.hosts {
            hosts.insert(h.host.clone(), h.clone());
        }
        let found = digest(&hosts);
        if found != state.digest {
            return Err(StateError::Digest {
                seq: *seq,
                found,
                said: state.digest.clone(),
            });
        }
    }
    Ok(hosts)
}

/// What a writer keeps of a role's last written state, to write the next
/// one as a change on top of it.
#[derive(Debug, Clone, Default)]
pub struct Written {
    pub seq: u64,
    pub digest: String,
    pub hosts: BTreeMap<String, HostFact>,
    /// States written on top of the last complete one.
    pub deltas: usize,
    /// Hosts written since the last complete one.
    pub changed_hosts: usize,
    pub complete_at_unix_ms: i64,
}

/// The `gate.state` to write for `hosts` after `last` (None: `hosts` is
/// what `last` holds, nothing to write).
pub fn next(
    role: &str,
    last: Option<&Written>,
    hosts: &BTreeMap<String, HostFact>,
    now_unix_ms: i64,
) -> Option<GateState> {
    let digest = digest(hosts);
    if last.is_some_and(|l| l.digest == digest) {
        return None;
    }
    let changed: Vec<HostFact> = match last {
        Some(l) => hosts
            .values()
            .filter(|h| l.hosts.get(&h.host) != Some(*h))
            .cloned()
            .collect(),
        None => Vec::new(),
    };
    let delta = last.filter(|l| {
        l.deltas < MAX_DELTAS
            && l.changed_hosts + changed.len() < hosts.len().max(1)
            && now_unix_ms - l.complete_at_unix_ms < MAX_AGE_MS
    });
    Some(match delta {
        Some(l) => GateState {
            role: role.into(),
            digest,
            base: l.seq,
            hosts: changed,
            removed: l.hosts.keys().filter(|h| !hosts.contains_key(*h)).cloned().collect(),
        },
        None => GateState {
            role: role.into(),
            digest,
            base: 0,
            hosts: hosts.values().cloned().collect(),
            removed: Vec::new(),
        },
    })
}

/// `last` after `state` was written at `seq`.
pub fn written(
    last: Option<Written>,
    state: &GateState,
    seq: u64,
    hosts: BTreeMap<String, HostFact>,
    now_unix_ms: i64,
) -> Written {
    match (state.base, last) {
        (0, _) | (_, None) => Written {
            seq,
            digest: state.digest.clone(),
            hosts,
            deltas: 0,
            changed_hosts: 0,
            complete_at_unix_ms: now_unix_ms,
        },
        (_, Some(l)) => Written {
            seq,
            digest: state.digest.clone(),
            hosts,
            deltas: l.deltas + 1,
            changed_hosts: l.changed_hosts + state.hosts.len() + state.removed.len(),
            complete_at_unix_ms: l.complete_at_unix_ms,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::{AuditEvent, ChainHead, seal};

    fn host(name: &str, gate: &str) -> HostFact {
        HostFact {
            host: name.into(),
            gate: gate.into(),
            digest: "ab".repeat(32),
            ..HostFact::default()
        }
    }

    fn fleet(gates: &[(&str, &str)]) -> BTreeMap<String, HostFact> {
        gates.iter().map(|(h, g)| (h.to_string(), host(h, g))).collect()
    }

    /// Writes states as a controller would, returning the records.
    fn write(states: &[BTreeMap<String, HostFact>]) -> (Vec<AuditRecord>, Vec<Option<u64>>) {
        let mut records: Vec<AuditRecord> = Vec::new();
        let mut head = ChainHead::after(None);
        let mut last: Option<Written> = None;
        let mut seqs = Vec::new();
        for hosts in states {
            match next("smars", last.as_ref(), hosts, 0) {
                None => seqs.push(None),
                Some(state) => {
                    let event = AuditEvent {
                        role: "smars".into(),
                        facts: crate::facts::to_facts(&state),
                        ..AuditEvent::new("controller", AuditAction::GateState, "")
                    };
                    let (r, h) = seal(&head, vec![event], 0);
                    head = h;
                    let seq = r[0].seq;
                    records.extend(r);
                    last = Some(written(last, &state, seq, hosts.clone(), 0));
                    seqs.push(Some(seq));
                }
            }
        }
        (records, seqs)
    }

    fn lookup(records: &[AuditRecord]) -> impl FnMut(u64) -> Result<Option<AuditRecord>, ()> + '_ {
        |seq| Ok(records.iter().find(|r| r.seq == seq).cloned())
    }

    #[test]
    fn an_unchanged_state_is_not_written_and_a_change_writes_only_what_changed() {
        let a = fleet(&[("s-1", "OPEN"), ("s-2", "OPEN"), ("s-3", "OPEN")]);
        let mut b = a.clone();
        b.insert("s-3".into(), host("s-3", "CLOSED"));
        let (records, seqs) = write(&[a.clone(), a.clone(), b.clone(), b.clone()]);
        assert_eq!(seqs, vec![Some(1), None, Some(2), None]);
        let delta: GateState = from_facts(&records[1].facts).unwrap();
        assert_eq!((delta.base, delta.hosts.len()), (1, 1), "only s-3 is written again");
        let chain = chain("smars", 2, lookup(&records)).unwrap().unwrap();
        assert_eq!(apply(&chain).unwrap(), b);
    }

    #[test]
    fn removed_hosts_leave_and_a_complete_state_comes_after_enough_changes() {
        let names: Vec<String> = (0..40).map(|i| format!("s-{i:02}")).collect();
        let all: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "OPEN")).collect();
        let mut states = vec![fleet(&all), fleet(&all[1..])];
        for i in 0..2 * MAX_DELTAS {
            let mut s = fleet(&all[1..]);
            s.insert("s-01".into(), host("s-01", if i % 2 == 0 { "CLOSED" } else { "OPEN" }));
            states.push(s);
        }
        let (records, seqs) = write(&states);
        let removed: GateState = from_facts(&records[1].facts).unwrap();
        assert_eq!((removed.base, removed.removed.clone()), (1, vec!["s-00".to_string()]));
        let mut complete = 0;
        for (i, seq) in seqs.iter().enumerate() {
            let chain = chain("smars", seq.unwrap(), lookup(&records)).unwrap().unwrap();
            assert!(chain.len() <= MAX_DELTAS + 1, "state {i}: {} records back", chain.len());
            assert_eq!(apply(&chain).unwrap(), states[i], "state {i}");
            complete += usize::from(chain.len() == 1);
        }
        assert!(complete >= 2, "a complete state again after {MAX_DELTAS} changes");
    }

    #[test]
    fn a_missing_an_edited_or_a_foreign_state_is_named() {
        let a = fleet(&[("s-1", "OPEN"), ("s-2", "OPEN"), ("s-3", "OPEN")]);
        let b = fleet(&[("s-1", "CLOSED"), ("s-2", "OPEN"), ("s-3", "OPEN")]);
        let (records, _) = write(&[a, b]);
        assert_eq!(
            chain("smars", 2, lookup(&records[1..])).unwrap(),
            Err(StateError::Missing { seq: 1 })
        );
        assert_eq!(
            chain("other", 2, lookup(&records)).unwrap(),
            Err(StateError::NotAState {
                seq: 2,
                role: "other".into()
            })
        );
        let mut edited = records.clone();
        let mut state: GateState = from_facts(&edited[1].facts).unwrap();
        state.hosts[0].gate = "OPEN".into();
        edited[1].facts = crate::facts::to_facts(&state);
        let chain = chain("smars", 2, lookup(&edited)).unwrap().unwrap();
        assert!(matches!(apply(&chain), Err(StateError::Digest { seq: 2, .. })));
    }
}
