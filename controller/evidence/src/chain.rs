//! The tamper-evident audit log. Every record carries the SHA-256 of the
//! record before it, so editing, deleting or reordering any record breaks
//! the chain from there on, and `lockstep audit verify` names the first
//! broken record.
//!
//! A record's hash is SHA-256 over `"lockstep.v1.audit\0"` followed by the
//! record's JSON with `hash` empty (fields in declaration order; `facts`
//! only when it is not empty, so records written before it existed keep
//! their hashes).

use ring::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};

use crate::action::AuditAction;

/// The hash the first record points back to.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    pub at_unix_ms: i64,
    /// Who: "alice (approver)", "agent smars-01", "controller".
    pub actor: String,
    /// What, dotted: "attestation.rejected", "gate.changed", "release.approved",
    /// "halt"... ([`AuditAction::as_str`]).
    pub action: String,
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub role: String,
    /// In words, for the person reading the log at 09:25.
    pub detail: String,
    /// The same fact for a program: compact JSON (see [`crate::facts`])
    /// that reports are derived from, covered by the hash like the rest.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub facts: String,
    pub prev_hash: String,
    pub hash: String,
}

/// Something to record; [`seal`] makes it a chained record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub actor: String,
    pub action: AuditAction,
    pub host: String,
    pub role: String,
    pub detail: String,
    pub facts: String,
}

impl AuditEvent {
    /// `action` by `actor`, about no one host or role, without facts.
    pub fn new(actor: impl Into<String>, action: AuditAction, detail: impl Into<String>) -> Self {
        Self {
            actor: actor.into(),
            action,
            host: String::new(),
            role: String::new(),
            detail: detail.into(),
            facts: String::new(),
        }
    }
}

/// The end of the chain: what the next record follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    pub next_seq: u64,
    pub last_hash: String,
}

impl ChainHead {
    pub fn after(last: Option<&AuditRecord>) -> Self {
        match last {
            Some(r) => Self {
                next_seq: r.seq + 1,
                last_hash: r.hash.clone(),
            },
            None => Self {
                next_seq: 1,
                last_hash: GENESIS.into(),
            },
        }
    }
}

pub fn hash_of(record: &AuditRecord) -> String {
    let unsealed = AuditRecord {
        hash: String::new(),
        ..record.clone()
    };
    let mut ctx = Context::new(&SHA256);
    ctx.update(b"lockstep.v1.audit\0");
    ctx.update(&serde_json::to_vec(&unsealed).unwrap_or_default());
    hex::encode(ctx.finish().as_ref())
}

/// Chains `events` after `head`, returning the records and the new head.
pub fn seal(head: &ChainHead, events: Vec<AuditEvent>, at_unix_ms: i64) -> (Vec<AuditRecord>, ChainHead) {
    let mut head = head.clone();
    let mut out = Vec::with_capacity(events.len());
    for e in events {
        let mut r = AuditRecord {
            seq: head.next_seq,
            at_unix_ms,
            actor: e.actor,
            action: e.action.as_str().to_string(),
            host: e.host,
            role: e.role,
            detail: e.detail,
            facts: e.facts,
            prev_hash: head.last_hash.clone(),
            hash: String::new(),
        };
        r.hash = hash_of(&r);
        head = ChainHead::after(Some(&r));
        out.push(r);
    }
    (out, head)
}

/// The first record where the chain does not hold, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit record {seq} is broken: {problem}")]
pub struct Broken {
    pub seq: u64,
    pub problem: String,
}

/// Checks the whole chain, in order from the first record.
pub fn verify(records: &[AuditRecord]) -> Result<(), Broken> {
    let mut head = ChainHead::after(None);
    for r in records {
        let broken = |problem: String| Broken { seq: r.seq, problem };
        if r.seq != head.next_seq {
            return Err(Broken {
                seq: head.next_seq,
                problem: format!("missing: the next record found is {}", r.seq),
            });
        }
        if r.prev_hash != head.last_hash {
            return Err(broken(
                "it does not follow the record before it (prev_hash differs)".into(),
            ));
        }
        if hash_of(r) != r.hash {
            return Err(broken("its content does not match its hash: it was edited".into()));
        }
        head = ChainHead::after(Some(r));
    }
    Ok(())
}

impl AuditRecord {
    pub fn to_pb(&self) -> lockstep_proto::pb::AuditRecord {
        lockstep_proto::pb::AuditRecord {
            seq: self.seq,
            at_unix_ms: self.at_unix_ms,
            actor: self.actor.clone(),
            action: self.action.clone(),
            host: self.host.clone(),
            role: self.role.clone(),
            detail: self.detail.clone(),
            facts: self.facts.clone(),
            prev_hash: self.prev_hash.clone(),
            hash: self.hash.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: usize) -> Vec<AuditRecord> {
        let events = (0..n)
            .map(|i| AuditEvent {
                actor: "alice (operator)".into(),
                action: crate::action::AuditAction::Halt,
                detail: format!("event {i}"),
                ..AuditEvent::new("", crate::action::AuditAction::Halt, "")
            })
            .collect();
        seal(&ChainHead::after(None), events, 1).0
    }

    #[test]
    fn an_intact_chain_verifies() {
        assert_eq!(verify(&chain(5)), Ok(()));
        assert_eq!(verify(&[]), Ok(()));
    }

    #[test]
    fn an_edit_a_deletion_and_a_reorder_are_each_named() {
        let mut edited = chain(5);
        edited[2].detail = "nothing happened".into();
        assert_eq!(verify(&edited).unwrap_err().seq, 3);
        assert!(verify(&edited).unwrap_err().problem.contains("edited"));

        let mut deleted = chain(5);
        deleted.remove(1);
        let err = verify(&deleted).unwrap_err();
        assert_eq!(
            (err.seq, err.problem.as_str()),
            (2, "missing: the next record found is 3")
        );

        // Re-hashing an edited record does not help: the next one no longer follows it.
        let mut rehashed = chain(5);
        rehashed[2].detail = "nothing happened".into();
        rehashed[2].hash = hash_of(&rehashed[2]);
        assert_eq!(verify(&rehashed).unwrap_err().seq, 4);
    }

    #[test]
    fn sealing_continues_an_existing_chain() {
        let first = chain(2);
        let head = ChainHead::after(first.last());
        let (more, _) = seal(
            &head,
            vec![AuditEvent::new(
                "controller",
                crate::action::AuditAction::GateChanged,
                "",
            )],
            2,
        );
        let all: Vec<_> = first.into_iter().chain(more).collect();
        assert_eq!(verify(&all), Ok(()));
        assert_eq!(all[2].seq, 3);
    }
}
