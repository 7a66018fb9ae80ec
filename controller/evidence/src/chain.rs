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
    /// When the last record was sealed: no later record is sealed earlier,
    /// so a day's records are one stretch of the chain, found by seq.
    pub last_at_unix_ms: i64,
}

impl ChainHead {
    pub fn after(last: Option<&AuditRecord>) -> Self {
        match last {
            Some(r) => Self {
                next_seq: r.seq + 1,
                last_hash: r.hash.clone(),
                last_at_unix_ms: r.at_unix_ms,
            },
            None => Self {
                next_seq: 1,
                last_hash: GENESIS.into(),
                last_at_unix_ms: 0,
            },
        }
    }
}

/// [`AuditRecord`] with `hash` empty, borrowed: what the hash covers,
/// field for field as [`AuditRecord`] serializes.
#[derive(Serialize)]
struct Unsealed<'a> {
    seq: u64,
    at_unix_ms: i64,
    actor: &'a str,
    action: &'a str,
    host: &'a str,
    role: &'a str,
    detail: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    facts: &'a str,
    prev_hash: &'a str,
    hash: &'a str,
}

/// Feeds what is written straight into the digest.
struct Digesting(Context);

impl std::io::Write for Digesting {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The record's hash. Its JSON is streamed into the digest, never built:
/// a 10,000-host gate state is megabytes, and a copy of it (and of its
/// JSON) per record checked was most of what verifying a page cost.
pub fn hash_of(record: &AuditRecord) -> String {
    let unsealed = Unsealed {
        seq: record.seq,
        at_unix_ms: record.at_unix_ms,
        actor: &record.actor,
        action: &record.action,
        host: &record.host,
        role: &record.role,
        detail: &record.detail,
        facts: &record.facts,
        prev_hash: &record.prev_hash,
        hash: "",
    };
    let mut digesting = Digesting(Context::new(&SHA256));
    digesting.0.update(b"lockstep.v1.audit\0");
    // Writing to a digest cannot fail, and these fields always serialize.
    let _ = serde_json::to_writer(&mut digesting, &unsealed);
    hex::encode(digesting.0.finish().as_ref())
}

/// Chains `events` after `head`, returning the records and the new head.
/// A clock stepped back does not take the log back with it: a record is
/// never sealed earlier than the one before it.
pub fn seal(head: &ChainHead, events: Vec<AuditEvent>, at_unix_ms: i64) -> (Vec<AuditRecord>, ChainHead) {
    let at_unix_ms = at_unix_ms.max(head.last_at_unix_ms);
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
    let mut check = ChainCheck::from_start();
    records.iter().try_for_each(|r| check.next(r))
}

/// Checks a chain record by record, so a log of any length is verified in
/// the memory of one page, and a later check goes on from where the last
/// one ended instead of from the first record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainCheck {
    head: ChainHead,
    checked: u64,
}

impl ChainCheck {
    /// Expects the first record of the log.
    pub fn from_start() -> Self {
        Self::after(ChainHead::after(None))
    }

    /// Expects the record that follows `head` (one already checked).
    pub fn after(head: ChainHead) -> Self {
        Self { head, checked: 0 }
    }

    /// The next record, in order.
    pub fn next(&mut self, r: &AuditRecord) -> Result<(), Broken> {
        let broken = |problem: String| Broken { seq: r.seq, problem };
        if r.seq != self.head.next_seq {
            return Err(Broken {
                seq: self.head.next_seq,
                problem: format!("missing: the next record found is {}", r.seq),
            });
        }
        if r.prev_hash != self.head.last_hash {
            return Err(broken(
                "it does not follow the record before it (prev_hash differs)".into(),
            ));
        }
        if hash_of(r) != r.hash {
            return Err(broken("its content does not match its hash: it was edited".into()));
        }
        self.head = ChainHead::after(Some(r));
        self.checked += 1;
        Ok(())
    }

    /// The last record that held, as the head the next check starts from.
    pub fn head(&self) -> &ChainHead {
        &self.head
    }

    /// How many records this check has passed.
    pub fn checked(&self) -> u64 {
        self.checked
    }
}

impl AuditRecord {
    /// One record of an export, an archive file or a checkpoint file (JSON),
    /// read strictly ([`crate::strict_json`]): no member twice, none the
    /// format does not have, integers only.
    pub fn from_json(text: &str) -> Result<Self, String> {
        crate::strict_json::from_str(
            text,
            &[
                "seq",
                "at_unix_ms",
                "actor",
                "action",
                "host",
                "role",
                "detail",
                "facts",
                "prev_hash",
                "hash",
            ],
        )
    }

    /// A record as `ListAudit` answered it.
    pub fn from_pb(r: &lockstep_proto::pb::AuditRecord) -> Self {
        Self {
            seq: r.seq,
            at_unix_ms: r.at_unix_ms,
            actor: r.actor.clone(),
            action: r.action.clone(),
            host: r.host.clone(),
            role: r.role.clone(),
            detail: r.detail.clone(),
            facts: r.facts.clone(),
            prev_hash: r.prev_hash.clone(),
            hash: r.hash.clone(),
        }
    }

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

    /// The hash as protocol.md defines it: over the record's own JSON with
    /// `hash` empty, built whole.
    fn hash_as_specified(record: &AuditRecord) -> String {
        let unsealed = AuditRecord {
            hash: String::new(),
            ..record.clone()
        };
        let mut ctx = Context::new(&SHA256);
        ctx.update(b"lockstep.v1.audit\0");
        ctx.update(&serde_json::to_vec(&unsealed).unwrap());
        hex::encode(ctx.finish().as_ref())
    }

    #[test]
    fn the_streamed_hash_is_the_hash_of_the_records_json_with_and_without_facts() {
        let mut records = chain(2);
        records[1].facts = r#"{"hosts":["a\"b","ü"]}"#.into();
        records[1].host = "smars-01".into();
        for r in &records {
            assert_eq!(hash_of(r), hash_as_specified(r), "record {}", r.seq);
        }
        assert_ne!(hash_of(&records[0]), hash_of(&records[1]));
    }

    #[test]
    fn a_check_goes_on_from_where_the_last_one_ended() {
        let records = chain(6);
        let mut first = ChainCheck::from_start();
        records[..4].iter().for_each(|r| first.next(r).unwrap());
        assert_eq!(first.checked(), 4);
        let mut later = ChainCheck::after(first.head().clone());
        records[4..].iter().for_each(|r| later.next(r).unwrap());
        assert_eq!((later.checked(), later.head().next_seq), (2, 7));
        // A record the later check has not been given is still missed.
        let mut gap = ChainCheck::after(first.head().clone());
        assert_eq!(gap.next(&records[5]).unwrap_err().seq, 5);
    }

    #[test]
    fn a_clock_stepped_back_never_dates_a_record_before_the_one_before_it() {
        let (first, head) = seal(
            &ChainHead::after(None),
            vec![AuditEvent::new("a", crate::action::AuditAction::Halt, "")],
            5_000,
        );
        let (second, _) = seal(
            &head,
            vec![AuditEvent::new("a", crate::action::AuditAction::Resume, "")],
            4_000,
        );
        assert_eq!((first[0].at_unix_ms, second[0].at_unix_ms), (5_000, 5_000));
        assert_eq!(verify(&[first[0].clone(), second[0].clone()]), Ok(()));
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
