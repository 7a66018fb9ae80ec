//! Alerts: signals from gate decisions, rejections and audit checks go into
//! the incident book ([`crate::alerts::incidents`]); a loop sends what is due to the
//! webhook and stores it; operators list and acknowledge incidents from the
//! console. Only transitions make signals, never a routine attestation.

pub mod change;
pub mod incidents;
pub mod siem;
pub mod store_size;
pub mod webhook;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter as PromCounter;
use prometheus_client::metrics::family::Family;
use serde::Serialize;
use tracing::{error, info, warn};

use crate::alerts::change::IncidentStored;
use crate::alerts::incidents::{Due, Incidents, Signal};
use crate::alerts::webhook::Outbox;
use crate::audit::operator::Operator;
use crate::config::ControllerConfig;
use crate::error::{ApiError, LookupError};
use crate::ledger::Ledger;
use crate::metrics::AlertLabels;
use crate::store::StoreError;
use crate::store::{IncidentRecord, Notified};
use lockstep_evidence::action::AuditAction;
use lockstep_evidence::chain::{AuditEvent, ChainCheck};

/// The webhook's JSON body (documented in docs/alerts.md; `version` changes
/// only when a field changes meaning).
#[derive(Debug, Serialize)]
pub struct Payload {
    pub version: u32,
    /// "firing", "updated" or "resolved".
    pub status: &'static str,
    pub incident: u64,
    pub title: String,
    /// One line for chat tools: what, where, and the commands to run.
    pub text: String,
    pub key: String,
    pub role: String,
    /// Hosts that have the cause now (all that had it, once resolved).
    pub hosts: Vec<String>,
    pub role_hosts: usize,
    /// Occurrences folded into this incident.
    pub count: u64,
    pub detail: String,
    pub opened_at: String,
    pub resolved_at: Option<String>,
    pub acknowledged_by: Option<String>,
    /// Console command that shows more.
    pub see: String,
    /// Console command that acknowledges the incident.
    pub ack: String,
}

fn rfc3339(unix_ms: i64) -> String {
    let ms = u64::try_from(unix_ms.min(lockstep_evidence::time::LAST_RFC3339_MS)).unwrap_or(0);
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

impl Payload {
    pub fn of(due: &Due) -> Self {
        let r = &due.record;
        let status = match (due.status, due.update) {
            (Notified::Resolved, _) => "resolved",
            (_, true) => "updated",
            _ => "firing",
        };
        let hosts: Vec<String> = if r.is_resolved() { &r.ever } else { &r.hosts }
            .iter()
            .cloned()
            .collect();
        let shown: Vec<&str> = hosts.iter().take(10).map(String::as_str).collect();
        let more = hosts.len().saturating_sub(shown.len());
        let hosts_text = match (shown.is_empty(), more) {
            (true, _) => String::new(),
            (false, 0) => format!(" ({})", shown.join(", ")),
            (false, n) => format!(" ({} and {n} more)", shown.join(", ")),
        };
        let count = if r.count > 1 {
            format!(" Seen {} times since {}.", r.count, rfc3339(r.opened_at_unix_ms))
        } else {
            String::new()
        };
        let text = format!(
            "[lockstep] {} incident {}: {}{hosts_text}. {}.{count} See: {}. Acknowledge: lockstep alerts ack {}.",
            status.to_uppercase(),
            r.id,
            r.title(),
            r.detail,
            r.see(),
            r.id
        );
        Self {
            version: 1,
            status,
            incident: r.id,
            title: r.title(),
            text,
            key: r.key.clone(),
            role: r.role.clone(),
            hosts,
            role_hosts: r.role_hosts,
            count: r.count,
            detail: r.detail.clone(),
            opened_at: rfc3339(r.opened_at_unix_ms),
            resolved_at: r.is_resolved().then(|| rfc3339(r.resolved_at_unix_ms)),
            acknowledged_by: r.acked_by.clone(),
            see: r.see(),
            ack: format!("lockstep alerts ack {}", r.id),
        }
    }
}

/// How often the loop looks for due notifications.
const TICK: Duration = Duration::from_millis(100);

/// The incident book and what is done with it.
pub struct Alerts {
    config: Arc<ControllerConfig>,
    ledger: Arc<Ledger>,
    /// Shared with the ledger's writes of incidents, which store the latest
    /// record when they are applied (see [`IncidentStored`]).
    book: Arc<Mutex<Incidents>>,
    /// The last whole-chain verification: when, and how many records held
    /// (or why it broke). Shown on the board's audit page.
    verified: Mutex<Option<Verification>>,
    /// Where the periodic check stands: it checks the whole chain once,
    /// then only what was sealed since, so a round costs what is new.
    /// Where the next round goes on from (`None`: from the last checkpoint).
    checked: Mutex<Option<ChainCheck>>,
}

/// When the chain was last verified, and how many records held or why it broke.
pub type Verification = (i64, Result<usize, String>);

impl Alerts {
    /// The book as stored: closed incidents included (they keep ids unique).
    pub fn open(config: Arc<ControllerConfig>, ledger: Arc<Ledger>) -> Result<Self, StoreError> {
        let book = Incidents::load(ledger.store().incidents()?);
        Ok(Self {
            config,
            ledger,
            book: Arc::new(Mutex::new(book)),
            verified: Mutex::new(None),
            checked: Mutex::new(None),
        })
    }

    /// The last whole-chain verification of the periodic check.
    pub fn last_verification(&self) -> Option<Verification> {
        self.verified.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Incidents> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Feeds the incident book; cheap, never blocks on I/O.
    pub fn signal(&self, signal: Signal) {
        self.book().observe(signal, self.ledger.now_unix_ms());
    }

    /// Incidents not yet closed, for `lockstep alerts`.
    pub fn list(&self) -> Vec<IncidentRecord> {
        self.book().list()
    }

    /// Incidents not yet resolved, for `/metrics`.
    pub fn open_count(&self) -> usize {
        self.book().open_count()
    }

    /// `lockstep alerts ack ID`: an operator has read the incident.
    pub async fn ack(&self, who: &Operator, id: u64) -> Result<IncidentRecord, ApiError> {
        let record = self
            .book()
            .ack(id, &who.name, self.ledger.now_unix_ms())
            .ok_or(LookupError::NoOpenIncident { id })?;
        let event = AuditEvent {
            actor: who.actor(),
            action: lockstep_evidence::action::AuditAction::IncidentAcknowledged,
            host: String::new(),
            role: record.role.clone(),
            detail: format!("incident {id}: {}", record.title()),
            facts: String::new(),
        };
        self.ledger
            .commit(IncidentStored {
                snapshot: record.clone(),
                book: self.book.clone(),
                events: vec![event],
            })
            .await?;
        info!(incident = id, by = %who.name, "incident acknowledged");
        Ok(record)
    }

    fn verify_audit_chain(&self) {
        let store = self.ledger.store();
        let known = self.checked.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let start = match known {
            Some(check) => crate::archive::past_archived(store, check),
            // After a start: from the last checkpoint, not the first record.
            None => crate::archive::verification_start(store),
        };
        let mut check = match start {
            Ok(check) => check,
            Err(e) => {
                self.signal(Signal::AuditBroken {
                    detail: format!("cannot read it: {e}"),
                });
                return;
            }
        };
        let outcome = match crate::store::audit_reads::verify(store, &mut check) {
            Ok(outcome) => outcome,
            Err(e) => {
                self.signal(Signal::AuditBroken {
                    detail: format!("cannot read it: {e}"),
                });
                return;
            }
        };
        let held = check.head().next_seq - 1;
        match &outcome {
            // The next round goes on from here; a broken chain is checked
            // from the same place again, so the break stays reported.
            Ok(()) => *self.checked.lock().unwrap_or_else(|p| p.into_inner()) = Some(check),
            Err(b) => {
                error!(seq = b.seq, problem = %b.problem, "AUDIT CHAIN BROKEN");
                self.signal(Signal::AuditBroken { detail: b.to_string() });
            }
        }
        *self.verified.lock().unwrap_or_else(|p| p.into_inner()) = Some((
            self.ledger.now_unix_ms(),
            outcome
                .map(|()| usize::try_from(held).unwrap_or(usize::MAX))
                .map_err(|b| b.to_string()),
        ));
    }

    /// Sends due notifications and re-verifies the audit chain until
    /// `stop`; a round under way when it comes is finished. Run once, by
    /// the server.
    pub async fn run(self: Arc<Self>, outcomes: Family<AlertLabels, PromCounter>, stop: impl Future<Output = ()>) {
        let settings = self.config.alerts.clone();
        let outbox: Option<Outbox> = settings.webhook.clone().and_then(|w| {
            let url = w.url.clone();
            crate::alerts::webhook::start(w, outcomes)
                .inspect_err(
                    |e| error!(%url, error = %e, "webhook unusable: alerts are only listed by `lockstep alerts`"),
                )
                .ok()
        });
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_verify = tokio::time::Instant::now();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = &mut stop => return,
            }
            if tokio::time::Instant::now() >= next_verify {
                next_verify += settings.audit_verify_interval;
                let me = self.clone();
                let _ = tokio::task::spawn_blocking(move || me.verify_audit_chain()).await;
            }
            let due = self.book().due(self.ledger.now_unix_ms(), settings.grouping);
            for d in due {
                let payload = Payload::of(&d);
                warn!(incident = payload.incident, status = payload.status, title = %payload.title, "alert");
                // The notification is an audit record too: the SIEM gets it
                // in order with everything else, and it outlives the webhook.
                let notified = AuditEvent {
                    actor: "controller".into(),
                    action: match payload.status {
                        "resolved" => AuditAction::IncidentResolved,
                        "updated" => AuditAction::IncidentUpdated,
                        _ => AuditAction::IncidentFiring,
                    },
                    host: String::new(),
                    role: payload.role.clone(),
                    detail: payload.text.clone(),
                    facts: lockstep_evidence::facts::to_facts(&lockstep_evidence::facts::IncidentFact::from(&d.record)),
                };
                let change = IncidentStored {
                    snapshot: d.record.clone(),
                    book: self.book.clone(),
                    events: vec![notified],
                };
                if let Err(e) = self.ledger.commit(change).await {
                    error!(incident = payload.incident, error = %e, "cannot store incident");
                }
                if let Some(outbox) = &outbox {
                    match serde_json::to_vec(&payload) {
                        Ok(body) => outbox.send(body),
                        Err(e) => error!(error = %e, "cannot encode alert"),
                    }
                }
            }
        }
    }
}
