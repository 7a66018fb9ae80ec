//! `lockstep report pre-open`: reads the audit log, derives the report
//! ([`crate::report`]), signs it with the controller's report key and
//! records that it was issued.

use std::path::PathBuf;
use std::sync::Arc;

use lockstep_proto::pb;
use tracing::info;

use crate::audit::AuditEvent;
use crate::config::ControllerConfig;
use crate::error::ApiError;
use crate::ledger::Ledger;
use crate::peer::Operator;
use crate::report::{self, Asked};
use crate::report_key::{REPORT_KEY, ReportKey};

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
        let key_path = Self::key_path(&self.config);
        let for_blocking = asked.clone();
        // Reading the log and rendering are work for a blocking thread, not the runtime's.
        let (signed, json, html) = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
            let records = ledger.store().audit_from(0).map_err(ApiError::Store)?;
            let body = report::derive(&records, &for_blocking)?;
            let key = ReportKey::open_or_create(&key_path).map_err(|e| ApiError::Internal(e.to_string()))?;
            let signed = report::sign(body, &key);
            let json = serde_json::to_string_pretty(&signed).map_err(|e| ApiError::Internal(e.to_string()))?;
            let html = crate::report_html::render(&signed);
            Ok((signed, json, html))
        })
        .await
        .map_err(|e| ApiError::Internal(format!("the report task failed: {e}")))??;
        let body = &signed.report;
        let summary = format!(
            "{} {}: the check at record {} by {} answered \"{}\" (exit {})",
            body.role, body.date, body.check.seq, body.check.by, body.check.summary, body.check.exit
        );
        let event = AuditEvent {
            actor: who.actor(),
            action: "report.issued".into(),
            role: body.role.clone(),
            detail: format!(
                "pre-open report of {} on {} resting on records {}..{}, signed by key {}",
                body.role, body.date, body.segment.first_seq, body.segment.last_seq, signed.signature.key_id
            ),
            ..Default::default()
        };
        self.ledger.record(vec![event]).await?;
        info!(role = %body.role, date = %body.date, check = body.check.seq, by = %who.name, "pre-open report issued");
        Ok(pb::PreOpenReportReply { json, html, summary })
    }
}

fn today(time_zone: &str, now_unix_ms: i64) -> Result<String, ApiError> {
    let zone = jiff::tz::TimeZone::get(time_zone).map_err(|_| report::ReportError::BadZone(time_zone.into()))?;
    let now = jiff::Timestamp::from_millisecond(now_unix_ms).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(now.to_zoned(zone).date().to_string())
}
