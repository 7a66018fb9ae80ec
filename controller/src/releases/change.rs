//! Releases' changes, as the ledger commits them: a proposal takes its
//! number inside the commit; an approval is checked there against the
//! two-person rule and the role's active release.

use std::sync::Arc;

use lockstep_evidence::chain::AuditEvent;
use lockstep_evidence::facts::{ReleaseFact, to_facts};
use lockstep_proto::pb::Entry;

use crate::error::{ApiError, LookupError};
use crate::ledger::change::{Change, Counter, Effect, NextNumber, Refused, Staged};
use crate::releases::ReleaseError;
use crate::store::{Put, ReleaseRecord};

/// A release (its number 0 until the commit gives it one).
pub struct ReleaseProposed {
    pub actor: String,
    pub release: ReleaseRecord,
    pub manifest: Arc<Vec<Entry>>,
}

impl Change for ReleaseProposed {
    fn apply(self: Box<Self>, state: &Staged<'_>, next: NextNumber<'_>) -> Result<Effect, Refused> {
        let Self {
            actor,
            release,
            manifest,
        } = *self;
        let number = next(Counter::Release);
        let stored = ReleaseRecord { number, ..release };
        let mut puts = Vec::new();
        if !state.has_manifest(&stored.digest_hex) {
            puts.push(Put::Manifest {
                digest_hex: stored.digest_hex.clone(),
                entries: manifest,
            });
        }
        let event = AuditEvent {
            actor,
            action: lockstep_evidence::action::AuditAction::ReleaseProposed,
            role: stored.role.clone(),
            detail: format!(
                "release {number} from {} ({} entries): {}",
                stored.source, stored.entry_count, stored.note
            ),
            facts: to_facts(&ReleaseFact::from(&stored)),
            host: String::new(),
        };
        puts.push(Put::Release(stored));
        Ok(Effect {
            puts,
            events: vec![event],
            numbered: Some((Counter::Release, number)),
        })
    }
}

pub struct ReleaseApproved {
    pub actor: String,
    pub number: u64,
    pub by: String,
    pub at_unix_ms: i64,
}

impl Change for ReleaseApproved {
    fn apply(self: Box<Self>, state: &Staged<'_>, _: NextNumber<'_>) -> Result<Effect, Refused> {
        let Self {
            actor,
            number,
            by,
            at_unix_ms,
        } = *self;
        approved(state, actor, number, by, at_unix_ms)
    }
}

fn approved(state: &Staged<'_>, actor: String, number: u64, by: String, at: i64) -> Result<Effect, Refused> {
    let mut record = state
        .release(number)
        .ok_or_else(|| ApiError::from(LookupError::NoRelease { number }))?;
    if let Some(earlier) = &record.approved_by {
        return Err(ApiError::from(ReleaseError::AlreadyApproved {
            number,
            by: earlier.clone(),
        })
        .into());
    }
    if record.proposed_by == by {
        return Err(ApiError::from(ReleaseError::TwoPersonRule { who: by, number }).into());
    }
    if let Some(active) = state.active_release(&record.role).filter(|a| a.number > number) {
        return Err(ApiError::from(ReleaseError::OlderThanActive {
            number,
            active: active.number,
            role: record.role,
        })
        .into());
    }
    record.approved_by = Some(by);
    record.approved_at_unix_ms = at;
    let event = AuditEvent {
        actor,
        action: lockstep_evidence::action::AuditAction::ReleaseApproved,
        role: record.role.clone(),
        detail: format!("release {number} (proposed by {}) is now active", record.proposed_by),
        facts: to_facts(&ReleaseFact::from(&record)),
        host: String::new(),
    };
    Ok(Effect {
        puts: vec![Put::Release(record)],
        events: vec![event],
        numbered: None,
    })
}
