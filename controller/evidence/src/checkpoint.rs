//! Checkpoints: the audit log cut into segments, each closed by an
//! `audit.checkpoint` record whose facts name the segment's first and last
//! record (seq and hash), its span and its count, signed with the
//! controller's report key. A segment is a file of its own once archived:
//! an auditor checks one segment (its chain, its checkpoint's signature)
//! without the years before it, and the segments' links to each other
//! (a segment's first record follows the last one's checkpoint record).

use serde::{Deserialize, Serialize};

use crate::action::AuditAction;
use crate::chain::{AuditRecord, ChainCheck, ChainHead};
use crate::report::Signature;
use crate::report::key::{ReportKey, signature_holds};

/// The checkpoint's format, and the start of what its signature covers.
pub const FORMAT: &str = "lockstep.v1.audit-checkpoint";

/// What a checkpoint says of the segment it closes: the records from
/// `first_seq` to `last_seq` (the checkpoint record itself follows them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Body {
    pub format: String,
    pub first_seq: u64,
    /// The hash the segment's first record follows (the previous
    /// segment's checkpoint record, or the genesis hash).
    pub first_prev_hash: String,
    pub first_at_unix_ms: i64,
    pub last_seq: u64,
    pub last_hash: String,
    pub last_at_unix_ms: i64,
    pub records: u64,
}

/// A checkpoint as its record's facts carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed {
    pub checkpoint: Body,
    pub signature: Signature,
}

impl Body {
    /// The checkpoint of `records` (one stretch of the chain, in order).
    pub fn of(records: &[AuditRecord]) -> Option<Self> {
        let (first, last) = (records.first()?, records.last()?);
        Some(Self {
            format: FORMAT.into(),
            first_seq: first.seq,
            first_prev_hash: first.prev_hash.clone(),
            first_at_unix_ms: first.at_unix_ms,
            last_seq: last.seq,
            last_hash: last.hash.clone(),
            last_at_unix_ms: last.at_unix_ms,
            records: last.seq - first.seq + 1,
        })
    }

    pub fn sign(self, key: &ReportKey) -> Signed {
        let value = key.sign(&signing_input(&self));
        Signed {
            checkpoint: self,
            signature: Signature {
                algorithm: "Ed25519".into(),
                key_id: key.key_id(),
                public_key: key.public_hex().into(),
                value: hex::encode(value),
            },
        }
    }
}

/// `"lockstep.v1.audit-checkpoint\0"` and the body's canonical JSON.
fn signing_input(body: &Body) -> Vec<u8> {
    let mut input = FORMAT.as_bytes().to_vec();
    input.push(0);
    input.extend_from_slice(crate::report::canonical(&crate::report::to_value(body)).as_bytes());
    input
}

impl Signed {
    /// Whether the signature holds for the body, by the key it names.
    pub fn signature_holds(&self) -> bool {
        self.signature.algorithm == "Ed25519"
            && signature_holds(
                &self.signature.public_key,
                &signing_input(&self.checkpoint),
                &self.signature.value,
            )
    }

    /// The checkpoint a record carries, if it is one.
    pub fn from_record(r: &AuditRecord) -> Option<Self> {
        if !AuditAction::AuditCheckpoint.is(&r.action) {
            return None;
        }
        serde_json::from_str(&r.facts).ok()
    }
}

/// A segment that holds: its checkpoint, and the head the next segment
/// must follow (its checkpoint record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub checkpoint: Signed,
    pub head: ChainHead,
}

/// Checks one segment as archived: `records` from its first record to its
/// checkpoint record. The chain holds within it, the checkpoint names
/// exactly the records before it, its signature holds, and (given) it is
/// signed by `expected_key` (hex, `lockstep pki report-key`). `after`, when
/// given, is where the segment must start: the previous segment's head.
pub fn check_segment(
    records: &[AuditRecord],
    after: Option<&ChainHead>,
    expected_key: Option<&str>,
) -> Result<Checked, String> {
    let (Some(first), Some(closing)) = (records.first(), records.last()) else {
        return Err("the segment holds no records".into());
    };
    let start = match after {
        Some(head) => head.clone(),
        None => ChainHead {
            next_seq: first.seq,
            last_hash: first.prev_hash.clone(),
            last_at_unix_ms: first.at_unix_ms,
        },
    };
    let mut check = ChainCheck::after(start);
    for r in records {
        check.next(r).map_err(|b| b.to_string())?;
    }
    let checkpoint =
        Signed::from_record(closing).ok_or_else(|| format!("its last record ({}) is not a checkpoint", closing.seq))?;
    let covered = &records[..records.len() - 1];
    let expected = Body::of(covered).ok_or("the checkpoint closes no records")?;
    if checkpoint.checkpoint != expected {
        return Err(format!(
            "the checkpoint at record {} does not describe the records before it (it names {}..{}, they are {}..{})",
            closing.seq,
            checkpoint.checkpoint.first_seq,
            checkpoint.checkpoint.last_seq,
            expected.first_seq,
            expected.last_seq
        ));
    }
    if !checkpoint.signature_holds() {
        return Err(format!(
            "the checkpoint at record {} is not signed by the key it names",
            closing.seq
        ));
    }
    if let Some(key) = expected_key {
        if !checkpoint.signature.public_key.eq_ignore_ascii_case(key) {
            return Err(format!(
                "the checkpoint at record {} is signed by key {}, not the key given ({key})",
                closing.seq, checkpoint.signature.public_key
            ));
        }
    }
    Ok(Checked {
        checkpoint,
        head: check.head().clone(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::chain::{AuditEvent, seal};

    /// `n` records after `after`, closed by a checkpoint signed with `key`.
    pub(crate) fn segment(key: &ReportKey, after: &ChainHead, n: usize) -> (Vec<AuditRecord>, ChainHead) {
        let events = (0..n)
            .map(|i| AuditEvent::new("alice (operator)", AuditAction::Halt, format!("event {i}")))
            .collect();
        let (mut records, head) = seal(after, events, 1_000);
        let signed = Body::of(&records).unwrap().sign(key);
        let closing = AuditEvent {
            facts: serde_json::to_string(&signed).unwrap(),
            ..AuditEvent::new("controller", AuditAction::AuditCheckpoint, "segment closed")
        };
        let (more, head) = seal(&head, vec![closing], 2_000);
        records.extend(more);
        (records, head)
    }

    #[test]
    fn segments_check_alone_and_linked() {
        let (key, _) = ReportKey::generate().unwrap();
        let (one, head) = segment(&key, &ChainHead::after(None), 4);
        let (two, _) = segment(&key, &head, 3);
        let first = check_segment(&one, None, Some(key.public_hex())).unwrap();
        assert_eq!(first.head, head);
        check_segment(&two, Some(&first.head), None).unwrap();
        // The second segment alone holds too: an auditor needs no earlier one.
        check_segment(&two, None, None).unwrap();
        // Out of order, the link is what fails.
        assert!(check_segment(&one, Some(&first.head), None).is_err());
    }

    #[test]
    fn an_edit_another_key_and_a_dropped_record_are_named() {
        let (key, _) = ReportKey::generate().unwrap();
        let (other, _) = ReportKey::generate().unwrap();
        let (records, _) = segment(&key, &ChainHead::after(None), 4);
        let err = check_segment(&records, None, Some(other.public_hex())).unwrap_err();
        assert!(err.contains("not the key given"), "{err}");

        let mut edited = records.clone();
        edited[1].detail = "nothing".into();
        assert!(check_segment(&edited, None, None).unwrap_err().contains("edited"));

        // A record dropped from the front, the chain re-sealed after it: the
        // checkpoint no longer describes what is left.
        let resealed = segment(&key, &ChainHead::after(None), 4).0;
        let mut short = resealed[1..].to_vec();
        short[0].prev_hash = crate::chain::GENESIS.into();
        assert!(check_segment(&short, None, None).is_err());

        // A checkpoint whose body was changed after signing.
        let mut forged = records.clone();
        let last = forged.len() - 1;
        let mut signed = Signed::from_record(&forged[last]).unwrap();
        signed.checkpoint.records += 1;
        forged[last].facts = serde_json::to_string(&signed).unwrap();
        assert!(!signed.signature_holds());
    }
}
