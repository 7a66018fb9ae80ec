//! The incident book's change, as the ledger commits it.

use std::sync::{Arc, Mutex};

use lockstep_evidence::chain::AuditEvent;

use crate::alerts::incidents::Incidents;
use crate::ledger::change::{Change, Effect, NextNumber, Refused, Staged};
use crate::store::{IncidentRecord, Put};

/// An incident stored as the incident book has it when the commit writes
/// it (an acknowledgement and a notification of one incident cannot land a
/// stale copy last).
pub struct IncidentStored {
    pub snapshot: IncidentRecord,
    pub book: Arc<Mutex<Incidents>>,
    pub events: Vec<AuditEvent>,
}

impl Change for IncidentStored {
    fn apply(self: Box<Self>, _: &Staged<'_>, _: NextNumber<'_>) -> Result<Effect, Refused> {
        let Self { snapshot, book, events } = *self;
        let current = book
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(snapshot.id)
            .unwrap_or(snapshot);
        Ok(Effect {
            puts: vec![Put::Incident(current)],
            events,
            numbered: None,
        })
    }
}
