//! Closing a segment: the checkpoint record is sealed inside the commit,
//! right after the record it names as the segment's last, so no record
//! can come between what the checkpoint signs and the checkpoint.

use std::sync::Arc;

use lockstep_evidence::action::AuditAction;
use lockstep_evidence::chain::AuditEvent;
use lockstep_evidence::checkpoint::Body;
use lockstep_evidence::report::key::ReportKey;

use crate::error::ApiError;
use crate::ledger::change::{Change, Effect, NextNumber, Refused, Staged};

/// The open segment, from its first record to the chain's end at commit.
pub struct SegmentClosed {
    pub first_seq: u64,
    pub first_prev_hash: String,
    pub first_at_unix_ms: i64,
    pub key: Arc<ReportKey>,
}

impl Change for SegmentClosed {
    fn apply(self: Box<Self>, state: &Staged<'_>, _: NextNumber<'_>) -> Result<Effect, Refused> {
        let Some(head) = state.chain_head() else {
            return Err(ApiError::Internal("a checkpoint is sealed only inside a commit".into()).into());
        };
        if head.next_seq <= self.first_seq {
            return Err(ApiError::Internal(format!("no records since {} to close", self.first_seq)).into());
        }
        let last_seq = head.next_seq - 1;
        let body = Body {
            format: lockstep_evidence::checkpoint::FORMAT.into(),
            first_seq: self.first_seq,
            first_prev_hash: self.first_prev_hash,
            first_at_unix_ms: self.first_at_unix_ms,
            last_seq,
            last_hash: head.last_hash.clone(),
            last_at_unix_ms: head.last_at_unix_ms,
            records: last_seq - self.first_seq + 1,
        };
        let detail = format!(
            "segment {}..{} closed: {} records, signed by key {}",
            body.first_seq,
            body.last_seq,
            body.records,
            self.key.key_id()
        );
        let signed = body.sign(&self.key);
        let facts = serde_json::to_string(&signed).map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(Effect {
            puts: Vec::new(),
            events: vec![AuditEvent {
                facts,
                ..AuditEvent::new("controller", AuditAction::AuditCheckpoint, detail)
            }],
            numbered: None,
        })
    }
}
