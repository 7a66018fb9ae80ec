//! The kill switch's changes, as the ledger commits them: a halt takes
//! its id inside the commit; a resume lifts every active halt of exactly
//! its scope, or is refused when there is none.

use lockstep_evidence::action::AuditAction;
use lockstep_evidence::chain::AuditEvent;
use lockstep_evidence::facts::{HaltFact, Resumed as ResumedFact, to_facts};

use crate::error::ApiError;
use crate::halts::HaltError;
use crate::ledger::change::{Change, Counter, Effect, NextNumber, Refused, Staged};
use crate::store::{HaltRecord, HaltScope, Put};

/// The kill switch (its id 0 until the commit gives it one).
pub struct Halted {
    pub actor: String,
    pub halt: HaltRecord,
}

impl Change for Halted {
    fn apply(self: Box<Self>, _: &Staged<'_>, next: NextNumber<'_>) -> Result<Effect, Refused> {
        let Self { actor, halt } = *self;
        let id = next(Counter::Halt);
        let stored = HaltRecord { id, ..halt };
        let event = scope_event(
            actor,
            AuditAction::Halt,
            &stored.scope,
            format!(
                "{} {id} on {}: {}",
                if stored.drill { "drill halt" } else { "halt" },
                stored.scope,
                stored.reason
            ),
            to_facts(&HaltFact::from(&stored)),
        );
        Ok(Effect {
            puts: vec![Put::Halt(stored)],
            events: vec![event],
            numbered: Some((Counter::Halt, id)),
        })
    }
}

/// Lifts every active halt of exactly `scope`.
pub struct Resumed {
    pub actor: String,
    pub scope: HaltScope,
    pub by: String,
    pub reason: String,
    pub at_unix_ms: i64,
}

impl Change for Resumed {
    fn apply(self: Box<Self>, state: &Staged<'_>, _: NextNumber<'_>) -> Result<Effect, Refused> {
        let Self {
            actor,
            scope,
            by,
            reason,
            at_unix_ms,
        } = *self;
        let lifted: Vec<Put> = state
            .active_halts(&scope)
            .into_iter()
            .map(|mut h| {
                h.resumed_by = Some(by.clone());
                h.resumed_at_unix_ms = at_unix_ms;
                h.resume_reason = reason.clone();
                Put::Halt(h)
            })
            .collect();
        if lifted.is_empty() {
            return Err(ApiError::from(HaltError::NothingActive {
                scope: scope.to_string(),
            })
            .into());
        }
        let ids: Vec<u64> = lifted
            .iter()
            .filter_map(|p| if let Put::Halt(h) = p { Some(h.id) } else { None })
            .collect();
        let listed: Vec<String> = ids.iter().map(u64::to_string).collect();
        let facts = to_facts(&ResumedFact {
            ids,
            scope: scope.to_string(),
            reason: reason.clone(),
            by: by.clone(),
        });
        let event = scope_event(
            actor,
            AuditAction::Resume,
            &scope,
            format!("halt {} on {scope} lifted: {reason}", listed.join(", ")),
            facts,
        );
        Ok(Effect {
            puts: lifted,
            events: vec![event],
            numbered: None,
        })
    }
}

/// An audit event about a halt scope: the host or role it names is
/// filled in, so the log can be searched by either.
fn scope_event(actor: String, action: AuditAction, scope: &HaltScope, detail: String, facts: String) -> AuditEvent {
    let (host, role) = match scope {
        HaltScope::Fleet => (String::new(), String::new()),
        HaltScope::Role(r) => (String::new(), r.clone()),
        HaltScope::Host(h) => (h.clone(), String::new()),
    };
    AuditEvent {
        actor,
        action,
        host,
        role,
        detail,
        facts,
    }
}
