//! `lockstep report pre-open`: reads the audit log, derives the report
//! ([`lockstep_evidence::report`]), signs it with the controller's report
//! key (made here at the first start, 0600 in its data_dir) and records
//! that it was issued.

use std::path::PathBuf;
use std::sync::Arc;

use lockstep_proto::pb;
use tracing::info;

use crate::audit::operator::Operator;
use crate::config::ControllerConfig;
use crate::error::ApiError;
use crate::ledger::Ledger;
use crate::store::audit_reads::{self, AuditSource};
use lockstep_evidence::action::AuditAction;
use lockstep_evidence::chain::AuditEvent;
use lockstep_evidence::chain::AuditRecord;
use lockstep_evidence::facts::{GateChecked, from_facts};
use lockstep_evidence::gate_state;
use lockstep_evidence::report::key::{REPORT_KEY, ReportKey, ReportKeyError};
use lockstep_evidence::report::{self, Asked};

/// The key at `path`, made on first use (a controller that has never
/// signed a report has no key to lose).
pub fn open_or_create_key(path: &std::path::Path) -> Result<ReportKey, ReportKeyError> {
    if !path.exists() {
        let (_, pkcs8) = ReportKey::generate()?;
        lockstep_pki::write_private(path, &pkcs8).map_err(|e| ReportKeyError::Io {
            path: path.into(),
            cause: std::io::Error::other(e.to_string()),
        })?;
        tracing::info!(path = %path.display(), "made the report signing key");
    }
    ReportKey::load(path)
}

pub struct ReportIssuer {
    config: Arc<ControllerConfig>,
    ledger: Arc<Ledger>,
}

impl ReportIssuer {
    pub fn new(config: Arc<ControllerConfig>, ledger: Arc<Ledger>) -> Self {
        Self { config, ledger }
    }

    /// Where the controller keeps its report key.
    pub fn key_path(config: &ControllerConfig) -> PathBuf {
        config.data_dir.join(REPORT_KEY)
    }

    pub async fn pre_open(
        &self,
        who: &Operator,
        req: pb::PreOpenReportRequest,
    ) -> Result<pb::PreOpenReportReply, ApiError> {
        let time_zone = if req.time_zone.is_empty() {
            "UTC".to_string()
        } else {
            req.time_zone
        };
        let date = if req.date.is_empty() {
            today(&time_zone, self.ledger.now_unix_ms())?
        } else {
            req.date
        };
        let asked = Asked {
            role: req.role,
            date,
            time_zone,
            at: req.at,
        };
        self.config.role(&asked.role)?;
        let ledger = self.ledger.clone();
        let archive_dir = self.config.audit.archive_dir.clone();
        let key_path = Self::key_path(&self.config);
        let for_blocking = asked.clone();
        // Reading the log and rendering are work for a blocking thread, not the runtime's.
        let (signed, json, html) = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
            // An archived day is read from its segment files.
            let log = crate::archive::log::Log::open(ledger.store(), &archive_dir).map_err(ApiError::Store)?;
            let records = records_for(&log, &for_blocking)?;
            let body = report::derive(&records, &for_blocking)?;
            let key = open_or_create_key(&key_path).map_err(|e| ApiError::Internal(e.to_string()))?;
            let signed = report::sign(body, &key);
            let json = serde_json::to_string_pretty(&signed).map_err(|e| ApiError::Internal(e.to_string()))?;
            let html = lockstep_evidence::report::html::render(&signed);
            Ok((signed, json, html))
        })
        .await
        .map_err(|e| ApiError::Internal(format!("the report task failed: {e}")))??;
        let body = &signed.report;
        // A console answer never exceeds the message limit: a role so large
        // that the page does not fit beside the document gets the document
        // alone (the console renders the same page from it); one whose
        // document alone does not fit is refused, naming the setting.
        let limit = self.config.limits.max_payload_bytes;
        if json.len() > limit {
            return Err(TooLarge {
                role: body.role.clone(),
                bytes: json.len(),
                limit,
            }
            .into());
        }
        let html = if json.len() + html.len() > limit {
            String::new()
        } else {
            html
        };
        let summary = format!(
            "{} {}: the check at record {} by {} answered \"{}\" (exit {})",
            body.role, body.date, body.check.seq, body.check.by, body.check.summary, body.check.exit
        );
        let event = AuditEvent {
            actor: who.actor(),
            action: lockstep_evidence::action::AuditAction::ReportIssued,
            role: body.role.clone(),
            detail: format!(
                "pre-open report of {} on {} resting on records {}..{}, signed by key {}",
                body.role, body.date, body.segment.first_seq, body.segment.last_seq, signed.signature.key_id
            ),
            host: String::new(),
            facts: String::new(),
        };
        self.ledger.record(vec![event]).await?;
        info!(role = %body.role, date = %body.date, check = body.check.seq, by = %who.name, "pre-open report issued");
        Ok(pb::PreOpenReportReply { json, html, summary })
    }
}

/// The records a report rests on: the day alone, found by seq (the report
/// costs what the day holds, not the log), and back to the first gate
/// state its check names when that is older than the day.
fn records_for(store: &impl AuditSource, asked: &report::Asked) -> Result<Vec<AuditRecord>, ApiError> {
    let (from, until) = report::bounds(asked)?;
    let mut records = audit_reads::sealed_between(store, from, until).map_err(ApiError::Store)?;
    let check = records
        .iter()
        .rev()
        .find(|r| AuditAction::GateChecked.is(&r.action) && r.role == asked.role);
    let named = check
        .and_then(|r| from_facts::<GateChecked>(&r.facts))
        .and_then(|f| f.state);
    let (Some(named), Some(day_first)) = (named, records.first().map(|r| r.seq)) else {
        return Ok(records);
    };
    if named.seq >= day_first {
        return Ok(records);
    }
    let lookup = |seq: u64| audit_reads::at_or_after(store, seq);
    // A chain that cannot be read back is named by the derivation itself.
    let Ok(chain) = gate_state::chain(&asked.role, named.seq, lookup).map_err(ApiError::Store)? else {
        return Ok(records);
    };
    let first = chain.first().map_or(named.seq, |(seq, _)| *seq);
    let mut before = Vec::new();
    for page in audit_reads::pages_until(store, first, day_first - 1) {
        before.extend(page.map_err(ApiError::Store)?);
    }
    before.append(&mut records);
    Ok(before)
}

fn today(time_zone: &str, now_unix_ms: i64) -> Result<String, ApiError> {
    let zone = jiff::tz::TimeZone::get(time_zone).map_err(|_| report::ReportError::BadZone(time_zone.into()))?;
    let now = jiff::Timestamp::from_millisecond(now_unix_ms).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(now.to_zoned(zone).date().to_string())
}

/// A report larger than a console answer may be.
#[derive(Debug, thiserror::Error)]
#[error(
    "the pre-open report of role {role} is {bytes} bytes of JSON, over the {limit} bytes a console answer may carry; raise [limits] max_message_bytes on the controller (and restart it) to issue it"
)]
pub struct TooLarge {
    role: String,
    bytes: usize,
    limit: usize,
}

impl crate::error::DomainError for TooLarge {
    fn code_and_reason(&self) -> (tonic::Code, &'static str) {
        (tonic::Code::ResourceExhausted, lockstep_proto::reason::TOO_LARGE)
    }
}

impl crate::error::DomainError for lockstep_evidence::report::ReportError {
    fn code_and_reason(&self) -> (tonic::Code, &'static str) {
        use lockstep_proto::reason as r;
        use tonic::Code as C;
        match self {
            Self::NoCheck { .. } | Self::NoFacts { .. } => (C::FailedPrecondition, r::NO_GATE_CHECK),
            Self::BadDate(_) | Self::BadTime(_) | Self::BadZone(_) => (C::InvalidArgument, r::INVALID_ARGUMENT),
            // The log does not hold what its own check names: a broken log.
            Self::State { .. } => (C::Internal, r::INTERNAL),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_new_key_is_private_and_reloads_the_same() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join(REPORT_KEY);
        let made = open_or_create_key(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let again = open_or_create_key(&path).unwrap();
        assert_eq!(made.public_hex(), again.public_hex());
    }
}
